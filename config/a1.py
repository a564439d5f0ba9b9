# The course's assignment-1 run (CS336 2025): 4 layers x 512, 16 heads, d_ff 1344, context 256, vocab 10,000,
# RoPE theta 10,000; 10,000 steps x 128 sequences x 256 tokens = 327.68M tokens.
#   python train.py config/a1.py                               (one GPU)
#   torchrun --standalone --nproc_per_node=8 train.py config/a1.py       (8 GPUs x 16 sequences: the same run)
# The course trains on TinyStories (`python data/tinystories/prepare.py`, then --data_dir=data/tinystories; target:
# validation loss <= 1.45). TinyStories cannot be downloaded on these offline machines, so the default here is the
# docs corpus (`python data/docs/prepare.py`): 327M tokens are ~70 passes over it, so expect overfitting there.
data_dir = 'data/docs'
out_dir = 'out-a1'
vocab_size = 10000
context_length = 256
d_model = 512
num_layers = 4
num_heads = 16
d_ff = 1344
rope_theta = 10000.0
batch_size = 128
max_iters = 10000
learning_rate = 2e-3  # the 4-layer model tolerates a high peak rate; the course's sweeps put the best near 1e-3..3e-3
min_lr = 2e-4
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 500
eval_iters = 20
log_interval = 50
dtype = 'bfloat16'
compile = True
optimizer = 'torch_adamw'  # torch's fused kernel (the same math as train.py's AdamW, which 'adamw' selects)

# The A1 shape (4 layers x 512, context 256) on the English docs corpus, sized for one GPU:
#   python data/docs/prepare.py && python train.py config/docs.py
# The corpus is small (~4M tokens): 500 steps x 128 x 256 = 16.4M tokens is ~4 passes; longer runs overfit.
data_dir = 'data/docs'
out_dir = 'out-docs'
vocab_size = -1  # from meta.json
context_length = 256
d_model = 512
num_layers = 4
num_heads = 16
d_ff = 1344
rope_theta = 10000.0
batch_size = 128
max_iters = 500
learning_rate = 2e-3  # the 4-layer model tolerates a high peak rate; the course's sweeps put the best near 1e-3..3e-3
min_lr = 2e-4
warmup_iters = 50
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 50
eval_iters = 20
log_interval = 10
dtype = 'bfloat16'
compile = True
optimizer = 'torch_adamw'  # torch's fused kernel (the same math as train.py's AdamW, which 'adamw' selects)

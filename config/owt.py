# The course's OpenWebText run: the A1 architecture (4 layers x 512, context 256) with a 32K vocabulary.
#   python data/owt/prepare.py && python train.py config/owt.py
data_dir = 'data/owt'
out_dir = 'out-owt'
vocab_size = 32000
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

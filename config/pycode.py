# The A1 shape (4 layers x 512, context 256) on the Python-source corpus for 300 s of one GPU
# (ANCHORS.md: nanoGPT reaches 0.867 bits/byte in that budget):
#   python data/pycode/prepare.py && python train.py config/pycode.py
data_dir = 'data/pycode'
out_dir = 'out-pycode'
vocab_size = -1  # from meta.json
context_length = 256
d_model = 512
num_layers = 4
num_heads = 16
d_ff = 1344
rope_theta = 10000.0
batch_size = 128
max_iters = 30000  # ~300 s at 3.3M tokens/s; the cosine schedule is laid out over these steps
learning_rate = 2e-3  # the 4-layer model tolerates a high peak rate; the course's sweeps put the best near 1e-3..3e-3
min_lr = 2e-4
warmup_iters = 300
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
eval_interval = 1000
eval_iters = 20
log_interval = 100
dtype = 'bfloat16'
compile = True
optimizer = 'torch_adamw'  # torch's fused kernel (the same math as train.py's AdamW, which 'adamw' selects)
max_time_s = 300.0  # stop at 300 s whatever the speed

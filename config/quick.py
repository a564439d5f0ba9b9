# A small run on a CPU, sized to train in about 2 minutes on 2 cores (a fixed number of iterations, so every machine
# runs the same steps), on the Quickstart's corpus:
#   python data/pycode/prepare.py --max_mb=8 --vocab_size=4096 && python train.py config/quick.py
# 4 layers x 128 on the Python-source corpus; at the end it prints a sample and where every output went.
data_dir = 'data/pycode'
out_dir = 'out-quick'
device = 'cpu'
dtype = 'float32'  # bf16 autocast is slower than float32 on most CPUs
compile = False  # compiling costs more than it saves in a run this short
context_length = 128
d_model = 128
num_layers = 4
num_heads = 4
d_ff = 0  # 8/3 x 128 rounded to 64 = 320
batch_size = 16
max_iters = 400  # 400 x 16 x 128 = 0.8M tokens; the cosine schedule ends here
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 20
eval_interval = 200
eval_iters = 5  # mid-run: 5 batches of validation windows; the last evaluation scores the whole split
log_interval = 20
optimizer = 'adamw'
prompt = 'def '
max_new_tokens = 100
cpu_threads = 0  # torch's default (all cores); on a machine shared with other jobs, 1 thread can be much faster

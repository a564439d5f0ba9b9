# A small run for a CPU in a few minutes: `python data/docs/prepare.py && python train.py config/quick.py`.
# 4 layers x 128 on the English docs corpus; prints a sample at the end (readable-ish English, odd facts).
data_dir = 'data/docs'
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
max_iters = 300  # 0.6M tokens; the cosine schedule ends here
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 30
eval_interval = 100
eval_iters = 5
log_interval = 20
optimizer = 'adamw'
prompt = 'The '
max_new_tokens = 100
max_time_s = 200.0  # stop after 200 s of training whatever the CPU's speed (a busy CPU gets fewer steps)
cpu_threads = 1  # measured on a busy 2-core machine: 0.75 s/step with 1 thread, 6-9 s/step with 2

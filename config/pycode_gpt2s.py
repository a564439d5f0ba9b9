# Time to quality at GPT-2 small's shape (12 layers x 768, 12 heads, context 1024, 32 sequences = 32K tokens a step)
# on the same Python-source token files as config/pycode.py, 300 s of one H100 including compile, with the same
# switches (see config/pycode.py for what each does and the flags that turn it off).
#   python data/pycode/prepare.py && python train.py config/pycode_gpt2s.py
data_dir = 'data/pycode'
out_dir = 'out-pycode-gpt2s'
vocab_size = -1  # from meta.json (16K)
context_length = 1024
d_model = 768
num_layers = 12
num_heads = 12
batch_size = 32
max_time_s = 300.0
max_iters = 100000  # only an upper bound; the clock ends the run
optimizer = 'muon'
muon_lr = 0.02
embed_lr = 0.03
head_lr = 0.001
learning_rate = 1e-3  # norm gains
weight_decay = 0.0
min_lr = 1e-5  # every group ends at 1% of its peak rate
warmup_iters = 100
lr_schedule = 'wsd'
cooldown_frac = 0.4
ffn = 'relu2'
d_ff = 3072  # 4 x 768
qk_norm = True
zero_init_proj = True
logit_softcap = 15.0
grad_clip = 1.0
eval_interval = 0
eval_interval_s = 30.0
log_interval = 50
dtype = 'bfloat16'
compile = True

# Time to quality at GPT-2 small's shape (12 layers x 768, 12 heads, context 1024, 32 sequences = 32K tokens a step),
# on top of config/pycode.py (same token files, budget and switches; later config files override earlier ones):
#   python data/pycode/prepare.py && python train.py config/pycode.py config/pycode_gpt2s.py
out_dir = 'out-pycode-gpt2s'
context_length = 1024
d_model = 768
num_layers = 12
num_heads = 12
d_ff = 3072  # 4 x 768 for ffn='relu2'
batch_size = 32
embed_lr = 0.03  # a little below the 4-layer model's rates: a wider model takes smaller Adam steps
head_lr = 0.001
learning_rate = 1e-3  # norm gains
min_lr = 1e-5  # every group ends at 1% of its peak rate
log_interval = 50

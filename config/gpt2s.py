# GPT-2 small shape (124M: 12 layers x 768, 12 heads, context 1024, vocab 50,304 = 50,257 padded to a multiple of 64)
# with model.py's architecture (RoPE, SwiGLU with d_ff 2048, RMSNorm, untied embeddings).
#   python bench/train.py config/gpt2s.py --bench_generate=True     (throughput, MFU, generation speed)
#   python bench/train.py config/gpt2s.py --batch_size=64            (MFU at batch 64: results/train_throughput.md)
#   python data/pycode/prepare.py && python train.py config/gpt2s.py       (300 s on the Python-source corpus)
data_dir = 'data/pycode'
out_dir = 'out-gpt2s'
vocab_size = 50304
context_length = 1024
d_model = 768
num_layers = 12
num_heads = 12
d_ff = 2048
# 32 x 1024 tokens per step (the nanoGPT reference run's batch) in one micro-batch, faster than 2 micro-batches of 16
# (results/train_throughput.md). Smaller GPU: --batch_size=16 --gradient_accumulation_steps=2
batch_size = 32
gradient_accumulation_steps = 1
max_iters = 5000
max_time_s = 300.0
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
eval_interval = 500
eval_iters = 20
log_interval = 50
dtype = 'bfloat16'
compile = True
optimizer = 'torch_adamw'

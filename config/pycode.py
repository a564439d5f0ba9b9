# Time to quality: the A1 shape (4 layers x 512, 16 heads, context 256, batch 128) on the Python-source corpus for a
# budget of 300 s of one H100, compile included; the schedule is laid over the budget and ends with it.
#   python data/pycode/prepare.py && python train.py config/pycode.py
#   python bench/time_to_quality.py --budget_s=300            (against nanoGPT on the same token files)
#   python train.py config/pycode.py config/pycode_gpt2s.py    (the same recipe at GPT-2 small's shape)
# The switches below are the ones modded-nanogpt's record history and the papers cited in train.py/model.py found to
# help at this scale (A/B'd one at a time per step on a CPU: results/ttq_switches_cpu.md; on the H100 not yet); the
# plain recipe is one flag per switch away, which is how bench/time_to_quality.py --variants A/Bs them:
#   --optimizer=torch_adamw --weight_decay=0.1 --embed_lr=-1 --head_lr=-1   (AdamW everywhere at learning_rate)
#   --lr_schedule=cosine   --ffn=swiglu --d_ff=1344   --qk_norm=False   --zero_init_proj=False   --logit_softcap=0
data_dir = 'data/pycode'
out_dir = 'out-pycode'
vocab_size = -1  # from meta.json (16K)
context_length = 256
d_model = 512
num_layers = 4
num_heads = 16
batch_size = 128
max_time_s = 300.0  # the budget: training stops, and the schedule ends, when 300 s have passed
max_iters = 100000  # only an upper bound; the clock ends the run
optimizer = 'muon'  # Muon for the block matrices, AdamW for embeddings, head and gains (train.py: Muon)
muon_lr = 0.02  # Keller Jordan's and nanochat's Muon rate
embed_lr = 0.05  # Adam rates of nanochat's recipe (embedding 0.2, head 0.004 at 0.5M-token batches), scaled down
head_lr = 0.002  # for our 32K-token batches
learning_rate = 2e-3  # norm gains
weight_decay = 0.0  # none on the Adam groups (as modded-nanogpt and nanochat); Muon's matrices never decay here
min_lr = 2e-5  # every group ends at 1% of its peak rate
warmup_iters = 100
lr_schedule = 'wsd'  # flat, then linear to min_lr over the last cooldown_frac of the budget
cooldown_frac = 0.4
ffn = 'relu2'  # ReLU squared, d_ff 4 x 512: about the parameters of SwiGLU's 3 x 1344 (2.10M vs 2.06M a layer)
d_ff = 2048
qk_norm = True
zero_init_proj = True
logit_softcap = 15.0  # cap tanh(z / cap), inside the fused loss kernel on CUDA (model.FusedLinearCrossEntropy)
grad_clip = 1.0
eval_interval = 0  # no evaluations by iteration count...
eval_interval_s = 30.0  # ...but the whole validation split every 30 s of training (off the clock), and at the end
log_interval = 100
dtype = 'bfloat16'
compile = True

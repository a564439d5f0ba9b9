"""
train.py: train model.py's Transformer LM on a folder of token files (CS336 assignment 1, nanoGPT-shaped).

One process on a CPU or one GPU:
    python train.py config/quick.py                      # CPU, a few minutes, on data/docs
    python train.py config/a1.py                         # the course's A1 run on one GPU
    python train.py config/a1.py --batch_size=64 --compile=False
Many GPUs of one node (DDP; a step sees batch_size x gradient_accumulation_steps sequences on any number of GPUs):
    torchrun --standalone --nproc_per_node=8 train.py config/a1.py
    torchrun --standalone --nproc_per_node=8 train.py config/a1.py --ddp_impl=bucketed   # ddp.py's own DDP
Other modes:
    python train.py --mode=sample --out_dir=out-quick --prompt="The kernel"   # sample from a checkpoint
    python train.py config/a1.py --mode=bench                                  # synthetic-token throughput + MFU
    python train.py config/a1.py --resume=True                                 # continue out_dir/ckpt.pt exactly

What is here, top to bottom: the config globals; data (token folders, `get_batch`, a GPU-resident sampler);
`AdamW` written from scratch; the cosine schedule; gradient clipping; checkpoints; `train(cfg) -> summary`;
sampling; the throughput benchmark. As a library: `import train; train.train({**train.config, 'max_iters': 100})`.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from model import ModelConfig, TransformerLM, count_parameters, estimate_mfu

ROOT = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# default config values: the course's A1 recipe (4 layers x 512, context 256, 327.68M tokens) on data/docs
# I/O
mode = 'train'  # 'train' | 'sample' (generate from out_dir/ckpt.pt) | 'bench' (synthetic-token throughput)
out_dir = 'out'  # checkpoint ckpt.pt, log.jsonl and loss.png go here ('' = write nothing)
eval_interval = 500  # evaluate on validation data every this many iterations (and at the end); 0 = only at the end
eval_iters = 20  # batches per evaluation
log_interval = 10  # print (and sync with the GPU) every this many iterations
save_checkpoint = True  # write out_dir/ckpt.pt at every evaluation and at the end
resume = False  # continue from out_dir/ckpt.pt: same config needed, same loss curve as an uninterrupted run
wandb_log = False  # also log to Weights & Biases (pip install wandb)
wandb_project = 'lmscratch'
wandb_run_name = 'run'
# data
data_dir = 'data/docs'  # folder with train.bin, val.bin, meta.json (written by data/*/prepare.py); relative to repo
batch_size = 128  # sequences per micro-batch per process
gradient_accumulation_steps = 1  # micro-batches per step over all processes: a step is always batch_size x this
context_length = 256  # tokens per sequence
# model
vocab_size = -1  # -1 = meta.json's vocab_size; larger values pad the embedding (e.g. 50304 for GPT-2's 50257)
d_model = 512
num_layers = 4
num_heads = 16
d_ff = 1344  # 0 = derived: 8/3 d_model rounded to 64 for SwiGLU, 4 d_model for ffn='silu'
rope_theta = 10000.0
attn_impl = 'sdpa'  # 'reference' | 'sdpa' | 'flash' (flash_attn.py's Triton kernel)
# two speed switches of model.py, measured on an H100 (results/train_throughput.md, round 6): together they take
# GPT-2 small's step from 68.5 to 64.7 ms and A1's from 12.8 to 11.6 ms; the same validation loss after 3000 steps
fused_loss = True  # CUDA: lm_head + cross-entropy + its gradient in one Triton kernel (model.FusedLinearCrossEntropy)
lowp_residual = True  # under autocast, keep the residual stream in bf16 rather than float32 (halves the norms' traffic)
norm = 'rmsnorm'  # ablation: 'none'
post_norm = False  # ablation: post-norm blocks
pos_emb = 'rope'  # ablation: 'nope'
ffn = 'swiglu'  # ablation: 'silu' (set d_ff=0 for 4 d_model)
tie_embeddings = False
qk_norm = False
num_kv_heads = 0  # 0 = num_heads; fewer = grouped-query attention
# optimizer and schedule
optimizer = 'adamw'  # 'adamw' (ours, below) | 'torch_adamw' (torch.optim.AdamW, fused kernel on GPU: faster)
learning_rate = 1e-3  # peak learning rate
min_lr = 1e-4  # ~= learning_rate/10 per Chinchilla
max_iters = 10000  # optimizer steps (A1: 10,000 x 128 x 256 = 327.68M tokens)
warmup_iters = 200  # linear warmup steps
lr_decay_iters = -1  # end of the cosine (cosine_cycle_iters); -1 = max_iters
weight_decay = 0.1  # decoupled, on matrices only (not on norm gains)
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
grad_clip = 1.0  # global-norm gradient clipping; 0 = off
max_time_s = 0.0  # stop training after this many seconds (0 = no limit); the schedule still assumes max_iters
# system
device = 'auto'  # 'auto' (cuda if available) | 'cpu' | 'cuda' | 'cuda:1' ...
dtype = 'bfloat16'  # 'bfloat16' (autocast, float32 master weights) | 'float32'
compile = True  # torch.compile the model (first iterations are slow while it compiles)
tf32 = True  # TensorFloat-32 for the float32 matmuls that remain
cpu_threads = 0  # torch threads on a CPU; 0 = torch's default. On a busy machine 1 can be many times faster
seed = 1337
ddp_impl = 'torch'  # under torchrun: 'torch' (DistributedDataParallel) or ddp.py's naive|flat|individual|bucketed
bucket_size_mb = 25.0  # for ddp_impl='bucketed'
fsdp = False  # shard parameters with fsdp.py's FSDP instead of DDP
peak_flops = 989e12  # for MFU: H100 SXM dense bf16
# sampling (end of training, and --mode=sample)
ckpt_path = ''  # '' = out_dir/ckpt.pt
prompt = ''  # '' = start from the end-of-text token
num_samples = 1
max_new_tokens = 200
temperature = 0.8
top_p = 0.95
# benchmark (--mode=bench)
bench_iters = 30  # timed steps after warm-up (a step: gradient_accumulation_steps micro-batches, as in train)
bench_optimizers = 'torch_adamw,adamw'  # which optimizers --mode=bench times, comma-separated
bench_generate = False  # also time KV-cache generation (batch 64 and 1, 128-token prompts, 256 new tokens, bf16)
bench_profile = False  # print torch.profiler's table of the kernels of a few training steps
compile_tuning = False  # inductor's coordinate-descent tuning of its kernels: slower compile, often faster steps
# torch.compile mode: 'default' | 'reduce-overhead' (CUDA graphs; H100: +0.5-0.7%, one micro-batch per step only) |
# 'max-autotune-no-cudagraphs' (GPT-2 small: cuBLAS beat every Triton matmul template, no gain, 280 s to compile)
compile_mode = 'default'
# -----------------------------------------------------------------------------
exec(open(os.path.join(ROOT, 'configurator.py')).read())  # overrides from the command line or a config file
config = {k: globals()[k] for k in _config_keys}  # noqa: F821 (defined by configurator.py)
# -----------------------------------------------------------------------------


# Data


def resolve_data_dir(path):
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def load_tokens(data_dir, split):
    """Open <data_dir>/<split>.bin as a read-only np.memmap with the dtype meta.json names; check it is sane.
    Returns (tokens, meta)."""
    data_dir = resolve_data_dir(data_dir)
    meta_path = os.path.join(data_dir, 'meta.json')
    hint = f"write it with `python {os.path.relpath(os.path.join(data_dir, 'prepare.py'), os.getcwd())}`"
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: {hint} (or point --data_dir at a prepared folder)")
    with open(meta_path) as f:
        meta = json.load(f)
    for key in ('vocab_size', 'dtype'):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks '{key}': re-run the prepare script")
    if meta['dtype'] not in ('uint16', 'uint32'):
        raise ValueError(f"{meta_path}: dtype must be 'uint16' or 'uint32', got {meta['dtype']!r}")
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {hint}")
    itemsize = np.dtype(meta['dtype']).itemsize
    size = os.path.getsize(path)
    if size == 0 or size % itemsize:
        raise ValueError(f"{path} has {size} bytes, not a whole number of {meta['dtype']} tokens: the file is "
                         f"truncated or was written with another dtype than meta.json's; re-run the prepare script")
    # a fresh memmap per call: nanoGPT re-creates it every batch to dodge a memory leak, but we read it once
    # (https://stackoverflow.com/questions/45132940/numpy-memmap-memory-usage-want-to-iterate-once/61472122#61472122)
    tokens = np.memmap(path, dtype=meta['dtype'], mode='r')
    return tokens, meta


def check_tokens(tokens, vocab_size, context_length, name):
    """Ids must fit the embedding, and the file must hold at least one training window."""
    if len(tokens) < context_length + 2:
        raise ValueError(f"{name} has only {len(tokens)} tokens, fewer than context_length+2 = {context_length + 2}:"
                         f" use a shorter --context_length or more data")
    top = int(tokens.max())  # one pass over the file (~0.1 s per 100M tokens)
    if top >= vocab_size:
        raise ValueError(f"{name} holds token id {top} but the model's vocab_size is {vocab_size}: the data was "
                         f"tokenized with a larger vocabulary; set --vocab_size={top + 1} or higher, or re-tokenize")


def val_bytes_per_token(meta, n_val_tokens):
    """UTF-8 bytes per validation token, if meta.json records the validation text's size (for bits per byte)."""
    for key in ('val_bytes', 'val_text_bytes'):
        if meta.get(key):
            return meta[key] / n_val_tokens
    split = (meta.get('splits') or {}).get('val') or {}
    if isinstance(split, dict) and split.get('bytes'):
        return split['bytes'] / n_val_tokens
    return None


def get_batch(data, batch_size, context_length, device):
    """The course's get_batch: batch_size windows at uniform random starts in [0, len - context_length - 1];
    x = data[s : s+T], y = data[s+1 : s+T+1] (the next token of each position). LongTensors (B, T) on device."""
    starts = np.random.randint(0, len(data) - context_length, size=batch_size)
    windows = data[starts[:, None] + np.arange(context_length + 1)].astype(np.int64)  # (B, T+1)
    w = torch.from_numpy(windows)
    if str(device).startswith('cuda'):
        w = w.pin_memory().to(device, non_blocking=True)  # pinned: the copy runs asynchronously to the GPU
    else:
        w = w.to(device)
    return w[:, :-1], w[:, 1:]


class TokenSampler:
    """Random windows of one split, fast enough never to make the GPU wait.
    If the split fits in GPU memory (a quarter of what is free), it is copied there once and every batch is a
    gather on the GPU: no CPU work, no host-to-device copy per step (nanoGPT's loop stacks slices on the CPU
    each step, which halves its speed on real data). Otherwise the windows are gathered from the memmap on
    the CPU and copied from pinned memory without blocking.
    Starts come from a torch.Generator of our own: its state goes into checkpoints, so a resumed run draws the
    same batches, and all ranks with the same seed draw the same global batch (each then takes its slice)."""

    def __init__(self, tokens, context_length, device, seed):
        self.T, self.device, self.n = context_length, torch.device(device), len(tokens)
        self.on_gpu = False
        if self.device.type == 'cuda':
            free, _ = torch.cuda.mem_get_info(self.device)
            self.on_gpu = 4 * self.n < free / 4
        if self.on_gpu:
            self.tokens = torch.from_numpy(tokens.astype(np.int32)).to(self.device)  # int32: 4 bytes a token
            self.offsets = torch.arange(context_length + 1, device=self.device)
            self.generator = torch.Generator(device=self.device)
        else:
            self.tokens = tokens
            self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def starts(self, n, generator=None):
        g = generator or self.generator
        return torch.randint(0, self.n - self.T - 1 + 1, (n,), generator=g, device=g.device)  # in [0, len-T-1]

    def batch(self, starts):
        """starts (B,) -> x, y (B, T) int64 on the device."""
        if self.on_gpu:
            w = self.tokens[starts[:, None] + self.offsets].long()  # (B, T+1) gather on the GPU
        else:
            s = starts.numpy()
            w = torch.from_numpy(self.tokens[s[:, None] + np.arange(self.T + 1)].astype(np.int64))
            if self.device.type == 'cuda':
                w = w.pin_memory().to(self.device, non_blocking=True)
        return w[:, :-1], w[:, 1:]


# -----------------------------------------------------------------------------
# Optimizer, schedule, clipping


class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2), as the course writes it. For each parameter, step t from 1:
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2            (moment estimates)
        lr_t = lr sqrt(1-b2^t) / (1-b1^t)                       (bias correction folded into the step size)
        theta -= lr_t m / (sqrt(v) + eps)
        theta -= lr wd theta                                    (decoupled weight decay)
    torch.optim.AdamW differs only in where eps sits (sqrt(v_hat)+eps) and applies the decay first; the tests
    check the two agree closely. The loop runs ~6 small kernels per parameter: torch's fused kernel
    (optimizer='torch_adamw') does all parameters in one and is the faster choice on a GPU."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"bad AdamW hyperparameters: lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group['lr'], group['betas'], group['eps'], group['weight_decay']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p)
                    state['exp_avg_sq'] = torch.zeros_like(p)
                state['step'] += 1
                t, m, v, g = state['step'], state['exp_avg'], state['exp_avg_sq'], p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-lr_t)
                if wd:
                    p.mul_(1 - lr * wd)
        return loss


def lr_cosine_schedule(it, max_lr, min_lr, warmup_iters, cosine_cycle_iters):
    """1) linear warmup to max_lr, 2) cosine decay to min_lr at cosine_cycle_iters, 3) min_lr after."""
    if it < warmup_iters:
        return max_lr * it / warmup_iters
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return min_lr


@torch.no_grad()
def gradient_clipping(params, max_norm, eps=1e-6, sharded=False):
    """Scale all gradients by max_norm / (||g|| + eps) when the global L2 norm ||g|| exceeds max_norm.
    The scale is clamped at 1 on the GPU instead of tested with `if`, which would sync with the CPU every step.
    sharded=True (FSDP: each rank holds a slice of every gradient) sums the squares over ranks first.
    Returns the norm before clipping (a 0-d tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # foreach ops: one kernel launch for the whole list (what torch.nn.utils.clip_grad_norm_ does)
    sq = torch.stack([n.float() for n in torch._foreach_norm(grads)]).pow(2).sum()
    if sharded:
        dist.all_reduce(sq)
    norm = sq.sqrt()
    scale = (max_norm / (norm + eps)).clamp(max=1.0)
    torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return norm


OPTIMIZERS = ('adamw', 'torch_adamw')  # the values of cfg['optimizer'] (and of bench_optimizers' entries)


def configure_optimizer(params, cfg, device_type):
    """Weight decay on matrices (embeddings, projections) but not on the 1-D norm gains (as nanoGPT and most LLMs)."""
    params = [p for p in params if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg['weight_decay']},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    kw = dict(lr=cfg['learning_rate'], betas=(cfg['beta1'], cfg['beta2']), eps=cfg['eps'])
    if cfg['optimizer'] == 'adamw':
        return AdamW(groups, **kw)
    if cfg['optimizer'] == 'torch_adamw':
        return torch.optim.AdamW(groups, **kw, fused=device_type == 'cuda')
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg['optimizer']!r}")


# -----------------------------------------------------------------------------
# Checkpoints


# NOTE: the course names this function save_checkpoint, like the config key above; the config value lives on in
# the `config` dict (taken before this point), while the module name now means the function.
def save_checkpoint(model, optimizer, iteration, out, **extra):  # noqa: F811
    """Write {'model', 'optimizer', 'iter_num', **extra} atomically: to a temp file first, then os.replace, so an
    interruption never leaves a half-written ckpt.pt behind (nanoGPT's torch.save straight to the file can)."""
    model = getattr(model, '_orig_mod', model)  # torch.compile wraps the module; save the plain one's names
    state = model if isinstance(model, dict) else model.state_dict()  # a state dict may be passed directly (FSDP)
    ckpt = {'model': state, 'optimizer': optimizer.state_dict() if optimizer is not None else None,
            'iter_num': iteration, **extra}
    if isinstance(out, (str, os.PathLike)):
        tmp = f"{out}.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, out)
    else:
        torch.save(ckpt, out)


def load_checkpoint(src, model, optimizer=None):
    """Restore model (and optimizer) from save_checkpoint's file; return the iteration it was saved at."""
    ckpt = torch.load(src, map_location='cpu', weights_only=False)
    model = getattr(model, '_orig_mod', model)
    model.load_state_dict(ckpt['model'])
    if optimizer is not None and ckpt.get('optimizer') is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
    return ckpt['iter_num']


# -----------------------------------------------------------------------------
# Setup helpers


def setup_distributed(device_cfg):
    """Under torchrun (RANK set): init the process group (NCCL on GPUs, gloo on CPUs) unless a caller already did.
    Returns (rank, local_rank, world_size, device, we_initialized)."""
    if int(os.environ.get('RANK', -1)) == -1 and not dist.is_initialized():
        dev = device_cfg if device_cfg != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
        return 0, 0, 1, dev, False
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = torch.cuda.is_available() and device_cfg != 'cpu'
    dev = f'cuda:{local_rank}' if use_cuda else 'cpu'
    if use_cuda:
        torch.cuda.set_device(dev)
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return dist.get_rank(), local_rank, dist.get_world_size(), dev, ours


def compile_model(model, cfg):
    """torch.compile fuses the many small elementwise ops (norms, RoPE, SwiGLU, the loss) into few kernels."""
    if not cfg['compile']:
        return model
    if cfg['compile_tuning']:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
    modes = ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune')
    if cfg['compile_mode'] not in modes:
        raise ValueError(f"compile_mode must be one of {modes}, got {cfg['compile_mode']!r}")
    if cfg['compile_mode'] in ('reduce-overhead', 'max-autotune') and \
            cfg['gradient_accumulation_steps'] > int(os.environ.get('WORLD_SIZE', '1')):
        # a CUDA graph writes its outputs into the same memory at every replay, so the gradients of one micro-batch
        # are overwritten by the next one's before they are added up (torch: "accessing tensor output of CUDAGraphs
        # that has been overwritten by a subsequent run")
        raise ValueError(f"compile_mode={cfg['compile_mode']!r} uses CUDA graphs, which cannot accumulate gradients "
                         f"over micro-batches: use gradient_accumulation_steps=1 per process (a larger batch_size) "
                         f"or compile_mode='default'")
    return torch.compile(model, mode=cfg['compile_mode'])


def build_model_args(cfg, vocab):
    args = dict(vocab_size=vocab, context_length=cfg['context_length'], d_model=cfg['d_model'],
                num_layers=cfg['num_layers'], num_heads=cfg['num_heads'], d_ff=cfg['d_ff'] or None,
                rope_theta=cfg['rope_theta'], attn_impl=cfg['attn_impl'], norm=cfg['norm'], post_norm=cfg['post_norm'],
                pos_emb=cfg['pos_emb'], ffn=cfg['ffn'], tie_embeddings=cfg['tie_embeddings'], qk_norm=cfg['qk_norm'],
                num_kv_heads=cfg['num_kv_heads'] or None)
    return asdict(ModelConfig(**args))  # with the derived values filled in (d_ff, num_kv_heads)


def build_model(cfg, model_args, dev):
    """The model on `dev`, with model.py's two training-speed switches set from cfg (they are not architecture,
    so they stay out of model_args and the checkpoint)."""
    model = TransformerLM(**model_args).to(dev)
    model.fused_loss = cfg['fused_loss']
    model.lowp_residual = cfg['lowp_residual']
    return model


def check_config(cfg):
    unknown = sorted(set(cfg) - set(config))
    if unknown:
        import difflib
        hints = {k: difflib.get_close_matches(k, config, n=1) for k in unknown}
        raise KeyError("unknown config keys: " + ', '.join(f"{k} (did you mean {h[0]}?)" if h else k
                                                          for k, h in hints.items()))
    return {**config, **cfg}


class JSONLLogger:
    """One JSON object per line, appended and flushed as we go (a crash loses nothing)."""

    def __init__(self, path, keep_until_iter=None):
        self.path = path
        if path and keep_until_iter is not None and os.path.exists(path):
            # resuming: drop what the interrupted run logged after its checkpoint, so the log has one curve
            with open(path) as f:
                rows = [r for r in map(json.loads, f) if r.get('iter', 0) <= keep_until_iter]
            with open(path + '.tmp', 'w') as f:
                f.writelines(json.dumps(r) + '\n' for r in rows)
            os.replace(path + '.tmp', path)
        elif path:
            open(path, 'w').close()

    def log(self, **row):
        if self.path:
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')


def plot_losses(log_path, png_path, title=''):
    """Train and validation loss against tokens and against wall-clock time, from the JSONL log."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(log_path) as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if 'train_loss' in r]
    val_rows = [r for r in rows if 'val_loss' in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in [(axes[0], 'tokens', 'tokens'), (axes[1], 'time_s', 'wall-clock (s)')]:
        ax.plot([r[key] for r in train_rows], [r['train_loss'] for r in train_rows], label='train', alpha=0.7)
        ax.plot([r[key] for r in val_rows], [r['val_loss'] for r in val_rows], 'o-', label='validation')
        ax.set_xlabel(label)
        ax.set_ylabel('loss (nats/token)')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path + '.tmp.png', dpi=110)
    plt.close(fig)
    os.replace(png_path + '.tmp.png', png_path)


def load_tokenizer(tokenizer_dir):
    """bpe.py's Tokenizer for decoding samples, or None (with a warning) if it cannot be loaded."""
    try:
        from bpe import Tokenizer
        return Tokenizer.from_dir(tokenizer_dir)
    except Exception as e:  # sampling still works, we just print ids
        print(f"warning: could not load the tokenizer from {tokenizer_dir} ({e}); printing token ids")
        return None


def sample_text(model, tokenizer, eot_id, prompt_text, n, max_new, temperature, top_p, seed):
    """Generate n samples; returns the decoded texts (or id lists without a tokenizer)."""
    ids = tokenizer.encode(prompt_text) if (tokenizer and prompt_text) else [eot_id if eot_id is not None else 0]
    max_new = min(max_new, model.config.context_length - len(ids))
    if max_new <= 0:
        raise ValueError(f"the prompt has {len(ids)} tokens, no room left in context_length "
                         f"{model.config.context_length}: use a shorter --prompt")
    outs = model.generate([ids] * n, max_new, temperature=temperature, top_p=top_p, eos_id=eot_id, seed=seed)
    if tokenizer is None:
        return [str(o) for o in outs]
    return [prompt_text + tokenizer.decode([t for t in o if t != eot_id]) for o in outs]


# -----------------------------------------------------------------------------
# Training


def train(cfg):
    """Run one training as cfg (a dict of this file's config keys; missing keys take the defaults) describes.
    Returns a summary dict. Works under torchrun too (then every rank calls it; rank 0 writes)."""
    cfg = check_config(cfg)
    rank, local_rank, world_size, dev, we_initialized = setup_distributed(cfg['device'])
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    device_type = 'cuda' if 'cuda' in dev else 'cpu'
    # A step always sees batch_size x gradient_accumulation_steps sequences, whatever the number of processes, so
    # that one config gives the same run on 1 or N GPUs. N processes share the micro-steps (nanoGPT's rule) or,
    # with fewer micro-steps than processes, split each micro-batch: 8 GPUs run config/a1.py as 8 x 16 sequences.
    B, gas = cfg['batch_size'], cfg['gradient_accumulation_steps']
    if gas % world_size == 0:
        accum = gas // world_size  # micro-steps per rank
    elif world_size % gas == 0 and (B * gas) % world_size == 0:
        accum, B = 1, B * gas // world_size
    else:
        raise ValueError(f"cannot share {gas} micro-batches of {B} sequences among {world_size} processes: make "
                         f"gradient_accumulation_steps a multiple of {world_size}, or batch_size x "
                         f"gradient_accumulation_steps a multiple of it")
    global_micro = accum * world_size
    if cfg['cpu_threads'] > 0:
        torch.set_num_threads(cfg['cpu_threads'])  # OpenMP threads spin-wait for each other: shared cores hurt
    torch.manual_seed(cfg['seed'])  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if cfg['tf32']:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg['dtype'] not in ('bfloat16', 'float32'):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {cfg['dtype']!r}")
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if cfg['dtype'] == 'bfloat16' else nullcontext())

    # 1) Data
    train_tokens, meta = load_tokens(cfg['data_dir'], 'train')
    val_tokens, _ = load_tokens(cfg['data_dir'], 'val')
    vocab = cfg['vocab_size'] if cfg['vocab_size'] > 0 else meta['vocab_size']
    check_tokens(train_tokens, vocab, cfg['context_length'], f"{cfg['data_dir']}/train.bin")
    check_tokens(val_tokens, vocab, cfg['context_length'], f"{cfg['data_dir']}/val.bin")
    tokenizer_dir = meta.get('tokenizer_dir')
    if tokenizer_dir and not os.path.isabs(tokenizer_dir):
        tokenizer_dir = os.path.join(resolve_data_dir(cfg['data_dir']), tokenizer_dir)
    bytes_per_token = val_bytes_per_token(meta, len(val_tokens))
    train_sampler = TokenSampler(train_tokens, cfg['context_length'], dev, cfg['seed'])
    val_sampler = TokenSampler(val_tokens, cfg['context_length'], dev, cfg['seed'])
    T = cfg['context_length']
    tokens_per_iter = B * T * global_micro
    print0(f"data: {cfg['data_dir']}: {len(train_tokens):,} train / {len(val_tokens):,} val tokens, vocab {vocab}; "
           f"{'on the GPU' if train_sampler.on_gpu else 'memmap'}")
    print0(f"tokens per iteration: {tokens_per_iter:,} ({world_size} processes x {accum} micro-steps x {B} x {T}); "
           f"{cfg['max_iters']} iterations = {tokens_per_iter * cfg['max_iters'] / 1e6:.2f}M tokens")

    # 2) Model, optimizer, resume
    model_args = build_model_args(cfg, vocab)
    raw_model = build_model(cfg, model_args, dev)
    n_params = count_parameters(raw_model)
    print0(f"model: {n_params / 1e6:.2f}M parameters without the embedding table "
           f"({count_parameters(raw_model, exclude_embeddings=False) / 1e6:.2f}M with); {model_args}")
    out_dir = cfg['out_dir'] if master else ''
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    ckpt_file = os.path.join(cfg['out_dir'], 'ckpt.pt') if cfg['out_dir'] else ''
    iter_num, best_val = 0, float('inf')
    ckpt = None
    if cfg['resume']:
        if not ckpt_file or not os.path.exists(ckpt_file):
            raise FileNotFoundError(f"--resume=True but {ckpt_file or '(no out_dir)'} does not exist: "
                                    f"train without --resume first, or point --out_dir at the run to continue")
        ckpt = torch.load(ckpt_file, map_location='cpu', weights_only=False)
        if ckpt.get('model_args') != model_args:
            diff = {k: (ckpt.get('model_args', {}).get(k), v) for k, v in model_args.items()
                    if ckpt.get('model_args', {}).get(k) != v}
            raise ValueError(f"{ckpt_file} was trained with another model config, (checkpoint, now) = {diff}: "
                             f"use the run's config (saved in the checkpoint) or another --out_dir")
        raw_model.load_state_dict(ckpt['model'])
        iter_num, best_val = ckpt['iter_num'], ckpt.get('best_val_loss', float('inf'))
        print0(f"resuming from {ckpt_file} at iteration {iter_num}")

    model = compile_model(raw_model, cfg)
    use_fsdp = cfg['fsdp'] and world_size > 1
    custom_ddp = world_size > 1 and (use_fsdp or cfg['ddp_impl'] != 'torch')
    if world_size > 1:
        if use_fsdp:
            try:
                import fsdp as fsdp_lib  # the project's FSDP (fsdp.py), imported only on this path
            except ImportError as e:
                raise ImportError(f"fsdp=True needs fsdp.py next to train.py ({e})") from e
            model = fsdp_lib.FSDP(model)
        elif cfg['ddp_impl'] == 'torch':
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
        else:
            try:
                import ddp as ddp_lib  # the project's own DDP variants (ddp.py), imported only on this path
            except ImportError as e:
                raise ImportError(f"ddp_impl={cfg['ddp_impl']!r} needs ddp.py next to train.py ({e})") from e
            model = ddp_lib.wrap(model, cfg['ddp_impl'], cfg['bucket_size_mb'])
    clip_params = list(model.parameters() if use_fsdp else raw_model.parameters())  # FSDP: the local shards
    optimizer = configure_optimizer(clip_params, cfg, device_type)
    if ckpt is not None:
        if use_fsdp:
            model.load_full_state_dict(ckpt['model'])
            print0("note: FSDP resume restores the weights; optimizer state starts fresh")
        elif ckpt.get('optimizer') is not None:
            optimizer.load_state_dict(ckpt['optimizer'])
        rng = ckpt['rng']
        torch.set_rng_state(rng['torch'])
        train_sampler.generator.set_state(rng['sampler'])  # a CPU ByteTensor for CPU and CUDA generators alike
    lr_decay_iters = cfg['lr_decay_iters'] if cfg['lr_decay_iters'] > 0 else cfg['max_iters']
    logger = JSONLLogger(os.path.join(out_dir, 'log.jsonl') if out_dir else '', iter_num if cfg['resume'] else None)
    wandb_run = None
    if cfg['wandb_log'] and master:
        import wandb
        wandb_run = wandb.init(project=cfg['wandb_project'], name=cfg['wandb_run_name'], config=cfg)

    def sync():
        if device_type == 'cuda':
            torch.cuda.synchronize()

    @torch.no_grad()
    def evaluate():
        """Mean loss over eval_iters x batch_size sequences of each split: always the same ones (a fixed generator),
        so that evaluations compare, and the same on any number of ranks (each takes a slice of every batch)."""
        out = {}
        n_eval = cfg['eval_iters'] * cfg['batch_size']
        for split, sampler in (('val', val_sampler), ('train', train_sampler)):
            g = torch.Generator(device=sampler.generator.device).manual_seed(cfg['seed'] + 1)
            total = torch.zeros((), device=dev)
            starts = sampler.starts(n_eval, generator=g).view(cfg['eval_iters'], cfg['batch_size'])
            for k in range(cfg['eval_iters']):
                mine = torch.tensor_split(starts[k], world_size)[rank]
                if len(mine):
                    x, y = sampler.batch(mine)
                    with autocast:
                        total += model(x, targets=y).float() * len(mine)  # mean -> sum over this slice
            if world_size > 1:
                dist.all_reduce(total)
            out[split] = total.item() / n_eval  # .item(): a CPU-GPU sync point
        return out

    def checkpoint(it):
        if not cfg['save_checkpoint'] or not cfg['out_dir']:
            return
        state = model.full_state_dict() if use_fsdp else None  # a collective: every rank takes part
        if not out_dir:  # not rank 0
            return
        extra = dict(model_args=model_args, config=cfg, best_val_loss=best_val, tokenizer_dir=tokenizer_dir,
                     rng={'torch': torch.get_rng_state(), 'sampler': train_sampler.generator.get_state()})
        # FSDP: the full weights gathered from the shards; its optimizer state stays sharded and is not saved
        save_checkpoint(raw_model if state is None else state, None if use_fsdp else optimizer, it, ckpt_file, **extra)

    # 3) Training loop
    print0(f"training on {dev} ({world_size} process{'es' if world_size > 1 else ''}, {cfg['dtype']}, "
           f"compile={cfg['compile']}, optimizer={cfg['optimizer']}, ddp_impl={cfg['ddp_impl']})")
    t_start = time.time()
    train_time, eval_time = 0.0, 0.0  # seconds in the loop excluding evaluations, and in evaluations
    steady_tokens, steady_time = 0, 0.0  # after the first log interval (compilation, warm-up) for tokens/s
    last = {}
    start_iter = iter_num
    loss_accum = torch.zeros((), device=dev)
    sync()
    t0 = time.time()
    while iter_num < cfg['max_iters']:
        lr = lr_cosine_schedule(iter_num + 1, cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'],
                                lr_decay_iters)  # t from 1: the first step already moves
        for group in optimizer.param_groups:
            group['lr'] = lr
        # every rank draws the same global batch and takes its micro-batches: a run on N processes sees the same
        # data as one process with N times the accumulation steps
        starts = train_sampler.starts(global_micro * B).view(global_micro, B)
        for micro in range(accum):
            x, y = train_sampler.batch(starts[rank * accum + micro])
            last_micro = micro == accum - 1
            # skip the gradient all-reduce on all but the last micro-step: grads accumulate locally meanwhile
            ctx = model.no_sync() if (world_size > 1 and not last_micro) else nullcontext()
            with ctx:
                with autocast:
                    loss = model(x, targets=y) / accum
                loss.backward()
            loss_accum += loss.detach()
        if custom_ddp:
            model.finish_gradient_synchronization()  # wait for the last all-reduces (custom wrappers)
        if cfg['grad_clip'] > 0:
            gradient_clipping(clip_params, cfg['grad_clip'], sharded=use_fsdp)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        done = iter_num >= cfg['max_iters']
        if world_size == 1 and 0 < cfg['max_time_s'] < time.time() - t_start:
            done = True  # one process: check the clock every step (with several, rank 0 decides at log steps)
            print0(f"stopping at iteration {iter_num}: max_time_s={cfg['max_time_s']} reached")
        if iter_num % cfg['log_interval'] == 0 or done:
            if world_size > 1:
                dist.all_reduce(loss_accum)
                loss_accum /= world_size
            n_iters = iter_num - max(start_iter, last.get('iter', start_iter))
            train_loss = loss_accum.item() / n_iters  # .item(): a CPU-GPU sync point, only every log_interval
            loss_accum.zero_()
            dt = time.time() - t0
            train_time += dt
            if last:  # skip the first interval (compilation) in the steady-state throughput
                steady_tokens += n_iters * tokens_per_iter
                steady_time += dt
            tok_s = n_iters * tokens_per_iter / dt
            mfu = estimate_mfu(raw_model, tok_s, cfg['peak_flops']) if device_type == 'cuda' else 0.0
            tokens = iter_num * tokens_per_iter
            print0(f"iter {iter_num}: loss {train_loss:.4f}, lr {lr:.2e}, {dt / n_iters * 1000:.1f}ms/it, "
                   f"{tok_s:,.0f} tok/s, mfu {mfu * 100:.1f}%")
            last = dict(iter=iter_num, train_loss=train_loss, lr=lr, tokens=tokens, time_s=time.time() - t_start,
                        tokens_per_s=tok_s, mfu=mfu)
            logger.log(**last)
            if wandb_run:
                wandb_run.log(last, step=iter_num)
            if cfg['max_time_s'] > 0 and world_size > 1 and not done:  # rank 0's clock decides, for everyone
                stop = torch.tensor(float(time.time() - t_start > cfg['max_time_s']), device=dev)
                if world_size > 1:
                    dist.broadcast(stop, 0)
                if stop.item():
                    print0(f"stopping at iteration {iter_num}: max_time_s={cfg['max_time_s']} reached")
                    done = True
            sync()
            t0 = time.time()
        if (cfg['eval_interval'] > 0 and iter_num % cfg['eval_interval'] == 0) or done:
            if cfg['eval_iters'] > 0:
                te = time.time()
                losses = evaluate()
                best_val = min(best_val, losses['val'])
                row = dict(iter=iter_num, val_loss=losses['val'], train_loss_eval=losses['train'],
                           tokens=iter_num * tokens_per_iter, time_s=time.time() - t_start)
                print0(f"eval at iter {iter_num}: val loss {losses['val']:.4f}, train loss {losses['train']:.4f}")
                last['val_loss'] = losses['val']
                if bytes_per_token:  # tokenizer-independent: nats/token -> bits/byte
                    row['val_bpb'] = last['val_bpb'] = losses['val'] / math.log(2) / bytes_per_token
                    print0(f"  = {row['val_bpb']:.4f} bits per byte ({bytes_per_token:.3f} bytes/token)")
                logger.log(**row)
                if wandb_run:
                    wandb_run.log(row, step=iter_num)
                eval_time += time.time() - te
            checkpoint(iter_num)
            sync()
            t0 = time.time()
        if done:
            break

    # 4) Summary, plot, sample
    total_time = time.time() - t_start
    tokens_per_s = steady_tokens / steady_time if steady_time > 0 else last.get('tokens_per_s', 0.0)
    summary = dict(val_loss=last.get('val_loss'), val_bpb=last.get('val_bpb'), best_val_loss=best_val,
                   train_loss=last.get('train_loss'),
                   iters=iter_num, tokens=iter_num * tokens_per_iter, time_s=total_time, train_time_s=train_time,
                   tokens_per_s=tokens_per_s,
                   mfu=estimate_mfu(raw_model, tokens_per_s, cfg['peak_flops']) if device_type == 'cuda' else 0.0,
                   n_params=n_params, out_dir=cfg['out_dir'],
                   ckpt_path=ckpt_file if (out_dir and cfg['save_checkpoint']) else '',
                   log_path=logger.path, plot_path='', world_size=world_size, sample=None)
    print0(f"done: {iter_num} iterations, {summary['tokens'] / 1e6:.2f}M tokens in {total_time:.1f}s "
           f"(eval {eval_time:.1f}s); steady {tokens_per_s / 1e6:.3f}M tok/s, mfu {summary['mfu'] * 100:.1f}%; "
           f"val loss {summary['val_loss']}")
    if out_dir and logger.path:
        summary['plot_path'] = os.path.join(out_dir, 'loss.png')
        plot_losses(logger.path, summary['plot_path'], title=f"{cfg['data_dir']}: {model_args['num_layers']} layers "
                    f"x {model_args['d_model']}, {n_params / 1e6:.1f}M params")
    if master and cfg['max_new_tokens'] > 0 and cfg['num_samples'] > 0 and not use_fsdp:
        tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
        raw_model.eval()
        with autocast:
            texts = sample_text(raw_model, tokenizer, meta.get('eot_id'), cfg['prompt'], cfg['num_samples'],
                                cfg['max_new_tokens'], cfg['temperature'], cfg['top_p'], cfg['seed'])
        raw_model.train()
        summary['sample'] = texts[0]
        for t in texts:
            print(f"--- sample ---\n{t}\n")
    if out_dir:
        with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
    if wandb_run:
        wandb_run.finish()
    if we_initialized:
        dist.barrier()
        dist.destroy_process_group()
    return summary


# -----------------------------------------------------------------------------
# Sampling from a checkpoint


def sample(cfg):
    """--mode=sample: load out_dir/ckpt.pt (or ckpt_path), print num_samples continuations of prompt."""
    cfg = check_config(cfg)
    path = cfg['ckpt_path'] or os.path.join(cfg['out_dir'], 'ckpt.pt')
    dev = cfg['device'] if cfg['device'] != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    model = TransformerLM.from_checkpoint(path, map_location=dev).eval()
    ckpt_meta = torch.load(path, map_location='cpu', weights_only=False)
    tokenizer_dir = ckpt_meta.get('tokenizer_dir')
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
    eot = tokenizer.eot_id if tokenizer is not None else None
    use_bf16 = 'cuda' in dev and cfg['dtype'] == 'bfloat16'
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if use_bf16 else nullcontext()
    with ctx:
        texts = sample_text(model, tokenizer, eot, cfg['prompt'], cfg['num_samples'], cfg['max_new_tokens'],
                            cfg['temperature'], cfg['top_p'], cfg['seed'])
    for t in texts:
        print(f"--- sample ---\n{t}\n")
    return texts


# -----------------------------------------------------------------------------
# Benchmark: training throughput on synthetic tokens (and optionally generation speed)


def bench(cfg):
    """Time the training step of cfg's model on random tokens (no data loading at all), for each optimizer in
    bench_optimizers, and report tokens/s and MFU. A step is gradient_accumulation_steps micro-batches, as in
    train(). With bench_generate, also time KV-cache generation in bf16 (the ANCHORS.md setup: 128-token prompts,
    256 new tokens, greedy, batch 64 and batch 1)."""
    cfg = check_config(cfg)
    dev = cfg['device'] if cfg['device'] != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    device_type = 'cuda' if 'cuda' in dev else 'cpu'
    torch.manual_seed(cfg['seed'])
    if cfg['tf32']:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vocab = cfg['vocab_size'] if cfg['vocab_size'] > 0 else 10000
    model_args = build_model_args(cfg, vocab)
    raw_model = build_model(cfg, model_args, dev)
    model = compile_model(raw_model, cfg)
    B, T, gas = cfg['batch_size'], cfg['context_length'], cfg['gradient_accumulation_steps']
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if cfg['dtype'] == 'bfloat16' else nullcontext()
    data = torch.randint(0, vocab, (8, B, T + 1), device=dev)
    opt_names = [o.strip() for o in cfg['bench_optimizers'].split(',') if o.strip()]
    if not opt_names or any(o not in OPTIMIZERS for o in opt_names):
        raise ValueError(f"bench_optimizers: a comma-separated list of {OPTIMIZERS}, got {cfg['bench_optimizers']!r}")

    def sync():
        if device_type == 'cuda':
            torch.cuda.synchronize()

    results = {'model_args': model_args, 'device': torch.cuda.get_device_name() if device_type == 'cuda' else 'cpu'}
    print(f"bench: {count_parameters(raw_model) / 1e6:.2f}M parameters, batch {B} x {T}"
          f"{f' x {gas} micro-batches' if gas > 1 else ''}, {cfg['dtype']}, compile={cfg['compile']}"
          f"{'' if cfg['compile_mode'] == 'default' else ' ' + cfg['compile_mode']} on {results['device']}")
    for opt_name in opt_names:
        optimizer = configure_optimizer(raw_model.parameters(), {**cfg, 'optimizer': opt_name}, device_type)

        def step(i):
            for micro in range(gas):  # what train() does on one process: gradients add up over the micro-batches
                j = (i * gas + micro) % 8
                x, y = data[j, :, :-1], data[j, :, 1:]
                with autocast:
                    loss = model(x, targets=y) / gas
                loss.backward()
            if cfg['grad_clip'] > 0:
                gradient_clipping(raw_model.parameters(), cfg['grad_clip'])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t = time.time()
        for i in range(5):  # warm-up: compilation, allocator, kernel selection
            step(i)
        sync()
        warm = time.time() - t
        t = time.time()
        for i in range(cfg['bench_iters']):
            step(i)
        sync()
        dt = (time.time() - t) / cfg['bench_iters']
        tok_s = B * T * gas / dt
        mfu = estimate_mfu(raw_model, tok_s, cfg['peak_flops'])
        results[f'train_{opt_name}'] = dict(ms_per_iter=dt * 1000, tokens_per_s=tok_s, mfu=mfu, warmup_s=warm)
        print(f"train step ({opt_name}): {dt * 1000:.2f} ms/iter, {tok_s / 1e6:.3f}M tokens/s, "
              f"MFU {mfu * 100:.1f}% (warm-up incl. compile {warm:.1f}s)")
        del optimizer
    if cfg['bench_profile']:
        from torch.profiler import profile, ProfilerActivity
        optimizer = configure_optimizer(raw_model.parameters(), {**cfg, 'optimizer': 'torch_adamw'}, device_type)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == 'cuda' else [])
        for i in range(3):
            step(i)
        with profile(activities=acts) as prof:
            for i in range(5):
                step(i)
            sync()
        sort = 'cuda_time_total' if device_type == 'cuda' else 'cpu_time_total'
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
        print(table)
        results['profile'] = table
    if device_type == 'cuda':
        results['peak_memory_gb'] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak memory: {results['peak_memory_gb']:.1f} GiB")
    if cfg['bench_generate']:
        gen_model = TransformerLM(**{**model_args, 'context_length': max(model_args['context_length'], 384)})
        gen_model = gen_model.to(dev, dtype=torch.bfloat16 if device_type == 'cuda' else torch.float32).eval()
        for gb in (64, 1):
            prompts = torch.randint(0, vocab, (gb, 128)).tolist()
            ref = None
            for name, kw in (('eager', dict(cuda_graph=False)), ('cuda_graph', dict()),
                             ('compile+cuda_graph', dict(compile=True))):
                if name != 'eager':  # warm-up: allocates the cache, compiles, captures the graph
                    gen_model.generate(prompts, 256, temperature=0, **kw)
                sync()
                t = time.time()
                out = gen_model.generate(prompts, 256, temperature=0, **kw)
                sync()
                dt = time.time() - t
                n_new = sum(len(o) for o in out)
                if ref is None:
                    ref, check = out, 'the reference for the rows below'
                else:
                    # greedy rows of a random bf16 model: nearly tied logits flip under a different kernel's
                    # rounding, so rows may diverge; a late divergence is rounding, an immediate one would be a bug
                    same = sum(a == b for a, b in zip(out, ref))
                    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                              for a, b in zip(out, ref) if a != b]  # of the rows that differ
                    check = (f"all {same} rows equal to eager's" if same == len(out) else
                             f"{same}/{len(out)} rows equal to eager's, the others part after "
                             f"{sum(prefix) / len(prefix):.0f} tokens on average")
                results[f'generate_batch{gb}_{name}'] = dict(new_tokens_per_s=n_new / dt, seconds=dt, check=check)
                print(f"generate ({name}): batch {gb}, 128-token prompts, 256 new tokens: "
                      f"{n_new / dt:,.0f} new tokens/s ({dt:.3f} s); {check}")
    return results


if __name__ == '__main__':
    if mode == 'train':
        train(config)
    elif mode == 'sample':
        sample(config)
    elif mode == 'bench':
        res = bench(config)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, 'bench.json'), 'w') as f:
                json.dump(res, f, indent=1)
    else:
        sys.exit(f"--mode must be 'train', 'sample' or 'bench', got {mode!r}")

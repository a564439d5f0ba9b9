"""
train.py: train model.py's Transformer LM on a folder of token files (CS336 assignment 1, nanoGPT-shaped):
    python train.py config/quick.py                       # CPU, about 2 minutes, on data/pycode
    python train.py config/a1.py                          # the course's A1 run on one GPU
    python train.py config/pycode.py                      # a 300 s time-to-quality recipe on one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/a1.py   # DDP (--ddp_impl=bucketed: ddp.py's own)
    python train.py --mode=sample --out_dir=out-quick --prompt="def "   # sample from a checkpoint
    python train.py --mode=eval --out_dir=out-quick        # full-validation loss and bits/byte of a checkpoint
Library: `train.train({'max_iters': 100})` -> the summary dict. Throughput benchmarks: `python bench/train.py`.
"""
import difflib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import MappingProxyType

import numpy as np
import torch
import torch.distributed as dist

from model import ModelConfig, TransformerLM, count_parameters, estimate_mfu

ROOT = os.path.dirname(os.path.abspath(__file__))
# -----------------------------------------------------------------------------
# default config values: the course's A1 recipe (4 layers x 512, context 256, 327.68M tokens) on data/docs
# I/O
mode = 'train'  # 'train' | 'sample' (generate from a checkpoint) | 'eval' (full-validation loss of a checkpoint)
out_dir = 'out'  # ckpt.pt, log.jsonl, loss.png and summary.json go here ('' = write nothing)
overwrite = False  # train afresh in an out_dir that already holds a run (its ckpt.pt, log.jsonl, ... are replaced)
resume = False  # continue out_dir/ckpt.pt: same config (bar RESUMABLE_KEYS below), same loss curve as one run
eval_interval = 500  # evaluate every this many iterations; 0 = only at the end
eval_interval_s = 0.0  # also evaluate the whole validation split every this many seconds of training; 0 = off
eval_iters = -1  # validation batches per periodic evaluation; -1 = the whole split (the last evaluation always is)
log_interval = 10  # print (and sync with the GPU) every this many iterations
write_checkpoint = True  # write out_dir/ckpt.pt at every eval_interval evaluation and at the end (not eval_interval_s)
# data
data_dir = 'data/docs'  # folder with train.bin, val.bin, meta.json (written by data/*/prepare.py); relative to repo
batch_size = 128  # sequences per micro-batch in one process; under torchrun the step's total is shared (next key)
gradient_accumulation_steps = 1  # micro-batches per step over all processes: a step is always batch_size x this
context_length = 256  # tokens per sequence
# model
vocab_size = -1  # -1 = meta.json's vocab_size; larger values pad the embedding (e.g. 50304 for GPT-2's 50257)
d_model = 512  # the residual stream's width
num_layers = 4  # Transformer blocks
num_heads = 16  # attention heads, each of size d_model / num_heads
d_ff = 1344  # 0 = derived: 8/3 d_model rounded to 64 for SwiGLU, 4 d_model for ffn='silu' or 'relu2'
rope_theta = 10000.0  # RoPE base: pair i of a head rotates by position x theta^(-2i/head size)
attn_impl = 'sdpa'  # 'reference' | 'sdpa' | 'flash' (flash_attn.py's Triton kernel)
fused_loss = True  # CUDA: cross-entropy and its gradient in one Triton kernel over lm_head's logits (model.py)
lowp_residual = True  # under autocast, keep the residual stream in bf16 rather than float32 (halves the norms' traffic)
norm = 'rmsnorm'  # ablation: 'none'
post_norm = False  # ablation: post-norm blocks
pos_emb = 'rope'  # ablation: 'nope'
ffn = 'swiglu'  # 'swiglu' | 'silu' (ablation) | 'relu2' (ReLU squared, modded-nanogpt); d_ff=0 derives the width
tie_embeddings = False  # lm_head shares the embedding matrix (untied: each end gets its own learning rate)
qk_norm = False  # RMSNorm on each head's queries and keys (bounded attention logits)
num_kv_heads = 0  # 0 = num_heads; fewer = grouped-query attention
zero_init_proj = False  # attention and FFN output projections start at zero: each block starts as the identity
logit_softcap = 0.0  # > 0: logits = cap * tanh(logits / cap) (e.g. 15 or 30); 0 = off
# optimizer
optimizer = 'adamw'  # 'adamw' (ours) | 'torch_adamw' (torch's fused kernel: faster) | 'muon' (Muon + our AdamW)
learning_rate = 1e-3  # peak AdamW learning rate (all parameters; with Muon: norm gains, and what embed/head_lr leave)
embed_lr = -1.0  # peak AdamW learning rate of token_embeddings; -1 = learning_rate
head_lr = -1.0  # peak AdamW learning rate of lm_head; -1 = learning_rate
muon_lr = 0.02  # peak Muon learning rate of the hidden matrices (optimizer='muon'; Keller Jordan uses 0.02-0.05)
weight_decay = 0.1  # decoupled, AdamW's matrices only (not the norm gains, not Muon's matrices)
beta1 = 0.9  # decay of AdamW's first moment (the momentum)
beta2 = 0.95  # decay of the second moment: 0.95, not 0.999, reacts faster to loss spikes (nanoGPT)
eps = 1e-8  # added to sqrt(v): bounds the step of a parameter whose gradients are ~0
grad_clip = 1.0  # global-norm gradient clipping; 0 = off
# schedule
max_iters = 10000  # optimizer steps (A1: 10,000 x 128 x 256 = 327.68M tokens); with max_time_s, an upper bound
max_time_s = 0.0  # > 0: a time budget; training stops and the schedule ends when it is spent (compile included)
warmup_iters = 200  # linear warmup steps
lr_schedule = 'cosine'  # 'cosine' to min_lr | 'wsd' (warmup-stable-decay: flat, then linear to min_lr at the end)
cooldown_frac = 0.4  # wsd: the share of the run spent decaying (0.3-0.5 in Hagele et al. 2024)
lr_decay_iters = -1  # without a time budget, the schedule ends here; -1 = max_iters
min_lr = 1e-4  # ~= learning_rate/10 per Chinchilla; every group ends at the same fraction of its peak
# system
device = 'auto'  # 'auto' (cuda if available) | 'cpu' | 'cuda' | 'cuda:1' ...
dtype = 'bfloat16'  # 'bfloat16' (autocast, float32 master weights) | 'float32'
compile = True  # torch.compile the model (the first iterations are slow while it compiles)
cpu_threads = 0  # torch threads on a CPU; 0 = torch's default. On a busy machine 1 can be many times faster
seed = 1337  # initial weights and the batches drawn
ddp_impl = 'torch'  # under torchrun: 'torch' (DistributedDataParallel) or ddp.py's naive|flat|individual|bucketed
bucket_size_mb = 25.0  # for ddp_impl='bucketed'
fsdp = False  # shard parameters with fsdp.py's FSDP instead of DDP
peak_flops = 989e12  # for MFU: H100 SXM dense bf16
# sampling (end of training, and --mode=sample)
ckpt_path = ''  # '' = out_dir/ckpt.pt (--mode=sample and --mode=eval)
prompt = ''  # '' = start from the end-of-text token
num_samples = 1  # samples printed (and the first one saved in summary.json)
max_new_tokens = 200  # tokens generated per sample; 0 = no sample at the end of training
temperature = 0.8  # logits / temperature before the softmax: < 1 sharpens
top_p = 0.95  # nucleus sampling: draw from the fewest tokens holding top_p of the mass (Holtzman 2019)
# -----------------------------------------------------------------------------
config = MappingProxyType({k: v for k, v in globals().items()  # the defaults, read-only, for library callers
                           if k.islower() and not k.startswith('_') and isinstance(v, (bool, int, float, str))})
RESUMABLE_KEYS = ('max_iters', 'max_time_s', 'eval_interval', 'eval_interval_s', 'eval_iters', 'log_interval', 'mode',
                  'resume', 'overwrite', 'write_checkpoint', 'compile', 'cpu_threads', 'device', 'out_dir', 'ckpt_path',
                  'peak_flops', 'prompt', 'num_samples', 'max_new_tokens', 'temperature', 'top_p')  # resume may change
OPTIMIZERS = ('adamw', 'torch_adamw', 'muon')

def die(msg):  # a user error: one line on stderr naming the key or file and the fix, exit status 2, no traceback
    print(f"train.py: error: {msg}", file=sys.stderr)
    sys.exit(2)
# -----------------------------------------------------------------------------
# Data
def load_tokens(data_dir, split, context_length=0, vocab=-1):
    """(<data_dir>/<split>.bin as a read-only np.memmap, meta.json), or one line naming the file and the fix."""
    data_dir = os.path.join(ROOT, data_dir)  # unchanged if absolute
    meta_path, path = os.path.join(data_dir, 'meta.json'), os.path.join(data_dir, f'{split}.bin')
    fix = f"build the folder with `python {os.path.relpath(os.path.join(data_dir, 'prepare.py'))}`"
    for p in [p for p in (meta_path, path) if not os.path.exists(p)][:1]:
        die(f"{p} not found: {fix} (or point --data_dir at a token folder)")
    try:
        meta = json.load(open(meta_path))
        ok = meta['dtype'] in ('uint16', 'uint32') and isinstance(meta['vocab_size'], int)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok or meta.get('complete') is False:  # False: bpe.py stopped while re-encoding (old .bin, new tokenizer)
        die(f"{meta_path} is {'half built' if ok else 'corrupt (it needs vocab_size, dtype uint16|uint32)'}: {fix}")
    if os.path.getsize(path) % np.dtype(meta['dtype']).itemsize or not os.path.getsize(path):
        die(f"{path} is not a whole number of {meta['dtype']} tokens (truncated, or not meta.json's dtype): {fix}")
    # one memmap for the run (nanoGPT re-creates it per batch against a leak: stackoverflow.com/questions/45132940)
    tokens, vocab = np.memmap(path, dtype=meta['dtype'], mode='r'), vocab if vocab > 0 else meta['vocab_size']
    if context_length and len(tokens) < context_length + 2:  # training: a window must fit, the ids vocab
        die(f"{path} has {len(tokens)} tokens, < context_length+2: use a shorter --context_length or more data")
    if context_length and int(tokens.max()) >= vocab:  # one pass over the file
        die(f"{path} holds token id {int(tokens.max())}, >= vocab_size {vocab}: set --vocab_size higher or re-tokenize")
    return tokens, meta

def get_batch(data, batch_size, context_length, device):
    """The course's get_batch: x = data[s : s+T], y = data[s+1 : s+T+1] (next tokens) at batch_size uniform starts."""
    starts = np.random.randint(0, len(data) - context_length, size=batch_size)
    w = torch.from_numpy(data[starts[:, None] + np.arange(context_length + 1)].astype(np.int64)).to(device)  # (B, T+1)
    return w[:, :-1], w[:, 1:]  # (B, T) each

class TokenSampler:
    """get_batch, fast: a gather on the GPU if the split fits in 1/4 of its free memory, else pinned memmap reads."""
    def __init__(self, tokens, context_length, device, seed):
        self.T, self.device, self.n, self.tokens = context_length, torch.device(device), len(tokens), tokens
        self.on_gpu = self.device.type == 'cuda' and 4 * self.n < torch.cuda.mem_get_info(self.device)[0] / 4
        if self.on_gpu:
            self.tokens = torch.from_numpy(tokens.astype(np.int32)).to(self.device)  # int32: 4 bytes a token
        self.generator = torch.Generator(device=self.device if self.on_gpu else 'cpu').manual_seed(seed)

    def starts(self, n):
        return torch.randint(0, self.n - self.T, (n,), generator=self.generator, device=self.generator.device)

    def batch(self, starts):  # starts (B,) -> x, y (B, T) int64 on the device
        idx = starts[:, None] + torch.arange(self.T + 1, device=starts.device)  # (B, T+1)
        w = self.tokens[idx].long() if self.on_gpu else torch.from_numpy(self.tokens[idx.numpy()].astype(np.int64))
        if self.device.type == 'cuda' and not self.on_gpu:
            w = w.pin_memory().to(self.device, non_blocking=True)
        return w[:, :-1], w[:, 1:]
# -----------------------------------------------------------------------------
# Optimizers: AdamW, Muon
def adamw_update(p, state, lr, b1, b2, eps, wd):
    """One AdamW step of parameter p (Loshchilov & Hutter 2019, Algorithm 2, as the course writes it), t from 1:
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  lr_t = lr sqrt(1-b2^t) / (1-b1^t)   (bias correction)
        theta -= lr_t m / (sqrt(v) + eps);  theta -= lr wd theta   (decoupled weight decay)"""
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    state['step'] += 1
    t, m, v, g = state['step'], state['exp_avg'], state['exp_avg_sq'], p.grad
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    p.addcdiv_(m, v.sqrt().add_(eps), value=-lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))
    p.mul_(1 - lr * wd)

class AdamW(torch.optim.Optimizer):
    """AdamW, one adamw_update per parameter; optimizer='torch_adamw' is torch's fused kernel (faster, tests agree)."""
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if min(lr, eps, weight_decay, *betas) < 0 or max(betas) >= 1:
            raise ValueError(f"bad AdamW hyperparameters: lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in [g for g in self.param_groups if not g['muon']]:
            for p in [p for p in group['params'] if p.grad is not None]:
                adamw_update(p, self.state[p], group['lr'], *group['betas'], group['eps'], group['weight_decay'])

def zeropower_via_newtonschulz5(G, steps=5):
    """G (..., rows, cols) = U S V^T -> about U V^T without an SVD: X <- a X + b (X X^T) X + c (X X^T)^2 X pulls every
    singular value into about [0.7, 1.2] (Keller Jordan, "Muon: an optimizer for hidden layers", 2024)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    wide = G.size(-2) > G.size(-1)  # tall, really: then iterate on X^T, whose Gram matrix X X^T is the smaller one
    X = X.mT if wide else X
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm: singular values <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., rows, rows)
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if wide else X

class Muon(AdamW):
    """Muon (MomentUm Orthogonalized by Newton-Schulz) for hidden matrices: Nesterov momentum, orthogonalized so that
    it moves every direction of the matrix alike, not just the dominant ones. Groups with muon=False take AdamW."""
    def __init__(self, param_groups, lr=0.02, momentum=0.95, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay, muon=True)
        torch.optim.Optimizer.__init__(self, param_groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        super().step()  # AdamW for the groups with muon=False
        for group in [g for g in self.param_groups if g['muon']]:
            params, mom = [p for p in group['params'] if p.grad is not None], group['momentum']
            for rows, cols in sorted({tuple(p.shape) for p in params}):  # one shape at a time: batched matmuls
                ps = [p for p in params if p.shape == (rows, cols)]
                bufs = [self.state[p].setdefault('momentum_buffer', torch.zeros_like(p)) for p in ps]
                torch._foreach_lerp_(bufs, [p.grad for p in ps], 1 - mom)  # buf = mom buf + (1 - mom) g
                g = torch.stack([p.grad for p in ps]).lerp_(torch.stack(bufs), mom)  # Nesterov: (1-mom) g + mom buf
                u = zeropower_via_newtonschulz5(g).to(ps[0].dtype)  # (n, rows, cols), orthogonalized
                torch._foreach_add_(ps, list(u.unbind(0)), alpha=-group['lr'] * max(1, rows / cols) ** 0.5)

def configure_optimizer(model, device_type, name=None):
    """`name` (default: the `optimizer` key) in groups that remember their peak lr; 'muon': the blocks' matrices."""
    name, groups = name or optimizer, {}
    for n, p in model.named_parameters():
        use_muon = name == 'muon' and p.dim() == 2 and 'layers.' in n
        lr = muon_lr if use_muon else embed_lr if 'token_embeddings' in n else head_lr if 'lm_head' in n else -1
        lr = lr if lr > 0 else learning_rate
        wd = weight_decay if p.dim() >= 2 and not use_muon else 0.0  # AdamW's matrices, not the gains (nanoGPT)
        groups.setdefault((use_muon, lr, wd), []).append(p)
    param_groups = [dict(params=ps, muon=m, lr=lr, base_lr=lr, weight_decay=wd) for (m, lr, wd), ps in groups.items()]
    if name == 'torch_adamw':
        return torch.optim.AdamW(param_groups, betas=(beta1, beta2), eps=eps, fused=device_type == 'cuda')
    return (Muon if name == 'muon' else AdamW)(param_groups, betas=(beta1, beta2), eps=eps)
# -----------------------------------------------------------------------------
# Learning-rate schedule, clipping
def lr_cosine_schedule(it, max_lr, min_lr, warmup_iters, cosine_cycle_iters):
    """The course's schedule: 1) linear warmup to max_lr, 2) cosine to min_lr at cosine_cycle_iters, 3) min_lr after."""
    if it < warmup_iters:
        return max_lr * it / warmup_iters
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return min_lr

def lr_factor(it, elapsed_s):
    """Step `it`'s lr / each group's peak, by iterations or by the clock (a time budget): 1) linear warmup; 2) 'cosine'
    to min_lr, or 'wsd' (warmup-stable-decay, Hu et al. 2024): flat, then linear to min_lr in the last cooldown_frac"""
    if it < warmup_iters:
        return it / warmup_iters
    decay_iters, floor = lr_decay_iters if lr_decay_iters > 0 else max_iters, min_lr / learning_rate
    frac = elapsed_s / max_time_s if max_time_s > 0 else (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    if lr_schedule == 'wsd':
        return 1 - (1 - floor) * min(1.0, max(0.0, frac - (1 - cooldown_frac)) / cooldown_frac)
    return lr_cosine_schedule(frac, 1.0, floor, 0, 1)

@torch.no_grad()
def gradient_clipping(params, max_norm, eps=1e-6, sharded=False):
    """Scale all gradients by max_norm / (||g|| + eps) if their global L2 norm ||g|| exceeds max_norm -> ||g||."""
    grads = [p.grad for p in params if p.grad is not None] or [torch.zeros(())]
    sq = torch.stack([n.float() for n in torch._foreach_norm(grads)]).pow(2).sum()
    if sharded:  # FSDP: each rank holds a slice of every gradient
        dist.all_reduce(sq)
    norm = sq.sqrt()  # foreach ops: one kernel launch per list, as torch.nn.utils.clip_grad_norm_
    torch._foreach_mul_(grads, (max_norm / (norm + eps)).clamp(max=1.0).to(grads[0].dtype))  # an `if` would sync
    return norm
# -----------------------------------------------------------------------------
# Checkpoints and evaluation
def save_checkpoint(model, optimizer, iteration, out, **extra):
    """Write {'model', 'optimizer', 'iter_num', **extra} to a temp file, then os.replace: a kill leaves no half file."""
    model, is_path = getattr(model, '_orig_mod', model), isinstance(out, (str, os.PathLike))  # unwrap torch.compile
    ckpt = {'model': model if isinstance(model, dict) else model.state_dict(),  # FSDP passes a state dict
            'optimizer': optimizer and optimizer.state_dict(), 'iter_num': iteration, **extra}
    torch.save(ckpt, f"{out}.tmp" if is_path else out)
    if is_path:
        os.replace(f"{out}.tmp", out)

def load_checkpoint(src, model, optimizer=None):
    """Restore model (and optimizer) from save_checkpoint's file (or its loaded dict); return its iteration."""
    ckpt = src if isinstance(src, dict) else torch.load(src, map_location='cpu', weights_only=False)
    getattr(model, '_orig_mod', model).load_state_dict(ckpt['model'])
    if optimizer is not None and ckpt.get('optimizer') is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
    return ckpt['iter_num']

def read_checkpoint(path):
    """torch.load of a train.py checkpoint, or one line saying why it cannot be one (missing, empty, truncated)."""
    if not os.path.isfile(path):
        die(f"checkpoint file {path} not found: train first (train.py writes <out_dir>/ckpt.pt) or fix --out_dir")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # EOFError, RuntimeError or UnpicklingError, depending on where the file breaks off
        die(f"{path} is not a readable checkpoint ({type(e).__name__}): empty or truncated; retrain (--overwrite=True)")
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'model_args' not in ckpt:
        die(f"{path} is not a train.py checkpoint (it needs 'model' and 'model_args' entries)")
    return ckpt

@torch.no_grad()
def evaluate_full(model, tokens, context_length, batch_size, dev, autocast=nullcontext(), rank=0, world_size=1,
                  max_batches=-1):
    """(sum of -log p(next token) over EVERY token of a split but the first, their count) in non-overlapping windows;
    each rank scores its rows of each batch. bits/byte = nats / ln 2 / val_bytes (bytes do not depend on the BPE)."""
    T, step = context_length, batch_size * world_size
    n = min(len(tokens) - 1, max_batches * step * T if max_batches > 0 else len(tokens))  # targets scored
    rows = -(-n // (T * step)) * step  # whole batches of windows for every rank
    data = torch.from_numpy(tokens[:n + 1].astype(np.int64))
    x, y = torch.zeros(rows * T, dtype=torch.long), torch.full((rows * T,), -100, dtype=torch.long)
    x[:n], y[:n] = data[:-1], data[1:]
    x, y = (t.view(-1, world_size, batch_size, T)[:, rank] for t in (x, y))  # (batches, B, T): this rank's rows
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for xb, yb in zip(x.to(dev), y.to(dev)):
        with autocast:
            loss = model(xb, targets=yb).double()  # the mean over this batch's scored targets
        k = (yb != -100).sum()
        total += torch.where(k > 0, loss * k, 0.0)  # a batch of padding only: no NaN (0/0) in the sum
    if world_size > 1:
        dist.all_reduce(total)
    return total.item(), n  # .item(): a CPU-GPU sync point
# -----------------------------------------------------------------------------
# Setup and outputs
def check_config():
    """Refuse bad values before anything is read or written: one line naming the key and the fix, exit status 2."""
    choices = dict(mode=('train', 'sample', 'eval'), optimizer=OPTIMIZERS, lr_schedule=('cosine', 'wsd'),
                   dtype=('bfloat16', 'float32'), ddp_impl=('torch', 'naive', 'flat', 'individual', 'bucketed'))
    positive = ('batch_size', 'gradient_accumulation_steps', 'context_length', 'max_iters', 'log_interval', 'muon_lr')
    nonneg = ('eval_interval', 'eval_interval_s', 'max_time_s', 'warmup_iters', 'weight_decay', 'grad_clip', 'eps',
              'min_lr', 'logit_softcap', 'temperature', 'num_samples', 'max_new_tokens')
    rules = [(globals()[k] in v, f"--{k} must be one of {v}, got {globals()[k]!r}") for k, v in choices.items()]
    rules += [(globals()[k] > 0, f"--{k} must be > 0, got {globals()[k]}") for k in positive]
    rules += [(globals()[k] >= 0, f"--{k} must be >= 0, got {globals()[k]}") for k in nonneg]
    rules += [(globals()[k] == -1 or globals()[k] > 0, f"--{k} must be > 0 or -1 (see its comment), got {globals()[k]}")
              for k in ('eval_iters', 'vocab_size', 'embed_lr', 'head_lr')] + [
        (0 < cooldown_frac <= 1, f"--cooldown_frac must be in (0, 1], got {cooldown_frac}"),
        (0 < learning_rate >= min_lr, "--learning_rate must be > 0 and >= --min_lr"),
        (0 <= beta1 < 1 and 0 <= beta2 < 1 and 0 < top_p <= 1, "--beta1, --beta2 in [0, 1) and --top_p in (0, 1]"),
        (lr_decay_iters == -1 or lr_decay_iters > warmup_iters, "--lr_decay_iters must be -1 or > --warmup_iters"),
        (device in ('auto', 'cpu') or device.startswith('cuda'), f"--device: auto, cpu or cuda[:N], not {device!r}"),
        (not device.startswith('cuda') or torch.cuda.is_available(), f"--device={device} but CUDA is not available"),
        (not (fsdp and (optimizer == 'muon' or embed_lr > 0 or head_lr > 0)),
         "--fsdp=True shards matrices into flat vectors: use --optimizer=adamw|torch_adamw, no embed_lr/head_lr"),
        (not (resume and overwrite), "--resume=True continues a run, --overwrite=True replaces it: pick one"),
        (mode != 'sample' or min(num_samples, max_new_tokens) > 0, "--mode=sample: --num_samples/--max_new_tokens > 0")]
    for msg in [msg for ok, msg in rules if not ok][:1]:
        die(msg)

def setup_distributed():
    """Under torchrun: init the process group (NCCL, or gloo on CPUs) -> (rank, local_rank, world, device, ours)."""
    if int(os.environ.get('RANK', -1)) == -1 and not dist.is_initialized():
        return 0, 0, 1, device if device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu'), False
    local_rank, ours = int(os.environ.get('LOCAL_RANK', 0)), not dist.is_initialized()
    dev = f'cuda:{local_rank}' if torch.cuda.is_available() and device != 'cpu' else 'cpu'
    if dev != 'cpu':
        torch.cuda.set_device(dev)
    if ours:
        dist.init_process_group(backend='nccl' if dev != 'cpu' else 'gloo')
    return dist.get_rank(), local_rank, dist.get_world_size(), dev, ours

def build_model(cfg, vocab, dev):
    """(model, model_args) from a dict of config keys; the two speed switches are not architecture."""
    keys = ('context_length', 'd_model', 'num_layers', 'num_heads', 'rope_theta', 'attn_impl', 'norm', 'post_norm',
            'pos_emb', 'ffn', 'tie_embeddings', 'qk_norm', 'zero_init_proj', 'logit_softcap')
    try:  # ModelConfig derives d_ff and num_kv_heads (0 here = derive) and checks the shapes
        model_args = asdict(ModelConfig(vocab_size=vocab, d_ff=cfg['d_ff'] or None, **{k: cfg[k] for k in keys},
                                        num_kv_heads=cfg['num_kv_heads'] or None))
    except ValueError as e:
        die(f"{e} (set the config key of that name)")
    model = TransformerLM(**model_args).to(dev)
    model.fused_loss, model.lowp_residual = cfg['fused_loss'], cfg['lowp_residual']
    return model, model_args

def log_row(path, row, keep_until_iter=None):
    """Append a JSON line to the log; keep_until_iter (resume): drop what a killed run logged after its ckpt."""
    if path and keep_until_iter is not None:
        rows = [json.loads(line) for line in open(path) if line.endswith('\n')] if os.path.exists(path) else []
        with open(path + '.tmp', 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows if r.get('iter', 0) <= keep_until_iter)
        os.replace(path + '.tmp', path)
    if path and row:
        with open(path, 'a') as f:
            f.write(json.dumps(row) + '\n')

def plot_losses(log_path, png_path):
    """loss.png: train and validation loss against tokens, from the JSONL log."""
    import matplotlib.pyplot as plt
    plt.switch_backend('agg')  # no display needed
    plt.figure(figsize=(7, 4))
    rows = [json.loads(line) for line in open(log_path)]
    for loss, style in (('train_loss', '-'), ('val_loss', 'o-')):
        plt.plot([r['tokens'] for r in rows if loss in r], [r[loss] for r in rows if loss in r], style, label=loss)
    plt.gca().set(xlabel='tokens', ylabel='loss (nats/token)')
    plt.legend()
    plt.savefig(png_path, dpi=110)
    plt.close()

def sample_text(model, tokenizer_dir, eot_id):
    """num_samples continuations of `prompt` by model.generate (KV cache), decoded by bpe.py's Tokenizer if any."""
    tok = __import__('bpe').Tokenizer.from_dir(tokenizer_dir) if os.path.isdir(tokenizer_dir or '') else None
    ids = tok.encode(prompt) if (tok and prompt) else [eot_id or 0]
    n_new = min(max_new_tokens, model.config.context_length - len(ids))
    if n_new <= 0:
        die(f"the prompt has {len(ids)} tokens, no room left in context_length {model.config.context_length}")
    outs = model.generate([ids] * num_samples, n_new, temperature=temperature, top_p=top_p, eos_id=eot_id, seed=seed)
    texts = [prompt + tok.decode([t for t in o if t != eot_id]) if tok else str(o) for o in outs]
    print('\n'.join(f"--- sample ---\n{t}\n" for t in texts))
    return texts

def sample_or_eval():
    """--mode=sample prints samples of out_dir/ckpt.pt (or ckpt_path); --mode=eval its full-validation loss."""
    path = ckpt_path or os.path.join(out_dir, 'ckpt.pt')
    ckpt, dev = read_checkpoint(path), device if device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    run, model = ckpt.get('config') or {}, TransformerLM(**ckpt['model_args']).to(dev).eval()
    load_checkpoint(ckpt, model)
    with torch.autocast('cuda', dtype=torch.bfloat16) if 'cuda' in dev and dtype == 'bfloat16' else nullcontext():
        if mode == 'sample':
            return sample_text(model, ckpt.get('tokenizer_dir'), ckpt.get('eot_id'))
        eval_dir = data_dir if data_dir != config['data_dir'] else run.get('data_dir', data_dir)  # --data_dir wins
        tokens, meta = load_tokens(eval_dir, 'val')
        if meta['vocab_size'] > model.config.vocab_size:  # re-prepared with a larger vocabulary since the checkpoint
            die(f"{eval_dir}: vocab_size {meta['vocab_size']} > the checkpoint's: pass its run's --data_dir or retrain")
        nats, n = evaluate_full(model, tokens, model.config.context_length, run.get('batch_size', batch_size), dev)
    bpb = nats / math.log(2) / meta['val_bytes'] if meta.get('val_bytes') else None  # cc_filter.py's folders: none
    print(f"{path}, all validation ({n:,} tokens): loss {nats / n:.4f}, bits/byte {'%.4f' % bpb if bpb else 'n/a'}")
    return dict(val_loss=nats / n, val_bpb=bpb)
# -----------------------------------------------------------------------------
# Training
def main():
    """Run `mode` from the config globals -> the summary dict (train), the samples (sample) or the evaluation (eval)."""
    t_start = time.time()  # the training clock starts here: setup and compilation count, evaluations do not
    check_config()
    torch.set_num_threads(cpu_threads or torch.get_num_threads())  # OpenMP threads spin-wait: shared cores hurt
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 for float32 matmuls
    if mode != 'train':
        return sample_or_eval()
    rank, local_rank, world_size, dev, we_initialized = setup_distributed()
    master, device_type = rank == 0, 'cuda' if 'cuda' in dev else 'cpu'
    print0 = print if master else (lambda *a, **k: None)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == 'bfloat16' else nullcontext()
    B, gas = batch_size, gradient_accumulation_steps  # a step is B x gas sequences on any number of processes:
    accum, B = (gas // world_size, B) if gas % world_size == 0 else (1, B * gas // world_size)  # they share or split
    if accum * B * world_size != batch_size * gas:
        die(f"make --gradient_accumulation_steps, or it times --batch_size, a multiple of {world_size} processes")
    tokens_per_iter = B * context_length * accum * world_size
    run_config = {k: globals()[k] for k in config}  # this run's keys, saved in the checkpoint

    # 1) The run folder: never clobber a run; resume only the same config
    outputs = {name: os.path.join(out_dir, name) for name in ('ckpt.pt', 'log.jsonl', 'loss.png', 'summary.json')}
    ckpt = read_checkpoint(outputs['ckpt.pt'] if out_dir else '(no --out_dir)') if resume else None
    changed = [f"{k}={v!r}" for k, v in sorted(((ckpt or {}).get('config') or {}).items())
               if k in run_config and k not in RESUMABLE_KEYS and run_config[k] != v]
    if changed:
        die(f"--resume=True with another config: pass the checkpoint's {', '.join(changed[:6])}, or a new --out_dir")
    if ckpt and (ckpt['iter_num'] >= max_iters or 0 < max_time_s <= ckpt.get('elapsed_s', 0)):
        return print0(f"{outputs['ckpt.pt']} is finished: nothing to do (raise --max_iters or --max_time_s)")
    if not ckpt and out_dir and not overwrite and any(os.path.exists(outputs[k]) for k in ('ckpt.pt', 'log.jsonl')):
        die(f"{out_dir} holds a run: continue it (--resume=True), replace it (--overwrite=True) or use a new --out_dir")

    # 2) Data
    train_tokens, meta = load_tokens(data_dir, 'train', context_length, vocab_size)
    val_tokens, _ = load_tokens(data_dir, 'val', context_length, vocab_size)
    vocab = vocab_size if vocab_size > 0 else meta['vocab_size']
    tokenizer_dir = meta.get('tokenizer_dir') and os.path.join(ROOT, data_dir, meta['tokenizer_dir'])
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train_sampler = TokenSampler(train_tokens, context_length, dev, seed)

    # 3) Model, optimizer, resume
    raw_model, model_args = build_model(run_config, vocab, dev)
    for k, v in [(k, v) for k, v in (ckpt['model_args'] if ckpt else {}).items() if model_args.get(k, v) != v][:1]:
        die(f"--resume: the checkpoint's {k}={v}, {data_dir} gives {model_args[k]}: re-prepare it, or a new --out_dir")
    print0(f"{count_parameters(raw_model) / 1e6:.2f}M parameters (without embeddings); {tokens_per_iter:,} tokens per "
           f"iteration: {world_size} process(es) x {accum} x {B} x {context_length}")
    model = torch.compile(raw_model) if compile else raw_model  # fuses the many small ops (norms, RoPE, loss)
    use_fsdp, custom_ddp = fsdp and world_size > 1, world_size > 1 and (fsdp or ddp_impl != 'torch')
    if use_fsdp:  # the project's own FSDP and DDP variants (fsdp.py, ddp.py), imported only on their paths
        model = __import__('fsdp').FSDP(model)
    elif world_size > 1:
        model = __import__('ddp').wrap(model, ddp_impl, bucket_size_mb) if custom_ddp else \
            torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if dev != 'cpu' else None)
    opt = configure_optimizer(model if use_fsdp else raw_model, device_type)  # FSDP: its local shards
    iter_num, elapsed = (ckpt['iter_num'], ckpt.get('elapsed_s', 0.0)) if ckpt else (0, 0.0)
    t_start -= elapsed  # resuming: the clock goes on from the checkpoint's
    if ckpt:  # the weights, the optimizer's moments (FSDP's stay sharded, unsaved) and the RNGs: the same batches
        model.load_full_state_dict(ckpt['model']) if use_fsdp else load_checkpoint(ckpt, raw_model, opt)
        torch.set_rng_state(ckpt['rng']['torch'])
        train_sampler.generator.set_state(ckpt['rng']['sampler'])
    log_path = outputs['log.jsonl'] if master and out_dir else ''
    if log_path:  # the run's first write: --overwrite removes the old run's files
        os.makedirs(out_dir, exist_ok=True)
        for path in [p for p in outputs.values() if overwrite and os.path.exists(p)]:
            os.remove(path)
        log_row(log_path, None, iter_num if ckpt else -1)
    def clock():  # training seconds so far; under torchrun rank 0's, so that all ranks agree on lr, evals, stopping
        t = time.time() - t_start - off_clock  # host time: no sync with the GPU
        if world_size > 1 and (max_time_s > 0 or eval_interval_s > 0):
            t = torch.tensor(t, dtype=torch.float64, device=dev)
            dist.broadcast(t, 0)
        return float(t)

    # 4) The training loop
    print0(f"training from iteration {iter_num} on {dev}: {optimizer}, {lr_schedule} to {max_time_s or max_iters}")
    off_clock = 0.0  # seconds spent evaluating and checkpointing: not training time
    next_eval_s = (elapsed // eval_interval_s + 1) * eval_interval_s if eval_interval_s > 0 else math.inf
    loss_accum, last_log, t_log, final = torch.zeros((), device=dev), iter_num, time.time(), None
    while final is None:
        # 1) this step's learning rate: a fraction of every group's peak, from the iteration count or the clock
        lr = lr_factor(iter_num + 1, elapsed)
        for group in opt.param_groups:
            group['lr'] = group['base_lr'] * lr
        # 2) forward and backward: every rank draws the same global batch and takes its own micro-batches
        starts = train_sampler.starts(accum * world_size * B).view(accum * world_size, B)
        for micro in range(accum):
            x, y = train_sampler.batch(starts[rank * accum + micro])
            with model.no_sync() if world_size > 1 and micro < accum - 1 else nullcontext():  # all-reduce at the end
                with autocast:
                    loss = model(x, targets=y) / accum
                loss.backward()
            loss_accum += loss.detach()
        if custom_ddp:
            model.finish_gradient_synchronization()  # wait for the last all-reduces (ddp.py's and fsdp.py's wrappers)
        if grad_clip > 0:  # 3) clip the gradients, step, count
            gradient_clipping([p for g in opt.param_groups for p in g['params']], grad_clip, sharded=use_fsdp)
        opt.step()
        opt.zero_grad(set_to_none=True)
        iter_num += 1
        elapsed = clock()
        done = iter_num >= max_iters or 0 < max_time_s <= elapsed
        # 4) log every log_interval steps: the loop's only CPU-GPU sync without a time budget
        if iter_num % log_interval == 0 or done:
            if world_size > 1:
                dist.all_reduce(loss_accum)
            n_it, dt = iter_num - last_log, time.time() - t_log
            train_loss, tok_s = loss_accum.item() / n_it / world_size, n_it * tokens_per_iter / dt  # .item(): sync
            mfu = estimate_mfu(raw_model, tok_s, peak_flops) if device_type == 'cuda' else 0.0
            print0(f"iter {iter_num}: loss {train_loss:.4f}, {dt / n_it:.3f}s, {tok_s:,.0f} tok/s, mfu {mfu:.1%}")
            log_row(log_path, dict(iter=iter_num, train_loss=train_loss, lr=learning_rate * lr, tokens_per_s=tok_s,
                                   elapsed_s=round(elapsed, 3), tokens=iter_num * tokens_per_iter, mfu=mfu))
            loss_accum.zero_()
            last_log, t_log = iter_num, time.time()
        # 5) evaluate (the whole split at the end and on the clock) and checkpoint, off the training clock
        timed = elapsed >= next_eval_s
        if done or timed or (eval_interval > 0 and iter_num % eval_interval == 0):
            if device_type == 'cuda':
                torch.cuda.synchronize()  # the steps queued so far count as training time
            elapsed, t_eval, full = clock(), time.time(), done or timed or eval_iters < 0
            nats, n = evaluate_full(model if use_fsdp else raw_model, val_tokens, context_length, B, dev, autocast,
                                    rank, world_size, -1 if full else eval_iters)
            bpb = nats / math.log(2) / meta['val_bytes'] * (len(val_tokens) - 1) / n if meta.get('val_bytes') else None
            row = dict(iter=iter_num, tokens=iter_num * tokens_per_iter, elapsed_s=round(elapsed, 3),
                       val_loss=nats / n, val_bpb=bpb, full=full)  # bpb of the split, from the tokens scored
            print0(f"eval at iter {iter_num} ({elapsed:.1f} s): val loss {nats / n:.4f}, "
                   f"{'%.4f' % bpb if bpb else 'n/a'} bits/byte")
            log_row(log_path, row)
            save = write_checkpoint and out_dir and (done or not timed)  # timed evaluations only score
            state = model.full_state_dict() if use_fsdp and save else raw_model  # FSDP: a collective, all ranks call it
            if save and master:
                rng = dict(torch=torch.get_rng_state(), sampler=train_sampler.generator.get_state())
                save_checkpoint(state, None if use_fsdp else opt, iter_num, outputs['ckpt.pt'], model_args=model_args,
                                config=run_config, tokenizer_dir=tokenizer_dir, eot_id=meta.get('eot_id'),
                                elapsed_s=elapsed, rng=rng)
            final = row if done else None
            next_eval_s = (elapsed // eval_interval_s + 1) * eval_interval_s if eval_interval_s > 0 else math.inf
            off_clock, t_log = off_clock + time.time() - t_eval, t_log + time.time() - t_eval  # .item() synced

    # 5) Summary, plot, sample
    summary = dict(final, iters=iter_num, eval_s=off_clock, tokens_per_s=final['tokens'] / elapsed,
                   n_params=count_parameters(raw_model), world_size=world_size, sample=None)
    print0(f"done: {iter_num} iterations, {elapsed:.1f} s (+{off_clock:.1f} s evaluating); the whole validation split: "
           f"loss {final['val_loss']:.4f}, {'%.4f' % final['val_bpb'] if final['val_bpb'] else 'n/a'} bits/byte")
    if master and max_new_tokens > 0 and num_samples > 0 and not use_fsdp:
        with autocast:
            summary['sample'] = sample_text(raw_model.eval(), tokenizer_dir, meta.get('eot_id'))[0]
    if log_path:
        plot_losses(log_path, outputs['loss.png'])
        with open(outputs['summary.json'] + '.tmp', 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(outputs['summary.json'] + '.tmp', outputs['summary.json'])
        args = ' '.join(a for a in sys.argv[1:] if not a.startswith(('--resume=', '--overwrite='))) \
            if os.path.basename(sys.argv[0]) == 'train.py' else f'--out_dir={out_dir}'
        print(f"wrote {', '.join(p for p in outputs.values() if os.path.exists(p))}\n"
              f"resume (after raising --max_iters): python train.py {args} --resume=True\n"
              f"sample again: python train.py --mode=sample --out_dir={out_dir} --prompt='...'")
    if we_initialized:
        dist.barrier()
        dist.destroy_process_group()
    return summary

def train(overrides=None):
    """The library entry: main() with some config keys changed for the call -> the summary dict."""
    overrides = dict(overrides or {})
    for key, close in [(k, difflib.get_close_matches(k, config, n=1)) for k in overrides if k not in config][:1]:
        die(f"unknown config key {key!r}" + (f"; did you mean {close[0]}?" if close else ''))
    saved = {k: globals()[k] for k in overrides}
    globals().update(overrides)
    try:
        return main()
    finally:
        globals().update(saved)

if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

"""
model.py: a decoder-only Transformer language model written from torch primitives (CS336 assignment 1).

Every building block is a few lines of torch (Linear, Embedding, RMSNorm, SwiGLU, RoPE, softmax, attention, the
pre-norm block); parameter names follow the course (`token_embeddings`, `layers.{i}.attn.q_proj`, `ffn.w1`, `lm_head`).
Notable features:
- attention switch: attn_impl='reference' (the readable path), 'sdpa' (torch's fused kernel) or 'flash' (the project's
  Triton FlashAttention-2, flash_attn.py); the course's ablations: norm='none', post_norm, pos_emb='nope', ffn='silu';
  tie_embeddings, qk_norm, grouped-query attention; from modded-nanogpt's records: ffn='relu2' (ReLU squared),
  zero_init_proj (blocks start as the identity), logit_softcap (cap tanh(z / cap)).
- a static-shape KV cache and `generate` (temperature / top-p, stops, batched prompts of any lengths, left-padded),
  with the decode step as a CUDA graph on CUDA (no Python or launch overhead per token).
- `cross_entropy` via log-sum-exp; parameter and FLOP counting for MFU and scaling laws; `FusedLinearCrossEntropy`
  (CUDA, train.py's default): one Triton kernel over the logits computes the training loss and its gradient.
Run `python model.py` for a smoke test (main()); `python train.py --mode=sample --out_dir=...` samples a checkpoint.
"""
import math
from dataclasses import dataclass, asdict, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
try:
    import triton  # only the fused loss below needs it; model.py works without
    import triton.language as tl
except ImportError:
    triton = None


# -----------------------------------------------------------------------------
# Functions: softmax, attention, cross-entropy

def softmax(x, dim=-1):
    """Numerically stable softmax: subtracting the max leaves the result unchanged and keeps exp() <= 1."""
    x = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)

def scaled_dot_product_attention(Q, K, V, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V over any leading batch dims (Vaswani et al. 2017, eq. 1).
    Q (..., Tq, d_k), K (..., Tk, d_k), V (..., Tk, d_v), mask broadcastable to (..., Tq, Tk) with True = attend."""
    d_k = Q.shape[-1]
    scores = Q @ K.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float('-inf'))
    return softmax(scores, dim=-1) @ V  # (..., Tq, d_v)

def cross_entropy(logits, targets, ignore_index=-100):
    """Mean of -log softmax(logits)[target] over any leading dims, via log-sum-exp:
    -log p_y = log(sum_j exp(o_j)) - o_y = m + log(sum_j exp(o_j - m)) - o_y, with m = max_j o_j so exp never overflows.
    Computed in float32 (bf16 logits would lose the small differences). Targets equal to ignore_index do not count."""
    logits = logits.float()
    m = logits.amax(dim=-1, keepdim=True)
    lse = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(dim=-1))  # (...,)
    keep = targets != ignore_index
    target_logit = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (...,)
    loss = (lse - target_logit) * keep
    return loss.sum() / keep.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# The training loss on the GPU: lm_head matmul + cross-entropy + its gradient, one Triton kernel over the logits
#
# The plain `F.cross_entropy(x @ W^T, y)` writes the (N, V) logits (3.3 GB at GPT-2 small's shape in bf16), then its
# forward reduction reads them and its backward reads them again and writes d loss / d logits. But the gradient of
# the mean cross-entropy is known as soon as the log-sum-exp is:
#     d loss / d logits[i, j] = (softmax(logits[i])[j] - [j == y_i]) / n
# so the forward can compute the loss AND overwrite the logits with their gradient, in one kernel that reads each row
# twice (the second time it may still be in L2) and writes it once; the backward is then just the two matmuls
# dX = G W, dW = G^T X, scaled by the incoming scalar gradient. Liger-Kernel's cross-entropy does the same (Hsu et al.
# 2024). What it saves, and the variants that measured slower: results/train_throughput.md, rounds 6-8.

if triton is not None:
    @triton.jit
    def _softcap(x, CAP: tl.constexpr):  # CAP tanh(x / CAP), tanh(u) = 2 sigmoid(2u) - 1; -inf (padding) stays
        return tl.where(x > float('-inf'), CAP * (2 * tl.sigmoid(2 * x / CAP) - 1), x) if CAP > 0 else x

    @triton.jit
    def _cross_entropy_kernel(X, stride_x, Y, Loss, Inv_n, ignore_index, V: tl.constexpr, BLOCK: tl.constexpr,
                              CAP: tl.constexpr):
        # one program per row of X (N, V) logits: loss[row] and, in place, X[row] <- d mean-loss / d X[row], of the
        # logits z, or with CAP > 0 of z' = CAP tanh(z / CAP); V is a compile-time constant: fixed loop bounds
        row = tl.program_id(0).to(tl.int64)
        X += row * stride_x
        cols = tl.arange(0, BLOCK)
        # pass 1: online log-sum-exp over blocks of the row (Milakov & Gimelshein 2018): keep the running max m and
        # the running sum s of exp(x - m); a new block rescales s by exp(m_old - m_new)
        x = _softcap(tl.load(X + cols, mask=cols < V, other=float('-inf')).to(tl.float32), CAP)
        m = tl.max(x, 0)
        s = tl.sum(tl.exp(x - m), 0)
        for off in range(BLOCK, V, BLOCK):
            x = _softcap(tl.load(X + off + cols, mask=off + cols < V, other=float('-inf')).to(tl.float32), CAP)
            m_new = tl.maximum(m, tl.max(x, 0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        lse = m + tl.log(s)
        y = tl.load(Y + row)
        valid = y != ignore_index
        y = tl.where(valid, y, 0)
        x_y = _softcap(tl.load(X + y).to(tl.float32), CAP)  # read before pass 2 overwrites it
        tl.store(Loss + row, tl.where(valid, lse - x_y, 0.0))  # -log softmax(x)[y]
        scale = tl.where(valid, tl.load(Inv_n), 0.0)  # 1/n for the mean; ignored rows get no gradient
        # pass 2: the gradient, written over the logits
        for off in range(0, V, BLOCK):
            c = off + cols
            x = _softcap(tl.load(X + c, mask=c < V, other=0.0).to(tl.float32), CAP)
            p = tl.exp(x - lse)  # softmax
            g = tl.where(c == y, p - 1.0, p) * scale  # softmax - onehot
            g = g * (1 - (x / CAP) * (x / CAP)) if CAP > 0 else g  # d z' / d z of the soft cap
            tl.store(X + c, g.to(X.dtype.element_ty), mask=c < V)

FUSED_CE_BLOCK, FUSED_CE_WARPS = 4096, 8  # columns per step of a row, warps per row

class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of (h @ w^T) against targets, ignoring targets == ignore_index; h (N, C), w (V, C),
    targets (N,). The same value as cross_entropy(h @ w.t(), targets), or with softcap > 0 as cross_entropy of
    softcap * tanh(h @ w.t() / softcap); the logits never leave this function."""

    @staticmethod
    def forward(ctx, h, w, targets, ignore_index=-100, softcap=0.0):
        logits = h @ w.t()  # (N, V), overwritten below by its own gradient
        N, V = logits.shape
        n = (targets != ignore_index).sum().clamp(min=1)
        inv_n = (1.0 / n.float()).reshape(1)  # stays on the device: no sync
        row_loss = torch.empty(N, dtype=torch.float32, device=h.device)
        _cross_entropy_kernel[(N,)](logits, logits.stride(0), targets, row_loss, inv_n, ignore_index, V=V,
                                    BLOCK=min(FUSED_CE_BLOCK, triton.next_power_of_2(V)), CAP=float(softcap),
                                    num_warps=FUSED_CE_WARPS)
        ctx.save_for_backward(logits, h, w)
        return row_loss.sum() * inv_n[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grad_logits, h, w = ctx.saved_tensors  # grad_logits (N, V): d loss / d logits for grad_loss == 1
        dh = (grad_logits @ w) * grad_loss.to(h.dtype)  # (N, C)
        dw = (grad_logits.t() @ h) * grad_loss.to(w.dtype)  # (V, C)
        return dh, dw, None, None, None


# -----------------------------------------------------------------------------
# Modules, bottom-up

class Linear(nn.Module):
    """y = x W^T, no bias (as in LLaMA). W is stored (out, in) like torch's nn.Linear, initialised from a truncated
    normal with variance 2/(in+out) (Glorot), cut at +-3 sigma."""

    def __init__(self, in_features, out_features, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x):
        return x @ self.weight.t()  # (..., in) -> (..., out)

class Embedding(nn.Module):
    """A lookup table (num_embeddings, embedding_dim), initialised from N(0, 1) truncated at +-3."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids):
        return self.weight[token_ids]  # (...,) -> (..., embedding_dim)

class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g. Computed in float32 because the mean of
    squares of bf16 activations loses precision; the result is cast back to the input dtype."""

    def __init__(self, d_model, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x):
        x32 = x.float()
        rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return (x32 * rms * self.weight.float()).to(x.dtype)

def silu(x):
    """SiLU / swish: x * sigmoid(x)."""
    return x * torch.sigmoid(x)

class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): w2(silu(w1 x) * w3 x); w1, w3 (d_ff, d_model), w2 (d_model, d_ff)."""

    def __init__(self, d_model, d_ff, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)
        self.w3 = Linear(d_model, d_ff, device, dtype)

    def forward(self, x):
        # two matmuls: one on torch.cat([w1, w3]) copied both weights every step (results/train_throughput.md)
        return self.w2(silu(self.w1(x)) * self.w3(x))

class MLP(nn.Module):
    """A two-matrix FFN w2(act(w1 x)), d_ff = 4 d_model (SwiGLU's parameters at 8/3). act='silu': the course's ablation;
    'relu2': relu(x)^2 (So et al. 2021, "Primer"; modded-nanogpt's FFN): sparse like ReLU, smooth at 0."""

    def __init__(self, d_model, d_ff, act='silu', device=None, dtype=None):
        super().__init__()
        self.act = act
        self.w1, self.w2 = Linear(d_model, d_ff, device, dtype), Linear(d_ff, d_model, device, dtype)

    def forward(self, x):
        h = self.w1(x)  # (..., d_ff)
        return self.w2(F.relu(h).square() if self.act == 'relu2' else silu(h))

class RotaryPositionalEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate each ADJACENT pair (x[2j], x[2j+1]) of a query/key vector at position i by the
    angle i * theta^(-2j/d_k). The cos/sin tables (max_seq_len, d_k/2) are a non-persistent buffer: recomputed,
    never saved in checkpoints. `token_positions` may have any batch shape that broadcasts against x[..., 0]."""

    def __init__(self, theta, d_k, max_seq_len, device=None):
        super().__init__()
        assert d_k % 2 == 0, f"RoPE needs an even head dimension, got d_k={d_k}"
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float32) / d_k)  # (d_k/2,)
        angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, d_k/2)
        self.register_buffer('cos_cached', angles.cos(), persistent=False)
        self.register_buffer('sin_cached', angles.sin(), persistent=False)

    def forward(self, x, token_positions):
        cos, sin = self.cos_cached[token_positions], self.sin_cached[token_positions]  # (..., T, d_k/2) each
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # even and odd entries, each (..., T, d_k/2)
        # (x1 + i x2) * (cos + i sin): the 2-D rotation of each pair
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d_k/2, 2)
        return out.flatten(-2).to(x.dtype)

class CausalMultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention; heads lie "(heads d_k)" along the rows of q/k/v_proj. With num_kv_heads <
    num_heads (grouped-query attention, Ainslie et al. 2023) groups of query heads share a key/value head."""

    def __init__(self, cfg, device=None, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.d_k, self.attn_impl = cfg.d_model // cfg.num_heads, cfg.attn_impl
        self.q_proj = Linear(cfg.d_model, cfg.num_heads * self.d_k, device, dtype)
        self.k_proj = Linear(cfg.d_model, cfg.num_kv_heads * self.d_k, device, dtype)
        self.v_proj = Linear(cfg.d_model, cfg.num_kv_heads * self.d_k, device, dtype)
        self.output_proj = Linear(cfg.num_heads * self.d_k, cfg.d_model, device, dtype)
        # QK-norm (Dehghani et al. 2023): RMSNorm over each head's q and k keeps attention logits bounded
        self.q_norm = RMSNorm(self.d_k, device=device, dtype=dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d_k, device=device, dtype=dtype) if cfg.qk_norm else None

    def forward(self, x, rope=None, token_positions=None, kv_cache=None, layer_idx=0, mask=None):
        B, T, C = x.shape
        nh, nkv, hs = self.num_heads, self.num_kv_heads, self.d_k
        # three matmuls rather than one on torch.cat of the weights, which copied them every step (see SwiGLU)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, nh hs), (B, T, nkv hs) x 2
        q, k, v = (t.view(B, T, -1, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # positions rotate queries and keys, never values; per-sequence (B, T) positions
            pos = token_positions.unsqueeze(-2) if token_positions.dim() > 1 else token_positions  # -> (B, 1, T)
            q, k = rope(q, pos), rope(k, pos)  # (B, 1, T) broadcasts over the heads, (T,) over everything

        if kv_cache is not None:
            # decoding: write this step's keys/values into the cache, attend over the whole (static-size) cache;
            # `mask` (B, 1, T, T_max) hides empty slots, left padding and the future
            k, v = kv_cache.update(layer_idx, k, v)  # (B, nkv, T_max, hs)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if nkv != nh:  # GQA: each key/value head serves nh/nkv query heads
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)

        if mask is not None:  # the cache path (or any explicit mask)
            y = scaled_dot_product_attention(q, k, v, mask) if self.attn_impl == 'reference' else \
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.attn_impl == 'reference':
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # True = attend
            y = scaled_dot_product_attention(q, k, v, causal)
        elif self.attn_impl == 'sdpa':
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # FlashAttention-2 / cuDNN inside
        elif self.attn_impl == 'flash':
            from flash_attn import flash_attention  # the project's Triton kernel (flash_attn.py), imported lazily
            y = flash_attention(q, k, v, is_causal=True)
        else:
            raise ValueError(f"attn_impl must be 'reference', 'sdpa' or 'flash', got {self.attn_impl!r}")
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C): heads side by side again
        return self.output_proj(y)

class TransformerBlock(nn.Module):
    """Pre-norm block (Xiong et al. 2020): y = x + attn(ln1(x)); out = y + ffn(ln2(y)). Ablations: post_norm=True,
    the original Transformer's y = ln1(x + attn(x)); out = ln2(y + ffn(y)); norm='none' removes both norms."""

    def __init__(self, cfg, device=None, dtype=None):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.attn = CausalMultiHeadSelfAttention(cfg, device, dtype)
        self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, device, dtype) if cfg.ffn == 'swiglu' else \
            MLP(cfg.d_model, cfg.d_ff, cfg.ffn, device, dtype)
        norm = (lambda: RMSNorm(cfg.d_model, device=device, dtype=dtype)) if cfg.norm == 'rmsnorm' else nn.Identity
        self.ln1, self.ln2 = norm(), norm()

    def forward(self, x, **attn_kwargs):
        if self.post_norm:
            x = self.ln1(x + self.attn(x, **attn_kwargs))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(self.ln1(x), **attn_kwargs)
        return x + self.ffn(self.ln2(x))

@dataclass
class ModelConfig:
    vocab_size: int = 10000
    context_length: int = 256
    d_model: int = 512
    num_layers: int = 4
    num_heads: int = 16
    d_ff: Optional[int] = None  # None: SwiGLU 8/3 d_model rounded to a multiple of 64 (512 -> 1344); else 4 d_model
    rope_theta: float = 10000.0
    attn_impl: str = 'sdpa'  # 'reference' | 'sdpa' | 'flash'
    norm: str = 'rmsnorm'  # 'rmsnorm' | 'none' (ablation)
    post_norm: bool = False  # ablation: norm after the residual add
    pos_emb: str = 'rope'  # 'rope' | 'nope' (ablation: no positional information at all)
    ffn: str = 'swiglu'  # 'swiglu' | 'silu' (ablation) | 'relu2' (see MLP)
    tie_embeddings: bool = False  # lm_head shares token_embeddings' weight
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    num_kv_heads: Optional[int] = None  # None = num_heads; fewer = grouped-query attention
    zero_init_proj: bool = False  # attention and FFN output projections start at zero (see TransformerLM)
    logit_softcap: float = 0.0  # > 0: logits = cap tanh(logits / cap) (see TransformerLM.forward); 0 = off

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 64 * round(8 * self.d_model / 3 / 64) if self.ffn == 'swiglu' else 4 * self.d_model
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        choices = {'attn_impl': ('reference', 'sdpa', 'flash'), 'norm': ('rmsnorm', 'none'),
                   'pos_emb': ('rope', 'nope'), 'ffn': ('swiglu', 'silu', 'relu2')}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"ModelConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if min(self.vocab_size, self.context_length, self.d_model, self.num_layers, self.num_heads, self.d_ff,
               self.num_kv_heads) < 1 or self.logit_softcap < 0:
            raise ValueError(f"sizes must be >= 1 and logit_softcap >= 0: {self}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")

class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated at full size so that every decode
    step has the same tensor shapes (which is what lets the step be compiled or captured in a CUDA graph).

    k, v: one (B, num_kv_heads, max_seq_len, head_dim) tensor per layer (separate tensors rather than one stacked
    array: torch.compile then updates each in place, where writing into a slice of a stacked input made it copy the
    whole cache every layer). `pos` (a 0-d tensor on the device, so that a
    captured graph can advance it) is the slot the next token goes to; `pad` (B,) is the number of left-padding
    slots of each row (prompts of different lengths are right-aligned, so all rows write the same slot)."""

    def __init__(self, num_layers, batch_size, num_kv_heads, max_seq_len, head_dim, device=None, dtype=None):
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_seq_len = max_seq_len

    def reset(self, pad=None):
        self.pos.zero_()
        self.pad.copy_(pad if pad is not None else torch.zeros_like(self.pad))

    def get_pos(self):
        return int(self.pos)  # NOTE: a CPU-GPU sync point

    def positions_and_mask(self, T):
        """For T new tokens: their rotary positions (B, T) and the attention mask (B, 1, T, max_seq_len)."""
        slots = torch.arange(self.max_seq_len, device=self.pos.device)  # (S,)
        q_slots = self.pos + torch.arange(T, device=self.pos.device)  # (T,)
        seen = slots[None, None, :] <= q_slots[None, :, None]  # causal: (1, T, S)
        real = slots[None, None, :] >= self.pad[:, None, None]  # not left padding: (B, 1, S)
        # a padding query attends to itself only: never a fully masked row (softmax of all -inf is NaN, and a NaN
        # value, even with weight 0, would poison the real rows)
        own = slots[None, None, :] == q_slots[None, :, None]
        mask = (seen & real) | own  # (B, T, S)
        positions = (q_slots[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T): RoPE counts from each prompt's start
        return positions, mask.unsqueeze(1)

    def update(self, layer_idx, k, v):
        """Write k, v (B, nkv, T, hs) at slots pos..pos+T-1 of one layer; return that layer's full cache."""
        T = k.shape[2]
        idx = self.pos + torch.arange(T, device=k.device)
        k_cache, v_cache = self.k[layer_idx], self.v[layer_idx]
        k_cache[:, :, idx] = k.to(k_cache.dtype)  # an in-place index_put: torch.compile keeps it in place
        v_cache[:, :, idx] = v.to(v_cache.dtype)
        return self.k[layer_idx], self.v[layer_idx]

    def advance(self, T):
        self.pos.add_(T)

class TransformerLM(nn.Module):
    """token_embeddings -> num_layers x TransformerBlock -> ln_final -> lm_head, returning logits (no softmax)."""

    # Two training-speed switches, off here (the plain definition), on in train.py (results/train_throughput.md).
    # fused_loss: forward(idx, targets) on CUDA through FusedLinearCrossEntropy (no float32 log-probabilities).
    fused_loss = False
    # lowp_residual: under autocast the residual stream stays float32 (the embedding table is); this casts the
    # embedding output to bf16, halving the norms' and adds' traffic (nanochat: a bf16 table). Loss unchanged.
    lowp_residual = False

    def __init__(self, vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=None,
                 rope_theta=10000.0, device=None, dtype=None, **options):
        super().__init__()
        cfg = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                          num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta, **options)
        self.config = cfg
        self.token_embeddings = Embedding(cfg.vocab_size, cfg.d_model, device, dtype)
        self.layers = nn.ModuleList([TransformerBlock(cfg, device, dtype) for _ in range(cfg.num_layers)])
        self.ln_final = RMSNorm(cfg.d_model, device=device, dtype=dtype) if cfg.norm == 'rmsnorm' else nn.Identity()
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, device, dtype)
        if cfg.tie_embeddings:
            # one matrix for both ends. N(0,1) (the embedding init) would give logits of std ~sqrt(d_model),
            # so the shared matrix keeps lm_head's small Glorot init instead
            self.token_embeddings.weight = self.lm_head.weight
        hs = cfg.d_model // cfg.num_heads
        self.rope = RotaryPositionalEmbedding(cfg.rope_theta, hs, cfg.context_length, device) \
            if cfg.pos_emb == 'rope' else None
        if cfg.zero_init_proj:
            # every block starts as the identity (its residual branches add 0); the zeroed matrices' gradients are
            # not 0, so they move at once. modded-nanogpt's records ("muP-like"); GPT-2 scales them by 1/sqrt(2 L)
            for layer in self.layers:
                nn.init.zeros_(layer.attn.output_proj.weight)
                nn.init.zeros_(layer.ffn.w2.weight)
        self._graphs = {}  # CUDA graphs of the decode step, see _decode_step

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size). With targets (B, T): the mean cross-entropy loss instead
        (CUDA + fused_loss: FusedLinearCrossEntropy, which never upcasts the (B, T, V) logits; else F.cross_entropy).
        With kv_cache: the tokens continue the cached sequences (see KVCache) and the cache advances by T."""
        B, T = idx.shape
        mask = None
        if kv_cache is not None:
            token_positions, mask = kv_cache.positions_and_mask(T)
        else:
            assert T <= self.config.context_length, \
                f"Cannot forward a sequence of length {T}: context_length is only {self.config.context_length}"
            token_positions = torch.arange(T, device=idx.device)  # (T,) broadcasts over the batch
        x = self.token_embeddings(idx)  # (B, T, C)
        if self.lowp_residual and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for i, layer in enumerate(self.layers):
            x = layer(x, rope=self.rope, token_positions=token_positions, kv_cache=kv_cache, layer_idx=i, mask=mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.ln_final(x)
        cap = self.config.logit_softcap
        if targets is not None and self.fused_loss and x.is_cuda and triton is not None \
                and self.config.attn_impl != 'reference':
            return self._fused_loss(x, targets, cap)
        logits = self.lm_head(x)  # (B, T, V)
        if cap:
            # logit soft-capping (Gemma 2, Team et al. 2024; modded-nanogpt's records, 30 then 15): cap tanh(z / cap)
            # is ~z for small logits and saturates at +-cap, so no logit can run away and make the model overconfident
            logits = cap * torch.tanh(logits.float() / cap)
        if targets is not None:
            # torch's fused log-softmax + NLL: the same value as cross_entropy() above (tests/test_model.py checks),
            # with fewer and lighter kernels than inductor makes of ours (results/train_throughput.md); the readable
            # cross_entropy() is what the reference attention path uses.
            if self.config.attn_impl == 'reference':
                return cross_entropy(logits, targets)
            return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
        return logits

    @torch.compiler.disable
    def _fused_loss(self, x, targets, cap):
        # the GPU training loss (see FusedLinearCrossEntropy), with the bf16 operands autocast would give the matmul.
        # Left out of torch.compile's graph (one graph break, at the very end): traced, the kernel's in-place
        # overwrite of the logits was functionalized into a full copy of them first
        h, w = x.flatten(0, -2), self.lm_head.weight  # (B*T, C), (V, C)
        if torch.is_autocast_enabled(h.device.type):
            dt = torch.get_autocast_dtype(h.device.type)
            h, w = h.to(dt), w.to(dt)
        return FusedLinearCrossEntropy.apply(h, w, targets.flatten(), -100, cap)

    # -------------------------------------------------------------------------
    # Generation

    @staticmethod
    def _sample(logits, temperature, top_p, generator, banned=None):
        """Next token (B,) from logits (B, V): greedy when temperature == 0, else temperature + nucleus sampling
        (Holtzman et al. 2019: keep the smallest set of tokens whose probability adds up to top_p). `banned`: a
        token id never drawn (end-of-text before generate's min_tokens)."""
        if banned is not None:
            logits = logits.clone()
            logits[:, banned] = float('-inf')
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
            # drop a token when the tokens before it already cover top_p (the first token always stays)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
        # argmax(p / E) with E ~ Exponential(1) is a sample from p (the "exponential race"); unlike
        # torch.multinomial it needs no renormalisation and never syncs with the CPU
        e = torch.empty_like(probs).exponential_(generator=generator)
        return (probs / e).argmax(dim=-1)

    def _decode_forward(self, tok, cache):
        return self(tok, kv_cache=cache)[:, -1]  # (B, 1) -> (B, V)

    def _decode_step(self, tok, cache, use_graph, compile=False):
        """One token per row: tok (B,) -> logits (B, V). On CUDA the step is captured once in a CUDA graph and
        replayed: the ~40 small kernels per layer launch as one graph (no Python, no per-kernel launch cost), which
        is what makes small-batch decoding fast. compile=True first fuses those kernels with torch.compile
        (compiled once per batch size and cache length)."""
        fn = self._decode_forward
        if compile:
            if getattr(self, '_compiled_decode', None) is None:
                self._compiled_decode = torch.compile(self._decode_forward, dynamic=False)
            fn = self._compiled_decode
        if not use_graph:
            return fn(tok[:, None], cache)
        key = (id(cache), compile)
        if key not in self._graphs:
            static_tok = tok[:, None].clone()
            # warm up on a side stream (cuBLAS/SDPA pick their kernels, torch.compile compiles), as torch.cuda.graph's
            # docs ask; this warm-up is a real decode step, so its logits are returned
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                logits = fn(static_tok, cache)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # recorded, not run: the cache position does not move here
                static_logits = fn(static_tok, cache)
            self._graphs[key] = (graph, static_tok, static_logits)
            return logits
        graph, static_tok, static_logits = self._graphs[key]
        static_tok.copy_(tok[:, None])
        graph.replay()
        return static_logits

    def _get_cache(self, B, max_seq_len, device, dtype):
        """A KVCache per (batch, length, dtype), kept between calls together with its CUDA graph."""
        key = ('cache', B, max_seq_len, device, dtype, self.lm_head.weight.data_ptr())
        if key not in self._graphs:
            cfg = self.config
            if len(self._graphs) > 16:
                self._graphs.clear()
            self._graphs[key] = KVCache(cfg.num_layers, B, cfg.num_kv_heads, max_seq_len, cfg.d_model // cfg.num_heads,
                                        device=device, dtype=dtype)
        return self._graphs[key]

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, eos_id=None, seed=None,
                 use_cache=True, cuda_graph=True, compile=False, min_tokens=0, stop=None):
        """Sample continuations of a batch of prompts (lists of token ids, any lengths) with a KV cache.
        Returns the new tokens of each prompt (a list of lists). A row stops after eos_id or once its new tokens end
        with a token-id sequence in `stop` (both kept); before min_tokens new tokens eos_id is never drawn and stops do
        not count. temperature=0 is greedy. use_cache=False runs the reference (the whole sequence for every token).
        On CUDA the decode step runs as a CUDA graph (cuda_graph=True); compile=True also fuses its kernels."""
        if isinstance(prompts[0], int):
            raise TypeError("prompts must be a list of token-id lists (a batch), e.g. [[1, 2, 3]]")
        device = self.lm_head.weight.device
        generator = torch.Generator(device=device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        stop = [torch.tensor(s, device=device) for s in (stop or [])]
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        if not use_cache:
            return [self._generate_naive(p, max_new_tokens, temperature, top_p, eos_id, generator, min_tokens, stop)
                    for p in prompts]

        B, P = len(prompts), max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise ValueError("every prompt needs at least one token (start with the end-of-text id for none)")
        ctx = self.config.context_length
        if P + max_new_tokens > ctx:
            raise ValueError(f"longest prompt ({P}) + max_new_tokens ({max_new_tokens}) = {P + max_new_tokens} "
                             f"exceeds the model's context_length {ctx}; ask for fewer tokens or shorten prompts")
        # cache length rounded up to a multiple of 64: calls with similar lengths share one cache and its CUDA graph
        S = min(ctx, -(-(P + max_new_tokens) // 64) * 64)
        # right-align the prompts: row b has pad[b] dummy tokens on the left, which the mask hides
        idx = torch.tensor([[0] * (P - len(p)) + list(p) for p in prompts], device=device)  # (B, P)
        pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
        dtype = torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else self.lm_head.weight.dtype
        cache = self._get_cache(B, S, device, dtype)
        cache.reset(pad)
        use_graph = cuda_graph and device.type == 'cuda'

        out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        n_new = torch.full((B,), max_new_tokens, device=device)  # tokens each row keeps (set when it finishes)
        logits = self(idx, kv_cache=cache)[:, -1]  # prefill: the whole prompts at once, (B, V)
        for t in range(max_new_tokens):
            tok = self._sample(logits, temperature, top_p, generator, eos_id if t < min_tokens else None)  # (B,)
            out[:, t] = tok
            hit = self._finished(out, t, eos_id, stop if t + 1 >= min_tokens else [])  # (B,) bool, on the device
            n_new = torch.where(hit & ~done, t + 1, n_new)
            done |= hit
            # every 16 tokens: have all rows finished? NOTE: bool() is a CPU-GPU sync point
            if t == max_new_tokens - 1 or ((eos_id is not None or stop) and t % 16 == 15 and bool(done.all())):
                break
            logits = self._decode_step(tok, cache, use_graph, compile and device.type == 'cuda')
        return [row[:n] for row, n in zip(out[:, :t + 1].tolist(), n_new.tolist())]

    @staticmethod
    def _finished(out, t, eos_id, stop):
        """Rows whose token t is eos_id or whose tokens up to t end with a stop sequence: (B,) bool, no sync."""
        hit = out[:, t] == eos_id if eos_id is not None else torch.zeros_like(out[:, 0], dtype=torch.bool)
        for s in stop:
            if t + 1 >= len(s):
                hit |= (out[:, t + 1 - len(s):t + 1] == s).all(dim=1)
        return hit

    def clear_generation_cache(self):
        """Free generate's KV caches and CUDA graphs (between phases; before copy.deepcopy: graphs cannot be copied)."""
        self._graphs.clear()

    def _generate_naive(self, prompt, max_new_tokens, temperature, top_p, eos_id, generator, min_tokens=0, stop=()):
        """The reference for the cache: re-run the full (cropped) sequence for each new token, O(T^2) per token."""
        device = self.lm_head.weight.device
        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        new = torch.zeros(1, max_new_tokens, dtype=torch.long, device=device)
        for t in range(max_new_tokens):
            logits = self(idx[:, -self.config.context_length:])[:, -1]
            new[:, t] = self._sample(logits, temperature, top_p, generator, eos_id if t < min_tokens else None)
            idx = torch.cat([idx, new[:, t:t + 1]], dim=1)
            if self._finished(new, t, eos_id, stop if t + 1 >= min_tokens else []).item():
                break
        return new[0, :t + 1].tolist()

    # -------------------------------------------------------------------------
    # Checkpoints

    @classmethod
    def from_checkpoint(cls, path, map_location='cpu', **overrides):
        """Load a model from a train.py checkpoint ({'model': state_dict, 'model_args': kwargs, ...}).
        overrides change options that do not touch the weights, e.g. attn_impl='reference'."""
        ckpt = torch.load(path, map_location=map_location, weights_only=False)  # FileNotFoundError names the path
        if 'model_args' not in ckpt or 'model' not in ckpt:
            raise ValueError(f"{path} is not a train.py checkpoint (it needs 'model' and 'model_args' entries)")
        model = cls(**{**ckpt['model_args'], **overrides})
        model.load_state_dict(ckpt['model'])
        return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model

# -----------------------------------------------------------------------------
# Counting parameters and FLOPs (for MFU and scaling laws)

# The course's model sizes (CS336 A2, Table 1) that bench/profile_model.py, ddp.py and bench/fsdp.py measure.
MODEL_SIZES = {name: dict(d_model=d, d_ff=4 * d, num_layers=n, num_heads=h) for name, d, n, h in (
    ('tiny', 64, 2, 4), ('small', 768, 12, 12), ('medium', 1024, 24, 16), ('large', 1280, 36, 20),
    ('xl', 1600, 48, 25), ('2.7B', 2560, 32, 32))}

def count_parameters(model_or_config, exclude_embeddings=True):
    """Number of parameters. exclude_embeddings drops the input embedding table (a lookup costs no FLOPs), which is
    the count that goes into 6N FLOPs per token (like nanoGPT's, whose tied table is counted once as lm_head).
    Accepts a TransformerLM or a ModelConfig (then counted analytically, without building the model)."""
    if isinstance(model_or_config, nn.Module):
        n = sum(p.numel() for p in {id(p): p for p in model_or_config.parameters()}.values())  # tied: counted once
        cfg = model_or_config.config
        if exclude_embeddings and not cfg.tie_embeddings:
            n -= model_or_config.token_embeddings.weight.numel()
        return n
    cfg = model_or_config
    d, hs = cfg.d_model, cfg.d_model // cfg.num_heads
    attn = d * cfg.num_heads * hs * 2 + d * cfg.num_kv_heads * hs * 2 + (2 * hs if cfg.qk_norm else 0)
    ffn = (3 if cfg.ffn == 'swiglu' else 2) * d * cfg.d_ff
    norms = 2 * d if cfg.norm == 'rmsnorm' else 0
    n = cfg.num_layers * (attn + ffn + norms) + (d if cfg.norm == 'rmsnorm' else 0) + cfg.vocab_size * d  # + lm_head
    if not exclude_embeddings and not cfg.tie_embeddings:
        n += cfg.vocab_size * d
    return n

def flops_per_token(model_or_config, context_length=None):
    """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT estimate_mfu:
    6 N for the weight matmuls plus 12 L d T for attention scores and values (T = context length)."""
    cfg = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    T = context_length or cfg.context_length
    return 6 * count_parameters(model_or_config) + 12 * cfg.num_layers * cfg.d_model * T

def estimate_mfu(model_or_config, tokens_per_s, peak_flops=989e12, context_length=None):
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (H100 SXM bf16 dense: 989 TFLOP/s)."""
    return flops_per_token(model_or_config, context_length) * tokens_per_s / peak_flops

def model_args_from(model):
    """The kwargs that rebuild `model` (what train.py stores as checkpoint['model_args'])."""
    return {f.name: getattr(model.config, f.name) for f in fields(ModelConfig)}

def main():
    """Smoke test: build a tiny model, count its parameters, decode greedily with the KV cache."""
    model = TransformerLM(vocab_size=1000, context_length=64, d_model=64, num_layers=2, num_heads=4)
    print(f"{count_parameters(model):,} parameters (excluding embeddings); {asdict(model.config)}")
    print(model.generate([[1, 2, 3], [4]], max_new_tokens=8, temperature=0, seed=0))

if __name__ == '__main__':
    main()

"""
flash_attn.py: FlashAttention-2 from scratch (Dao 2023, arXiv:2307.08691), in PyTorch and in Triton.

Naive attention, softmax(Q K^T / sqrt(d)) V, writes the (T, T) score matrix to memory and reads it back; at long T
that traffic, not the arithmetic, sets the speed. FlashAttention never builds the matrix. Algorithm 1 (forward):
a query tile stays on chip while key tiles stream past; an *online softmax* keeps per query row the running max m
and the running sum l of exp(s - m), and rescales what it accumulated by exp(m_old - m_new) when the max grows.
O = acc / l at the end, and only O and the logsumexp L = m + log(l) are saved. Algorithm 2 (backward) recomputes
P = exp(S - L) tile by tile from Q, K and L instead of storing it. Top to bottom: 1) naive_attention, the
reference; 2) FlashAttentionPytorch, Algorithm 1 in PyTorch; 3) the Triton forward; 4) the Triton backward;
5) FlashAttentionTriton and flash_attention(q, k, v) for model.py; 6) the command.

  python flash_attn.py                       # check both paths against naive attention on this device
  TRITON_INTERPRET=1 python flash_attn.py    # the same on CPU, the Triton kernels through Triton's interpreter
  python bench/flash_attn.py                 # timings: the course leaderboard setting and sweep, tile tuning
Inputs: (batch, seq, d) like the course, or (batch, heads, seq, d) in any layout with a contiguous last dim; any
length; fp16/bf16/fp32 (fp32 as TF32 tensor-core products, like SDPA on GPU); head dim 16, 32, 64 or 128.
"""
import functools
import math
import os
import sys

import torch
import triton
import triton.language as tl

# -----------------------------------------------------------------------------
# the command's settings: `python flash_attn.py --seq_len=300` (the library functions below ignore these)
device = 'auto'  # 'auto' (cuda if there is one, else cpu) | 'cuda' | 'cpu'
dtypes = 'bfloat16,float32'  # comma-separated dtypes to check: bfloat16, float16, float32
seq_len = 72  # T of the check, q, k, v of shape (1, 2, T, D); not a multiple of the tiles: the ragged tail too
head_dim = 64  # D of the check: 16, 32, 64 or 128
# -----------------------------------------------------------------------------

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) * ln(2)
MASK_VALUE = -1.0e6  # added to masked scores; finite (not -inf) so that no row ever computes -inf - -inf = NaN
# the same numbers as compile-time constants for the kernels (a @triton.jit function may only read constexpr globals)
_LOG2E, _LN2, _MASK_VALUE = tl.constexpr(LOG2E), tl.constexpr(LN2), tl.constexpr(MASK_VALUE)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)  # tl.arange needs a power of two, tl.dot needs >= 16
DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': torch.float32}  # the kernels' dtypes


# -----------------------------------------------------------------------------
# 1) The reference: naive attention, O(T^2) memory

def naive_attention(q, k, v, is_causal=False):
    """softmax(q k^T / sqrt(d) + mask) v for q (..., Tq, d), k and v (..., Tk, d); materializes the (Tq, Tk) scores."""
    Tq, Tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (..., Tq, Tk)
    if is_causal:  # query i sees keys j <= i
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1)  # True above the diagonal
        s = s.masked_fill(mask, float('-inf'))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v  # (..., Tq, d)


# -----------------------------------------------------------------------------
# 2) FlashAttention-2 in plain PyTorch (tiles, online softmax), and the recomputation backward

def _attn_bwd_recompute(q, k, v, o, L, do, is_causal):
    """
    The FlashAttention-2 backward as whole-matrix PyTorch (Dao 2023, Algorithm 2 without the tiling):
    P is recomputed from Q, K and the saved logsumexp L instead of being stored by the forward.
        D = rowsum(O * dO)            S = Q K^T / sqrt(d)           P = exp(S - L)
        dV = P^T dO                   dP = dO V^T                   dS = P * (dP - D)
        dQ = dS K / sqrt(d)           dK = dS^T Q / sqrt(d)
    (dS = P * (dP - D) is the softmax Jacobian-vector product: D_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i).)
    Works on queries (..., Tq, d) and keys (..., Tk, d); torch.compile fuses the elementwise parts on the GPU.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 math for bf16/fp16, fp64 stays fp64 (gradcheck)
    q, k, v, o, do = (x.to(dtype) for x in (q, k, v, o, do))
    scale = 1.0 / math.sqrt(q.shape[-1])
    D = (o * do).sum(-1, keepdim=True)  # (..., Tq, 1)
    s = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    if is_causal:  # query i sees keys j <= i (the course's mask, also when Tq != Tk)
        rows, cols = torch.arange(q.shape[-2], device=q.device), torch.arange(k.shape[-2], device=q.device)
        s = s + torch.where(cols[None, :] > rows[:, None], MASK_VALUE, 0.0).to(dtype)  # -1e6 above the diagonal
    p = torch.exp(s - L.to(dtype).unsqueeze(-1))  # (..., Tq, Tk), rows sum to 1
    dv = p.transpose(-2, -1) @ do  # (..., Tk, d)
    dp = do @ v.transpose(-2, -1)  # (..., Tq, Tk)
    ds = p * (dp - D)  # (..., Tq, Tk)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-2, -1) @ q) * scale
    return dq, dk, dv


@functools.cache
def _attn_bwd_compiled():
    # compiled once, lazily, for the GPU (on CPU inductor's C++ build costs more than it saves on tiny shapes)
    return torch.compile(_attn_bwd_recompute)


class FlashAttentionPytorch(torch.autograd.Function):
    """FlashAttention-2 forward with PyTorch tiles: o = FlashAttentionPytorch.apply(q, k, v, is_causal) for q, k, v
    of shapes (batch, n_queries, d), (batch, n_keys, d) (any leading dims); saves exactly L (batch, n_queries), q, k, v,
    O (for the backward)."""
    tile_q = 32  # query tile (B_q in the paper); at least 16 per the course
    tile_k = 32  # key tile (B_k)

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        assert k.shape == v.shape and q.shape[:-2] == k.shape[:-2] and q.shape[-1] == k.shape[-1], \
            f"q (..., n_queries, d) and k, v (..., n_keys, d) do not match: {q.shape}, {k.shape}, {v.shape}"
        T, Tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        Bq, Bk = FlashAttentionPytorch.tile_q, FlashAttentionPytorch.tile_k
        dtype = torch.promote_types(q.dtype, torch.float32)  # accumulate in fp32 (fp64 for gradcheck)
        scale = 1.0 / math.sqrt(d)
        o = torch.empty_like(q)
        L = torch.empty(q.shape[:-1], dtype=torch.float32 if dtype != torch.float64 else dtype, device=q.device)
        for i in range(0, T, Bq):  # one query tile at a time (a Triton program in the kernel below)
            qi = q[..., i:i + Bq, :].to(dtype)  # (..., bq, d)
            bq = qi.shape[-2]
            m = torch.full(qi.shape[:-1], float('-inf'), dtype=dtype, device=q.device)  # running row max
            l = torch.zeros(qi.shape[:-1], dtype=dtype, device=q.device)  # running row sum of exp(s - m)
            acc = torch.zeros(qi.shape, dtype=dtype, device=q.device)  # unnormalized output
            # causal tile skipping: key tiles that start after the last query of this tile are all masked
            hi = min(i + bq, Tk) if is_causal else Tk
            for j in range(0, hi, Bk):
                kj, vj = k[..., j:j + Bk, :].to(dtype), v[..., j:j + Bk, :].to(dtype)  # (..., bk, d)
                s = (qi @ kj.transpose(-2, -1)) * scale  # (..., bq, bk)
                if is_causal and j + kj.shape[-2] > i:  # only tiles touching the diagonal need the mask
                    rows = torch.arange(i, i + bq, device=q.device)[:, None]
                    cols = torch.arange(j, j + kj.shape[-2], device=q.device)[None, :]
                    s = s + torch.where(cols > rows, MASK_VALUE, 0.0).to(dtype)
                m_new = torch.maximum(m, s.amax(-1))  # (..., bq)
                p = torch.exp(s - m_new.unsqueeze(-1))  # (..., bq, bk)
                alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old max
                l = alpha * l + p.sum(-1)
                acc = alpha.unsqueeze(-1) * acc + p @ vj
                m = m_new
            o[..., i:i + bq, :] = (acc / l.unsqueeze(-1)).to(q.dtype)
            L[..., i:i + bq] = (m + torch.log(l)).to(L.dtype)  # logsumexp of each score row
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o

    @staticmethod
    def backward(ctx, do):
        L, q, k, v, o = ctx.saved_tensors
        bwd = _attn_bwd_compiled() if q.is_cuda else _attn_bwd_recompute
        dq, dk, dv = bwd(q, k, v, o, L, do, ctx.is_causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


# -----------------------------------------------------------------------------
# 3) The Triton forward
# Kernels see tensors as (batch, heads, T, d) through four strides, so (B, T, d) inputs (heads stride 0) and strided
# views need no copy. Scores are kept in base 2, s2 = (q . k) * sm_scale * log2(e): exp(s - m) = exp2(s2 - m2).
# Streamed tiles come through tensor descriptors (Triton's tutorial 06-fused-attention): TMA copies on Hopper (whole
# tiles, rows past T zero-filled, no registers spent on addresses), plain loads before it (Triton rewrites them).

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_desc, V_desc, offs_m, lo, hi, T, qk_scale,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    # Online softmax over key tiles [lo, hi) (the inner loop of Algorithm 1). MASKED tiles (diagonal, ragged
    # tail) check bounds and the causal mask; the others are known to be visible and in bounds, and skip all that.
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k = tl.trans(K_desc.load([start_n, 0]))  # (D, BLOCK_N), transposed in shared memory
        v = V_desc.load([start_n, 0])  # (BLOCK_N, D)
        s = tl.dot(q, k)  # (BLOCK_M, BLOCK_N) fp32 scores, unscaled
        if MASKED:
            cols = start_n + offs_n
            keep = cols[None, :] < T  # keys past the end
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])  # keys after the query
            s = tl.where(keep, s, _MASK_VALUE / qk_scale)  # masked scores become -1e6 once scaled
        # the max of the raw scores, scaled once per row (qk_scale > 0): the exp2 argument is ONE multiply-add
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # (BLOCK_M,) running max, base 2
        p = tl.math.exp2(s * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)  # rescale factor of the old accumulator
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)  # P cast to V's dtype before P V (bf16 tensor cores)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, L,
              sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
              H, T, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    # grid: (query tiles, batch * heads). Under causal masking the last query tile sees the most keys: run the
    # programs in reverse so the heaviest start first and the light ones fill the tail (longest-processing-time-first)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b, off_h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    qk_scale = tl.cast(qk_scale, tl.float32)  # NOTE inductor passes Python floats as fp64: cast, or s becomes fp64
    q_start = pid_m * BLOCK_M
    Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    K_desc = tl.make_tensor_descriptor(K + off_b * skb + off_h * skh, shape=[T, HEAD_DIM], strides=[skt, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    V_desc = tl.make_tensor_descriptor(V + off_b * svb + off_h * svh, shape=[T, HEAD_DIM], strides=[svt, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    offs_m = q_start + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)  # running max m (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum l
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # unnormalized O
    q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D), stays in registers
    # key range: [0, lo_mask) needs no mask; [lo_mask, hi) does (the diagonal, or the ragged tail)
    lo_mask, hi = (T // BLOCK_N) * BLOCK_N, T
    if CAUSAL:  # causal tile skipping: nothing past the last query
        lo_mask, hi = (q_start // BLOCK_N) * BLOCK_N, tl.minimum(q_start + BLOCK_M, T)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_desc, V_desc, offs_m, 0, lo_mask, T, qk_scale,
                               BLOCK_N, False, CAUSAL)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_desc, V_desc, offs_m, lo_mask, hi, T, qk_scale,
                               BLOCK_N, True, CAUSAL)
    acc = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) * _LN2  # L = m + log(l), back from base 2 to natural log
    tl.store(L + pid_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)
    O_ptr = tl.make_block_ptr(O + off_b * sob + off_h * soh, shape=(T, HEAD_DIM), strides=(sot, sod),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    tl.store(O_ptr, acc.to(O.dtype.element_ty), boundary_check=(0,))  # O cast to the output dtype


# -----------------------------------------------------------------------------
# 4) The Triton backward (Algorithm 2)
# Two passes by default: dK/dV with the key tile outer (K, V stay in registers while Q, dO stream past), then dQ
# with the query tile outer; no atomics, but S and dP are computed in both: 7 matmuls per (key tile, query tile).
# DQ_ATOMIC ('atomic_tma', FlashAttention-3's way) needs 5 in one key-outer pass: each pair's partial dQ goes out as
# ONE bulk TMA reduce-add into an fp32 buffer in L2. Which wins depends on dtype, head dim and length: BWD_MODES.

@triton.jit
def _attn_bwd_preprocess(O, DO, Delta, sob, soh, sot, sod, sdb, sdh, sdt, sdd, H, T,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # Delta = rowsum(O * dO), (B, H, T) float32, once, instead of in every (key tile, query tile) pair
    pid_bh = tl.program_id(1)
    off_b, off_h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < T
    o = tl.load(O + off_b * sob + off_h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod, mask=rows, other=0.0)
    do = tl.load(DO + off_b * sdb + off_h * sdh + offs_m[:, None] * sdt + offs_d[None, :] * sdd, mask=rows, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(Delta + pid_bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, DQacc, offs_n, lo, hi, T, qk_scale,
                    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    # dK, dV of one key tile over query tiles [lo, hi), computed transposed, (keys, queries), so that dV = P^T dO and
    # dK = dS^T Q need no transposes. Q, dO: TMA copies, or block pointers with DQ_ATOMIC (faster there, results/).
    if DQ_ATOMIC:
        Q_ptr = tl.advance(Q_ptr, (lo, 0))
        DO_ptr = tl.advance(DO_ptr, (lo, 0))
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        if not DQ_ATOMIC:  # Q, dO tiles by TMA copies; rows past T read as zeros
            q = Q_ptr.load([start_m, 0])  # (BLOCK_M, D)
            do = DO_ptr.load([start_m, 0])  # (BLOCK_M, D)
        elif MASKED:
            q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
            do = tl.load(DO_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
        else:
            q = tl.load(Q_ptr)
            do = tl.load(DO_ptr)
        lse = tl.load(L + offs_m, mask=offs_m < T, other=0.0)  # (BLOCK_M,)
        delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)  # (BLOCK_M,)
        sT = tl.dot(k, tl.trans(q))  # (BLOCK_N, BLOCK_M) = (K Q^T), unscaled
        if DQ_ATOMIC:
            # dP^T issued before the exp2 (it does not need P): faster here, slower in two passes (results/, as above)
            dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        pT = tl.math.exp2(sT * qk_scale - (lse * _LOG2E)[None, :])  # P^T recomputed from L, base 2
        if MASKED:
            keep = offs_m[None, :] < T
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv)  # dV += P^T dO
        if not DQ_ATOMIC:
            dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        dsT = pT * (dpT - delta[None, :])  # dS^T = P^T * (dP^T - D)
        dk = tl.dot(dsT.to(q.dtype), q, dk)  # dK += dS^T Q (scaled once at the end)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k)  # (BLOCK_M, D) = dS K, unscaled
            DQacc.atomic_add([start_m, 0], dq)  # one TMA reduce-add of the tile; rows past T are dropped
            Q_ptr = tl.advance(Q_ptr, (BLOCK_M, 0))
            DO_ptr = tl.advance(DO_ptr, (BLOCK_M, 0))
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, L, Delta, DK, DV, DQacc,
                   sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                   sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd,
                   H, T, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   DQ_ATOMIC: tl.constexpr):
    # grid: (key tiles, batch * heads), natural order heaviest first (causal: key tile 0 is seen by most queries).
    # With DQ_ATOMIC also this key tile's share of dQ, added into DQacc: fp32 (B*H, T, D), zeroed, unscaled.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b, off_h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under torch.compile
    k_start = pid_n * BLOCK_N
    K_ptr = tl.make_block_ptr(K + off_b * skb + off_h * skh, shape=(T, HEAD_DIM), strides=(skt, skd),
                              offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    V_ptr = tl.make_block_ptr(V + off_b * svb + off_h * svh, shape=(T, HEAD_DIM), strides=(svt, svd),
                              offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    if not DQ_ATOMIC:
        Q_ptr = tl.make_tensor_descriptor(Q + off_b * sqb + off_h * sqh, shape=[T, HEAD_DIM], strides=[sqt, 1],
                                          block_shape=[BLOCK_M, HEAD_DIM])
        DO_ptr = tl.make_tensor_descriptor(DO + off_b * sdb + off_h * sdh, shape=[T, HEAD_DIM], strides=[sdt, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
    else:
        Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                                  offsets=(0, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
        DO_ptr = tl.make_block_ptr(DO + off_b * sdb + off_h * sdh, shape=(T, HEAD_DIM), strides=(sdt, sdd),
                                   offsets=(0, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    L, Delta = L + pid_bh.to(tl.int64) * T, Delta + pid_bh.to(tl.int64) * T  # this head's rows
    if DQ_ATOMIC:
        DQacc = tl.make_tensor_descriptor(DQacc + pid_bh.to(tl.int64) * T * HEAD_DIM, shape=[T, HEAD_DIM],
                                          strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
    k = tl.load(K_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_N, D)
    v = tl.load(V_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_N, D)
    offs_n = k_start + tl.arange(0, BLOCK_N)
    dk, dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32), tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # query range: [lo_diag, hi_diag) straddles the diagonal (masked); [hi_diag, hi_full) is fully visible;
    # [max(hi_diag, hi_full), T) is the ragged tail (masked). Query tiles wholly before the keys are skipped.
    lo_diag, hi_diag = 0, 0
    if CAUSAL:
        lo_diag, hi_diag = (k_start // BLOCK_M) * BLOCK_M, tl.minimum(tl.cdiv(k_start + BLOCK_N, BLOCK_M) * BLOCK_M, T)
    hi_full = (T // BLOCK_M) * BLOCK_M
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, DQacc, offs_n, lo_diag, hi_diag, T, qk_scale,
                             BLOCK_M, True, CAUSAL, DQ_ATOMIC)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, DQacc, offs_n, hi_diag, hi_full, T, qk_scale,
                             BLOCK_M, False, CAUSAL, DQ_ATOMIC)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, DQacc, offs_n, tl.maximum(hi_diag, hi_full), T,
                             T, qk_scale, BLOCK_M, True, CAUSAL, DQ_ATOMIC)
    dk = dk * sm_scale  # dK = dS^T Q / sqrt(d)
    DK_ptr = tl.make_block_ptr(DK + off_b * sgkb + off_h * sgkh, shape=(T, HEAD_DIM), strides=(sgkt, sgkd),
                               offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    DV_ptr = tl.make_block_ptr(DV + off_b * sgvb + off_h * sgvh, shape=(T, HEAD_DIM), strides=(sgvt, sgvd),
                               offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    tl.store(DK_ptr, dk.to(DK.dtype.element_ty), boundary_check=(0,))  # dK, dV: strides of their own
    tl.store(DV_ptr, dv.to(DV.dtype.element_ty), boundary_check=(0,))


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, K_desc, V_desc, offs_m, lo, hi, T, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    # Accumulate dQ of one query tile over key tiles [lo, hi), with the masks and ranges of the forward.
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        kT = tl.trans(K_desc.load([start_n, 0]))  # (D, BLOCK_N), transposed in shared memory
        vT = tl.trans(V_desc.load([start_n, 0]))  # (D, BLOCK_N)
        s = tl.dot(q, kT)  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])  # P recomputed from L, base 2
        if MASKED:
            cols = start_n + offs_n0
            keep = cols[None, :] < T
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT)  # (BLOCK_M, BLOCK_N) = dO V^T
        ds = p * (dp - delta[:, None])  # dS = P * (dP - D)
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq)  # dQ += dS K (scaled once at the end)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, L, Delta, DQ,
                 sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                 sgqb, sgqh, sgqt, sgqd,
                 H, T, qk_scale, sm_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    # grid: (query tiles, batch * heads), reversed like the forward; Q, dO, L, Delta of the tile stay in registers
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b, off_h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under torch.compile
    q_start = pid_m * BLOCK_M
    Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    DO_ptr = tl.make_block_ptr(DO + off_b * sdb + off_h * sdh, shape=(T, HEAD_DIM), strides=(sdt, sdd),
                               offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    K_desc = tl.make_tensor_descriptor(K + off_b * skb + off_h * skh, shape=[T, HEAD_DIM], strides=[skt, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    V_desc = tl.make_tensor_descriptor(V + off_b * svb + off_h * svh, shape=[T, HEAD_DIM], strides=[svt, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    offs_m = q_start + tl.arange(0, BLOCK_M)
    q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
    do = tl.load(DO_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
    lse2 = tl.load(L + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0) * _LOG2E  # base 2
    delta = tl.load(Delta + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo_mask, hi = (T // BLOCK_N) * BLOCK_N, T  # the key ranges of the forward
    if CAUSAL:
        lo_mask, hi = (q_start // BLOCK_N) * BLOCK_N, tl.minimum(q_start + BLOCK_M, T)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_desc, V_desc, offs_m, 0, lo_mask, T, qk_scale, BLOCK_N, False, CAUSAL)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_desc, V_desc, offs_m, lo_mask, hi, T, qk_scale, BLOCK_N, True, CAUSAL)
    dq = dq * sm_scale  # dQ = dS K / sqrt(d)
    DQ_ptr = tl.make_block_ptr(DQ + off_b * sgqb + off_h * sgqh, shape=(T, HEAD_DIM), strides=(sgqt, sgqd),
                               offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    tl.store(DQ_ptr, dq.to(DQ.dtype.element_ty), boundary_check=(0,))


# -----------------------------------------------------------------------------
# 5) Launching the kernels: tile configs, input checks, the autograd Function, the entry point for model.py

# Tiles (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages) per kernel and (dtype kind, head dim), chosen on the
# H100 by `python bench/flash_attn.py --mode=tune` (results/flash_attn_tune*.md) and frozen: no autotuning at run time
CONFIGS = {
    ('16bit', 16): {'fwd': (128, 64, 4, 3), 'dkdv': (32, 128, 4, 3), 'dq': (128, 32, 4, 3),
                    'atomic_tma': (64, 64, 4, 3)},
    ('16bit', 32): {'fwd': (128, 64, 8, 3), 'dkdv': (32, 128, 4, 3), 'dq': (128, 64, 8, 3)},
    ('16bit', 64): {'fwd': (128, 64, 8, 5), 'dkdv': (64, 128, 4, 3), 'dq': (128, 64, 4, 3),
                    'atomic_tma': (64, 128, 8, 4)},
    ('16bit', 128): {'fwd': (128, 128, 8, 3), 'dkdv': (64, 128, 8, 2), 'dq': (128, 64, 8, 3)},
    ('32bit', 16): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (64, 32, 4, 3)},
    ('32bit', 32): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (64, 32, 4, 3), 'atomic_tma': (32, 64, 4, 3)},
    ('32bit', 64): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (128, 32, 8, 2), 'atomic_tma': (32, 64, 4, 2)},
    ('32bit', 128): {'fwd': (64, 32, 4, 3), 'dkdv': (32, 64, 4, 2), 'dq': (64, 32, 4, 2), 'atomic_tma': (32, 64, 4, 2)},
}
# Under the interpreter: small tiles, BLOCK_M != BLOCK_N, so short test sequences hit every tile kind
INTERPRET_CONFIG = {'fwd': (32, 16, 4, 1), 'dkdv': (16, 32, 4, 1), 'dq': (32, 16, 4, 1)}
# The backward per (dtype kind, head dim): (mode, from T), that mode for sequences of at least T tokens, 'two_pass'
# below that and for the keys not listed; the backward alone timed both ways, results/flash_attn_candidates.md
BWD_MODES = {('16bit', 16): ('atomic_tma', 0), ('16bit', 64): ('atomic_tma', 16384), ('32bit', 32): ('atomic_tma', 0),
             ('32bit', 64): ('atomic_tma', 0), ('32bit', 128): ('atomic_tma', 0)}


def _interpreting():
    # TRITON_INTERPRET=1 runs the kernels on CPU tensors with numpy; its gaps are patched at the end of the file
    if os.environ.get('TRITON_INTERPRET', '0') != '1':
        return False
    _patch_triton_interpreter()
    return True


def _config(kind, q):
    key = ('32bit' if q.dtype == torch.float32 else '16bit', q.shape[-1])
    configs = INTERPRET_CONFIG if _interpreting() else CONFIGS[key]
    return configs.get(kind, configs['dkdv'])  # 'atomic_tma' where it was not tuned: the dK/dV tiles


def _strides(x):
    # (batch, heads, T, d) strides; a 3-D (batch, T, d) tensor is one head with a 0 head stride
    return (x.stride(0), 0, x.stride(1), x.stride(2)) if x.dim() == 3 else tuple(x.stride())


def check_inputs(q, k, v, is_causal):
    """Clear errors for what the Triton kernels cannot do, instead of a silent wrong result."""
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)):
        raise TypeError(f"flash attention: q, k, v must be torch.Tensors, got {[type(x).__name__ for x in (q, k, v)]}")
    if q.dim() not in (3, 4):
        msg = "expected (batch, seq, d) or (batch, heads, seq, d) inputs"
    elif not q.shape == k.shape == v.shape:
        msg = "q, k, v must have the same shape (self-attention; repeat k/v heads for GQA)"
    elif not q.dtype == k.dtype == v.dtype:
        msg = "q, k, v must have one dtype"
    elif q.dtype not in DTYPES.values():
        msg = "dtype not supported: use bfloat16, float16 or float32 (FlashAttentionPytorch takes float64)"
    elif q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        msg = f"head dim not supported: use one of {SUPPORTED_HEAD_DIMS} (or pad with zeros, or use SDPA)"
    elif not q.device == k.device == v.device:
        msg = "q, k, v must be on one device"
    elif not q.is_cuda and not _interpreting():
        msg = "the Triton kernels need CUDA tensors: on CPU use FlashAttentionPytorch, or TRITON_INTERPRET=1 (slow)"
    elif any(x.stride(-1) != 1 for x in (q, k, v)):
        msg = "q, k, v must be contiguous in their last (head) dim: call .contiguous() first"
    elif not isinstance(is_causal, bool):
        msg = f"is_causal must be True or False, got {is_causal!r}"
    else:
        return
    got = [(tuple(x.shape), str(x.dtype)[6:], str(x.device), x.stride()) for x in (q, k, v)]
    raise ValueError(f"flash attention: {msg}; got (shape, dtype, device, strides) of q, k, v: {got}")


def _aligned(*xs):
    """Each x, or a dense copy where a tensor descriptor cannot read it in place (TMA wants 16-byte aligned rows:
    a view like x[..., 1:17], or o.sum().backward()'s gradient with all strides 0); sets Triton's allocator too.
    Traced by torch.compile without a graph break; there storage_offset() is unknown: model.py's views are aligned."""
    compiling = torch.compiler.is_compiling()
    if not compiling:
        # the descriptors' scratch buffer comes from this allocator at launch; Triton keeps it per thread, and
        # autograd runs the backward in a thread of its own: so set it on every call, not once
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device='cuda', dtype=torch.int8))
    return tuple(x if x.stride(-1) == 1 and x.stride(-2) * x.element_size() % 16 == 0 and
                 (compiling or x.storage_offset() * x.element_size() % 16 == 0)
                 else x.clone(memory_format=torch.contiguous_format) for x in xs)


def flash_fwd(q, k, v, is_causal, cfg=None):
    """Launch the forward kernel. Returns o (like q) and L (q.shape[:-1], float32 natural-log logsumexp).
    cfg: (BLOCK_M, BLOCK_N, num_warps, num_stages), default CONFIGS' for this dtype and head dim."""
    BLOCK_M, BLOCK_N, num_warps, num_stages = cfg or _config('fwd', q)
    (T, D), B, H = q.shape[-2:], q.shape[0], (q.shape[1] if q.dim() == 4 else 1)
    k, v = _aligned(k, v)  # the tiles streamed through tensor descriptors
    o = torch.empty_like(q)  # keeps q's strides (e.g. a transposed view stays transposed)
    L = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # (B, [H,] T), contiguous
    _attn_fwd[(triton.cdiv(T, BLOCK_M), B * H)](q, k, v, o, L, *_strides(q), *_strides(k), *_strides(v),
                                                *_strides(o), H, T, LOG2E / math.sqrt(D), HEAD_DIM=D,
                                                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=is_causal,
                                                num_warps=num_warps, num_stages=num_stages)
    return o, L


def flash_bwd(q, k, v, o, L, do, is_causal, mode=None, cfgs=None):
    """Launch the backward kernels (Delta; dK/dV and dQ, or dK/dV with dQ by reduce-adds); returns dq, dk, dv.
    mode: 'two_pass' | 'atomic_tma' | None, BWD_MODES' choice; cfgs: {kind: config} overrides ('dkdv', 'dq', ...)."""
    if mode is None:
        mode, from_T = BWD_MODES.get(('32bit' if q.dtype == torch.float32 else '16bit', q.shape[-1]), ('two_pass', 0))
        mode = mode if q.shape[-2] >= from_T else 'two_pass'
    assert mode in ('two_pass', 'atomic_tma'), f"unknown backward mode {mode!r}"
    # TMA reduce-adds need a Hopper GPU (sm90+; the interpreter emulates them): elsewhere, two passes
    atomic = mode == 'atomic_tma' and (torch.cuda.get_device_properties(q.device).major >= 9 if q.is_cuda
                                       else _interpreting())
    q, k, v, do = _aligned(q, k, v, do)
    (T, D), B, H = q.shape[-2:], q.shape[0], (q.shape[1] if q.dim() == 4 else 1)
    sm_scale = 1.0 / math.sqrt(D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(L)  # (B, [H,] T) float32
    PRE_BLOCK = 128 if not _interpreting() else 16
    _attn_bwd_preprocess[(triton.cdiv(T, PRE_BLOCK), B * H)](o, do, delta, *_strides(o), *_strides(do), H, T,
                                                            HEAD_DIM=D, BLOCK_M=PRE_BLOCK)
    # dQ's fp32 accumulator for the reduce-adds, zeroed; two passes never read it (delta stands in)
    dq_acc = torch.zeros((B * H, T, D), dtype=torch.float32, device=q.device) if atomic else delta
    kind = 'atomic_tma' if atomic else 'dkdv'
    BM, BN, nw, ns = (cfgs or {}).get(kind) or _config(kind, q)
    _attn_bwd_dkdv[(triton.cdiv(T, BN), B * H)](q, k, v, do, L, delta, dk, dv, dq_acc,
                                                 *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                                 *_strides(dk), *_strides(dv), H, T, LOG2E * sm_scale, sm_scale,
                                                 HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, CAUSAL=is_causal,
                                                 DQ_ATOMIC=atomic, num_warps=nw, num_stages=ns)
    if atomic:
        dq.copy_((dq_acc * sm_scale).view(q.shape))  # dQ = dS K / sqrt(d), cast to q's dtype and strides
        return dq, dk, dv
    BM, BN, nw, ns = (cfgs or {}).get('dq') or _config('dq', q)
    _attn_bwd_dq[(triton.cdiv(T, BM), B * H)](q, k, v, do, L, delta, dq,
                                               *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                               *_strides(dq), H, T, LOG2E * sm_scale, sm_scale, HEAD_DIM=D,
                                               BLOCK_M=BM, BLOCK_N=BN, CAUSAL=is_causal, num_warps=nw, num_stages=ns)
    return dq, dk, dv


class FlashAttentionTriton(torch.autograd.Function):
    """FlashAttention-2 with the Triton kernels: o = FlashAttentionTriton.apply(q, k, v, is_causal) for q, k, v
    of shape (batch, seq, d) or (batch, heads, seq, d). Saves L, q, k, v, O for the backward, as the PyTorch one."""
    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        check_inputs(q, k, v, is_causal)
        o, L = flash_fwd(q, k, v, is_causal)
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o

    @staticmethod
    def backward(ctx, do):
        L, q, k, v, o = ctx.saved_tensors
        dq, dk, dv = flash_bwd(q, k, v, o, L, do, ctx.is_causal)
        return dq, dk, dv, None


def flash_attention(q, k, v, is_causal=True):
    """Multi-head attention with the Triton FlashAttention-2 kernels: q, k, v (B, H, T, D) -> o (B, H, T, D). Any
    strides with a contiguous last dim (model.py's q.view(B, T, H, D).transpose(1, 2)) are read in place."""
    if q.dim() != 4:
        raise ValueError(f"flash_attention: expected (B, H, T, D) inputs, got q of shape {tuple(q.shape)}; "
                         f"for (batch, seq, d) use FlashAttentionTriton.apply")
    return FlashAttentionTriton.apply(q, k, v, is_causal)


# -----------------------------------------------------------------------------
# 6) The command: both paths against naive attention in float64

TOL = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}  # relative error: TF32, 10- and 7-bit mantissas


def check(device, dtypes=(torch.bfloat16, torch.float32), shape=(1, 2, 72, 64), paths=('pytorch', 'triton')):
    """o, dq, dk, dv of each path vs naive attention in float64, causal and not: prints the max |error|s and
    returns the worst relative error ||x - ref|| / ||ref|| as a multiple of TOL[dtype] (inf for NaNs)."""
    fns = {'pytorch': FlashAttentionPytorch.apply, 'triton': FlashAttentionTriton.apply, 'naive': naive_attention}
    gen, worst = torch.Generator().manual_seed(0), 0.0  # inputs drawn on the CPU: the same on every device
    for dtype in dtypes:
        for causal in (False, True):
            q, k, v, do = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
            for name in ('naive',) + tuple(paths):  # naive first: the fp64 reference
                x = [(t.double() if name == 'naive' else t.clone()).requires_grad_() for t in (q, k, v)]
                o = fns[name](*x, causal)
                o.backward(do.to(o.dtype))
                got = [o.detach(), *(t.grad for t in x)]  # o, dq, dk, dv
                if name == 'naive':
                    ref = got
                    continue
                err = [(a.double() - b).abs().max().item() for a, b in zip(got, ref)]
                rel = max(((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, ref))
                worst = max(worst, rel / TOL[dtype] if rel == rel else math.inf)  # NaN: max() would skip it
                print(f"{name:7s} {str(dtype)[6:]:8s} causal={causal!s:5}: max |error| o {err[0]:.1e} "
                      f"dq {err[1]:.1e} dk {err[2]:.1e} dv {err[3]:.1e} (relative {rel:.1e})")
    return worst


def main():
    """Check FlashAttentionPytorch and FlashAttentionTriton against naive attention with the settings above."""
    def die(msg):  # a user error: one line naming the setting and its fix, exit code 2, no traceback
        print(f"flash_attn.py: error: {msg}", file=sys.stderr)
        sys.exit(2)
    names = [name.strip() for name in dtypes.split(',')]
    if device not in ('auto', 'cuda', 'cpu') or (device == 'cuda' and not torch.cuda.is_available()):
        die(f"--device={device!r}: use 'auto', 'cpu' or (with a CUDA GPU) 'cuda'")
    if any(name not in DTYPES for name in names):
        die(f"--dtypes={dtypes!r}: use a comma-separated list of {', '.join(DTYPES)}")
    if seq_len < 1:
        die(f"--seq_len={seq_len}: must be at least 1")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        die(f"--head_dim={head_dim}: use one of {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    dev = device if device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    paths = ('pytorch', 'triton') if dev == 'cuda' or _interpreting() else ('pytorch',)
    print(f"q, k, v of shape {(1, 2, seq_len, head_dim)} on {dev}, checking {' and '.join(paths)}" + (
        '' if len(paths) == 2 else ' (with TRITON_INTERPRET=1 the Triton kernels too, through the interpreter)'))
    worst = check(dev, [DTYPES[name] for name in names], (1, 2, seq_len, head_dim), paths)
    print(f"worst relative error: {worst:.2f}x the tolerance ({'ok' if worst < 1 else 'FAILED'})")
    if worst >= 1:
        sys.exit(1)


# -----------------------------------------------------------------------------
# Appendix: patches to Triton's interpreter so that the kernels also run on CPU (tests, TRITON_INTERPRET=1); last,
# as they teach nothing about attention. Compiled (GPU) kernels never see them.

def _patch_triton_interpreter():
    # NOTE a footgun of Triton 3.6's interpreter: it keeps scalars as 1-element numpy arrays, and its tensors'
    # __index__ (what range() calls for a loop bound) does int(array), which NumPy >= 2.4 refuses ("only
    # 0-dimensional arrays can be converted to Python scalars"). We re-set __index__ after it patches tensors.
    import numpy as np
    from triton.runtime import interpreter
    patch_tensor = interpreter._patch_lang_tensor
    if getattr(patch_tensor, 'lmscratch', False):
        return

    def patch_tensor_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, '__index__', lambda self: self.handle.data.reshape(()).item())
    patch_tensor_index.lmscratch = True  # patched once
    interpreter._patch_lang_tensor = patch_tensor_index

    # Second gap: its tl.dot multiplies bfloat16 operands as their raw uint16 bits: widen them to float32 (exact)
    dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        a, b = (interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
                if x.dtype.scalar == tl.bfloat16 else x for x in (a, b))
        return dot(self, a, b, d, *args)
    interpreter.InterpreterBuilder.create_dot = create_dot

    # Third gap: no TMA reduce (descriptor.atomic_add). Emulate it as load + add + store of the in-bounds rows.
    def create_descriptor_reduce(self, kind, desc, value, indices):
        assert 'ADD' in str(kind), f"interpreter shim: only descriptor atomic_add is emulated, got {kind}"
        ptrs, mask = desc.materialize_pointers(indices)
        zero = interpreter.TensorHandle(np.zeros_like(value.data), value.dtype.scalar)
        old = self.create_masked_load(ptrs, mask, zero, None, None, False)
        self.create_masked_store(ptrs, interpreter.TensorHandle(old.data + value.data, value.dtype.scalar), mask,
                                 None, None)
    interpreter.InterpreterBuilder.create_descriptor_reduce = create_descriptor_reduce


# -----------------------------------------------------------------------------
if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

"""
flash_attn.py: FlashAttention-2 from scratch, in PyTorch and in Triton, forward and backward.

What this file teaches, top to bottom:
  1) naive_attention: softmax(Q K^T / sqrt(d)) V, the O(T^2)-memory reference everything is checked against.
  2) FlashAttentionPytorch: the FlashAttention-2 forward (Dao 2023, arXiv:2307.08691, Algorithm 1) written with
     plain PyTorch tiles: the online softmax keeps a running row max m and running sum l, rescales the output
     accumulator by exp(m_old - m_new) whenever the max grows, and ends with O /= l and L = m + log(l).
     Backward recomputes P from (Q, K, L) instead of storing it (Algorithm 2), written as a few matmuls and
     compiled with torch.compile on the GPU. Runs on CPU; slow but exact.
  3) FlashAttentionTriton: the same forward as a Triton kernel (one program per query tile, a loop over key
     tiles), and the backward as three Triton kernels (Delta = rowsum(dO * O); dK/dV with the key tile outer;
     dQ with the query tile outer), or for some head dims two (Delta; dK/dV and dQ together, dQ added up by TMA
     reduce-adds: BWD_MODES). Speed work (the tile configs were timed one by one on the H100, see
     results/flash_attn_tune*.md; the last two items were A/B-timed, results/flash_attn_candidates.md; the others
     are the standard FlashAttention-2 moves, not timed one at a time):
       - exp2 instead of exp, with log2(e) folded into the softmax scale, and the max taken over the raw scores so
         that the exp2 argument is ONE fused multiply-add per score (forward 1.45 -> 1.35 ms);
       - Hopper TMA copies (device-side tensor descriptors) for the streamed tiles: K, V in the forward and in the
         dQ kernel, Q, dO in the dK/dV kernel (forward -1.5%, backward -7%); block pointers where TMA cannot run;
       - causal tile skipping: a query tile never loads key tiles that lie wholly above the diagonal;
       - the loop is split in two: off-diagonal tiles run with no mask at all, only the diagonal (and the
         ragged tail when T is not a multiple of the tile) pays for the mask;
       - heaviest programs first (the last query tile sees the most keys under causal masking);
       - tile sizes / warps / pipeline stages per head dim and dtype, chosen by `--tune` on the H100 and frozen
         in the tables below (so a 240-point sweep does not re-autotune at every shape).
       - the backward per (dtype, head dim, length): two passes (dK/dV, then dQ; no atomics) or FA3's key-outer
         backward whose dQ tiles go out as TMA reduce-adds ('atomic_tma': bf16 d=16, fp32 d>=32, and bf16 d=64 from
         T=16384, 4-33% faster there; see BWD_MODES).
     Candidates timed on the H100 and left off (results/flash_attn_candidates.md; see BWD_MODE): the backward in
     one launch ('fused', the Triton tutorial's: 4.27 vs 4.30 ms), FA2's atomic-dQ backward ('atomic': 4.37 ms at
     best, 22 ms with 4 warps), a software-pipelined forward loop (the next tile's QK^T issued before this tile's
     softmax: 1.66 vs 1.32 ms), and Triton 3.6's automatic warp specialization (no gain on the forward; its
     compiler pass fails on the backward loops), so not in the code.
     Also slower: 256-row and 16-warp tiles (round 4). Measured (results/flash_attn_bench.md, H100): 5.24 ms
     fwd+bwd at the course leaderboard setting (best student 5.36 ms), faster than SDPA's FlashAttention-2 backend
     (6.89 ms) and FlexAttention (6.12 ms), slower than cuDNN (4.38 ms).
  4) flash_attention(q, k, v, is_causal=True): the entry point model.py uses, for (B, H, T, D) tensors in any
     layout whose last dim is contiguous, e.g. the (B, T, H, D) -> (B, H, T, D) transpose view: no copies.
  5) A benchmark (`--bench`): the course leaderboard setting against SDPA (cuDNN, FlashAttention-2 backend,
     math), FlexAttention and naive attention side by side, and the course sweep (seq 128..65536, d 16..128,
     bf16/fp32, fwd/bwd/fwd+bwd, TFLOP/s) with a plot.

Run:
  python flash_attn.py                      # check the Triton kernels against naive attention on this device
  python flash_attn.py --bench              # leaderboard -> results/flash_attn_bench.md; full sweep -> _sweep.md/.png
  python flash_attn.py --bench --sweep=small   # reduced sweep (d 64/128, seq 1k/16k; under a minute)
  python flash_attn.py --tune               # time candidate tile configs per head dim -> results/flash_attn_tune.md
  TRITON_INTERPRET=1 python flash_attn.py   # the Triton kernels on CPU through Triton's interpreter (slow)

Shapes: the autograd Functions take (batch, seq, d) like the course, or (batch, heads, seq, d).
Limits (each a clear error): q, k, v of one shape and dtype (fp16/bf16/fp32) on one device, head dim in
{16, 32, 64, 128}, last dim contiguous. Any sequence length (ragged tiles are masked). fp32 inputs use TF32
tensor-core products in the Triton path (about 3e-4 relative error), as SDPA does for fp32 on GPU.
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# -----------------------------------------------------------------------------
# benchmark / command-line settings (the library functions below ignore these)
bench = False  # run the benchmark: leaderboard setting + course sweep (results/flash_attn_bench.md, _sweep.md, .png)
leaderboard = True  # with --bench: time the course leaderboard setting -> results/flash_attn_bench.md
sweep = 'full'  # course sweep: 'full' (seq 128..65536, d 16..128, bf16+fp32) | 'small' (seq 1k,16k; d 64,128) | 'none'
tune = False  # time candidate tile configs per head dim and dtype, write results/flash_attn_tune.md
tune_budget_s = 120.0  # wall-clock budget of --tune, seconds
tune_cases = 'all'  # 'all': every head dim and dtype | 'leaderboard': only bf16 d=64 at the leaderboard shape
leaderboard_rep = 10000  # do_bench rep (ms) for the leaderboard setting (the course uses 10000)
leaderboard_warmup = 1000  # do_bench warmup (ms) for the leaderboard setting (the course uses 1000)
sweep_rep = 30  # do_bench rep (ms) per sweep point (keeps the 720-point sweep to a few minutes)
out_dir = 'results'  # where the tables and plots go
seed = 1337  # random inputs
# -----------------------------------------------------------------------------
if __name__ == '__main__':
    # `--bench` / `--tune` alone are shorthand for `--bench=True` (configurator.py wants key=value)
    sys.argv = [a + '=True' if a in ('--bench', '--tune') else a for a in sys.argv]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) * ln(2)
MASK_VALUE = -1.0e6  # added to masked scores; finite (not -inf) so that no row ever computes -inf - -inf = NaN
# the same numbers as compile-time constants for the kernels (a @triton.jit function may only read constexpr globals)
_LOG2E, _LN2, _MASK_VALUE = tl.constexpr(LOG2E), tl.constexpr(LN2), tl.constexpr(MASK_VALUE)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)  # tl.arange needs a power of two, tl.dot needs >= 16


def _interpreting():
    # Triton's interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors with numpy; read at call time so that
    # tests/conftest.py can switch it on before the first launch.
    if os.environ.get('TRITON_INTERPRET', '0') != '1':
        return False
    _patch_triton_interpreter()
    return True


def _patch_triton_interpreter():
    # NOTE a footgun of Triton 3.6's interpreter: it keeps scalars (program ids, int arguments) as 1-element numpy
    # arrays and turns them into loop bounds with int(array), which NumPy >= 2.4 refuses ("only 0-dimensional
    # arrays can be converted to Python scalars"), so no kernel with a runtime loop bound runs. We shadow `int`
    # inside that one module with a version that unwraps 1-element arrays. Compiled (GPU) kernels are unaffected.
    import builtins
    import numpy as np
    from triton.runtime import interpreter
    if 'int' in vars(interpreter):
        return

    class _IntMeta(type):  # the module also uses `isinstance(x, int)`: keep that meaning
        def __instancecheck__(cls, obj):
            return isinstance(obj, builtins.int)

    class _int(metaclass=_IntMeta):
        def __new__(cls, x=0, *args):
            if isinstance(x, np.ndarray) and x.size == 1 and not args:
                x = x.reshape(()).item()
            return builtins.int(x, *args)
    interpreter.int = _int

    # Second gap: its tl.dot multiplies bfloat16 operands as their raw uint16 bits. Widen them to float32 first
    # (exact: a bf16 is the top half of a float32), which is what the tensor cores compute with fp32 accumulation.
    dot = interpreter.InterpreterBuilder.create_dot

    def _widen(x):
        if x.dtype.scalar == tl.bfloat16:
            return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return x

    def create_dot(self, a, b, d, *args):
        return dot(self, _widen(a), _widen(b), d, *args)
    interpreter.InterpreterBuilder.create_dot = create_dot

    # Third gap: no TMA reduce (descriptor.atomic_add). Emulate it as load + add + store of the in-bounds rows.
    def create_descriptor_reduce(self, kind, desc, value, indices):
        assert 'ADD' in str(kind), f"interpreter shim: only descriptor atomic_add is emulated, got {kind}"
        ptrs, mask = desc.materialize_pointers(indices)
        zero = interpreter.TensorHandle(np.zeros_like(value.data), value.dtype.scalar)
        old = self.create_masked_load(ptrs, mask, zero, None, None, False)
        self.create_masked_store(ptrs, interpreter.TensorHandle(old.data + value.data, value.dtype.scalar), mask,
                                 None, None)
    if not hasattr(interpreter.InterpreterBuilder, 'create_descriptor_reduce'):
        interpreter.InterpreterBuilder.create_descriptor_reduce = create_descriptor_reduce


_interpreting()  # apply the interpreter shims at import when TRITON_INTERPRET=1 is already set


# -----------------------------------------------------------------------------
# 1) The reference: naive attention, O(T^2) memory

def naive_attention(q, k, v, is_causal=False):
    """softmax(q k^T / sqrt(d) + mask) v for (..., T, d) inputs; materializes the (T, T) score matrix."""
    T, d = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (..., T, T)
    if is_causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # True above the diagonal
        s = s.masked_fill(mask, float('-inf'))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v  # (..., T, d)


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
    Works on (..., T, d); torch.compile fuses the elementwise parts (see _attn_bwd_compiled).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 math for bf16/fp16, fp64 stays fp64 (gradcheck)
    q, k, v, o, do = (x.to(dtype) for x in (q, k, v, o, do))
    scale = 1.0 / math.sqrt(q.shape[-1])
    D = (o * do).sum(-1, keepdim=True)  # (..., T, 1)
    s = (q @ k.transpose(-2, -1)) * scale  # (..., T, T)
    if is_causal:
        T = q.shape[-2]
        idx = torch.arange(T, device=q.device)
        s = s + torch.where(idx[None, :] > idx[:, None], MASK_VALUE, 0.0).to(dtype)  # -1e6 above the diagonal
    p = torch.exp(s - L.to(dtype).unsqueeze(-1))  # (..., T, T), rows sum to 1
    dv = p.transpose(-2, -1) @ do  # (..., T, d)
    dp = do @ v.transpose(-2, -1)  # (..., T, T)
    ds = p * (dp - D)  # (..., T, T)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-2, -1) @ q) * scale
    return dq, dk, dv


_attn_bwd_compiled_fn = None


def _attn_bwd_compiled(*args):
    # Compiled lazily on the first GPU backward. On CPU we run it eagerly: inductor's C++ build costs far more
    # than it saves on the tiny shapes the CPU tests use.
    global _attn_bwd_compiled_fn
    if not args[0].is_cuda:
        return _attn_bwd_recompute(*args)
    if _attn_bwd_compiled_fn is None:
        _attn_bwd_compiled_fn = torch.compile(_attn_bwd_recompute)
    return _attn_bwd_compiled_fn(*args)


class FlashAttentionPytorch(torch.autograd.Function):
    """
    FlashAttention-2 forward with PyTorch tiles: q, k, v of shape (batch, seq, d) (any leading dims work).
    Saves exactly L (batch, n_queries), q, k, v, O for the backward.
    Usage: o = FlashAttentionPytorch.apply(q, k, v, is_causal)
    """
    tile_q = 32  # query tile (B_q in the paper); at least 16 per the course
    tile_k = 32  # key tile (B_k)

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        assert q.shape == k.shape == v.shape, f"q, k, v must have one shape, got {q.shape}, {k.shape}, {v.shape}"
        T, d = q.shape[-2], q.shape[-1]
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
            hi = min(i + bq, T) if is_causal else T
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
        dq, dk, dv = _attn_bwd_compiled(q, k, v, o, L, do, ctx.is_causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


# -----------------------------------------------------------------------------
# 3) Triton kernels
#
# Layout: every kernel sees a tensor as (batch, heads, T, d) through four strides, so (B, T, d) inputs
# (heads stride 0, H = 1) and any (B, H, T, d) view with a contiguous last dim work without a copy.
# Scores are kept in base 2: s2 = (q . k) * sm_scale * log2(e), so that exp(s - m) = exp2(s2 - m2).
# L (the logsumexp) is stored in natural log, like the PyTorch version, shape (B, H, T) float32.

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, offs_m, lo, hi, T, qk_scale,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, USE_TMA: tl.constexpr = False):
    # Online softmax over key tiles [lo, hi). MASKED tiles (diagonal, ragged tail) check bounds and the
    # causal mask; the others are known to be fully visible and in bounds, so they skip all of it.
    # USE_TMA: K_ptr, V_ptr are (T, D) tensor descriptors (Hopper TMA copies, rows past T read as zeros).
    if not USE_TMA:
        K_ptr = tl.advance(K_ptr, (0, lo))
        V_ptr = tl.advance(V_ptr, (lo, 0))
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        if USE_TMA:
            k = tl.trans(K_ptr.load([start_n, 0]))  # (D, BLOCK_N)
            v = V_ptr.load([start_n, 0])  # (BLOCK_N, D)
        elif MASKED:
            k = tl.load(K_ptr, boundary_check=(1,), padding_option='zero')  # (D, BLOCK_N): K^T tile
            v = tl.load(V_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_N, D)
        else:
            k = tl.load(K_ptr)
            v = tl.load(V_ptr)
        s = tl.dot(q, k)  # (BLOCK_M, BLOCK_N) fp32 scores, unscaled
        if MASKED:
            cols = start_n + offs_n
            keep = cols[None, :] < T  # keys past the end
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])  # keys after the query
            s = s * qk_scale + tl.where(keep, 0.0, _MASK_VALUE)  # masked scores: add -1e6
            m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,) running max, base 2
            p = tl.math.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        else:
            # the max of the raw scores, scaled once per row (qk_scale > 0 keeps the argmax), then ONE fused
            # multiply-add per score, s * scale - m, as the exp2 argument (measured: forward 1.45 -> 1.35 ms)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # (BLOCK_M,) running max, base 2
            p = tl.math.exp2(s * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)  # rescale factor of the old accumulator
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)  # P cast to V's dtype before P.V (bf16 tensor cores)
        m_i = m_new
        if not USE_TMA:
            K_ptr = tl.advance(K_ptr, (0, BLOCK_N))
            V_ptr = tl.advance(V_ptr, (BLOCK_N, 0))
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, L,
              sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
              H, T, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              USE_TMA: tl.constexpr = False):
    # grid: (number of query tiles, batch * heads); one program = one query tile of one head.
    # Under causal masking the last query tile sees the most keys: run the programs in reverse order so the
    # heaviest start first and the light ones fill the tail (longest-processing-time-first scheduling).
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    # NOTE torch.compile's inductor passes Python floats as fp64: cast, or the scores silently become fp64
    qk_scale = tl.cast(qk_scale, tl.float32)
    q_start = pid_m * BLOCK_M
    Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    # K is read transposed, (D, T), so that q @ k needs no transpose in registers
    K_ptr = tl.make_block_ptr(K + off_b * skb + off_h * skh, shape=(HEAD_DIM, T), strides=(skd, skt),
                              offsets=(0, 0), block_shape=(HEAD_DIM, BLOCK_N), order=(0, 1))
    V_ptr = tl.make_block_ptr(V + off_b * svb + off_h * svh, shape=(T, HEAD_DIM), strides=(svt, svd),
                              offsets=(0, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    offs_m = q_start + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D), stays in registers
    if USE_TMA:  # FWD_TMA candidate: K, V tiles by TMA copies (descriptors built on the device, per head)
        K_ptr = tl.make_tensor_descriptor(K + off_b * skb + off_h * skh, shape=[T, HEAD_DIM], strides=[skt, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        V_ptr = tl.make_tensor_descriptor(V + off_b * svb + off_h * svh, shape=[T, HEAD_DIM], strides=[svt, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
    # key range: [0, lo_mask) needs no mask; [lo_mask, hi) does (the diagonal, or the ragged tail)
    if CAUSAL:
        lo_mask = (q_start // BLOCK_N) * BLOCK_N
        hi = tl.minimum(q_start + BLOCK_M, T)  # causal tile skipping: nothing past the last query
    else:
        lo_mask = (T // BLOCK_N) * BLOCK_N
        hi = T
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, offs_m, 0, lo_mask, T, qk_scale,
                               BLOCK_N, False, CAUSAL, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, offs_m, lo_mask, hi, T, qk_scale,
                               BLOCK_N, True, CAUSAL, USE_TMA)
    acc = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) * _LN2  # L = m + log(l), back from base 2 to natural log
    tl.store(L + pid_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)
    O_ptr = tl.make_block_ptr(O + off_b * sob + off_h * soh, shape=(T, HEAD_DIM), strides=(sot, sod),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    tl.store(O_ptr, acc.to(O.dtype.element_ty), boundary_check=(0,))  # O cast to the output dtype


@triton.jit
def _attn_bwd_preprocess(O, DO, Delta, sob, soh, sot, sod, sdb, sdh, sdt, sdd, H, T,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # Delta = rowsum(O * dO), (B, H, T) float32: the "D" of the backward. One cheap pass, so that the dK/dV
    # kernel does not recompute it for every (key tile, query tile) pair.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < T
    o = tl.load(O + off_b * sob + off_h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod, mask=rows, other=0.0)
    do = tl.load(DO + off_b * sdb + off_h * sdh + offs_m[:, None] * sdt + offs_d[None, :] * sdd, mask=rows, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(Delta + pid_bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, offs_n, lo, hi, T, qk_scale, DQacc,
                    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    HEAD_DIM: tl.constexpr, ATOMIC_DQ: tl.constexpr, USE_TMA: tl.constexpr = False):
    # Accumulate dK, dV of one key tile over query tiles [lo, hi). Everything is computed transposed,
    # (keys, queries), so that dV = P^T dO and dK = dS^T Q are plain products with no register transposes.
    if not USE_TMA:
        Q_ptr = tl.advance(Q_ptr, (lo, 0))
        DO_ptr = tl.advance(DO_ptr, (lo, 0))
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        if USE_TMA:  # Q, dO tiles by TMA copies; rows past T read as zeros
            q = Q_ptr.load([start_m, 0])  # (BLOCK_M, D)
            do = DO_ptr.load([start_m, 0])  # (BLOCK_M, D)
        elif MASKED:
            q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
            do = tl.load(DO_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_M, D)
        else:
            q = tl.load(Q_ptr)
            do = tl.load(DO_ptr)
        if MASKED:
            lse = tl.load(L + offs_m, mask=offs_m < T, other=0.0)  # (BLOCK_M,)
            delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)
        else:
            lse = tl.load(L + offs_m)
            delta = tl.load(Delta + offs_m)
        sT = tl.dot(k, tl.trans(q))  # (BLOCK_N, BLOCK_M) = (K Q^T), unscaled
        if ATOMIC_DQ == 2:
            # atomic_tma: dP^T issued right after S^T, before the exp2 (it does not need P). Measured at the
            # leaderboard shape: backward 4.17 -> 3.86 ms on the H100. The same move in the two-pass kernels: 4.08 ->
            # 5.06 ms (results/flash_attn_candidates.md): instruction order is a tuning knob here, not a rule.
            dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        pT = tl.math.exp2(sT * qk_scale - (lse * _LOG2E)[None, :])  # P^T recomputed from L, base 2
        if MASKED:
            keep = offs_m[None, :] < T
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv)  # dV += P^T dO
        if ATOMIC_DQ != 2:
            dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        dsT = pT * (dpT - delta[None, :])  # dS^T = P^T * (dP^T - D)
        dk = tl.dot(dsT.to(q.dtype), q, dk)  # dK += dS^T Q (scaled once at the end)
        if ATOMIC_DQ == 2:  # BWD_MODE 'atomic_tma': one TMA reduce-add of the whole tile (FA3's dQ accumulation)
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k)  # (BLOCK_M, D), unscaled
            DQacc.atomic_add([start_m, 0], dq)  # rows past T are dropped by the TMA unit
        elif ATOMIC_DQ == 1:  # BWD_MODE 'atomic' (FA2's backward): dQ_tile += dS K, added into an fp32 buffer in L2
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k)  # (BLOCK_M, D), unscaled
            dq_ptrs = DQacc + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
            if MASKED:
                tl.atomic_add(dq_ptrs, dq, mask=offs_m[:, None] < T, sem='relaxed')
            else:
                tl.atomic_add(dq_ptrs, dq, sem='relaxed')
        if not USE_TMA:
            Q_ptr = tl.advance(Q_ptr, (BLOCK_M, 0))
            DO_ptr = tl.advance(DO_ptr, (BLOCK_M, 0))
    return dk, dv


@triton.jit
def _dkdv_tile(Q, K, V, DO, L, Delta, DK, DV, DQacc, pid_n, pid_bh,
               sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
               sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd,
               H, T, qk_scale, sm_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               ATOMIC_DQ: tl.constexpr, USE_TMA: tl.constexpr = False):
    # dK, dV of key tile pid_n of head pid_bh (and, with ATOMIC_DQ, its share of dQ). K and V tiles stay in
    # registers while Q, dO stream past. Called by _attn_bwd_dkdv (two passes), _attn_bwd_fused, _attn_bwd_atomic.
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 under torch.compile (see _attn_fwd)
    sm_scale = tl.cast(sm_scale, tl.float32)
    k_start = pid_n * BLOCK_N
    K_ptr = tl.make_block_ptr(K + off_b * skb + off_h * skh, shape=(T, HEAD_DIM), strides=(skt, skd),
                              offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    V_ptr = tl.make_block_ptr(V + off_b * svb + off_h * svh, shape=(T, HEAD_DIM), strides=(svt, svd),
                              offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                              offsets=(0, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    DO_ptr = tl.make_block_ptr(DO + off_b * sdb + off_h * sdh, shape=(T, HEAD_DIM), strides=(sdt, sdd),
                               offsets=(0, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    L += pid_bh.to(tl.int64) * T
    Delta += pid_bh.to(tl.int64) * T
    DQacc += pid_bh.to(tl.int64) * T * HEAD_DIM  # (B*H, T, D) contiguous fp32; unused unless ATOMIC_DQ
    if ATOMIC_DQ == 2:
        DQacc = tl.make_tensor_descriptor(DQacc, shape=[T, HEAD_DIM], strides=[HEAD_DIM, 1],
                                          block_shape=[BLOCK_M, HEAD_DIM])
    if USE_TMA:
        Q_ptr = tl.make_tensor_descriptor(Q + off_b * sqb + off_h * sqh, shape=[T, HEAD_DIM], strides=[sqt, 1],
                                          block_shape=[BLOCK_M, HEAD_DIM])
        DO_ptr = tl.make_tensor_descriptor(DO + off_b * sdb + off_h * sdh, shape=[T, HEAD_DIM], strides=[sdt, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
    k = tl.load(K_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_N, D)
    v = tl.load(V_ptr, boundary_check=(0,), padding_option='zero')  # (BLOCK_N, D)
    offs_n = k_start + tl.arange(0, BLOCK_N)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # query range: [lo_diag, hi_diag) straddles the diagonal (masked); [hi_diag, hi_full) is fully visible;
    # [max(hi_diag, hi_full), T) is the ragged tail (masked). Query tiles wholly before the keys are skipped.
    if CAUSAL:
        lo_diag = (k_start // BLOCK_M) * BLOCK_M
        hi_diag = tl.minimum(tl.cdiv(k_start + BLOCK_N, BLOCK_M) * BLOCK_M, T)
    else:
        lo_diag = 0
        hi_diag = 0
    hi_full = (T // BLOCK_M) * BLOCK_M
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, offs_n, lo_diag, hi_diag, T, qk_scale, DQacc,
                             BLOCK_M, True, CAUSAL, HEAD_DIM, ATOMIC_DQ, USE_TMA)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, offs_n, hi_diag, hi_full, T, qk_scale, DQacc,
                             BLOCK_M, False, CAUSAL, HEAD_DIM, ATOMIC_DQ, USE_TMA)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_ptr, DO_ptr, L, Delta, offs_n, tl.maximum(hi_diag, hi_full), T, T,
                             qk_scale, DQacc, BLOCK_M, True, CAUSAL, HEAD_DIM, ATOMIC_DQ, USE_TMA)
    dk = dk * sm_scale  # dK = dS^T Q / sqrt(d)
    # dK, dV have strides of their own (empty_like of a strided view may pick another layout)
    DK_ptr = tl.make_block_ptr(DK + off_b * sgkb + off_h * sgkh, shape=(T, HEAD_DIM), strides=(sgkt, sgkd),
                               offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    DV_ptr = tl.make_block_ptr(DV + off_b * sgvb + off_h * sgvh, shape=(T, HEAD_DIM), strides=(sgvt, sgvd),
                               offsets=(k_start, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    tl.store(DK_ptr, dk.to(DK.dtype.element_ty), boundary_check=(0,))
    tl.store(DV_ptr, dv.to(DV.dtype.element_ty), boundary_check=(0,))


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, L, Delta, DK, DV,
                   sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                   sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd,
                   H, T, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   USE_TMA: tl.constexpr = False):
    # grid: (number of key tiles, batch * heads).
    # Under causal masking the first key tile is seen by the most queries, so natural order is heaviest first.
    _dkdv_tile(Q, K, V, DO, L, Delta, DK, DV, L, tl.program_id(0), tl.program_id(1),
               sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
               sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd, H, T, qk_scale, sm_scale,
               HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, 0, USE_TMA)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, offs_m, lo, hi, T, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, USE_TMA: tl.constexpr = False):
    # Accumulate dQ of one query tile over key tiles [lo, hi); K and V are read transposed, (D, BLOCK_N).
    if not USE_TMA:
        K_ptr = tl.advance(K_ptr, (0, lo))
        V_ptr = tl.advance(V_ptr, (0, lo))
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        if USE_TMA:  # (T, D) descriptors: copy (BLOCK_N, D) tiles, transpose in shared memory / registers
            kT = tl.trans(K_ptr.load([start_n, 0]))
            vT = tl.trans(V_ptr.load([start_n, 0]))
        elif MASKED:
            kT = tl.load(K_ptr, boundary_check=(1,), padding_option='zero')  # (D, BLOCK_N)
            vT = tl.load(V_ptr, boundary_check=(1,), padding_option='zero')
        else:
            kT = tl.load(K_ptr)
            vT = tl.load(V_ptr)
        s = tl.dot(q, kT)  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        if MASKED:
            cols = start_n + offs_n0
            keep = cols[None, :] < T
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT)  # (BLOCK_M, BLOCK_N) = dO V^T
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq)  # dQ += dS K (scaled once at the end)
        if not USE_TMA:
            K_ptr = tl.advance(K_ptr, (0, BLOCK_N))
            V_ptr = tl.advance(V_ptr, (0, BLOCK_N))
    return dq


@triton.jit
def _dq_tile(Q, K, V, DO, L, Delta, DQ, pid_m, pid_bh,
             sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
             sgqb, sgqh, sgqt, sgqd,
             H, T, qk_scale, sm_scale,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             USE_TMA: tl.constexpr = False):
    # dQ of query tile pid_m of head pid_bh; called by _attn_bwd_dq (two passes) and _attn_bwd_fused.
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 under torch.compile (see _attn_fwd)
    sm_scale = tl.cast(sm_scale, tl.float32)
    q_start = pid_m * BLOCK_M
    Q_ptr = tl.make_block_ptr(Q + off_b * sqb + off_h * sqh, shape=(T, HEAD_DIM), strides=(sqt, sqd),
                              offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    DO_ptr = tl.make_block_ptr(DO + off_b * sdb + off_h * sdh, shape=(T, HEAD_DIM), strides=(sdt, sdd),
                               offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    K_ptr = tl.make_block_ptr(K + off_b * skb + off_h * skh, shape=(HEAD_DIM, T), strides=(skd, skt),
                              offsets=(0, 0), block_shape=(HEAD_DIM, BLOCK_N), order=(0, 1))
    V_ptr = tl.make_block_ptr(V + off_b * svb + off_h * svh, shape=(HEAD_DIM, T), strides=(svd, svt),
                              offsets=(0, 0), block_shape=(HEAD_DIM, BLOCK_N), order=(0, 1))
    if USE_TMA:
        K_ptr = tl.make_tensor_descriptor(K + off_b * skb + off_h * skh, shape=[T, HEAD_DIM], strides=[skt, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        V_ptr = tl.make_tensor_descriptor(V + off_b * svb + off_h * svh, shape=[T, HEAD_DIM], strides=[svt, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
    offs_m = q_start + tl.arange(0, BLOCK_M)
    q = tl.load(Q_ptr, boundary_check=(0,), padding_option='zero')
    do = tl.load(DO_ptr, boundary_check=(0,), padding_option='zero')
    lse2 = tl.load(L + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0) * _LOG2E  # base 2
    delta = tl.load(Delta + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        lo_mask = (q_start // BLOCK_N) * BLOCK_N
        hi = tl.minimum(q_start + BLOCK_M, T)
    else:
        lo_mask = (T // BLOCK_N) * BLOCK_N
        hi = T
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, offs_m, 0, lo_mask, T, qk_scale, BLOCK_N, False, CAUSAL,
                       USE_TMA)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, offs_m, lo_mask, hi, T, qk_scale, BLOCK_N, True, CAUSAL,
                       USE_TMA)
    dq = dq * sm_scale  # dQ = dS K / sqrt(d)
    DQ_ptr = tl.make_block_ptr(DQ + off_b * sgqb + off_h * sgqh, shape=(T, HEAD_DIM), strides=(sgqt, sgqd),
                               offsets=(q_start, 0), block_shape=(BLOCK_M, HEAD_DIM), order=(1, 0))
    tl.store(DQ_ptr, dq.to(DQ.dtype.element_ty), boundary_check=(0,))


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, L, Delta, DQ,
                 sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                 sgqb, sgqh, sgqt, sgqd,
                 H, T, qk_scale, sm_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 USE_TMA: tl.constexpr = False):
    # grid: (number of query tiles, batch * heads), reversed like the forward (heaviest first under causal).
    _dq_tile(Q, K, V, DO, L, Delta, DQ, tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1),
             sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
             sgqb, sgqh, sgqt, sgqd, H, T, qk_scale, sm_scale,
             HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, USE_TMA)


# Backward candidates beside the two-pass default (BWD_MODE below picks one; `.gpu`-style A/B runs time them):
#
# 'fused': ONE launch instead of two (the Triton fused-attention tutorial's `_attn_bwd`, python/tutorials/
#   06-fused-attention.py): program j first computes dK/dV of key tile j (queries streamed), then dQ of query
#   tile j (keys streamed). Under causal masking key tile j sees T - j*BLOCK queries and query tile j sees
#   j*BLOCK keys, so every program does the same total work: no heavy-first ordering needed, no tail of the dK/dV
#   kernel waiting for the dQ kernel, one launch gap fewer. Needs BLOCK_N1 (keys of phase 1) == BLOCK_M2 (queries
#   of phase 2) so that one grid covers both; each phase keeps its own streamed tile (BLOCK_M1, BLOCK_N2).
#   Costs: one num_warps/num_stages for both phases, and the register file sized for the larger one.
#
# 'atomic': FlashAttention-2's own backward (Dao 2023, Algorithm 2; FA3 does the same with TMA reduce-adds): key
#   tiles outer, and each (key tile, query tile) pair adds its dS K into an fp32 dQ buffer with atomics, so the
#   backward does 5 matmuls per pair instead of the two-pass 7 (no recomputed S = QK^T and dP = dO V^T in a dQ
#   pass). Costs: (T^2/2 / BLOCK_N) * d fp32 atomic adds per head (about 4 GB of L2 reduction traffic at the
#   leaderboard shape with BLOCK_N=128), a zeroed fp32 buffer and a final scale-and-cast. 'relaxed' atomics: the
#   adds only need to be atomic, not ordered (the default acq_rel adds a fence per add).
#
# 'atomic_tma': the same, with FlashAttention-3's dQ accumulation (Shah et al. 2024): each (BLOCK_M, d) partial dQ
#   tile goes out as ONE bulk TMA reduce-add (desc.atomic_add, cp.reduce.async.bulk: the copy engine does the adds
#   in L2 while the warps move on) instead of BLOCK_M*d element atomics issued by the threads.

@triton.jit
def _attn_bwd_fused(Q, K, V, DO, L, Delta, DQ, DK, DV,
                    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                    sgqb, sgqh, sgqt, sgqd, sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd,
                    H, T, qk_scale, sm_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
                    BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr, CAUSAL: tl.constexpr):
    # grid: (cdiv(T, BLOCK_N1) == cdiv(T, BLOCK_M2), batch * heads). Phase 1 then phase 2, same program.
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    _dkdv_tile(Q, K, V, DO, L, Delta, DK, DV, L, pid, pid_bh,
               sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
               sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd, H, T, qk_scale, sm_scale,
               HEAD_DIM, BLOCK_M1, BLOCK_N1, CAUSAL, 0)
    _dq_tile(Q, K, V, DO, L, Delta, DQ, pid, pid_bh,
             sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
             sgqb, sgqh, sgqt, sgqd, H, T, qk_scale, sm_scale,
             HEAD_DIM, BLOCK_M2, BLOCK_N2, CAUSAL)


@triton.jit
def _attn_bwd_atomic(Q, K, V, DO, L, Delta, DK, DV, DQacc,
                     sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
                     sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd,
                     H, T, qk_scale, sm_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr = 1):
    # grid: (number of key tiles, batch * heads), heaviest first as in _attn_bwd_dkdv; dQ goes to DQacc (fp32,
    # (B*H, T, D), zeroed, unscaled) by atomic adds. Q and dO stream through block pointers: TMA loads measured
    # slower here (4.46 vs 4.17 ms, results/flash_attn_candidates.md).
    _dkdv_tile(Q, K, V, DO, L, Delta, DK, DV, DQacc, tl.program_id(0), tl.program_id(1),
               sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
               sgkb, sgkh, sgkt, sgkd, sgvb, sgvh, sgvt, sgvd, H, T, qk_scale, sm_scale,
               HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, ATOMIC_DQ)


# -----------------------------------------------------------------------------
# Tile configurations: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, keyed by (dtype kind, head dim).
# Chosen by `python flash_attn.py --tune` on the H100 (results/flash_attn_tune.md); frozen here so that a new
# shape does not trigger an autotuning pass (a 240-point sweep would spend minutes compiling candidates).
# 'fwd': BLOCK_M query rows x BLOCK_N keys. 'dkdv': BLOCK_M queries streamed past BLOCK_N resident keys.
# 'dq': BLOCK_M resident queries x BLOCK_N keys streamed. fp32 tiles are smaller: twice the bytes in shared memory.
# 'atomic_tma' (like 'dkdv'): where BWD_MODES picks that backward; timed on an H200 (d=64: on the H100; see BWD_MODES).
CONFIGS = {
    ('16bit', 16): {'fwd': (128, 64, 4, 3), 'dkdv': (32, 128, 4, 3), 'dq': (128, 32, 4, 3),
                    'atomic_tma': (64, 64, 4, 3)},
    ('16bit', 32): {'fwd': (128, 64, 8, 3), 'dkdv': (32, 128, 4, 3), 'dq': (128, 64, 8, 3)},
    ('16bit', 64): {'fwd': (128, 64, 8, 5), 'dkdv': (64, 128, 4, 3), 'dq': (128, 64, 4, 3),
                    'atomic_tma': (64, 128, 8, 4)},
    ('16bit', 128): {'fwd': (128, 128, 8, 3), 'dkdv': (64, 128, 8, 2), 'dq': (128, 64, 8, 3)},
    ('32bit', 16): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (64, 32, 4, 3)},
    ('32bit', 32): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (64, 32, 4, 3),
                    'atomic_tma': (32, 64, 4, 3)},
    ('32bit', 64): {'fwd': (64, 64, 4, 3), 'dkdv': (32, 64, 4, 3), 'dq': (128, 32, 8, 2),
                    'atomic_tma': (32, 64, 4, 2)},
    ('32bit', 128): {'fwd': (64, 32, 4, 3), 'dkdv': (32, 64, 4, 2), 'dq': (64, 32, 4, 2),
                     'atomic_tma': (32, 64, 4, 2)},
}
# Under the interpreter: small tiles (tests use short sequences), with BLOCK_M != BLOCK_N so that the
# diagonal / off-diagonal split and the ragged tail are all exercised.
INTERPRET_CONFIG = {'fwd': (32, 16, 4, 1), 'dkdv': (16, 32, 4, 1), 'dq': (32, 16, 4, 1),
                    'fused': (16, 32, 32, 16, 4, 1), 'atomic': (16, 32, 4, 1), 'atomic_tma': (16, 32, 4, 1)}
# Backward variant: 'two_pass' (dK/dV kernel, then dQ kernel), 'fused' (both in one launch), 'atomic' (FA2's atomic
# dQ) or 'atomic_tma' (FA3's TMA reduce-add dQ, with dP issued before the exp2); see the comments above
# _attn_bwd_fused. Which one wins depends on the head dim, the dtype and even the shape, so it is chosen per
# (dtype kind, head dim) by measurement (results/flash_attn_candidates.md, round 3, backward alone, atomic_tma vs
# two_pass): bf16 d=16 0.67x; fp32 d=32 / 64 / 128 0.95x / 0.85x / 0.88x (H200). Left on two_pass: bf16 d=32 (0.82x
# at 16 x 4096 but 1.01-1.07x at the A1 training shape 2048 x 256), bf16 d=128 (1.00x), fp32 d=16 (1.07x).
# bf16 d=64 switches by length (H100, round 4): atomic_tma / two_pass = 1.15x, 1.10x, 1.07x, 1.04x, 0.96x at
# T = 1024 (GPT-2 small's training shape), 2048, 4096, 8192, 16384 (the leaderboard shape): atomic_tma from T = 16384.
BWD_MODE = None  # force one mode everywhere (tests, A/B runs); None: BWD_MODES below
# (dtype kind, head dim) -> (mode, from T): that mode for sequences of at least T tokens; 'two_pass' below that
# and for the keys not listed
BWD_MODES = {('16bit', 16): ('atomic_tma', 0), ('16bit', 64): ('atomic_tma', 16384), ('32bit', 32): ('atomic_tma', 0),
             ('32bit', 64): ('atomic_tma', 0), ('32bit', 128): ('atomic_tma', 0)}
# 'fused': (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, num_warps, num_stages), BLOCK_N1 == BLOCK_M2
# 'atomic', 'atomic_tma': (BLOCK_M, BLOCK_N, num_warps, num_stages) like 'dkdv'; used where CONFIGS has none
BWD_CANDIDATE_CONFIGS = {
    '16bit': {'fused': (64, 128, 128, 64, 4, 3), 'atomic': (64, 128, 8, 3), 'atomic_tma': (64, 128, 8, 3)},
    '32bit': {'fused': (32, 64, 64, 32, 4, 2), 'atomic': (32, 64, 4, 2), 'atomic_tma': (32, 64, 4, 2)},
}


def _key(q):
    return ('32bit' if q.dtype == torch.float32 else '16bit', q.shape[-1])


def _config(kind, q):
    if _interpreting():
        return INTERPRET_CONFIG[kind]
    key = _key(q)
    if kind in CONFIGS[key]:  # per head dim: the two-pass kernels, and atomic_tma where BWD_MODES picks it
        return CONFIGS[key][kind]
    return BWD_CANDIDATE_CONFIGS[key[0]][kind]


def _strides(x):
    # (batch, heads, T, d) strides; a 3-D (batch, T, d) tensor is one head with a 0 head stride
    return (x.stride(0), 0, x.stride(1), x.stride(2)) if x.dim() == 3 else tuple(x.stride())


def _check_inputs(q, k, v):
    """Clear errors for what the Triton kernels cannot do, instead of a silent wrong result."""
    for name, x in (('q', q), ('k', k), ('v', v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"flash attention: {name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() not in (3, 4):
        raise ValueError(f"flash attention: expected (batch, seq, d) or (batch, heads, seq, d) inputs, "
                         f"got q of shape {tuple(q.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"flash attention: q, k, v must have the same shape (self-attention, equal heads; repeat "
                         f"k/v heads for GQA), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash attention: q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"flash attention: dtype {q.dtype} is not supported (use bfloat16, float16 or float32; "
                         f"FlashAttentionPytorch takes float64)")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash attention: head dim {q.shape[-1]} is not supported, use one of "
                         f"{SUPPORTED_HEAD_DIMS} (or pad the head dim with zeros, or use SDPA)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash attention: q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if not q.is_cuda and not _interpreting():
        raise ValueError(f"flash attention: the Triton kernels need CUDA tensors, got {q.device}. On CPU use "
                         f"FlashAttentionPytorch, or set TRITON_INTERPRET=1 before importing triton (slow)")
    for name, x in (('q', q), ('k', k), ('v', v)):
        if x.stride(-1) != 1:
            raise ValueError(f"flash attention: {name} must be contiguous in its last (head) dim, got strides "
                             f"{tuple(x.stride())}; call .contiguous() first")


# Hopper TMA (tensor memory accelerator) copies for the streamed tiles, K and V in the forward and the dQ kernel, Q and
# dO in the dK/dV kernels: device-side tensor descriptors (tl.make_tensor_descriptor, as in the Triton tutorial
# 06-fused-attention's Hopper path) instead of block pointers, which Triton 3.x lowers to ordinary per-thread loads.
# The copy engine fetches whole tiles, zero-fills rows past T, and frees registers and issue slots for the math.
# Measured at the leaderboard shape (results/flash_attn_candidates.md): forward 1.35 -> 1.33 ms; backward ~4.33 ->
# 4.20 ms (dK/dV), -> 4.06 ms (and dQ, with the dK/dV tiles re-tuned for it). Timed at head dim 64 only: the other
# head dims take the same path untimed (results/flash_attn_sweep.md was measured before it).
# Used where it can run: sm90+ with a Triton that has device-side descriptors, and the interpreter (CPU tests);
# anywhere else (or misaligned tensors) the block-pointer kernels run, which the tests also cover.
FWD_TMA = True
BWD_TMA = True


def _use_tma(q, k, v):
    return FWD_TMA and _tma_ready(k, v)


def _tma_scratch(size, alignment, stream):
    return torch.empty(size, device='cuda', dtype=torch.int8)


def _tma_ready(*xs):
    """True where device-side TMA tensor descriptors can read/write these tensors (and Triton has an allocator).
    Written so that torch.compile traces it without a graph break (model.py calls the kernels inside a compiled
    model; a break there splits the graph at every layer: measured 55% slower training steps)."""
    if not hasattr(tl, 'make_tensor_descriptor'):
        return False
    # TMA wants 16-byte aligned addresses and row strides. torch's allocator aligns every storage start to >= 256
    # bytes, so only a view's storage offset can misalign a tensor; in eager mode such a view takes the block-pointer
    # path. Dynamo cannot trace storage_offset(), so inside a compiled graph only the row stride is checked: there,
    # call .contiguous() on views that start mid-row (e.g. x[..., 1:17]). model.py's q, k, v (whole projections seen
    # through a transpose) are always aligned.
    if any((x.stride(-2) * x.element_size()) % 16 for x in xs):
        return False
    if not torch.compiler.is_compiling() and any((x.storage_offset() * x.element_size()) % 16 for x in xs):
        return False
    if xs[0].is_cuda:
        if torch.cuda.get_device_properties(xs[0].device).major < 9:
            return False
    elif not _interpreting():
        return False
    # Device-side descriptors live in a global scratch buffer that Triton asks an allocator for at launch. Triton
    # keeps the allocator in a ContextVar, i.e. per thread, and autograd runs the backward in a thread of its own:
    # so set it on every call (cheap), not once. Under torch.compile, inductor's launcher sets its own.
    if not torch.compiler.is_compiling():
        triton.set_allocator(_tma_scratch)
    return True


def _flash_fwd(q, k, v, is_causal, cfg=None):
    """Launch the forward kernel. Returns o (like q) and L (q.shape[:-1], float32 natural-log logsumexp)."""
    BLOCK_M, BLOCK_N, num_warps, num_stages = cfg or _config('fwd', q)
    T, D = q.shape[-2], q.shape[-1]
    B, H = q.shape[0], (q.shape[1] if q.dim() == 4 else 1)
    o = torch.empty_like(q)  # keeps q's strides (e.g. a transposed view stays transposed)
    L = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # (B, [H,] T), contiguous
    grid = (triton.cdiv(T, BLOCK_M), B * H)
    _attn_fwd[grid](q, k, v, o, L, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, T, LOG2E / math.sqrt(D),
                    HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=is_causal, USE_TMA=_use_tma(q, k, v),
                    num_warps=num_warps, num_stages=num_stages)
    return o, L


def _flash_bwd(q, k, v, o, L, do, is_causal, cfgs=None, mode=None):
    """Launch the backward kernels (Delta preprocess, then the chosen mode's kernels). Returns dq, dk, dv.
    cfgs: {kind: config} overrides per kernel kind ('dkdv', 'dq', 'fused', 'atomic', 'atomic_tma'); mode overrides
    BWD_MODE, which overrides BWD_MODES' choice for this (dtype kind, head dim, T)."""
    mode = mode or BWD_MODE
    if mode is None:
        mode, from_T = BWD_MODES.get(_key(q), ('two_pass', 0))
        if q.shape[-2] < from_T or (mode == 'atomic_tma' and not _tma_ready(q)):
            mode = 'two_pass'  # shorter sequences, or no TMA reduce-add here (pre-Hopper GPU): the atomic-free one
    assert mode in ('two_pass', 'fused', 'atomic', 'atomic_tma'), f"unknown backward mode {mode!r}"
    kinds = ('dkdv', 'dq') if mode == 'two_pass' else (mode,)  # the CONFIGS / BWD_CANDIDATE_CONFIGS keys it uses
    cfgs = {kind: (cfgs or {}).get(kind) or _config(kind, q) for kind in kinds}
    if do.stride(-1) != 1:
        do = do.contiguous()  # e.g. out.sum().backward() hands us an expanded tensor with all strides 0
    T, D = q.shape[-2], q.shape[-1]
    B, H = q.shape[0], (q.shape[1] if q.dim() == 4 else 1)
    sm_scale = 1.0 / math.sqrt(D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(L)  # (B, [H,] T) float32
    PRE_BLOCK = 128 if not _interpreting() else 16
    _attn_bwd_preprocess[(triton.cdiv(T, PRE_BLOCK), B * H)](o, do, delta, *_strides(o), *_strides(do), H, T,
                                                            HEAD_DIM=D, BLOCK_M=PRE_BLOCK)
    # Two passes without atomics, or one key-outer pass that adds dQ atomically (FA2's choice)? The atomic version
    # does 5 matmuls per (key tile, query tile) pair instead of 7, but at the leaderboard shape pushes about 4 GB of
    # fp32 dQ partial sums through L2 (T^2/2 / (BLOCK_M*BLOCK_N) pairs x BLOCK_M*d*4 bytes, x 16 heads). Measured on
    # the H100 (results/flash_attn_candidates.md): pointer atomics 4.37 ms at best (22 ms with 4 warps), fused
    # one-launch 4.27 ms, two passes 4.30 ms; with TMA: two passes 4.08 ms, atomic_tma 4.17 ms, and 3.86 ms once dP
    # is issued before the exp2. Which wins depends on head dim, dtype and shape: hence BWD_MODES.
    if mode == 'fused':
        BM1, BN1, BM2, BN2, nw, ns = cfgs['fused']
        assert BN1 == BM2, f"fused backward needs BLOCK_N1 == BLOCK_M2 (one grid for both phases), got {BN1}, {BM2}"
        _attn_bwd_fused[(triton.cdiv(T, BN1), B * H)](q, k, v, do, L, delta, dq, dk, dv,
                                                       *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                                       *_strides(dq), *_strides(dk), *_strides(dv),
                                                       H, T, LOG2E * sm_scale, sm_scale, HEAD_DIM=D,
                                                       BLOCK_M1=BM1, BLOCK_N1=BN1, BLOCK_M2=BM2, BLOCK_N2=BN2,
                                                       CAUSAL=is_causal, num_warps=nw, num_stages=ns)
        return dq, dk, dv
    if mode in ('atomic', 'atomic_tma'):
        BM, BN, nw, ns = cfgs[mode]
        dq_acc = torch.zeros((B * H, T, D), dtype=torch.float32, device=q.device)  # atomic adds need zeros
        atomic = 2 if mode == 'atomic_tma' and _tma_ready(dq_acc) else 1
        _attn_bwd_atomic[(triton.cdiv(T, BN), B * H)](q, k, v, do, L, delta, dk, dv, dq_acc,
                                                       *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                                       *_strides(dk), *_strides(dv), H, T, LOG2E * sm_scale,
                                                       sm_scale, HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN,
                                                       CAUSAL=is_causal, ATOMIC_DQ=atomic, num_warps=nw,
                                                       num_stages=ns)
        dq.copy_((dq_acc * sm_scale).view(q.shape))  # dQ = dS K / sqrt(d), cast to q's dtype and strides
        return dq, dk, dv
    BM, BN, nw, ns = cfgs['dkdv']
    use_tma = BWD_TMA and _tma_ready(q, do)
    _attn_bwd_dkdv[(triton.cdiv(T, BN), B * H)](q, k, v, do, L, delta, dk, dv,
                                                 *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                                 *_strides(dk), *_strides(dv), H, T, LOG2E * sm_scale, sm_scale,
                                                 HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, CAUSAL=is_causal,
                                                 USE_TMA=use_tma, num_warps=nw, num_stages=ns)
    BM, BN, nw, ns = cfgs['dq']
    _attn_bwd_dq[(triton.cdiv(T, BM), B * H)](q, k, v, do, L, delta, dq,
                                               *_strides(q), *_strides(k), *_strides(v), *_strides(do),
                                               *_strides(dq), H, T, LOG2E * sm_scale, sm_scale,
                                               HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, CAUSAL=is_causal,
                                               USE_TMA=BWD_TMA and _tma_ready(k, v), num_warps=nw, num_stages=ns)
    return dq, dk, dv


class FlashAttentionTriton(torch.autograd.Function):
    """
    FlashAttention-2 with Triton kernels, forward and backward. q, k, v: (batch, seq, d) or (batch, heads, seq, d).
    Usage: o = FlashAttentionTriton.apply(q, k, v, is_causal)
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        _check_inputs(q, k, v)
        o, L = _flash_fwd(q, k, v, is_causal)
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o

    @staticmethod
    def backward(ctx, do):
        L, q, k, v, o = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(q, k, v, o, L, do, ctx.is_causal)
        return dq, dk, dv, None


class FlashAttentionTritonCompiledBwd(torch.autograd.Function):
    """The Triton forward with the compiled PyTorch recomputation backward (step 3a of the course, O(T^2) memory)."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        _check_inputs(q, k, v)
        o, L = _flash_fwd(q, k, v, is_causal)
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o

    @staticmethod
    def backward(ctx, do):
        L, q, k, v, o = ctx.saved_tensors
        dq, dk, dv = _attn_bwd_compiled(q, k, v, o, L, do, ctx.is_causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


# -----------------------------------------------------------------------------
# 4) The entry point for model.py

def flash_attention(q, k, v, is_causal=True):
    """
    Multi-head attention with the Triton FlashAttention-2 kernels: q, k, v of shape (B, H, T, D) -> o (B, H, T, D).
    Any strides with a contiguous last dim (model.py's q.view(B, T, H, D).transpose(1, 2)) are read in place.
    """
    if q.dim() != 4:
        raise ValueError(f"flash_attention: expected (B, H, T, D) inputs, got q of shape {tuple(q.shape)}; "
                         f"for (batch, seq, d) use FlashAttentionTriton.apply")
    return FlashAttentionTriton.apply(q, k, v, is_causal)


# -----------------------------------------------------------------------------
# 5) Benchmark and tuning (GPU)

def attn_flops(B, H, T, D, is_causal, mode):
    # forward: 2 matmuls of 2*T*T*D flops per head (S = QK^T, O = PV); backward: 5 (2.5x the forward: the
    # recomputed S plus dV, dP, dQ, dK), the FlashAttention-2 paper's convention. Causal halves everything.
    f = 4 * B * H * T * T * D * (0.5 if is_causal else 1.0)
    return f * {'fwd': 1.0, 'bwd': 2.5, 'fwd+bwd': 3.5}[mode]


def _time_pass(fn, q, k, v, mode, rep, warmup):
    """Median ms of the forward, the backward alone, or both, of fn(q, k, v) -> o."""
    from triton.testing import do_bench
    if mode == 'fwd':
        with torch.no_grad():
            return do_bench(lambda: fn(q, k, v), rep=rep, warmup=warmup, return_mode='median')
    if mode == 'bwd':
        o = fn(q, k, v)
        do = torch.randn_like(o)
        return do_bench(lambda: o.backward(do, retain_graph=True), rep=rep, warmup=warmup,
                        grad_to_none=[q, k, v], return_mode='median')

    def step():
        fn(q, k, v).sum().backward()
    return do_bench(step, rep=rep, warmup=warmup, grad_to_none=[q, k, v], return_mode='median')


def _fmt_ms(x):
    return 'OOM' if x == 'OOM' else ('error' if x is None else f"{x:.3f}")


def _write_atomic(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def check_triton(device, dtypes=(torch.bfloat16, torch.float32), shapes=((2, 3, 200, 64), (1, 2, 128, 128))):
    """Forward, L and gradients of FlashAttentionTriton vs naive attention in fp64; prints relative errors."""
    worst = 0.0
    for (B, H, T, D) in shapes:
        for dtype in dtypes:
            for causal in (False, True):
                q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                do = torch.randn(B, H, T, D, device=device, dtype=dtype)
                o = FlashAttentionTriton.apply(q, k, v, causal)
                o.backward(do)
                q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
                o64 = naive_attention(q64, k64, v64, causal)
                o64.backward(do.double())
                errs = [((a.double() - b).norm() / b.norm()).item()
                        for a, b in ((o, o64), (q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad))]
                worst = max(worst, max(errs))
                print(f"check {str(dtype):15s} B{B} H{H} T{T} D{D} causal={causal!s:5}: rel err o {errs[0]:.1e} "
                      f"dq {errs[1]:.1e} dk {errs[2]:.1e} dv {errs[3]:.1e}")
    return worst


def _sdpa_backend_fn(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn


def run_leaderboard(rep, warmup):
    """The course leaderboard setting: (16, 16384, 64) bf16 causal, compiled, fwd+bwd; every reference side by side."""
    from torch.nn.attention import SDPBackend
    B, T, D = 16, 16384, 64
    dev = 'cuda'
    torch.manual_seed(seed)
    q3, k3, v3 = (torch.randn(B, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    # the same data as (1, 16, 16384, 64) for the 4-D paths (SDPA's fused kernels want (B, H, T, D))
    q4, k4, v4 = (x.detach().view(1, B, T, D).requires_grad_() for x in (q3, k3, v3))
    rows = []

    def flex():
        from torch.nn.attention.flex_attention import flex_attention, create_block_mask
        mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=dev)
        return lambda q, k, v: flex_attention(q, k, v, block_mask=mask)

    impls = [
        ('flash_attn.py Triton, 3-D (16, 16384, 64)',
         lambda: (lambda q, k, v: FlashAttentionTriton.apply(q, k, v, True)), 3),
        ('flash_attn.py Triton, 4-D (1, 16, 16384, 64)', lambda: (lambda q, k, v: flash_attention(q, k, v, True)), 4),
        ('flash_attn.py Triton, 3-D, eager (no torch.compile)', None, 3),
        ('SDPA cuDNN backend', lambda: _sdpa_backend_fn(SDPBackend.CUDNN_ATTENTION), 4),
        ('SDPA FlashAttention-2 backend', lambda: _sdpa_backend_fn(SDPBackend.FLASH_ATTENTION), 4),
        ('FlexAttention, causal block mask', flex, 4),
        ('flash_attn.py Triton fwd + compiled PyTorch bwd',
         lambda: (lambda q, k, v: FlashAttentionTritonCompiledBwd.apply(q, k, v, True)), 3),
        ('SDPA default on 3-D input (math fallback)',
         lambda: (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), 3),
        ('naive PyTorch attention (compiled)', lambda: (lambda q, k, v: naive_attention(q, k, v, True)), 4),
    ]
    ref = None
    for name, make, ndim in impls:
        q, k, v = (q3, k3, v3) if ndim == 3 else (q4, k4, v4)
        t0 = time.time()
        try:
            if make is None:  # the same Function without torch.compile, to see what compile adds or costs
                fn = lambda q, k, v: FlashAttentionTriton.apply(q, k, v, True)
            else:
                fn = torch.compile(make())
            out = fn(q, k, v)  # compile + first run
            out_flat = out.detach().reshape(B, T, D).float()
            if ref is None:
                ref = naive_attention(q3.detach()[:2].float(), k3.detach()[:2].float(), v3.detach()[:2].float(), True)
            err = ((out_flat[:2] - ref).norm() / ref.norm()).item()
            del out, out_flat  # frees the saved tensors of this graph
            slow = _time_pass(fn, q, k, v, 'fwd+bwd', 50, 10) > 20  # naive / math rows: no need for 10 s of reps
            ms = _time_pass(fn, q, k, v, 'fwd+bwd', min(rep, 1000) if slow else rep,
                            min(warmup, 100) if slow else warmup)
        except torch.cuda.OutOfMemoryError:
            ms, err = 'OOM', float('nan')
        except Exception as e:  # keep the other rows; say what broke
            print(f"  {name}: {type(e).__name__}: {str(e)[:300]}")
            ms, err = None, float('nan')
        torch.cuda.empty_cache()
        rows.append((name, ms, err))
        print(f"leaderboard {name:50s} {_fmt_ms(ms):>9} ms  (rel err of o vs fp32 naive {err:.1e}, "
              f"{time.time() - t0:.0f}s)")
    # where the time goes: our forward alone and backward alone (eager; kernels only, no torch.compile)
    for mode in ('fwd', 'bwd'):
        fn = lambda q, k, v: FlashAttentionTriton.apply(q, k, v, True)
        ms = _time_pass(fn, q3, k3, v3, mode, max(rep // 10, 100), max(warmup // 10, 25))
        rows.append((f"flash_attn.py Triton, {mode} only (eager)", ms, float('nan')))
        print(f"leaderboard {rows[-1][0]:50s} {ms:9.3f} ms")
    return rows


def sweep_grid(size):
    # (sequence lengths, head dims, dtypes) of the course sweep
    if size == 'full':
        return [2 ** i for i in range(7, 17)], [16, 32, 64, 128], [torch.bfloat16, torch.float32]
    return [1024, 16384], [64, 128], [torch.bfloat16, torch.float32]


def run_sweep(seqs, dims, dtypes, rep):
    """The course sweep: batch 1, causal, naive vs SDPA vs ours, fwd / bwd / fwd+bwd, ms and TFLOP/s."""
    from torch.nn.attention import SDPBackend
    results = []  # (dtype, D, T, impl, mode, ms or 'OOM' or None)
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(x, **kw): return x
    points = [(dt, D, T) for dt in dtypes for D in dims for T in seqs]
    sdpa_flash = _sdpa_backend_fn(SDPBackend.FLASH_ATTENTION)

    def sdpa(q, k, v):  # SDPA's flash backend takes only fp16/bf16; for fp32 let SDPA pick (memory-efficient)
        if q.dtype == torch.float32:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return sdpa_flash(q, k, v)
    impls = {'naive': lambda q, k, v: naive_attention(q, k, v, True),
             'sdpa': sdpa,
             'ours': lambda q, k, v: flash_attention(q, k, v, True)}
    for dt, D, T in tqdm(points, desc='sweep'):
        torch.manual_seed(seed)
        q, k, v = (torch.randn(1, 1, T, D, device='cuda', dtype=dt, requires_grad=True) for _ in range(3))
        with torch.no_grad():  # every point is also a correctness check of ours against SDPA
            a, b = flash_attention(q, k, v, True).float(), sdpa(q, k, v).float()
            results.append((dt, D, T, 'ours', 'relerr', ((a - b).norm() / b.norm()).item()))
        for name, fn in impls.items():
            oom = False
            for mode in ('fwd', 'bwd', 'fwd+bwd'):
                ms = 'OOM'
                if not oom:
                    try:
                        ms = _time_pass(fn, q, k, v, mode, rep, max(5, rep // 4))
                    except torch.cuda.OutOfMemoryError:
                        oom = True
                    except Exception as e:
                        print(f"  {name} {dt} D{D} T{T} {mode}: {type(e).__name__}: {str(e)[:200]}")
                        ms = None
                    torch.cuda.empty_cache()
                results.append((dt, D, T, name, mode, ms))
    return results


def _sweep_markdown(results):
    lines = []
    for dt in sorted({r[0] for r in results}, key=str):
        for mode in ('fwd', 'bwd', 'fwd+bwd'):
            lines += [f"\n### {str(dt).replace('torch.', '')}, {mode} (ms, and TFLOP/s in parentheses)\n",
                      '| d | T | naive | SDPA | ours | SDPA ms / ours ms | rel. err of o vs SDPA |',
                      '|---:|---:|---:|---:|---:|---:|---:|']
            for D in sorted({r[1] for r in results}):
                for T in sorted({r[2] for r in results}):
                    got = {r[3]: r[5] for r in results if r[0] == dt and r[1] == D and r[2] == T and r[4] == mode}
                    err = [r[5] for r in results if r[0] == dt and r[1] == D and r[2] == T and r[4] == 'relerr']
                    if not got:
                        continue
                    fl = attn_flops(1, 1, T, D, True, mode)
                    cell = {n: (_fmt_ms(x) if not isinstance(x, float) else f"{x:.3f} ({fl / x / 1e9:.3g})")
                            for n, x in got.items()}
                    a, b = got.get('ours'), got.get('sdpa')
                    ratio = f"{b / a:.2f}x" if isinstance(a, float) and isinstance(b, float) else '-'
                    e = f"{err[0]:.1e}" if err else '-'
                    lines.append(f"| {D} | {T} | {cell.get('naive')} | {cell.get('sdpa')} | {cell.get('ours')} "
                                 f"| {ratio} | {e} |")
    return '\n'.join(lines)


def _sweep_plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    dtypes = sorted({r[0] for r in results}, key=str)
    fig, axes = plt.subplots(len(dtypes), 3, figsize=(16, 4.5 * len(dtypes)), squeeze=False)
    colors = {'naive': 'tab:gray', 'sdpa': 'tab:blue', 'ours': 'tab:red'}
    markers = {16: 'v', 32: 's', 64: 'o', 128: '^'}
    for i, dt in enumerate(dtypes):
        for j, mode in enumerate(('fwd', 'bwd', 'fwd+bwd')):
            ax = axes[i][j]
            for name in ('naive', 'sdpa', 'ours'):
                for D in sorted({r[1] for r in results}):
                    pts = [(r[2], attn_flops(1, 1, r[2], D, True, mode) / r[5] / 1e9) for r in results
                           if r[0] == dt and r[1] == D and r[3] == name and r[4] == mode and isinstance(r[5], float)]
                    if pts:
                        ax.plot(*zip(*pts), color=colors[name], marker=markers.get(D, 'o'), ms=4, lw=1,
                                label=f"{name} d={D}")
            ax.set_xscale('log', base=2)
            ax.set_title(f"{str(dt).replace('torch.', '')} causal, {mode}")
            ax.set_xlabel('sequence length')
            ax.set_ylabel('TFLOP/s')
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=110)
    os.replace(path + '.tmp.png', path)


def run_bench():
    assert torch.cuda.is_available(), "--bench needs a CUDA GPU (the Triton kernels and SDPA's fused backends)"
    os.makedirs(out_dir, exist_ok=True)
    dev_name = torch.cuda.get_device_name()
    env = f"Device: {dev_name}; torch {torch.__version__}; triton {triton.__version__}."
    print(env)
    worst = check_triton('cuda', shapes=((2, 3, 200, 64),))
    configs_md = ("Tile configs used (BLOCK_M, BLOCK_N, num_warps, num_stages):\n\n```\nCONFIGS = {\n" +
                  ''.join(f"    {k!r}: {v!r},\n" for k, v in CONFIGS.items()) + "}\n" +
                  f"BWD_MODES = {BWD_MODES!r}  # (mode, from T); absent: 'two_pass'\n```\n")
    if leaderboard:
        t0 = time.time()
        lb = run_leaderboard(leaderboard_rep, leaderboard_warmup)
        md = ["# flash_attn.py: the course leaderboard setting\n",
              f"{env} Command: `python flash_attn.py --bench` (this table; `--sweep` writes flash_attn_sweep.md). "
              f"Correctness check first (bf16/fp32, causal and not, T=200 ragged, 4-D, vs fp64 naive): "
              f"worst relative error {worst:.1e}.\n",
              "q, k, v (16, 16384, 64) bf16 (or the same data as (1, 16, 16384, 64)), causal, `requires_grad`, the "
              f"callable wrapped in `torch.compile`, `o.sum().backward()`, `do_bench(rep={leaderboard_rep}, "
              f"warmup={leaderboard_warmup})`, median, all in one run. Rows slower than 20 ms are timed with "
              f"rep=1000 (their ranking does not depend on it).\n",
              '| implementation | fwd+bwd ms | TFLOP/s | time / ours (3-D, compiled) |', '|---|---:|---:|---:|']
        ours = lb[0][1] if isinstance(lb[0][1], float) else None
        for name, ms, err in lb:
            mode = 'fwd' if 'fwd only' in name else ('bwd' if 'bwd only' in name else 'fwd+bwd')
            tf = f"{attn_flops(16, 1, 16384, 64, True, mode) / ms / 1e9:.0f}" if isinstance(ms, float) else '-'
            rel = f"{ms / ours:.2f}x" if isinstance(ms, float) and ours and mode == 'fwd+bwd' else '-'
            md.append(f"| {name} | {_fmt_ms(ms)} | {tf} | {rel} |")
        md.append(f"\n(took {time.time() - t0:.0f} s; TFLOP/s counts causal attention as half the full "
                  f"4*T^2*d per head, backward as 2.5x forward)\n")
        md.append(configs_md)
        path = os.path.join(out_dir, 'flash_attn_bench.md')
        _write_atomic(path, '\n'.join(md) + '\n')
        print(f"wrote {path}")
    if sweep != 'none':
        t0, res = time.time(), []
        seqs, dims, dtypes = sweep_grid(sweep)
        for dt in dtypes:  # tables and plot rewritten after each dtype, so a cut-short run still leaves results
            res += run_sweep(seqs, dims, [dt], sweep_rep)
            png = os.path.join(out_dir, 'flash_attn_sweep.png')
            _sweep_plot(res, png)
            md = [f"# flash_attn.py: the course sweep ({sweep})\n",
                  f"{env} Command: `python flash_attn.py --bench --sweep={sweep}`. "
                  f"Batch 1, one head, causal, `do_bench(rep={sweep_rep})` median. naive = `naive_attention` (eager "
                  f"PyTorch); SDPA = its FlashAttention-2 backend for bf16, SDPA's own choice for fp32 (the flash "
                  f"backend has no fp32); ours = `flash_attention` (fp32 uses TF32 tensor-core products). "
                  f"OOM = out of memory. The last column checks ours against SDPA at every point. "
                  f"Took {time.time() - t0:.0f} s. Plot: `flash_attn_sweep.png`.\n",
                  _sweep_markdown(res), '\n' + configs_md]
            path = os.path.join(out_dir, 'flash_attn_sweep.md')
            _write_atomic(path, '\n'.join(md) + '\n')
            print(f"wrote {path} and {png}")


def _tune_candidates(dtype):
    # (BLOCK_M, BLOCK_N, num_warps, num_stages), likeliest first: the tuner stops when its time budget is spent
    if dtype == torch.float32:
        return {'fwd': [(64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2),
                        (32, 32, 4, 3)],
                'dkdv': [(32, 64, 4, 3), (16, 64, 4, 3), (32, 64, 8, 2), (32, 128, 8, 2), (16, 32, 4, 3)],
                'dq': [(64, 32, 4, 3), (64, 16, 4, 3), (64, 32, 8, 2), (128, 32, 8, 2), (32, 32, 4, 3)]}
    return {'fwd': [(128, 64, 8, 4), (128, 128, 8, 4), (128, 64, 8, 5), (128, 32, 8, 4), (128, 64, 4, 3),
                    (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4), (128, 128, 4, 3), (128, 128, 8, 2),
                    (64, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 4), (128, 64, 4, 2), (128, 128, 4, 2)],
            'dkdv': [(64, 128, 4, 3), (64, 128, 4, 2), (64, 128, 4, 4), (128, 128, 8, 2), (128, 128, 8, 3),
                     (64, 64, 4, 3), (64, 64, 4, 4), (32, 128, 4, 3), (32, 128, 4, 4), (32, 128, 4, 5),
                     (64, 128, 8, 3), (32, 128, 8, 3), (32, 64, 4, 3), (64, 128, 8, 2), (16, 128, 4, 4),
                     (32, 64, 4, 5), (16, 64, 4, 4)],
            'dq': [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 4, 2), (128, 128, 8, 2), (128, 128, 8, 3),
                   (128, 64, 8, 4), (128, 32, 4, 3), (128, 32, 4, 4), (128, 32, 4, 5), (128, 64, 8, 3),
                   (128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2), (128, 16, 4, 4), (64, 64, 4, 3),
                   (64, 32, 4, 5)]}


def run_tune(budget_s):
    """Time every candidate tile config of each kernel alone, per (dtype, head dim); print the winners."""
    from triton.testing import do_bench
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.time()
    # the leaderboard shape first (it matters most), then the other head dims at a shorter sequence
    # (dtype, d, batch*heads, T, share of the time budget)
    cases = [(torch.bfloat16, 64, 16, 16384, 0.45), (torch.bfloat16, 128, 16, 4096, 0.15),
             (torch.bfloat16, 16, 16, 4096, 0.05), (torch.bfloat16, 32, 16, 4096, 0.05)] + \
            [(torch.float32, D, 16, 4096, 0.075) for D in (16, 32, 64, 128)]
    if tune_cases == 'leaderboard':
        cases = [(torch.bfloat16, 64, 16, 16384, 1.0)]
    best_all, md = {}, ["# flash_attn.py tile tuning\n", f"Device {torch.cuda.get_device_name()}. "
                        "Command: `python flash_attn.py --tune`. Each kernel timed alone (do_bench median), causal.\n",
                        '| dtype | d | B*H x T | kernel | best (BLOCK_M, BLOCK_N, warps, stages) | ms | '
                        'default config ms | candidates tried |', '|---|---:|---:|---|---|---:|---:|---:|']
    for dtype, D, BH, T, share in cases:
        key = ('32bit' if dtype == torch.float32 else '16bit', D)
        q, k, v = (torch.randn(BH, T, D, device='cuda', dtype=dtype) for _ in range(3))
        o, L = _flash_fwd(q, k, v, True)
        do = torch.randn_like(o)
        best_all[key] = dict(CONFIGS[key])
        for kind, cands in _tune_candidates(dtype).items():
            default = CONFIGS[key][kind]
            cands = [default] + [c for c in cands if c != default]
            timings, t_kind = {}, time.time()
            for c in cands:
                if time.time() - t_kind > budget_s * share / 3 and c != default:
                    break
                try:
                    if kind == 'fwd':
                        f = lambda: _flash_fwd(q, k, v, True, cfg=c)
                    else:
                        other = 'dq' if kind == 'dkdv' else 'dkdv'
                        f = lambda: _flash_bwd(q, k, v, o, L, do, True, cfgs={kind: c, other: CONFIGS[key][other]})
                    timings[c] = do_bench(f, rep=40, warmup=10, return_mode='median')
                except Exception as e:  # out of shared memory / registers for this tile: skip it
                    print(f"  tune {key} {kind} {c}: {type(e).__name__}")
            if not timings:
                continue
            best = min(timings, key=timings.get)
            best_all[key][kind] = best
            md.append(f"| {key[0]} | {D} | {BH}x{T} | {kind} | {best} | {timings[best]:.3f} | "
                      f"{timings.get(default, float('nan')):.3f} | {len(timings)} |")
            print(f"tune {key} {kind}: best {best} {timings[best]:.3f} ms (default {default} "
                  f"{timings.get(default, float('nan')):.3f} ms, {len(timings)} tried, {time.time() - t_start:.0f}s)")
    md[1] = md[1].replace('--tune`', f'--tune --tune_cases={tune_cases} --tune_budget_s={budget_s:g}`')
    md.append("\n(dkdv / dq rows time the whole backward with the other kernel at its default config)\n")
    CONFIGS.update(best_all)  # a --bench in the same run uses the winners
    md.append("\nCONFIGS = {\n" + ''.join(f"    {k!r}: {v!r},\n" for k, v in best_all.items()) + "}\n")
    path = os.path.join(out_dir, 'flash_attn_tune.md' if tune_cases == 'all' else f'flash_attn_tune_{tune_cases}.md')
    _write_atomic(path, '\n'.join(md))
    print(md[-1])
    print(f"wrote {path}")


# -----------------------------------------------------------------------------
if __name__ == '__main__':
    if tune:
        run_tune(tune_budget_s)
    if bench:
        run_bench()
    if not (tune or bench):
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device == 'cpu' and not _interpreting():
            print("no GPU: run with TRITON_INTERPRET=1 to check the Triton kernels through the interpreter (slow)")
            sys.exit(0)
        shapes = ((2, 3, 200, 64), (1, 2, 128, 128)) if device == 'cuda' else ((1, 2, 40, 16),)
        worst = check_triton(device, shapes=shapes)
        print(f"worst relative error {worst:.1e}")

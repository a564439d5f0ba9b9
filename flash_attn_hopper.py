"""
flash_attn_hopper.py: a Hopper (sm90) FlashAttention forward written in Gluon, beside flash_attn.py (issue 34).

flash_attn.py's Triton kernels leave the schedule to the compiler. Gluon (triton.experimental.gluon, in Triton 3.6)
is Triton's lower-level language in which the schedule is written by hand: layouts, shared memory, mbarriers,
TMA copies and asynchronous warpgroup MMAs (WGMMA) are explicit. FlashAttention-3 (Shah et al. 2024,
arXiv:2407.08608) gets its speed on Hopper from three moves:
  1) a producer warp loads K/V tiles by TMA into a ring of shared-memory stages guarded by mbarriers;
  2) two consumer warpgroups in ping-pong, so that one group's softmax overlaps the other's GEMMs;
  3) within a warpgroup, the next QK^T overlaps the current softmax.
This file does 1): `gl.warp_specialize` splits each program into a 1-warp load partition (Q once, then K and V
tiles into NUM_STAGES stages) and an 8-warp compute partition (two warpgroups, 64 query rows each) that runs
S = Q K^T and O += P V as WGMMAs with the online softmax of flash_attn.py in between; 3) is there as OVERLAP (off
until timed); 2) is the next step.
The backward is flash_attn.py's Triton backward (the forward saves the same O and L).

Fast path: CUDA sm90+, bf16/fp16, head dim 64 or 128, T a multiple of 128, contiguous (batch, [heads,] seq, d)
inputs; anything else runs flash_attn.py's Triton forward. UNTESTED ON A GPU when written (no GPU then): the CPU
tests only compile the kernel for sm90 (Gluon front end, layouts, ptxas); numerics, hangs and speed are unchecked.

  python flash_attn_hopper.py       # on a Hopper GPU: forward and gradients against naive attention
  python bench/flash_attn.py        # time it beside flash_attn.py, cuDNN, SDPA-FA2, Flex (--hopper=False: skip it)
"""
import math
import os
import sys

import torch
import triton

import flash_attn  # the Triton backward, the fallback forward, naive attention

try:  # Gluon ships with Triton 3.6; without it every call takes flash_attn.py's path
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    HAS_GLUON = True
except ImportError:
    HAS_GLUON = False

# -----------------------------------------------------------------------------
seq_len = 1024  # T of the command's check, q, k, v of shape (2, 4, T, 64): a multiple of BLOCK_M
# -----------------------------------------------------------------------------

BLOCK_M = 128  # query rows per program: two warpgroups of 64 rows (WGMMA's m is 64 per warpgroup)
BLOCK_N = 128  # keys per K/V stage
NUM_STAGES = 2  # K/V stages in the shared-memory ring: the loads of tile j+1 fly while tile j is used
NUM_WARPS = 8  # the compute partition; the load partition adds 1 warp (rounded up to a warpgroup)
MAXNREG = 168  # 12 warps x 32 threads x 168 registers fit an SM's 64K; the partitions then get 240 (compute), 24 (load)
OVERLAP = False  # FA3's move 3, issue QK^T of the next tile before this tile's softmax (untimed: A/B it on a GPU)


def _mma_layout(n, num_warps):
    # the WGMMA accumulator layout of a (BLOCK_M, n) result: warps stacked along M, instruction m16 x n x k16
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


if HAS_GLUON:
    _mma_layout = gluon.constexpr_function(_mma_layout)

    @gluon.jit
    def _load_partition(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, ready_bars, empty_bars,
                        q_row, kv_row, n_tiles, BLOCK_N: gl.constexpr):
        # 1 warp: Q once, then K, V tile i into stage i % NUM_STAGES as soon as the compute partition has
        # released that stage (empty bar), signalling `ready` when the bytes have landed.
        num_stages: gl.constexpr = k_bufs.type.shape[0]
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
        for i in range(n_tiles):
            stage = i % num_stages
            phase = (i // num_stages) & 1
            # mbarriers start as if phase 1 had completed: the first pass over the ring does not wait
            mbarrier.wait(empty_bars.index(stage), phase ^ 1)
            ready = ready_bars.index(stage)
            mbarrier.expect(ready, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [kv_row + i * BLOCK_N, 0], ready, k_bufs.index(stage))
            tma.async_copy_global_to_shared(v_desc, [kv_row + i * BLOCK_N, 0], ready, v_bufs.index(stage))

    @gluon.jit
    def _softmax_pv(acc, m_i, l_i, s, v_smem, q_start, start_n, qk_scale, BLOCK_M: gl.constexpr,
                    BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, MASKED: gl.constexpr, num_warps: gl.constexpr):
        # One step of flash_attn.py's online softmax on the scores s (BLOCK_M, BLOCK_N) of one key tile, then O += P V.
        s_layout: gl.constexpr = _mma_layout(BLOCK_N, num_warps)
        o_layout: gl.constexpr = _mma_layout(HEAD_DIM, num_warps)
        if MASKED:  # the tiles on the diagonal: keys after the query get -1e6 once scaled
            rows = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = gl.where(rows[:, None] >= cols[None, :], s, -1.0e6 / qk_scale)
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)  # running max, base 2
        p = gl.exp2(s * qk_scale - m_new[:, None])  # one multiply-add per score, as in flash_attn.py
        alpha = gl.exp2(m_i - m_new)  # rescale factor of what was accumulated under the old max
        l_i = l_i * alpha + gl.sum(p, axis=1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        # P (cast to bf16/fp16) goes to the tensor cores from registers, in the A-operand layout of the O product
        p_op = gl.convert_layout(p.to(v_smem.dtype), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))
        acc = warpgroup_mma(p_op, v_smem, acc, is_async=True)  # O += P V
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))  # (also waits for any QK^T issued before it)
        return acc, m_new, l_i

    @gluon.jit
    def _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready_bars, empty_bars, n_full, n_tiles, q_start, qk_scale,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, OVERLAP: gl.constexpr,
                num_warps: gl.constexpr):
        # Key tiles [0, n_tiles), tile j in stage j % stages; [0, n_full) need no mask, the rest (the causal diagonal)
        # do. OVERLAP (FA3's move 3): S_{j+1} = Q K_{j+1}^T is issued before the softmax of S_j, so the tensor cores
        # work while the softmax runs; otherwise it is issued after P_j V_j, and waited for right away.
        num_stages: gl.constexpr = k_bufs.type.shape[0]
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, _mma_layout(BLOCK_N, num_warps))
        mbarrier.wait(ready_bars.index(0), 0)
        # K_j is (BLOCK_N, D) in shared memory; its transposed view is WGMMA's (D, BLOCK_N) operand
        s_next = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        for j in range(n_tiles):
            stage = j % num_stages
            nxt = (j + 1) % num_stages
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))  # S_j: (BLOCK_M, BLOCK_N) fp32, unscaled
            if OVERLAP and j + 1 < n_tiles:
                mbarrier.wait(ready_bars.index(nxt), ((j + 1) // num_stages) & 1)
                s_next = warpgroup_mma(q_smem, k_bufs.index(nxt).permute((1, 0)), s_zero, use_acc=False,
                                       is_async=True)
            if j < n_full:
                acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v_bufs.index(stage), q_start, j * BLOCK_N, qk_scale,
                                            BLOCK_M, BLOCK_N, HEAD_DIM, False, num_warps)
            else:
                acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, v_bufs.index(stage), q_start, j * BLOCK_N, qk_scale,
                                            BLOCK_M, BLOCK_N, HEAD_DIM, True, num_warps)
            mbarrier.arrive(empty_bars.index(stage), count=1)  # both MMAs have read the stage: give it back
            if not OVERLAP and j + 1 < n_tiles:
                mbarrier.wait(ready_bars.index(nxt), ((j + 1) // num_stages) & 1)
                s_next = warpgroup_mma(q_smem, k_bufs.index(nxt).permute((1, 0)), s_zero, use_acc=False,
                                       is_async=True)
        return acc, m_i, l_i

    @gluon.jit
    def _compute_partition(q_smem, k_bufs, v_bufs, q_bar, ready_bars, empty_bars, o_desc, L, q_row, q_start,
                           n_full, n_tiles, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           HEAD_DIM: gl.constexpr, OVERLAP: gl.constexpr, num_warps: gl.constexpr):
        # 8 warps: the key tiles as Q arrives, then O = acc / l and L = m + log(l).
        s_layout: gl.constexpr = _mma_layout(BLOCK_N, num_warps)
        o_layout: gl.constexpr = _mma_layout(HEAD_DIM, num_warps)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)  # unnormalized O
        m_i = gl.full([BLOCK_M], float('-inf'), gl.float32, gl.SliceLayout(1, s_layout))  # running max m
        l_i = gl.full([BLOCK_M], 0.0, gl.float32, gl.SliceLayout(1, s_layout))  # running sum l
        mbarrier.wait(q_bar, 0)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready_bars, empty_bars, n_full, n_tiles,
                                q_start, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, OVERLAP, num_warps)
        o = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        lse = (m_i + gl.log2(l_i)) * 0.6931471805599453  # L = m + log(l), back from base 2 to natural log
        rows = q_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
        gl.store(L + rows, lse)
        q_smem.store(o.to(q_smem.dtype))  # Q's buffer is free now: O goes out through it by TMA
        fence_async_shared()  # order the register -> shared store before the TMA engine reads it
        tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _attn_fwd_hopper(q_desc, k_desc, v_desc, o_desc, L, T, qk_scale, CAUSAL: gl.constexpr,
                         NUM_STAGES: gl.constexpr, OVERLAP: gl.constexpr, num_warps: gl.constexpr):
        # grid: (T // BLOCK_M, batch * heads), the last query tile first under causal masking (the heaviest, as
        # in flash_attn.py). q, k, v, o are seen as (B*H*T, D) matrices: head bh's rows start at bh * T.
        BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        pid_m = gl.num_programs(0) - 1 - gl.program_id(0) if CAUSAL else gl.program_id(0)
        q_start = pid_m * BLOCK_M
        q_row = gl.program_id(1) * T + q_start
        kv_row = gl.program_id(1) * T
        n_tiles = (q_start + BLOCK_M) // BLOCK_N if CAUSAL else T // BLOCK_N  # causal: nothing past the last query
        n_full = q_start // BLOCK_N if CAUSAL else n_tiles  # tiles wholly below the diagonal: no mask
        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        empty_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for s in gl.static_range(NUM_STAGES):
            mbarrier.init(ready_bars.index(s), count=1)
            mbarrier.init(empty_bars.index(s), count=1)
        gl.warp_specialize([
            (_compute_partition, (q_smem, k_bufs, v_bufs, q_bar, ready_bars, empty_bars, o_desc, L, q_row, q_start,
                                  n_full, n_tiles, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, OVERLAP, num_warps)),
            (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, ready_bars, empty_bars,
                               q_row, kv_row, n_tiles, BLOCK_N)),
        ], [1], [24])


def supported(q, k, v):
    """True where the Gluon kernel runs: Hopper, bf16/fp16, head dim 64/128, T % BLOCK_M == 0, contiguous."""
    T, D = q.shape[-2], q.shape[-1]
    return (HAS_GLUON and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
            and q.dtype in (torch.bfloat16, torch.float16) and D in (64, 128) and T % BLOCK_M == 0 and T > 0
            and all(x.is_contiguous() for x in (q, k, v)))


def _descriptors(q, k, v, o):
    # host-side TMA descriptors of the (B*H*T, D) views: Q and O in BLOCK_M-row tiles, K and V in BLOCK_N rows
    def desc(x, rows):
        x2 = x.view(-1, x.shape[-1])
        layout = gl.NVMMASharedLayout.get_default_for([rows, x.shape[-1]], gl.bfloat16 if x.dtype == torch.bfloat16
                                                      else gl.float16)
        return TensorDescriptor(x2, list(x2.shape), list(x2.stride()), [rows, x.shape[-1]], layout)
    return desc(q, BLOCK_M), desc(k, BLOCK_N), desc(v, BLOCK_N), desc(o, BLOCK_M)


def hopper_fwd(q, k, v, is_causal):
    """The forward: o (like q) and L (q.shape[:-1], float32 natural-log logsumexp), as flash_attn.flash_fwd."""
    if not supported(q, k, v):
        return flash_attn.flash_fwd(q, k, v, is_causal)
    T, D = q.shape[-2], q.shape[-1]
    o = torch.empty_like(q)
    L = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    grid = (T // BLOCK_M, q.numel() // (T * D))  # (query tiles, batch * heads)
    _attn_fwd_hopper[grid](*_descriptors(q, k, v, o), L, T, flash_attn.LOG2E / math.sqrt(D), is_causal,
                           NUM_STAGES, OVERLAP, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o, L


class FlashAttentionHopper(flash_attn.FlashAttentionTriton):
    """flash_attn.FlashAttentionTriton with the Gluon forward: o = FlashAttentionHopper.apply(q, k, v, is_causal).
    It saves what FlashAttentionTriton saves, so FlashAttentionTriton's backward (the Triton kernels) serves it."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        flash_attn.check_inputs(q, k, v, is_causal)  # the same clear errors as flash_attn.py
        o, L = hopper_fwd(q, k, v, is_causal)
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o


def compile_for_sm90(is_causal=True, head_dim=64, dtype=torch.bfloat16, overlap=None):
    """Compile the kernel for sm90 without a GPU (front end, layouts, ptxas): what the CPU tests can check."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type
    x = torch.empty(2 * BLOCK_M, head_dim, dtype=dtype)  # CPU stand-ins: only shapes and dtypes matter here
    descs = _descriptors(x, x, x, x)
    names = ['q_desc', 'k_desc', 'v_desc', 'o_desc', 'L', 'T', 'qk_scale', 'CAUSAL', 'NUM_STAGES', 'OVERLAP',
             'num_warps']
    signature = dict(zip(names, [mangle_type(d) for d in descs] + ['*fp32', 'i32', 'fp32'] + ['constexpr'] * 4))
    constexprs = {'CAUSAL': is_causal, 'NUM_STAGES': NUM_STAGES, 'num_warps': NUM_WARPS,
                  'OVERLAP': OVERLAP if overlap is None else overlap}
    src = GluonASTSource(_attn_fwd_hopper, signature, constexprs)
    return triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': NUM_WARPS, 'maxnreg': MAXNREG})


def main():
    """On a Hopper GPU: output and gradients of FlashAttentionHopper against naive attention in float64."""
    if seq_len < BLOCK_M or seq_len % BLOCK_M:
        print(f"flash_attn_hopper.py: error: --seq_len={seq_len}: use a multiple of {BLOCK_M}", file=sys.stderr)
        sys.exit(2)
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and HAS_GLUON):
        print("flash_attn_hopper.py: needs a Hopper GPU and Triton's Gluon; compiling for sm90 only")
        print(f"compiled: {compile_for_sm90().metadata.shared} bytes of shared memory per program")
        return
    worst = 0.0
    for causal in (False, True):
        q, k, v, do = (torch.randn(2, 4, seq_len, 64, device='cuda', dtype=torch.bfloat16) for _ in range(4))
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = [t.double().requires_grad_() for t in (q, k, v)]
        o, o_ref = FlashAttentionHopper.apply(*x, causal), flash_attn.naive_attention(*ref, causal)
        o.backward(do)
        o_ref.backward(do.double())
        for name, a, b in zip(('o', 'dq', 'dk', 'dv'), (o, *(t.grad for t in x)), (o_ref, *(t.grad for t in ref))):
            err = ((a.double() - b).norm() / b.norm()).item()
            worst = max(worst, err)
            print(f"causal={causal!s:5} {name}: relative error {err:.1e}")
    print(f"worst relative error {worst:.1e} ({'ok' if worst < flash_attn.TOL[torch.bfloat16] else 'FAILED'})")
    if worst >= flash_attn.TOL[torch.bfloat16]:
        sys.exit(1)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

"""
flash_attn_hopper.py: FlashAttention's forward for Hopper (sm90) in Gluon, warp-specialized like FlashAttention-3.

Gluon (triton.experimental.gluon, Triton 3.6) is Triton's lower-level language, with layouts, shared memory, mbarriers,
TMA copies and async warpgroup MMAs (WGMMA) written by hand. FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608)
makes three moves: 1) a producer warp loads K/V tiles by TMA into a ring of shared-memory stages guarded by mbarriers;
2) two consumer warpgroups in ping-pong; 3) the next QK^T issued before this softmax. Here 1) and 3); the backward is
flash_attn.py's. Correct on an H100 but slower than flash_attn.py's forward so far (results/flash_attn_bench.md);
the CPU tests compile it for sm90 and read the PTX; `python bench/flash_attn.py` checks it, then times it.
"""
import torch
import triton

import flash_attn  # the Triton backward, the fallback forward, the input checks

try:  # Gluon ships with Triton 3.6; without it every call takes flash_attn.py's path
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    HAS_GLUON = True
except ImportError:
    HAS_GLUON = False

BLOCK_M = 128  # query rows per program: two warpgroups of 64 rows (WGMMA's M is 64 per warpgroup)
BLOCK_N = 128  # keys per K/V stage
NUM_STAGES = 2  # K/V stages in the ring; at least 2: S_{j+1} waits for stage j+1 while stage j is still in use
NUM_WARPS = 8  # the compute partition; the 1-warp load partition is rounded up to a warpgroup: 12 warps
MAXNREG = 168  # 12 warps x 32 threads x 168 fit an SM's 64K registers; then 240 each for compute, 24 for load

if HAS_GLUON:
    @gluon.jit
    def _load_partition(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, kv_row, n_tiles):
        # 1 warp: Q once, then K_i, V_i into stage i % stages once the compute partition has released it (empty)
        num_stages: gl.constexpr = k_bufs.type.shape[0]
        BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
        mbarrier.expect(bars.index(2 * num_stages), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, 0], bars.index(2 * num_stages), q_smem)
        for i in range(n_tiles):
            stage, ready = i % num_stages, bars.index(i % num_stages)  # ready: both tiles' bytes have landed
            # an mbarrier starts as if phase 1 had completed: waiting on parity 1 passes on the first lap
            mbarrier.wait(bars.index(num_stages + stage), ((i // num_stages) & 1) ^ 1)
            mbarrier.expect(ready, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [kv_row + i * BLOCK_N, 0], ready, k_bufs.index(stage))
            tma.async_copy_global_to_shared(v_desc, [kv_row + i * BLOCK_N, 0], ready, v_bufs.index(stage))

    @gluon.jit
    def _compute_partition(q_smem, k_bufs, v_bufs, bars, o_desc, L, q_row, q_start, n_full, n_tiles, qk_scale,
                           BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                           num_stages: gl.constexpr, num_warps: gl.constexpr):
        # 8 warps, two warpgroups of 64 rows: flash_attn.py's online softmax between S = QK^T and O += PV; O and L
        # WGMMA accumulator layouts of S and O: warps stacked along M, instruction m16 x n x k16 (16-bit inputs)
        s_layout: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [num_warps, 1], [16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout([3, 0], [num_warps, 1], [16, HEAD_DIM, 16])
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)  # unnormalized O
        m_i = gl.full([BLOCK_M], float('-inf'), gl.float32, gl.SliceLayout(1, s_layout))  # running max m (base 2)
        l_i = gl.full([BLOCK_M], 0.0, gl.float32, gl.SliceLayout(1, s_layout))  # running sum l
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)  # the shape and layout of S for use_acc=False
        mbarrier.wait(bars.index(2 * num_stages), 0)  # Q
        mbarrier.wait(bars.index(0), 0)  # K_0, V_0
        # S_0 = Q K_0^T: K_j is (BLOCK_N, D) in shared memory, its transposed view is WGMMA's (D, BLOCK_N) B operand
        s_next = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        for j in range(n_tiles):
            stage, nxt = j % num_stages, (j + 1) % num_stages
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, ))  # S_j (BLOCK_M, BLOCK_N) fp32, unscaled
            if j + 1 < n_tiles:  # FA3's move 3: S_{j+1} runs on the tensor cores while the softmax of S_j runs
                mbarrier.wait(bars.index(nxt), ((j + 1) // num_stages) & 1)
                s_next = warpgroup_mma(q_smem, k_bufs.index(nxt).permute((1, 0)), s_zero, use_acc=False,
                                       is_async=True)
            if j >= n_full:  # the diagonal tile: keys after the query get -1e6 once scaled (as flash_attn.py)
                rows = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
                cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
                s = gl.where(rows[:, None] >= cols[None, :], s, -1.0e6 / qk_scale)
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)  # qk_scale = log2(e) / sqrt(d)
            p = gl.exp2(s * qk_scale - m_new[:, None])  # one multiply-add per score
            alpha = gl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
            l_i, m_i = l_i * alpha + gl.sum(p, axis=1), m_new
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            # P goes to the tensor cores from registers as the A operand (k_width 2: two 16-bit values per 32 bits)
            p = gl.convert_layout(p.to(q_smem.dtype), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))
            acc = warpgroup_mma(p, v_bufs.index(stage), acc, is_async=True)  # O += P V
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))  # every WGMMA this warpgroup issued is done
            # NOTE both warpgroups must be done reading K_j, V_j before the loader overwrites them: Triton 3.6 lowers
            # this arrive as a partition-wide bar.sync, then one thread's arrive (the CPU test checks it in the PTX)
            mbarrier.arrive(bars.index(num_stages + stage), count=1)
        o = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        lse = (m_i + gl.log2(l_i)) * 0.6931471805599453  # L = m + log(l): base 2 back to natural log (x ln 2)
        gl.store(L + q_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout)), lse)
        q_smem.store(o.to(q_smem.dtype))  # Q's buffer is free (every WGMMA reading it was waited for): O goes there
        fence_async_shared()  # order the generic-proxy store before the TMA engine (async proxy) reads it
        tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _attn_fwd_hopper(q_desc, k_desc, v_desc, o_desc, L, T, qk_scale, CAUSAL: gl.constexpr,
                         NUM_STAGES: gl.constexpr, num_warps: gl.constexpr):
        # grid (T // BLOCK_M, B * H), causal: the last query tile (most keys) first; q, k, v, o as (B*H*T, D) matrices
        BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        q_start = (gl.num_programs(0) - 1 - gl.program_id(0) if CAUSAL else gl.program_id(0)) * BLOCK_M
        kv_row = gl.program_id(1) * T
        # causal: key tiles up to the last query (BLOCK_M % BLOCK_N == 0), all but the last wholly below the diagonal
        n_tiles = (q_start + BLOCK_M) // BLOCK_N if CAUSAL else T // BLOCK_N
        n_full = q_start // BLOCK_N if CAUSAL else n_tiles
        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
        # mbarriers: ready[s] (the loader's expect-tx + the TMA bytes), empty[s] (one arrive, NOTE above), then Q's
        bars = gl.allocate_shared_memory(gl.int64, [2 * NUM_STAGES + 1, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(2 * NUM_STAGES + 1):
            mbarrier.init(bars.index(s), count=1)
        gl.warp_specialize([  # Triton 3.6: [(default partition, args), (worker, args)], worker warps, worker registers
            (_compute_partition, (q_smem, k_bufs, v_bufs, bars, o_desc, L, kv_row + q_start, q_start, n_full, n_tiles,
                                  qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, num_warps)),
            (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, kv_row + q_start, kv_row,
                               n_tiles)),
        ], [1], [24])


def supported(q, k, v):
    """Where the kernel runs: Hopper, bf16/fp16, d 64/128, T % BLOCK_M == 0, contiguous, 16-byte aligned (TMA)."""
    return (HAS_GLUON and not triton.knobs.runtime.interpret and q.is_cuda  # Gluon has no interpreter
            and torch.cuda.get_device_capability(q.device)[0] >= 9 and q.dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] in (64, 128) and q.shape[-2] % BLOCK_M == 0 and q.shape[-2] > 0
            and all(x.is_contiguous() and x.data_ptr() % 16 == 0 for x in (q, k, v)))


def descriptors(q, k, v, o):
    """Host-side TMA descriptors of the (B*H*T, D) views in the swizzled shared layout that TMA and WGMMA read."""
    def desc(x, rows):  # Q and O in BLOCK_M-row tiles, K and V in BLOCK_N rows
        x2, dtype = x.view(-1, x.shape[-1]), gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
        layout = gl.NVMMASharedLayout.get_default_for([rows, x2.shape[1]], dtype)
        return TensorDescriptor(x2, list(x2.shape), list(x2.stride()), [rows, x2.shape[1]], layout)
    return desc(q, BLOCK_M), desc(k, BLOCK_N), desc(v, BLOCK_N), desc(o, BLOCK_M)


@torch.compiler.disable  # torch.compile runs this launch as it is (Dynamo cannot trace a Gluon kernel's arguments)
def hopper_fwd(q, k, v, is_causal):
    """o (like q) and L (q.shape[:-1], fp32 natural-log logsumexp), as flash_attn.flash_fwd, which runs elsewhere."""
    if not supported(q, k, v):
        return flash_attn.flash_fwd(q, k, v, is_causal)
    (T, D), o, L = q.shape[-2:], torch.empty_like(q), torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    grid = (T // BLOCK_M, q.numel() // (T * D))  # (query tiles, batch * heads)
    _attn_fwd_hopper[grid](*descriptors(q, k, v, o), L, T, flash_attn.LOG2E * D ** -0.5, is_causal, NUM_STAGES,
                           num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o, L


class FlashAttentionHopper(flash_attn.FlashAttentionTriton):
    """o = FlashAttentionHopper.apply(q, k, v, is_causal): this forward with FlashAttentionTriton's backward."""
    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        flash_attn.check_inputs(q, k, v, is_causal)  # the same clear errors as flash_attn.py
        o, L = hopper_fwd(q, k, v, is_causal)
        ctx.save_for_backward(L, q, k, v, o)
        ctx.is_causal = is_causal
        return o

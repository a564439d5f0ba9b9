"""
Tests for flash_attn.py: the PyTorch and Triton FlashAttention-2 against naive attention in float64.

    python -m pytest tests/test_flash_attn.py -v

Without a GPU the Triton kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes stay tiny; the interpreter tiles are 32x16 / 16x32, so T=40 gives full, diagonal and ragged tiles.
On a GPU the same tests run the compiled kernels (fp32 there uses TF32 products, hence the fp32 tolerance).
"""
import math

import pytest
import torch

import flash_attn
from flash_attn import FlashAttentionPytorch, FlashAttentionTriton, flash_attention, naive_attention

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
# relative error ||out - ref|| / ||ref|| against fp64: fp32 (TF32 on GPU) and bf16 (8-bit mantissa) tolerances
TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float64: 1e-10}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_close_rel(a, b, tol, what):
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = rel_err(a, b)
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e} (max abs diff {(a.double() - b).abs().max():.2e})"


def reference(q, k, v, do, causal):
    """Naive attention in fp64: output, logsumexp L and the three gradients."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o = naive_attention(q64, k64, v64, causal)
    o.backward(do.double())
    s = q64.detach() @ k64.detach().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float('-inf'))
    return o.detach(), torch.logsumexp(s, -1), q64.grad, k64.grad, v64.grad


def make_inputs(shape, dtype, seed=0):
    g = torch.Generator(device='cpu').manual_seed(seed)
    q, k, v, do = (torch.randn(shape, generator=g).to(DEVICE, dtype) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def check_fn(fn, shape, dtype, causal, seed=0):
    q, k, v, do = make_inputs(shape, dtype, seed)
    o = fn(q, k, v, causal)
    o.backward(do)
    o_ref, _, dq, dk, dv = reference(q, k, v, do, causal)
    tol = TOL[dtype]
    assert o.dtype == dtype and o.shape == q.shape
    assert_close_rel(o.detach(), o_ref, tol, 'o')
    assert_close_rel(q.grad, dq, tol, 'dq')
    assert_close_rel(k.grad, dk, tol, 'dk')
    assert_close_rel(v.grad, dv, tol, 'dv')


# -----------------------------------------------------------------------------
# PyTorch tiled version

@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('T', [32, 50])  # a multiple of the 32 tile and a ragged length
def test_pytorch_forward_backward_fp32(causal, T):
    check_fn(FlashAttentionPytorch.apply, (2, T, 16), torch.float32, causal)


def test_pytorch_bf16_and_saved_tensors():
    q, k, v, do = make_inputs((2, 40, 32), torch.bfloat16)
    o = FlashAttentionPytorch.apply(q, k, v, True)
    L, *rest = o.grad_fn.saved_tensors
    # exactly L (batch, n_queries), q, k, v, O are saved for backward
    assert L.shape == (2, 40) and len(rest) == 4
    assert rest[0] is q or rest[0].data_ptr() == q.data_ptr()
    o_ref, L_ref, *_ = reference(q, k, v, do, True)
    assert_close_rel(o.detach(), o_ref, TOL[torch.bfloat16], 'o')
    assert_close_rel(L, L_ref, 1e-3, 'L')


def test_pytorch_gradcheck():
    # fp64 through the tiled forward (16x16 tiles, ragged T) and the recomputation backward
    FlashAttentionPytorch.tile_q, FlashAttentionPytorch.tile_k = 16, 16
    try:
        for causal in (False, True):
            q, k, v = (torch.randn(1, 21, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
            assert torch.autograd.gradcheck(lambda a, b, c: FlashAttentionPytorch.apply(a, b, c, causal), (q, k, v))
    finally:
        FlashAttentionPytorch.tile_q, FlashAttentionPytorch.tile_k = 32, 32


# -----------------------------------------------------------------------------
# Triton version (interpreter on CPU)

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('D', [16, 32, 64, 128])
@pytest.mark.parametrize('causal', [False, True])
def test_triton_forward_backward(dtype, D, causal):
    # T=40: under the interpreter tiles 32/16, so full tiles, the diagonal and a ragged tail are all hit
    check_fn(FlashAttentionTriton.apply, (1, 40, D), dtype, causal, seed=D)


@pytest.mark.parametrize('T', [5, 16, 33])  # shorter than one tile, exactly one tile, one past a tile
def test_triton_ragged_lengths(T):
    check_fn(FlashAttentionTriton.apply, (2, T, 16), torch.float32, True, seed=T)
    check_fn(FlashAttentionTriton.apply, (1, T, 16), torch.float32, False, seed=T)


def test_triton_logsumexp():
    q, k, v, do = make_inputs((2, 40, 32), torch.float32)
    for causal in (False, True):
        o, L = flash_attn._flash_fwd(q.detach(), k.detach(), v.detach(), causal)
        _, L_ref, *_ = reference(q, k, v, do, causal)
        assert L.shape == (2, 40) and L.dtype == torch.float32
        assert_close_rel(L, L_ref, 1e-4, 'L')


def test_flash_attention_4d_strided_view_no_copy():
    # model.py's layout: (B, T, H, D) -> transpose -> (B, H, T, D) with a contiguous last dim, used in place
    B, T, H, D = 2, 40, 3, 16
    qkv = torch.randn(B, T, 3, H, D, device=DEVICE)
    q, k, v = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))  # (B, H, T, D) views
    assert not q.is_contiguous()
    do = torch.randn(B, H, T, D, device=DEVICE)
    o = flash_attention(q, k, v, is_causal=True)
    o.backward(do)
    o_ref, _, dq, dk, dv = reference(q, k, v, do, True)
    assert o.transpose(1, 2).is_contiguous()  # o keeps q's (B, T, H, D) memory order: no copy to merge heads
    for a, b, name in ((o.detach(), o_ref, 'o'), (q.grad, dq, 'dq'), (k.grad, dk, 'dk'), (v.grad, dv, 'dv')):
        assert_close_rel(a, b, TOL[torch.float32], name)
    # heads are independent: head 1 alone through the 3-D path gives the same output
    o3 = FlashAttentionTriton.apply(q[:, 1].detach().contiguous(), k[:, 1].detach().contiguous(),
                                    v[:, 1].detach().contiguous(), True)
    assert_close_rel(o3, o[:, 1].detach(), 1e-6, 'o head 1 (3-D vs 4-D)')


def test_sum_backward_with_expanded_grad():
    # out.sum().backward() passes a grad with all strides 0; the kernels must not read it as contiguous
    q, k, v, _ = make_inputs((1, 2, 24, 16), torch.float32)
    flash_attention(q, k, v).sum().backward()
    _, _, dq, dk, dv = reference(q, k, v, torch.ones(1, 2, 24, 16, device=DEVICE), True)
    assert_close_rel(q.grad, dq, TOL[torch.float32], 'dq')
    assert_close_rel(v.grad, dv, TOL[torch.float32], 'dv')


def test_triton_forward_compiled_pytorch_backward():
    check_fn(flash_attn.FlashAttentionTritonCompiledBwd.apply, (1, 40, 16), torch.float32, True)


# -----------------------------------------------------------------------------
# Bad input: clear errors, never a silent wrong result

def test_bad_inputs():
    q = torch.randn(1, 32, 16, device=DEVICE)
    with pytest.raises(ValueError, match='same shape'):
        FlashAttentionTriton.apply(q, torch.randn(1, 16, 16, device=DEVICE), q, False)
    with pytest.raises(ValueError, match='one dtype'):
        FlashAttentionTriton.apply(q, q.bfloat16(), q, False)
    with pytest.raises(ValueError, match='not supported'):
        FlashAttentionTriton.apply(q.double(), q.double(), q.double(), False)
    for D in (8, 24, 256):
        x = torch.randn(1, 32, D, device=DEVICE)
        with pytest.raises(ValueError, match='head dim'):
            FlashAttentionTriton.apply(x, x, x, False)
    x = torch.randn(1, 16, 32, device=DEVICE).transpose(1, 2)  # (1, 32, 16) with last-dim stride 32
    with pytest.raises(ValueError, match='contiguous'):
        FlashAttentionTriton.apply(x, x, x, False)
    with pytest.raises(ValueError, match=r'\(B, H, T, D\)'):
        flash_attention(q, q, q)
    with pytest.raises(ValueError, match='seq, d'):
        FlashAttentionTriton.apply(q[0], q[0], q[0], False)


def test_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    q = torch.randn(1, 32, 16)
    with pytest.raises(ValueError, match='CUDA tensors'):
        FlashAttentionTriton.apply(q, q, q, False)


# -----------------------------------------------------------------------------
# Speed candidates (BWD_MODE 'fused' / 'atomic' / 'atomic_tma') and the block-pointer path that runs where TMA
# descriptors cannot (FWD_TMA / BWD_TMA off): the same answers as the default path

@pytest.mark.parametrize('mode', ['fused', 'atomic', 'atomic_tma'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('causal', [False, True])
def test_triton_backward_candidates(monkeypatch, mode, dtype, causal):
    monkeypatch.setattr(flash_attn, 'BWD_MODE', mode)
    for shape, seed in (((1, 40, 16), 0), ((2, 33, 64), 1), ((1, 2, 64, 32), 2)):  # ragged, one tile, 4-D
        check_fn(FlashAttentionTriton.apply, shape, dtype, causal, seed=seed)


def test_triton_backward_candidates_strided_view(monkeypatch):
    B, T, H, D = 2, 40, 3, 16
    qkv = torch.randn(B, T, 3, H, D, device=DEVICE)
    do = torch.randn(B, H, T, D, device=DEVICE)
    for mode in ('fused', 'atomic', 'atomic_tma'):
        monkeypatch.setattr(flash_attn, 'BWD_MODE', mode)
        q, k, v = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))  # (B, H, T, D) views
        flash_attention(q, k, v, is_causal=True).backward(do)
        _, _, dq, dk, dv = reference(q, k, v, do, True)
        for a, b, name in ((q.grad, dq, 'dq'), (k.grad, dk, 'dk'), (v.grad, dv, 'dv')):
            assert_close_rel(a, b, TOL[torch.float32], f"{mode} {name}")


def test_backward_mode_per_head_dim(monkeypatch):
    # with BWD_MODE unset, _flash_bwd takes the mode of BWD_MODES[(dtype kind, head dim)] = (mode, from T) for
    # sequences of at least T tokens, 'two_pass' for shorter ones and where absent
    if not flash_attn._tma_ready(torch.zeros(4, 32, device=DEVICE)):
        pytest.skip("atomic_tma needs TMA descriptors (Hopper or the interpreter); elsewhere it falls back to two_pass")
    calls = []
    real = flash_attn._attn_bwd_atomic

    class Spy:  # counts launches of the atomic backward kernel
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]
    monkeypatch.setattr(flash_attn, '_attn_bwd_atomic', Spy())
    monkeypatch.setattr(flash_attn, 'BWD_MODE', None)
    monkeypatch.setattr(flash_attn, 'BWD_MODES', {('32bit', 32): ('atomic_tma', 40)})
    check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.float32, True)  # d=32 fp32, T >= 40: atomic backward
    assert len(calls) == 1
    check_fn(FlashAttentionTriton.apply, (1, 39, 32), torch.float32, True)  # T < 40: two_pass
    check_fn(FlashAttentionTriton.apply, (1, 40, 16), torch.float32, True)  # d=16: absent, so two_pass
    check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.bfloat16, True)  # bf16 d=32: absent, so two_pass
    assert len(calls) == 1
    monkeypatch.setattr(flash_attn, 'BWD_MODES', {('32bit', 32): ('no_such_mode', 0)})
    with pytest.raises(AssertionError, match='unknown backward mode'):
        check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.float32, True)


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('mode', ['two_pass', 'atomic_tma'])
def test_triton_block_pointer_path(monkeypatch, causal, mode):
    q, k, v, _ = make_inputs((1, 40, 16), torch.float32)
    if DEVICE == 'cpu':
        assert flash_attn._use_tma(q, k, v)  # by default the interpreter runs the TMA descriptor path itself
    monkeypatch.setattr(flash_attn, 'FWD_TMA', False)
    monkeypatch.setattr(flash_attn, 'BWD_TMA', False)
    monkeypatch.setattr(flash_attn, 'BWD_MODE', mode)
    assert not flash_attn._use_tma(q, k, v)
    for shape, dtype in (((1, 40, 16), torch.float32), ((1, 2, 33, 64), torch.bfloat16)):
        check_fn(FlashAttentionTriton.apply, shape, dtype, causal)


def test_tma_allocator_set_in_other_threads():
    # Triton keeps its scratch allocator (needed by device-side TMA descriptors) in a ContextVar, and autograd runs
    # the backward in a thread of its own: _tma_ready must set it in whichever thread launches the kernels.
    import threading
    from triton.runtime import _allocation
    q, k, v, _ = make_inputs((1, 40, 16), torch.float32)
    seen = []

    def worker():
        seen.append(flash_attn._tma_ready(q, k) and _allocation._allocator.get() is flash_attn._tma_scratch)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [True]


def test_tma_ready_traces_without_graph_break():
    # model.py calls the Triton kernels inside torch.compile'd models: a graph break in this check would split the
    # compiled graph at every layer (measured 55% slower training steps on the H100)
    x = torch.randn(2, 40, 3, 16, device=DEVICE).transpose(1, 2)  # (B, H, T, D) view
    fn = torch.compile(lambda t: t + 1 if flash_attn._tma_ready(t, t) else t - 1, fullgraph=True, backend='eager')
    torch.testing.assert_close(fn(x), x + 1 if flash_attn._tma_ready(x, x) else x - 1)

"""
Tests for flash_attn_hopper.py, the Gluon forward for Hopper (issue 34).

    python -m pytest tests/test_flash_attn_hopper.py -v

Without a Hopper GPU the kernel cannot run (Gluon has no interpreter): the CPU tests compile it for sm90 (front end,
layouts, ptxas) and check the autograd wiring through flash_attn.py's fallback forward. On a Hopper GPU the kernel
itself is checked against naive attention, forward and gradients, including the course leaderboard shape.
"""
import pytest
import torch

import flash_attn
import flash_attn_hopper
from flash_attn_hopper import FlashAttentionHopper

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and flash_attn_hopper.HAS_GLUON
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_against_naive(shape, dtype, causal, tol):
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(shape, generator=g).to(DEVICE, dtype) for _ in range(4))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    o = FlashAttentionHopper.apply(*x, causal)
    o_ref = flash_attn.naive_attention(*ref, causal)
    o.backward(do)
    o_ref.backward(do.double())
    assert o.shape == q.shape and o.dtype == dtype
    for name, a, b in zip(('o', 'dq', 'dk', 'dv'), (o.detach(), *(t.grad for t in x)), (o_ref, *(t.grad for t in ref))):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, f"{name}: relative error {rel_err(a, b):.2e}"


@pytest.mark.skipif(not flash_attn_hopper.HAS_GLUON, reason="this Triton has no Gluon")
@pytest.mark.parametrize('causal, head_dim, overlap', [(True, 64, False), (False, 128, True)])
def test_kernel_compiles_for_sm90(causal, head_dim, overlap):
    kernel = flash_attn_hopper.compile_for_sm90(causal, head_dim, overlap=overlap)
    assert 'cubin' in kernel.asm and kernel.metadata.num_warps == flash_attn_hopper.NUM_WARPS + 4  # + load warpgroup
    assert kernel.metadata.shared <= 227 * 1024  # fits an H100's shared memory per block


def test_unsupported_inputs_take_flash_attn_forward():
    # fp32, a head dim of 32 and ragged lengths are not the Gluon kernel's: flash_attn.py's forward runs, and the
    # autograd Function still returns the right gradients (on CPU: everything falls back, through the interpreter)
    q = torch.zeros(1, 2, 40, 32, device=DEVICE)
    assert not flash_attn_hopper.supported(q, q, q)
    check_against_naive((1, 2, 40, 32), torch.float32, True, 2e-3)
    check_against_naive((2, 24, 16), torch.float32, False, 2e-3)


def test_bad_inputs_same_errors_as_flash_attn():
    q = torch.randn(1, 32, 16, device=DEVICE)
    with pytest.raises(ValueError, match='same shape'):
        FlashAttentionHopper.apply(q, torch.randn(1, 16, 16, device=DEVICE), q, False)
    with pytest.raises(ValueError, match='is_causal'):
        FlashAttentionHopper.apply(q, q, q, 1)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (the kernel uses TMA, mbarriers and WGMMA)")
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('head_dim', [64, 128])
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('overlap', [False, True])  # both schedules of the compute partition
def test_kernel_matches_naive_on_hopper(monkeypatch, dtype, head_dim, causal, overlap):
    monkeypatch.setattr(flash_attn_hopper, 'OVERLAP', overlap)
    q = torch.zeros(2, 3, 384, head_dim, device='cuda', dtype=dtype)
    assert flash_attn_hopper.supported(q, q, q)
    check_against_naive((2, 3, 384, head_dim), dtype, causal, 2e-2)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
def test_leaderboard_shape_on_hopper():
    # (16, 16384, 64) bf16 causal, the course leaderboard's: against flash_attn.py's Triton forward (the naive
    # reference would need 16 GiB per (T, T) matrix)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(16, 16384, 64, generator=g).to('cuda', torch.bfloat16) for _ in range(3))
    o, L = flash_attn_hopper.hopper_fwd(q, k, v, True)
    o_ref, L_ref = flash_attn.flash_fwd(q, k, v, True)
    assert rel_err(o, o_ref) < 1e-2 and rel_err(L, L_ref) < 1e-4

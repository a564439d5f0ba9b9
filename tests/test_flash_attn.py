"""
Tests for flash_attn.py: the PyTorch and Triton FlashAttention-2 against naive attention in float64.

    python -m pytest tests/test_flash_attn.py -v

Without a GPU the Triton kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes stay tiny; the interpreter tiles are 32x16 / 16x32, so T=40 gives full, diagonal and ragged tiles.
On a GPU the same tests run the compiled kernels (fp32 there uses TF32 products, hence the fp32 tolerance).
The last tests run flash_attn.py and bench/flash_attn.py as commands (a copy of flash_attn.py alone; bad settings).
"""
import math
import os
import shutil
import subprocess
import sys

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


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('tq,tk', [(16, 40), (40, 16), (3, 70)])
def test_pytorch_queries_and_keys_of_other_lengths(causal, tq, tk):
    """The course's Algorithm 1 takes Q (N_q, d) and K, V (N_k, d): o, L and the gradients against naive attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g, dtype=torch.float64) for n in (tq, tk, tk))
    do = torch.randn(2, tq, 16, generator=g, dtype=torch.float64)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = FlashAttentionPytorch.apply(q, k, v, causal)
    L = o.grad_fn.saved_tensors[0]  # (2, tq): read before backward frees it
    o.backward(do)
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o_ref = naive_attention(q2, k2, v2, causal)
    o_ref.backward(do)
    s = q2.detach() @ k2.detach().transpose(-2, -1) / 4.0  # sqrt(16)
    L_ref = torch.logsumexp(s.masked_fill(torch.ones(tq, tk, dtype=torch.bool).triu(1), float('-inf')) if causal
                            else s, -1)
    assert o.shape == (2, tq, 16) and o_ref.shape == (2, tq, 16)
    for got, want, what in ((o, o_ref, 'o'), (L, L_ref, 'L'), (q.grad, q2.grad, 'dq'),
                            (k.grad, k2.grad, 'dk'), (v.grad, v2.grad, 'dv')):
        assert_close_rel(got.detach(), want.detach(), 1e-6, what)  # naive_attention's softmax runs in fp32


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
        o, L = flash_attn.flash_fwd(q.detach(), k.detach(), v.detach(), causal)
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
# The backward modes: 'atomic_tma' (one key-outer pass, dQ by TMA reduce-adds) must give the same answers as the
# two-pass default; BWD_MODES picks one per (dtype kind, head dim, length)

ALL_ATOMIC = {(kind, D): ('atomic_tma', 0) for kind in ('16bit', '32bit') for D in flash_attn.SUPPORTED_HEAD_DIMS}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('causal', [False, True])
def test_triton_backward_atomic_tma(monkeypatch, dtype, causal):
    monkeypatch.setattr(flash_attn, 'BWD_MODES', ALL_ATOMIC)
    for shape, seed in (((1, 40, 16), 0), ((2, 33, 64), 1), ((1, 2, 64, 32), 2)):  # ragged, one tile, 4-D
        check_fn(FlashAttentionTriton.apply, shape, dtype, causal, seed=seed)


def test_triton_backward_atomic_tma_strided_view(monkeypatch):
    monkeypatch.setattr(flash_attn, 'BWD_MODES', ALL_ATOMIC)
    B, T, H, D = 2, 40, 3, 16
    qkv = torch.randn(B, T, 3, H, D, device=DEVICE)
    do = torch.randn(B, H, T, D, device=DEVICE)
    q, k, v = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))  # (B, H, T, D) views
    flash_attention(q, k, v, is_causal=True).backward(do)
    _, _, dq, dk, dv = reference(q, k, v, do, True)
    for a, b, name in ((q.grad, dq, 'dq'), (k.grad, dk, 'dk'), (v.grad, dv, 'dv')):
        assert_close_rel(a, b, TOL[torch.float32], f"atomic_tma {name}")


def test_backward_mode_per_head_dim(monkeypatch):
    # flash_bwd takes the mode of BWD_MODES[(dtype kind, head dim)] = (mode, from T) for sequences of at least
    # T tokens, 'two_pass' for shorter ones and where absent
    if DEVICE == 'cuda' and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("atomic_tma needs TMA reduce-adds (Hopper or the interpreter); elsewhere it falls back to two_pass")
    calls = []
    real = flash_attn._attn_bwd_dkdv

    class Spy:  # records whether each launch of the dK/dV kernel adds dQ atomically
        def __getitem__(self, grid):
            return lambda *args, **kw: (calls.append(kw['DQ_ATOMIC']), real[grid](*args, **kw))
    monkeypatch.setattr(flash_attn, '_attn_bwd_dkdv', Spy())
    monkeypatch.setattr(flash_attn, 'BWD_MODES', {('32bit', 32): ('atomic_tma', 40)})
    check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.float32, True)  # d=32 fp32, T >= 40: atomic backward
    assert calls == [True]
    check_fn(FlashAttentionTriton.apply, (1, 39, 32), torch.float32, True)  # T < 40: two_pass
    check_fn(FlashAttentionTriton.apply, (1, 40, 16), torch.float32, True)  # d=16: absent, so two_pass
    check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.bfloat16, True)  # bf16 d=32: absent, so two_pass
    assert calls == [True, False, False, False]
    monkeypatch.setattr(flash_attn, 'BWD_MODES', {('32bit', 32): ('no_such_mode', 0)})
    with pytest.raises(AssertionError, match='unknown backward mode'):
        check_fn(FlashAttentionTriton.apply, (1, 40, 32), torch.float32, True)


@pytest.mark.parametrize('mode', ['two_pass', 'atomic_tma'])
def test_misaligned_views_are_copied(monkeypatch, mode):
    # TMA descriptors need 16-byte aligned rows: a view whose rows start at odd offsets is copied, not misread
    monkeypatch.setattr(flash_attn, 'BWD_MODES', ALL_ATOMIC if mode == 'atomic_tma' else {})
    for causal in (False, True):
        # (1, 40, 16) views of (1, 40, 17) tensors: rows 68 bytes apart, starting 4 bytes in
        q, k, v = (torch.randn(1, 40, 17, device=DEVICE)[..., 1:].requires_grad_() for _ in range(3))
        assert q.stride(-2) * 4 % 16 and flash_attn._aligned(q)[0] is not q
        do = torch.randn(1, 40, 16, device=DEVICE)
        o = FlashAttentionTriton.apply(q, k, v, causal)
        o.backward(do)
        o_ref, _, dq, dk, dv = reference(q, k, v, do, causal)
        for a, b, name in ((o.detach(), o_ref, 'o'), (q.grad, dq, 'dq'), (k.grad, dk, 'dk'), (v.grad, dv, 'dv')):
            assert_close_rel(a, b, TOL[torch.float32], name)


def test_tma_allocator_set_in_other_threads():
    # Triton keeps its scratch allocator (needed by device-side TMA descriptors) in a ContextVar, and autograd runs
    # the backward in a thread of its own: _aligned must set it in whichever thread launches the kernels.
    import threading
    from triton.runtime import _allocation
    q, k, v, _ = make_inputs((1, 40, 16), torch.float32)
    seen = []

    def worker():
        before = _allocation._allocator.get()
        flash_attn._aligned(q, k)
        seen.append((before, _allocation._allocator.get()))
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    before, after = seen[0]
    assert isinstance(before, _allocation.NullAllocator) and not isinstance(after, _allocation.NullAllocator)


def test_aligned_traces_without_graph_break():
    # model.py calls the Triton kernels inside torch.compile'd models: a graph break in this check would split the
    # compiled graph at every layer
    x = torch.randn(2, 40, 3, 16, device=DEVICE).transpose(1, 2)  # (B, H, T, D) view
    fn = torch.compile(lambda t: flash_attn._aligned(t, t)[0] + 1, fullgraph=True, backend='eager')
    torch.testing.assert_close(fn(x), x + 1)


# -----------------------------------------------------------------------------
# The command: flash_attn.py copied alone into an empty folder runs its check (issue 29); bad settings are refused
# with one line and exit code 2, writing nothing (issue 32)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(args, cwd, timeout=300, interpret=True):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TRITON_INTERPRET')}  # no repo on the path
    if DEVICE == 'cpu' and interpret:
        env['TRITON_INTERPRET'] = '1'
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_copy_alone_imports_quietly_and_runs_main(tmp_path):
    shutil.copy(os.path.join(ROOT, 'flash_attn.py'), tmp_path)
    # importing runs nothing, whatever sys.argv says
    r = run_script(['-c', "import sys; sys.argv = ['x', '--seq_len=-1', 'nofile.py']; import flash_attn"], tmp_path)
    assert r.returncode == 0 and r.stdout == '', r.stdout + r.stderr
    r = run_script(['-c', "import flash_attn; print(flash_attn.__file__); flash_attn.seq_len = 40; "
                          "flash_attn.head_dim = 16; flash_attn.main()"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert os.path.dirname(lines[0]) == str(tmp_path)  # the copy, not the repo's file
    for path in ('pytorch', 'triton'):
        assert sum(line.startswith(path) for line in lines) == 4  # bf16 and fp32, causal and not
    assert lines[-1].endswith('(ok)')
    assert sorted(os.listdir(tmp_path)) == ['__pycache__', 'flash_attn.py'] or os.listdir(tmp_path) == ['flash_attn.py']


def assert_refused(r, tmp_path, *words):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.parametrize('arg, words', [
    ('--dtypes=float64', ('--dtypes', 'bfloat16, float16, float32')),
    ('--dtypes=', ('--dtypes',)),
    ('--seq_len=0', ('--seq_len=0', 'at least 1')),
    ('--head_dim=48', ('--head_dim=48', '16, 32, 64, 128')),
    ('--device=tpu', ('--device', "'cuda'")),
])
def test_command_refuses_bad_settings(tmp_path, arg, words):
    assert_refused(run_script([os.path.join(ROOT, 'flash_attn.py'), arg], tmp_path), tmp_path, *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_command_refuses_cuda_without_gpu(tmp_path):
    assert_refused(run_script([os.path.join(ROOT, 'flash_attn.py'), '--device=cuda'], tmp_path), tmp_path, 'cuda')


def test_command_without_interpreter_checks_pytorch_only(tmp_path):
    if DEVICE == 'cuda':
        pytest.skip("on a GPU both paths run")
    r = run_script([os.path.join(ROOT, 'flash_attn.py'), '--seq_len=20', '--head_dim=16'], tmp_path, interpret=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert 'TRITON_INTERPRET=1' in r.stdout and sum(line.startswith('pytorch') for line in lines) == 4
    assert not any(line.startswith('triton') for line in lines)


@pytest.mark.parametrize('args, words', [
    (['--mode=fast'], ('--mode',)),
    (['--sweep=huge'], ('--sweep', "'small'")),
    (['--sweep_rep=0'], ('--sweep_rep=0', 'positive')),
    (['--tune_budget_s=-1'], ('--tune_budget_s',)),
    (['--tune_cases=some'], ('--tune_cases',)),
    (['--leaderboard=False', '--sweep=none'], ('nothing to run',)),
])
def test_bench_refuses_bad_settings(tmp_path, args, words):
    r = run_script([os.path.join(ROOT, 'bench', 'flash_attn.py'), f'--out_dir={tmp_path}/out'] + args, tmp_path)
    assert_refused(r, tmp_path, *words)


def test_bench_refuses_out_dir_that_is_a_file(tmp_path):
    (tmp_path / 'results').write_text('keep me')
    r = run_script([os.path.join(ROOT, 'bench', 'flash_attn.py'), '--sweep=small'], tmp_path)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and '--out_dir' in r.stderr, r.stderr
    assert (tmp_path / 'results').read_text() == 'keep me'


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_bench_refuses_to_run_without_gpu(tmp_path):
    assert_refused(run_script([os.path.join(ROOT, 'bench', 'flash_attn.py')], tmp_path), tmp_path, 'CUDA GPU')


def test_flash_attention_refuses_bad_arguments():
    q = torch.randn(1, 2, 32, 16, device=DEVICE)
    with pytest.raises(ValueError, match='one device'):
        flash_attention(q, q.to('meta'), q)
    with pytest.raises(TypeError, match='torch.Tensors'):
        FlashAttentionTriton.apply(q, q.tolist(), q, True)
    with pytest.raises(ValueError, match="is_causal must be True or False, got 'yes'"):
        flash_attention(q, q, q, is_causal='yes')


# -----------------------------------------------------------------------------
# Without a GPU the interpreter checks the numbers; compiling for real targets checks what it cannot: the TMA
# descriptors and reduce-adds on sm90, and their rewrite into plain loads before Hopper (sm80). In a subprocess:
# under TRITON_INTERPRET=1 (conftest.py) the kernels are interpreter objects that cannot be compiled.

COMPILE_FOR = """
import sys, triton, flash_attn
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
arch = int(sys.argv[1])

def compile_kernel(kernel, types, constexprs, cfg):
    names = [n for n in kernel.arg_names if n not in constexprs]
    signature = dict(zip(names, types), **{n: 'constexpr' for n in constexprs})
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget('cuda', arch, 32),
                   options={'num_warps': cfg[2], 'num_stages': cfg[3]})

cfg = flash_attn.CONFIGS['16bit', 64]  # the leaderboard's bf16, d=64
scalars = ['i32', 'i32', 'fp32']
for causal in (False, True):
    tiles = lambda kind: dict(HEAD_DIM=64, BLOCK_M=cfg[kind][0], BLOCK_N=cfg[kind][1], CAUSAL=causal)
    compile_kernel(flash_attn._attn_fwd, ['*bf16'] * 4 + ['*fp32'] + ['i32'] * 16 + scalars, tiles('fwd'), cfg['fwd'])
    for atomic in (False, True) if arch >= 90 else (False,):
        kind = 'atomic_tma' if atomic else 'dkdv'
        compile_kernel(flash_attn._attn_bwd_dkdv, ['*bf16'] * 4 + ['*fp32'] * 2 + ['*bf16'] * 2 + ['*fp32'] +
                       ['i32'] * 24 + scalars + ['fp32'], dict(tiles(kind), DQ_ATOMIC=atomic), cfg[kind])
    compile_kernel(flash_attn._attn_bwd_dq, ['*bf16'] * 4 + ['*fp32'] * 2 + ['*bf16'] + ['i32'] * 20 + scalars +
                   ['fp32'], tiles('dq'), cfg['dq'])
print('compiled')
"""


@pytest.mark.parametrize('arch', [90, 80])
def test_kernels_compile_for_gpus(tmp_path, arch):
    shutil.copy(os.path.join(ROOT, 'flash_attn.py'), tmp_path)
    r = run_script(['-c', COMPILE_FOR, str(arch)], tmp_path, interpret=False)
    assert r.returncode == 0 and 'compiled' in r.stdout, r.stderr[-3000:]

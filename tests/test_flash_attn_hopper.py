"""
Tests for flash_attn_hopper.py, the Gluon forward for Hopper (issue 34).

    python -m pytest tests/test_flash_attn_hopper.py -v

Gluon has no interpreter, so without a Hopper GPU the kernel cannot run: the CPU tests compile it for sm90 in a
process of its own (no TRITON_INTERPRET, a fresh Triton cache: a cached compile once hid a failure) and read what the
compiler made: cubin, warps, shared memory, register spills (ptxas -v), and in the PTX that every release of a K/V
stage comes after both warpgroups' WGMMA waits. They also check that importing it under TRITON_INTERPRET=1 is harmless
and that anything it cannot run takes flash_attn.py's path. On a Hopper GPU the kernel itself is checked against naive
attention, forward and gradients, and against flash_attn.py's forward at the course leaderboard shape.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import flash_attn
import flash_attn_hopper
from flash_attn_hopper import FlashAttentionHopper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and flash_attn_hopper.HAS_GLUON
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
CONFIGS = [(causal, d) for causal in (True, False) for d in (64, 128)]  # what the kernel is compiled for


def run(args, tmp_path, interpret=False, **env_extra):
    """A child python in the repo root: no TRITON_INTERPRET (unless asked), its own Triton cache under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TRITON_INTERPRET')}
    env.update(TRITON_CACHE_DIR=str(tmp_path / 'triton_cache'), **env_extra)
    if interpret:
        env['TRITON_INTERPRET'] = '1'
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# compile for sm90 without a GPU: Gluon front end, layouts, ptxas (CPU tensors stand in for the descriptors' shapes)
COMPILE = """
import json, re, subprocess, sys, torch, triton, flash_attn_hopper as f
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type
out = []
for causal, d in json.loads(sys.argv[1]):
    x = torch.empty(2 * f.BLOCK_M, d, dtype=torch.bfloat16)
    types = [mangle_type(t) for t in f.descriptors(x, x, x, x)] + ['*fp32', 'i32', 'fp32'] + ['constexpr'] * 3
    src = GluonASTSource(f._attn_fwd_hopper, dict(zip(f._attn_fwd_hopper.arg_names, types)),
                         {'CAUSAL': causal, 'NUM_STAGES': f.NUM_STAGES, 'num_warps': f.NUM_WARPS})
    kernel = triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': f.NUM_WARPS,
                                                                          'maxnreg': f.MAXNREG})
    ptx = sys.argv[2] + f'/{causal}_{d}.ptx'
    open(ptx, 'w').write(kernel.asm['ptx'])
    r = subprocess.run([triton.knobs.nvidia.ptxas.path, '-v', '-arch=sm_90a', ptx, '-o', ptx + '.cubin'],
                       capture_output=True, text=True)
    spills = [int(n) for n in re.findall(r'(\\d+) bytes spill', r.stdout + r.stderr)] if r.returncode == 0 else None
    out.append(dict(cubin='cubin' in kernel.asm, warps=kernel.metadata.num_warps, shared=kernel.metadata.shared,
                    ptx=ptx, spills=spills))
print(json.dumps(out))
"""


def stage_releases_after_waits(ptx):
    """Each plain mbarrier.arrive (a stage handed back to the loader) follows, in the program text, the last WGMMA's
    wait_group 0 and then a barrier of the partition's 256 threads (both warpgroups): (arrives seen, all ok)."""
    lines = [line.strip() for line in ptx.splitlines()]
    arrives = [i for i, line in enumerate(lines) if re.match(r'(@%p\d+ )?mbarrier\.arrive\.shared(::cta)?\.b64', line)]
    ok = True
    for i in arrives:
        last = lambda pattern: max((j for j in range(i) if re.match(pattern, lines[j])), default=-1)  # noqa: E731
        commit, wait = last(r'wgmma\.commit_group'), last(r'wgmma\.wait_group\.sync\.aligned 0;')
        ok &= commit < wait < last(r'bar(rier)?\.sync\s+\d+, 256;')
    return len(arrives), ok


@pytest.mark.skipif(not flash_attn_hopper.HAS_GLUON, reason="this Triton has no Gluon")
def test_kernel_compiles_for_sm90(tmp_path):
    r = run(['-c', COMPILE, json.dumps(CONFIGS), str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for (causal, d), k in zip(CONFIGS, json.loads(r.stdout.splitlines()[-1])):
        what = f"causal={causal} d={d}"
        assert k['cubin'] and k['warps'] == flash_attn_hopper.NUM_WARPS + 4, what  # + the load partition's warpgroup
        assert k['shared'] <= 227 * 1024, what  # an H100's shared memory per block
        assert k['spills'] is None or not any(k['spills']), f"{what}: ptxas reports spills {k['spills']}"
        arrives, ok = stage_releases_after_waits(open(k['ptx']).read())
        assert arrives >= 1 and ok, f"{what}: a K/V stage is released before both warpgroups' WGMMAs are done"


def test_ptx_check_catches_an_early_release():
    # the check above on hand-written PTX: a release after the wait and a 256-thread barrier passes; one with only
    # the wait (the other warpgroup may still be reading the stage) or with a WGMMA issued after the barrier fails
    good = ["wgmma.commit_group.sync.aligned;", "wgmma.wait_group.sync.aligned 0;", "bar.sync 0, 256;",
            "@%p9 mbarrier.arrive.shared::cta.b64 _, [%r987];"]
    assert stage_releases_after_waits('\n'.join(good)) == (1, True)
    assert stage_releases_after_waits('\n'.join(good[:2] + good[3:])) == (1, False)
    assert stage_releases_after_waits('\n'.join(good[1:3] + good[:1] + good[3:])) == (1, False)


def test_import_under_the_interpreter(tmp_path):
    # the rest of the suite runs with TRITON_INTERPRET=1: importing must stay harmless there, and nothing may try the
    # Gluon kernel (it has no interpreter), even for inputs it would take on a GPU
    r = run(['-c', "import flash_attn_hopper as f, torch; q = torch.zeros(1, 128, 64, dtype=torch.bfloat16); "
                   "print(f.supported(q, q, q))"], tmp_path, interpret=True)
    assert r.returncode == 0 and r.stdout.strip() == 'False', r.stderr[-2000:]


def test_bench_reports_a_hung_or_failing_kernel_as_a_row(monkeypatch):
    # bench/flash_attn.py checks the kernel in a child process before timing it: a hang, a crash or a wrong result
    # there comes back as one line for a 'failed' row (no '|' to break the table), and the other rows still run
    spec = importlib.util.spec_from_file_location('bench_flash_attn', os.path.join(ROOT, 'bench', 'flash_attn.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, 'hopper_timeout_s', 2)
    for script, why in (("import time; time.sleep(60)", 'hung (no result in 2 s)'),
                        ("raise AssertionError('d=64 | o error 0.5')", 'AssertionError: d=64 / o error 0.5'),
                        ("print('ok')", None)):
        monkeypatch.setattr(bench, 'HOPPER_CHECK', script)
        assert bench._check_hopper() == why
    assert [bench._fmt_ms(x) for x in ('failed: hung', 'OOM', None, 1.5)] == ['failed: hung', 'OOM', 'error', '1.500']


@pytest.mark.parametrize('arg', ['--hopper_timeout_s=0', '--hopper=maybe'])
def test_bench_refuses_bad_hopper_settings(tmp_path, arg):
    # issue 32: one line naming the setting, exit code 2, no traceback, nothing written
    r = run([os.path.join('bench', 'flash_attn.py'), arg, f'--out_dir={tmp_path / "out"}'], tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert arg.split('=')[0] in lines[0] and not (tmp_path / 'out').exists()


def check_against_naive(shape, dtype, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(shape, generator=g).to(DEVICE, dtype) for _ in range(4))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    o, o_ref = FlashAttentionHopper.apply(*x, causal), flash_attn.naive_attention(*ref, causal)
    o.backward(do)
    o_ref.backward(do.double())
    assert o.shape == q.shape and o.dtype == dtype
    for name, a, b in zip(('o', 'dq', 'dk', 'dv'), (o.detach(), *(t.grad for t in x)), (o_ref, *(t.grad for t in ref))):
        err = ((a.double() - b).norm() / b.norm()).item()
        assert err < flash_attn.TOL[dtype], f"{name}: relative error {err:.2e}"  # NaN fails too


def test_unsupported_inputs_take_flash_attn_forward():
    # fp32, head dim 32 and ragged lengths are not the Gluon kernel's: flash_attn.py's forward runs, and the autograd
    # Function still gives the right gradients (on CPU everything falls back, through Triton's interpreter)
    q = torch.zeros(1, 2, 40, 32, device=DEVICE)
    assert not flash_attn_hopper.supported(q, q, q)
    check_against_naive((1, 2, 40, 32), torch.float32, True)
    check_against_naive((2, 24, 16), torch.float32, False)


def test_bad_inputs_same_errors_as_flash_attn():
    q = torch.randn(1, 32, 16, device=DEVICE)
    with pytest.raises(ValueError, match='same shape'):
        FlashAttentionHopper.apply(q, torch.randn(1, 16, 16, device=DEVICE), q, False)
    with pytest.raises(ValueError, match='is_causal'):
        FlashAttentionHopper.apply(q, q, q, 1)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (the kernel uses TMA, mbarriers and WGMMA)")
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('causal, head_dim', CONFIGS)
def test_kernel_matches_naive_on_hopper(dtype, causal, head_dim):
    q = torch.zeros(2, 3, 384, head_dim, device='cuda', dtype=dtype)
    assert flash_attn_hopper.supported(q, q, q)
    check_against_naive((2, 3, 384, head_dim), dtype, causal)  # 3 query tiles: the 2-stage K/V ring wraps


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
def test_leaderboard_shape_on_hopper():
    # (16, 16384, 64) bf16 causal, the course leaderboard's, against flash_attn.py's Triton forward (the naive
    # reference would need 16 GiB per (T, T) matrix)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(16, 16384, 64, generator=g).to('cuda', torch.bfloat16) for _ in range(3))
    o, L = flash_attn_hopper.hopper_fwd(q, k, v, True)
    o_ref, L_ref = flash_attn.flash_fwd(q, k, v, True)
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    assert rel(o, o_ref) < 1e-2 and rel(L, L_ref) < 1e-4

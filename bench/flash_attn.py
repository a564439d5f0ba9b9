"""
bench/flash_attn.py: flash_attn.py's Triton FlashAttention-2 timed against the references, and its tile tuning.

    python bench/flash_attn.py                    # leaderboard -> results/flash_attn_bench.md; sweep -> _sweep.md/.png
    python bench/flash_attn.py --sweep=small      # a reduced sweep (d 64/128, seq 1k/16k; under a minute)
    python bench/flash_attn.py --sweep=none       # the leaderboard setting only
    python bench/flash_attn.py --mode=tune        # time candidate tile configs per head dim -> flash_attn_tune.md

The leaderboard setting is the course's: q, k, v (16, 16384, 64) bf16, causal, the callable in torch.compile,
fwd+bwd, `do_bench(rep=10000, warmup=1000)`, against SDPA's cuDNN and FlashAttention-2 backends, FlexAttention and
naive attention in the same run. The sweep is the course's too: seq 128..65536, d 16..128, bf16/fp32, fwd / bwd /
fwd+bwd, in ms and TFLOP/s, with a plot. Needs a CUDA GPU. The tuner prints the winners; copy them into
flash_attn.py's CONFIGS by hand.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the teaching scripts
import flash_attn  # noqa: E402
from flash_attn import FlashAttentionTriton, flash_attention, flash_bwd, flash_fwd, naive_attention  # noqa: E402

# -----------------------------------------------------------------------------
mode = 'bench'  # 'bench': the leaderboard setting and the sweep | 'tune': time candidate tile configs
leaderboard = True  # time the course leaderboard setting -> results/flash_attn_bench.md
sweep = 'full'  # course sweep: 'full' (seq 128..65536, d 16..128, bf16+fp32) | 'small' (seq 1k,16k; d 64,128) | 'none'
leaderboard_rep = 10000  # do_bench rep (ms) for the leaderboard setting (the course uses 10000)
leaderboard_warmup = 1000  # do_bench warmup (ms) for the leaderboard setting (the course uses 1000)
sweep_rep = 30  # do_bench rep (ms) per sweep point (keeps the 720-point sweep to a few minutes)
tune_budget_s = 120.0  # wall-clock budget of --mode=tune, seconds
tune_cases = 'all'  # 'all': every head dim and dtype | 'leaderboard': only bf16 d=64 at the leaderboard shape
out_dir = 'results'  # where the tables and plots go
seed = 1337  # random inputs
# -----------------------------------------------------------------------------

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
    return x if isinstance(x, str) else ('error' if x is None else f"{x:.3f}")  # 'OOM', 'failed: ...' as they are


def _write_atomic(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)




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
        ('SDPA default on 3-D input (math fallback)',
         lambda: (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), 3),
        ('naive PyTorch attention (compiled)', lambda: (lambda q, k, v: naive_attention(q, k, v, True)), 4),
    ]
    alone = [('flash_attn.py Triton', lambda q, k, v: FlashAttentionTriton.apply(q, k, v, True), 3),
             ('SDPA cuDNN backend', _sdpa_backend_fn(SDPBackend.CUDNN_ATTENTION), 4)]
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
    # where the time goes: the forward alone and the backward alone (eager; kernels only, no torch.compile)
    for name, fn, ndim in alone:
        q, k, v = (q3, k3, v3) if ndim == 3 else (q4, k4, v4)
        for which in ('fwd', 'bwd'):
            try:
                ms = _time_pass(fn, q, k, v, which, max(rep // 10, 100), max(warmup // 10, 25))
            except Exception as e:  # keep the other rows; say what broke
                print(f"  {name} {which}: {type(e).__name__}: {str(e)[:300]}")
                ms = None
            rows.append((f"{name}, {which} only (eager)", ms, float('nan')))
            print(f"leaderboard {rows[-1][0]:50s} {_fmt_ms(ms):>9} ms")
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
    """The leaderboard table and the course sweep, as the settings above say."""
    os.makedirs(out_dir, exist_ok=True)
    dev_name = torch.cuda.get_device_name()
    env = f"Device: {dev_name}; torch {torch.__version__}; triton {triton.__version__}."
    print(env)
    worst = flash_attn.check('cuda', shape=(2, 3, 200, 64), paths=('triton',))
    configs_md = ("Tile configs used (BLOCK_M, BLOCK_N, num_warps, num_stages):\n\n```\nCONFIGS = {\n" +
                  ''.join(f"    {k!r}: {v!r},\n" for k, v in flash_attn.CONFIGS.items()) + "}\n" +
                  f"BWD_MODES = {flash_attn.BWD_MODES!r}  # (mode, from T); absent: 'two_pass'\n```\n")
    if leaderboard:
        t0 = time.time()
        lb = run_leaderboard(leaderboard_rep, leaderboard_warmup)
        md = ["# flash_attn.py: the course leaderboard setting\n",
              f"{env} Command: `python bench/flash_attn.py --sweep=none` (this table; `--sweep` writes "
              f"flash_attn_sweep.md). Correctness check first (bf16/fp32, causal and not, T=200 ragged, 4-D, vs fp64 "
              f"naive): worst relative error {worst:.2f}x flash_attn.TOL.\n",
              "q, k, v (16, 16384, 64) bf16 (or the same data as (1, 16, 16384, 64)), causal, `requires_grad`, the "
              f"callable wrapped in `torch.compile`, `o.sum().backward()`, `do_bench(rep={leaderboard_rep}, "
              f"warmup={leaderboard_warmup})`, median, all in one run. Rows slower than 20 ms are timed with "
              f"rep=1000 (their ranking does not depend on it).\n",
              '| implementation | fwd+bwd ms | TFLOP/s | time / ours (3-D, compiled) |', '|---|---:|---:|---:|']
        ours = lb[0][1] if isinstance(lb[0][1], float) else None
        for name, ms, err in lb:
            which = 'fwd' if 'fwd only' in name else ('bwd' if 'bwd only' in name else 'fwd+bwd')
            tf = f"{attn_flops(16, 1, 16384, 64, True, which) / ms / 1e9:.0f}" if isinstance(ms, float) else '-'
            rel = f"{ms / ours:.2f}x" if isinstance(ms, float) and ours and which == 'fwd+bwd' else '-'
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
                  f"{env} Command: `python bench/flash_attn.py --leaderboard=False --sweep={sweep}`. "
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
    CONFIGS = flash_attn.CONFIGS
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
                        "Command: `python bench/flash_attn.py --mode=tune`. Each kernel timed alone (do_bench "
                        "median), causal.\n",
                        '| dtype | d | B*H x T | kernel | best (BLOCK_M, BLOCK_N, warps, stages) | ms | '
                        'default config ms | candidates tried |', '|---|---:|---:|---|---|---:|---:|---:|']
    for dtype, D, BH, T, share in cases:
        key = ('32bit' if dtype == torch.float32 else '16bit', D)
        q, k, v = (torch.randn(BH, T, D, device='cuda', dtype=dtype) for _ in range(3))
        o, L = flash_fwd(q, k, v, True)
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
                        f = lambda: flash_fwd(q, k, v, True, cfg=c)
                    else:
                        other = 'dq' if kind == 'dkdv' else 'dkdv'
                        f = lambda: flash_bwd(q, k, v, o, L, do, True, mode='two_pass',
                                              cfgs={kind: c, other: CONFIGS[key][other]})
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
    md[1] = md[1].replace('--mode=tune`', f'--mode=tune --tune_cases={tune_cases} --tune_budget_s={budget_s:g}`')
    md.append("\n(dkdv / dq rows time the whole backward with the other kernel at its default config)\n")
    md.append("\nCONFIGS = {  # paste into flash_attn.py\n" +
              ''.join(f"    {k!r}: {v!r},\n" for k, v in best_all.items()) + "}\n")
    path = os.path.join(out_dir, 'flash_attn_tune.md' if tune_cases == 'all' else f'flash_attn_tune_{tune_cases}.md')
    _write_atomic(path, '\n'.join(md))
    print(md[-1])
    print(f"wrote {path}")


def main():
    """Check the settings, then run the benchmark or the tuner."""
    def die(msg):  # a user error: one line naming the setting and its fix, exit code 2, no traceback
        print(f"bench/flash_attn.py: error: {msg}", file=sys.stderr)
        sys.exit(2)
    if mode not in ('bench', 'tune'):
        die(f"--mode={mode!r}: use 'bench' or 'tune'")
    if sweep not in ('full', 'small', 'none'):
        die(f"--sweep={sweep!r}: use 'full', 'small' or 'none'")
    if tune_cases not in ('all', 'leaderboard'):
        die(f"--tune_cases={tune_cases!r}: use 'all' or 'leaderboard'")
    for key in ('leaderboard_rep', 'leaderboard_warmup', 'sweep_rep', 'tune_budget_s'):
        if globals()[key] <= 0:
            die(f"--{key}={globals()[key]}: must be positive")
    if mode == 'bench' and not leaderboard and sweep == 'none':
        die("--leaderboard=False with --sweep=none leaves nothing to run: enable one of them")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        die(f"--out_dir={out_dir!r} is a file: name a folder")
    if not torch.cuda.is_available():
        die("needs a CUDA GPU (the Triton kernels and SDPA's fused backends); "
            "for a correctness check on CPU run `TRITON_INTERPRET=1 python flash_attn.py`")
    if mode == 'tune':
        run_tune(tune_budget_s)
    else:
        run_bench()


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configurator.py')).read())
    main()

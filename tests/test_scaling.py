"""
Tests for scaling.py (the IsoFLOP fits, methods 1-3, and bad input) and bench/scaling.py (the sweep's budget,
cache, strategy and time limit; the report; its config checks).
    python -m pytest tests/test_scaling.py -v
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import importlib.util

import pytest

import scaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/scaling.py under another module name (the repo root's scaling.py is `scaling`)
_spec = importlib.util.spec_from_file_location('bench_scaling', os.path.join(ROOT, 'bench', 'scaling.py'))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

# a known law to generate synthetic runs from (Chinchilla's published fit)
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic_runs(noise=0.005, seed=0, budgets=(1e17, 3e17, 1e18, 3e18, 1e19, 3e19), sizes=9):
    """IsoFLOP runs drawn from TRUE with multiplicative Gaussian noise, each grid centred on the true optimum."""
    rng = np.random.default_rng(seed)
    runs = []
    for C in budgets:
        n_opt = scaling.parametric_frontier(TRUE, C)[0]
        for N in n_opt * np.logspace(-1, 1, sizes):
            D = C / (6 * N)
            loss = scaling.parametric_loss(TRUE, N, D) * (1 + noise * rng.standard_normal())
            runs.append(dict(parameters=float(N), compute_budget=C, final_loss=float(loss)))
    return runs


def test_power_law_fit_recovers_exponent():
    rng = np.random.default_rng(1)
    C = np.logspace(15, 20, 12)
    Y = 3.2e-2 * C ** 0.47 * np.exp(0.02 * rng.standard_normal(C.size))
    a, alpha = scaling.fit_power_law(C, Y)
    assert abs(alpha - 0.47) < 0.01, alpha
    assert abs(np.log(a / 3.2e-2)) < 0.3, a


def test_parametric_fit_recovers_constants_from_noisy_runs():
    runs = synthetic_runs()
    g = scaling.group_by_budget(runs)
    N = np.concatenate([v[0] for v in g.values()])
    L = np.concatenate([v[1] for v in g.values()])
    D = np.concatenate([v[2] for v in g.values()])
    p = scaling.fit_parametric(N, D, L)
    assert abs(p['alpha'] - TRUE['alpha']) < 0.05, p
    assert abs(p['beta'] - TRUE['beta']) < 0.05, p
    assert abs(p['E'] - TRUE['E']) < 0.15, p
    # the exponent of the frontier, beta/(alpha+beta), is what matters for N_opt(C)
    true_a = TRUE['beta'] / (TRUE['alpha'] + TRUE['beta'])
    assert abs(p['beta'] / (p['alpha'] + p['beta']) - true_a) < 0.03


def test_isoflop_methods_recover_optimal_size_exponent():
    runs = synthetic_runs(noise=0.002)
    true_a = TRUE['beta'] / (TRUE['alpha'] + TRUE['beta'])  # N_opt ~ C^0.452
    s = scaling.analyze(runs, n_boot=50)
    fN = s['power_laws']['parabola']['N_opt']
    assert abs(fN['exponent'] - true_a) < 0.03, fN
    assert fN['exponent_ci'][0] < fN['exponent'] < fN['exponent_ci'][1]
    assert abs(s['power_laws']['argmin']['N_opt']['exponent'] - true_a) < 0.1
    # D exponent complements N's: C = 6 N D
    assert abs(fN['exponent'] + s['power_laws']['parabola']['D_opt']['exponent'] - 1) < 1e-6


def test_course_data_argmin_and_parabola_agree(data_dir):
    runs = scaling.load_runs(os.path.join(data_dir, 'a3', 'isoflops_curves.json'))
    assert len(runs) == 72
    s = scaling.analyze(runs, n_boot=100)
    am, pb = s['power_laws']['argmin']['N_opt'], s['power_laws']['parabola']['N_opt']
    assert abs(am['exponent'] - pb['exponent']) < 0.1, (am['exponent'], pb['exponent'])
    # the bootstrap intervals overlap
    assert am['exponent_ci'][0] < pb['exponent_ci'][1] and pb['exponent_ci'][0] < am['exponent_ci'][1]
    # the course's expected answer for the argmin method: roughly 7e10 at 1e23 and 2e11 at 1e24
    assert 5e10 < am['predict']['1e+23'] < 1e11
    assert 1.5e11 < am['predict']['1e+24'] < 3e11
    # the parametric frontier agrees with the parabola method within 10% at 1e23
    assert abs(s['parametric']['predict']['1e+23']['N_opt'] / pb['predict']['1e+23'] - 1) < 0.1


@pytest.mark.parametrize('bad, msg', [
    ('{"parameters": 1}', 'non-empty JSON list'),
    ('[{"parameters": 1e6, "compute_budget": 1e18}]', "no 'final_loss'"),
    ('[{"parameters": -5, "compute_budget": 1e18, "final_loss": 3.0}]', 'positive finite'),
    ('[{"parameters": 1e6, "compute_budget": 0, "final_loss": 3.0}]', 'positive finite'),
    ('[{"parameters": 1e6, "compute_budget": 1e18, "final_loss": "3.0"}]', 'positive finite'),
    ('[1, 2]', 'expected an object'),
    ('[{"parameters": 1e6,', 'not valid UTF-8 JSON'),
    (b'\xff\xfe[]', 'not valid UTF-8 JSON'),
])
def test_bad_json_gives_clear_error(tmp_path, bad, msg):
    path = tmp_path / 'runs.json'
    path.write_bytes(bad) if isinstance(bad, bytes) else path.write_text(bad)
    with pytest.raises(ValueError, match=msg):
        scaling.load_runs(str(path))


def test_missing_file_and_single_budget(tmp_path):
    with pytest.raises(FileNotFoundError, match='--input'):
        scaling.load_runs(str(tmp_path / 'nope.json'))
    runs = [dict(parameters=n, compute_budget=1e18, final_loss=3.0 + 0.1 * i) for i, n in enumerate([1e6, 2e6, 4e6])]
    with pytest.raises(ValueError, match='2 or more compute budgets'):
        scaling.analyze(runs)


def test_analyze_command_prints_the_fits(tmp_path, data_dir):
    """scaling.py --mode=analyze prints the three fits and writes nothing."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'scaling.py'), '--mode=analyze', '--n_bootstrap=20',
                        f"--input={os.path.join(data_dir, 'a3', 'isoflops_curves.json')}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert 'parabola' in p.stdout and 'parametric' in p.stdout and 'N_opt(1e+23)' in p.stdout
    assert 'D_opt(1e+23)=2.38e+11' in p.stdout  # the handout's second question: the forks' 2.38e11 tokens
    assert os.listdir(tmp_path) == []


def test_analyze_report_writes_tables_and_plots(tmp_path, data_dir):
    p = subprocess.run([sys.executable, 'bench/scaling.py', '--mode=analyze', f'--out_dir={tmp_path}',
                        '--n_bootstrap=20', f"--input={os.path.join(data_dir, 'a3', 'isoflops_curves.json')}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert 'parabola' in p.stdout
    for f in ('scaling.md', 'scaling.json', 'scaling_isoflops.png', 'scaling_optimal.png', 'scaling_parametric.png'):
        assert (tmp_path / f).stat().st_size > 0, f
    s = json.loads((tmp_path / 'scaling.json').read_text())
    assert set(s['power_laws']) == {'argmin', 'parabola'}
    assert 'N_opt' in (tmp_path / 'scaling.md').read_text()


# -----------------------------------------------------------------------------
# Part 2: the sweep's budget, cache and strategy, driven by a fake trainer with a known law

FAKE = dict(E=1.8, A=60.0, B=900.0, alpha=0.32, beta=0.36)


class FakeTrain:
    """Stands in for a train.py run (its overrides -> its summary): loss from FAKE at the run's real N and tokens,
    plus a little noise."""

    def __init__(self, noise=0.002, seed=0, law=FAKE):
        self.calls, self.noise, self.rng, self.law = [], noise, np.random.default_rng(seed), law

    def __call__(self, ov):
        self.calls.append(ov)
        N = scaling.non_embedding_params(ov['d_model'], ov['num_layers'])
        D = ov['max_iters'] * ov['batch_size'] * ov['context_length']
        assert ov['warmup_iters'] <= ov['max_iters'] and ov['d_model'] % ov['num_heads'] == 0
        loss = scaling.parametric_loss(self.law, N, D) * (1 + self.noise * self.rng.standard_normal())
        return dict(val_loss=float(loss), train_loss=float(loss), iters=ov['max_iters'], tokens=D, time_s=0.01)


def fake_backend(fake):
    recipe = dict(data_dir='unused', context_length=64, warmup_frac=0.05, eval_iters=2, seed=0, device='cpu',
                  overrides={})
    return bench.LocalBackend(recipe, train_fn=fake)


QUERY = dict(d_model=128, num_layers=2, num_heads=2, batch_size=16, learning_rate=1e-3, train_flops=1e12)


def test_cache_makes_repeats_free_and_survives_restart(tmp_path):
    fake = FakeTrain()
    path = str(tmp_path / 'runs.json')
    sweep = bench.Sweep(path, 1e13, fake_backend(fake))
    rec, cost = sweep.query(QUERY)
    assert cost == 1e12 and sweep.flops_used == 1e12 and len(fake.calls) == 1
    again, cost = sweep.query(dict(QUERY))
    assert cost == 0 and again is rec and len(fake.calls) == 1 and sweep.flops_used == 1e12
    # the file is in Part 1's format, and a new session finds the run in its cache
    runs = scaling.load_runs(path)
    assert runs[0]['parameters'] == 12 * 2 * 128 ** 2 and runs[0]['compute_budget'] == 1e12
    sweep2 = bench.Sweep(path, 1e13, fake_backend(fake))
    _, cost = sweep2.query(QUERY)
    assert cost == 0 and len(fake.calls) == 1
    # a different recipe (here: context length) is a different run
    be = fake_backend(fake)
    be.recipe['context_length'] = 32
    _, cost = bench.Sweep(path, 1e13, be).query(QUERY)
    assert cost == 1e12 and len(fake.calls) == 2


def test_budget_refuses_over_budget_runs(tmp_path):
    fake = FakeTrain()
    sweep = bench.Sweep(str(tmp_path / 'runs.json'), 2.5e12, fake_backend(fake))
    sweep.query(QUERY)
    sweep.query(dict(QUERY, d_model=64))
    with pytest.raises(bench.BudgetExceeded, match='exceed the total budget'):
        sweep.query(dict(QUERY, d_model=192))
    assert len(fake.calls) == 2 and sweep.flops_used == 2e12 and len(sweep.runs) == 2
    # a cached config is still free when the budget is spent; an uncounted (target) run is allowed
    assert sweep.query(QUERY)[1] == 0
    rec, _ = sweep.query(dict(QUERY, train_flops=5e12), counted=False, role='target')
    assert rec['role'] == 'target' and sweep.flops_used == 2e12


def test_sweep_strategy_predicts_target_loss(tmp_path):
    fake = FakeTrain()
    be = fake_backend(fake)
    budgets = (3e12, 1e13, 3e13)
    sweep = bench.Sweep(str(tmp_path / 'runs.json'), 12 * sum(budgets), be)
    shapes = bench.model_shapes(head_dim=32)
    make_query = bench.make_query_fn(16, 3e-3)
    done, _ = bench.run_sweep(sweep, budgets, make_query, shapes, sizes=5, spread=8.0, aspect=32.0, plan=be.plan)
    assert len({r['compute_budget'] for r in done}) == 3 and len(done) >= 15
    assert sweep.flops_used <= sweep.total_budget
    # each budget's grid brackets its minimum (refinement extends a grid whose minimum sits at an end)
    for C, (N, L, _) in scaling.group_by_budget(done).items():
        assert 0 < int(np.argmin(L)) < len(N) - 1, (C, N, L)
    target = bench.predict_and_check(sweep, done, 1e14, make_query, shapes, 32.0, 1e-3, plan=be.plan)
    assert abs(target['error']) < 0.02, target
    true_n = scaling.parametric_frontier(FAKE, 1e14)[0]
    assert 0.5 < target['N_pred'] / true_n < 2, (target['N_pred'], true_n)
    assert sweep.runs[-1]['role'] == 'target' and sweep.flops_used <= sweep.total_budget
    s = bench.analyze(done, str(tmp_path), 'sw', (1e14,), n_boot=20, target=target,
                        info=dict(backend='fake', preset='test', runs=len(done), flops_used=sweep.flops_used,
                                  wall_s=0.0, recipe=be.recipe, runs_file='runs.json'))
    md = (tmp_path / 'sw.md').read_text()
    assert 'achieved loss' in md and (tmp_path / 'sw_optimal.png').exists()
    assert s['target']['achieved'] == sweep.runs[-1]['final_loss']


def _timed_sweep(tmp_path, limit):
    """A sweep on a fake clock where a run costs 1 s + 10 us a token; returns (runs, target, seconds used)."""
    now = [0.0]
    fake = FakeTrain()

    def slow_train(ov):  # 1 s to set up, then the loop
        loop = 1e-5 * ov['max_iters'] * ov['batch_size'] * ov['context_length']
        now[0] += 1.0 + loop
        return dict(fake(ov), time_s=loop)
    be = fake_backend(slow_train)
    sweep = bench.Sweep(str(tmp_path / f'runs{limit}.json'), 1e15, be, clock=lambda: now[0])
    make_query, shapes = bench.make_query_fn(16, 3e-3), bench.model_shapes(32)
    done, target_C = bench.run_sweep(sweep, (3e12, 1e13, 3e13), make_query, shapes, aspect=32.0, plan=be.plan,
                                       time_limit_s=limit, target_C=1.2e14)
    target = bench.predict_and_check(sweep, done, target_C, make_query, shapes, 32.0, 1e-3,
                                       time_left=(limit - now[0]) if limit else None, plan=be.plan)
    return done, target, now[0]


def test_time_limit_shrinks_the_plan_and_keeps_the_target_run(tmp_path):
    done, target, used = _timed_sweep(tmp_path, 0.0)  # no limit: the full plan
    assert target['C'] == 1.2e14 and max(r['compute_budget'] for r in done) == 3e13
    limit = 0.5 * used
    done, target, used = _timed_sweep(tmp_path, limit)
    budgets = sorted({r['compute_budget'] for r in done})
    assert len(budgets) == 3 and budgets[0] == 3e12 and budgets[-1] < 3e13, budgets  # shrunk, all three kept
    assert target['achieved'] is not None and target['C'] < 1.2e14  # the target shrank with them, and ran
    assert used <= 1.1 * limit, (used, limit)


def test_tiny_real_sweep_through_train_py(tmp_path, data_dir):
    """Real trainings on the CPU: byte-level tokens of real text, models of 12k-37k parameters, a few dozen steps."""
    pytest.importorskip('torch')
    if not os.path.exists(os.path.join(ROOT, 'train.py')):
        pytest.skip('train.py not written yet')
    import gzip
    text = gzip.open(os.path.join(data_dir, 'text', 'docs_en.txt.gz')).read(400_000)
    toks = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)  # one token per byte: vocab 256
    d = tmp_path / 'bytes'
    d.mkdir()
    toks[:360_000].tofile(d / 'train.bin')
    toks[360_000:].tofile(d / 'val.bin')
    (d / 'meta.json').write_text(json.dumps(dict(vocab_size=256, dtype='uint16', eot_id=0)))
    # tiny models: a second thread only adds sync overhead (100x on a busy 2-core box)
    recipe = dict(data_dir=str(d), context_length=32, warmup_frac=0.1, eval_iters=4, seed=0, device='cpu',
                  overrides={'compile': False, 'dtype': 'float32', 'cpu_threads': 1})
    _tiny_sweep(tmp_path, bench.LocalBackend(recipe))


def _tiny_sweep(tmp_path, be):
    sweep = bench.Sweep(str(tmp_path / 'runs.json'), 1e11, be)
    make_query = bench.make_query_fn(8, 3e-3)
    shapes = bench.model_shapes(head_dim=32, max_d_model=64, max_layers=3)
    done, _ = bench.run_sweep(sweep, (1.5e9, 3e9), make_query, shapes, sizes=3, refine=0, plan=be.plan)
    assert len(done) == 6 and all(2.0 < r['final_loss'] < 6.0 for r in done), [r['final_loss'] for r in done]
    assert all(r['tokens'] == r['iters'] * 8 * 32 for r in done)
    target = bench.predict_and_check(sweep, done, 6e9, make_query, shapes, 64.0, 1e-3, plan=be.plan)
    assert target['achieved'] is not None and math.isfinite(target['predicted'])
    # asking again is free: the cache answers without training
    n = len(sweep.runs)
    assert sweep.query(done[0]['config'])[1] == 0 and len(sweep.runs) == n
    assert len(scaling.load_runs(str(tmp_path / 'runs.json'))) == 7


def test_time_model_errs_on_the_long_side():
    """Outside the sizes measured the per-token cost is not extrapolated along a (flat, launch-bound) slope: it
    stays at the smallest model's below them and grows like N above them; every estimate carries the margin."""
    tm = bench.TimeModel(margin=1.1)
    for n, spt in ((1e5, 1e-7), (2e5, 1.05e-7), (4e5, 1.1e-7)):  # nearly flat: launch-bound small models
        tm.add(dict(parameters=n, tokens=1e8, time_s=spt * 1e8, wall_s=spt * 1e8 + 2.0))
    inside = tm.estimate(2e5, 1e8)
    assert abs(inside - (2.0 + 1.05e-7 * 1e8)) < 0.5, inside
    assert abs(tm.estimate(2e5, 1e8, upper=True) - 1.1 * inside) < 0.5
    # 10x the largest size: the upper estimate takes 10x its cost a token, the plain one the fitted slope
    assert tm.estimate(4e6, 1e8, upper=True) >= 1.1 * (2.0 + 10 * 1.1e-7 * 1e8) * 0.99
    assert 2.0 + 1.1e-7 * 1e8 < tm.estimate(4e6, 1e8) < tm.estimate(4e6, 1e8, upper=True) / 5
    assert tm.estimate(1e4, 1e8) >= tm.estimate(1e5, 1e8) * 0.99  # below the smallest: no cheaper per token


# a law whose optimum sits at D/N ~ 60, as byte-level runs had on the CPU (FAKE's sits at D/N ~ 600)
BYTES = dict(E=0.9, A=117.0, B=400.0, alpha=0.3, beta=0.3)


@pytest.mark.parametrize('law, ceiling, flops', [(BYTES, 8e6, 2e14), (BYTES, 3.2e6, 8e13), (FAKE, 8e6, 2e14)])
def test_gpu_preset_plan_fits_its_time_limit(tmp_path, law, ceiling, flops):
    """The gpu preset on a simulated H100 (fake clock; eager small models: launch-bound at `ceiling` tokens/s,
    then compute-bound at `flops`) at the guessed speed and 2.5x slower, and with a much more data-hungry law:
    the sweep and the target run end inside time_limit_s, with >= 3 budgets x 5 sizes and a target >= 3x the
    largest budget, trained."""
    P = bench.PRESETS['gpu']
    assert P['data_dir'] == 'data/pycode_bytes' and P['train_overrides']['compile'] is False
    if True:
        now = [0.0]
        fake = FakeTrain(law=law)

        def h100(ov):
            N = scaling.non_embedding_params(ov['d_model'], ov['num_layers'])
            tokens = ov['max_iters'] * ov['batch_size'] * ov['context_length']
            loop = tokens * (1 / ceiling + 6 * N / flops)
            now[0] += (15.0 if not fake.calls else 0.0) + 1.5 + loop  # CUDA start-up once, data + model each run
            return dict(fake(ov), time_s=loop)
        recipe = dict(data_dir='unused', context_length=P['context_length'], warmup_frac=0.05, eval_iters=20,
                      seed=0, device='', overrides=P['train_overrides'])
        be = bench.LocalBackend(recipe, train_fn=h100)
        sweep = bench.Sweep(str(tmp_path / f'runs{ceiling:.0f}.json'), P['total_budget'], be, clock=lambda: now[0])
        make_query, shapes = bench.make_query_fn(P['batch_size'], P['learning_rate']), bench.model_shapes(64)
        limit = P['time_limit_s']
        done, target_C = bench.run_sweep(sweep, P['budgets'], make_query, shapes, 5, P['size_spread'],
                                           P['tokens_per_param'], 64.0, time_limit_s=limit,
                                           target_C=P['target_ratio'] * P['budgets'][-1], plan=be.plan,
                                           spread_later=P['size_spread_later'],
                                           min_target_ratio=P['min_target_ratio'])
        target = bench.predict_and_check(sweep, done, target_C, make_query, shapes, 64.0, 1e-3,
                                           time_left=limit - now[0], plan=be.plan,
                                           min_target_ratio=P['min_target_ratio'])
        groups = scaling.group_by_budget(done)
        assert sum(len(g[0]) >= 5 for g in groups.values()) >= 3, {c: len(g[0]) for c, g in groups.items()}
        assert target['achieved'] is not None and target['ratio'] >= P['min_target_ratio'] - 1e-9, target
        assert now[0] <= limit, (ceiling, now[0], limit)
        print(f"ceiling {ceiling:.1e} tok/s: {len(done)} runs at {len(groups)} budgets, target {target['C']:.2g} "
              f"({target['ratio']:.1f}x), {now[0]:.0f}s of {limit:.0f}s")


# -----------------------------------------------------------------------------
# Bad input (issue 32): one line naming the key, exit code 2, no traceback, nothing written or changed

def _refused(script, args, cwd, needle):
    """Run `script args` in cwd; it must refuse with one line on stderr that contains needle."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, p.stdout[-1000:], p.stderr[-2000:])
    assert len(lines) == 1 and 'Traceback' not in p.stderr, p.stderr
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _write_runs(path, budgets=(1e18, 3e18)):
    runs = [dict(parameters=n, compute_budget=c, final_loss=3.0 + 0.1 * abs(math.log(n / 2e6)))
            for c in budgets for n in (1e6, 2e6, 4e6)]
    path.write_text(json.dumps(runs))
    return path.read_text()


@pytest.mark.parametrize('args, needle', [
    ('--mode=sweep', 'bench/scaling.py'),
    ('--n_bootstrap=-1', '--n_bootstrap'),
    ('--huber_delta=0', '--huber_delta'),
    ('--extrapolate_to=(0,)', '--extrapolate_to'),
    ('--input=missing.json', 'missing.json'),
    ('--input=bad.json', 'not valid UTF-8 JSON'),
    ('--input=one_budget.json', '2 or more budgets'),
    ('--input=.', '.'),
    ('--n_bootstrap=many', 'n_bootstrap'),
    ('--input=one_run.json', 'compute_budget 3e+18 has fewer than 3 model sizes'),
    ('--input=bad_tokens.json', 'tokens=-5'),
    ('--input=flat_in_d.json', 'no compute-optimal frontier'),
])
def test_scaling_refuses_bad_config(tmp_path, args, needle):
    (tmp_path / 'bad.json').write_text('[{"parameters": 1e6,')
    _write_runs(tmp_path / 'one_budget.json', budgets=(1e18,))
    runs = json.loads(_write_runs(tmp_path / 'one_run.json'))  # a budget with one run has no IsoFLOP minimum
    (tmp_path / 'one_run.json').write_text(json.dumps(runs[:4]))
    (tmp_path / 'bad_tokens.json').write_text(json.dumps([dict(runs[0], tokens=-5)] + runs[1:]))
    flat = [dict(parameters=n, compute_budget=c, final_loss=3.0)  # the same loss everywhere: no frontier
            for c in (1e18, 3e18, 1e19) for n in (1e6, 2e6, 4e6, 8e6)]
    (tmp_path / 'flat_in_d.json').write_text(json.dumps(flat))
    before = sorted(os.listdir(tmp_path))
    _refused('scaling.py', args.split(), tmp_path, needle)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize('args, needle', [
    ('--mode=fit', '--mode'),
    ('--preset=huge', '--preset'),
    ('--preset=none --budgets=(1e10,)', '2 or more different budgets'),
    ('--preset=none --budgets=()', '--budgets'),
    ('--preset=cpu --sizes_per_budget=2', '--sizes_per_budget'),
    ('--preset=cpu --warmup_frac=1.5', '--warmup_frac'),
    ('--preset=cpu --batch_size=0', '--batch_size'),
    ('--preset=cpu --size_spread=1.0', '--size_spread'),
    ('--preset=cpu --time_limit_s=-1', '--time_limit_s'),
    ('--preset=cpu --data_dir=no_such_folder', 'no_such_folder'),
    ('--backend=remote', '--api_key'),
    ('--name=a/b', '--name'),
])
def test_bench_scaling_refuses_bad_config(tmp_path, args, needle):
    _refused('bench/scaling.py', [*args.split(), f'--out_dir={tmp_path / "out"}'], tmp_path, needle)
    assert os.listdir(tmp_path) == []


def test_bench_scaling_never_overwrites_its_input(tmp_path):
    """The report's <name>.json would be the runs file itself: refused, the runs untouched."""
    text = _write_runs(tmp_path / 'runs.json')
    _refused('bench/scaling.py', ['--mode=analyze', '--input=runs.json', f'--out_dir={tmp_path}', '--name=runs'],
             tmp_path, 'runs.json')
    assert (tmp_path / 'runs.json').read_text() == text and os.listdir(tmp_path) == ['runs.json']


def _token_folder(d):
    """A minimal token folder (train.bin, val.bin, meta.json) that passes the sweep's data check."""
    d.mkdir()
    for f in ('train.bin', 'val.bin'):
        np.zeros(1000, dtype=np.uint16).tofile(d / f)
    (d / 'meta.json').write_text(json.dumps(dict(vocab_size=256, dtype='uint16', eot_id=0)))
    return d


def test_bench_scaling_sweep_cache_is_not_a_report_file(tmp_path):
    d = _token_folder(tmp_path / 'bytes')
    _refused('bench/scaling.py', ['--preset=cpu', f'--data_dir={d}', f'--out_dir={tmp_path / "out"}',
                                  '--name=sw', f'--sweep_json={tmp_path / "out" / "sw.json"}'], tmp_path, 'sw.json')
    assert os.listdir(tmp_path) == ['bytes']


def test_bench_scaling_refuses_a_broken_sweep_cache(tmp_path):
    """A corrupt --sweep_json (the cache of an earlier sweep) is refused before anything is trained, and kept."""
    d = _token_folder(tmp_path / 'bytes')
    (tmp_path / 'cache.json').write_text('[{"parameters": 1e6')
    before = {p: os.path.getmtime(os.path.join(tmp_path, p)) for p in os.listdir(tmp_path)}
    _refused('bench/scaling.py', ['--preset=cpu', f'--data_dir={d}', '--sweep_json=cache.json',
                                  f'--out_dir={tmp_path / "out"}'], tmp_path, '--sweep_json')
    assert (tmp_path / 'cache.json').read_text() == '[{"parameters": 1e6'
    assert {p: os.path.getmtime(os.path.join(tmp_path, p)) for p in os.listdir(tmp_path)} == before


def test_summary_notes_a_minimum_at_the_edge_of_its_curve(capsys):
    """A budget whose best run is its largest model: its N_opt lies beyond the sizes run, and the summary says so."""
    loss = lambda n, c: 1.7 + 400 / n ** 0.34 + 410 / (c / 6 / n) ** 0.28  # a Chinchilla-like L(N, D = C / 6N)
    sizes = {1e17: (1e7, 3e7, 9e7), 1e18: (3e7, 9e7, 2.7e8), 1e19: (3e7, 6e7, 1.2e8)}  # 1e19: all below N_opt
    runs = [dict(parameters=n, compute_budget=c, final_loss=loss(n, c)) for c, ns in sizes.items() for n in ns]
    scaling.print_summary(scaling.analyze(runs, n_boot=0))
    assert 'note: at C = 1e+19 the best run is the smallest or largest size' in capsys.readouterr().out

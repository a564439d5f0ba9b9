"""
Tests for scaling.py: the IsoFLOP fits (methods 1-3), bad input, and the sweep's budget and cache.
    python -m pytest tests/test_scaling.py -v
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import scaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    s = scaling.analyze(runs, n_boot=50, write=False)
    fN = s['power_laws']['parabola']['N_opt']
    assert abs(fN['exponent'] - true_a) < 0.03, fN
    assert fN['exponent_ci'][0] < fN['exponent'] < fN['exponent_ci'][1]
    assert abs(s['power_laws']['argmin']['N_opt']['exponent'] - true_a) < 0.1
    # D exponent complements N's: C = 6 N D
    assert abs(fN['exponent'] + s['power_laws']['parabola']['D_opt']['exponent'] - 1) < 1e-6


def test_course_data_argmin_and_parabola_agree(data_dir):
    runs = scaling.load_runs(os.path.join(data_dir, 'a3', 'isoflops_curves.json'))
    assert len(runs) == 72
    s = scaling.analyze(runs, n_boot=100, write=False)
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
    ('[{"parameters": 1e6,', 'not valid JSON'),
])
def test_bad_json_gives_clear_error(tmp_path, bad, msg):
    path = tmp_path / 'runs.json'
    path.write_text(bad)
    with pytest.raises(ValueError, match=msg):
        scaling.load_runs(str(path))


def test_missing_file_and_single_budget(tmp_path):
    with pytest.raises(FileNotFoundError, match='--input'):
        scaling.load_runs(str(tmp_path / 'nope.json'))
    runs = [dict(parameters=n, compute_budget=1e18, final_loss=3.0 + 0.1 * i) for i, n in enumerate([1e6, 2e6, 4e6])]
    with pytest.raises(ValueError, match='2 or more compute budgets'):
        scaling.analyze(runs, write=False)


def test_analyze_command_writes_tables_and_plots(tmp_path, data_dir):
    p = subprocess.run([sys.executable, 'scaling.py', '--mode=analyze', f'--out_dir={tmp_path}', '--n_bootstrap=20',
                        f"--input={os.path.join(data_dir, 'a3', 'isoflops_curves.json')}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert 'parabola' in p.stdout
    for f in ('scaling.md', 'scaling.json', 'scaling_isoflops.png', 'scaling_optimal.png', 'scaling_parametric.png'):
        assert (tmp_path / f).stat().st_size > 0, f
    s = json.loads((tmp_path / 'scaling.json').read_text())
    assert set(s['power_laws']) == {'argmin', 'parabola'}
    assert 'N_opt' in (tmp_path / 'scaling.md').read_text()

"""
scaling.py: scaling laws from real runs, and the compute-optimal model for a FLOP budget (Chinchilla-style).

The question: "given C FLOPs, how many parameters N and how many tokens D, and what loss will I get?"
Training cost is C = 6*N*D (2 FLOPs per multiply-add forward, twice that backward; Kaplan et al. 2020, sec. 2.1),
with N = 12 * num_layers * d_model^2 non-embedding parameters (4*d^2 attention + 8*d^2 MLP per layer).
We answer it three ways, following Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"):

  1) argmin:    per compute budget C, the run with the lowest loss gives N_opt(C); D_opt = C / (6 N_opt).
  2) parabola:  per budget, fit loss as a parabola in log N ("IsoFLOP profile") and take its vertex (Chinchilla 3.2).
     For 1) and 2) we fit power laws N_opt = a * C^alpha, D_opt = b * C^beta (least squares in log space)
     with bootstrap confidence intervals, and extrapolate to big budgets (1e23, 1e24 FLOPs).
  3) parametric: fit L(N, D) = E + A/N^alpha + B/D^beta to every run with a Huber loss on log L, L-BFGS from a
     grid of initial points (Chinchilla 3.3). Minimizing it under C = 6ND gives the frontier in closed form:
     N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)/N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)).

The input is a JSON list of runs {parameters, compute_budget, final_loss} (extra keys are kept): the course's
IsoFLOP set, or the runs a sweep of our own trained (bench/scaling.py).

    python scaling.py --mode=analyze --input=../shared/data/a3/isoflops_curves.json    # prints the three fits
    python bench/scaling.py --mode=analyze                      # the same, plus results/scaling.md and 3 plots
    python bench/scaling.py --preset=cpu --data_dir=data/docs   # IsoFLOP grids trained by train.py, then a check
The sweep (bench/scaling.py) is the local twin of the course's training API: a config plus a FLOP budget per
query, a cache, a cap on the total FLOPs, and a real run at a larger budget to check the prediction.
"""
import json
import math
import os
import sys

# The fits here are tiny (5 parameters, ~100 points): BLAS threads only add overhead, and on a busy machine
# they made each L-BFGS step many times slower. OpenBLAS reads this once, when scipy loads it just below.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
import numpy as np  # noqa: E402 (after the BLAS setting above)
from scipy import optimize, special  # noqa: E402

# -----------------------------------------------------------------------------
mode = 'analyze'  # the only mode here: fit the runs in --input (the sweep is python bench/scaling.py)
input = ''  # runs to analyze: JSON list of {parameters, compute_budget, final_loss}; '' = the course's IsoFLOP set
extrapolate_to = (1e23, 1e24)  # FLOP budgets to predict N_opt, D_opt and loss for
n_bootstrap = 1000  # bootstrap resamples for the confidence intervals (runs resampled within each budget)
huber_delta = 1e-3  # Huber loss threshold on log-loss residuals for the parametric fit (Chinchilla uses 1e-3)
seed = 1337  # bootstrap seed
# -----------------------------------------------------------------------------


# The runs: read, check, and group by compute budget

def load_runs(path):
    """Read a JSON list of runs {parameters, compute_budget, final_loss} (extra keys are kept) and check it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"runs file {path!r} not found: give --input=<JSON list of "
                                f"{{parameters, compute_budget, final_loss}}> (the course's is "
                                f"../shared/data/a3/isoflops_curves.json)")
    with open(path, encoding='utf-8') as f:
        try:
            runs = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a truncated file, or not text at all
            raise ValueError(f"{path}: not valid UTF-8 JSON ({e}): give the runs file") from None
    return check_runs(runs, path)


def check_runs(runs, where='runs'):
    """Every run must have positive, finite parameters, compute_budget and final_loss."""
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{where}: expected a non-empty JSON list of runs, got {type(runs).__name__}")
    for i, r in enumerate(runs):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: run #{i} is a {type(r).__name__}, expected an object "
                             f"{{parameters, compute_budget, final_loss}}")
        for k in ('parameters', 'compute_budget', 'final_loss'):
            if k not in r:
                raise ValueError(f"{where}: run #{i} has no '{k}' (keys: {sorted(r)}); each run needs "
                                 f"parameters, compute_budget and final_loss")
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{where}: run #{i} has {k}={v!r}; it must be a positive finite number")
        v = r.get('tokens')  # optional: the run's real token count (group_by_budget uses it as D)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise ValueError(f"{where}: run #{i} has tokens={v!r}; it must be a positive finite number "
                             f"(or leave the key out: D = C / (6 N))")
    return runs


def group_by_budget(runs):
    """{C: (N array, L array, D array)} sorted by C, N ascending within a budget.
    D is the run's real token count when recorded ('tokens'), else C/(6N)."""
    groups = {}
    for r in runs:
        groups.setdefault(float(r['compute_budget']), []).append(r)
    out = {}
    for C in sorted(groups):
        rs = sorted(groups[C], key=lambda r: r['parameters'])
        N = np.array([r['parameters'] for r in rs], dtype=float)
        L = np.array([r['final_loss'] for r in rs], dtype=float)
        D = np.array([r.get('tokens') or C / (6 * r['parameters']) for r in rs], dtype=float)
        out[C] = (N, L, D)
    return out


# -----------------------------------------------------------------------------
# Methods 1 and 2: the optimum of each IsoFLOP curve, then power laws through the optima

def argmin_optimum(N, L):
    """Method 1: the best run of the curve. Returns (N_opt, L_opt, at_edge)."""
    i = int(np.argmin(L))
    return N[i], L[i], i in (0, len(N) - 1)


def parabola_fit(N, L):
    """Method 2: L ~ p2 x^2 + p1 x + p0 with x = log10 N; returns (coeffs, N_opt, L_opt, at_edge) or None when
    the curve has fewer than 3 distinct sizes or is not convex (then there is no minimum to take)."""
    x = np.log10(N)
    if len(np.unique(x)) < 3:
        return None
    p = np.polyfit(x, L, 2)
    if p[0] <= 0:
        return None
    x_opt = -p[1] / (2 * p[0])
    # a vertex outside the sampled sizes is an extrapolation: the sweep adds sizes there
    at_edge = x_opt <= x.min() or x_opt >= x.max()
    return p, 10 ** x_opt, np.polyval(p, x_opt), at_edge


def isoflop_optima(groups, method):
    """Per budget: (C, N_opt, D_opt, L_opt, at_edge) with method 'argmin' or 'parabola'.
    A curve without a convex parabola, or whose vertex lies outside its sizes, falls back to its argmin
    (and says so in 'fallback')."""
    rows = []
    for C, (N, L, _) in groups.items():
        fit = parabola_fit(N, L) if method == 'parabola' else None
        if fit is not None and not fit[3]:
            _, n, l, edge = fit
            fallback = False
        else:  # no convex parabola, or its vertex outside the sampled sizes: do not extrapolate, take the best run
            n, l, edge = argmin_optimum(N, L)
            fallback = method == 'parabola'
        rows.append(dict(C=C, N_opt=float(n), D_opt=float(C / (6 * n)), L_opt=float(l),
                         at_edge=bool(edge), fallback=fallback))
    return rows


def fit_power_law(C, Y):
    """Y = a * C^alpha by least squares on log10 Y = log10 a + alpha log10 C; returns (a, alpha)."""
    x, y = np.log10(np.asarray(C, dtype=float)), np.log10(np.asarray(Y, dtype=float))
    res = optimize.least_squares(lambda p: p[0] + p[1] * x - y, x0=(0.0, 0.5), method='lm' if len(x) > 2 else 'trf')
    log_a, alpha = res.x
    return 10 ** log_a, alpha


def power_law_with_ci(groups, method, extrapolate, n_boot, rng):
    """Fit N_opt(C), D_opt(C) and L_opt(C) power laws for one method, with a bootstrap over runs.

    Bootstrap: resample the runs of every budget with replacement, redo the per-budget optima and the fits;
    the 2.5/97.5 percentiles give 95% intervals for the exponents and the extrapolated values."""
    rows = isoflop_optima(groups, method)
    C = np.array([r['C'] for r in rows])
    fits = {}
    for key in ('N_opt', 'D_opt', 'L_opt'):
        a, alpha = fit_power_law(C, np.array([r[key] for r in rows]))
        fits[key] = dict(coef=a, exponent=alpha, predict={f"{c:.0e}": a * c ** alpha for c in extrapolate})
    boot = {k: [] for k in fits}
    for _ in range(n_boot):
        sample = {}
        for c, (N, L, D) in groups.items():
            idx = rng.integers(0, len(N), len(N))
            idx = idx[np.argsort(N[idx], kind='stable')]
            sample[c] = (N[idx], L[idx], D[idx])
        b_rows = isoflop_optima(sample, method)
        for key in fits:
            a, alpha = fit_power_law(C, np.array([r[key] for r in b_rows]))
            boot[key].append([alpha] + [a * c ** alpha for c in extrapolate])
    for key in fits:
        if not boot[key]:
            continue
        arr = np.array(boot[key])
        lo, hi = np.percentile(arr, [2.5, 97.5], axis=0)
        fits[key]['exponent_ci'] = [lo[0], hi[0]]
        fits[key]['predict_ci'] = {f"{c:.0e}": [lo[i + 1], hi[i + 1]] for i, c in enumerate(extrapolate)}
    return rows, fits


# -----------------------------------------------------------------------------
# Method 3: the parametric loss L(N, D) = E + A/N^alpha + B/D^beta

def _parametric_objective(theta, logN, logD, logL, delta):
    """Sum of Huber(LSE(a - alpha logN, b - beta logD, e) - log L) and its gradient (Chinchilla sec. 3.3, eq. 3).
    theta = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e): working with logs keeps every term
    positive and the fit well scaled across decades of N and D."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])  # (3, n)
    lse = special.logsumexp(terms, axis=0)  # log of the predicted loss, (n,)
    r = lse - logL
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r ** 2, delta * (absr - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta)  # Huber derivative
    w = np.exp(terms - lse)  # softmax weights = d lse / d terms, (3, n)
    grad = np.array([(dr * w[0]).sum(), (dr * w[1]).sum(), (dr * w[2]).sum(),
                     -(dr * w[0] * logN).sum(), -(dr * w[1] * logD).sum()])
    return loss, grad


def fit_parametric(N, D, L, delta=1e-3, init=None, n_starts=16):
    """Fit L(N, D) = E + A/N^alpha + B/D^beta; returns dict(E, A, B, alpha, beta, objective).

    L-BFGS from the best `n_starts` points of a grid of initializations (Chinchilla's grid, a little coarser),
    keeping the best optimum; with `init` (a previous theta) a single start (the bootstrap warm-starts from the fit)."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    if init is not None:
        starts = [np.asarray(init, dtype=float)]
    else:
        grid = np.array(np.meshgrid([0., 5., 10., 15., 20., 25.], [0., 5., 10., 15., 20., 25.],
                                    [-1., -0.5, 0., 0.5, 1.], [0., 0.5, 1., 1.5], [0., 0.5, 1., 1.5],
                                    indexing='ij')).reshape(5, -1).T  # (a, b, e, alpha, beta) x 2880
        # rank the grid by its objective (cheap, vectorized below) and run L-BFGS from the best starts:
        # most starts fall into the same few basins, so this gives the same optimum at a fraction of the cost
        vals = np.array([_parametric_objective(t, logN, logD, logL, delta)[0] for t in grid])
        starts = grid[np.argsort(vals)[:n_starts]]
    best = None
    for t0 in starts:
        res = optimize.minimize(_parametric_objective, t0, args=(logN, logD, logL, delta), jac=True,
                                method='L-BFGS-B', options=dict(maxiter=1000, gtol=1e-10, ftol=1e-13))
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return dict(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta),
                objective=float(best.fun), theta=[float(v) for v in best.x])


def parametric_loss(p, N, D):
    """L(N, D) = E + A/N^alpha + B/D^beta."""
    return p['E'] + p['A'] / np.asarray(N, dtype=float) ** p['alpha'] + p['B'] / np.asarray(D, dtype=float) ** p['beta']


def parametric_frontier(p, C):
    """Minimize L(N, D) subject to 6ND = C: returns (N_opt, D_opt, L_opt) (Chinchilla Appendix D.2)."""
    C = np.asarray(C, dtype=float)
    alpha, beta = p['alpha'], p['beta']
    G = (alpha * p['A'] / (beta * p['B'])) ** (1 / (alpha + beta))
    N = G * (C / 6) ** (beta / (alpha + beta))
    D = (C / 6) / N
    return N, D, parametric_loss(p, N, D)


def parametric_with_ci(N, D, L, delta, extrapolate, n_boot, rng):
    """The parametric fit plus a bootstrap (runs resampled, warm-started L-BFGS) for its exponents."""
    p = fit_parametric(N, D, L, delta)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        q = fit_parametric(N[idx], D[idx], L[idx], delta, init=p['theta'])
        if q['alpha'] > 0 and q['beta'] > 0:
            a = q['beta'] / (q['alpha'] + q['beta'])
            boot.append([q['alpha'], q['beta'], a] + list(parametric_frontier(q, extrapolate)[0]))
    if boot:
        lo, hi = np.percentile(np.array(boot), [2.5, 97.5], axis=0)
        p['alpha_ci'], p['beta_ci'], p['N_exponent_ci'] = [lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]
        p['N_predict_ci'] = {f"{c:.0e}": [lo[3 + i], hi[3 + i]] for i, c in enumerate(extrapolate)}
    return p



def non_embedding_params(d_model, num_layers):
    """N = 12 * num_layers * d_model^2: 4 d^2 for Q, K, V, O and 8 d^2 for the MLP (SwiGLU with d_ff = 8/3 d).
    The embedding and output layers are left out (Kaplan et al. 2020): with a small vocabulary they cost little."""
    return 12 * num_layers * d_model ** 2


# -----------------------------------------------------------------------------
# The whole analysis: methods 1-3 on one set of runs

def analyze(runs, extrapolate=(1e23, 1e24), n_boot=1000, delta=1e-3, seed=0):
    """Run methods 1-3 on `runs`; returns the summary dict (every fitted number, JSON-ready):
    n_runs, budgets, optima[method] (per-budget rows), power_laws[method][N_opt|D_opt|L_opt], parametric."""
    runs = check_runs(runs)
    groups = group_by_budget(runs)
    if len(groups) < 2:
        raise ValueError(f"need runs at 2 or more compute budgets to fit a scaling law, got {len(groups)}")
    rng = np.random.default_rng(seed)
    extrapolate = tuple(float(c) for c in extrapolate)
    # methods 1 and 2: per-budget optima, then power laws through them
    opt_rows, fits = {}, {}
    for method in ('argmin', 'parabola'):
        opt_rows[method], fits[method] = power_law_with_ci(groups, method, extrapolate, n_boot, rng)
    # method 3: one surface through every run; its bootstrap refits from a warm start, so a tenth of the resamples
    N = np.concatenate([g[0] for g in groups.values()])  # (n_runs,)
    L = np.concatenate([g[1] for g in groups.values()])
    D = np.concatenate([g[2] for g in groups.values()])
    par = parametric_with_ci(N, D, L, delta, extrapolate, max(n_boot // 10, 0), rng)
    if not (par['alpha'] > 1e-6 and par['beta'] > 1e-6 and par['A'] > 0 and par['B'] > 0):
        raise ValueError(f"the parametric fit L(N,D) = E + A/N^alpha + B/D^beta gave alpha={par['alpha']:.3g}, "
                         f"beta={par['beta']:.3g}, A={par['A']:.3g}, B={par['B']:.3g}: the loss does not fall with "
                         f"both N and D, so there is no compute-optimal frontier; check the runs' final_loss")
    pred = parametric_loss(par, N, D)
    par['rmse'] = float(np.sqrt(np.mean((pred - L) ** 2)))
    par['mean_abs_rel_err'] = float(np.mean(np.abs(pred - L) / L))
    fN, fD, fL = parametric_frontier(par, extrapolate)
    par['predict'] = {f"{c:.0e}": dict(N_opt=float(n), D_opt=float(d), loss=float(l))
                      for c, n, d, l in zip(extrapolate, fN, fD, fL)}
    # the frontier's exponents: N_opt ~ C^(beta/(alpha+beta)), D_opt ~ C^(alpha/(alpha+beta)); they sum to 1
    par['N_exponent'] = par['beta'] / (par['alpha'] + par['beta'])
    par['D_exponent'] = par['alpha'] / (par['alpha'] + par['beta'])
    return dict(n_runs=len(runs), budgets=list(groups), optima=opt_rows, power_laws=fits, parametric=par)


def ci_text(ci, fmt='{:.3f}'):
    """' [lo, hi]' for a 95% interval, '' when there is none (no bootstrap)."""
    return f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else ''


def print_summary(s):
    """One line per method: the exponents with their intervals and the extrapolated N_opt."""
    for method in ('argmin', 'parabola'):
        fN, fD = s['power_laws'][method]['N_opt'], s['power_laws'][method]['D_opt']
        pred = ', '.join(f"N_opt({c})={v:.3g}, D_opt({c})={fD['predict'][c]:.3g}" for c, v in fN['predict'].items())
        print(f"{method:9s}: N_opt ~ C^{fN['exponent']:.3f}{ci_text(fN.get('exponent_ci'))}, "
              f"D_opt ~ C^{fD['exponent']:.3f}{ci_text(fD.get('exponent_ci'))}; {pred}")
    edge = [f"{r['C']:.3g}" for r in s['optima']['argmin'] if r['at_edge']]
    if edge:  # the curve's minimum is not bracketed: its true N_opt lies beyond the sizes that were run
        print(f"note: at C = {', '.join(edge)} the best run is the smallest or largest size of its curve; "
              f"add sizes beyond it")
    p = s['parametric']
    pred = ', '.join(f"N_opt({c})={v['N_opt']:.3g} loss {v['loss']:.3f}" for c, v in p['predict'].items())
    print(f"parametric: E={p['E']:.3f} A={p['A']:.4g} B={p['B']:.4g} alpha={p['alpha']:.3f} beta={p['beta']:.3f} "
          f"(N_opt ~ C^{p['N_exponent']:.3f}), rmse {p['rmse']:.4f}; {pred}")


# -----------------------------------------------------------------------------
# The command

def default_input():
    """The course's IsoFLOP runs in the shared data folder ($LMSCRATCH_DATA, else ../shared/data)."""
    data = os.environ.get('LMSCRATCH_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared',
                                                         'data'))
    return os.path.join(data, 'a3', 'isoflops_curves.json')


def die(msg):
    """A user error: one line on stderr, exit code 2, nothing written (issue 32)."""
    print(f"scaling.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    """Check the config, read --input, fit methods 1-3 and print them (the tables and plots: bench/scaling.py)."""
    # 1) every key before any work: a typo costs nothing
    if mode != 'analyze':
        die(f"--mode={mode!r}: scaling.py only analyzes (--mode=analyze); the sweep is "
            f"python bench/scaling.py --preset=cpu")
    if n_bootstrap < 0:
        die(f"--n_bootstrap={n_bootstrap}: give 0 (no intervals) or more resamples, e.g. --n_bootstrap=1000")
    if not huber_delta > 0:
        die(f"--huber_delta={huber_delta}: the Huber threshold must be > 0 (Chinchilla: 1e-3)")
    if not extrapolate_to or not all(isinstance(c, (int, float)) and c > 0 for c in extrapolate_to):
        die(f"--extrapolate_to={extrapolate_to!r}: give positive FLOP budgets, e.g. --extrapolate_to='(1e23,1e24)'")
    # 2) the runs; a sweep's file also holds its target (check) runs, which are not part of the fit
    path = input or default_input()
    try:
        runs = load_runs(path)
    except (OSError, ValueError) as e:
        die(e)
    targets = [r for r in runs if r.get('role') == 'target']
    if targets:
        print(f"leaving out {len(targets)} target run(s) of {path}")
        runs = [r for r in runs if r.get('role') != 'target']
    groups = group_by_budget(runs)
    if len(groups) < 2:
        die(f"{path}: every run has the same compute_budget; a scaling law needs runs at 2 or more budgets")
    few = [f"{C:.3g}" for C, (N, _, _) in groups.items() if len(np.unique(N)) < 3]
    if few:
        die(f"{path}: compute_budget {', '.join(few)} has fewer than 3 model sizes: an IsoFLOP curve needs 3 or "
            f"more (sizes around its minimum) to have a minimum; add runs there or leave that budget out")
    # 3) fit and print
    try:
        s = analyze(runs, extrapolate_to, n_bootstrap, huber_delta, seed)
    except ValueError as e:
        die(f"{path}: {e}")
    print_summary(s)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

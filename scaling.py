"""
scaling.py: scaling laws from real runs, and the compute-optimal model for a FLOP budget (Chinchilla-style).

The question: "given C FLOPs, how many parameters N and how many tokens D, and what loss will I get?"
Training cost is C = 6*N*D (2 FLOPs per multiply-add forward, twice that backward; Kaplan et al. 2020, eq. 2.1),
with N = 12 * num_layers * d_model^2 non-embedding parameters (4*d^2 attention + 8*d^2 MLP per layer).
We answer it three ways, following Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"):

  1) argmin:    per compute budget C, the run with the lowest loss gives N_opt(C); D_opt = C / (6 N_opt).
  2) parabola:  per budget, fit loss as a parabola in log N ("IsoFLOP profile") and take its vertex (Chinchilla 3.2).
     For 1) and 2) we fit power laws N_opt = a * C^alpha, D_opt = b * C^beta (least squares in log space)
     with bootstrap confidence intervals, and extrapolate to big budgets (1e23, 1e24 FLOPs).
  3) parametric: fit L(N, D) = E + A/N^alpha + B/D^beta to every run with a Huber loss on log L, L-BFGS from a
     grid of initial points (Chinchilla 3.3). Minimizing it under C = 6ND gives the frontier in closed form:
     N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)/N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)).

Modes
    python scaling.py --mode=analyze --input=../shared/data/a3/isoflops_curves.json   # Part 1: seconds on a CPU
    python scaling.py --mode=sweep --preset=gpu --data_dir=data/pycode                   # Part 2: real trainings
    python scaling.py --mode=sweep --backend=remote --api_url=... --api_key=...          # the course's training API

The sweep is the local twin of the course's "training API": every query is a config plus a FLOP budget
(train_flops); results are cached by config (asking again costs nothing), the total FLOPs spent are capped
(a query that would go over is refused), and every result is appended to a JSON list in the same format that
--mode=analyze reads ({parameters, compute_budget, final_loss} plus the config). The strategy: IsoFLOP grids at a
few small budgets (each centred on the optimum the previous budgets predict), extra sizes wherever the minimum sits
at the edge of a grid, then a fit, a prediction of the optimal config and loss for a larger target budget, and a
real training of that config to check the prediction. The trainings call train.py's `train(cfg) -> summary`.

Outputs (prefix set by --name): results/<name>.md (tables), results/<name>.json (every fitted number),
results/<name>_isoflops.png, results/<name>_optimal.png, results/<name>_parametric.png.
"""
import json
import math
import os
import sys
import time

import numpy as np
from scipy import optimize, special

# -----------------------------------------------------------------------------
# what to do
mode = 'analyze' # 'analyze': fit the runs in --input; 'sweep': run trainings (or query the API), then fit
input = '' # runs to analyze: JSON list of {parameters, compute_budget, final_loss}; '' = the course's IsoFLOP set
out_dir = 'results' # where the tables, plots and fit summary go
name = '' # prefix of the output files; '' = 'scaling' (analyze) or 'scaling_sweep' (sweep)
extrapolate_to = (1e23, 1e24) # FLOP budgets to predict N_opt, D_opt and loss for
n_bootstrap = 1000 # bootstrap resamples for the confidence intervals (runs resampled within each budget)
huber_delta = 1e-3 # Huber loss threshold on log-loss residuals for the parametric fit (Chinchilla uses 1e-3)
seed = 1337 # bootstrap and training seed
# sweep: the budget and the strategy
preset = 'gpu' # 'gpu': ~8 minutes on one H100 | 'cpu': a tiny sweep in a minute or two | 'none': the values below
backend = 'local' # 'local': train with train.py | 'remote': the course's training API (api_url, api_key)
sweep_json = '' # cache and record of every run (Part 1 format); '' = results/<name>_runs.json
budgets = () # FLOPs of each IsoFLOP curve, smallest first; () = the preset's
sizes_per_budget = 5 # models per IsoFLOP curve, spread evenly in log N around the predicted optimum
size_spread = 8.0 # ratio of the largest to the smallest N on a curve
tokens_per_param = 20.0 # first guess of D/N at the optimum, to centre the first curve (Chinchilla's ~20)
total_budget = 0.0 # cap on the FLOPs the sweep may spend (the target run is not counted); 0 = preset
target_budget = 0.0 # FLOPs of the run to predict and then train; 0 = target_ratio x the largest sweep budget
target_ratio = 4.0 # target budget / largest sweep budget when target_budget is 0
train_target = True # actually train the predicted optimal config at the target budget and compare
time_limit_s = 0.0 # wall-clock cap on the whole sweep incl. the target run (runs predicted to overrun are skipped); 0 = none
# sweep: the training recipe shared by every run (local backend)
data_dir = 'data/pycode' # token folder written by data/*/prepare.py (train.bin, val.bin, meta.json)
context_length = 256 # tokens per sequence
batch_size = 128 # sequences per step
learning_rate = 2e-3 # peak learning rate (same for every size; cosine to lr/10)
warmup_frac = 0.05 # fraction of each run spent in linear warmup
head_dim = 64 # d_model / num_heads
aspect_ratio = 64.0 # preferred d_model / num_layers when a parameter count is turned into a shape
train_overrides = {} # extra train.py config keys for every run, e.g. {'compile': True}
device = '' # '' = cuda if available, else cpu
# remote backend (the CS336 A3 API): https://github.com/stanford-cs336/assignment3-scaling
api_url = 'http://hyperturing.stanford.edu:8000' # base URL of the training API
api_key = '' # your API key (the course gave one per student)
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))


# =============================================================================
# Part 1: IsoFLOP analysis of given runs
# =============================================================================

def load_runs(path):
    """Read a JSON list of runs {parameters, compute_budget, final_loss} (extra keys are kept) and check it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"runs file {path!r} not found: give --input=<JSON list of "
                                f"{{parameters, compute_budget, final_loss}}> (the course's is "
                                f"../shared/data/a3/isoflops_curves.json)")
    with open(path, encoding='utf-8') as f:
        try:
            runs = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
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
    A curve without a convex parabola falls back to its argmin (and says so in 'fallback')."""
    rows = []
    for C, (N, L, _) in groups.items():
        fit = parabola_fit(N, L) if method == 'parabola' else None
        if fit is not None:
            _, n, l, edge = fit
            fallback = False
        else:
            n, l, edge = argmin_optimum(N, L)
            fallback = method == 'parabola'
        rows.append(dict(C=C, N_opt=float(n), D_opt=float(C / (6 * n)), L_opt=float(l),
                         at_edge=bool(edge), fallback=fallback))
    return rows


def fit_power_law(C, Y):
    """Y = a * C^alpha by least squares on log10 Y = log10 a + alpha log10 C; returns (a, alpha)."""
    x, y = np.log10(C), np.log10(Y)
    (log_a, alpha), _ = optimize.curve_fit(lambda x, la, al: la + al * x, x, y, p0=(0.0, 0.5))
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
    """Sum of Huber(LSE(a - alpha logN, b - beta logD, e) - log L) and its gradient (Chinchilla eq. 3.3).
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


def fit_parametric(N, D, L, delta=1e-3, init=None):
    """Fit L(N, D) = E + A/N^alpha + B/D^beta; returns dict(E, A, B, alpha, beta, objective).

    L-BFGS from every point of a grid of initializations (Chinchilla's grid, made a little coarser), keeping the
    best; with `init` (a previous theta) a single start is used (the bootstrap warm-starts from the fit)."""
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
        starts = grid[np.argsort(vals)[:64]]
    best = None
    for t0 in starts:
        res = optimize.minimize(_parametric_objective, t0, args=(logN, logD, logL, delta), jac=True,
                                method='L-BFGS-B', options=dict(maxiter=2000, gtol=1e-12, ftol=1e-15))
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


# -----------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display needed)

def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120, bbox_inches='tight')
    os.replace(tmp, path)


def plot_isoflops(groups, par, path, title):
    """Loss vs N per budget: the runs, the fitted parabola, its vertex (star) and the parametric fit (dotted)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(groups)))
    for color, (C, (N, L, _)) in zip(colors, groups.items()):
        ax.scatter(N, L, color=color, s=18, label=f"C={C:.0e}")
        fit = parabola_fit(N, L)
        xs = np.linspace(np.log10(N.min()) - 0.1, np.log10(N.max()) + 0.1, 100)
        if fit is not None:
            ax.plot(10 ** xs, np.polyval(fit[0], xs), color=color, lw=1.2)
            ax.scatter([fit[1]], [fit[2]], color=color, marker='*', s=160, edgecolor='k', zorder=5)
        if par is not None:
            ax.plot(10 ** xs, parametric_loss(par, 10 ** xs, C / (6 * 10 ** xs)), color=color, ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('parameters N (non-embedding)')
    ax.set_ylabel('final loss')
    ax.set_title(f"{title}: IsoFLOP curves (solid: parabola in log N, star: its minimum, dotted: L(N,D) fit)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which='both')
    _save(fig, path)
    plt.close(fig)


def plot_optimal(opt_rows, fits, par, extrapolate, path, title, target=None):
    """N_opt(C) and D_opt(C): the per-budget optima, the power-law fits extrapolated, the parametric frontier."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    C_all = np.array([r['C'] for r in opt_rows['argmin']])
    Cs = np.logspace(np.log10(C_all.min()) - 0.2, np.log10(max(max(extrapolate), C_all.max())) + 0.2, 100)
    styles = {'argmin': ('tab:blue', 'o'), 'parabola': ('tab:orange', 's')}
    for ax, key, label in ((axes[0], 'N_opt', 'N_opt (parameters)'), (axes[1], 'D_opt', 'D_opt (tokens)')):
        for method, (color, marker) in styles.items():
            rows, f = opt_rows[method], fits[method][key]
            ax.scatter([r['C'] for r in rows], [r[key] for r in rows], color=color, marker=marker, s=25,
                       label=f"{method} optima")
            ax.plot(Cs, f['coef'] * Cs ** f['exponent'], color=color, lw=1.2,
                    label=f"{method}: {f['coef']:.3g} C^{f['exponent']:.3f}")
            for c in extrapolate:
                ax.scatter([c], [f['coef'] * c ** f['exponent']], color=color, marker='x', s=50)
        if par is not None:
            frontier = parametric_frontier(par, Cs)
            ax.plot(Cs, frontier[0] if key == 'N_opt' else frontier[1], color='tab:green', ls='--', lw=1.2,
                    label='parametric L(N,D) frontier')
        if target is not None and key in target:
            ax.scatter([target['C']], [target[key]], color='red', marker='D', s=50, zorder=6, label='target run')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('compute C (FLOPs)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: compute-optimal model size and data (x: extrapolation)")
    _save(fig, path)
    plt.close(fig)


def plot_parametric(N, D, L, C, par, path, title, extra=None):
    """Predicted (parametric fit) vs observed loss for every run; `extra` = (predicted, observed, label) points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    pred = parametric_loss(par, N, D)
    sc = ax.scatter(L, pred, c=np.log10(C), cmap='viridis', s=18)
    fig.colorbar(sc, ax=ax, label='log10 C')
    lo, hi = min(L.min(), pred.min()), max(L.max(), pred.max())
    if extra is not None:
        ax.scatter([extra[1]], [extra[0]], color='red', marker='D', s=50, label=extra[2])
        lo, hi = min(lo, extra[0], extra[1]), max(hi, extra[0], extra[1])
        ax.legend(fontsize=8)
    pad = 0.03 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], 'k--', lw=1)
    ax.set_xlabel('observed loss')
    ax.set_ylabel('predicted loss, L(N,D) fit')
    ax.set_title(f"{title}: predicted vs observed")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


# -----------------------------------------------------------------------------
# The whole analysis: fits, tables, plots

def analyze(runs, out_dir='results', name='scaling', extrapolate=(1e23, 1e24), n_boot=1000, delta=1e-3,
            seed=0, title=None, target=None, write=True):
    """Run methods 1-3 on `runs`, write <name>.md/.json/_*.png into out_dir; returns the summary dict.
    `target` (sweep mode) = dict(C, N_opt, D_opt, predicted, achieved) is drawn on the plots and tabulated."""
    runs = check_runs(runs)
    groups = group_by_budget(runs)
    if len(groups) < 2:
        raise ValueError(f"need runs at 2 or more compute budgets to fit a scaling law, got {len(groups)}")
    rng = np.random.default_rng(seed)
    extrapolate = tuple(float(c) for c in extrapolate)
    opt_rows, fits = {}, {}
    for method in ('argmin', 'parabola'):
        opt_rows[method], fits[method] = power_law_with_ci(groups, method, extrapolate, n_boot, rng)
    N = np.concatenate([g[0] for g in groups.values()])
    L = np.concatenate([g[1] for g in groups.values()])
    D = np.concatenate([g[2] for g in groups.values()])
    C = np.concatenate([np.full(len(g[0]), c) for c, g in groups.items()])
    par = parametric_with_ci(N, D, L, delta, extrapolate, max(n_boot // 10, 0), rng)
    pred = parametric_loss(par, N, D)
    par['rmse'] = float(np.sqrt(np.mean((pred - L) ** 2)))
    par['mean_abs_rel_err'] = float(np.mean(np.abs(pred - L) / L))
    fN, fD, fL = parametric_frontier(par, extrapolate)
    par['predict'] = {f"{c:.0e}": dict(N_opt=float(n), D_opt=float(d), loss=float(l))
                      for c, n, d, l in zip(extrapolate, fN, fD, fL)}
    par['N_exponent'] = par['beta'] / (par['alpha'] + par['beta'])
    par['D_exponent'] = par['alpha'] / (par['alpha'] + par['beta'])
    summary = dict(n_runs=len(runs), budgets=list(groups), optima=opt_rows, power_laws=fits, parametric=par)
    if target is not None:
        summary['target'] = target
    if write:
        os.makedirs(out_dir, exist_ok=True)
        title = title or name
        plot_isoflops(groups, par, os.path.join(out_dir, f"{name}_isoflops.png"), title)
        plot_optimal(opt_rows, fits, par, extrapolate, os.path.join(out_dir, f"{name}_optimal.png"), title, target)
        extra = None
        if target is not None and target.get('achieved') is not None:
            extra = (target['predicted'], target['achieved'], f"target run (C={target['C']:.1e})")
        plot_parametric(N, D, L, C, par, os.path.join(out_dir, f"{name}_parametric.png"), title, extra)
        _write_json(os.path.join(out_dir, f"{name}.json"), summary)
        _write_text(os.path.join(out_dir, f"{name}.md"), report_markdown(summary, name, title))
    return summary


def _write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _write_text(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def _ci(ci, fmt='{:.3f}'):
    return f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else ''


def report_markdown(s, name, title):
    """The tables of results/<name>.md."""
    fits, par = s['power_laws'], s['parametric']
    ex = list(par['predict'])
    lines = [f"# {title}: scaling-law fits", "",
             f"{s['n_runs']} runs at {len(s['budgets'])} compute budgets "
             f"({min(s['budgets']):.1e} to {max(s['budgets']):.1e} FLOPs). 95% intervals from a bootstrap over runs.",
             "", "## Compute-optimal model size and data, N_opt = a·C^α, D_opt = b·C^β", "",
             "| method | α (N_opt) | β (D_opt) | " + " | ".join(f"N_opt @ {c}" for c in ex) + " | "
             + " | ".join(f"D_opt @ {c}" for c in ex) + " |",
             "|---|---|---|" + "---:|" * (2 * len(ex))]
    for method in ('argmin', 'parabola'):
        fN, fD = fits[method]['N_opt'], fits[method]['D_opt']
        cells = [f"{fN['predict'][c]:.3g}{_ci(fN.get('predict_ci', {}).get(c), '{:.2g}')}" for c in ex]
        cells += [f"{fD['predict'][c]:.3g}{_ci(fD.get('predict_ci', {}).get(c), '{:.2g}')}" for c in ex]
        lines.append(f"| {method} | {fN['exponent']:.3f}{_ci(fN.get('exponent_ci'))} | "
                     f"{fD['exponent']:.3f}{_ci(fD.get('exponent_ci'))} | " + " | ".join(cells) + " |")
    cells = [f"{par['predict'][c]['N_opt']:.3g}{_ci(par.get('N_predict_ci', {}).get(c), '{:.2g}')}" for c in ex]
    cells += [f"{par['predict'][c]['D_opt']:.3g}" for c in ex]
    lines.append(f"| parametric L(N,D) | {par['N_exponent']:.3f}{_ci(par.get('N_exponent_ci'))} | "
                 f"{par['D_exponent']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "## Loss at the optimum", "",
              "| method | " + " | ".join(f"loss @ {c}" for c in ex) + " |", "|---|" + "---:|" * len(ex)]
    for method in ('argmin', 'parabola'):
        f = fits[method]['L_opt']
        lines.append(f"| {method} minima, power law {f['coef']:.3g}·C^{f['exponent']:.4f} | "
                     + " | ".join(f"{f['predict'][c]:.3f}" for c in ex) + " |")
    lines.append("| parametric L(N,D) frontier | " + " | ".join(f"{par['predict'][c]['loss']:.3f}" for c in ex) + " |")
    lines += ["", "## Parametric fit L(N, D) = E + A/N^α + B/D^β (Huber δ on log L, L-BFGS from a grid)", "",
              "| E | A | B | α | β | RMSE | mean abs rel err |", "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {par['E']:.3f} | {par['A']:.4g} | {par['B']:.4g} | {par['alpha']:.3f}{_ci(par.get('alpha_ci'))} | "
              f"{par['beta']:.3f}{_ci(par.get('beta_ci'))} | {par['rmse']:.4f} | {100 * par['mean_abs_rel_err']:.2f}% |",
              "", "## Per-budget optima", "", "| C | N_opt argmin | N_opt parabola | D_opt parabola | min loss (parabola) | note |",
              "|---:|---:|---:|---:|---:|---|"]
    for ra, rp in zip(s['optima']['argmin'], s['optima']['parabola']):
        note = 'parabola not convex: argmin used' if rp['fallback'] else ('minimum at the edge' if rp['at_edge'] else '')
        lines.append(f"| {ra['C']:.1e} | {ra['N_opt']:.3g} | {rp['N_opt']:.3g} | {rp['D_opt']:.3g} | "
                     f"{rp['L_opt']:.3f} | {note} |")
    t = s.get('target')
    if t is not None:
        lines += ["", "## Prediction for the target budget, then the real run", "",
                  f"Target budget C = {t['C']:.3g} FLOPs ({t['ratio']:.1f}x the largest sweep budget). "
                  f"Predicted optimum N = {t['N_pred']:.3g}; trained shape {t['shape']} with N = {t['N_opt']:.3g}, "
                  f"D = {t['D_opt']:.3g} tokens.", "",
                  "| predictor | predicted loss | achieved loss | error |", "|---|---:|---:|---:|"]
        for label, key in (("parametric L(N,D) at the trained N, D (primary)", 'predicted'),
                           ("power law of the IsoFLOP minima (parabola)", 'predicted_minima')):
            if t.get(key) is None:
                continue
            ach = t.get('achieved')
            err = f"{100 * (t[key] - ach) / ach:+.2f}%" if ach else 'not trained'
            lines.append(f"| {label} | {t[key]:.4f} | {ach if ach is None else format(ach, '.4f')} | {err} |")
    lines += ["", f"Plots: {name}_isoflops.png, {name}_optimal.png, {name}_parametric.png. "
              f"Every number: {name}.json.", ""]
    return "\n".join(lines)


def print_summary(s):
    for method in ('argmin', 'parabola'):
        fN, fD = s['power_laws'][method]['N_opt'], s['power_laws'][method]['D_opt']
        pred = ', '.join(f"N_opt({c})={v:.3g}" for c, v in fN['predict'].items())
        print(f"{method:9s}: N_opt ~ C^{fN['exponent']:.3f}{_ci(fN.get('exponent_ci'))}, "
              f"D_opt ~ C^{fD['exponent']:.3f}{_ci(fD.get('exponent_ci'))}; {pred}")
    p = s['parametric']
    pred = ', '.join(f"N_opt({c})={v['N_opt']:.3g} loss {v['loss']:.3f}" for c, v in p['predict'].items())
    print(f"parametric: E={p['E']:.3f} A={p['A']:.4g} B={p['B']:.4g} alpha={p['alpha']:.3f} beta={p['beta']:.3f} "
          f"(N_opt ~ C^{p['N_exponent']:.3f}), rmse {p['rmse']:.4f}; {pred}")


# =============================================================================
# Main
# =============================================================================

if __name__ == '__main__':
    if mode == 'analyze':
        path = input or os.path.join(DATA, 'a3', 'isoflops_curves.json')
        name = name or 'scaling'
        t0 = time.time()
        try:
            runs = load_runs(path)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
        summary = analyze(runs, out_dir, name, extrapolate_to, n_bootstrap, huber_delta, seed,
                          title=os.path.basename(path))
        print_summary(summary)
        print(f"wrote {out_dir}/{name}.md, .json and 3 plots in {time.time() - t0:.1f}s")
    else:
        sys.exit(f"error: unknown --mode={mode!r}; use 'analyze' or 'sweep'")

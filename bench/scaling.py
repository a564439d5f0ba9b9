"""
bench/scaling.py: the IsoFLOP sweep that feeds scaling.py, and the tables and plots of its fits.

    python bench/scaling.py --mode=analyze                  # the course's IsoFLOP set -> results/scaling.md, 3 plots
    python bench/scaling.py --mode=analyze --input=results/scaling_sweep_cpu_runs.json --name=scaling_sweep_cpu
    python data/docs/prepare.py --vocab_size=257 --out_dir=data/docs_bytes        # bytes of the docs corpus
    python bench/scaling.py --preset=cpu --data_dir=data/docs_bytes    # a sweep on a CPU, ~20 min
    python data/pycode/prepare.py --vocab_size=257 --out_dir=data/pycode_bytes   # bytes (no merges), < 1 min
    python bench/scaling.py --preset=gpu --out_dir=out/scaling         # <= 7 min on one H100
    python bench/scaling.py --backend=remote --api_url=... --api_key=...         # the course's training API

The sweep is the local twin of the course's "training API": every query is a config plus a FLOP budget
(train_flops); results are cached by config (asking again costs nothing), the total FLOPs spent are capped
(a query that would go over is refused), and every result is appended to a JSON list in the format scaling.py
reads ({parameters, compute_budget, final_loss} plus the config). The strategy: IsoFLOP grids at a few small
budgets (each centred on the optimum the previous budgets predict), extra sizes wherever the minimum sits at the
edge of a grid, then a fit, a prediction of the optimal config and loss for a larger target budget, and a real
training of that config to check the prediction. Each training is `python train.py --key=value ...` (one process
per run, one at a time: the IsoFLOP runs are small, one GPU each is right); re-running the sweep after an
interruption re-uses every finished run from its JSON (the cache), so it resumes.
With --time_limit_s the sweep keeps to a wall-clock budget: it measures its own throughput and, when the rest of
the plan would not fit, shrinks the remaining budgets (and the target), or drops the largest of them; the target
run's estimate is an upper bound (the one step that cannot be shrunk afterwards).
N leaves out the embedding and output layers, so the vocabulary must be small for C = 6ND to be the real cost:
the gpu preset trains on bytes (vocab 257; see PRESETS).

Outputs (prefix --name): <out_dir>/<name>.md (tables), <name>.json (every fitted number), <name>_isoflops.png,
<name>_optimal.png, <name>_parametric.png; a sweep also <name>_runs.json (its runs, the cache).
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before bench/ (this file's folder): `import scaling` is the teaching script
import numpy as np  # noqa: E402
import scaling  # noqa: E402

# -----------------------------------------------------------------------------
# what to do
mode = 'sweep'  # 'sweep': run trainings (or query the API), fit, report | 'analyze': fit and report --input's runs
input = ''  # analyze: JSON list of {parameters, compute_budget, final_loss}; '' = the course's IsoFLOP set
out_dir = 'results'  # where the tables, plots and fit summary go
name = ''  # prefix of the output files; '' = 'scaling' (analyze) or 'scaling_sweep' (sweep)
extrapolate_to = (1e23, 1e24)  # FLOP budgets to predict for (analyze; a sweep predicts its target budget)
n_bootstrap = 1000  # bootstrap resamples for the confidence intervals
huber_delta = 1e-3  # Huber threshold of the parametric fit (Chinchilla: 1e-3)
seed = 1337  # bootstrap and training seed
# sweep: the budget and the strategy (a key left at its default takes the preset's value)
preset = 'gpu'  # 'gpu': one H100, <= 7 min (byte pycode) | 'cpu': minutes | 'remote' (with --backend=remote) | 'none'
backend = 'local'  # 'local': train with train.py | 'remote': the course's training API (api_url, api_key)
sweep_json = ''  # cache and record of every run (scaling.py's format); '' = <out_dir>/<name>_runs.json
budgets = ()  # FLOPs of each IsoFLOP curve, smallest first; () = the preset's
sizes_per_budget = 5  # models per IsoFLOP curve, spread evenly in log N around the predicted optimum
size_spread = 8.0  # ratio of the largest to the smallest N on the first curve (the optimum is a guess there)
size_spread_later = 8.0  # the same on later curves, centred on the optimum the earlier ones predict
tokens_per_param = 20.0  # first guess of D/N at the optimum, to centre the first curve (Chinchilla's ~20)
total_budget = 0.0  # cap on the FLOPs the sweep may spend (the target run is not counted); 0 = preset
target_budget = 0.0  # FLOPs of the run to predict and then train; 0 = target_ratio x the largest sweep budget
target_ratio = 4.0  # target budget / largest sweep budget when target_budget is 0
min_target_ratio = 3.0  # with --time_limit_s the target may shrink, but to no less than this x the largest budget
train_target = True  # actually train the predicted optimal config at the target budget and compare
time_limit_s = 0.0  # wall-clock cap on the sweep and target run: the plan shrinks to fit it; 0 = none
# sweep: the training recipe shared by every run (local backend)
data_dir = 'data/pycode'  # token folder written by data/*/prepare.py (train.bin, val.bin, meta.json)
context_length = 256  # tokens per sequence
batch_size = 128  # sequences per step
learning_rate = 2e-3  # peak learning rate (same for every size; cosine to lr/10)
warmup_frac = 0.05  # fraction of each run spent in linear warmup (at least 10 steps, at most a quarter of the run)
eval_iters = 20  # validation batches for each run's final loss (the same batches for every run)
head_dim = 64  # d_model / num_heads
aspect_ratio = 64.0  # preferred d_model / num_layers when a parameter count is turned into a shape
train_overrides = {}  # extra train.py config keys for every run, e.g. {'compile': True}
device = ''  # '' = train.py's default (cuda if available, else cpu)
# remote backend (the CS336 A3 API): https://github.com/stanford-cs336/assignment3-scaling
api_url = 'http://hyperturing.stanford.edu:8000'  # base URL of the training API
api_key = ''  # your API key (the course gave one per student)
# -----------------------------------------------------------------------------
CONFIG_KEYS = ('mode', 'input', 'out_dir', 'name', 'extrapolate_to', 'n_bootstrap', 'huber_delta', 'seed', 'preset',
               'backend', 'sweep_json', 'budgets', 'sizes_per_budget', 'size_spread', 'size_spread_later',
               'tokens_per_param', 'total_budget', 'target_budget', 'target_ratio', 'min_target_ratio',
               'train_target', 'time_limit_s', 'data_dir', 'context_length', 'batch_size', 'learning_rate',
               'warmup_frac', 'eval_iters', 'head_dim', 'aspect_ratio', 'train_overrides', 'device', 'api_url',
               'api_key')
DEFAULTS = {k: globals()[k] for k in CONFIG_KEYS}  # before the command line: what a preset may fill in


# -----------------------------------------------------------------------------
# Report: scaling.analyze's numbers as tables and plots (matplotlib, Agg: no display needed)

def analyze(runs, out_dir='results', name='scaling', extrapolate=(1e23, 1e24), n_boot=1000, delta=1e-3, seed=0,
            title=None, target=None, info=None):
    """scaling.analyze, then <name>.md/.json/_*.png into out_dir; returns the summary dict.
    `target` (sweep mode) = dict(C, N_opt, D_opt, predicted, achieved) is drawn on the plots and tabulated."""
    summary = scaling.analyze(runs, extrapolate, n_boot, delta, seed)
    if target is not None:
        summary['target'] = target
    if info is not None:
        summary['sweep'] = info
    title = title or name
    groups = scaling.group_by_budget(runs)
    N = np.concatenate([g[0] for g in groups.values()])
    L = np.concatenate([g[1] for g in groups.values()])
    D = np.concatenate([g[2] for g in groups.values()])
    C = np.concatenate([np.full(len(g[0]), c) for c, g in groups.items()])
    par, extrapolate = summary['parametric'], tuple(float(c) for c in extrapolate)
    os.makedirs(out_dir, exist_ok=True)
    plot_isoflops(groups, par, os.path.join(out_dir, f"{name}_isoflops.png"), title)
    plot_optimal(summary['optima'], summary['power_laws'], par, extrapolate,
                 os.path.join(out_dir, f"{name}_optimal.png"), title, target)
    extra = None
    if target is not None and target.get('achieved') is not None:
        extra = (target['predicted'], target['achieved'], f"target run (C={target['C']:.1e})")
    plot_parametric(N, D, L, C, par, os.path.join(out_dir, f"{name}_parametric.png"), title, extra)
    _write_json(os.path.join(out_dir, f"{name}.json"), summary)
    _write_text(os.path.join(out_dir, f"{name}.md"), report_markdown(summary, name, title))
    return summary


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
        fit = scaling.parabola_fit(N, L)
        xs = np.linspace(np.log10(N.min()) - 0.1, np.log10(N.max()) + 0.1, 100)
        if fit is not None:
            ax.plot(10 ** xs, np.polyval(fit[0], xs), color=color, lw=1.2)
        if fit is not None and not fit[3]:
            ax.scatter([fit[1]], [fit[2]], color=color, marker='*', s=160, edgecolor='k', zorder=5)
        else:  # no minimum inside the sizes: the best run stands in for it (hollow star)
            i = int(np.argmin(L))
            ax.scatter([N[i]], [L[i]], facecolor='none', marker='*', s=160, edgecolor=color, zorder=5)
        if par is not None:
            ax.plot(10 ** xs, scaling.parametric_loss(par, 10 ** xs, C / (6 * 10 ** xs)), color=color, ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('parameters N (non-embedding)')
    ax.set_ylabel('final loss')
    ax.set_title(f"{title}: IsoFLOP curves\n(solid: parabola in log N, star: its minimum, hollow star: best run when "
                 f"the minimum is outside the sizes, dotted: L(N,D) fit)", fontsize=10)
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
            frontier = scaling.parametric_frontier(par, Cs)
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
    pred = scaling.parametric_loss(par, N, D)
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


_ci = scaling.ci_text  # ' [lo, hi]' for a 95% interval


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
              f"{par['beta']:.3f}{_ci(par.get('beta_ci'))} | {par['rmse']:.4f} | "
              f"{100 * par['mean_abs_rel_err']:.2f}% |",
              "", "## Per-budget optima", "",
              "| C | N_opt argmin | N_opt parabola | D_opt parabola | min loss (parabola) | note |",
              "|---:|---:|---:|---:|---:|---|"]
    for ra, rp in zip(s['optima']['argmin'], s['optima']['parabola']):
        note = 'no parabola minimum inside the sizes: argmin used' if rp['fallback'] else ''
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
    if s.get('sweep'):
        w = s['sweep']
        lines += ["", f"Sweep: {w['runs']} runs ({w['backend']} backend, preset {w['preset']}), "
                  f"{w['flops_used']:.3g} FLOPs counted, {w['wall_s']:.0f} s wall-clock in all; recipe "
                  f"`{json.dumps(w['recipe'])}`; runs in {os.path.basename(w['runs_file'])}."]
    lines += ["", f"Plots: {name}_isoflops.png, {name}_optimal.png, {name}_parametric.png. "
              f"Every number: {name}.json.", ""]
    return "\n".join(lines)


# =============================================================================
# Part 2: sweeps with a FLOP budget (the local twin of the course's training API)
# =============================================================================

class BudgetExceeded(RuntimeError):
    """A query would take the sweep past its total FLOP budget."""


def model_shapes(head_dim=64, max_d_model=1024, min_layers=1, max_layers=24, min_heads=1, max_heads=64):
    """Every (d_model, num_layers, num_heads) we may train: d_model a multiple of head_dim, heads = d_model/head_dim
    clamped to [min_heads, max_heads] (the course API wants 2..16 heads, 2..24 layers, d_model 64..1024)."""
    shapes = []
    for d in range(head_dim, max_d_model + 1, head_dim):
        h = max(min_heads, min(max_heads, d // head_dim))
        if d % h:
            continue
        for n_layer in range(min_layers, max_layers + 1):
            shapes.append(dict(d_model=d, num_layers=n_layer, num_heads=h, N=scaling.non_embedding_params(d, n_layer)))
    return shapes


def shape_for(n_target, shapes, aspect=64.0, exclude=()):
    """The shape whose N is closest to n_target in log space, among those with d_model/num_layers within 2x of
    `aspect` (all shapes if none is). Keeping the aspect ratio in a band makes width grow smoothly with N: loss
    depends weakly on shape inside such a band (Kaplan et al. 2020, fig. 5), but a 1-layer-wide and a 5-layer-narrow
    model of one N differ a lot when they are this small (the embedding width changes with d_model).
    Shapes whose N is in `exclude` are skipped: two shapes of one size add no point to an IsoFLOP curve."""
    def score(s):
        return abs(math.log(s['N'] / n_target)) + 0.1 * abs(math.log(s['d_model'] / s['num_layers'] / aspect))
    candidates = [s for s in shapes if s['N'] not in exclude]
    banded = [s for s in candidates if 0.5 <= s['d_model'] / s['num_layers'] / aspect <= 2.0]
    candidates = banded or candidates
    return min(candidates, key=score) if candidates else None


class Sweep:
    """query(config) -> run record, like the course's training API: results cached by config (free to ask again),
    total FLOPs capped, every run appended to a JSON list in Part 1's format {parameters, compute_budget,
    final_loss, ...}. `backend(query) -> dict(final_loss, parameters, tokens, ...)` does the actual work."""

    def __init__(self, path, total_budget, backend, clock=time.time):
        self.path, self.total_budget, self.backend, self.clock = path, float(total_budget), backend, clock
        self.runs = []
        if os.path.exists(path):
            with open(path, encoding='utf-8') as f:
                self.runs = json.load(f)
            if self.runs:
                scaling.check_runs(self.runs, path)
        self.cache = {r['key']: r for r in self.runs if 'key' in r}

    def key(self, query):
        """Identical configs (and the same training recipe) are the same run."""
        return json.dumps(dict(query, **getattr(self.backend, 'recipe', {})), sort_keys=True)

    @property
    def flops_used(self):
        """FLOPs spent on counted runs (the course API's total_flops_used): each distinct config once."""
        return sum(r['compute_budget'] for r in self.runs if r.get('counted', True))

    def query(self, query, counted=True, role='sweep'):
        """Run (or look up) one config. Returns (record, cost) where cost is 0 for a cached config."""
        k = self.key(query)
        if k in self.cache:
            return self.cache[k], 0.0
        C = float(query['train_flops'])
        if counted and self.flops_used + C > self.total_budget * (1 + 1e-9):
            raise BudgetExceeded(f"a run of {C:.3g} FLOPs would exceed the total budget: {self.flops_used:.3g} of "
                                 f"{self.total_budget:.3g} FLOPs used; raise --total_budget or ask for less")
        t0 = self.clock()
        result = self.backend(query)
        rec = dict(parameters=float(result['parameters']), compute_budget=C, final_loss=float(result['final_loss']),
                   **{k2: v for k2, v in result.items() if k2 not in ('parameters', 'final_loss')},
                   wall_s=round(self.clock() - t0, 2), config=query, role=role, counted=counted, key=k)
        scaling.check_runs([rec], f"result of {query}")
        self.runs.append(rec)
        self.cache[k] = rec
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        _write_json(self.path, self.runs)
        return rec, C


class LocalBackend:
    """Trains a query's config with train.py, run as its own command (`python train.py --key=value ...`, see
    train_with_train_py): the sweep uses train.py's command line, never its internals.
    The token count follows from the budget: D = train_flops / (6 N), rounded to whole iterations; the cosine
    schedule spans the whole run (Chinchilla: a schedule longer than the run overestimates the loss)."""

    def __init__(self, recipe, train_fn=None):
        self.recipe = dict(recipe)  # data_dir, context_length, warmup_frac, eval_iters, seed, device, overrides
        self._train_fn = train_fn  # None: train.py as a subprocess; tests pass a fake taking the overrides

    def plan(self, query):
        """(N, iters, tokens) of a query: what the run will really do."""
        N = scaling.non_embedding_params(query['d_model'], query['num_layers'])
        tokens_per_iter = query['batch_size'] * self.recipe['context_length']
        iters = max(1, round(query['train_flops'] / (6 * N) / tokens_per_iter))
        return N, iters, iters * tokens_per_iter

    def overrides(self, query):
        """train.py config keys for one run."""
        N, iters, _ = self.plan(query)
        d = query['d_model']
        r = self.recipe
        ov = dict(d_model=d, num_layers=query['num_layers'], num_heads=query['num_heads'],
                  d_ff=64 * max(1, round(8 * d / 3 / 64)),  # SwiGLU 8/3 d_model, as model.py's default
                  batch_size=query['batch_size'], learning_rate=query['learning_rate'],
                  min_lr=query['learning_rate'] / 10, context_length=r['context_length'],
                  max_iters=iters, warmup_iters=max(1, min(max(10, int(r['warmup_frac'] * iters)), iters // 4)),
                  lr_decay_iters=-1,
                  data_dir=r['data_dir'], seed=r['seed'],
                  # one evaluation, at the end, on the whole validation split (train.py's last one always is), no
                  # sample; the run's folder (its checkpoint too) is a temporary one
                  eval_interval=0, eval_iters=r['eval_iters'], log_interval=max(10, iters // 5),
                  max_new_tokens=0, max_time_s=0.0)
        if r.get('device'):
            ov['device'] = r['device']
        ov.update(r.get('overrides', {}))
        return ov

    def train_tokens(self):
        """Tokens in the train split (0 when unknown): runs longer than that see the data more than once."""
        meta = os.path.join(self.recipe['data_dir'], 'meta.json')
        if not os.path.exists(meta):
            return 0
        with open(meta) as f:
            itemsize = np.dtype(json.load(f).get('dtype', 'uint16')).itemsize
        return os.path.getsize(os.path.join(self.recipe['data_dir'], 'train.bin')) // itemsize

    def __call__(self, query):
        N, iters, tokens = self.plan(query)
        n_train = self.train_tokens()
        epochs = tokens / n_train if n_train else None
        print(f"--- train d_model={query['d_model']} num_layers={query['num_layers']} N={N:.3g} "
              f"C={query['train_flops']:.3g}: {iters} iters, {tokens / 1e6:.2f}M tokens"
              + (f" ({epochs:.2f} epochs)" if epochs else ''))
        summary = (self._train_fn or train_with_train_py)(self.overrides(query))
        # time_s: the training loop's own clock (train.py's elapsed_s; evaluations are off that clock)
        return dict(parameters=N, final_loss=summary['val_loss'], tokens=tokens, iters=iters, epochs=epochs,
                    time_s=summary.get('elapsed_s', summary.get('time_s')))


def train_with_train_py(overrides):
    """`python train.py --key=value ...` in a fresh temporary out_dir -> the run's summary.json (val_loss, time_s...).
    A subprocess per run: each run starts clean (no state left from the previous one), and train.py refuses an
    unknown key with a hint, so a typo in --train_overrides fails at the first run."""
    with tempfile.TemporaryDirectory(prefix='scaling_run_') as tmp:
        out = os.path.join(tmp, 'out')
        args = [sys.executable, os.path.join(ROOT, 'train.py')]
        args += [f"--{k}={v if isinstance(v, str) else repr(v)}" for k, v in dict(overrides, out_dir=out).items()]
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(os.path.join(out, 'summary.json')):
            raise RuntimeError(f"train.py failed (exit code {p.returncode}):\n{' '.join(args)}\n"
                               f"{p.stdout[-2000:]}{p.stderr[-3000:]}")
        with open(os.path.join(out, 'summary.json'), encoding='utf-8') as f:
            return json.load(f)


class RemoteBackend:
    """The CS336 A3 training API (not exercised in tests: no network here). GET {api_url}/loss with the config,
    train_flops and api_key -> {'loss', 'total_flops_used'}; /total_flops_used and /previous_runs take api_key.
    The server caps each student at 2e18 FLOPs and bills identical configs once; we check its limits first so
    that a typo costs nothing."""
    LIMITS = dict(d_model=(64, 1024), num_layers=(2, 24), num_heads=(2, 16), learning_rate=(1e-4, 1e-3))
    BATCH_SIZES = (128, 256)
    TRAIN_FLOPS = (1e13, 3e13, 6e13, 1e14, 3e14, 6e14, 1e15, 3e15, 6e15, 1e16, 3e16, 6e16, 1e17, 3e17, 6e17, 1e18)

    def __init__(self, api_url, api_key, timeout=60):
        if not api_key:
            raise ValueError("the remote backend needs --api_key=<your key> (and --api_url if it moved)")
        self.api_url, self.api_key, self.timeout = api_url.rstrip('/'), api_key, timeout
        self.recipe = dict(api_url=self.api_url)

    def _get(self, endpoint, **params):
        import requests
        r = requests.get(f"{self.api_url}/{endpoint}", params=dict(params, api_key=self.api_key), timeout=self.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"{endpoint}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def check(self, query):
        for k, (lo, hi) in self.LIMITS.items():
            if not lo <= query[k] <= hi:
                raise ValueError(f"remote API: {k}={query[k]} outside [{lo}, {hi}]")
        if query['batch_size'] not in self.BATCH_SIZES:
            raise ValueError(f"remote API: batch_size must be one of {self.BATCH_SIZES}, got {query['batch_size']}")
        if not any(math.isclose(query['train_flops'], f) for f in self.TRAIN_FLOPS):
            raise ValueError(f"remote API: train_flops must be one of {self.TRAIN_FLOPS}")

    def __call__(self, query):
        self.check(query)
        q = dict(query, train_flops=int(query['train_flops']))
        out = self._get('loss', **q)
        return dict(parameters=scaling.non_embedding_params(query['d_model'], query['num_layers']),
                    final_loss=out['loss'],
                    total_flops_used=out.get('total_flops_used'))

    def total_flops_used(self):
        return self._get('total_flops_used')

    def previous_runs(self):
        """Runs this key already paid for, as queries with their loss: [(query, loss), ...]."""
        out = self._get('previous_runs')
        runs = out.get('previous_runs', out) if isinstance(out, dict) else out
        keys = ('d_model', 'num_layers', 'num_heads', 'batch_size', 'learning_rate', 'train_flops')
        return [({k: (float(r[k]) if k in ('learning_rate', 'train_flops') else int(r[k])) for k in keys},
                 float(r['loss'])) for r in runs]


def import_previous_runs(sweep, previous):
    """Put runs paid for in an earlier session (the API's /previous_runs) into the cache: asking again is free."""
    added = 0
    for query, loss in previous:
        k = sweep.key(query)
        if k not in sweep.cache:
            rec = dict(parameters=float(scaling.non_embedding_params(query['d_model'], query['num_layers'])),
                       compute_budget=float(query['train_flops']), final_loss=loss, config=query, role='sweep',
                       counted=True, key=k)
            sweep.runs.append(rec)
            sweep.cache[k] = rec
            added += 1
    if added:
        _write_json(sweep.path, sweep.runs)
    return added


# -----------------------------------------------------------------------------
# The strategy: IsoFLOP grids from small to large budgets, each centred on the optimum predicted so far

class TimeModel:
    """Predicts a run's wall-clock from the runs done so far: wall = overhead + tokens * s(N).
    s(N), seconds per token, comes from the training loop's own clock (train.py's time_s), as a power law in N
    (small models are launch-bound, big ones compute-bound); the overhead (model build, data to the GPU) is the
    median of wall - time_s. Keeping the two apart matters: the first run also pays CUDA's start-up, and a
    per-token cost that included it would make every later run look many times too slow.
    Outside the sizes measured: below them s stays at the smallest model's (a smaller model is no faster per
    token once kernel launches dominate, whatever the fitted slope says); above them it follows the fitted slope,
    or, with upper=True, grows like N from the largest model's (the most a token can cost more: all
    compute-bound) and the whole estimate is multiplied by `margin`. A slope fitted on launch-bound small models
    is nearly flat and can be far too low for a bigger model: upper=True is for the decision that cannot be
    undone (the target run, the last thing in the time limit); the plain estimate is for planning, which is
    redone after every budget with more measurements."""

    def __init__(self, margin=1.1):
        self.margin = margin  # upper estimates are multiplied by this: an overrun costs more than a smaller target
        self.points = []  # (N, tokens, loop seconds, wall seconds)

    def add(self, rec):
        if rec.get('wall_s') and rec.get('tokens'):
            loop = rec.get('time_s') or rec['wall_s']  # backends without a loop clock: all of it per token
            self.points.append((rec['parameters'], rec['tokens'], min(loop, rec['wall_s']), rec['wall_s']))

    def seconds_per_token(self, N, upper=False):
        n, t, loop, _ = (np.array(v, dtype=float) for v in zip(*self.points))
        spt = np.log(np.maximum(loop, 1e-6) / t)
        slope, icpt = np.polyfit(np.log(n), spt, 1) if len(np.unique(n)) > 1 else (0.0, spt.mean())
        slope = max(slope, 0.0)  # a bigger model is never cheaper per token; a negative slope is noise
        x = math.log(min(max(N, n.min()), n.max()))  # clamped to the sizes measured, then extended above them
        s = math.exp(icpt + slope * x)
        return s * max(1.0, N / n.max()) ** (1.0 if upper else slope)

    def estimate(self, N, tokens, upper=False):
        if not self.points:
            return 0.0  # nothing measured yet: let the first run go
        over = np.array([w - l for _, _, l, w in self.points])
        overhead = float(np.median(over[1:] if len(over) > 1 else over))  # the first run paid CUDA's start-up
        return (self.margin if upper else 1.0) * (overhead + self.seconds_per_token(N, upper) * tokens)


def predict_optimum(runs, C):
    """N_opt at budget C from the runs so far: a power law through the per-budget optima (parabola, else argmin);
    with a single budget, scale its optimum by sqrt(C ratio) (the Chinchilla exponent ~0.5)."""
    groups = scaling.group_by_budget(runs)
    rows = scaling.isoflop_optima(groups, 'parabola')
    if len(rows) == 1:
        return rows[0]['N_opt'] * (C / rows[0]['C']) ** 0.5
    a, alpha = scaling.fit_power_law(np.array([r['C'] for r in rows]), np.array([r['N_opt'] for r in rows]))
    return a * C ** alpha


def grid_shapes(n_c, shapes, sizes, spread, aspect):
    """`sizes` distinct shapes spread evenly in log N over `spread`x around n_c, centre first: when time runs
    short, the runs nearest the optimum are the ones already done."""
    targets = sorted(n_c * spread ** np.linspace(-0.5, 0.5, sizes), key=lambda n: abs(math.log(n / n_c)))
    out, used = [], set()
    for n in targets:
        s = shape_for(n, shapes, aspect, exclude=used)
        if s is None:
            break
        used.add(s['N'])
        out.append(s)
    return out


def run_sweep(sweep, budgets, make_query, shapes, sizes=5, spread=8.0, tokens_per_param=20.0, aspect=64.0,
              refine=2, time_limit_s=0.0, target_C=None, plan=None, min_budget_ratio=2.0, spread_later=None,
              min_budgets=3, min_target_ratio=3.0):
    """Spend the budget: for each budget (smallest first) an IsoFLOP grid of `sizes` shapes spanning `spread`x in N
    around the predicted optimum (`spread_later`x from the second budget on, when the centre is a fit, not a guess),
    then up to `refine` extra sizes beyond the edge when the minimum sits at an end.
    make_query(shape, C) -> query dict; plan(query) -> (N, iters, tokens).

    With time_limit_s (wall-clock, the target run included), after each budget the rest of the plan is timed
    with the throughput measured so far; if it would not fit, the remaining budgets and the target shrink by a
    common factor (each budget staying >= min_budget_ratio x the one done), the largest remaining budgets are
    dropped if even that is too long (the target keeps its ratio to the new largest; at least min_budgets are
    kept), and single runs are skipped when they would leave too little time for even the smallest target
    (min_target_ratio x their budget). Returns (records of this sweep, target budget)."""
    clock = sweep.clock
    t_start = clock()
    timer = TimeModel()
    for r in sweep.runs:
        timer.add(r)
    budgets = [float(c) for c in budgets]
    done = []  # records of this sweep, role 'sweep'
    stop = False

    def left():
        return time_limit_s - (clock() - t_start)

    def target_time(C_t):
        if C_t is None or not done:
            return 0.0
        n_t = predict_optimum(done, C_t)
        return timer.estimate(n_t, C_t / (6 * n_t))

    def time_left_for(query):
        if not time_limit_s or plan is None:
            return True
        N, _, tokens = plan(query)
        # the target may still shrink to min_target_ratio x this budget (if this one ends up the largest): reserve
        # that much; the plan below, redone after each budget, keeps the full target when there is time for it
        C_t = min(target_C, min_target_ratio * query['train_flops']) if target_C else target_C
        need = timer.estimate(N, tokens) + target_time(C_t)
        if need > left():
            print(f"skip N={N:.3g} C={query['train_flops']:.3g}: needs ~{need:.0f}s (with the target run), "
                  f"{left():.0f}s left")
            return False
        return True

    def plan_time(rest, C_t):
        """Predicted seconds for IsoFLOP grids at the budgets `rest`, then the target run."""
        t = 0.0
        for C in rest:
            for s in grid_shapes(predict_optimum(done, C), shapes, sizes, spread_later, aspect):
                N, _, tokens = plan(make_query(s, C))
                t += timer.estimate(N, tokens)
        return t + target_time(C_t)

    def try_run(shape, C):
        nonlocal stop
        q = make_query(shape, C)
        if stop or not time_left_for(q):
            return None
        try:
            rec, cost = sweep.query(q)
        except BudgetExceeded as e:
            print(f"budget: {e}")
            stop = True
            return None
        if cost:
            timer.add(rec)
        print(f"C={C:.3g} N={rec['parameters']:.3g} loss {rec['final_loss']:.4f}"
              f"{' (cached)' if not cost else ''}  [{sweep.flops_used:.3g}/{sweep.total_budget:.3g} FLOPs used]")
        done.append(rec)
        return rec

    spread_later = spread_later or spread
    i = -1
    while i + 1 < len(budgets):  # budgets may shrink, or lose their largest, on the way
        i += 1
        C = budgets[i]
        if not done:  # the first curve: centred on a guess of tokens per parameter, and wide
            n_c, width = math.sqrt(C / (6 * tokens_per_param)), spread
        else:  # later ones: centred on the power law through the optima so far
            n_c, width = predict_optimum(done, C), spread_later
        for s in grid_shapes(n_c, shapes, sizes, width, aspect):
            try_run(s, C)
        # refine: a minimum at an end of the grid means the optimum lies outside it: extend that way
        step = width ** (1 / max(sizes - 1, 1))
        for _ in range(refine):
            mine = sorted((r for r in done if r['compute_budget'] == C), key=lambda r: r['parameters'])
            if len(mine) < 3:
                break
            N = np.array([r['parameters'] for r in mine])
            L = np.array([r['final_loss'] for r in mine])
            i_min, fit = int(np.argmin(L)), scaling.parabola_fit(N, L)
            if 0 < i_min < len(N) - 1 and fit is not None and not fit[3]:
                break  # the minimum is bracketed
            if L[0] <= L[-1]:  # the small end is better: go smaller
                s = shape_for(N[0] / step, [x for x in shapes if x['N'] < 0.95 * N[0]], aspect)
            else:
                s = shape_for(N[-1] * step, [x for x in shapes if x['N'] > 1.05 * N[-1]], aspect)
            if s is None or try_run(s, C) is None:
                break
        if stop:
            break
        # keep the rest of the plan inside the time limit: shrink the remaining budgets (and the target) together;
        # when even the smallest shrink (each budget >= min_budget_ratio x the one before) does not fit, drop the
        # largest remaining budget (the target follows the new largest) rather than starve every grid of runs
        rest = budgets[i + 1:]
        if time_limit_s and plan is not None and rest and done:
            f_min = min_budget_ratio * C / rest[0]
            fewest = min(len(rest), max(1, min_budgets - (i + 1)))  # never fewer than min_budgets in all
            for keep in range(len(rest), fewest - 1, -1):
                kept = rest[:keep]
                t_c = target_C * kept[-1] / rest[-1] if target_C else target_C
                f = 1.0
                while f > f_min and plan_time([c * f for c in kept], t_c and t_c * f) > 0.9 * left():
                    f = max(f * 0.8, f_min)
                if plan_time([c * f for c in kept], t_c and t_c * f) <= 0.9 * left():
                    break
            if f < 1.0 or keep < len(rest):
                budgets[i + 1:] = [c * f for c in kept]
                target_C = t_c * f if target_C else target_C
                print(f"time: {left():.0f}s left; the remaining budgets "
                      + (f"lose the largest {len(rest) - keep} and " if keep < len(rest) else '')
                      + f"shrink {1 / f:.2f}x to {[f'{c:.3g}' for c in budgets[i + 1:]]}, target {target_C:.3g}")
    return done, target_C


def predict_and_check(sweep, runs, target_C, make_query, shapes, aspect, delta, train_target=True, time_left=None,
                      plan=None, min_target_ratio=3.0):
    """Fit the sweep, pick the optimal shape for target_C, predict its loss, then (optionally) train it.
    Primary predictor, chosen before any target run: the parametric fit L(N, D) at the trained N and D.
    Secondary: the power law through the IsoFLOP minima (parabola vertices).
    With time_left, a target run predicted to overrun shrinks (down to min_target_ratio x the largest sweep
    budget) rather than being dropped: the check of the prediction is the point of the sweep."""
    groups = scaling.group_by_budget(runs)
    N_all = np.concatenate([g[0] for g in groups.values()])
    L_all = np.concatenate([g[1] for g in groups.values()])
    D_all = np.concatenate([g[2] for g in groups.values()])
    par = scaling.fit_parametric(N_all, D_all, L_all, delta)
    rows = scaling.isoflop_optima(groups, 'parabola')
    a, gamma = scaling.fit_power_law(np.array([r['C'] for r in rows]), np.array([r['L_opt'] for r in rows]))
    timer = TimeModel()
    for r in runs:
        timer.add(r)

    def choose(C):
        """The optimal shape predicted for budget C: (query, N, tokens, N predicted)."""
        n_pred = predict_optimum(runs, C)
        q = make_query(shape_for(n_pred, shapes, aspect), C)
        if plan is not None:
            N, _, tokens = plan(q)
        else:
            N = scaling.non_embedding_params(q['d_model'], q['num_layers'])
            tokens = C / (6 * N)
        return q, N, tokens, n_pred

    q, N, tokens, n_pred = choose(target_C)
    if train_target and time_left is not None and plan is not None:
        floor = min_target_ratio * max(groups)
        while timer.estimate(N, tokens, upper=True) > time_left and target_C * 0.8 >= floor:
            target_C *= 0.8
            q, N, tokens, n_pred = choose(target_C)
        need = timer.estimate(N, tokens, upper=True)
        if need > time_left:
            print(f"target run skipped: needs ~{need:.0f}s, {time_left:.0f}s left")
            train_target = False
    target = dict(C=float(target_C), ratio=float(target_C / max(groups)), N_pred=float(n_pred), N_opt=float(N),
                  D_opt=float(tokens), shape=f"d_model={q['d_model']} num_layers={q['num_layers']} "
                                             f"num_heads={q['num_heads']}",
                  predicted=float(scaling.parametric_loss(par, N, tokens)),
                  predicted_minima=float(a * target_C ** gamma),
                  achieved=None, query=q)
    print(f"target C={target_C:.3g}: predicted N_opt={n_pred:.3g} -> {target['shape']} (N={N:.3g}, "
          f"D={tokens:.3g}); predicted loss {target['predicted']:.4f} (parametric), "
          f"{target['predicted_minima']:.4f} (IsoFLOP minima power law)")
    if train_target:
        rec, _ = sweep.query(q, counted=False, role='target')
        target['achieved'] = rec['final_loss']
        target['error'] = (target['predicted'] - rec['final_loss']) / rec['final_loss']
        target['error_minima'] = (target['predicted_minima'] - rec['final_loss']) / rec['final_loss']
        print(f"target achieved loss {rec['final_loss']:.4f}: prediction error {100 * target['error']:+.2f}% "
              f"(parametric), {100 * target['error_minima']:+.2f}% (minima power law)")
    return target


PRESETS = {
    # One H100, eager, about 7 minutes of training (time_limit_s=420) after ~1 minute of data preparation, on
    # byte-level pycode (data/pycode/prepare.py --vocab_size=257 --out_dir=data/pycode_bytes: 256 bytes +
    # '<|endoftext|>', no merges). With 257 outputs the lm_head and the loss cost ~2*257*d_model FLOPs a token,
    # nothing next to N = 12*L*d^2, so N is the real cost. (The first GPU sweep used the 16K BPE: its 0.1-2M
    # parameter models spent most of each step in the 16,384-way output layer, all ran at ~1.2M tokens/s whatever
    # N, and no IsoFLOP minimum was bracketed.) Four budgets, 3e13 to 1e15, 5 sizes each: models of ~0.1M-5M
    # parameters (bytes want more tokens per parameter than BPE tokens: the CPU sweep's optima sat at D/N ~ 60-80,
    # hence tokens_per_param=50 to centre the first curve) on 10M-500M tokens, at most ~1.5 epochs of the ~385M
    # train bytes; the target, 4x the largest budget (3x at least, if time runs short), trains ~3M parameters on
    # ~200M tokens. Models this small are launch- and memory-bound in eager mode (measured on the H100: 1.4-3.2M
    # tokens/s, 1-3% MFU, results/scaling_sweep_gpu.md), so wall-clock follows tokens (~sqrt(C) per curve), not
    # FLOPs. The time guard measures the real throughput after each run and shrinks or drops the later budgets and
    # the target to fit time_limit_s (with a 245-s limit it kept 3e13, 6e13 and 1.2e14 of the four budgets).
    # torch.compile would cost ~20-30 s per shape, more than most runs; bf16 autocast is train.py's default.
    'gpu': dict(data_dir='data/pycode_bytes', budgets=(3e13, 1e14, 3e14, 1e15), size_spread=16.0,
                size_spread_later=8.0, tokens_per_param=50.0, total_budget=2e16, target_ratio=4.0,
                min_target_ratio=3.0, time_limit_s=420.0, context_length=256, batch_size=128, learning_rate=2e-3,
                head_dim=64, train_overrides={'compile': False, 'optimizer': 'torch_adamw'}),
    # a CPU: models of 12k-200k parameters on a small token file (e.g. data/docs), a few minutes
    'cpu': dict(budgets=(2e10, 6e10, 2e11), size_spread=16.0, size_spread_later=8.0, total_budget=2e12,
                target_ratio=3.0, time_limit_s=0.0, context_length=64, batch_size=16, learning_rate=3e-3, head_dim=32,
                aspect_ratio=32.0, train_overrides={'compile': False, 'device': 'cpu'}),
    # the course's API (--backend=remote): 2e18 FLOPs in all, only its train_flops values, lr <= 1e-3;
    # the question it asked: the optimal model and loss at 1e19 FLOPs (predicted, not trainable there)
    'remote': dict(budgets=(1e16, 3e16, 1e17, 3e17), sizes_per_budget=4, size_spread=8.0, size_spread_later=4.0,
                   total_budget=2e18, target_budget=1e19, train_target=False, time_limit_s=0.0,
                   batch_size=128, learning_rate=1e-3),
}


def make_query_fn(batch_size, learning_rate):
    """shape + budget -> the query sent to a backend (the course API's fields)."""
    def make_query(shape, C):
        return dict(d_model=shape['d_model'], num_layers=shape['num_layers'], num_heads=shape['num_heads'],
                    batch_size=batch_size, learning_rate=learning_rate, train_flops=float(C))
    return make_query




# -----------------------------------------------------------------------------
# The command

def die(msg):
    """A user error: one line on stderr, exit code 2, nothing written (issue 32)."""
    print(f"bench/scaling.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def same_file(a, b):
    """True when paths a and b name one file (the same path, or links to one file)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_config(c):
    """Every key's range and the combinations, before anything is trained or written."""
    if c['mode'] not in ('sweep', 'analyze'):
        die(f"--mode={c['mode']!r}: use 'sweep' or 'analyze'")
    if c['n_bootstrap'] < 0:
        die(f"--n_bootstrap={c['n_bootstrap']}: give 0 (no intervals) or more resamples, e.g. 1000")
    if not c['huber_delta'] > 0:
        die(f"--huber_delta={c['huber_delta']}: the Huber threshold must be > 0 (Chinchilla: 1e-3)")
    if not all(isinstance(x, (int, float)) and x > 0 for x in c['extrapolate_to']):
        die(f"--extrapolate_to={c['extrapolate_to']!r}: give positive FLOP budgets, e.g. '(1e23,1e24)'")
    if not c['name'] or os.sep in c['name']:
        die(f"--name={c['name']!r}: give a file prefix without '{os.sep}' (the folder is --out_dir)")
    if c['mode'] == 'analyze':
        return
    if c['backend'] not in ('local', 'remote'):
        die(f"--backend={c['backend']!r}: use 'local' or 'remote'")
    if not c['budgets'] or not all(isinstance(x, (int, float)) and x > 0 for x in c['budgets']):
        die(f"--budgets={c['budgets']!r}: give 2 or more positive FLOP budgets, e.g. --budgets='(1e14,3e14,1e15)'")
    if len(set(c['budgets'])) < 2:
        die(f"--budgets={c['budgets']!r}: a scaling law needs 2 or more different budgets")
    positive = ('size_spread', 'size_spread_later', 'tokens_per_param', 'target_ratio', 'min_target_ratio',
                'context_length', 'batch_size', 'learning_rate', 'eval_iters', 'head_dim', 'aspect_ratio')
    for k in positive:
        if not c[k] > 0:
            die(f"--{k}={c[k]}: must be > 0")
    for k in ('total_budget', 'target_budget', 'time_limit_s'):
        if c[k] < 0:
            die(f"--{k}={c[k]}: must be >= 0 (0 = {'none' if k == 'time_limit_s' else 'derived'})")
    if c['sizes_per_budget'] < 3:
        die(f"--sizes_per_budget={c['sizes_per_budget']}: a parabola needs 3 or more sizes per budget")
    if c['size_spread'] <= 1 or c['size_spread_later'] <= 1:
        die(f"--size_spread={c['size_spread']}, --size_spread_later={c['size_spread_later']}: the largest model "
            f"must be more than 1x the smallest (e.g. 8.0)")
    if not 0 <= c['warmup_frac'] < 1:
        die(f"--warmup_frac={c['warmup_frac']}: give a fraction in [0, 1), e.g. 0.05")
    if c['backend'] == 'remote' and not c['api_key']:
        die("--backend=remote needs --api_key=<your key> (and --api_url if it moved)")
    if c['backend'] == 'local':
        for f in ('train.bin', 'val.bin', 'meta.json'):
            if not os.path.exists(os.path.join(c['data_dir'], f)):
                die(f"no token data at {os.path.join(c['data_dir'], f)}: run data/pycode/prepare.py (or data/docs/) "
                    f"first, or point --data_dir at a folder with train.bin, val.bin and meta.json"
                    + (" (the gpu preset's: python data/pycode/prepare.py --vocab_size=257 "
                       "--out_dir=data/pycode_bytes)" if c['preset'] == 'gpu' else ''))


def main():
    """Fill in the preset, check every key, then analyze --input or run the sweep; both end in the report."""
    c = {k: globals()[k] for k in CONFIG_KEYS}
    # 1) the preset fills every key left at its default (--backend=remote picks the remote preset)
    if c['backend'] == 'remote' and c['preset'] == DEFAULTS['preset']:
        c['preset'] = 'remote'
    if c['mode'] == 'sweep' and c['preset'] != 'none':
        if c['preset'] not in PRESETS:
            die(f"--preset={c['preset']!r}: use one of {sorted(PRESETS)} or 'none'")
        c.update({k: v for k, v in PRESETS[c['preset']].items() if c[k] == DEFAULTS[k]})
    c['name'] = c['name'] or ('scaling' if c['mode'] == 'analyze' else 'scaling_sweep')
    c['data_dir'] = c['data_dir'] if os.path.isabs(c['data_dir']) else os.path.join(ROOT, c['data_dir'])
    check_config(c)
    t0 = time.time()
    outputs = [os.path.join(c['out_dir'], c['name'] + s) for s in
               ('.md', '.json', '_isoflops.png', '_optimal.png', '_parametric.png')]

    if c['mode'] == 'analyze':
        # 2a) fit given runs; the outputs must not overwrite them
        path = c['input'] or scaling.default_input()
        if any(same_file(o, path) for o in outputs):
            die(f"--input={path} is one of the outputs (--out_dir/--name): give another --out_dir or --name")
        try:
            runs = scaling.load_runs(path)
        except (OSError, ValueError) as e:
            die(e)
        runs = [r for r in runs if r.get('role') != 'target']  # a sweep's check runs are not part of the fit
        if len(scaling.group_by_budget(runs)) < 2:
            die(f"{path}: every run has the same compute_budget; a scaling law needs runs at 2 or more budgets")
        summary = analyze(runs, c['out_dir'], c['name'], c['extrapolate_to'], c['n_bootstrap'], c['huber_delta'],
                          c['seed'], title=os.path.basename(path))
        scaling.print_summary(summary)
        print(f"wrote {c['out_dir']}/{c['name']}.md, .json and 3 plots in {time.time() - t0:.1f}s")
        return

    # 2b) the sweep: its budgets, backend and cache
    bud = sorted(float(x) for x in c['budgets'])
    target_C = c['target_budget'] or c['target_ratio'] * bud[-1]
    total = c['total_budget'] or 2 * c['sizes_per_budget'] * sum(bud)
    sweep_path = c['sweep_json'] or os.path.join(c['out_dir'], f"{c['name']}_runs.json")
    if any(same_file(o, sweep_path) for o in outputs):
        die(f"--sweep_json={sweep_path} is one of the report's outputs (--out_dir/--name): give another path")
    if os.path.exists(sweep_path):
        try:  # the cache of an earlier run: a broken file is refused before anything is trained
            scaling.load_runs(sweep_path)
        except ValueError as e:
            die(f"--sweep_json: {e} (move it away to start a new sweep)")
    print(f"sweep: budgets {bud}, {c['sizes_per_budget']} sizes each, total budget {total:.3g} FLOPs, "
          f"target {target_C:.3g}, runs recorded in {sweep_path}")
    train_tgt = c['train_target']
    if c['backend'] == 'local':
        with open(os.path.join(c['data_dir'], 'meta.json')) as f:
            vocab = json.load(f).get('vocab_size', 0)
        if vocab > 1024:  # N = 12 L d^2 leaves the output layer out: fine for bytes, not for a big vocabulary
            print(f"warning: vocab_size {vocab}: the output layer (2*{vocab}*d_model FLOPs a token, forward) is not "
                  f"in N = 12*L*d^2 and dominates small models, so C = 6ND understates their cost; a byte-level "
                  f"folder (vocab 257) keeps N the real cost")
        be = LocalBackend(dict(data_dir=c['data_dir'], context_length=c['context_length'],
                               warmup_frac=c['warmup_frac'], eval_iters=c['eval_iters'], seed=c['seed'],
                               device=c['device'], overrides=dict(c['train_overrides'])))
        shapes, plan = model_shapes(c['head_dim']), be.plan
    else:
        be = RemoteBackend(c['api_url'], c['api_key'])
        shapes, plan = model_shapes(64, 1024, 2, 24, 2, 16), None
        print(f"remote API: {be.total_flops_used()} FLOPs used so far")
        if target_C > RemoteBackend.TRAIN_FLOPS[-1]:
            train_tgt = False  # the API trains at most 1e18 FLOPs: predict only
    make_query = make_query_fn(c['batch_size'], c['learning_rate'])
    sweep = Sweep(sweep_path, total, be)
    if c['backend'] == 'remote':
        print(f"remote API: {import_previous_runs(sweep, be.previous_runs())} earlier runs added to the cache")

    # 3) IsoFLOP grids, small budgets first
    done, target_C = run_sweep(sweep, bud, make_query, shapes, c['sizes_per_budget'], c['size_spread'],
                               c['tokens_per_param'], c['aspect_ratio'], time_limit_s=c['time_limit_s'],
                               target_C=target_C, plan=plan, spread_later=c['size_spread_later'],
                               min_target_ratio=c['min_target_ratio'])
    if len({r['compute_budget'] for r in done}) < 2:
        die("fewer than 2 budgets finished: nothing to fit (raise --total_budget or --time_limit_s)")

    # 4) fit, predict the target, train it, compare, report
    time_left = c['time_limit_s'] - (time.time() - t0) if c['time_limit_s'] else None
    target = predict_and_check(sweep, done, target_C, make_query, shapes, c['aspect_ratio'], c['huber_delta'],
                               train_tgt, time_left, plan, c['min_target_ratio'])
    info = dict(backend=c['backend'], preset=c['preset'], runs=len(done), flops_used=sweep.flops_used,
                wall_s=round(time.time() - t0, 1), recipe=getattr(be, 'recipe', {}), runs_file=sweep_path)
    # extrapolate to the target budget (and to --extrapolate_to only when asked: 1e23 from 1e14 is a stretch)
    extrapolate = (target['C'],) + (tuple(c['extrapolate_to']) if c['extrapolate_to'] != DEFAULTS['extrapolate_to']
                                    else ())
    summary = analyze(done, c['out_dir'], c['name'], extrapolate, c['n_bootstrap'], c['huber_delta'], c['seed'],
                      title=f"sweep ({c['backend']})", target=target, info=info)
    scaling.print_summary(summary)
    print(f"sweep done in {info['wall_s']:.0f}s: {len(done)} runs, {sweep.flops_used:.3g} FLOPs; "
          f"wrote {c['out_dir']}/{c['name']}.md, .json and 3 plots")


if __name__ == '__main__':
    # the configurator sees only the config keys (not ROOT, PRESETS...): it treats every simple global as a key
    _cfg = dict({k: globals()[k] for k in CONFIG_KEYS}, __name__='__main__', __file__=__file__)
    exec(open(os.path.join(ROOT, 'configurator.py')).read(), _cfg)
    globals().update({k: _cfg[k] for k in CONFIG_KEYS})
    main()

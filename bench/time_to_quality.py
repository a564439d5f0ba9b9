"""
Time to quality, side by side: nanoGPT and lmscratch's train.py for the same wall-clock on the SAME token files,
both scored on the WHOLE validation split (non-overlapping windows, bits per byte from meta.json's val_bytes).

    python data/pycode/prepare.py                                      # the token files both runs read
    python bench/time_to_quality.py --data_dir=data/pycode --budget_s=300
    python bench/time_to_quality.py --runs=ours --variants='muon:;adamw:--optimizer=adamw' --budget_s=100  # A/B
    python bench/time_to_quality.py --config='config/pycode.py config/pycode_gpt2s.py' --n_layer=12 --n_head=12 \
        --n_embd=768 --context=1024 --batch=32 --nanogpt_lr=6e-4 --name=time_to_quality_gpt2s  # GPT-2 small's shape

The nanoGPT run is the reference harness `../shared/anchors/nanogpt_train.py` (nanoGPT's unmodified model.py, its
AdamW at lr 2e-3, a cosine by wall-clock to 10% with 2% warm-up, the clock started after compile), with one change:
every budget/10 seconds the clock is paused and the whole validation split is scored, which gives a curve instead of
one final number. Ours is `python train.py CONFIG --max_time_s=BUDGET --eval_interval_s=BUDGET/10`, whose clock
INCLUDES compile (so the comparison is conservative for us). Both curves, the time each run needs to reach
nanoGPT's final value, and a plot go to results/<name>.md and .png.
"""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
data_dir = 'data/pycode'  # a token folder (train.bin, val.bin, meta.json) written by data/*/prepare.py
budget_s = 300.0  # wall-clock seconds of training per run
runs = 'nanogpt,ours'  # which runs: nanogpt | ours (comma-separated)
config = 'config/pycode.py'  # train.py config file(s) of our run, space-separated (later ones override)
variants = 'ours:'  # ours' variants, 'name:flags;name:flags' (flags are extra train.py --key=value arguments)
anchors_dir = ''  # folder with nanoGPT's model.py ('' = ../shared/anchors/nanogpt beside the checkout, or .gpu/)
n_layer, n_head, n_embd, context, batch = 4, 16, 512, 256, 128  # the 4-layer shape, the same for both runs
nanogpt_lr = 2e-3  # the harness' default
name = 'time_to_quality'  # results/<name>.md and .png
out_root = 'out-ttq'  # run folders of ours
reference = ''  # a results/<name>.json of an earlier call on the same machine whose curves join this report
# -----------------------------------------------------------------------------


def die(msg):
    print(f"time_to_quality: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_split(d, split):
    meta = json.load(open(os.path.join(d, 'meta.json')))
    dt = np.uint32 if meta.get('dtype') == 'uint32' else np.uint16
    return np.memmap(os.path.join(d, f'{split}.bin'), dtype=dt, mode='r'), meta


def nanogpt_run(d, budget, anchors):
    """The anchor harness' loop, plus a full-validation score every budget/10 s with the clock paused.
    Returns [{'s', 'tokens', 'val_loss', 'val_bpb'}, ...]."""
    import torch
    sys.path.insert(0, anchors)
    from model import GPT, GPTConfig  # nanoGPT's model.py (MIT), unmodified
    tr, meta = load_split(d, 'train')
    va, _ = load_split(d, 'val')
    V, T, B, dev = meta['vocab_size'], context, batch, 'cuda'
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator().manual_seed(0)

    def get_batch():
        ix = torch.randint(len(tr) - T - 1, (B,), generator=g)
        x = torch.stack([torch.from_numpy(tr[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tr[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    m = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=T, vocab_size=V, bias=False,
                      dropout=0.0)).to(dev)
    opt = m.configure_optimizers(0.1, nanogpt_lr, (0.9, 0.95), dev)
    cm = torch.compile(m)
    ctx = torch.autocast(dev, dtype=torch.bfloat16)
    ids = torch.from_numpy(va.astype(np.int64))
    n = (len(ids) - 1) // T * T
    xa, ya = ids[:n].view(-1, T), ids[1:n + 1].view(-1, T)  # (N, T) non-overlapping windows

    @torch.no_grad()
    def full_val():  # summed nats over every predicted validation token, as the harness' final score
        m.eval()
        tot, cnt = 0.0, 0
        with ctx:
            for i in range(0, len(xa), 64):
                x, y = xa[i:i + 64].to(dev), ya[i:i + 64].to(dev)
                logits, _ = m(x, y)  # with targets nanoGPT returns logits at every position
                tot += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                                         reduction='sum').item()
                cnt += y.numel()
        m.train()
        return tot / cnt, tot / math.log(2) / meta['val_bytes']

    t0, it, paused, log, next_eval = None, 0, 0.0, [], 0.0
    while True:
        x, y = get_batch()
        if it == 3:  # the harness starts its clock after three (compiling) steps
            torch.cuda.synchronize()
            t0 = time.time()
        el = 0.0 if t0 is None else time.time() - t0 - paused
        frac = min(el / budget, 1.0)
        lr = nanogpt_lr * (frac / 0.02 if frac < 0.02 else 0.1 + 0.45 * (1 + math.cos(math.pi * (frac - 0.02) / 0.98)))
        for pg in opt.param_groups:
            pg['lr'] = lr
        with ctx:
            _, loss = cm(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        it += 1
        if t0 is not None and (el >= next_eval or el >= budget):
            e0 = time.time()
            vl, bpb = full_val()
            paused += time.time() - e0
            log.append({'s': round(el, 1), 'tokens': it * B * T, 'val_loss': round(vl, 4), 'val_bpb': round(bpb, 4)})
            print('nanogpt', json.dumps(log[-1]), flush=True)
            next_eval += budget / 10
            if el >= budget:
                return log


def ours_run(d, budget, flags, out_dir):
    """train.py as a subprocess; its log.jsonl's full-validation records make the curve."""
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *config.split(), f'--data_dir={d}', f'--out_dir={out_dir}',
           f'--max_time_s={budget}', f'--eval_interval_s={budget / 10}', '--overwrite=True', *flags.split()]
    print('$', ' '.join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        die(f"train.py failed (exit {r.returncode}): {' '.join(cmd)}")
    rows = [json.loads(l) for l in open(os.path.join(out_dir, 'log.jsonl'))]
    evals = [r for r in rows if r.get('full') and 'val_bpb' in r]
    return [{'s': round(r['elapsed_s'], 1), 'tokens': r['tokens'], 'val_loss': round(r['val_loss'], 4),
             'val_bpb': round(r['val_bpb'], 4)} for r in evals]


def time_to_reach(curve, target):
    """First time the curve is at or below target, linearly interpolated between evaluations (None if never)."""
    prev = None
    for p in curve:
        if p['val_bpb'] <= target:
            if prev is None:
                return p['s']
            f = (prev['val_bpb'] - target) / (prev['val_bpb'] - p['val_bpb'])
            return prev['s'] + f * (p['s'] - prev['s'])
        prev = p
    return None


def report(curves, path_md, path_png, device):
    ref = curves.get('nanogpt')
    target = ref[-1]['val_bpb'] if ref else None
    lines = [f"# Time to quality: {data_dir}, {budget_s:.0f} s per run", '',
             f"Device: {device}. Command: `python bench/time_to_quality.py {' '.join(sys.argv[1:])}`.",
             'Every value is bits per byte on the WHOLE validation split. nanoGPT\'s clock starts after compile '
             '(the anchor harness); ours includes compile.', '',
             '| run | final bits/byte | tokens | time to reach nanoGPT\'s final value |', '|---|---:|---:|---:|']
    for k, c in curves.items():
        t = time_to_reach(c, target) if target is not None else None
        lines.append(f"| {k} | {c[-1]['val_bpb']:.4f} | {c[-1]['tokens'] / 1e6:.0f}M | "
                     f"{'-' if t is None else f'{t:.0f} s'} |")
    lines += ['', '## Curves (seconds: bits/byte)', '']
    for k, c in curves.items():
        lines.append(f"- {k}: " + ', '.join(f"{p['s']:.0f}: {p['val_bpb']:.4f}" for p in c))
    tmp = path_md + '.tmp'
    open(tmp, 'w').write('\n'.join(lines) + '\n')
    os.replace(tmp, path_md)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, c in curves.items():
        ax.plot([p['s'] for p in c], [p['val_bpb'] for p in c], marker='o', label=k)
    if target is not None:
        ax.axhline(target, color='gray', ls=':', label=f"nanoGPT final {target:.4f}")
    ax.set(xlabel='seconds of training', ylabel='validation bits/byte (whole split)', title=f"{data_dir}")
    ax.set_ylim(top=min(1.2, max(p['val_bpb'] for c in curves.values() for p in c)))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_png + '.tmp.png', dpi=110)
    os.replace(path_png + '.tmp.png', path_png)
    print('\n'.join(lines))


def main():
    d = os.path.join(ROOT, data_dir) if not os.path.isabs(data_dir) else data_dir
    if not os.path.exists(os.path.join(d, 'meta.json')):
        die(f"no token folder at {d}: run `python data/pycode/prepare.py` first")
    if budget_s <= 0:
        die(f"--budget_s must be > 0, got {budget_s}")
    wanted = [r for r in runs.split(',') if r]
    if reference and not os.path.exists(reference):
        die(f"--reference={reference} not found: give the .json an earlier run of this benchmark wrote")
    if not wanted or set(wanted) - {'nanogpt', 'ours'}:
        die(f"--runs takes nanogpt and/or ours, got {runs!r}")
    anchors = anchors_dir or next((p for p in (os.path.join(ROOT, '..', 'shared', 'anchors', 'nanogpt'),
                                               os.path.join(ROOT, '.gpu', 'anchors', 'nanogpt'))
                                   if os.path.exists(os.path.join(p, 'model.py'))), '')
    if 'nanogpt' in wanted and not anchors:
        die("nanoGPT's model.py not found: pass --anchors_dir=<folder with nanoGPT's model.py>")
    import torch
    if not torch.cuda.is_available():
        die("this benchmark times GPU runs: no CUDA device found")
    curves = json.load(open(reference)) if reference else {}
    if 'nanogpt' in wanted:
        curves['nanogpt'] = nanogpt_run(d, budget_s, anchors)
        torch.cuda.empty_cache()  # its model and optimizer are gone: give their memory back before ours starts
    if 'ours' in wanted:
        for v in variants.split(';'):
            vname, _, flags = v.partition(':')
            curves[vname] = ours_run(d, budget_s, flags, os.path.join(ROOT, out_root, vname))
    os.makedirs(os.path.join(ROOT, 'results'), exist_ok=True)
    device = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    report(curves, os.path.join(ROOT, 'results', f'{name}.md'), os.path.join(ROOT, 'results', f'{name}.png'),
           device)
    tmp = os.path.join(ROOT, 'results', f'{name}.json.tmp')
    json.dump(curves, open(tmp, 'w'), indent=1)
    os.replace(tmp, os.path.join(ROOT, 'results', f'{name}.json'))


if __name__ == '__main__':
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    main()

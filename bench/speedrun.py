"""
bench/speedrun.py: the Python glue of speedrun.sh: its profiles (every size of a run), the small data steps
between the scripts' commands, and the report. Each step is a subcommand that reads files and writes files:

    python bench/speedrun.py profile gpu 1          # KEY=value lines for the shell (sizes of the gpu profile)
    python bench/speedrun.py cuda                   # exit code 0 when torch sees a CUDA device
    python bench/speedrun.py crawl GLOBS            # refuse a crawl that names no file or an empty one
    python bench/speedrun.py rundir RUN_DIR FRESH < config.env   # refuse a run folder of another configuration
    python bench/speedrun.py pages CC_DOCS DST      # cc_filter.py's kept records -> one .txt file per page
    python bench/speedrun.py webtext DATA_DIR       # deduplicated pages -> web.txt, counts -> dedup_stats.json
    python bench/speedrun.py pysrc DST MB           # a seeded sample of MB megabytes of the standard library
    python bench/speedrun.py mix TOK_DIR REPEAT     # web + pycode + task token files -> one folder for train.py
    python bench/speedrun.py fewshot TOKENIZER CTX MAX_NEW K TASK_DIR OUT      # the most shots (<= K) that fit
    python bench/speedrun.py pick_lr GRPO_DIR 'LR LR ...'  # the best final validation accuracy -> GRPO_DIR/out
    python bench/speedrun.py report RUN_DIR [PUBLISH_PREFIX]                   # RUN_DIR/report.md (+ a copy)

Every output is written to a temporary file first and then renamed: a killed step leaves no half-written file.
"""
import glob
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = '\n<|endoftext|>\n'  # between documents: what data/docs/prepare.py splits on

# -----------------------------------------------------------------------------
# Profiles: every size of a run. The GPU profile is budgeted for one H100 (80 GB): each stage < 10 minutes
# (results/speedrun_gpu.md). Stages that loop are capped by time (train.py max_time_s, grpo.py time_budget_s).
PROFILES = {
    'gpu': dict(
        DEVICE='cuda', DTYPE='bfloat16', COMPILE='True',
        PYSRC_MB=0,  # 0 = data/pycode/prepare.py's default: every .py of the running Python
        VOCAB=16384,  # the pycode corpus's choice (results/data.md): 16K balances tokens saved vs output layer
        # the task (data/arith/prepare.py's arithmetic word problems): 2-3 operations on numbers up to 20; its
        # worked solutions enter pre-training TASK_REPEAT times; val chooses, test reports, gen (one operation more
        # than any training problem) measures generalization
        TASK_N_TRAIN=60000, TASK_N_VAL=500, TASK_N_TEST=500, TASK_N_GEN=500, TASK_MIN_STEPS=2, TASK_MAX_STEPS=3,
        TASK_MAX_NUMBER=20, TASK_REPEAT=4,
        # pre-training: the A1 shape made 6 layers deep (arithmetic likes depth); 11,000 x 32,768 = 360M tokens,
        # with a hard stop (compilation included) so that the stage stays well under 10 minutes
        D_MODEL=512, N_LAYERS=6, N_HEADS=8, D_FF=1344, CTX=256, BATCH=128, ACCUM=1, MAX_ITERS=11000, MAX_TIME_S=330,
        LR=1.5e-3, MIN_LR=1.5e-4, WARMUP=300, EVAL_INTERVAL=2000, EVAL_ITERS=20, LOG_INTERVAL=100,
        OPTIMIZER='torch_adamw', SAMPLE_TOKENS=128,
        # SFT: 480 gold traces (15 steps x 32), short on purpose: the format is learnt in ~10 steps, and RL needs
        # a policy that is right only some of the time (a longer SFT left GRPO nothing to gain)
        SFT_EXAMPLES=20000, SFT_ITERS=15, SFT_BATCH=32, SFT_ACCUM=1, SFT_LR=3e-4, SFT_WARMUP=5,
        SFT_EVAL_INTERVAL=5, SFT_EVAL_N=200,
        # GRPO: 256 rollouts = 32 questions x 8 at temperature 0.7, on-policy, after a 25-step warm-up; one run
        # per rate in GRPO_LRS (space-separated), GRPO_TIME_S each (2 x ~150 s with loading and evaluations: the
        # stage fits a 10-minute call), the final validation accuracy chooses one
        # (3e-5 climbed smoothly where 1e-4 first halved the SFT policy's accuracy: results/speedrun_gpu_lr3e-5.md)
        GRPO_STEPS=500, GRPO_TIME_S=130, GRPO_ROLLOUT=256, GRPO_GROUP=8, GRPO_TRAIN_BATCH=256, GRPO_ACCUM=2,
        GRPO_LRS='3e-5 1e-4', GRPO_WARMUP=25, GRPO_TEMP=0.7, GRPO_EVAL_INTERVAL=25, GRPO_EVAL_N=256,
        MAX_NEW=96, GEN_BATCH=512,
        # evaluation: the base model k-shot with the most shots <= FEWSHOT whose prompts fit the context (each shot
        # is a whole worked problem: few fit 256 tokens); GSM8K (every test question that fits) for these models
        FEWSHOT=4, GSM8K_MODELS='base sft grpo'),
    'cpu': dict(  # tiny sizes: the whole chain in <= 10 minutes on 2 cores
        DEVICE='cpu', DTYPE='float32', COMPILE='False', PYSRC_MB=4, VOCAB=2048,
        TASK_N_TRAIN=4000, TASK_N_VAL=100, TASK_N_TEST=100, TASK_N_GEN=100, TASK_MIN_STEPS=1, TASK_MAX_STEPS=1,
        TASK_MAX_NUMBER=9, TASK_REPEAT=4,
        # context 256 in batches of 8 (2,048 tokens a step): room for a worked problem as a shot before a question
        D_MODEL=128, N_LAYERS=4, N_HEADS=4, D_FF=0, CTX=256, BATCH=8, ACCUM=1, MAX_ITERS=600, MAX_TIME_S=150,
        LR=3e-3, MIN_LR=3e-4, WARMUP=30, EVAL_INTERVAL=150, EVAL_ITERS=10, LOG_INTERVAL=25, OPTIMIZER='adamw',
        SAMPLE_TOKENS=64,
        SFT_EXAMPLES=2000, SFT_ITERS=30, SFT_BATCH=16, SFT_ACCUM=1, SFT_LR=1e-3, SFT_WARMUP=3,
        SFT_EVAL_INTERVAL=-1, SFT_EVAL_N=50,
        GRPO_STEPS=200, GRPO_TIME_S=40, GRPO_ROLLOUT=64, GRPO_GROUP=8, GRPO_TRAIN_BATCH=64, GRPO_ACCUM=1,
        GRPO_LRS='1e-4 3e-4', GRPO_WARMUP=0, GRPO_TEMP=0.7, GRPO_EVAL_INTERVAL=-1, GRPO_EVAL_N=50,
        MAX_NEW=32, GEN_BATCH=128, FEWSHOT=4, GSM8K_MODELS='grpo'),
}
# the test's size: the cpu profile made smaller, every stage in seconds; shows the chain works, not what it learns
PROFILES['tiny'] = dict(
    PROFILES['cpu'], PYSRC_MB=0.3, VOCAB=512, TASK_N_TRAIN=200, TASK_N_VAL=16, TASK_N_TEST=16, TASK_N_GEN=16,
    TASK_REPEAT=1,
    D_MODEL=32, N_LAYERS=2, N_HEADS=2, BATCH=8, MAX_ITERS=16, MAX_TIME_S=30, WARMUP=5, EVAL_INTERVAL=8, EVAL_ITERS=2,
    LOG_INTERVAL=4, SAMPLE_TOKENS=16, SFT_EXAMPLES=50, SFT_ITERS=4, SFT_BATCH=8, SFT_WARMUP=1, SFT_EVAL_N=16,
    GRPO_STEPS=2, GRPO_TIME_S=30, GRPO_ROLLOUT=16, GRPO_GROUP=4, GRPO_TRAIN_BATCH=16, GRPO_LRS='3e-4 1e-3',
    GRPO_EVAL_N=16,
    MAX_NEW=16, GEN_BATCH=64, FEWSHOT=1)
# a 24 GB GPU: the gpu profile with 4x smaller micro-batches and 4x the accumulation (the same global batches)
PROFILES['gpu24'] = dict(PROFILES['gpu'], BATCH=32, ACCUM=4, SFT_ACCUM=4, GRPO_ACCUM=8, GEN_BATCH=256)


def die(msg):
    """A user error: one line on stderr, exit code 2."""
    print(f"speedrun: error: {msg}", file=sys.stderr)
    sys.exit(2)


def profile(name, nproc='1'):
    """Print the profile as shell assignments (`eval`ed by speedrun.sh), the run's sizes in PROFILE_KEYS.
    torchrun keeps the global batch: gradient_accumulation_steps counts micro-batches over all ranks (train.py)."""
    if name not in PROFILES:
        die(f"unknown profile {name!r}: use one of {', '.join(PROFILES)}")
    p, nproc = dict(PROFILES[name]), int(nproc)
    if nproc > 1 and p['ACCUM'] % nproc:
        if p['BATCH'] * p['ACCUM'] % nproc:
            die(f"--nproc={nproc} does not divide the global batch of {p['BATCH'] * p['ACCUM']}")
        p['BATCH'], p['ACCUM'] = p['BATCH'] * p['ACCUM'] // nproc, nproc
    p['NPROC'] = nproc
    p['NW'] = 0  # worker processes of the data scripts: 0 = all cores
    for k, v in p.items():
        print(f"{k}={shlex.quote(str(v))}")
    print(f"PROFILE_KEYS={shlex.quote(' '.join(p))}")


def crawl(globs):
    """Refuse a crawl (comma-separated globs) that names no file, or an empty file: a clear line before any stage."""
    files = [f for g in globs.split(',') for f in sorted(glob.glob(os.path.expanduser(g))) if os.path.isfile(f)]
    if not files:
        die(f"--crawl='{globs}' matches no file. Give a glob of WARC/WET files (quoted), e.g. "
            f"--crawl='../shared/data/a4/*.warc.gz', or set LMSCRATCH_DATA to the shared data folder")
    for f in files:
        if os.path.getsize(f) == 0:
            die(f"crawl file '{f}' is empty")


def rundir(run_dir, fresh):
    """Make run_dir a speedrun folder of this configuration (config.env, read from stdin as KEY=value lines):
    --fresh (fresh=1) wipes a speedrun folder, never another one; a folder made with other sizes or inputs is
    refused, as is a non-empty folder without config.env."""
    text, path = sys.stdin.read(), os.path.join(run_dir, 'config.env')
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:  # run_dir (or a folder above it) is a file, or not writable
        die(f"--run_dir={run_dir}: {'a file, not a folder' if os.path.isfile(run_dir) else e.strerror}: "
            f"give an empty or new folder")
    if fresh == '1':
        if os.listdir(run_dir) and not os.path.exists(path):
            die(f"--fresh: {run_dir} is not empty and has no config.env: not a speedrun folder, not wiping it")
        for name in os.listdir(run_dir):
            p = os.path.join(run_dir, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
    if os.path.exists(path):
        with open(path) as f:
            old = dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line)
        new = dict(line.split('=', 1) for line in text.splitlines() if '=' in line)
        diff = [f"{k}={new.get(k)} now, {old.get(k)} there" for k in {**new, **old} if new.get(k) != old.get(k)]
        if diff:
            die(f"{run_dir} was made with another configuration ({'; '.join(diff)}): rerun with --fresh to start "
                f"over there, or give another --run_dir")
    elif os.listdir(run_dir):
        die(f"{run_dir} is not empty and has no config.env: give an empty or new --run_dir")
    else:
        write_atomic(path, text)


def cuda():
    """Exit code 0 when torch sees a CUDA device (speedrun.sh picks the gpu profile then)."""
    try:
        import torch
    except ImportError:
        sys.exit(1)
    sys.exit(0 if torch.cuda.is_available() else 1)


# -----------------------------------------------------------------------------
# Data steps (stage 1) and the token mix (stage 2)

def write_atomic(path, text):
    """Write text to path.tmp, then rename: readers never see half a file."""
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def pages(src, dst):
    """cc_filter.py's kept records (src/*.jsonl, one {'text'} a line) -> dst/0000001.txt ...: dedup.py works on one
    file per document (exact line dedup counts lines across the whole corpus)."""
    os.makedirs(dst, exist_ok=True)
    n = 0
    for path in sorted(glob.glob(os.path.join(src, '*.jsonl'))):
        with open(path, encoding='utf-8') as f:
            for line in f:
                n += 1
                write_atomic(os.path.join(dst, f'{n:07d}.txt'), json.loads(line)['text'])
    print(f"{n} kept pages -> {dst}/*.txt")


def folder_stats(folder):
    """(texts, counts) of the .txt files of a folder."""
    texts = []
    for p in sorted(glob.glob(os.path.join(folder, '*.txt'))):
        with open(p, encoding='utf-8') as f:
            texts.append(f.read())
    return texts, {'docs': len(texts), 'nonempty_docs': sum(bool(t.strip()) for t in texts),
                   'lines': sum(len(t.splitlines()) for t in texts), 'bytes': sum(len(t.encode()) for t in texts)}


def webtext(d):
    """d/dedup/*.txt (the surviving pages) -> d/web.txt, '<|endoftext|>' between documents; the counts of each
    step (pages, lines, dedup) -> d/dedup_stats.json for the report."""
    stats = {name: folder_stats(os.path.join(d, name))[1] for name in ('pages', 'lines')}
    texts, stats['dedup'] = folder_stats(os.path.join(d, 'dedup'))
    docs = [t.strip() for t in texts if t.strip()]
    if not docs:
        die(f"no page of the crawl survived the filters and deduplication ({stats['pages']['docs']} kept by "
            f"cc_filter.py, see {d}/cc/report.json): give a crawl with English text")
    write_atomic(os.path.join(d, 'web.txt'), EOT.join(docs))
    stats['web'] = {'docs': len(docs), 'bytes': sum(len(t.encode()) for t in docs)}
    write_atomic(os.path.join(d, 'dedup_stats.json'), json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


def pysrc(dst, mb):
    """A seeded-order sample of `mb` megabytes of the standard library's .py files (the CPU profiles' pycode
    source; the whole environment is hundreds of MB). data/pycode/prepare.py applies its own rules in stage 2."""
    mb = float(mb)
    root = sysconfig.get_paths()['stdlib']
    files = sorted(os.path.join(dp, f) for dp, dn, fs in os.walk(root) for f in fs
                   if f.endswith('.py') and 'site-packages' not in dp)
    files.sort(key=lambda p: hashlib.sha1(p.encode()).hexdigest())  # a fixed, spread-out order over the folders
    size, n, n_val = 0, 0, 0
    for p in files:
        with open(p, 'rb') as f:
            data = f.read()
        if not data:
            continue
        is_val = hashlib.sha1(data).digest()[0] % 100 == 0  # prepare.py's validation rule: we need some of each
        if size >= mb * 1e6:  # enough bytes: only look for validation files until there are 2
            if n_val >= 2:
                break
            if not is_val:
                continue
        out = os.path.join(dst, os.path.relpath(p, root))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(p, out)
        size, n, n_val = size + len(data), n + 1, n_val + is_val
    print(f"pycode sample: {n} files ({n_val} in validation), {size / 1e6:.1f} MB of {root} -> {dst}")


def mix(t, repeat):
    """t/{web,pycode,task}/ token folders -> t/tokens/: train = web + pycode + task x repeat, val = web + pycode
    (natural text, for bits per byte). meta.json follows data/*/prepare.py's (vocab_size, dtype, eot_id)."""
    import numpy as np
    repeat = int(repeat)
    metas = {}
    for c in ('web', 'pycode', 'task'):
        with open(os.path.join(t, c, 'meta.json')) as f:
            metas[c] = json.load(f)
    dtype = metas['web']['dtype']
    os.makedirs(os.path.join(t, 'tokens'), exist_ok=True)
    parts = {'train': [('web', 1), ('pycode', 1), ('task', repeat)], 'val': [('web', 1), ('pycode', 1)]}
    sizes = {}
    for split, plan in parts.items():
        out = os.path.join(t, 'tokens', f'{split}.bin')
        with open(out + '.tmp', 'wb') as f:
            for corpus, k in plan:
                arr = np.fromfile(os.path.join(t, corpus, f'{split}.bin'), dtype=dtype)
                for _ in range(k):
                    arr.tofile(f)
                sizes[f'{split}_{corpus}'] = int(len(arr)) * k
        os.replace(out + '.tmp', out)
    meta = {'vocab_size': metas['web']['vocab_size'], 'dtype': dtype, 'eot_id': metas['web']['eot_id'],
            'tokenizer_dir': os.path.abspath(os.path.join(t, 'tokenizer')),
            'val_bytes': sum(metas[c]['splits']['val']['bytes'] for c in ('web', 'pycode')),
            'tokens': sizes, 'task_repeat': repeat,
            'sources': {c: {k: m[k] for k in ('splits', 'bytes_per_token') if k in m} for c, m in metas.items()}}
    write_atomic(os.path.join(t, 'tokens', 'meta.json'), json.dumps(meta, indent=1))
    print(json.dumps(sizes, indent=1))


def fewshot(tok_dir, ctx, max_new, k_max, task_dir, out):
    """The most shots k <= k_max for which every test and gen prompt of the k-shot form, plus min(max_new, 32)
    answer tokens, fits the context -> out (a line 'k'; 0 = not even one shot fits). sft.py --fewshot refuses a split
    that does not fit whole, and makes its prompts the same way: the first k training problems with a trace."""
    sys.path.insert(0, ROOT)
    import bpe
    import sft
    tok, room = bpe.Tokenizer.from_dir(tok_dir), int(ctx) - min(int(max_new), 32)
    train = [p for p in sft.load_problems(os.path.join(task_dir, 'train.jsonl'), '{question}') if 'trace' in p]
    k = min(int(k_max), len(train))
    while k > 0:
        longest = max((len(tok.encode(p['prompt'])) for s in ('test', 'gen')
                       for p in sft.load_problems(os.path.join(task_dir, f'{s}.jsonl'), '', train[:k])), default=0)
        print(f"{k}-shot: longest test/gen prompt {longest} tokens, room for {room} (context {ctx})")
        if longest <= room:
            break
        k -= 1
    write_atomic(out, f"{k}\n")
    print(f"few-shot evaluation of the base model: k = {k} -> {out}")


# -----------------------------------------------------------------------------
# The report: reads only what the stages wrote

def pick_lr(grpo_dir, lrs):
    """GRPO ran once per rate into grpo_dir/lr<LR>/: the best final accuracy on the VALIDATION split (its last
    evaluation; the first rate wins a tie) chooses the rate, whose folder becomes grpo_dir/out. Every rate's result
    goes to grpo_dir/lr_sweep.json. The test and gen splits are not read: they are reported once, in the eval stage."""
    rows = []
    for lr in lrs.split():
        log = os.path.join(grpo_dir, f'lr{lr}', 'grpo_log.jsonl')
        evals = [r for r in map(json.loads, open(log)) if 'accuracy' in r] if os.path.exists(log) else []
        if not evals:
            die(f"{log}: no validation evaluation logged (did grpo.py run with --eval_n > 0?)")
        steps = max([r['step'] for r in evals])
        rows.append(dict(lr=lr, steps=steps, **{k: evals[-1][k] for k in ('accuracy', 'ci95', 'n')}))
    best = max(rows, key=lambda r: r['accuracy'])  # max keeps the first of equal ones
    write_atomic(os.path.join(grpo_dir, 'lr_sweep.json'), json.dumps(dict(chosen=best['lr'], runs=rows), indent=1))
    os.replace(os.path.join(grpo_dir, f"lr{best['lr']}"), os.path.join(grpo_dir, 'out'))
    print(f"lr {best['lr']} chosen on validation: " + ', '.join(f"{r['lr']}: {r['accuracy']:.3f}" for r in rows))


def table(header, rows):
    """A Markdown table: first column left-aligned, the others right-aligned."""
    out = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' if i == 0 else '---:' for i in range(len(header))) + '|']
    return out + ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]


def pct(a, b):
    return f"{100 * a / b:.1f}%" if b else '-'


def git_commit():
    """The short commit of the checkout, marked when it has local changes."""
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return commit + (' (+ local changes)' if dirty else '')
    except OSError:
        return '?'


def report(run_dir, publish=''):
    """run_dir/report.md: a table per stage, loss curves, accuracies, wall-clock, device and versions; with
    `publish` (e.g. results/speedrun_gpu) also PREFIX.md beside PREFIX_<name>.png copies of its images."""
    import torch

    def J(*p):
        return os.path.join(run_dir, *p)

    def load(path, default=None):
        try:
            with open(J(path)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default

    def jsonl(path):
        if not os.path.exists(J(path)):
            return []
        with open(J(path), encoding='utf-8') as f:
            return [json.loads(line) for line in f if line.strip()]

    def count_lines(path):
        if not os.path.exists(J(path)):
            return 0
        with open(J(path), encoding='utf-8') as f:
            return sum(1 for _ in f)

    with open(J('config.env')) as f:
        cfg = dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line)
    L, images = [], []

    def image(rel, title):
        if os.path.exists(J(rel)):
            images.append(rel)
            L.extend(['', f'![{title}]({rel})'])

    stage_s = {st: (load(f'{st}/DONE') or {}).get('wall_s')
               for st in ('data', 'tokenizer', 'pretrain', 'sft', 'grpo', 'eval')}
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg['DEVICE'] == 'cuda' else \
        f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    total = sum(v for v in stage_s.values() if v)
    L += [f"# lmscratch speedrun: profile '{cfg['PROFILE']}'", '',
          f"Device: {dev}. Python {platform.python_version()}, torch {torch.__version__}"
          f"{', CUDA ' + torch.version.cuda if torch.version.cuda else ''}; git {git_commit()}. "
          f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Run folder: `{run_dir}`.", '',
          f"Command: `bash speedrun.sh --{cfg['PROFILE']}`"
          + (f" (--nproc={cfg['NPROC']})" if cfg['NPROC'] != '1' else '')
          + f"; crawl `{cfg['CRAWL']}`. Wall-clock of the stages: **{total / 60:.1f} minutes** in all.", '',
          '## Wall-clock per stage', '']
    L += table(['stage', 'seconds', 'minutes'],
               [(k, f"{v:.0f}" if v else '-', f"{v / 60:.1f}" if v else '-') for k, v in stage_s.items()]
               + [('**total**', f"{total:.0f}", f"{total / 60:.1f}")])

    # 1) data
    rep, dd = load('data/cc/report.json', {}), load('data/dedup_stats.json', {})
    c = rep.get('counts', {})
    L += ['', '## 1. Data', '', f"Crawl: {rep.get('files', 0)} file(s), {c.get('records', 0):,} records -> "
          "`cc_filter.py` (fastText language ID: English at >= 0.5; Gopher rules; PII masks) -> one file per page -> "
          "`dedup.py --mode=exact` (lines that occur more than once anywhere are removed) -> `dedup.py --mode=minhash` "
          "(word 5-grams, Jaccard >= 0.8).", '']
    rows, n = [], c.get('records', 0)
    for name, key in [('not HTML', 'drop_not_html'), ('undecodable', 'drop_undecodable'),
                      ('empty text', 'drop_empty'), ('language (not English / unsure)', 'drop_lang'),
                      ('gopher: word count', 'drop_gopher_words'),
                      ('gopher: mean word length', 'drop_gopher_word_length'),
                      ('gopher: ellipsis lines', 'drop_gopher_ellipsis'),
                      ('gopher: words with a letter', 'drop_gopher_alpha')]:
        rows.append((name, f"{n:,}", f"{c.get(key, 0):,}", f"{n - c.get(key, 0):,}", pct(c.get(key, 0), n)))
        n -= c.get(key, 0)
    pg, ln, dedup = dd.get('pages', {}), dd.get('lines', {}), dd.get('dedup', {})
    if pg:
        rows.append(('exact line dedup: pages left empty', f"{pg['docs']:,}", pg['docs'] - ln['nonempty_docs'],
                     f"{ln['nonempty_docs']:,}", pct(pg['docs'] - ln['nonempty_docs'], pg['docs'])))
        rows.append(('MinHash near-duplicate pages', f"{ln['nonempty_docs']:,}",
                     ln['nonempty_docs'] - dedup['nonempty_docs'], f"{dedup['nonempty_docs']:,}",
                     pct(ln['nonempty_docs'] - dedup['nonempty_docs'], ln['nonempty_docs'])))
    L += table(['filter (documents)', 'in', 'dropped', 'kept', 'dropped %'], rows)
    if pg:
        L += ['', f"Lines: {pg['lines']:,} in the kept pages, {ln['lines']:,} after exact line dedup "
              f"({pct(pg['lines'] - ln['lines'], pg['lines'])} removed). PII masked: {c.get('pii_emails', 0)} "
              f"emails, {c.get('pii_phones', 0)} phone numbers, {c.get('pii_ips', 0)} IPv4 addresses. Web text kept: "
              f"{dd['web']['docs']:,} documents, {dd['web']['bytes'] / 1e6:.2f} MB (`data/web.txt`)."]
    pm = load('tokenizer/pycode/meta.json', {})
    files = pm.get('manifest', {}).get('files', {})
    if files:
        L += ['', f"pycode (`data/pycode/prepare.py` in stage 2; source: {', '.join(pm.get('source', []))}):", '']
        L += table(['step', 'files', 'MB'], [(k, f"{v['files']:,}", f"{v['bytes'] / 1e6:.2f}")
                                            for k, v in files.items() if isinstance(v, dict) and 'files' in v])
    n_task = {x: count_lines(f'data/task/{x}.jsonl') for x in ('train', 'val', 'test', 'gen')}
    L += ['', f"Task (`data/arith/prepare.py`): {n_task['train']:,} training problems with worked traces "
          f"({cfg['TASK_MIN_STEPS']}-{cfg['TASK_MAX_STEPS']} operations on numbers up to {cfg['TASK_MAX_NUMBER']}); "
          f"held out: {n_task['val']:,} validation (only for choosing: the validation curves below), "
          f"{n_task['test']:,} test (reported once) and {n_task['gen']:,} gen problems "
          f"({int(cfg['TASK_MAX_STEPS']) + 1} operations, more than any training problem), none sharing its "
          "structure (start, operations, numbers) with a training problem. "
          f"The training problems' worked solutions in a plain 'Question/Solution/Answer' form (no tags) join "
          f"pre-training x{cfg['TASK_REPEAT']}: the base model sees the arithmetic, SFT teaches the <think>/<answer> "
          "format."]

    # 2) tokenizer
    tm = load('tokenizer/tokens/meta.json', {})
    L += ['', '## 2. Tokenizer', '', f"`bpe.py` trained on the kept web text: vocabulary {tm.get('vocab_size')} "
          f"(256 bytes + merges + '<|endoftext|>'), {tm.get('dtype')} token files.", '']
    rows = []
    for corpus, m in tm.get('sources', {}).items():
        sp = m.get('splits', {})
        rows.append((corpus, f"{sp.get('train', {}).get('tokens', 0):,}", f"{sp.get('val', {}).get('tokens', 0):,}",
                     f"{m.get('bytes_per_token', 0):.2f}"))
    L += table(['corpus', 'train tokens', 'val tokens', 'bytes / token'], rows)
    tok = tm.get('tokens', {})
    tr = sum(v for k, v in tok.items() if k.startswith('train'))
    L += ['', f"Pre-training mix (`tokenizer/tokens/`): {tr:,} train tokens = " + ', '.join(
          f"{k[6:]} {pct(v, tr)}" for k, v in tok.items() if k.startswith('train_')) + '; validation = web + pycode '
          f"val ({sum(v for k, v in tok.items() if k.startswith('val')):,} tokens, {tm.get('val_bytes', 0):,} bytes)."]

    # 3) pre-training
    s = load('pretrain/out/summary.json', {})
    log = jsonl('pretrain/out/log.jsonl')
    last = ([r for r in log if 'train_loss' in r] or [{}])[-1]  # the last logged training step

    def num(v, fmt):
        return '-' if v is None else format(v, fmt)

    L += ['', '## 3. Pre-training', '']
    if s:
        L += table(['what', 'value'], [
            ('model', f"{cfg['N_LAYERS']} layers x {cfg['D_MODEL']}, {cfg['N_HEADS']} heads, context {cfg['CTX']}, "
                      f"{s['n_params'] / 1e6:.2f}M non-embedding parameters"),
            ('iterations x tokens', f"{s['iters']:,} x {int(cfg['BATCH']) * int(cfg['ACCUM']) * int(cfg['CTX']):,} = "
                                    f"{s['tokens'] / 1e6:.1f}M tokens"),
            ('time (training clock, incl. compile; evaluations not counted)',
             f"{num(s.get('elapsed_s', s.get('time_s')), '.0f')} s"),
            ('throughput (training clock)', f"{s['tokens_per_s']:,.0f} tokens/s"),
            ('MFU (last logged steps)', f"{100 * last['mfu']:.1f}%" if last.get('mfu') else '- (CPU)'),
            ('final train loss', num(last.get('train_loss', s.get('train_loss')), '.3f')),
            ('**validation loss** (nats/token, the whole split)', f"**{s['val_loss']:.3f}**"),
            ('**validation bits per byte**', f"**{s['val_bpb']:.3f}**" if s.get('val_bpb') else '-')])
        evals = [r for r in log if 'val_loss' in r]
        L += ['', 'Periodic validation:', '']
        L += table(['iteration', 'tokens', 'val loss', 'bits/byte'], [(r['iter'], f"{r['tokens'] / 1e6:.1f}M",
                   f"{r['val_loss']:.3f}", num(r.get('val_bpb'), '.3f')) for r in evals])
        if s.get('sample'):
            L += ['', 'Sample (prompt "Question: ", temperature 0.8):', '', '```', s['sample'].strip()[:600], '```']
    image('pretrain/out/loss.png', 'pre-training loss')

    # 4-6) post-training and evaluation (sft.py --mode=eval: eval/<model>/eval_metrics.jsonl, one line per split)
    def metrics(m, split):
        rows = [r for r in jsonl(f'eval/{m}/eval_metrics.jsonl') if r.get('split') == split and r.get('n')]
        if not rows:
            return None
        samples = jsonl(f'eval/{m}/eval_{split}.jsonl')
        return dict(rows[0], example=samples[0] if samples else None)

    L += ['', '## 4. SFT', '', f"`sft.py --mode=sft` from the pre-trained checkpoint, tokenizer `tokenizer/tokenizer`: "
          f"{cfg['SFT_ITERS']} steps x {cfg['SFT_BATCH']} examples (of the first {cfg['SFT_EXAMPLES']} problems' gold "
          f"traces), lr {cfg['SFT_LR']}. Prompt: `User: {{question}}\\nAssistant: <think>` (r1_zero's ending)."]
    slog = jsonl('sft/out/sft_log.jsonl')
    if plot_curves([r for r in slog if 'loss' in r], 'loss', [r for r in slog if 'accuracy' in r],
                   J('report', 'sft_curves.png'), 'SFT'):
        image('report/sft_curves.png', 'SFT loss and validation accuracy')
    glog = jsonl('grpo/out/grpo_log.jsonl')
    steps = [r for r in glog if 'train_reward' in r]
    warm = '' if cfg.get('GRPO_WARMUP', '0') in ('0', '') else f" (linear warm-up over {cfg['GRPO_WARMUP']} steps)"
    sweep = load('grpo/lr_sweep.json', {'chosen': '?', 'runs': []})
    L += ['', '## 5. GRPO', '', f"`grpo.py` from the SFT checkpoint, once per learning rate (same start and seed, "
          f"time budget {cfg['GRPO_TIME_S']} s each): {cfg['GRPO_ROLLOUT']} rollouts a step ({cfg['GRPO_GROUP']} "
          f"per question), temperature {cfg['GRPO_TEMP']}, reinforce_with_baseline{warm}, up to {cfg['MAX_NEW']} new "
          f"tokens; reward = the grader's answer reward. The final accuracy on the **validation** split chose "
          f"lr **{sweep['chosen']}**; only that run is evaluated on test and gen (section 6)."]
    L += [''] + table(['lr', 'GRPO steps', 'final validation accuracy', '95% interval', 'n'], [
        (r['lr'] + (' (chosen)' if r['lr'] == sweep['chosen'] else ''), r['steps'], f"{100 * r['accuracy']:.1f}%",
         f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%", r['n']) for r in sweep['runs']])
    if steps:
        L += ['', f"The chosen run: training reward {steps[0]['train_reward']:.3f} at step 1 -> "
              f"{steps[-1]['train_reward']:.3f} at step {steps[-1]['step']}; rollouts at "
              f"{sum(r.get('rollout_tokens_per_s', 0) for r in steps) / len(steps):,.0f} tokens/s on average."]
    if plot_curves(steps, 'train_reward', [r for r in glog if 'accuracy' in r], J('report', 'grpo_curves.png'), 'GRPO'):
        image('report/grpo_curves.png', 'GRPO training reward and validation accuracy')
    # one table per split; every accuracy with its 95% Wilson interval (sft.py's ci95)
    def row(label, prompt, r):
        return (label, prompt, f"**{100 * r['accuracy']:.1f}%**", f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%",
                f"{100 * r['format_rate']:.1f}%", f"{r['mean_len']:.1f}")

    k = (load('eval/fewshot_k') or 0)  # the shots that fit the context (0: the base model was not run k-shot)
    models = [('base', 'base (pre-trained)', 'r1_zero'), ('base_fewshot', 'base (pre-trained)', f'{k}-shot'),
              ('sft', 'SFT', 'r1_zero'), ('grpo', 'GRPO', 'r1_zero')]
    names = {m: label for m, label, _ in models}
    L += ['', '## 6. Evaluation', '', f"`sft.py --mode=eval`, greedy, up to {cfg['MAX_NEW']} new tokens (fewer where "
          "the context ends); task accuracy with its 95% Wilson interval, each on a named split. Prompts: "
          "**r1_zero** (the SFT prompt; graded on `</think> <answer> ... </answer>` holding the exact value; format "
          f"rate = that form) and, for the base model, **{k}-shot**: {k} worked training problem(s), then the "
          "question, in the plain 'Question/Solution/Answer' form of pre-training (graded on the `Answer:` line; "
          "format rate = that line is there)"
          + ('.' if k else f"; skipped: not one shot fits the {cfg['CTX']}-token context.")]
    res = {}
    n_ops = int(cfg['TASK_MAX_STEPS']) + 1
    for split, title in [('test', f"Task test split ({n_task['test']} problems, like training's)"),
                         ('gen', f"Generalization split gen ({n_task['gen']} problems, {n_ops} operations: one more "
                                 "than any training problem)")]:
        res[split] = {m: metrics(m, split) for m, _, _ in models}
        rows = [row(label, prompt, res[split][m]) for m, label, prompt in models if res[split][m]]
        L += ['', f"{title}:", '']
        L += table(['model', 'prompt', f'{split} accuracy', '95% interval', 'format rate', 'mean response tokens'],
                   rows) if rows else [f"No {split} results in this run."]
    if s:
        L += ['', f"Base model: validation loss {s['val_loss']:.3f} nats/token"
              + (f", {s['val_bpb']:.3f} bits per byte" if s.get('val_bpb') else '')
              + " (web + pycode validation text)."]
    gsm = {m: metrics(m, 'gsm8k') for m in ('base', 'sft', 'grpo')}
    ran = any(r.get('split') == 'gsm8k' for m in ('base', 'sft', 'grpo') for r in jsonl(f'eval/{m}/eval_metrics.jsonl'))
    if any(gsm.values()):
        L += ['', f"GSM8K test (split gsm8k): every test question whose prompt (the r1_zero template) leaves room for "
              f"an answer in the {cfg['CTX']}-token context, graded by `parse_gsm8k_response` (the last number); "
              "format rate = a number was found. These models are tiny and saw no grade-school word problems beyond "
              "the synthetic task.", '']
        L += table(['model', 'prompt', 'gsm8k accuracy', '95% interval', 'format rate', 'mean response tokens'],
                   [row(names[m], f"r1_zero, n={r['n']}", r) for m, r in gsm.items() if r])
    elif ran:
        L += ['', f"GSM8K: no test question leaves room for an answer in the {cfg['CTX']}-token context: no result."]
    else:
        L += ['', "GSM8K: not evaluated in this run (the shared test set `$LMSCRATCH_DATA/a5/gsm8k/test.jsonl` was "
              "not found when the eval stage ran)."]
    ex = [(names[m], r['example']) for m, r in res['test'].items() if r and r['example'] and m != 'base_fewshot']
    if ex:
        L += ['', f"First test problem, ground truth {ex[0][1]['ground_truth']}:", '', '```',
              ex[0][1]['prompt'].strip()]
        L += [f"[{name}] {e['response'].strip()[:300]}" for name, e in ex] + ['```']
    if any(res['test'].values()):
        plot_accuracy(res, [(m, f"{label}\n{prompt}") for m, label, prompt in models], J('report_accuracy.png'))
        image('report_accuracy.png', 'accuracy on the test and gen splits, 95% intervals')

    # 7) reproduction
    L += ['', '## 7. Commands and versions', '', "Every command with its exit code and seconds: `logs/<stage>.jsonl`; "
          "their output: `logs/<stage>.log`. Sizes of this run (`config.env`):", '', '```']
    L += [f"{k}={v}" for k, v in cfg.items()] + ['```']
    L += ['', 'Versions: ' + versions() + '.']
    md = '\n'.join(L) + '\n'
    write_atomic(J('report.md'), md)
    print(md)
    if publish:
        publish_report(run_dir, md, images, publish)


def plot_accuracy(res, models, path):
    """Bars of accuracy per model on each split (res[split][model]: eval_metrics rows), 95% intervals as error bars."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = [(m, label) for m, label in models if any(res[sp].get(m) for sp in res)]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    w = 0.8 / len(res)
    for j, (split, rows) in enumerate(res.items()):
        xs = [i + (j - (len(res) - 1) / 2) * w for i, (m, _) in enumerate(models) if rows.get(m)]
        rs = [rows[m] for m, _ in models if rows.get(m)]
        acc = [100 * r['accuracy'] for r in rs]
        err = [[a - 100 * r['ci95'][0] for a, r in zip(acc, rs)], [100 * r['ci95'][1] - a for a, r in zip(acc, rs)]]
        ax.bar(xs, acc, w, yerr=err, capsize=3, label=f'{split} split')
    ax.set_xticks(range(len(models)), [label for _, label in models], fontsize=8)
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(0, 105)
    ax.legend()
    ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=100)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


def plot_curves(train_rows, key, val_rows, path, title):
    """Left: `key` per training step; right: validation accuracy and format rate. False when there is nothing."""
    if not train_rows:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r['step'] for r in train_rows], [r[key] for r in train_rows])
    axes[0].set_xlabel('step')
    axes[0].set_ylabel(key.replace('_', ' '))
    for k in ('accuracy', 'format_rate'):
        axes[1].plot([r['step'] for r in val_rows], [100 * r[k] for r in val_rows], 'o-', label=k.replace('_', ' '))
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('% of validation problems')
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=100)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)
    return True


def versions():
    """The data packages' versions, or why they could not all be read (the report is written anyway)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        vers = {p: version(p) for p in ('numpy', 'fastwarc', 'resiliparse', 'fasttext-numpy2', 'regex', 'tiktoken')}
    except PackageNotFoundError as e:  # a package installed another way
        return f"not all found ({e})"
    return ', '.join(f"{k} {v}" for k, v in vers.items())


def publish_report(run_dir, md, images, publish):
    """PREFIX.md next to PREFIX_<name>.png copies of the report's images (e.g. results/speedrun_gpu)."""
    folder = os.path.dirname(os.path.abspath(publish))
    os.makedirs(folder, exist_ok=True)
    for rel in images:
        name = f"{os.path.basename(publish)}_{rel.replace('/out/', '_').replace('/', '_')}"
        shutil.copyfile(os.path.join(run_dir, rel), os.path.join(folder, name))
        md = md.replace(f']({rel})', f']({name})')
    write_atomic(publish + '.md', md)
    print(f"published {publish}.md and {len(images)} image(s)")


COMMANDS = {'profile': profile, 'cuda': cuda, 'crawl': crawl, 'rundir': rundir, 'pages': pages, 'webtext': webtext,
            'pysrc': pysrc, 'mix': mix, 'fewshot': fewshot, 'pick_lr': pick_lr, 'report': report}

if __name__ == '__main__':
    import inspect
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (['-h'], ['--help']) else 2)
    fn, args = COMMANDS[sys.argv[1]], sys.argv[2:]
    params = inspect.signature(fn).parameters.values()
    need = sum(p.default is inspect.Parameter.empty for p in params)
    if not need <= len(args) <= len(params):
        die(f"{sys.argv[1]} takes {' '.join(p.name.upper() for p in params)} (see python bench/speedrun.py --help)")
    fn(*args)

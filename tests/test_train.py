"""
Tests for train.py: the course functions against torch references, Muon, the schedules, full-validation evaluation,
checkpoints and exact resume, a 2-process gloo run against a 1-process run, a tiny training per switch whose loss
falls, and bad inputs refused in one line (subprocesses; exit code 2, nothing written). All on CPU.

    python -m pytest tests/test_train.py -v
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train as T
from model import TransformerLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# these models are tiny: one thread avoids OpenMP's spin-waiting, which is slow on a shared, loaded CPU
torch.set_num_threads(1)

TINY = dict(compile=False, dtype='float32', device='cpu', d_model=32, num_layers=1, num_heads=2, d_ff=0,
            context_length=16, batch_size=4, eval_iters=2, log_interval=2, warmup_iters=2, max_new_tokens=0,
            optimizer='adamw')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def make_data(path, n=20000, vocab=64, dtype='uint16', period=50, seed=0):
    """A token folder with a learnable stream: one random pattern of `period` ids repeated."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    stream = np.tile(rng.integers(1, vocab, size=period), n // period + 1)[:n].astype(dtype)
    stream.tofile(os.path.join(path, 'train.bin'))
    stream[:3000].tofile(os.path.join(path, 'val.bin'))
    with open(os.path.join(path, 'meta.json'), 'w') as f:  # val_bytes: 3 bytes a token, for bits per byte
        json.dump({'vocab_size': vocab, 'dtype': dtype, 'eot_id': 0, 'tokenizer_dir': '', 'val_bytes': 9000}, f)
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp('tokens'))


def test_lr_schedule_values():
    lr = [T.lr_cosine_schedule(it, 1.0, 0.1, 7, 21) for it in range(25)]
    assert lr[0] == 0 and lr[7] == 1.0 and lr[21] == pytest.approx(0.1) and lr[24] == 0.1
    assert lr[14] == pytest.approx(0.55)
    assert lr[3] == pytest.approx(3 / 7)


def test_adamw_matches_torch():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_a, opt_b = T.AdamW(a.parameters(), **kw), torch.optim.AdamW(b.parameters(), **kw)
    for _ in range(10):
        x = torch.randn(16, 8)
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError):
        T.AdamW(a.parameters(), lr=-1)


def test_gradient_clipping_matches_torch():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(2))]
    ref = [p.detach().clone().requires_grad_() for p in params]
    for ps in (params, ref):
        sum((p * torch.arange(p.numel()).view_as(p)).sum() for p in ps[:3]).backward()  # the last has no grad
    norm = T.gradient_clipping(params, 1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    torch.testing.assert_close(norm, ref_norm)
    for p, r in zip(params[:3], ref[:3]):
        torch.testing.assert_close(p.grad, r.grad)
    before = [p.grad.clone() for p in params[:3]]
    T.gradient_clipping(params, 1e6)  # under the limit: unchanged
    for p, g in zip(params[:3], before):
        torch.testing.assert_close(p.grad, g)


def test_get_batch_shapes_and_shift():
    data = np.arange(100, dtype=np.uint16)
    x, y = T.get_batch(data, 8, 10, 'cpu')
    assert x.shape == y.shape == (8, 10) and x.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert int(x[:, 0].max()) <= 100 - 10 - 1
    sampler = T.TokenSampler(data, 10, 'cpu', seed=0)
    starts = sampler.starts(1000)
    assert int(starts.min()) >= 0 and int(starts.max()) <= 89
    x, y = sampler.batch(starts[:4])
    assert torch.equal(y, x + 1) and torch.equal(x[:, 0], starts[:4])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=16, d_model=16, num_layers=1, num_heads=2)
    opt = T.AdamW(model.parameters())
    model(torch.randint(0, 50, (2, 8)), targets=torch.randint(0, 50, (2, 8))).backward()
    opt.step()
    path = str(tmp_path / 'ckpt.pt')
    T.save_checkpoint(model, opt, 7, path)
    assert not os.path.exists(path + '.tmp')
    model2 = TransformerLM(vocab_size=50, context_length=16, d_model=16, num_layers=1, num_heads=2)
    opt2 = T.AdamW(model2.parameters())
    assert T.load_checkpoint(path, model2, opt2) == 7
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.state_dict()['state'][0]['step'] == 1



def snapshot(folder):
    """{path: (size, mtime)} of every file under folder: to check that a refused command changed nothing."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
            for d, _, files in os.walk(folder) for f in files}


def run_train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def cli(cfg):
    return [f'--{k}={v}' for k, v in cfg.items()]


def test_muon_newton_schulz_orthogonalizes():
    torch.manual_seed(0)
    for shape in ((64, 32), (32, 96), (3, 48, 24)):  # tall, wide, a batch (square random ones have near-0 s)
        s = torch.linalg.svdvals(T.zeropower_via_newtonschulz5(torch.randn(*shape)))
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())  # the quintic lands in ~[0.7, 1.2]
    # one Muon step on a hidden matrix: momentum, then an orthogonal update of size lr * sqrt(max(1, rows/cols))
    w = torch.nn.Parameter(torch.zeros(64, 32))
    w.grad = torch.randn(64, 32)
    T.Muon([dict(params=[w], lr=0.1, muon=True)], momentum=0.95).step()
    s = torch.linalg.svdvals(w.detach() / (0.1 * 2 ** 0.5))
    assert s.min() > 0.6 and s.max() < 1.25


def test_lr_schedules_end_at_min_lr_with_the_budget(monkeypatch):
    for name in ('cosine', 'wsd'):
        monkeypatch.setattr(T, 'lr_schedule', name)
        monkeypatch.setattr(T, 'max_time_s', 300.0)
        assert T.lr_factor(5, 0.0) == pytest.approx(5 / T.warmup_iters)  # warm-up by iterations
        assert T.lr_factor(10 ** 6, 300.0) == pytest.approx(T.min_lr / T.learning_rate)  # exactly at the budget
        assert T.lr_factor(10 ** 6, 299.0) > T.min_lr / T.learning_rate
    monkeypatch.setattr(T, 'cooldown_frac', 0.4)
    assert T.lr_factor(10 ** 6, 150.0) == 1.0  # wsd: flat until the last 40%
    assert T.lr_factor(10 ** 6, 240.0) == pytest.approx(1 - 0.5 * (1 - T.min_lr / T.learning_rate))  # linear
    monkeypatch.setattr(T, 'max_time_s', 0.0)  # by iterations: cosine = the course's schedule over max_iters
    monkeypatch.setattr(T, 'lr_schedule', 'cosine')
    for it in (1, 300, 5000, 10000, 12000):
        assert T.lr_factor(it, 0.0) * T.learning_rate == pytest.approx(
            T.lr_cosine_schedule(it, T.learning_rate, T.min_lr, T.warmup_iters, T.max_iters))


def test_full_validation_equals_a_hand_computation():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=8, d_model=16, num_layers=1, num_heads=2).eval()
    tokens = np.random.default_rng(0).integers(0, 50, size=45).astype(np.uint16)  # 44 targets: 5 windows of 8 + 4
    nats, n = T.evaluate_full(model, tokens, 8, 3, 'cpu')  # batches of 3 windows: the second is half padding
    hand = 0.0
    for s in range(0, 44, 8):  # non-overlapping windows, each from no context
        x = torch.tensor(tokens[s:min(s + 8, 44)].astype(np.int64))[None]
        y = torch.tensor(tokens[s + 1:min(s + 9, 45)].astype(np.int64))[None]
        with torch.no_grad():
            hand += torch.nn.functional.cross_entropy(model(x)[0], y[0], reduction='sum').item()
    assert n == 44 and nats == pytest.approx(hand, rel=1e-5)
    assert T.evaluate_full(model, tokens, 8, 3, 'cpu', max_batches=1)[1] == 24  # the first 3 windows only


def test_exact_resume(data, tmp_path):
    cfg = dict(TINY, data_dir=data, max_iters=8, lr_decay_iters=8, eval_interval=4, eval_iters=-1)  # all full
    full = T.train(dict(cfg, out_dir=str(tmp_path / 'full')))
    T.train(dict(cfg, out_dir=str(tmp_path / 'part'), max_iters=4))  # "interrupted" after 4 iterations
    resumed = T.train(dict(cfg, out_dir=str(tmp_path / 'part'), resume=True))

    def curve(d):
        with open(tmp_path / d / 'log.jsonl') as f:
            return [(r['iter'], r.get('train_loss'), r.get('val_loss')) for r in map(json.loads, f)]
    assert curve('full') == curve('part')  # the same log lines, bit for bit
    assert resumed['val_loss'] == full['val_loss'] and resumed['iters'] == 8
    a = torch.load(tmp_path / 'full' / 'ckpt.pt', weights_only=False)['model']
    b = torch.load(tmp_path / 'part' / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming the finished run changes nothing (its summary keeps its numbers)
    before = snapshot(tmp_path / 'part')
    assert T.train(dict(cfg, out_dir=str(tmp_path / 'part'), resume=True)) is None
    assert snapshot(tmp_path / 'part') == before
    assert json.load(open(tmp_path / 'part' / 'summary.json'))['val_loss'] == full['val_loss']


def test_sigkill_then_resume_gives_the_same_curve(data, tmp_path):
    """A run killed with SIGKILL mid-training and resumed logs the same curve as an uninterrupted one."""
    import signal
    import time
    args = cli(dict(TINY, data_dir=data, max_iters=40, lr_decay_iters=40, eval_interval=4, eval_iters=-1))
    full = run_train(*args, f'--out_dir={tmp_path}/full')
    assert full.returncode == 0, full.stderr[-2000:]
    p = subprocess.Popen([sys.executable, 'train.py', *args, f'--out_dir={tmp_path}/part'], cwd=ROOT, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / 'part' / 'log.jsonl'
    while p.poll() is None and not (log.exists() and '"iter": 12' in log.read_text()):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    resumed = run_train(*args, f'--out_dir={tmp_path}/part', '--resume=True')
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def curve(d):
        rows = map(json.loads, open(tmp_path / d / 'log.jsonl'))
        return [(r['iter'], r.get('train_loss'), r.get('val_loss')) for r in rows]
    assert curve('full') == curve('part')


def test_end_to_end_loss_falls_sample_and_eval_mode(data, tmp_path, capsys):
    s = T.train(dict(TINY, data_dir=data, out_dir=str(tmp_path), max_iters=40, eval_interval=20, batch_size=8,
                     learning_rate=3e-3, max_new_tokens=8))
    rows = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    first = next(r['train_loss'] for r in rows if 'train_loss' in r)
    assert first > 3.5  # ~ln(64) at the start
    assert s['val_loss'] < 0.7 * first and s['full'] and s['val_bpb'] > 0
    evals = [r for r in rows if 'val_loss' in r]
    assert evals[-1]['full'] and not evals[0]['full']  # eval_iters=2 batches mid-run, the whole split at the end
    assert all(k in evals[-1] for k in ('iter', 'tokens', 'elapsed_s', 'val_loss', 'val_bpb', 'full'))
    assert os.path.exists(tmp_path / 'loss.png') and s['sample'] is not None
    out = capsys.readouterr().out
    assert 'resume' in out and '--mode=sample' in out and 'summary.json' in out
    before = snapshot(tmp_path)
    assert len(T.train(dict(mode='sample', out_dir=str(tmp_path), max_new_tokens=5, device='cpu', num_samples=2))) == 2
    r = run_train('--mode=eval', f'--out_dir={tmp_path}', '--device=cpu')
    assert r.returncode == 0, r.stderr
    assert f"loss {s['val_loss']:.4f}" in r.stdout and f"bits/byte {s['val_bpb']:.4f}"[:18] in r.stdout
    assert snapshot(tmp_path) == before  # sample and eval write nothing


@pytest.mark.parametrize('switch', [dict(optimizer='muon', muon_lr=0.02, learning_rate=3e-3),
                                    dict(ffn='relu2'), dict(qk_norm=True), dict(zero_init_proj=True),
                                    dict(logit_softcap=15.0), dict(lr_schedule='wsd', cooldown_frac=0.5),
                                    dict(tie_embeddings=True), dict(optimizer='muon', embed_lr=0.01, head_lr=0.005)])
def test_each_switch_trains(data, switch):
    s = T.train(dict(TINY, data_dir=data, out_dir='', max_iters=30, eval_interval=0, batch_size=8,
                     **{'learning_rate': 3e-3, **switch}))
    assert s['val_loss'] < 0.8 * math.log(64), (switch, s['val_loss'])


def test_time_budget_stops_and_anneals(data, tmp_path):
    s = T.train(dict(TINY, data_dir=data, out_dir=str(tmp_path), max_iters=10 ** 6, max_time_s=3.0,
                     eval_interval=0, eval_interval_s=1.0, lr_schedule='wsd'))
    rows = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert 3.0 <= s['elapsed_s'] < 6.0 and s['iters'] < 10 ** 6
    assert sum(1 for r in rows if r.get('full')) >= 3  # every second, and at the end
    assert rows[-2]['lr'] < 0.2 * T.learning_rate  # the last log line: annealed nearly to min_lr


def test_two_process_gloo_matches_one_process(data, tmp_path):
    # the same command on 1 and 2 processes: each rank takes half of every batch of 8 sequences
    args = cli(dict(TINY, data_dir=data, max_iters=4, eval_interval=0, batch_size=8))
    one = run_train(*args, f'--out_dir={tmp_path}/one')
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          'train.py', *args, f'--out_dir={tmp_path}/two'], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-2000:]
    assert '2 process(es) x 1 x 4 x 16' in two.stdout

    def losses(d):
        with open(tmp_path / d / 'log.jsonl') as f:
            return [(r.get('train_loss'), r.get('val_loss')) for r in map(json.loads, f)]
    a, b = losses('one'), losses('two')
    assert len(a) == len(b) == 3
    for (ta, va), (tb, vb) in zip(a, b):
        assert (ta is None) == (tb is None) and (va is None) == (vb is None)
        assert math.isclose(ta or va, tb or vb, rel_tol=1e-5)


def test_tinystories_offline_stand_in_trains(tmp_path):
    """data/tinystories/prepare.py without network: the generated stand-in, skipped on a re-run, trains."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('ts_prepare', os.path.join(ROOT, 'data', 'tinystories', 'prepare.py'))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    meta = prep.prepare(out_dir=str(tmp_path), vocab_size=400, offline=True, generated_stories=300, num_workers=1)
    assert 'offline stand-in' in meta['source'] and meta['dtype'] == 'uint16'
    mtime = os.path.getmtime(tmp_path / 'train.bin')
    prep.prepare(out_dir=str(tmp_path), vocab_size=400, offline=True, generated_stories=300, num_workers=1)
    assert os.path.getmtime(tmp_path / 'train.bin') == mtime  # nothing redone
    s = T.train(dict(TINY, data_dir=str(tmp_path), out_dir='', max_iters=2, eval_interval=0))
    assert s['val_loss'] is not None and s['val_bpb'] is not None


# -----------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, no traceback, nothing written or changed (issue 32)

def bad_cases(data, tmp):
    """(name, extra args, folder that must stay unchanged) for each refusal."""
    odd, big, bad_meta, empty_meta = (make_data(os.path.join(tmp, n), vocab=300 if n == 'big' else 64)
                                      for n in ('odd', 'big', 'bad_meta', 'empty_meta'))
    with open(os.path.join(odd, 'train.bin'), 'ab') as f:
        f.write(b'\x00')  # an odd number of bytes: not uint16 tokens
    with open(os.path.join(bad_meta, 'meta.json'), 'w') as f:
        f.write('{"vocab_size": 64, "dtype": ')  # truncated JSON
    with open(os.path.join(empty_meta, 'meta.json'), 'w') as f:
        f.write('{}')
    short = make_data(os.path.join(tmp, 'short'), n=12)
    half = make_data(os.path.join(tmp, 'half'))  # an interrupted re-prepare: bpe.py wrote complete: false
    meta = json.load(open(os.path.join(half, 'meta.json')))
    with open(os.path.join(half, 'meta.json'), 'w') as f:
        json.dump(dict(meta, complete=False), f)
    zero = os.path.join(tmp, 'zero_ckpt')
    os.makedirs(zero)
    open(os.path.join(zero, 'ckpt.pt'), 'wb').close()
    return [('accum0', ['--gradient_accumulation_steps=0'], 'gradient_accumulation_steps'),
            ('iters-5', ['--max_iters=-5'], 'max_iters'),
            ('batch0', ['--batch_size=0'], 'batch_size'),
            ('log0', ['--log_interval=0'], 'log_interval'),
            ('optimizer', ['--optimizer=sgd'], 'optimizer'),
            ('schedule', ['--lr_schedule=linear'], 'lr_schedule'),
            ('ffn', ['--ffn=gelu'], 'ffn'),
            ('heads', ['--num_heads=5'], 'num_heads'),
            ('eval_iters0', ['--eval_iters=0'], 'eval_iters'),
            ('mode', ['--mode=bench'], 'mode'),
            ('min_lr', ['--min_lr=1.0'], 'min_lr'),
            ('resume+overwrite', ['--resume=True', '--overwrite=True'], 'pick one'),
            ('no_data', [f'--data_dir={tmp}/nothing'], 'prepare.py'),
            ('odd_bytes', [f'--data_dir={odd}'], 'dtype'),
            ('vocab', [f'--data_dir={big}', '--vocab_size=100'], 'vocab_size'),
            ('corrupt_meta', [f'--data_dir={bad_meta}'], 'meta.json'),
            ('meta_keys', [f'--data_dir={empty_meta}'], 'meta.json'),
            ('short', [f'--data_dir={short}'], 'context_length'),
            ('resume_none', [f'--out_dir={tmp}/none', '--resume=True'], 'not found'),
            ('resume_zero', [f'--out_dir={zero}', '--resume=True'], 'empty or truncated'),
            ('sample_zero', [f'--out_dir={zero}', '--mode=sample', '--max_new_tokens=5'], 'empty or truncated'),
            ('eval_zero', [f'--ckpt_path={zero}/ckpt.pt', '--mode=eval'], 'empty or truncated'),
            ('typo', ['--lerning_rate=1'], 'learning_rate'),
            ('half_built', [f'--data_dir={half}'], 'half built'),
            ('sample_none', ['--mode=sample', '--num_samples=0'], 'num_samples'),
            ('sample_no_tokens', ['--mode=sample', '--max_new_tokens=0'], 'max_new_tokens'),
            ('ckpt_dir', [f'--ckpt_path={zero}', '--mode=eval'], 'not found')]


SUBPROCESS_CASES = ['accum0', 'iters-5', 'batch0', 'log0', 'optimizer', 'no_data', 'corrupt_meta', 'resume_none',
                    'resume_zero', 'sample_zero', 'eval_zero', 'typo']
IN_PROCESS_CASES = ['schedule', 'ffn', 'heads', 'eval_iters0', 'mode', 'min_lr', 'resume+overwrite', 'odd_bytes',
                    'vocab', 'meta_keys', 'short', 'half_built', 'sample_none', 'sample_no_tokens', 'ckpt_dir']


@pytest.fixture(scope='module')
def bad_inputs(data, tmp_path_factory):
    """Every subprocess case started at once (starting Python and torch is the slow part), then collected:
    {name: (args, expected words, CompletedProcess or None)}, the folder, and its snapshot before."""
    tmp = str(tmp_path_factory.mktemp('bad'))
    cases = {name: (args, expect) for name, args, expect in bad_cases(data, tmp)}
    before = snapshot(tmp)
    base = cli(dict(TINY, data_dir=data, max_iters=2))
    procs = {}
    for name in SUBPROCESS_CASES:
        args = cases[name][0]
        out = [] if any(a.startswith('--out_dir') for a in args) else [f'--out_dir={tmp}/out_{name}']
        procs[name] = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *base, *out, *args], cwd=ROOT,
                                       env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {name: (p.wait(timeout=600), p.stderr.read()) for name, p in procs.items()}
    return cases, done, tmp, before


@pytest.mark.parametrize('name', SUBPROCESS_CASES)
def test_bad_input_is_refused_in_one_line(bad_inputs, name):
    cases, done, tmp, before = bad_inputs
    (args, expect), (code, err) = cases[name], done[name]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (name, code, err[-1500:])
    assert len(lines) == 1 and 'Traceback' not in err and expect in lines[0], (name, err[-1500:])
    assert snapshot(tmp) == before and not os.path.exists(os.path.join(tmp, 'out_' + name))  # nothing written


@pytest.mark.parametrize('name', IN_PROCESS_CASES)
def test_bad_value_is_refused_in_process(bad_inputs, data, name, capsys):
    """The same refusals through train.train() (what a library caller sees): SystemExit(2) and one stderr line."""
    cases, _, tmp, before = bad_inputs
    args, expect = cases[name]
    overrides = dict(TINY, data_dir=data, max_iters=2, out_dir=os.path.join(tmp, 'out_' + name))
    for a in args:
        key, value = a[2:].split('=', 1)
        overrides[key] = value if isinstance(T.config[key], str) else eval(value)
    with pytest.raises(SystemExit) as e:
        T.train(overrides)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (name, err)
    assert snapshot(tmp) == before and not os.path.exists(overrides['out_dir'])


def test_a_run_is_never_clobbered(data, tmp_path, capsys):
    cfg = dict(TINY, data_dir=data, max_iters=2, eval_interval=0, out_dir=str(tmp_path))
    T.train(cfg)
    before = snapshot(tmp_path)
    for again, words in ((cfg, ['--overwrite=True', '--resume=True']),  # again without --resume: refused
                         (dict(cfg, max_iters=4, resume=True, learning_rate=0.01, seed=1),  # resume, another config
                          ['learning_rate=0.001', 'seed=1337'])):
        with pytest.raises(SystemExit) as e:
            T.train(again)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
        assert snapshot(tmp_path) == before  # the run untouched
    assert T.train(dict(cfg, overwrite=True, max_iters=3))['iters'] == 3  # replaced on request
    assert json.load(open(tmp_path / 'summary.json'))['iters'] == 3


def test_checkpoint_and_re_prepared_data_out_of_step(data, tmp_path, capsys):
    """The data folder re-prepared with another vocab_size since the checkpoint: eval and resume refuse in one line,
    and an explicit --data_dir wins over the checkpoint's in --mode=eval."""
    folder = make_data(tmp_path / 'd')
    cfg = dict(TINY, data_dir=folder, max_iters=2, eval_interval=0, out_dir=str(tmp_path / 'run'))
    T.train(cfg)
    capsys.readouterr()
    own = T.train(dict(mode='eval', out_dir=cfg['out_dir'], device='cpu'))  # the checkpoint's data_dir
    other = T.train(dict(mode='eval', out_dir=cfg['out_dir'], device='cpu', data_dir=make_data(tmp_path / 'o', seed=2)))
    assert other['val_loss'] != own['val_loss']  # another folder, another loss: --data_dir was read
    with pytest.raises(SystemExit) as e:  # an explicit --data_dir is read, not the checkpoint's
        T.train(dict(mode='eval', out_dir=cfg['out_dir'], device='cpu', data_dir=str(tmp_path / 'nothing')))
    assert e.value.code == 2 and 'nothing' in capsys.readouterr().err
    make_data(folder, vocab=300, seed=1)  # re-prepared with a larger vocabulary
    before = snapshot(tmp_path)
    for again, words in ((dict(mode='eval', out_dir=cfg['out_dir'], device='cpu'), ['vocab_size 300', '--data_dir']),
                         (dict(cfg, max_iters=4, resume=True), ['vocab_size=64', '300', '--out_dir'])):
        with pytest.raises(SystemExit) as e:
            T.train(again)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert snapshot(tmp_path) == before


def test_resume_hint_drops_resume_and_overwrite(data, tmp_path, capsys, monkeypatch):
    """The printed resume command works: no --overwrite=True (refused with --resume), no second --resume=True."""
    cfg = dict(TINY, data_dir=data, max_iters=2, eval_interval=0, out_dir=str(tmp_path))
    for overrides in (dict(cfg, overwrite=True), dict(cfg, max_iters=4, resume=True)):
        monkeypatch.setattr(sys, 'argv', ['train.py', *cli(overrides)])
        T.train(overrides)
        hint = [line for line in capsys.readouterr().out.splitlines() if line.startswith('resume')][0]
        assert hint.count('--resume=True') == 1 and '--overwrite' not in hint and '--max_iters=' in hint, hint


def test_no_val_bytes_prints_n_a(data, tmp_path, capsys):
    """A token folder without val_bytes (cc_filter.py's): bits/byte is n/a, never 0.0000."""
    folder = make_data(tmp_path / 'd')
    meta = json.load(open(tmp_path / 'd' / 'meta.json'))
    with open(tmp_path / 'd' / 'meta.json', 'w') as f:
        json.dump({k: v for k, v in meta.items() if k != 'val_bytes'}, f)
    s = T.train(dict(TINY, data_dir=folder, max_iters=2, eval_interval=0, out_dir=str(tmp_path / 'run')))
    assert s['val_bpb'] is None
    assert T.train(dict(mode='eval', out_dir=str(tmp_path / 'run'), device='cpu'))['val_bpb'] is None
    out = capsys.readouterr().out
    assert '0.0000 bits/byte' not in out and 'n/a bits/byte' in out and 'bits/byte n/a' in out, out

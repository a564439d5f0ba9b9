"""
Tests for train.py: the course functions against torch references, data checks, checkpoints and exact resume,
a 2-process gloo run against a 1-process run, and a tiny end-to-end training whose loss falls. All on CPU.

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


def make_data(path, n=20000, vocab=64, dtype='uint16', period=50, seed=0):
    """A token folder with a learnable stream: one random pattern of `period` ids repeated."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    stream = np.tile(rng.integers(1, vocab, size=period), n // period + 1)[:n].astype(dtype)
    stream.tofile(os.path.join(path, 'train.bin'))
    stream[:3000].tofile(os.path.join(path, 'val.bin'))
    with open(os.path.join(path, 'meta.json'), 'w') as f:
        json.dump({'vocab_size': vocab, 'dtype': dtype, 'eot_id': 0, 'tokenizer_dir': ''}, f)
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


def test_exact_resume(data, tmp_path):
    cfg = dict(TINY, data_dir=data, max_iters=8, lr_decay_iters=8, eval_interval=4)
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
    # a checkpoint of another model config is refused with a clear message
    with pytest.raises(ValueError, match='another model config'):
        T.train(dict(cfg, out_dir=str(tmp_path / 'part'), resume=True, d_model=64))


def test_end_to_end_loss_falls_and_sample(data, tmp_path):
    s = T.train(dict(TINY, data_dir=data, out_dir=str(tmp_path), max_iters=40, eval_interval=20, batch_size=8,
                     learning_rate=3e-3, max_new_tokens=8))
    with open(s['log_path']) as f:
        rows = [json.loads(line) for line in f]
    first = next(r['train_loss'] for r in rows if 'train_loss' in r)
    assert first > 3.5  # ~ln(64) at the start
    assert s['val_loss'] < 0.7 * first
    assert os.path.exists(s['plot_path']) and s['sample'] is not None
    texts = T.sample(dict(T.config, out_dir=str(tmp_path), max_new_tokens=5, device='cpu', num_samples=2))
    assert len(texts) == 2


def test_two_process_gloo_matches_one_process(data, tmp_path):
    # the same command on 1 and 2 processes: each rank takes half of every batch of 8 sequences
    args = [f'--{k}={v}' for k, v in dict(TINY, data_dir=data, max_iters=4, eval_interval=0, batch_size=8).items()]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    one = subprocess.run([sys.executable, 'train.py', *args, f'--out_dir={tmp_path}/one'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          'train.py', *args, f'--out_dir={tmp_path}/two'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-2000:]
    assert '2 processes x 1 micro-steps x 4 x 16' in two.stdout

    def losses(d):
        with open(tmp_path / d / 'log.jsonl') as f:
            return [(r.get('train_loss'), r.get('val_loss')) for r in map(json.loads, f)]
    a, b = losses('one'), losses('two')
    assert len(a) == len(b) == 3
    for (ta, va), (tb, vb) in zip(a, b):
        assert (ta is None) == (tb is None) and (va is None) == (vb is None)
        assert math.isclose(ta or va, tb or vb, rel_tol=1e-5)


def test_bad_inputs_give_clear_errors(data, tmp_path):
    with pytest.raises(KeyError, match='learning_rate'):
        T.train({'lerning_rate': 1e-3})
    with pytest.raises(FileNotFoundError, match='prepare.py'):
        T.train(dict(TINY, data_dir=str(tmp_path / 'nothing')))
    bad = make_data(tmp_path / 'odd')
    with open(os.path.join(bad, 'train.bin'), 'ab') as f:
        f.write(b'\x00')  # an odd number of bytes: not uint16 tokens
    with pytest.raises(ValueError, match='dtype'):
        T.train(dict(TINY, data_dir=bad))
    big = make_data(tmp_path / 'big', vocab=300)
    with pytest.raises(ValueError, match='vocab_size'):
        T.train(dict(TINY, data_dir=big, vocab_size=100))
    with pytest.raises(ValueError, match='context_length'):
        T.train(dict(TINY, data_dir=make_data(tmp_path / 'short', n=12)))
    with pytest.raises(FileNotFoundError, match='resume'):
        T.train(dict(TINY, data_dir=data, out_dir=str(tmp_path / 'none'), resume=True))
    r = subprocess.run([sys.executable, 'train.py', '--lerning_rate=1'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and 'learning_rate' in r.stderr


def test_bench_runs_on_cpu():
    res = T.bench(dict(TINY, bench_iters=1, vocab_size=64))
    assert res['train_adamw']['tokens_per_s'] > 0 and res['train_torch_adamw']['tokens_per_s'] > 0


def test_bench_accumulation_optimizer_choice_and_bad_values():
    res = T.bench(dict(TINY, bench_iters=1, vocab_size=64, gradient_accumulation_steps=2, bench_optimizers='adamw'))
    assert res['train_adamw']['tokens_per_s'] > 0 and 'train_torch_adamw' not in res
    with pytest.raises(ValueError, match='bench_optimizers'):
        T.bench(dict(TINY, bench_iters=1, vocab_size=64, bench_optimizers='sgd'))
    with pytest.raises(ValueError, match='compile_mode'):
        T.compile_model(torch.nn.Linear(2, 2), dict(T.config, compile=True, compile_mode='fastest'))
    with pytest.raises(ValueError, match='CUDA graphs'):
        T.compile_model(torch.nn.Linear(2, 2), dict(T.config, compile=True, compile_mode='reduce-overhead',
                                                    gradient_accumulation_steps=2))


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

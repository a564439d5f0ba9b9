"""
Tests for ddp.py: every DDP variant and the sharded optimizer against single-process training, on CPU with 2 gloo
processes spawned by the test.

    python -m pytest tests/test_ddp.py -v

Starting processes is the slow part (each imports torch), so one spawn runs every check and writes a report that
the individual tests read (a module-scoped fixture).
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import ddp

WORLD = 2
VOCAB, T, B_LOCAL, STEPS = 16, 6, 3, 4


class ToyModel(nn.Module):
    """Embedding tied to the output head, an MLP, and a frozen linear: every case DDP must handle."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, VOCAB, bias=False)
        self.head.weight = self.emb.weight  # tied: one Parameter used twice

    def forward(self, idx):
        x = self.emb(idx)  # (B, T, 8)
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(self.frozen(x))  # (B, T, VOCAB)


def loss_fn(model, idx):
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))


def global_batches(steps, micro=1):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (WORLD * B_LOCAL * micro, T + 1), generator=g) for _ in range(steps)]


def reference_train(model, batches, micro=1):
    """Single-process SGD on the whole global batch (the mean over all of it), micro-batched like the DDP run.
    SGD, not Adam: Adam's update does not change when gradients are scaled, so it would hide a missing average."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for batch in batches:
        for chunk in batch.chunk(micro):
            (loss_fn(model, chunk) / micro).backward()
        opt.step()
        opt.zero_grad()
    return model


def ddp_train(model, make, batches, rank, micro=1):
    """The DDP run: each rank takes its own slice of every global batch (different data per rank)."""
    ddp_model = make(copy.deepcopy(model))
    opt = torch.optim.SGD([p for p in ddp_model.module.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for batch in batches:
        chunks = batch.chunk(micro)  # micro-steps over the global batch, each sharded across ranks
        for m, chunk in enumerate(chunks):
            local = chunk.chunk(WORLD)[rank]
            ctx = ddp_model.no_sync() if m < micro - 1 else torch.enable_grad()
            with ctx:
                (loss_fn(ddp_model, local) / micro).backward()
        ddp_model.finish_gradient_synchronization()
        opt.step()
        opt.zero_grad()
    return ddp_model.module


def max_diff(a, b):
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))


def _worker(rank, world, port, path, data_dir, out_root, impls):
    ddp.setup_process_group(rank, world, port, 'gloo')
    torch.set_num_threads(1)
    report = _checks(rank)
    if impls:  # train.py runs, in the same processes (starting processes is the slow part)
        report['train'] = train_py_losses(data_dir, out_root, impls)
    # every rank's numbers must agree with every other rank's (the replicas stay identical)
    everyone = [None] * world
    dist.all_gather_object(everyone, report)
    if rank == 0:
        merged = dict(everyone[0])
        merged['sharded_local_numel_1'] = everyone[1]['sharded_local_numel_1']
        merged['rank1'] = everyone[1]
        with open(path, 'w') as f:
            json.dump(merged, f)
    ddp.cleanup_process_group()


def _checks(rank):
    report = {}
    # every rank builds a *different* model: the wrappers must broadcast rank 0's weights
    torch.manual_seed(rank)
    model = ToyModel()
    torch.manual_seed(0)
    model0 = ToyModel()  # rank 0's weights, for the reference
    batches = global_batches(STEPS)
    ref = reference_train(model0, batches)
    report['ref_moved'] = max_diff(ref, model0)  # the steps must change the weights for the comparison to mean much
    variants = {
        'naive': ddp.DDPNaive, 'flat': ddp.DDPFlat, 'individual': ddp.DDPIndividualParameters,
        'bucketed_tiny': lambda m: ddp.DDPBucketed(m, 1e-6),  # smaller than any parameter: one bucket each
        'bucketed_mid': lambda m: ddp.DDPBucketed(m, 1.5e-3),  # ~1.5 KB: some buckets hold several parameters
        'bucketed_huge': lambda m: ddp.DDPBucketed(m, 100),  # larger than the model: one bucket
        'bucketed_none': lambda m: ddp.DDPBucketed(m, None),  # None = one bucket
    }
    for name, make in variants.items():
        out = ddp_train(model, make, batches, rank)
        report[name] = max_diff(out, ref)
        # tied weights stay tied, frozen weights stay rank 0's initial weights
        report[name + '_tied'] = out.head.weight is out.emb.weight
        report[name + '_frozen'] = (out.frozen.weight - model0.frozen.weight).abs().max().item()
    report['n_buckets'] = {b: len(ddp.make_buckets(model, b)) for b in (1e-6, 1.5e-3, 100, None)}
    # gradient accumulation: 2 micro-steps, the first inside no_sync()
    acc_batches = global_batches(STEPS, micro=2)
    ref_acc = reference_train(model0, acc_batches, micro=2)
    for name in ('naive', 'individual', 'bucketed_mid'):
        report['accum_' + name] = max_diff(ddp_train(model, variants[name], acc_batches, rank, micro=2), ref_acc)

    # ShardedOptimizer: same gradients on every rank -> bit-for-bit equal to plain AdamW, two param groups,
    # the learning rate changed through param_groups between steps like a schedule does
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    net_ref = copy.deepcopy(net)

    def groups(m):
        ps = list(m.parameters())
        return [{'params': [p for p in ps if p.dim() == 2], 'weight_decay': 0.1},
                {'params': [p for p in ps if p.dim() < 2], 'weight_decay': 0.0}]
    opt = ddp.ShardedOptimizer(groups(net), torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95))
    opt_ref = torch.optim.AdamW(groups(net_ref), lr=1e-2, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(3)
    for step in range(STEPS):
        x = torch.randn(16, 8, generator=g)
        for m, o in ((net, opt), (net_ref, opt_ref)):
            for group in o.param_groups:
                group['lr'] = 1e-2 * (step + 1) / STEPS
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    report['sharded_equal'] = all(torch.equal(a, b) for a, b in zip(net.parameters(), net_ref.parameters()))
    report['sharded_maxdiff'] = max((a - b).abs().max().item() for a, b in zip(net.parameters(), net_ref.parameters()))
    n_local = sum(p.numel() for grp in opt.optimizer.param_groups for p in grp['params'])
    report[f'sharded_local_numel_{rank}'] = n_local
    report['total_numel'] = sum(p.numel() for p in net.parameters())
    # ShardedOptimizer on top of bucketed DDP, different data per rank, vs single-process AdamW
    ddp_model = ddp.DDPBucketed(copy.deepcopy(model), 1e-3)
    zopt = ddp.ShardedOptimizer([p for p in ddp_model.module.parameters() if p.requires_grad], torch.optim.SGD,
                                lr=0.5, momentum=0.9)
    for batch in batches:
        loss_fn(ddp_model, batch.chunk(WORLD)[rank]).backward()
        ddp_model.finish_gradient_synchronization()
        zopt.step()
        zopt.zero_grad()
    report['sharded_ddp'] = max_diff(ddp_model.module, ref)

    return report


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    path = str(tmp / 'report.json')
    impls = {}
    train_src = open(os.path.join(os.path.dirname(ddp.__file__), 'train.py')).read()
    if 'ddp_impl' in train_src and "'fsdp'" in train_src:
        impls = {'torch': dict(ddp_impl='torch'), 'bucketed': dict(ddp_impl='bucketed', bucket_size_mb=0.01),
                 'fsdp': dict(fsdp=True)}
    data_dir = make_token_folder(tmp / 'tokens')
    mp.spawn(_worker, args=(WORLD, ddp.find_free_port(), path, data_dir, str(tmp), impls), nprocs=WORLD, join=True)
    return json.load(open(path))


@pytest.mark.parametrize('name', ['naive', 'flat', 'individual', 'bucketed_tiny', 'bucketed_mid',
                                  'bucketed_huge', 'bucketed_none'])
def test_variant_matches_single_process(report, name):
    assert report['ref_moved'] > 0.1
    assert report[name] < 1e-5, f"{name}: max |w_ddp - w_single| = {report[name]:.3g} after {STEPS} SGD steps"
    assert report['rank1'][name] < 1e-5, "rank 1's replica drifted from the single-process run"
    assert report[name + '_tied'], "the tied embedding/head weights were untied"
    assert report[name + '_frozen'] == 0.0, "a frozen parameter changed (it must keep rank 0's initial value)"


def test_bucket_counts(report):
    # ToyModel has 5 trainable parameters (the tied one counts once); 1.5 MiB*1e-3 groups some of them;
    # 100 MB and None give one bucket (json turned the None key into 'null')
    n = report['n_buckets']
    assert n[str(1e-6)] == 5 and n['100'] == 1 and n['null'] == 1, n
    assert 1 < n[str(1.5e-3)] < 5, n


@pytest.mark.parametrize('name', ['naive', 'individual', 'bucketed_mid'])
def test_gradient_accumulation_no_sync(report, name):
    assert report['accum_' + name] < 1e-5, report['accum_' + name]


def test_sharded_optimizer_bit_for_bit(report):
    assert report['sharded_equal'], f"ShardedOptimizer(AdamW) differs from AdamW by {report['sharded_maxdiff']:.3g}"
    assert report['rank1']['sharded_equal']
    # both ranks own some parameters, and together all of them
    a, b = report['sharded_local_numel_0'], report['sharded_local_numel_1']
    assert a > 0 and b > 0 and a + b == report['total_numel'], (a, b, report['total_numel'])


def test_sharded_optimizer_with_ddp(report):
    assert report['sharded_ddp'] < 1e-5, report['sharded_ddp']


def test_wrap_rejects_unknown_impl():
    with pytest.raises(ValueError, match='bucketed'):
        ddp.wrap(nn.Linear(2, 2), 'nope')


def test_overhead_model():
    s, w, o = 400e6, 100e9, 1e-4
    b = ddp.optimal_bucket_bytes(s, w, o)
    assert abs(b - (s * w * o) ** 0.5) < 1e-6
    n_best = s / b
    best = ddp.ddp_overhead_model(s, w, o, n_best)
    # the optimum beats its neighbours, and equals 2 sqrt(s o / w)
    assert best < ddp.ddp_overhead_model(s, w, o, n_best * 2) and best < ddp.ddp_overhead_model(s, w, o, n_best / 2)
    assert abs(best - 2 * (s * o / w) ** 0.5) < 1e-12


# -----------------------------------------------------------------------------
# train.py integration: --ddp_impl=bucketed gives torch DDP's loss curve (2 gloo processes, gradient accumulation)

TRAIN_TINY = dict(compile=False, dtype='float32', device='cpu', d_model=32, num_layers=2, num_heads=2, d_ff=0,
                  context_length=16, batch_size=4, eval_iters=2, log_interval=1, warmup_iters=2, max_new_tokens=0,
                  optimizer='adamw', max_iters=4, eval_interval=0, gradient_accumulation_steps=4, write_checkpoint=False)


def make_token_folder(data_dir):
    """A token folder for train.py: a learnable repeating pattern of 50 ids, vocab 64."""
    import numpy as np
    data_dir.mkdir()
    stream = np.tile(np.random.default_rng(0).integers(1, 64, size=50), 400).astype('uint16')
    stream.tofile(data_dir / 'train.bin')
    stream[:3000].tofile(data_dir / 'val.bin')
    (data_dir / 'meta.json').write_text(json.dumps({'vocab_size': 64, 'dtype': 'uint16', 'eot_id': 0,
                                                    'tokenizer_dir': ''}))
    return str(data_dir)


def train_py_losses(data_dir, out_root, impls):
    """In a worker: train.train() once per entry of impls {name: extra cfg}; returns {name: train losses}."""
    import train
    out = {}
    for impl in impls:  # train() uses the process group we made (and leaves it to us)
        cfg = dict(TRAIN_TINY, data_dir=data_dir, out_dir=os.path.join(out_root, impl), **impls[impl])
        train.train(cfg)
        dist.barrier()  # rank 0 has written the log
        with open(os.path.join(out_root, impl, 'log.jsonl')) as f:
            out[impl] = [r['train_loss'] for r in map(json.loads, f) if 'train_loss' in r]
    return out


@pytest.fixture(scope='module')
def train_losses(report):
    if 'train' not in report:
        pytest.skip("train.py has no ddp_impl / fsdp switch")
    return report['train']


def test_train_py_bucketed_matches_torch_ddp(train_losses):
    a, b = train_losses['torch'], train_losses['bucketed']
    assert len(a) == len(b) == TRAIN_TINY['max_iters']
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)


def test_train_py_fsdp_matches_torch_ddp(train_losses):
    # fsdp.py computes and communicates in bf16 (fp32 master weights): close to the fp32 run, not equal
    a, b = train_losses['torch'], train_losses['fsdp']
    assert len(a) == len(b) == TRAIN_TINY['max_iters']
    for x, y in zip(a, b):
        assert abs(x - y) <= 5e-3 * abs(x), (a, b)


# -----------------------------------------------------------------------------
# The commands: ddp.py trains under torchrun with 2 ranks; bench/ddp.py's two modes write their tables (tiny sizes)

ROOT = os.path.dirname(os.path.abspath(ddp.__file__))


def run_cmd(args, timeout=300):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ddp_command_two_ranks():
    r = run_cmd(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'ddp.py', '--max_iters=3',
                 '--zero1=True', '--impl=individual'])
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [float(line.split('loss ')[1].split()[0]) for line in r.stdout.splitlines() if line.startswith('iter ')]
    assert len(losses) == 3 and losses[-1] < losses[0], r.stdout  # rank 0 prints; the repeating pattern is learned
    assert 'replicas agree: max |w - w_rank0| over ranks = 0' in r.stdout, r.stdout


def test_bench_ddp_writes_tables(tmp_path):
    tiny = ['--model_size=tiny', '--context_length=16', '--vocab_size=64', '--bench_steps=1', '--bench_warmup=0',
            '--bucket_sizes_mb=(1,)', f'--out_dir={tmp_path}']
    r = run_cmd(['bench/ddp.py', '--mode=bench'] + tiny)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / 'ddp_bench_tiny_1xcpu.md').read_text()
    assert '| bucketed 1 MB |' in text and 'ShardedOptimizer(AdamW)' in text
    r = run_cmd(['bench/ddp.py', '--mode=allreduce', '--world_sizes=(2,)', '--sizes_mb=(0.01,)', '--warmup_iters=0',
                 '--timed_iters=1', f'--out_dir={tmp_path}'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert '| 2 | 0.01 MB |' in (tmp_path / 'ddp_allreduce_gloo.md').read_text()


# -----------------------------------------------------------------------------
# Bad input (issue 32): refused at startup with one line naming the key, exit code 2, nothing written

def refused(script, args, tmp_path, key):
    """Run script with args in tmp_path; check the refusal and that tmp_path's files are untouched."""
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and 'Traceback' not in r.stderr and f'--{key}' in lines[0], r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "a refused run wrote or changed a file"


@pytest.mark.parametrize('arg,key', [('--impl=nope', 'impl'), ('--batch_size=0', 'batch_size'),
                                     ('--bucket_size_mb=0', 'bucket_size_mb'), ('--model_size=huge', 'model_size'),
                                     ('--max_iters=-5', 'max_iters')])
def test_ddp_refuses_bad_config(tmp_path, arg, key):
    refused('ddp.py', [arg], tmp_path, key)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_ddp_refuses_nccl_without_gpus(tmp_path):
    refused('ddp.py', ['--backend=nccl'], tmp_path, 'backend')


@pytest.mark.parametrize('arg,key', [('--mode=nope', 'mode'), ('--world_sizes=(0,)', 'world_sizes'),
                                     ('--sizes_mb=()', 'sizes_mb'), ('--timed_iters=0', 'timed_iters'),
                                     ('--out_dir=notes.txt', 'out_dir')])
def test_bench_ddp_refuses_bad_config(tmp_path, arg, key):
    (tmp_path / 'notes.txt').write_text('a file where the tables would go')
    refused('bench/ddp.py', [arg], tmp_path, key)

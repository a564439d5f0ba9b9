"""
Tests for fsdp.py: FSDP on 2 gloo processes (spawned by the test) against single-process training, mixed precision,
prefetch and freeing, checkpoint round trips; the calculator's worked example; the commands (fsdp.py, bench/fsdp.py).

    python -m pytest tests/test_fsdp.py -v

One spawn runs every distributed check and writes a report that the tests read (processes are slow to start).
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

import fsdp
from test_ddp import refused  # the bad-input check, shared with tests/test_ddp.py

WORLD = 2
VOCAB, D, T, B_LOCAL, STEPS = 17, 12, 5, 3, 4  # odd sizes: the flat vectors need padding to split in 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, 3 * D)
        self.fc2 = nn.Linear(3 * D, D)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ToyLM(nn.Module):
    """Embedding tied to the head (both in the root unit), three blocks in a ModuleList (one unit each)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([Block() for _ in range(3)])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer('scale', torch.tensor(0.5))  # a buffer must survive the checkpoint round trip

    def forward(self, idx, targets=None):
        x = self.emb(idx)
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.norm(x)) * self.scale * 2
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))


def batches(steps, micro=1):
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, VOCAB, (WORLD * B_LOCAL * micro, T + 1), generator=g) for _ in range(steps)]


def decay_groups(params):
    """train.py's rule: weight decay on matrices only. FSDP keeps matrix shards 2-D so the same rule works."""
    params = list(params)
    return [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]


def reference(model, data, micro=1):
    """One process, fp32, SGD on the whole global batch; returns (model, losses).
    SGD, not Adam: Adam's update does not change when gradients are scaled, so it would hide a missing average."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(decay_groups(model.parameters()), lr=0.5, momentum=0.9)
    losses = []
    for batch in data:
        total = 0.0
        for chunk in batch.chunk(micro):
            loss = model(chunk[:, :-1], targets=chunk[:, 1:]) / micro
            loss.backward()
            total += loss.item()
        losses.append(total)
        opt.step()
        opt.zero_grad()
    return model, losses


def fsdp_train(model, data, rank, micro=1, inner_params=False, **kw):
    m = fsdp.FSDP(copy.deepcopy(model), **kw)
    # inner_params: the optimizer takes the wrapped module's own parameters (its shards, like FSDP2), not the wrapper's
    opt = torch.optim.SGD(decay_groups(m.module.parameters() if inner_params else m.parameters()), lr=0.5, momentum=0.9)
    losses = []
    for batch in data:
        total = torch.zeros(())
        for i, chunk in enumerate(batch.chunk(micro)):
            local = chunk.chunk(WORLD)[rank]  # different data on each rank
            with (m.no_sync() if i < micro - 1 else torch.enable_grad()):
                loss = m(local[:, :-1], targets=local[:, 1:]) / micro
                loss.backward()
            total += loss.detach()
        m.finish_gradient_synchronization()
        dist.all_reduce(total)
        losses.append(total.item() / WORLD)
        opt.step()
        opt.zero_grad()
    return m, losses


def sd_diff(a, b):
    assert list(a.keys()) == list(b.keys()), (list(a.keys()), list(b.keys()))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _checks(rank):
    report = {}
    torch.manual_seed(0)
    model0 = ToyLM()  # rank 0's weights
    torch.manual_seed(100 + rank)
    model = ToyLM()  # different on each rank: FSDP must take rank 0's
    if rank == 0:
        model = model0
    data = batches(STEPS)
    ref, ref_losses = reference(model0, data)
    ref_sd = ref.state_dict()
    report['ref_moved'] = sd_diff(ref_sd, model0.state_dict())

    # fp32 FSDP, with and without prefetch: equal to single-process training
    for prefetch in (True, False):
        m, losses = fsdp_train(model, data, rank, param_dtype=torch.float32, prefetch=prefetch)
        sd = m.full_state_dict(rank0_only=False)
        report[f'fp32_prefetch{prefetch}'] = sd_diff(sd, ref_sd)
        report[f'fp32_loss_prefetch{prefetch}'] = max(abs(a - b) for a, b in zip(losses, ref_losses))
        report[f'max_gathered_prefetch{prefetch}'] = m.max_gathered
    report['n_units'] = len(m.units)
    report['tied_in_sd'] = sd['head.weight'].data_ptr() == sd['emb.weight'].data_ptr()
    # nothing stays gathered between steps, and each shard is 1/WORLD of its parameter's rows (dim 0 padded)
    report['all_freed'] = all(sp.full.untyped_storage().nbytes() == 0 for sp in m.params)
    report['shard_sizes_ok'] = all(sp.shard.shape[0] * WORLD == sp.full.shape[0] >= sp.shape[0] > sp.full.shape[0]
                                   - WORLD and sp.shard.shape[1:] == sp.shape[1:] for sp in m.params)
    report['shard_dims'] = [sp.shard.dim() for sp in m.params]  # a shard keeps its parameter's dims
    rank0 = m.full_state_dict()

    # the wrapped module's named_parameters() are its shards (issue 31): same names, dim 0 cut into WORLD parts,
    # the same objects as the wrapper's parameters; an optimizer over them trains like one process does
    plain = copy.deepcopy(model)
    before = {n: tuple(p.shape) for n, p in plain.named_parameters()}
    wrapped = fsdp.FSDP(plain, param_dtype=torch.float32)
    named = dict(plain.named_parameters())
    report['names_kept'] = list(named) == list(before)
    report['shard_shapes'] = {n: [tuple(p.shape), (-(-before[n][0] // WORLD),) + before[n][1:]]  # ceil(rows / N)
                              for n, p in named.items()}
    report['all_parameters'] = all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in named.values())
    report['same_as_wrapper'] = [id(p) for p in plain.parameters()] == [id(p) for p in wrapped.parameters()]
    mi, _ = fsdp_train(model, data, rank, inner_params=True, param_dtype=torch.float32)
    report['inner_params_train'] = sd_diff(mi.full_state_dict(rank0_only=False), ref_sd)
    rows_diff = 0.0  # what a walker of named_parameters() sees: this rank's rows of the trained weights
    for n, p in mi.module.named_parameters():
        mine = ref_sd[n][rank * p.shape[0]:(rank + 1) * p.shape[0]]
        rows_diff = max(rows_diff, (p.detach()[:mine.shape[0]] - mine).abs().max().item())
    report['named_rows_diff'] = rows_diff
    report['rank0_only_empty'] = (len(rank0) == 0) if rank != 0 else (len(rank0) == len(ref_sd))

    # gradient accumulation (2 micro-steps, the first in no_sync)
    data2 = batches(STEPS, micro=2)
    ref2, ref2_losses = reference(model0, data2, micro=2)
    m2, _ = fsdp_train(model, data2, rank, micro=2, param_dtype=torch.float32)
    report['accum'] = sd_diff(m2.full_state_dict(rank0_only=False), ref2.state_dict())

    # bf16 compute and communication: close to fp32 training, master weights and gradients in fp32
    dtypes = {}
    mb, losses_bf16 = fsdp_train(model, data, rank)
    hook = mb.units[1].module.fc1.register_forward_hook(
        lambda mod, args, out: dtypes.update(weight=str(mod.weight.dtype), out=str(out.dtype)))
    report['outside_forward'] = str(mb.units[1].module.fc1.weight.dtype)  # the fp32 shard, not the gathered copy
    x = data[0][:B_LOCAL]
    loss = mb(x[:, :-1], targets=x[:, 1:])
    loss.backward()
    mb.finish_gradient_synchronization()
    hook.remove()
    report['bf16_dtypes'] = dict(dtypes, loss=str(loss.dtype), shard=str(mb.units[1].params[0].shard.dtype),
                                 grad=str(mb.units[1].params[0].shard.grad.dtype))
    report['bf16_loss_diff'] = max(abs(a - b) for a, b in zip(losses_bf16, ref_losses))
    report['bf16_weight_diff'] = sd_diff(mb.full_state_dict(rank0_only=False), ref_sd)

    # checkpoint round trip: load the trained weights into a fresh, differently initialized FSDP model
    torch.manual_seed(7)
    fresh = fsdp.FSDP(ToyLM(), param_dtype=torch.float32)
    fresh.load_full_state_dict(ref_sd)
    report['roundtrip'] = sd_diff(fresh.full_state_dict(rank0_only=False), ref_sd)
    with torch.no_grad():
        idx = data[0][:, :-1]
        report['roundtrip_logits'] = (fresh(idx) - ref(idx)).abs().max().item()
    # ... and the FSDP checkpoint loads into a plain model
    plain = ToyLM()
    plain.load_state_dict(m.full_state_dict(rank0_only=False))
    report['plain_load'] = sd_diff(plain.state_dict(), ref_sd)
    try:
        fresh.load_full_state_dict({'nope': torch.zeros(1)})
        report['bad_sd_error'] = ''
    except KeyError as e:
        report['bad_sd_error'] = str(e)
    return report


def _worker(rank, world, port, path):
    from ddp import setup_process_group, cleanup_process_group
    setup_process_group(rank, world, port, 'gloo')
    torch.set_num_threads(1)
    report = _checks(rank)
    everyone = [None] * world
    dist.all_gather_object(everyone, report)
    if rank == 0:
        with open(path, 'w') as f:
            json.dump({'rank0': everyone[0], 'rank1': everyone[1]}, f)
    cleanup_process_group()


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    from ddp import find_free_port
    path = str(tmp_path_factory.mktemp('fsdp') / 'report.json')
    mp.spawn(_worker, args=(WORLD, find_free_port(), path), nprocs=WORLD, join=True)
    return json.load(open(path))


@pytest.mark.parametrize('rank', ['rank0', 'rank1'])
@pytest.mark.parametrize('prefetch', [True, False])
def test_fp32_fsdp_matches_single_process(report, rank, prefetch):
    r = report[rank]
    assert r['ref_moved'] > 0.1  # the steps changed the weights: the comparison means something
    assert r[f'fp32_prefetch{prefetch}'] < 1e-5, f"max |w_fsdp - w_single| = {r[f'fp32_prefetch{prefetch}']:.3g}"
    assert r[f'fp32_loss_prefetch{prefetch}'] < 1e-5


def test_units_freed_and_sharded(report):
    r = report['rank0']
    assert r['n_units'] == 4  # root + 3 blocks
    # root: emb/head (tied, one shard), norm gain and bias; each block: norm gain, bias, fc1 and fc2 weight, bias
    assert r['shard_dims'] == [2, 1, 1] + [1, 1, 2, 1, 2, 1] * 3, r['shard_dims']
    assert r['all_freed'] and r['shard_sizes_ok'] and r['tied_in_sd']
    # without prefetch one block (plus the root, gathered for the whole pass) is resident; with prefetch one more
    assert r['max_gathered_prefetchFalse'] == 2, r['max_gathered_prefetchFalse']
    assert r['max_gathered_prefetchTrue'] == 3, r['max_gathered_prefetchTrue']
    assert report['rank0']['rank0_only_empty'] and report['rank1']['rank0_only_empty']


def test_wrapped_module_parameters_are_the_shards(report):
    for r in report.values():
        assert r['names_kept'] and r['all_parameters'] and r['same_as_wrapper']
        for name, (got, want) in r['shard_shapes'].items():
            assert got == want, (name, got, want)
        assert r['inner_params_train'] < 1e-5, r['inner_params_train']
        assert r['named_rows_diff'] < 1e-5, r['named_rows_diff']


def test_gradient_accumulation(report):
    assert report['rank0']['accum'] < 1e-5 and report['rank1']['accum'] < 1e-5


def test_bf16_mixed_precision(report):
    r = report['rank0']
    assert r['bf16_dtypes'] == dict(weight='torch.bfloat16', out='torch.bfloat16', loss='torch.float32',
                                    shard='torch.float32', grad='torch.float32'), r['bf16_dtypes']
    assert r['outside_forward'] == 'torch.float32'
    # bf16 rounding moves the losses a little; training still follows the fp32 run closely
    assert r['bf16_loss_diff'] < 0.05, r['bf16_loss_diff']
    assert 0 < r['bf16_weight_diff'] < 0.1, r['bf16_weight_diff']


def test_checkpoint_round_trip(report):
    for r in report.values():
        assert r['roundtrip'] == 0.0
        assert r['roundtrip_logits'] < 1e-5
        assert r['plain_load'] < 1e-5
        assert 'missing' in r['bad_sd_error']


def test_calculator_worked_example():
    r = fsdp.memory_and_comm_calculator(16384, 53248, 126, 95e9, 0, 2 * 9e10, 4.6e14, 16, 4, 2, 1)
    P = 2 * 16384 * 53248 * 126
    assert r['params'] == P == 219_848_638_464
    assert r['states_bytes'] == 16 * P
    assert r['act_bytes_per_token'] == 2 * (16384 + 53248) * 126
    assert r['n_fsdp_needed'] == 38  # 16P / 95e9 = 37.03
    assert abs(r['compute_bound_batch_per_device'] - 4.6e14 / (1.8e11 * 2 * 4)) < 1e-9  # 319.4 tokens
    assert abs(r['compute_bound_batch_total'] - 64 * 4.6e14 / (1.8e11 * 8)) < 1e-6
    assert r['tp_comm_hidden']
    # with activations the device fills up: more shards needed, or none enough
    assert fsdp.memory_and_comm_calculator(16384, 53248, 126, 95e9, 1000)['n_fsdp_needed'] > 38
    assert fsdp.memory_and_comm_calculator(16384, 53248, 126, 95e9, 20000)['n_fsdp_needed'] is None


# -----------------------------------------------------------------------------
# The commands: fsdp.py prints the calculator; bench/fsdp.py writes the FSDP bench table and the calculator's report

ROOT = os.path.dirname(os.path.abspath(fsdp.__file__))


def run_cmd(args, timeout=300):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_fsdp_command_prints_calculator():
    r = run_cmd(['fsdp.py', '--tokens_per_device=1000'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'N_FSDP >= ' in r.stdout and '1,000 tokens' in r.stdout


def test_bench_fsdp_writes_tables(tmp_path):
    r = run_cmd(['bench/fsdp.py', '--mode=bench', '--model_size=tiny', '--context_length=16', '--vocab_size=64',
                 '--bench_steps=1', '--bench_warmup=0', f'--out_dir={tmp_path}'])
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / 'fsdp_bench_tiny_1xcpu.md').read_text()
    assert '| FSDP, prefetch |' in text and '| replicated (no sharding) |' in text
    r = run_cmd(['bench/fsdp.py', '--mode=calc', f'--out_dir={tmp_path}'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'N_FSDP >= 38' in (tmp_path / 'fsdp_calculator.md').read_text()


# -----------------------------------------------------------------------------
# Bad input (issue 32): refused at startup with one line naming the key, exit code 2, nothing written
# (test_ddp.refused runs the script and checks all of that)

@pytest.mark.parametrize('script,arg,key', [
    ('fsdp.py', '--num_blocks=0', 'num_blocks'), ('fsdp.py', '--ici_bandwidth=-1.0', 'ici_bandwidth'),
    ('fsdp.py', '--tokens_per_device=-5', 'tokens_per_device'), ('bench/fsdp.py', '--mode=nope', 'mode'),
    ('bench/fsdp.py', '--bench_steps=0', 'bench_steps'), ('bench/fsdp.py', '--out_dir=notes.txt/fsdp', 'out_dir'),
    ('bench/fsdp.py', '--model_size=huge', 'model_size')])
def test_refuses_bad_config(tmp_path, script, arg, key):
    (tmp_path / 'notes.txt').write_text('a file where the tables would go')
    refused(script, [arg], tmp_path, key)

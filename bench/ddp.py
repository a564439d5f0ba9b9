"""
bench/ddp.py: measurements for ddp.py. The all-reduce benchmark (the one collective DDP needs), and the step time,
communication wait and peak memory of every DDP variant and of the ZeRO-1 sharded optimizer on a course model,
next to ddp.py's analytic overhead model (n_b * o + s / (n_b * w)) and its optimal bucket size.

Run:
  python bench/ddp.py --mode=allreduce                    # gloo on CPU: spawns 2, 4, ... processes itself
  python bench/ddp.py --mode=allreduce --backend=nccl     # NCCL: one process per GPU, 2/4/6/8 as many GPUs exist
  torchrun --nproc_per_node=8 bench/ddp.py --mode=bench --model_size=xl   # every DDP variant on the course's XL
  python bench/ddp.py --mode=bench --model_size=small     # one GPU (world size 1: all-reduces are no-ops) or CPU
Results go to results/ddp_*.md and .png.
"""
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # the teaching scripts live in the repo root
import model as model_py  # noqa: E402
from ddp import (DDPBucketed, DDPFlat, DDPIndividualParameters, DDPNaive, ShardedOptimizer,  # noqa: E402
                 cleanup_process_group, ddp_overhead_model, find_free_port, init_distributed, make_buckets,
                 optimal_bucket_bytes, setup_process_group)

# -----------------------------------------------------------------------------
# what to run
mode = 'bench'  # 'allreduce' (collective benchmark) | 'bench' (DDP variants + sharded optimizer on a model)
backend = 'auto'  # 'gloo' | 'nccl' | 'auto' (nccl when CUDA is available, else gloo)
out_dir = 'results'  # markdown tables and plots go here
# all-reduce benchmark
world_sizes = (2, 4, 6, 8)  # process counts to try when not under torchrun (capped at the number of GPUs for nccl)
sizes_mb = (1, 10, 100, 1000)  # float32 tensor sizes, in MB (10^6 bytes)
warmup_iters = 5  # untimed iterations first (NCCL sets up its communicators and buffers lazily)
timed_iters = 10  # timed iterations per size; each is synchronized, and every rank reports its own times
# DDP bench
model_size = 'xl'  # a course size: tiny | small | medium | large | xl | 2.7B (see model.py's MODEL_SIZES)
context_length = 128  # tokens per sequence
batch_size = 4  # sequences per rank per step (the global batch is batch_size * world size)
vocab_size = 10000  # the course's vocabulary size
bench_warmup = 3  # untimed steps per variant
bench_steps = 10  # timed steps per variant
bucket_sizes_mb = (1, 10, 100, 1000)  # bucket sizes tried for DDPBucketed
learning_rate = 1e-4  # AdamW learning rate (the value does not matter for timing)
# -----------------------------------------------------------------------------


def print0(*args, **kwargs):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def synchronize(device):
    # CUDA kernels (and NCCL collectives) run asynchronously: without this a timer measures only the launch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _command(world=None):
    """The command line that produced a report (for the markdown files)."""
    launcher = f'torchrun --nproc_per_node={world} ' if world and world > 1 else 'python '
    return launcher + ' '.join(sys.argv)


def _atomic_write(path, text):
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


# -----------------------------------------------------------------------------
# 1) All-reduce benchmark
#
# all_reduce(x) leaves on every rank the sum over ranks of x. A ring all-reduce moves 2(n-1)/n * size bytes in and
# out of every rank, whatever n is, so we report two bandwidths (nccl-tests' convention):
#   algorithm bandwidth  algbw = size / time          (what the caller sees)
#   bus bandwidth        busbw = algbw * 2(n-1)/n     (what the links carry; comparable across n, ~ link speed)

def time_allreduce(size_bytes, device, warmup, iters):
    """Time all_reduce of a float32 tensor of size_bytes on this rank; returns the list of per-iteration seconds."""
    x = torch.randn(size_bytes // 4, dtype=torch.float32, device=device)
    times = []
    for i in range(warmup + iters):
        dist.barrier()  # start together, so we time the collective and not the wait for a late rank
        synchronize(device)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        synchronize(device)  # NOTE: even a "blocking" NCCL call returns once the kernel is queued
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def allreduce_rows(device, sizes, warmup, iters):
    """Run the benchmark on every rank, gather every rank's timings (all_gather_object), return rows on all ranks."""
    world = dist.get_world_size()
    mine = {mb: time_allreduce(int(mb * 1e6), device, warmup, iters) for mb in sizes}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)  # list over ranks of {size: [seconds...]}
    rows = []
    for mb in sizes:
        per_rank = [sum(t[mb]) / len(t[mb]) for t in everyone]  # mean latency of each rank
        # a collective is finished when the slowest rank is: use the max over ranks for bandwidth
        lat = max(per_rank)
        algbw = mb * 1e6 / lat / 1e9
        rows.append(dict(backend=dist.get_backend(), world_size=world, size_mb=mb, mean_ms=1e3 * sum(per_rank) / world,
                         max_ms=1e3 * lat, min_ms=1e3 * min(per_rank), algbw_gbs=algbw,
                         busbw_gbs=algbw * 2 * (world - 1) / world))
    return rows


def _allreduce_worker(rank, world_size, port, backend, sizes, warmup, iters, result_path):
    setup_process_group(rank, world_size, port, backend)
    device = torch.device('cuda', rank) if backend == 'nccl' else torch.device('cpu')
    if backend == 'gloo':
        torch.set_num_threads(1)  # every process gets one thread: n processes on n cores do not fight
    rows = allreduce_rows(device, sizes, warmup, iters)
    if rank == 0:
        with open(result_path, 'w') as f:
            json.dump(rows, f)
    cleanup_process_group()


def write_allreduce_report(rows, backend_name, out_dir):
    """Markdown table + plot (latency and bus bandwidth vs size, one line per world size). Returns the md path."""
    os.makedirs(out_dir, exist_ok=True)
    device_name = torch.cuda.get_device_name() if backend_name == 'nccl' else f'CPU ({os.cpu_count()} cores)'
    lines = [f'# all_reduce of float32 tensors, backend {backend_name}, {device_name}', '',
             f'{warmup_iters} warm-up + {timed_iters} timed iterations, each synchronized; latency averaged over '
             'ranks (max over ranks in parentheses); bandwidths from the slowest rank. '
             f'busbw = algbw * 2(n-1)/n. Command: `{_command()}`', '',
             '| processes | size | latency ms (max) | algbw GB/s | busbw GB/s |', '|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['world_size']} | {r['size_mb']:g} MB | {r['mean_ms']:.3f} ({r['max_ms']:.3f}) | "
                     f"{r['algbw_gbs']:.2f} | {r['busbw_gbs']:.2f} |")
    md_path = os.path.join(out_dir, f'ddp_allreduce_{backend_name}.md')
    _atomic_write(md_path, '\n'.join(lines) + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ws in sorted({r['world_size'] for r in rows}):
        rs = [r for r in rows if r['world_size'] == ws]
        ax1.loglog([r['size_mb'] for r in rs], [r['mean_ms'] for r in rs], 'o-', label=f'{ws} processes')
        ax2.semilogx([r['size_mb'] for r in rs], [r['busbw_gbs'] for r in rs], 'o-', label=f'{ws} processes')
    ax1.set(xlabel='tensor size (MB)', ylabel='latency (ms)', title=f'all_reduce latency, {backend_name}')
    ax2.set(xlabel='tensor size (MB)', ylabel='bus bandwidth (GB/s)', title=f'all_reduce bus bandwidth, {backend_name}')
    ax1.legend(), ax2.legend(), fig.tight_layout()
    png_path = md_path[:-3] + '.png'
    fig.savefig(png_path + '.tmp.png', dpi=120)
    os.replace(png_path + '.tmp.png', png_path)
    plt.close(fig)
    return md_path


def run_allreduce_benchmark(be):
    if 'RANK' in os.environ:  # under torchrun: the world size is fixed, benchmark just that one
        rank, _, world, device = init_distributed(be)
        rows = allreduce_rows(device, sizes_mb, warmup_iters, timed_iters)
        if rank == 0:
            print(write_allreduce_report(rows, be, out_dir))
        cleanup_process_group()
        return rows
    # plain python: spawn each world size ourselves ("as many as exist": GPUs for NCCL)
    limit = torch.cuda.device_count() if be == 'nccl' else 1 << 30
    sizes = [ws for ws in world_sizes if ws <= limit] or [limit]  # one GPU: a world of 1 (all-reduce = a no-op)
    rows = []
    for ws in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'rows.json')
            mp.spawn(_allreduce_worker, args=(ws, find_free_port(), be, list(sizes_mb), warmup_iters, timed_iters,
                                              path), nprocs=ws, join=True)
            rows += json.load(open(path))
        for r in rows[-len(sizes_mb):]:
            print(f"{be} n={ws} {r['size_mb']:>6g} MB: {r['mean_ms']:9.3f} ms  busbw {r['busbw_gbs']:7.2f} GB/s")
    print(write_allreduce_report(rows, be, out_dir))
    return rows


# -----------------------------------------------------------------------------
# 2) The DDP bench: every variant on the same model and data, plus the sharded optimizer's memory

def measure_o_and_w(device, big_bytes):
    """Per-call overhead o (all-reduce of one float) and algorithm bandwidth w (from a big_bytes all-reduce)."""
    small = min(time_allreduce(4, device, warmup=5, iters=20))
    big = sum(time_allreduce(big_bytes, device, warmup=2, iters=5)) / 5
    w = big_bytes / max(big - small, 1e-9)
    return small, w


def build_model(size, device):
    args = dict(vocab_size=vocab_size, context_length=context_length, rope_theta=10000.0,
                **model_py.MODEL_SIZES[size])
    return model_py.TransformerLM(**args, device=device)


def optimizer_state_bytes(optimizer):
    """Bytes of optimizer state (exp_avg, exp_avg_sq, step, ...); 0 for None (a rank that owns nothing)."""
    if optimizer is None:
        return 0
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t))


def bench_variant(make_ddp, make_opt, device, steps, warmup):
    """
    Time full training steps (forward, backward, gradient sync, optimizer step) of one DDP variant.
    Returns dict(step_ms, sync_ms): sync_ms is the time spent inside finish_gradient_synchronization(), i.e. the
    communication that backward did not hide (for naive/flat: all of it).
    """
    torch.manual_seed(1234 + dist.get_rank())  # different data on each rank, like a real sharded batch
    ddp_model = make_ddp()
    opt = make_opt(ddp_model.module.parameters())
    x = torch.randint(0, vocab_size, (batch_size, context_length + 1), device=device)
    step_t, sync_t = [], []
    for it in range(warmup + steps):
        synchronize(device)
        t0 = time.perf_counter()
        logits = ddp_model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))
        loss.backward()
        synchronize(device)
        t1 = time.perf_counter()
        ddp_model.finish_gradient_synchronization()
        synchronize(device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        if it >= warmup:
            step_t.append(time.perf_counter() - t0)
            sync_t.append(t2 - t1)
    # medians (robust to a stray slow step); a collective ends when the slowest rank is done: max over ranks
    stats = torch.tensor([sorted(step_t)[steps // 2], sorted(sync_t)[steps // 2]], device=device,
                         dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    ddp_model.remove_hooks()  # the next variant wraps the same model
    del opt, ddp_model
    return dict(step_ms=1e3 * stats[0].item(), sync_ms=1e3 * stats[1].item())


class NoComm(DDPNaive):
    """The compute-only baseline: same forward/backward/step, no communication at all."""

    def finish_gradient_synchronization(self):
        pass


def memory_run(model, sharded, device, steps=2):
    """Peak memory (CUDA) and optimizer-state bytes on this rank for AdamW, plain or ZeRO-1 sharded."""
    ddp_model = DDPBucketed(model, 25.0)
    params = list(model.parameters())
    opt = (ShardedOptimizer(params, torch.optim.AdamW, lr=learning_rate) if sharded
           else torch.optim.AdamW(params, lr=learning_rate))
    x = torch.randint(0, vocab_size, (batch_size, context_length + 1), device=device)
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    mem = {'params_MB': sum(p.numel() * p.element_size() for p in params) / 2 ** 20}
    for _ in range(steps):
        logits = ddp_model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))
        loss.backward()
        ddp_model.finish_gradient_synchronization()
        if cuda:
            mem['peak_before_step_MB'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            mem['peak_after_step_MB'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    mem['opt_state_MB'] = optimizer_state_bytes(opt.optimizer if sharded else opt) / 2 ** 20
    # analytic: AdamW keeps 2 fp32 tensors per parameter (8 bytes), 1/N of them each with ZeRO-1 (up to balance)
    mem['opt_state_analytic_MB'] = 2 * mem['params_MB'] / (dist.get_world_size() if sharded else 1)
    ddp_model.remove_hooks()
    del opt, ddp_model
    return mem


def run_ddp_bench(be):
    rank, _, world, device = init_distributed(be)
    print0(f"DDP bench: model {model_size} {model_py.MODEL_SIZES[model_size]}, context {context_length}, "
           f"batch {batch_size} per rank x {world} ranks, backend {dist.get_backend()}, device {device}")
    torch.manual_seed(0)
    model = build_model(model_size, device)
    s = sum(p.numel() * p.element_size() for p in model.parameters())
    print0(f"parameters: {s / 4 / 1e6:.1f}M, gradient bytes s = {s / 2 ** 20:.1f} MB")
    make_opt = lambda params: torch.optim.AdamW(params, lr=learning_rate)

    # o and w for the overhead model, measured here with the same process group
    o, w = measure_o_and_w(device, big_bytes=min(s, 256 * 2 ** 20))
    print0(f"measured all-reduce: per-call overhead o = {o * 1e3:.3f} ms, algorithm bandwidth w = {w / 1e9:.2f} GB/s")

    variants = [('no communication (baseline)', lambda: NoComm(model), None),
                ('naive: all-reduce per param after backward', lambda: DDPNaive(model), None),
                ('flat: one all-reduce after backward', lambda: DDPFlat(model), None),
                ('overlapped, one all-reduce per param', lambda: DDPIndividualParameters(model), None)]
    for b in bucket_sizes_mb:
        variants.append((f'bucketed {b:g} MB', lambda b=b: DDPBucketed(model, b), b))
    # the baseline runs first and again last (the first variant also pays warm-up effects): keep the faster
    variants.append(variants[0])
    rows = []
    for name, make, b in variants:
        r = bench_variant(make, make_opt, device, bench_steps, bench_warmup)
        r['name'] = name
        if b is not None:
            n_b = len(make_buckets(model, b))
            r['n_buckets'] = n_b
            r['predicted_ms'] = 1e3 * ddp_overhead_model(s, w, o, n_b)
        if rows and name == rows[0]['name']:
            rows[0] = min(rows[0], r, key=lambda row: row['step_ms'])
            continue
        rows.append(r)
        base = rows[0]['step_ms']
        print0(f"{name:45s} step {r['step_ms']:9.2f} ms  sync wait {r['sync_ms']:8.2f} ms  "
               f"overhead vs baseline {r['step_ms'] - base:8.2f} ms"
               + (f"  ({r['n_buckets']} buckets, model predicts {r['predicted_ms']:.2f} ms)" if b is not None else ''))

    mem = {}
    for sharded in (False, True):
        mem[sharded] = memory_run(model, sharded, device)
        print0(f"AdamW {'sharded (ZeRO-1)' if sharded else 'plain'}: " +
               ', '.join(f'{k} {v:.1f}' for k, v in mem[sharded].items()))
    if rank == 0:
        print(write_ddp_report(rows, mem, s, o, w, world, device))
    cleanup_process_group()
    return rows, mem


def write_ddp_report(rows, mem, s, o, w, world, device):
    dev = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    base = rows[0]['step_ms']
    b_opt = optimal_bucket_bytes(s, w, o)
    lines = [f'# DDP variants: model {model_size}, context {context_length}, batch {batch_size}/rank, '
             f'{world} x {dev}, backend {dist.get_backend()}', '',
             f'Command: `{_command(world)}`. Median of {bench_steps} steps after '
             f'{bench_warmup} warm-up steps (max over ranks). "sync wait" = time inside '
             'finish_gradient_synchronization '
             '(communication not hidden by backward); "overhead" = step time minus the no-communication baseline.', '',
             '| variant | step ms | sync wait ms | sync / step | overhead ms | buckets | model: n_b*o + s/(n_b*w) ms |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        predicted = f"{r['predicted_ms']:.2f}" if 'predicted_ms' in r else ''
        lines.append(f"| {r['name']} | {r['step_ms']:.2f} | {r['sync_ms']:.2f} | "
                     f"{100 * r['sync_ms'] / r['step_ms']:.1f}% | {r['step_ms'] - base:.2f} | "
                     f"{r.get('n_buckets', '')} | {predicted} |")
    lines += ['', f'Overhead model: s = {s / 2 ** 20:.1f} MB of gradients, measured o = {o * 1e3:.3f} ms per call, '
                  f'w = {w / 1e9:.2f} GB/s. overhead(n_b) = n_b*o + s/(n_b*w); optimal bucket b* = sqrt(s*w*o) = '
                  f'{b_opt / 2 ** 20:.1f} MB (n_b* = {s / b_opt:.1f}), predicted overhead there '
                  f'{2e3 * math.sqrt(s * o / w):.2f} ms.', '',
              '## Memory per rank, AdamW plain vs sharded (ZeRO-1)', '',
              '| optimizer | ' + ' | '.join(mem[False].keys()) + ' |', '|---|' + '---:|' * len(mem[False])]
    for sharded in (False, True):
        lines.append(f"| {'ShardedOptimizer(AdamW)' if sharded else 'AdamW'} | "
                     + ' | '.join(f'{v:.1f}' for v in mem[sharded].values()) + ' |')
    path = os.path.join(out_dir, f'ddp_bench_{model_size}_{world}x{device.type}.md')
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write(path, '\n'.join(lines) + '\n')
    return path


def die(msg):
    """A user error: one line naming the key and the fix, exit code 2, no traceback, nothing written."""
    print(f"bench/ddp.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_config():
    if mode not in ('allreduce', 'bench'):
        die(f"--mode={mode!r}: use allreduce or bench")
    if backend not in ('auto', 'gloo', 'nccl'):
        die(f"--backend={backend!r}: use auto, gloo or nccl")
    if backend == 'nccl' and not torch.cuda.is_available():
        die("--backend=nccl needs CUDA GPUs, and none is visible: use --backend=gloo on a CPU")
    parent = os.path.abspath(out_dir)  # the folder, or the nearest of its parents that exists
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        die(f"--out_dir={out_dir!r}: {parent} is a file, not a folder; name a folder for the tables")
    minimum = dict(context_length=1, batch_size=1, vocab_size=2, timed_iters=1, warmup_iters=0, bench_steps=1,
                   bench_warmup=0)
    for key, low in minimum.items():
        if not isinstance(globals()[key], int) or globals()[key] < low:
            die(f"--{key}={globals()[key]!r}: must be a whole number >= {low}")
    for key in ('world_sizes', 'sizes_mb', 'bucket_sizes_mb'):
        values = globals()[key]
        if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
            die(f"--{key}={values!r}: give a non-empty tuple of positive numbers, e.g. (1, 10)")
    if not all(isinstance(ws, int) for ws in world_sizes):
        die(f"--world_sizes={world_sizes!r}: process counts are whole numbers")
    if model_size not in model_py.MODEL_SIZES:
        die(f"--model_size={model_size!r}: use one of {', '.join(model_py.MODEL_SIZES)}")
    if not learning_rate > 0:
        die(f"--learning_rate={learning_rate!r}: must be > 0")


def main():
    check_config()
    be = backend if backend != 'auto' else ('nccl' if torch.cuda.is_available() else 'gloo')
    return run_allreduce_benchmark(be) if mode == 'allreduce' else run_ddp_bench(be)


if __name__ == '__main__':
    exec(open(os.path.join(_ROOT, 'configurator.py')).read())
    main()

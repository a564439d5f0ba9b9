"""
ddp.py: data-parallel training written from torch.distributed primitives, step by step.

Data parallelism keeps a full copy of the model on every process (rank), gives each rank a different slice of the
batch, and makes the copies agree by averaging gradients before every optimizer step. This file builds that idea up:

  1. all-reduce benchmark   how long does the one collective DDP needs take? (gloo on CPU, NCCL on GPU)
  2. naive DDP              one blocking all-reduce per parameter after backward
  3. flat DDP               one all-reduce over all gradients flattened into a single buffer
  4. DDPIndividualParameters  one *asynchronous* all-reduce per parameter, launched from a gradient hook as soon as
                            that gradient is ready, so communication overlaps the rest of backward
  5. DDPBucketed            the same, with gradients grouped into buckets of bucket_size_mb (fewer, larger calls)
  6. ShardedOptimizer       ZeRO stage 1: each rank keeps optimizer state only for its own share of the parameters
  7. --mode=bench           step time, communication fraction and peak memory of all of the above on a real model,
                            next to the analytic overhead model (formula and optimal bucket size)

Every wrapper mimics torch's DistributedDataParallel where train.py touches it (train.py --ddp_impl=...):
`.module`, forward, `.no_sync()` for gradient-accumulation micro-steps, and `.finish_gradient_synchronization()`,
called after the last backward and before optimizer.step(). `wrap(model, impl)` builds one by name.

Run:
  python ddp.py --mode=allreduce                       # gloo on CPU: spawns 2, 4, ... processes itself
  python ddp.py --mode=allreduce --backend=nccl        # NCCL: one process per GPU, 2/4/6/8 as many GPUs exist
  torchrun --nproc_per_node=8 ddp.py --mode=bench --model_size=xl      # every DDP variant on the course's XL model
  python ddp.py --mode=bench --model_size=small        # one GPU (world size 1: all-reduces are no-ops) or CPU
Results go to results/ddp_*.md and .png.
"""
import contextlib
import gc
import json
import math
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

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
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# Process-group plumbing

def find_free_port():
    """A TCP port nobody listens on right now (for MASTER_PORT when we spawn processes ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def setup_process_group(rank, world_size, port, backend='gloo'):
    """Join a process group of world_size processes on this machine (used by mp.spawn'ed workers and tests)."""
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    if backend == 'nccl':
        torch.cuda.set_device(rank)  # NOTE: one GPU per rank; NCCL hangs if two ranks share a device
    dist.init_process_group(backend, rank=rank, world_size=world_size)


def init_distributed(backend='auto'):
    """
    Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK, or, under plain `python`, make a group
    of one (then every collective is a no-op copy, so the same code runs on one GPU or CPU).
    Returns (rank, local_rank, world_size, device).
    """
    if 'RANK' not in os.environ:
        os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=str(find_free_port()))
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if backend == 'auto':
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    device = torch.device('cpu')
    if backend == 'nccl':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, local_rank, world_size, device


def cleanup_process_group():
    """
    Leave the process group. NOTE: collect garbage first: gloo's worker threads may still hold finished Work objects
    (with tensors) whose destruction during interpreter shutdown aborts the process (pytorch PR #179291).
    """
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def print0(*args, **kwargs):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def synchronize(device):
    # CUDA kernels (and NCCL collectives) run asynchronously: without this a timer measures only the launch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# torch 2.13 renamed all_gather_into_tensor/reduce_scatter_tensor to *_single (same arguments); the GPU machine's
# torch 2.11 has only the old names. fsdp.py does the same.
_all_gather_single = getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor


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


def _command(world=None):
    """The command line that produced a report (for the markdown files)."""
    launcher = f'torchrun --nproc_per_node={world} ' if world and world > 1 else 'python '
    return launcher + ' '.join(sys.argv)


def _atomic_write(path, text):
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def run_allreduce_benchmark():
    be = backend if backend != 'auto' else ('nccl' if torch.cuda.is_available() else 'gloo')
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
    assert limit >= 1, "--backend=nccl needs a GPU; use --backend=gloo on CPU"
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
# 2) and 3) Naive and flat DDP: synchronize after backward, no overlap

@torch.no_grad()
def broadcast_parameters(module, src=0):
    """Make every rank start from rank src's weights (and buffers), as if all ranks had loaded one checkpoint."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def allreduce_gradients_naive(module):
    """One blocking all-reduce per parameter, then divide by the world size: grad = mean over ranks."""
    world = dist.get_world_size()
    for p in module.parameters():  # parameters() lists a tied (shared) parameter once, so it is reduced once
        if p.grad is not None:
            dist.all_reduce(p.grad)  # sum over ranks (gloo has no AVG on every version; SUM then divide works on all)
            p.grad.div_(world)


def allreduce_gradients_flat(module):
    """
    One all-reduce for all gradients: concatenate them into one flat buffer, reduce it, copy the slices back.
    Each collective call has a fixed cost (launch, synchronization, the ring's latency term), so one large call
    beats hundreds of small ones; the price is one extra copy of the gradients in memory.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)  # (sum of numels,) one contiguous buffer
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


class _DDPBase(nn.Module):
    """What every wrapper shares: broadcast at construction, .module, forward, no_sync()."""

    def __init__(self, module):
        super().__init__()
        assert dist.is_initialized(), "call init_distributed() (or dist.init_process_group) before wrapping a model"
        self.module = module  # registered as a submodule: state_dict keys get a 'module.' prefix, like torch DDP
        self.world_size = dist.get_world_size()
        self._sync = True  # False inside no_sync(): gradient hooks do nothing, grads just accumulate locally
        self._hooks = []  # RemovableHandles of the gradient hooks we register on the module's parameters
        broadcast_parameters(module)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def remove_hooks(self):
        """Detach this wrapper from the module's parameters (to wrap the same module again differently)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    @contextlib.contextmanager
    def no_sync(self):
        """
        Gradient accumulation: backward passes inside this block only accumulate into .grad. The backward after
        it (outside the block) synchronizes the accumulated sum, exactly once per optimizer step.
        """
        before, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = before


class DDPNaive(_DDPBase):
    """Synchronize in finish_gradient_synchronization() with one blocking all-reduce per parameter."""

    def finish_gradient_synchronization(self):
        allreduce_gradients_naive(self.module)


class DDPFlat(_DDPBase):
    """Synchronize in finish_gradient_synchronization() with one all-reduce of all gradients flattened."""

    def finish_gradient_synchronization(self):
        allreduce_gradients_flat(self.module)


# -----------------------------------------------------------------------------
# 4) Overlap communication with backward: one asynchronous all-reduce per parameter
#
# Backward computes gradients from the last layer to the first. The last layer's gradient is final long before
# backward ends, so its all-reduce can run while the earlier layers are still being differentiated.
# Tensor.register_post_accumulate_grad_hook(fn) calls fn(param) right after autograd has accumulated into
# param.grad (for a parameter used twice -- tied weights -- autograd sums both uses first and calls fn once).
# async_op=True returns a Work handle at once; we wait on all of them in finish_gradient_synchronization().

class DDPIndividualParameters(_DDPBase):
    def __init__(self, module):
        super().__init__(module)
        self._works = []
        # module.parameters() yields each Parameter object once (tied weights included) in named_parameters() order
        for p in module.parameters():
            if p.requires_grad:  # frozen parameters have no gradient: nothing to hook, nothing to reduce
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _grad_ready(self, p):
        if not self._sync:
            return
        # divide first (torch DDP's gradient_predivide), then SUM: the result is the mean over ranks.
        # NOTE: the hook runs on autograd's thread; the collective is queued in the order hooks fire, which is the
        # same on every rank because every rank runs the same graph. Collectives must be issued in the same order.
        p.grad.div_(self.world_size)
        self._works.append(dist.all_reduce(p.grad, async_op=True))

    def finish_gradient_synchronization(self):
        for work in self._works:
            work.wait()  # for NCCL this makes the current CUDA stream wait; for gloo it blocks until done
        self._works.clear()


# -----------------------------------------------------------------------------
# 5) Bucketed overlap: fewer, larger all-reduces
#
# One call per parameter pays the fixed per-call cost hundreds of times; one flat call cannot start before backward
# ends. Buckets sit in between: parameters are grouped in *reverse* order (the order backward produces their
# gradients) into buckets of at most bucket_size_mb, and a bucket's all-reduce starts as soon as its last gradient
# is ready. A parameter larger than the bucket size gets a bucket of its own; bucket_size_mb=None = one bucket.

def make_buckets(module, bucket_size_mb):
    """Group module's trainable parameters, in reverse order, into buckets of at most bucket_size_mb (MiB)."""
    cap = math.inf if bucket_size_mb is None else bucket_size_mb * 1024 ** 2  # MB here = MiB, like torch DDP
    buckets, size = [], cap
    for p in reversed([p for p in module.parameters() if p.requires_grad]):
        nbytes = p.numel() * p.element_size()
        # start a new bucket when this one would overflow, or when dtype/device change (one flat buffer each)
        if not buckets or size + nbytes > cap or p.dtype != buckets[-1][0].dtype \
                or p.device != buckets[-1][0].device:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


class DDPBucketed(_DDPBase):
    def __init__(self, module, bucket_size_mb=25.0):
        super().__init__(module)
        self.buckets = make_buckets(module, bucket_size_mb)  # lists of parameters, in gradient-ready order
        self._bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._reset()
        for p in self._bucket_of:
            self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _reset(self):
        self._ready = [set() for _ in self.buckets]  # ids of parameters whose gradient has arrived, per bucket
        self._pending = {}  # bucket index -> (Work, flat buffer of the bucket's gradients)

    def _grad_ready(self, p):
        if not self._sync:
            return
        i = self._bucket_of[p]
        self._ready[i].add(id(p))
        if len(self._ready[i]) == len(self.buckets[i]):
            self._launch(i)

    def _launch(self, i):
        # a parameter that received no gradient this step (unused branch) contributes zeros; like torch DDP without
        # find_unused_parameters, every rank must use the same parameters or the collectives would not match up
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.buckets[i]]
        flat = _flatten_dense_tensors(grads)  # (bucket numel,) a copy; torch DDP avoids it with grads-as-bucket-views
        flat.div_(self.world_size)
        self._pending[i] = (dist.all_reduce(flat, async_op=True), flat)

    def finish_gradient_synchronization(self):
        # buckets that were never completed (some parameter got no gradient) are launched now, in bucket order
        for i, ready in enumerate(self._ready):
            if i not in self._pending and ready:
                self._launch(i)
        for i, (work, flat) in sorted(self._pending.items()):
            work.wait()
            bucket = self.buckets[i]
            for p, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                if p.grad is None:
                    p.grad = synced.clone()
                else:
                    p.grad.copy_(synced)
        self._reset()


def wrap(module, impl, bucket_size_mb=25.0):
    """Wrap module in the DDP variant named impl: 'naive' | 'flat' | 'individual' | 'bucketed' (train.py's ddp_impl)."""
    if impl == 'naive':
        return DDPNaive(module)
    if impl == 'flat':
        return DDPFlat(module)
    if impl == 'individual':
        return DDPIndividualParameters(module)
    if impl == 'bucketed':
        return DDPBucketed(module, bucket_size_mb)
    raise ValueError(f"unknown DDP implementation {impl!r}: use 'naive', 'flat', 'individual' or 'bucketed'")


# -----------------------------------------------------------------------------
# 6) Sharded optimizer (ZeRO stage 1, Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054)
#
# AdamW keeps two fp32 tensors per parameter (exp_avg, exp_avg_sq): twice the model. With plain DDP every rank holds
# all of it. Here each parameter is owned by one rank (balanced by size); a rank keeps optimizer state and runs the
# update only for the parameters it owns, then every owner broadcasts its updated parameters to the others.
# Gradients must already be averaged (any DDP wrapper above); the update is elementwise, so the result is bit-for-bit
# what one process running AdamW on everything would get.

class ShardedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, optimizer_cls, **kwargs):
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, kwargs
        self.optimizer = None  # the wrapped optimizer over this rank's parameters, built on its first non-empty group
        self._rank_bytes = [0] * self.world_size  # bytes assigned to each rank so far
        self._owner = {}  # parameter -> owning rank
        self._inner_group = []  # for each of our param_groups: the wrapped optimizer's group, or None
        super().__init__(params, defaults=kwargs)  # calls self.add_param_group for every group

    def add_param_group(self, param_group):
        super().add_param_group(param_group)  # the full group (all parameters, all ranks): zero_grad uses it
        group = self.param_groups[-1]
        mine = set()
        # greedy balance, largest parameters first: each goes to the rank with the fewest bytes so far
        # (sorted() is stable and every rank sees the same parameters, so every rank computes the same owners)
        for p in sorted(group['params'], key=lambda p: -p.numel() * p.element_size()):
            owner = min(range(self.world_size), key=lambda r: self._rank_bytes[r])
            self._rank_bytes[owner] += p.numel() * p.element_size()
            self._owner[p] = owner
            if owner == self.rank:
                mine.add(p)
        local = [p for p in group['params'] if p in mine]  # the wrapped optimizer keeps the original order
        inner = None
        if local:  # torch optimizers refuse an empty parameter list
            local_group = {k: v for k, v in group.items() if k != 'params'}
            local_group['params'] = local
            if self.optimizer is None:
                self.optimizer = self.optimizer_cls([local_group], **self.optimizer_kwargs)
            else:
                self.optimizer.add_param_group(local_group)
            inner = self.optimizer.param_groups[-1]
        self._inner_group.append(inner)

    @torch.no_grad()
    def step(self, closure=None, **kwargs):
        # learning-rate schedules write into self.param_groups: pass the hyperparameters on to the wrapped optimizer
        for group, inner in zip(self.param_groups, self._inner_group):
            if inner is not None:
                inner.update({k: v for k, v in group.items() if k != 'params'})
        loss = None
        if self.optimizer is not None:
            loss = self.optimizer.step(closure, **kwargs)
        elif closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every owner sends its freshly updated parameters to everyone (async, then wait for all)
        if self.world_size > 1:
            works = [dist.broadcast(p.data, src=self._owner[p], async_op=True)
                     for group in self.param_groups for p in group['params']]
            for work in works:
                work.wait()
        return loss

    def state_dict(self):
        """This rank's shard of the optimizer state (save one file per rank; ZeRO checkpoints are sharded too)."""
        return {'rank': self.rank, 'world_size': self.world_size,
                'shard': self.optimizer.state_dict() if self.optimizer is not None else None}

    def load_state_dict(self, state_dict):
        assert (state_dict['rank'], state_dict['world_size']) == (self.rank, self.world_size), (
            f"this is rank {state_dict['rank']}/{state_dict['world_size']}'s shard, "
            f"we are {self.rank}/{self.world_size}")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state_dict['shard'])

    def local_state_bytes(self):
        """Bytes of optimizer state this rank holds (exp_avg, exp_avg_sq, step, ...)."""
        opt = self.optimizer
        return 0 if opt is None else optimizer_state_bytes(opt)


def optimizer_state_bytes(optimizer):
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t))


# -----------------------------------------------------------------------------
# 7) The overhead model for bucketed DDP
#
# s = bytes of all gradients, w = all-reduce algorithm bandwidth (bytes/s, size per rank / time), o = fixed cost of one
# all-reduce call (s), n_b = number of buckets, each of s/n_b bytes. Assume (as the course does) that backward makes
# gradients at least as fast as the network ships them, so each bucket's transfer hides behind the backward of the
# next bucket, except the last one, which can only start when backward ends. The per-call costs are not hidden
# (they serialize on the one communication stream). The time added after backward is then
#
#     overhead(n_b) = n_b * o + s / (n_b * w)
#
# d/dn_b = 0 gives n_b* = sqrt(s / (w * o)), i.e. the optimal bucket size  b* = s / n_b* = sqrt(s * w * o),
# with overhead(n_b*) = 2 * sqrt(s * o / w). Few buckets: the last transfer is long; many buckets: the calls add up.

def ddp_overhead_model(s_bytes, w_bytes_per_s, o_s, n_buckets):
    """Predicted seconds of DDP communication left after backward (see the derivation above)."""
    return n_buckets * o_s + s_bytes / (n_buckets * w_bytes_per_s)


def optimal_bucket_bytes(s_bytes, w_bytes_per_s, o_s):
    """The bucket size minimizing ddp_overhead_model: sqrt(s * w * o), at most the whole model."""
    return min(s_bytes, math.sqrt(s_bytes * w_bytes_per_s * o_s))


def measure_o_and_w(device, big_bytes):
    """Per-call overhead o (all-reduce of one float) and algorithm bandwidth w (from a big_bytes all-reduce)."""
    small = min(time_allreduce(4, device, warmup=5, iters=20))
    big = sum(time_allreduce(big_bytes, device, warmup=2, iters=5)) / 5
    w = big_bytes / max(big - small, 1e-9)
    return small, w


# -----------------------------------------------------------------------------
# The DDP bench: every variant on the same model and data, plus the sharded optimizer's memory

def build_model(size, device):
    import model as model_py  # lazy: the all-reduce benchmark and the wrappers do not need model.py
    args = dict(vocab_size=vocab_size, context_length=context_length, rope_theta=10000.0,
                **model_py.MODEL_SIZES[size])
    return model_py.TransformerLM(**args, device=device)


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


class _NoComm(_DDPBase):
    """The compute-only baseline: same forward/backward/step, no communication at all."""

    def __init__(self, module):
        nn.Module.__init__(self)
        self.module, self._hooks = module, []

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
    mem['opt_state_MB'] = (opt.local_state_bytes() if sharded else optimizer_state_bytes(opt)) / 2 ** 20
    # analytic: AdamW keeps 2 fp32 tensors per parameter (8 bytes), 1/N of them each with ZeRO-1 (up to balance)
    mem['opt_state_analytic_MB'] = 2 * mem['params_MB'] / (dist.get_world_size() if sharded else 1)
    ddp_model.remove_hooks()
    del opt, ddp_model
    return mem


def run_ddp_bench():
    rank, _, world, device = init_distributed(backend)
    import model as model_py  # lazy, as in build_model
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

    variants = [('no communication (baseline)', lambda: _NoComm(model), None),
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


if __name__ == '__main__':
    if mode == 'allreduce':
        run_allreduce_benchmark()
    elif mode == 'bench':
        run_ddp_bench()
    else:
        raise SystemExit(f"unknown --mode={mode!r}: use 'allreduce' or 'bench'")

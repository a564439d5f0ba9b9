"""
ddp.py: data-parallel training written from torch.distributed primitives, step by step.

Data parallelism keeps a full copy of the model on every process (rank), gives each rank a different slice of the
batch, and makes the copies agree by averaging gradients before every optimizer step. Built up in five steps:

  1. naive DDP                one blocking all-reduce per parameter after backward
  2. flat DDP                 one all-reduce of all gradients flattened into a single buffer
  3. DDPIndividualParameters  one *asynchronous* all-reduce per parameter from a gradient hook: overlaps backward
  4. DDPBucketed              the same over buckets of bucket_size_mb, and the model that picks the bucket size
  5. ShardedOptimizer         ZeRO stage 1: each rank keeps optimizer state only for its own share of the parameters

Every wrapper mimics torch's DistributedDataParallel where train.py (--ddp_impl=...) touches it: `.module`, forward,
`.no_sync()` for accumulation micro-steps, and `.finish_gradient_synchronization()` before optimizer.step().

Run (a few steps of a small model.py model on a repeating token pattern, then a check that the replicas agree):
  python ddp.py                                                    # one process (all-reduces are no-ops), CPU/GPU
  torchrun --nproc_per_node=2 ddp.py --impl=bucketed --zero1=True  # 2 ranks (gloo on CPU, NCCL on GPUs)
The all-reduce benchmark and the timing of every variant: bench/ddp.py (results/ddp_*.md).
"""
import contextlib
import gc
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

import model as model_py

# -----------------------------------------------------------------------------
# data parallelism
impl = 'bucketed'  # naive | flat | individual | bucketed (see wrap())
bucket_size_mb = 25.0  # bucket size of impl='bucketed', in MiB (torch DDP's default)
zero1 = False  # shard AdamW's state over the ranks (ShardedOptimizer, ZeRO stage 1)
backend = 'auto'  # 'gloo' | 'nccl' | 'auto' (nccl when CUDA is available, else gloo)
# model and data
model_size = 'tiny'  # a size of model.py's MODEL_SIZES: tiny | small | medium | large | xl | 2.7B
vocab_size = 256  # tokens of the synthetic data
context_length = 64  # tokens per sequence
batch_size = 8  # sequences per rank per micro-step (the global batch is batch_size * accumulation * world size)
grad_accum_steps = 2  # micro-steps per optimizer step; all but the last run inside no_sync()
# training
max_iters = 20  # optimizer steps
learning_rate = 3e-3  # AdamW learning rate
seed = 1337  # model init (rank 0's wins: the wrappers broadcast it) and data order (+ rank)
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
    """Join the process group torchrun describes (RANK, LOCAL_RANK, WORLD_SIZE), or under plain `python` a group of
    one, where every collective is a no-op copy. Returns (rank, local_rank, world_size, device)."""
    if 'RANK' not in os.environ:
        os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=str(find_free_port()))
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if backend == 'auto':
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    device = torch.device('cuda', local_rank) if backend == 'nccl' else torch.device('cpu')
    if backend == 'nccl':
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, local_rank, world_size, device


def cleanup_process_group():
    """Leave the process group. NOTE: collect garbage first: gloo's worker threads may still hold finished Work
    objects whose destruction during interpreter shutdown aborts the process (pytorch PR #179291)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


# -----------------------------------------------------------------------------
# 1) and 2) Naive and flat DDP: synchronize after backward, no overlap
#
# all_reduce(x) leaves on every rank the sum over ranks of x; divided by the world size it is the mean gradient,
# which is exactly the gradient of the mean loss over the global batch. So N ranks with B sequences each take the
# same step as one process with N*B sequences, provided they start from the same weights (broadcast at wrapping).

class _DDPBase(nn.Module):
    """What every wrapper shares: broadcast at construction, .module, forward, no_sync()."""

    def __init__(self, module):
        super().__init__()
        assert dist.is_initialized(), "call init_distributed() (or dist.init_process_group) before wrapping a model"
        self.module = module  # registered as a submodule: state_dict keys get a 'module.' prefix, like torch DDP
        self.world_size = dist.get_world_size()
        self._sync = True  # False inside no_sync(): gradient hooks do nothing, grads just accumulate locally
        self._hooks = []  # RemovableHandles of the gradient hooks we register on the module's parameters
        for t in list(module.parameters()) + list(module.buffers()):  # rank 0's weights, as if all loaded one file
            dist.broadcast(t.data, src=0)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def remove_hooks(self):
        """Detach this wrapper from the module's parameters (to wrap the same module again differently)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    @contextlib.contextmanager
    def no_sync(self):
        """Gradient accumulation: backwards inside this block only accumulate into .grad; the next one outside it
        synchronizes the accumulated sum, once per optimizer step."""
        before, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = before


class DDPNaive(_DDPBase):
    """After backward: one blocking all-reduce per parameter, then divide by the world size: grad = mean over ranks."""

    def finish_gradient_synchronization(self):
        for p in self.module.parameters():  # parameters() lists a tied (shared) parameter once: reduced once
            if p.grad is not None:
                dist.all_reduce(p.grad)  # SUM over ranks, then divide (gloo has no AVG on every version)
                p.grad.div_(self.world_size)


class DDPFlat(_DDPBase):
    """After backward: one all-reduce of all gradients flattened into one buffer. Each call has a fixed cost (launch,
    sync, the ring's latency term): one large call beats hundreds of small ones, for one extra copy of the gradients."""

    def finish_gradient_synchronization(self):
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)  # (sum of numels,) one contiguous buffer
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)


# -----------------------------------------------------------------------------
# 3) Overlap communication with backward: one asynchronous all-reduce per parameter
#
# Backward runs from the last layer to the first, so the last layer's all-reduce can run while earlier layers are
# still being differentiated. Tensor.register_post_accumulate_grad_hook(fn) calls fn(param) once autograd has
# accumulated param.grad (a tied weight: after both uses, once). async_op=True returns a Work handle at once;
# finish_gradient_synchronization() waits on all of them.

class DDPIndividualParameters(_DDPBase):
    def __init__(self, module):
        super().__init__(module)
        self._works = []
        for p in module.parameters():
            if p.requires_grad:  # frozen parameters have no gradient: nothing to hook, nothing to reduce
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _grad_ready(self, p):
        if not self._sync:
            return
        # divide first (torch DDP's gradient_predivide), then SUM = the mean over ranks. NOTE: collectives must be
        # issued in the same order on every rank; hooks fire in the same order because every rank runs the same graph
        p.grad.div_(self.world_size)
        self._works.append(dist.all_reduce(p.grad, async_op=True))

    def finish_gradient_synchronization(self):
        for work in self._works:
            work.wait()  # for NCCL this makes the current CUDA stream wait; for gloo it blocks until done
        self._works.clear()


# -----------------------------------------------------------------------------
# 4) Bucketed overlap: fewer, larger all-reduces
#
# One call per parameter pays the per-call cost hundreds of times; one flat call cannot start before backward ends.
# Buckets sit in between: parameters grouped in *reverse* order (the order backward makes their gradients) into
# buckets of at most bucket_size_mb, each all-reduced as soon as its last gradient is ready. A parameter larger than
# the bucket size gets a bucket of its own; bucket_size_mb=None = one bucket.

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
    if impl == 'bucketed':
        return DDPBucketed(module, bucket_size_mb)
    if impl in ('naive', 'flat', 'individual'):
        return {'naive': DDPNaive, 'flat': DDPFlat, 'individual': DDPIndividualParameters}[impl](module)
    raise ValueError(f"unknown DDP implementation {impl!r}: use 'naive', 'flat', 'individual' or 'bucketed'")


# The overhead model for bucketed DDP: which bucket size?
#
# s = bytes of all gradients, w = all-reduce algorithm bandwidth (bytes/s), o = fixed cost of one call (s), n_b
# buckets of s/n_b bytes. If backward makes gradients at least as fast as the network ships them (the course's
# assumption), each transfer hides behind the next bucket's backward except the last, which starts when backward
# ends; the per-call costs serialize on the one communication stream. The time added after backward is then
#
#     overhead(n_b) = n_b * o + s / (n_b * w)
#
# d/dn_b = 0 gives n_b* = sqrt(s / (w * o)), the bucket size b* = s / n_b* = sqrt(s * w * o), and overhead
# 2 * sqrt(s * o / w). Few buckets: the last transfer is long; many: the calls add up. bench/ddp.py measures o and w.

def ddp_overhead_model(s_bytes, w_bytes_per_s, o_s, n_buckets):
    """Predicted seconds of DDP communication left after backward (see the derivation above)."""
    return n_buckets * o_s + s_bytes / (n_buckets * w_bytes_per_s)


def optimal_bucket_bytes(s_bytes, w_bytes_per_s, o_s):
    """The bucket size minimizing ddp_overhead_model: sqrt(s * w * o), at most the whole model."""
    return min(s_bytes, math.sqrt(s_bytes * w_bytes_per_s * o_s))


# -----------------------------------------------------------------------------
# 5) Sharded optimizer (ZeRO stage 1, Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054)
#
# AdamW keeps two fp32 tensors per parameter (exp_avg, exp_avg_sq): twice the model, on every rank with plain DDP.
# Here each parameter is owned by one rank (balanced by size), which alone keeps its state and updates it, then
# broadcasts it to the others. Gradients must already be averaged (any wrapper above); the update is elementwise, so
# the result is bit-for-bit what one process running AdamW on everything would get.

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
        # greedy balance, largest parameters first: each goes to the rank with the fewest bytes so far
        # (sorted() is stable and every rank sees the same parameters, so every rank computes the same owners)
        for p in sorted(group['params'], key=lambda p: -p.numel() * p.element_size()):
            owner = min(range(self.world_size), key=lambda r: self._rank_bytes[r])
            self._rank_bytes[owner] += p.numel() * p.element_size()
            self._owner[p] = owner
        local = [p for p in group['params'] if self._owner[p] == self.rank]  # in the original order
        inner = None
        if local:  # torch optimizers refuse an empty parameter list
            local_group = dict(group, params=local)
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


# -----------------------------------------------------------------------------
# The command: train a model.py model data-parallel with one of the wrappers above

def die(msg):
    """A user error: one line that names the key and the fix, exit code 2, no traceback (bugs keep theirs)."""
    print(f"ddp.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_config():
    """Refuse a bad config at startup, before a process group or a model exists."""
    for key in ('vocab_size', 'context_length', 'batch_size', 'grad_accum_steps', 'max_iters'):
        value = globals()[key]
        if not isinstance(value, int) or value < 1:
            die(f"--{key}={value!r}: must be a whole number >= 1")
    rules = [('impl', impl in ('naive', 'flat', 'individual', 'bucketed'), "use naive, flat, individual or bucketed"),
             ('bucket_size_mb', bucket_size_mb > 0, "must be > 0 (MiB per bucket)"),
             ('model_size', model_size in model_py.MODEL_SIZES, f"use one of {', '.join(model_py.MODEL_SIZES)}"),
             ('learning_rate', learning_rate > 0, "must be > 0"),
             ('backend', backend in ('auto', 'gloo', 'nccl'), "use auto, gloo or nccl")]
    for key, ok, fix in rules:  # in this order: the first broken rule is the one reported
        if not ok:
            die(f"--{key}={globals()[key]!r}: {fix}")
    if backend == 'nccl' and not torch.cuda.is_available():
        die("--backend=nccl needs CUDA GPUs, and none is visible: use --backend=gloo (or auto) on a CPU")


def main():
    """A few optimizer steps from the config globals; prints the loss per step, then checks the replicas agree."""
    check_config()
    rank, _, world, device = init_distributed(backend)
    torch.manual_seed(seed)
    raw_model = model_py.TransformerLM(vocab_size=vocab_size, context_length=context_length, device=device,
                                       **model_py.MODEL_SIZES[model_size])
    model = wrap(raw_model, impl, bucket_size_mb)  # broadcasts rank 0's weights: all replicas start equal
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = (ShardedOptimizer(params, torch.optim.AdamW, lr=learning_rate) if zero1
                 else torch.optim.AdamW(params, lr=learning_rate))
    # the data: windows of one repeating random pattern of 50 tokens (learnable, so the loss visibly falls); each
    # rank draws its own window offsets, so the ranks see different data, which is the point of data parallelism
    pattern = torch.randint(0, vocab_size, (50,), generator=torch.Generator().manual_seed(seed))
    stream = pattern.repeat(context_length // 50 + 2)
    gen = torch.Generator().manual_seed(seed + 1 + rank)
    tokens = world * batch_size * grad_accum_steps * context_length
    if rank == 0:
        print(f"{world} rank(s) on {device}, impl={impl}, zero1={zero1}: {tokens:,} tokens per optimizer step")
    for it in range(max_iters):
        t0 = time.perf_counter()
        for micro in range(grad_accum_steps):
            starts = torch.randint(0, 50, (batch_size,), generator=gen)
            xy = torch.stack([stream[s:s + context_length + 1] for s in starts.tolist()]).to(device)
            # every micro-step but the last only accumulates into .grad; the last one's backward synchronizes
            with model.no_sync() if micro < grad_accum_steps - 1 else contextlib.nullcontext():
                loss = model(xy[:, :-1], targets=xy[:, 1:]) / grad_accum_steps  # mean over the micro-steps
                loss.backward()
        model.finish_gradient_synchronization()  # wait for the all-reduces: every .grad is now the mean over ranks
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0:
            lossf = loss.item() * grad_accum_steps  # .item() is a CPU-GPU sync point: the step is done after it
            print(f"iter {it}: loss {lossf:.4f} (last micro-batch), time {1e3 * (time.perf_counter() - t0):.0f}ms")
    # the replicas must still be equal: compare every parameter with rank 0's copy
    drift = torch.zeros((), device=device)
    for p in params:
        p0 = p.detach().clone()
        dist.broadcast(p0, src=0)
        drift = torch.maximum(drift, (p.detach() - p0).abs().max())
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(f"replicas agree: max |w - w_rank0| over ranks = {drift.item():.3g}")
    cleanup_process_group()


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

"""
fsdp.py: Fully Sharded Data Parallel written from torch.distributed primitives, and the memory/communication
calculator of the course's accounting exercise.

DDP keeps everything on every GPU: fp32 weights (4 bytes/param), fp32 gradients (4), AdamW's two moments (8):
16 bytes per parameter, so a 7B model needs 112 GB before a single activation. FSDP (ZeRO stage 3, Rajbhandari et
al. 2020; Zhao et al. 2023, "PyTorch FSDP", https://arxiv.org/abs/2304.11277) shards all of it over N ranks:

  - the model is cut into units (each Transformer block, plus a root unit for embeddings, final norm and head);
    every parameter is replaced by its fp32 shard, 1/N of its rows (FSDP2's Shard(0)), which the optimizer updates;
  - before a unit's forward, its shards are cast to bf16 and all-gathered into full tensors the module computes
    with; after it, they are freed. Before the unit's backward they are gathered again (autograd saved views);
  - each bf16 gradient, divided by N first, is reduce-scattered: each rank receives the mean over ranks of its own
    rows and accumulates it in fp32 into its shard's .grad;
  - while unit i computes, unit i+1's all-gather is already in flight (prefetch, forward and backward).

Per rank: 16P/N bytes of states plus at most two gathered units in bf16 (plus activations), for three collectives
per parameter per step (all-gather twice, reduce-scatter; FSDP2 packs a unit's into one of each) instead of DDP's
one all-reduce (a reduce-scatter plus an all-gather: FSDP moves 1.5x DDP's bytes at equal precision).

Usage (train.py --fsdp=True does this):
    model = FSDP(TransformerLM(...).to(device))            # every rank; rank 0's weights win
    opt = torch.optim.AdamW(model.parameters(), lr=...)    # the local fp32 shards (so are the inner module's)
    loss = model(x, targets=y); loss.backward(); model.finish_gradient_synchronization(); opt.step()
    sd = model.full_state_dict()                           # full weights on rank 0 (a collective: all ranks call it)

Run (the course's accounting exercise: memory and communication of FSDP and tensor parallelism, worked example):
  python fsdp.py                                               # the XXL model on a TPU v5p mesh
  python fsdp.py --tokens_per_device=4096 --device_memory_gb=80  # with activations, on 80 GB devices
Training with FSDP: torchrun --nproc_per_node=8 train.py --fsdp=True. Step time and peak memory against the analytic
16P/N: bench/fsdp.py (results/fsdp_*.md).
"""
import contextlib
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

# -----------------------------------------------------------------------------
# calculator: the course's XXL model (two linears per block) on TPU v5p (figures from the TPU Scaling Book)
d_model = 16384  # model width D
d_ff = 53248  # feed-forward width F
num_blocks = 126  # number of (d_model -> d_ff -> d_model) blocks
device_memory_gb = 95.0  # memory of one device in GB (TPU v5p: 95; H100: 80)
tokens_per_device = 0  # tokens of activations per device for the memory figures (0 = weights/optimizer only)
ici_bandwidth = 2 * 9e10  # interconnect bandwidth per device and axis direction pair, bytes/s (v5p ICI, bidirectional)
device_flops = 4.6e14  # bf16 FLOP/s of one device (v5p)
mesh_x = 16  # FSDP (data) axis size of the mesh
mesh_y = 4  # tensor-parallel (model) axis size of the mesh
mesh_x_axes = 2  # axes the FSDP dimension spans (M_X; a 3D torus: 2 for X, 1 for Y, as in the exercise)
mesh_y_axes = 1  # axes the TP dimension spans (M_Y)
# -----------------------------------------------------------------------------

# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single; older torch has only the old names
_all_gather = getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, 'reduce_scatter_single', None) or dist.reduce_scatter_tensor


# -----------------------------------------------------------------------------
# One sharded parameter, and a unit of them
#
# FSDP2 (torch.distributed.fsdp.fully_shard) shards every parameter on dim 0, Shard(0): rank r keeps rows
# [r * rows, (r + 1) * rows), dim 0 zero-padded to a multiple of N. The shard replaces the parameter in its module,
# under its name, so an optimizer built from module.parameters() updates the fp32 master weights, and a rule like
# "weight decay on p.dim() >= 2" still holds (a shard keeps its number of dims). We do the same.

class ShardedParam:
    """One parameter of a unit, sharded on dim 0.
      shard   nn.Parameter (rows, *shape[1:]) fp32: this rank's rows, registered in the module at the parameter's name
      full    (N * rows, *shape[1:]) param_dtype leaf: every rank's rows, gathered; its storage is freed (size 0) when
              not in use. The module computes with the view full[:shape[0]] (the padding rows cut off)
      slots   (submodule, attribute) where the parameter is used (two for a tied weight), names its state-dict keys
    """

    def __init__(self, p, slots, names, param_dtype, rank, world_size):
        assert p.dim() >= 1, f"{names}: FSDP here shards on dim 0, so a parameter needs at least one dim"
        self.slots, self.names, self.shape = slots, names, p.shape
        self.rows = math.ceil(p.shape[0] / world_size)  # equal shards: all_gather needs equal sizes
        padded = (world_size * self.rows,) + tuple(p.shape[1:])
        with torch.no_grad():
            full = torch.zeros(padded, dtype=torch.float32, device=p.device)
            full[:p.shape[0]] = p.detach().float()
            dist.broadcast(full, src=0)  # rank 0's initialization wins, as with DDP
            self.shard = nn.Parameter(full[rank * self.rows:(rank + 1) * self.rows].clone())
        del full
        for sub, attr in slots:
            sub._parameters[attr] = self.shard  # the module's parameter is now its shard (FSDP2's sharded param)
        # A leaf that requires grad: the module computes with a view of it, so autograd sums the gradients of every
        # use into full.grad (one (N * rows, ...) tensor) and then calls our post-accumulate-grad hook.
        self.full = torch.empty(padded, dtype=param_dtype, device=p.device, requires_grad=True)
        self.full.untyped_storage().resize_(0)
        self.state = 'free'  # 'free' -> 'gathering' (all-gather in flight) -> 'ready'
        self.work = None  # the in-flight all-gather
        self.gather_src = None  # the param_dtype copy of the shard it reads from (kept alive until it finishes)


class Unit:
    """A module sharded as one piece (a block, or the root): its ShardedParams are gathered and freed together."""

    def __init__(self, module, params):
        self.module, self.params = module, params


class FSDP(nn.Module):
    """FSDP(module, unit_modules=None, param_dtype=torch.bfloat16, prefetch=True)
      unit_modules  the submodules to shard as units; default: the children of every nn.ModuleList (the blocks).
                    Everything else belongs to the root unit (gathered for the whole forward and backward).
      param_dtype   compute and communication dtype (bf16); master weights, gradients and optimizer stay fp32.
                    torch.float32 gives exact fp32 training (what the tests compare against one process).
      prefetch      start the next unit's all-gather before the current unit runs.
    After wrapping, module.named_parameters() (and this wrapper's, prefixed 'module.') are the fp32 shards.
    """

    def __init__(self, module, unit_modules=None, param_dtype=torch.bfloat16, prefetch=True):
        super().__init__()
        assert dist.is_initialized(), "call dist.init_process_group (or run under torchrun) before FSDP(model)"
        if hasattr(module, '_orig_mod'):  # torch.compile'd: our hooks and storage tricks need the eager module
            print('!' * 80 + '\nFSDP: the model was torch.compile\'d; sharding the uncompiled module instead '
                  '(compile after wrapping is not supported either)\n' + '!' * 80)
            module = module._orig_mod
        self.module = module
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.param_dtype, self.prefetch = param_dtype, prefetch
        if unit_modules is None:
            unit_modules = [m for ml in module.modules() if isinstance(ml, nn.ModuleList) for m in ml]
        in_unit = {id(m) for u in unit_modules for m in u.modules()}
        # every parameter's names in the original state dict (a tied parameter has two)
        names_of = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(p), []).append(name)
        self._sd_keys = list(module.state_dict().keys())
        param_keys = {n for names in names_of.values() for n in names}
        self._buffer_keys = [k for k in self._sd_keys if k not in param_keys]
        owner = {}  # id(param) -> unit index, to catch a parameter shared between two units
        self.units = []
        root_subs = [m for m in module.modules() if id(m) not in in_unit]
        members = [(module, root_subs)] + [(u, list(u.modules())) for u in unit_modules]
        for ui, (unit_module, subs) in enumerate(members):
            found = {}  # id(param) -> (param, its slots), in module order
            for sub in subs:
                for attr, p in list(sub._parameters.items()):
                    if p is None:
                        continue
                    assert p.requires_grad, f"FSDP here shards trainable parameters only; {names_of[id(p)]} is frozen"
                    assert owner.get(id(p), ui) == ui, \
                        f"{names_of[id(p)]} is shared between two FSDP units: tie only parameters of one unit"
                    owner[id(p)] = ui
                    found.setdefault(id(p), (p, []))[1].append((sub, attr))
            if found:
                params = [ShardedParam(p, slots, names_of[id(p)], param_dtype, self.rank, self.world_size)
                          for p, slots in found.values()]
                self.units.append(Unit(unit_module, params))
        self.params = [sp for u in self.units for sp in u.params]
        self._order = []  # units in forward execution order, recorded during the first forward (for prefetch)
        self._recording = True
        self._pending = []  # (sharded param, work, reduced shard gradient, full gradient kept alive) in flight
        self.max_gathered = 0  # most units gathered at once (statistic for tests and the bench)
        for u in self.units:
            u.module.register_forward_pre_hook(lambda m, args, u=u: self._pre_forward(u))
            u.module.register_forward_hook(lambda m, args, out, u=u: self._post_forward(u, out))
            for sp in u.params:
                sp.full.register_post_accumulate_grad_hook(lambda full, sp=sp: self._grad_ready(sp))

    # ---- gathering and freeing -------------------------------------------------
    def _gather_async(self, u):
        """Start the all-gathers of u's shards into the full tensors (param_dtype), one per parameter."""
        for sp in u.params:
            if sp.state != 'free':
                continue
            sp.full.untyped_storage().resize_(sp.full.numel() * sp.full.element_size())  # re-allocate the storage
            sp.gather_src = sp.shard.detach().to(self.param_dtype)  # cast before sending: half the bytes in bf16
            # Shard(0) gathered is a concatenation of the flat shards: (N * rows * ...,). NOTE: write through .data
            # (same storage, not the version counter), or autograd complains that the views of full it saved for
            # backward were modified in place: we refill them with the very same values, on purpose.
            # One call per parameter (FSDP2 packs a unit's into one buffer): more launches, shorter code (cf. ddp.py).
            sp.work = _all_gather(sp.full.data.view(-1), sp.gather_src.view(-1), async_op=True)
            sp.state = 'gathering'
        self.max_gathered = max(self.max_gathered,
                                sum(any(sp.state != 'free' for sp in v.params) for v in self.units))

    def _wait(self, u, set_views):
        self._gather_async(u)
        for sp in u.params:
            if sp.work is not None:
                sp.work.wait()
                sp.work, sp.gather_src = None, None
            sp.state = 'ready'
            if set_views:
                # the module computes with the gathered weight: an instance attribute shadows the registered
                # (sharded) parameter, because nn.Module looks in _parameters only when normal lookup fails
                view = sp.full[:sp.shape[0]]  # (shape[0], ...) the padding rows cut off
                for sub, attr in sp.slots:
                    sub.__dict__[attr] = view

    def _free(self, sp):
        if sp.work is not None:  # a prefetch nobody used: finish it before dropping its buffer
            sp.work.wait()
            sp.work, sp.gather_src = None, None
        sp.full.untyped_storage().resize_(0)  # the views (and what autograd saved) keep their shape, lose the memory
        for sub, attr in sp.slots:
            sub.__dict__.pop(attr, None)  # outside forward, module.<attr> is the shard again
        sp.state = 'free'

    def _prefetch(self, u, step):
        """Start the all-gather of the unit that runs after u: step +1 in forward, -1 in backward (reverse order)."""
        if not self.prefetch or self._recording or u not in self._order:
            return
        i = self._order.index(u) + step
        if 0 <= i < len(self._order):
            self._gather_async(self._order[i])  # overlaps the all-gather with u's compute

    # ---- hooks -------------------------------------------------------------------
    def _pre_forward(self, u):
        if self._recording:
            self._order.append(u)
        self._wait(u, set_views=True)
        self._prefetch(u, +1)

    def _post_forward(self, u, output):
        for sp in u.params:
            self._free(sp)
        if torch.is_grad_enabled():
            # "pre-backward hook": the gradient w.r.t. the unit's output arrives just before the unit's backward
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(lambda grad, u=u: self._pre_backward(u))

    def _pre_backward(self, u):
        self._wait(u, set_views=False)  # autograd already holds views of the full tensors: refill their storage
        self._prefetch(u, -1)

    def _grad_ready(self, sp):
        """All of sp's gradients have been summed into sp.full.grad: reduce-scatter it, free the gathered weight."""
        grad = sp.full.grad  # (N * rows, ...) in param_dtype, zeros in the padding rows
        sp.full.grad = None
        self._free(sp)  # every op that used this weight has finished its backward
        grad.div_(self.world_size)  # average (before the sum: no overflow risk in low precision)
        out = torch.empty(sp.shard.numel(), dtype=grad.dtype, device=grad.device)
        work = _reduce_scatter(out, grad.view(-1), async_op=True)  # out = sum over ranks of our rows of grad
        self._pending.append((sp, work, out, grad))

    # ---- the DDP-like interface train.py uses -------------------------------------
    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self._recording = False  # the first forward has shown the order in which the units run
        if self.param_dtype != torch.float32:  # logits / loss leave in fp32, whatever the compute dtype
            out = _map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)
        return out

    def finish_gradient_synchronization(self):
        """Wait for the reduce-scatters and accumulate the gradient shards into shard.grad in fp32."""
        for sp, work, out, _ in self._pending:
            work.wait()
            g = out.float().view_as(sp.shard)
            if sp.shard.grad is None:
                sp.shard.grad = g
            else:
                sp.shard.grad.add_(g)
        self._pending.clear()
        for sp in self.params:  # whatever is still gathered (a prefetch nobody used) is freed
            self._free(sp)

    @contextlib.contextmanager
    def no_sync(self):
        """Accepted for DDP compatibility, but FSDP still reduce-scatters on every micro-step: unsharded gradients
        until the last one would cost the full model's gradients in memory. The shards' fp32 .grad accumulate
        across micro-steps, so the result is the same."""
        yield

    # ---- checkpoints: full weights from the shards, and back --------------------------
    @torch.no_grad()
    def full_state_dict(self, rank0_only=True):
        """The unsharded model's state dict (original keys, fp32 master weights, tied weights shared), on CPU.
        A collective: every rank must call it. Returns {} on ranks other than 0 when rank0_only."""
        params = {}
        for sp in self.params:
            full = torch.empty(sp.full.shape, dtype=torch.float32, device=sp.shard.device)
            _all_gather(full.view(-1), sp.shard.detach().reshape(-1))  # fp32: the checkpoint keeps master weights
            t = full[:sp.shape[0]].cpu().clone()
            for name in sp.names:
                params[name] = t
        if rank0_only and self.rank != 0:
            return {}
        buffers = dict(self.module.named_buffers())
        return {k: params[k] if k in params else buffers[k].detach().cpu().clone() for k in self._sd_keys}

    @torch.no_grad()
    def load_full_state_dict(self, state_dict):
        """Load a full (unsharded) state dict: every rank passes it and keeps only its own rows."""
        missing = [k for k in self._sd_keys if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._sd_keys]
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                           " (a checkpoint of another model config?)")
        for sp in self.params:
            w = state_dict[sp.names[0]].float().to(sp.shard.device)
            rows = w[self.rank * sp.rows:(self.rank + 1) * sp.rows]  # fewer (or none) on the last ranks: padding
            sp.shard.zero_()
            sp.shard[:rows.shape[0]].copy_(rows)
        buffers = dict(self.module.named_buffers())
        for k in self._buffer_keys:
            buffers[k].copy_(state_dict[k])


def _tensors(obj):
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _map_tensors(obj, fn):
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


# -----------------------------------------------------------------------------
# The calculator: memory and communication of a model of num_blocks x (d_model -> d_ff -> d_model) linears
#
# The course's simplifications: only the FFN linears count (no attention, embeddings, head); activations and
# communicated gradients in bf16 (2 bytes); master weights, accumulated gradients and AdamW state in fp32.
#   P = 2 * D * F * n_blocks parameters
#   states: weights 4P + gradients 4P + AdamW moments 8P = 16P bytes
#   activations saved for backward, per token: each block keeps its two linears' inputs, D and F values in bf16:
#     A_token = 2 * (D + F) * n_blocks bytes
#   sharded over N (states fully, activations half: every second layer): 16P/N + A * (1/2 + 1/(2N))
# Compute-bound batch on an X (FSDP) x Y (TP) mesh, forward of one block, B tokens in total (Scaling Book, part 5):
#   T_math = 2 matmuls * 2BDF FLOPs / (N C) = 4BDF / (X Y C)
#   T_fsdp = all-gather of the block's bf16 weights, split Y ways: 2 * 2DF / Y bytes over M_X axes = 4DF / (Y W M_X)
#   T_tp   = all-gather + reduce-scatter of bf16 activations, B/X tokens of D: 4BD / (X W M_Y)
#   T_math >= T_fsdp  <=>  B/N >= C / (W M_X Y)           (a per-device batch threshold)
#   T_math >= T_tp    <=>  F >= Y C / (W M_Y)             (independent of the batch: holds or not)

def memory_and_comm_calculator(d_model, d_ff, num_blocks, device_memory_bytes=95e9, tokens=0, w_ici=1.8e11,
                               c_flops=4.6e14, x=16, y=4, m_x=2, m_y=1):
    D, F_, n = d_model, d_ff, num_blocks
    P = 2 * D * F_ * n
    states = 16 * P
    act_per_token = 2 * (D + F_) * n
    A = act_per_token * tokens
    # smallest N with 16P/N + A/2 + A/(2N) <= budget  <=>  N >= (16P + A/2) / (budget - A/2)
    n_needed = math.ceil((states + A / 2) / (device_memory_bytes - A / 2)) if device_memory_bytes > A / 2 else None
    per_device_batch = c_flops / (w_ici * m_x * y)
    return dict(
        params=P, states_bytes=states, weights_bytes=4 * P, grads_bytes=4 * P, adam_bytes=8 * P,
        act_bytes_per_token=act_per_token, act_bytes=A, h100_equivalents=(states + A) / 80e9,
        n_fsdp_needed=n_needed,
        per_device_bytes=lambda N: states / N + A / 2 + A / (2 * N),
        compute_bound_batch_per_device=per_device_batch,
        compute_bound_batch_total=per_device_batch * x * y,
        tp_comm_hidden=F_ >= y * c_flops / (w_ici * m_y), tp_threshold_dff=y * c_flops / (w_ici * m_y),
    )


def calculator_report(d_model, d_ff, num_blocks, device_memory_gb, tokens_per_device, W_ici, C_flops, X, Y, M_X, M_Y):
    """The worked exercise as text, (a) to (c), from memory_and_comm_calculator's numbers. Returns (numbers, text)."""
    r = memory_and_comm_calculator(d_model, d_ff, num_blocks, device_memory_gb * 1e9, tokens_per_device,
                                   W_ici, C_flops, X, Y, M_X, M_Y)
    P, GB = r['params'], 1e9
    lines = [
        f"# FSDP/TP accounting: {num_blocks} blocks of d_model {d_model} -> d_ff {d_ff} -> d_model", '',
        "Command: `python fsdp.py` (change any figure with --key=value, see --help).", '',
        f"(a) parameters P = 2 * d_model * d_ff * num_blocks = {P:,} ({P / 1e9:.1f}B)",
        f"    fp32 master weights 4P = {r['weights_bytes'] / GB:,.1f} GB, "
        f"gradients 4P = {r['grads_bytes'] / GB:,.1f} GB,"
        f" AdamW moments 8P = {r['adam_bytes'] / GB:,.1f} GB: total 16P = {r['states_bytes'] / GB:,.1f} GB"
        f" = {r['states_bytes'] / 80e9:.1f} H100s (80 GB) of memory",
        f"    activations saved for backward (bf16, both linears' inputs): 2 * (d_model + d_ff) * num_blocks = "
        f"{r['act_bytes_per_token'] / 1e6:.2f} MB per token"
        + (f"; {tokens_per_device:,} tokens: {r['act_bytes'] / GB:,.1f} GB" if tokens_per_device else ''),
        "(b) sharded over N (states fully, half of the activations): memory per device = 16P/N + A/2 + A/(2N)",
        f"    to fit {device_memory_gb:g} GB per device"
        + (f" with {tokens_per_device:,} tokens of activations" if tokens_per_device else ' (states only, A = 0)')
        + (f": N_FSDP >= {r['n_fsdp_needed']} ({r['per_device_bytes'](r['n_fsdp_needed']) / GB:.1f} GB per device)"
           if r['n_fsdp_needed'] else ': impossible, half the activations alone exceed the device'),
        f"(c) mesh X = {X} (FSDP, M_X = {M_X}) x Y = {Y} (TP, M_Y = {M_Y}), W_ici = {W_ici:.3g} B/s, "
        f"C = {C_flops:.3g} FLOP/s:",
        f"    T_math = 4BDF/(XYC) >= T_fsdp = 4DF/(Y W M_X)  <=>  B/N >= C/(W M_X Y) = "
        f"{r['compute_bound_batch_per_device']:.1f} tokens per device",
        f"    overall batch B >= {r['compute_bound_batch_total']:,.0f} tokens ({X * Y} devices)",
        f"    T_math >= T_tp = 4BD/(X W M_Y)  <=>  d_ff >= Y C/(W M_Y) = {r['tp_threshold_dff']:,.0f}: "
        + ('holds, TP communication hides behind compute at any batch' if r['tp_comm_hidden']
           else 'fails: TP communication dominates, use a smaller Y'),
    ]
    return r, '\n'.join(lines)


def die(msg):
    """A user error: one line that names the key and the fix, exit code 2, no traceback (bugs keep theirs)."""
    print(f"fsdp.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    """Print the calculator's worked example for the config globals (each checked first)."""
    for key in ('d_model', 'd_ff', 'num_blocks', 'mesh_x', 'mesh_y', 'mesh_x_axes', 'mesh_y_axes'):
        if not isinstance(globals()[key], int) or globals()[key] < 1:
            die(f"--{key}={globals()[key]!r}: must be a whole number >= 1")
    for key in ('device_memory_gb', 'ici_bandwidth', 'device_flops'):
        if not globals()[key] > 0:
            die(f"--{key}={globals()[key]!r}: must be > 0")
    if not isinstance(tokens_per_device, int) or tokens_per_device < 0:
        die(f"--tokens_per_device={tokens_per_device!r}: must be a whole number >= 0 (0 = no activations)")
    _, text = calculator_report(d_model, d_ff, num_blocks, device_memory_gb, tokens_per_device, ici_bandwidth,
                                device_flops, mesh_x, mesh_y, mesh_x_axes, mesh_y_axes)
    print(text)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

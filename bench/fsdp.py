"""
bench/fsdp.py: measurements and reports for fsdp.py. FSDP's step time and peak memory on a course model
(model.py's MODEL_SIZES), with and without prefetch, next to one unsharded replica and the analytic 16P/N bytes;
and the calculator's worked example written to results/fsdp_calculator.md.

Run:
  torchrun --nproc_per_node=8 bench/fsdp.py --mode=bench --model_size=xl   # step time, peak memory vs 16P/N
  python bench/fsdp.py --mode=bench --model_size=small                     # one GPU (world size 1) or CPU
  python bench/fsdp.py --mode=calc                                         # results/fsdp_calculator.md
"""
import contextlib
import gc
import os
import sys
import time

import torch
import torch.distributed as dist

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # the teaching scripts live in the repo root
import fsdp  # noqa: E402
import model as model_py  # noqa: E402
from ddp import cleanup_process_group, init_distributed  # noqa: E402

# -----------------------------------------------------------------------------
mode = 'bench'  # 'bench' (FSDP step time and memory on a model) | 'calc' (fsdp.py's worked example, as markdown)
out_dir = 'results'  # markdown tables go here
model_size = 'small'  # a course size: tiny | small | medium | large | xl | 2.7B
context_length = 128  # tokens per sequence
batch_size = 4  # sequences per rank per step
vocab_size = 10000  # the course's vocabulary size
bench_warmup = 3  # untimed steps
bench_steps = 10  # timed steps
backend = 'auto'  # 'gloo' | 'nccl' | 'auto' (nccl when CUDA is available)
# -----------------------------------------------------------------------------


def _atomic_write(path, text):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def largest_unit_bytes(m):
    """Bytes of the largest unit once gathered in the compute dtype (what one prefetch adds to the peak)."""
    return max(sum(sp.full.numel() for sp in u.params) for u in m.units) * torch.finfo(m.param_dtype).bits // 8


def run_bench(be):
    rank, _, world, device = init_distributed(be)
    cuda = device.type == 'cuda'
    MB = 2 ** 20
    args = dict(vocab_size=vocab_size, context_length=context_length, rope_theta=10000.0,
                **model_py.MODEL_SIZES[model_size])
    rows = []
    # 'replicated' = what every DDP rank holds: the whole fp32 model + AdamW, bf16 autocast, no communication
    for variant in ('replicated (no sharding)', 'FSDP, prefetch', 'FSDP, no prefetch'):
        torch.manual_seed(0)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        net = model_py.TransformerLM(**args, device=device)  # the full model, briefly, before sharding
        P = sum(p.numel() for p in net.parameters())
        sharded = variant.startswith('FSDP')
        m = fsdp.FSDP(net, prefetch=variant == 'FSDP, prefetch') if sharded else net
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        mem_after_wrap = torch.cuda.memory_allocated(device) / MB if cuda else float('nan')
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        autocast = contextlib.nullcontext() if sharded else torch.autocast(device.type, dtype=torch.bfloat16)
        torch.manual_seed(1 + rank)
        x = torch.randint(0, vocab_size, (batch_size, context_length + 1), device=device)
        times = []
        for it in range(bench_warmup + bench_steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast:
                loss = m(x[:, :-1], targets=x[:, 1:])
            loss.backward()
            if sharded:
                m.finish_gradient_synchronization()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if it >= bench_warmup:
                times.append(time.perf_counter() - t0)
        # median (robust to a stray slow step); the slowest rank sets the pace: max over ranks
        step = torch.tensor(sorted(times)[len(times) // 2], dtype=torch.float64, device=device)
        dist.all_reduce(step, op=dist.ReduceOp.MAX)
        param_bytes = sum(p.numel() for p in m.parameters()) * 4
        opt_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                        if torch.is_tensor(t) and t.dim() > 0)
        rows.append(dict(variant=variant, step_ms=1e3 * step.item(), P=P,
                         analytic_states_MB=16 * P / (world if sharded else 1) / MB, params_MB=param_bytes / MB,
                         opt_state_MB=opt_bytes / MB, gathered_max=m.max_gathered if sharded else '',
                         largest_unit_MB=largest_unit_bytes(m) / MB if sharded else 0.0, after_wrap_MB=mem_after_wrap,
                         peak_MB=torch.cuda.max_memory_allocated(device) / MB if cuda else float('nan')))
        if rank == 0:
            print(rows[-1], flush=True)
        del m, opt, net, loss
    if rank == 0:
        print(write_bench_report(rows, world, device))
    cleanup_process_group()
    return rows


def write_bench_report(rows, world, device):
    dev = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    r0 = rows[0]
    lines = [f"# FSDP (bf16 compute/communication, fp32 master weights, AdamW): model {model_size} "
             f"({r0['P'] / 1e6:.0f}M parameters), context {context_length}, batch {batch_size}/rank, "
             f"{world} x {dev}", '',
             f"Command: `{'torchrun --nproc_per_node=' + str(world) if world > 1 else 'python'} "
             f"{' '.join(sys.argv)}`. Per rank; median of {bench_steps} steps after {bench_warmup} warm-up "
             "steps (max over ranks). Analytic states = 16P/N bytes (fp32 weights + gradients + AdamW moments; "
             "N = 1 when replicated); the measured peak adds activations, the gathered bf16 units and the bf16 "
             "gradient being reduce-scattered. 'replicated' is one DDP rank's memory, without communication.", '',
             '| variant | step ms | analytic 16P/N MB | fp32 params (shards) MB | AdamW state MB | units gathered '
             'at once (max) | largest unit bf16 MB | allocated after wrap MB | peak MB |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | {r['analytic_states_MB']:.1f} | "
                     f"{r['params_MB']:.1f} | {r['opt_state_MB']:.1f} | {r['gathered_max']} | "
                     f"{r['largest_unit_MB']:.1f} | {r['after_wrap_MB']:.1f} | {r['peak_MB']:.1f} |")
    path = os.path.join(out_dir, f'fsdp_bench_{model_size}_{world}x{device.type}.md')
    _atomic_write(path, '\n'.join(lines) + '\n')
    return path


def write_calculator_report():
    """fsdp.py's worked example with its default figures, one paragraph per question, as results/fsdp_calculator.md."""
    _, text = fsdp.calculator_report(fsdp.d_model, fsdp.d_ff, fsdp.num_blocks, fsdp.device_memory_gb,
                                     fsdp.tokens_per_device, fsdp.ici_bandwidth, fsdp.device_flops, fsdp.mesh_x,
                                     fsdp.mesh_y, fsdp.mesh_x_axes, fsdp.mesh_y_axes)
    path = os.path.join(out_dir, 'fsdp_calculator.md')
    _atomic_write(path, text.replace('\n(', '\n\n(') + '\n')
    print(text)
    return path


def die(msg):
    """A user error: one line naming the key and the fix, exit code 2, no traceback, nothing written."""
    print(f"bench/fsdp.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    # check the whole config first: the first refusal ends the run before anything is written
    parent = os.path.abspath(out_dir)  # the folder, or the nearest of its parents that exists
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    whole = dict(context_length=1, batch_size=1, vocab_size=2, bench_steps=1, bench_warmup=0)  # key: minimum
    checks = [(mode in ('bench', 'calc'), f"--mode={mode!r}: use bench or calc"),
              (os.path.isdir(parent), f"--out_dir={out_dir!r}: {parent} is a file; name a folder for the tables"),
              (model_size in model_py.MODEL_SIZES, f"--model_size={model_size!r}: use one of "
                                                   f"{', '.join(model_py.MODEL_SIZES)}"),
              (backend in ('auto', 'gloo') or (backend == 'nccl' and torch.cuda.is_available()),
               f"--backend={backend!r}: use auto, gloo, or nccl (nccl needs CUDA GPUs)")]
    checks += [(isinstance(globals()[k], int) and globals()[k] >= low,
                f"--{k}={globals()[k]!r}: must be a whole number >= {low}") for k, low in whole.items()]
    for ok, msg in checks:
        if not ok:
            die(msg)
    if mode == 'calc':
        return write_calculator_report()
    return run_bench(backend if backend != 'auto' else ('nccl' if torch.cuda.is_available() else 'gloo'))


if __name__ == '__main__':
    exec(open(os.path.join(_ROOT, 'configurator.py')).read())
    main()

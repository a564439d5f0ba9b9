"""
Training throughput of train.py's model and step on synthetic tokens (no data loading at all): tokens/s and MFU
for each optimizer, optionally KV-cache generation speed and a profiler table of the kernels.

    python bench/train.py config/a1.py                                  # the A1 shape, one GPU
    python bench/train.py config/gpt2s.py --batch_size=64 --bench_generate=True
    python bench/train.py config/a1.py --attn_impl=flash --bench_optimizers=torch_adamw,muon
    python bench/train.py config/a1.py --compile_mode=reduce-overhead  # CUDA graphs (one micro-batch per step)

Every train.py config key works here too (config files set them); the benchmark's own keys are below. A step is
gradient_accumulation_steps micro-batches, as in train.py. Results go to out_dir/bench.json when out_dir is set.
"""
import json
import os
import sys
import time
from contextlib import nullcontext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train  # noqa: E402
from model import TransformerLM, count_parameters, estimate_mfu  # noqa: E402

# -----------------------------------------------------------------------------
# every train.py key with its default, then the benchmark's own
globals().update(train.config)
out_dir = ''  # write bench.json here ('' = print only)
bench_iters = 30  # timed steps after 5 warm-up steps
bench_optimizers = 'torch_adamw,adamw'  # which optimizers to time, comma-separated (train.OPTIMIZERS)
bench_generate = False  # also time KV-cache generation (batch 64 and 1, 128-token prompts, 256 new tokens, bf16)
bench_profile = False  # print torch.profiler's table of the kernels of a few training steps
compile_tuning = False  # inductor's coordinate-descent tuning of its kernels: slower compile, often faster steps
# torch.compile mode: 'default' | 'reduce-overhead' (CUDA graphs; H100: +0.5-0.7%, one micro-batch per step only) |
# 'max-autotune-no-cudagraphs' (GPT-2 small: cuBLAS beat every Triton matmul template, no gain, 280 s to compile)
compile_mode = 'default'
# -----------------------------------------------------------------------------
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune')


def compile_model(model, cfg):
    """torch.compile with cfg's mode; CUDA-graph modes cannot accumulate gradients over micro-batches (a graph writes
    its outputs into the same memory at every replay, so one micro-batch's gradients overwrite the previous one's)."""
    if not cfg['compile']:
        return model
    if cfg['compile_mode'] not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {cfg['compile_mode']!r}")
    if cfg['compile_mode'] in ('reduce-overhead', 'max-autotune') and cfg['gradient_accumulation_steps'] > 1:
        raise ValueError(f"compile_mode={cfg['compile_mode']!r} uses CUDA graphs, which cannot accumulate gradients "
                         f"over micro-batches: use gradient_accumulation_steps=1 (a larger batch_size) or 'default'")
    if cfg['compile_tuning']:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
    return torch.compile(model, mode=cfg['compile_mode'])


def bench(cfg):
    """Time cfg's training step for each optimizer in bench_optimizers; cfg holds train.py's keys and the ones above.
    Returns a dict of results (tokens/s, MFU, warm-up time; generation speed and profile if asked)."""
    dev = cfg['device'] if cfg['device'] != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    device_type = 'cuda' if 'cuda' in dev else 'cpu'
    torch.manual_seed(cfg['seed'])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    vocab = cfg['vocab_size'] if cfg['vocab_size'] > 0 else 10000
    raw_model, model_args = train.build_model(cfg, vocab, dev)
    model = compile_model(raw_model, cfg)
    B, T, gas = cfg['batch_size'], cfg['context_length'], cfg['gradient_accumulation_steps']
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if cfg['dtype'] == 'bfloat16' else nullcontext()
    data = torch.randint(0, vocab, (8, B, T + 1), device=dev)
    opt_names = [o.strip() for o in cfg['bench_optimizers'].split(',') if o.strip()]
    if not opt_names or any(o not in train.OPTIMIZERS for o in opt_names):
        raise ValueError(f"bench_optimizers: a comma-separated list of {train.OPTIMIZERS}, got "
                         f"{cfg['bench_optimizers']!r}")

    def sync():
        if device_type == 'cuda':
            torch.cuda.synchronize()

    results = {'model_args': model_args, 'device': torch.cuda.get_device_name() if device_type == 'cuda' else 'cpu'}
    print(f"bench: {count_parameters(raw_model) / 1e6:.2f}M parameters, batch {B} x {T}"
          f"{f' x {gas} micro-batches' if gas > 1 else ''}, {cfg['dtype']}, compile={cfg['compile']}"
          f"{'' if cfg['compile_mode'] == 'default' else ' ' + cfg['compile_mode']} on {results['device']}")
    for opt_name in opt_names:
        optimizer = train.configure_optimizer(raw_model, device_type, opt_name)

        def step(i):
            for micro in range(gas):  # what train.py does on one process: gradients add up over the micro-batches
                j = (i * gas + micro) % 8
                with autocast:
                    loss = model(data[j, :, :-1], targets=data[j, :, 1:]) / gas
                loss.backward()
            if cfg['grad_clip'] > 0:
                train.gradient_clipping(raw_model.parameters(), cfg['grad_clip'])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t = time.time()
        for i in range(5):  # warm-up: compilation, allocator, kernel selection
            step(i)
        sync()
        warm, t = time.time() - t, time.time()
        for i in range(cfg['bench_iters']):
            step(i)
        sync()
        dt = (time.time() - t) / cfg['bench_iters']
        tok_s = B * T * gas / dt
        mfu = estimate_mfu(raw_model, tok_s, cfg['peak_flops'])
        results[f'train_{opt_name}'] = dict(ms_per_iter=dt * 1000, tokens_per_s=tok_s, mfu=mfu, warmup_s=warm)
        print(f"train step ({opt_name}): {dt * 1000:.2f} ms/iter, {tok_s / 1e6:.3f}M tokens/s, "
              f"MFU {mfu * 100:.1f}% (warm-up incl. compile {warm:.1f}s)")
        del optimizer
    if cfg['bench_profile']:
        from torch.profiler import profile, ProfilerActivity
        optimizer = train.configure_optimizer(raw_model, device_type, 'torch_adamw')
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == 'cuda' else [])
        for i in range(3):
            step(i)
        with profile(activities=acts) as prof:
            for i in range(5):
                step(i)
            sync()
        sort = 'cuda_time_total' if device_type == 'cuda' else 'cpu_time_total'
        results['profile'] = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
        print(results['profile'])
    if device_type == 'cuda':
        results['peak_memory_gb'] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak memory: {results['peak_memory_gb']:.1f} GiB")
    if cfg['bench_generate']:
        results.update(time_generation(model_args, vocab, dev, device_type, sync))
    return results


def time_generation(model_args, vocab, dev, device_type, sync):
    """KV-cache generation in bf16 (the ANCHORS.md setup: 128-token prompts, 256 new tokens, greedy, batch 64 and 1),
    eager, with a CUDA graph of the decode step, and compiled + CUDA graph; each checked against eager's tokens."""
    results = {}
    gen_model = TransformerLM(**{**model_args, 'context_length': max(model_args['context_length'], 384)})
    gen_model = gen_model.to(dev, dtype=torch.bfloat16 if device_type == 'cuda' else torch.float32).eval()
    for gb in (64, 1):
        prompts = torch.randint(0, vocab, (gb, 128)).tolist()
        ref = None
        for name, kw in (('eager', dict(cuda_graph=False)), ('cuda_graph', dict()),
                         ('compile+cuda_graph', dict(compile=True))):
            if name != 'eager':  # warm-up: allocates the cache, compiles, captures the graph
                gen_model.generate(prompts, 256, temperature=0, **kw)
            sync()
            t = time.time()
            out = gen_model.generate(prompts, 256, temperature=0, **kw)
            sync()
            dt = time.time() - t
            n_new = sum(len(o) for o in out)
            if ref is None:
                ref, check = out, 'the reference for the rows below'
            else:
                # greedy rows of a random bf16 model: nearly tied logits flip under a different kernel's rounding,
                # so rows may diverge; a late divergence is rounding, an immediate one would be a bug
                same = sum(a == b for a, b in zip(out, ref))
                prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                          for a, b in zip(out, ref) if a != b]  # of the rows that differ
                check = (f"all {same} rows equal to eager's" if same == len(out) else
                         f"{same}/{len(out)} rows equal to eager's, the others part after "
                         f"{sum(prefix) / len(prefix):.0f} tokens on average")
            results[f'generate_batch{gb}_{name}'] = dict(new_tokens_per_s=n_new / dt, seconds=dt, check=check)
            print(f"generate ({name}): batch {gb}, 128-token prompts, 256 new tokens: "
                  f"{n_new / dt:,.0f} new tokens/s ({dt:.3f} s); {check}")
    return results


def main():
    cfg = {k: v for k, v in globals().items() if k.islower() and isinstance(v, (bool, int, float, str))}
    res = bench(cfg)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, 'bench.json'), 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    main()

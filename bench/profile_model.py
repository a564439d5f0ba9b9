"""
bench/profile_model.py: where do the time and the memory of a Transformer go? Benchmark and profile model.py like a
systems engineer (CS336 assignment 2, part 1): timing with proper warm-up and synchronisation, mixed precision, NVTX
and torch.profiler traces, memory snapshots with an analytic memory model next to the measured peak, an attention
sweep (naive vs compiled vs SDPA vs our Triton kernel), and eager vs torch.compile.

Every mode writes a markdown table (and a PNG where a picture helps) into out_dir (results/bench):

    python bench/profile_model.py --mode=timing     # the course sizes small..2.7B, contexts 128..1024
    python bench/profile_model.py --mode=precision  # fp32 vs bf16 autocast; accumulation error; dtypes table
    python bench/profile_model.py --mode=profile    # torch.profiler top kernels (+ NVTX ranges, see below)
    nsys profile -o trace python bench/profile_model.py --mode=profile --sizes=small   # a timeline in Nsight Systems
    python bench/profile_model.py --mode=memory     # snapshots for pytorch.org/memory_viz + analytic model
    python bench/profile_model.py --mode=attention  # attention implementations, OOM points marked
    python bench/profile_model.py --mode=compile    # eager vs torch.compile
    python bench/profile_model.py --mode=all

On a CPU everything runs with a tiny model (`--sizes=tiny`), skipping what only CUDA can measure (peak memory,
snapshots, NVTX) with a message saying so. Sizes: the course's table (vocab 10,000, batch 4):

    size    d_model  d_ff   layers  heads
    small   768      3072   12      12
    medium  1024     4096   24      16
    large   1280     5120   36      20
    xl      1600     6400   48      25
    2.7B    2560     10240  32      32

Notes on measuring (why the code looks the way it does):
- CUDA kernels are launched asynchronously: a Python timer around `model(x)` measures the launch, not the work.
  We call torch.cuda.synchronize() after every step, before reading the clock.
- The first steps are slow (CUDA context, cuBLAS heuristics, allocator growth, autotuning): we run `warmup` steps
  untimed; the timing mode also shows what happens with 0, 1, 2 and 5 warm-up steps.
- Memory: torch.cuda.max_memory_allocated() is the peak of live tensors (not the allocator's reserved pool).
"""
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # the teaching scripts live in the repo root
import model as model_lib  # noqa: E402
from model import TransformerLM  # noqa: E402

# -----------------------------------------------------------------------------
# config
mode = 'timing'  # timing | precision | profile | memory | attention | compile | all
sizes = 'small,medium,large,xl,2.7B'  # comma-separated names from model.py's MODEL_SIZES (tiny is for CPUs and tests)
contexts = '128,256,512,1024'  # comma-separated context lengths
batch_size = 4  # sequences per step
vocab_size = 10000  # the course's vocabulary
warmup = 5  # untimed steps before timing
steps = 10  # timed steps
passes = 'forward,forward_backward,train_step'  # what the timing mode measures
mixed_precision = False  # bf16 autocast in the timing mode (the precision mode compares both)
attn_impl = 'sdpa'  # model attention for timing/compile modes: reference | sdpa | flash
memory_size = '2.7B'  # the model of the memory mode
memory_contexts = '128,256,512'  # contexts of the memory mode
snapshot = True  # memory mode: write memory-history pickles (view them at https://pytorch.org/memory_viz)
attn_dims = '16,32,64,128'  # attention sweep head dims
attn_seqs = '256,1024,4096,8192,16384'  # attention sweep sequence lengths
attn_batch = 8  # attention sweep batch (one head)
attn_impls = 'naive,naive_compiled,sdpa,flash'  # attention sweep implementations
device = 'cuda' if torch.cuda.is_available() else 'cpu'
tf32 = False  # allow TF32 tensor cores for fp32 matmuls (faster, ~10-bit mantissa); off = true fp32 numbers
out_dir = 'results/bench'  # tables, plots and snapshots go here
tag = 'auto'  # appended to every file name (e.g. '_fp32_large'), so runs never overwrite each other; auto: '' on
#              CUDA, '_cpu' on a CPU (a CPU run must not replace the GPU's tables)
seed = 1337  # of the random token batches
# -----------------------------------------------------------------------------



def csv(s, cast=str):
    return [cast(x) for x in str(s).split(',') if x.strip()]


def build_model(size, context_length, attn='sdpa', dev='cpu', vocab=10000):
    if size not in model_lib.MODEL_SIZES:
        raise ValueError(f"unknown size '{size}': choose from {', '.join(model_lib.MODEL_SIZES)}")
    # built directly on the device: initialising billions of parameters on the CPU first takes minutes
    return TransformerLM(vocab_size=vocab, context_length=context_length, attn_impl=attn, device=dev,
                         **model_lib.MODEL_SIZES[size])


def sync(dev):
    if str(dev).startswith('cuda'):
        torch.cuda.synchronize()


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or 'out of memory' in str(e).lower()


def free_memory():
    """Between measurements: drop the last model's tensors and the allocator's cached blocks, and restart the peak
    counter, so that one configuration's memory never shows up in the next one's numbers."""
    import gc
    gc.collect()  # the previous model may sit in a reference cycle (modules <-> hooks) until collected
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast_ctx(dev, enabled):
    """bf16 autocast when enabled; a nullcontext (no-op) when not, so the calling code has one path."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type='cuda' if str(dev).startswith('cuda') else 'cpu', dtype=torch.bfloat16)


def make_step(m, x, y, kind, amp, dev, optimizer=None):
    """A closure running one step of `kind`: forward | forward_backward | train_step."""
    def step():
        with autocast_ctx(dev, amp):
            if kind == 'forward':
                with torch.no_grad():  # inference: no autograd graph, so no activations are kept
                    return m(x)
            loss = m(x, targets=y)  # model.py computes the loss inside forward (logits never upcast in memory)
        loss.backward()  # the backward runs outside autocast, as in training: it follows the forward's dtypes
        if kind == 'train_step':
            optimizer.step()
        m.zero_grad(set_to_none=True)  # free the gradients: the next forward starts from the same memory state
    return step


def time_step(step, n_warmup, n_steps, dev):
    """Run n_warmup untimed steps, then n_steps timed ones (synchronising after each): list of seconds."""
    for _ in range(n_warmup):
        step()
    sync(dev)
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        step()
        sync(dev)  # NOTE: without this we would time kernel launches, not kernels
        times.append(time.perf_counter() - t0)
    return times


def fmt_ms(times):
    if not times:
        return 'OOM'
    mean = statistics.mean(times) * 1e3
    std = statistics.stdev(times) * 1e3 if len(times) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def random_batch(B, T, V, dev):
    g = torch.Generator(device='cpu').manual_seed(seed)
    x = torch.randint(0, V, (B, T + 1), generator=g).to(dev)
    return x[:, :-1], x[:, 1:]


def file_tag():
    """What every output file name ends with (before its extension): --tag, or by device."""
    return ('' if str(device).startswith('cuda') else '_cpu') if tag == 'auto' else tag


def write_table(name, title, header, rows, notes=''):
    """Write a markdown table to out_dir/name.md and print it."""
    os.makedirs(out_dir, exist_ok=True)
    lines = [f"## {title}", '', f"device: {device_name()}, torch {torch.__version__}", '']
    if notes:
        lines += [notes, '']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    text = '\n'.join(lines) + '\n'
    path = os.path.join(out_dir, f"{name}{file_tag()}.md")
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)
    print(text)
    return path


def device_name():
    return torch.cuda.get_device_name() if str(device).startswith('cuda') else 'CPU'


def save_plot(fig, name):
    path = os.path.join(out_dir, f"{name}{file_tag()}.png")
    fig.savefig(path + '.tmp.png', dpi=110, bbox_inches='tight')
    os.replace(path + '.tmp.png', path)
    print(f"wrote {path}")


# -----------------------------------------------------------------------------
# 1) Timing: forward, forward+backward, full training step, for every size and context


def run_timing(amp=None):
    amp = mixed_precision if amp is None else amp
    rows, plot = [], {}
    for size in csv(sizes):
        for T in csv(contexts, int):
            row = [size, T]
            for kind in csv(passes):
                free_memory()
                try:  # an out-of-memory size becomes an 'OOM' cell instead of ending the sweep
                    m = build_model(size, T, attn_impl, device, vocab_size)
                    x, y = random_batch(batch_size, T, vocab_size, device)
                    opt = torch.optim.AdamW(m.parameters(), lr=1e-4) if kind == 'train_step' else None
                    times = time_step(make_step(m, x, y, kind, amp, device, opt), warmup, steps, device)
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    times = []
                finally:
                    m = opt = None
                row.append(fmt_ms(times))
                if times and kind == 'forward_backward':
                    plot.setdefault(T, []).append((size, statistics.mean(times) * 1e3))
            rows.append(row)
    prec = 'bf16 autocast' if amp else 'fp32'
    path = write_table('timing' + ('_bf16' if amp else ''), f"Step time in ms (mean ± std of {steps} steps, "
                       f"{warmup} warm-up), batch {batch_size}, {prec}, attention {attn_impl}",
                       ['size', 'context'] + [f"{k} (ms)" for k in csv(passes)], rows)
    if plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for T, pts in sorted(plot.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=f"context {T}")
        ax.set_yscale('log'), ax.set_ylabel('forward+backward (ms)'), ax.set_title(f"{device_name()}, {prec}")
        ax.legend()
        save_plot(fig, 'timing' + ('_bf16' if amp else ''))
    if amp is False or not mixed_precision:
        warmup_effect()
    return path


def warmup_effect():
    """The same measurement after 0, 1, 2 and 5 warm-up steps: the first steps pay one-off costs."""
    size, T = csv(sizes)[0], csv(contexts, int)[0]
    rows = []
    for w in (0, 1, 2, 5):
        free_memory()
        m = build_model(size, T, attn_impl, device, vocab_size)  # a fresh model: the warm-up starts from cold
        x, y = random_batch(batch_size, T, vocab_size, device)
        times = time_step(make_step(m, x, y, 'forward_backward', False, device), w, steps, device)
        rows.append([w, fmt_ms(times), f"{max(times) * 1e3:.2f}"])
    write_table('warmup', f"Warm-up effect: forward+backward of '{size}' at context {T} after w warm-up steps",
                ['warm-up steps', 'mean ± std (ms)', 'slowest step (ms)'], rows,
                notes='Without warm-up the first timed steps include CUDA context creation, cuBLAS heuristics and '
                      'allocator growth, so the mean is high and the standard deviation large.')


# -----------------------------------------------------------------------------
# 2) Mixed precision


def accumulation_demo():
    """Adding 0.01 a thousand times (the exact answer is 10): the course's demonstration of why accumulators stay
    in float32. fp16 has a 10-bit mantissa: once the sum is near 10, 0.01 is below half its spacing (2^-7)."""
    cases = []
    s = torch.tensor(0, dtype=torch.float32)
    for _ in range(1000):
        s += torch.tensor(0.01, dtype=torch.float32)
    cases.append(('fp32 sum += fp32 0.01', s.item()))
    s = torch.tensor(0, dtype=torch.float16)
    for _ in range(1000):
        s += torch.tensor(0.01, dtype=torch.float16)
    cases.append(('fp16 sum += fp16 0.01', s.item()))
    s = torch.tensor(0, dtype=torch.float32)
    for _ in range(1000):
        s += torch.tensor(0.01, dtype=torch.float16)  # promoted to fp32 by the add, but 0.01 was rounded in fp16
    cases.append(('fp32 sum += fp16 0.01', s.item()))
    s = torch.tensor(0, dtype=torch.float32)
    for _ in range(1000):
        s += torch.tensor(0.01, dtype=torch.float16).type(torch.float32)
    cases.append(('fp32 sum += fp16 0.01 cast to fp32', s.item()))
    s = torch.tensor(0, dtype=torch.bfloat16)
    for _ in range(1000):
        s += torch.tensor(0.01, dtype=torch.bfloat16)
    cases.append(('bf16 sum += bf16 0.01', s.item()))
    return cases


def autocast_dtypes(dev=None):
    """Which tensors come out in which dtype under bf16 autocast: hooks on a tiny model record them."""
    dev = dev or device
    m = build_model('tiny', 16, 'reference', dev, 128)
    seen = {}

    def record(name):
        def hook(module, inputs, output):  # a forward hook must return None (anything else replaces the output)
            seen.setdefault(name, output.dtype)
        return hook

    m.layers[0].attn.output_proj.register_forward_hook(record('linear output (output_proj)'))
    m.layers[0].ln1.register_forward_hook(record('RMSNorm output (ln1)'))
    m.layers[0].ffn.register_forward_hook(record('FFN output'))
    x, y = random_batch(2, 16, 128, dev)
    with autocast_ctx(dev, True):
        logits = m(x)
        loss = model_lib.cross_entropy(logits, y)
    loss.backward()
    rows = [('parameters', m.lm_head.weight.dtype)] + list(seen.items())
    rows += [('logits', logits.dtype), ('loss', loss.dtype), ('gradients', m.lm_head.weight.grad.dtype)]
    return [(k, str(v).replace('torch.', '')) for k, v in rows]


def run_precision():
    write_table('accumulation', 'Accumulating 0.01 one thousand times (exact: 10)', ['case', 'result'],
                [(k, f"{v:.6f}") for k, v in accumulation_demo()])
    write_table('autocast_dtypes', 'dtypes under torch.autocast(bfloat16)', ['tensor', 'dtype'], autocast_dtypes(),
                notes='Matmuls run in bf16; RMSNorm computes in fp32 and casts back to its input dtype (model.py); '
                      'cross_entropy upcasts to fp32; parameters and their gradients stay fp32 (master weights).')
    run_timing(amp=False)
    run_timing(amp=True)


# -----------------------------------------------------------------------------
# 3) Profiling: NVTX ranges for Nsight Systems, and torch.profiler without it


def nvtx(name):
    """An NVTX range on CUDA (shows as a labelled bar in nsys), a torch.profiler label anywhere."""
    if str(device).startswith('cuda'):
        return torch.cuda.nvtx.range(name)
    return torch.profiler.record_function(name)


def annotated_scaled_dot_product_attention(Q, K, V, mask=None):
    """model.scaled_dot_product_attention with a range around each part, to see softmax vs matmul time."""
    with nvtx('attention: scores QK^T'):
        scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float('-inf'))
    with nvtx('attention: softmax'):
        p = model_lib.softmax(scores, dim=-1)
    with nvtx('attention: PV'):
        return p @ V


def run_profile():
    size, T = csv(sizes)[0], csv(contexts, int)[0]
    plain_sdpa = model_lib.scaled_dot_product_attention
    model_lib.scaled_dot_product_attention = annotated_scaled_dot_product_attention  # patch the reference path
    try:
        return _profile(size, T)
    finally:
        model_lib.scaled_dot_product_attention = plain_sdpa  # leave model.py as we found it


def _profile(size, T):
    m = build_model(size, T, 'reference', device, vocab_size)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, y = random_batch(batch_size, T, vocab_size, device)

    def step():
        with nvtx('forward'):
            loss = m(x, targets=y)
        with nvtx('backward'):
            loss.backward()
        with nvtx('optimizer step'):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if str(device).startswith('cuda'):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
        for _ in range(3):
            step()
        sync(device)
    key = 'cuda_time_total' if str(device).startswith('cuda') else 'cpu_time_total'
    table = prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f'profile{file_tag()}.md')
    with open(path + '.tmp', 'w') as f:
        f.write(f"## torch.profiler: 3 training steps of '{size}' at context {T}, reference attention, "
                f"sorted by {key}\n\ndevice: {device_name()}\n\n```\n{table}\n```\n")
    os.replace(path + '.tmp', path)
    print(table)
    if not str(device).startswith('cuda'):
        print("(no CUDA: NVTX ranges were recorded as torch.profiler labels; run under nsys on a GPU for a timeline)")
    return path


# -----------------------------------------------------------------------------
# 4) Memory: measured peak, snapshots, and an analytic model next to it


def analytic_memory(d_model, d_ff, num_layers, num_heads, B, T, V, optimizer=True):
    """Bytes of a float32 training step of model.py's TransformerLM with the *reference* attention path, counted
    tensor by tensor from what autograd saves for backward (compare with `measure_saved_tensors`).

    Per layer (x = the layer's input, saved by the previous layer's count; elements, times 4 bytes):
        ln1: x*rms, output                     2 BTd
        q, k^T, v as the batched matmuls keep them  3 BTd   (RoPE-rotated q, k; contiguous copies of k^T, v;
                                                       RoPE itself saves only cos/sin: they need no gradient)
        scores after mask, exp, softmax        3 B h T^2   (amax saves its input, exp and div save exp's output)
        heads re-joined (reshape copy)         1 BTd
        residual x + attn                      1 BTd
        ln2: x*rms, output                     2 BTd
        SwiGLU: w1x and w3x 2BTf, sigmoid, silu, product   5 BTf
        residual                               1 BTd
    Outside the layers: embedding output BTd, ln_final 2 BTd, logits and exp(logits - max) 2 BTV, token ids.
    Static: parameters 4P, AdamW state 8P (m and v); gradients 4P exist only from backward to the step.
    Peak = max(end of forward: static + activations + backward's first working buffers (2 BTV),
               optimizer step: params + grads + state (16 P) + the per-parameter temporaries of AdamW)."""
    d, f, L, H = d_model, d_ff, num_layers, num_heads
    P = L * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * V * d
    per_layer = 10 * B * T * d + 5 * B * T * f + 3 * B * H * T * T
    act = 4 * (L * per_layer + 3 * B * T * d + 2 * B * T * V) + 8 * B * T + L * T * T  # + ids, causal masks
    static = 4 * P + (8 * P if optimizer else 0)
    largest = max(V * d, d * f)
    peak_forward = static + act + 4 * 2 * B * T * V
    peak_step = 16 * P + 4 * 3 * largest if optimizer else 0
    return dict(params=4 * P, grads=4 * P, optimizer_state=8 * P if optimizer else 0, activations=act,
                peak_forward=peak_forward, peak_step=peak_step, peak=max(peak_forward, peak_step),
                residual_stream=4 * B * T * d, n_params=P)


def measure_saved_tensors(m, x, y):
    """Bytes that autograd saves for backward (unique storages, parameters excluded), on any device:
    saved_tensors_hooks see every tensor the graph keeps."""
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m(x, targets=y)
    total = sum(seen.values())
    loss.backward()
    m.zero_grad(set_to_none=True)
    return total


def run_memory():
    size = memory_size
    d_model, d_ff, L, H = (model_lib.MODEL_SIZES[size][k] for k in ('d_model', 'd_ff', 'num_layers', 'num_heads'))
    on_cuda = str(device).startswith('cuda')
    rows = []
    for T in csv(memory_contexts, int):
        est = analytic_memory(d_model, d_ff, L, H, batch_size, T, vocab_size)
        row = [size, T, f"{est['residual_stream'] / 2**20:.1f}", f"{est['activations'] / 2**30:.2f}"]
        if not on_cuda:
            m = build_model(size, T, 'reference', device, vocab_size)
            x, y = random_batch(batch_size, T, vocab_size, device)
            saved = measure_saved_tensors(m, x, y)
            rows.append(row + [f"{saved / 2**30:.2f}", f"{saved / (est['activations']):.3f}", '-', '-', '-', '-'])
            continue
        peaks = {}
        for amp in (False, True):
            for kind in ('forward', 'train_step'):
                free_memory()
                try:
                    m = build_model(size, T, 'reference', device, vocab_size)
                    x, y = random_batch(batch_size, T, vocab_size, device)
                    # foreach=False: the multi-tensor AdamW allocates temporaries as large as all parameters at
                    # once, which would make the step's peak depend on an implementation detail
                    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=False)
                    step = make_step(m, x, y, kind, amp, device, opt)
                    step()  # creates the optimizer state, so that the measured step is a steady-state one
                    sync(device)
                    torch.cuda.reset_peak_memory_stats()
                    record = snapshot and amp is False and T == csv(memory_contexts, int)[0]
                    if record:
                        torch.cuda.memory._record_memory_history(max_entries=200_000)
                    step()
                    sync(device)
                    peaks[(amp, kind)] = torch.cuda.max_memory_allocated()
                    if record:
                        os.makedirs(out_dir, exist_ok=True)
                        p = os.path.join(out_dir, f"memory_{size}_{kind}_ctx{T}{file_tag()}.pickle")
                        torch.cuda.memory._dump_snapshot(p)
                        torch.cuda.memory._record_memory_history(enabled=None)
                        print(f"wrote {p} (drag it onto https://pytorch.org/memory_viz)")
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    peaks[(amp, kind)] = None
                finally:
                    m = opt = step = None
        gib = lambda v: 'OOM' if v is None else f"{v / 2**30:.2f}"
        ratio = '-' if peaks[(False, 'train_step')] is None else f"{peaks[(False, 'train_step')] / est['peak']:.3f}"
        rows.append(row + ['-', '-', gib(peaks[(False, 'forward')]), gib(peaks[(True, 'forward')]),
                           gib(peaks[(False, 'train_step')]), gib(peaks[(True, 'train_step')])]
                    + [f"{est['peak'] / 2**30:.2f}", ratio])
    header = ['size', 'context', 'residual stream (MiB)', 'analytic activations (GiB)', 'saved tensors (GiB)',
              'saved / analytic', 'fwd peak fp32', 'fwd peak bf16', 'step peak fp32', 'step peak bf16']
    if on_cuda:
        header += ['analytic step peak fp32', 'measured / analytic']
    est = analytic_memory(d_model, d_ff, L, H, batch_size, csv(memory_contexts, int)[0], vocab_size)
    notes = (f"batch {batch_size}, vocab {vocab_size}, reference attention, AdamW (per-parameter). Static memory: "
             f"{est['n_params'] / 1e9:.2f}B parameters = {est['params'] / 2**30:.1f} GiB of fp32 weights, the same "
             f"again for gradients and twice that for AdamW's m and v. Peaks in GiB (torch.cuda.max_memory_allocated)."
             " The analytic model is the docstring of bench/profile_model.py's analytic_memory.")
    return write_table('memory', f"Memory of '{size}'", header, rows, notes=notes)


# -----------------------------------------------------------------------------
# 5) Attention implementations


def naive_attention(q, k, v):
    T = q.shape[-2]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return model_lib.scaled_dot_product_attention(q, k, v, mask)


def attention_impls():
    impls = {}
    for name in csv(attn_impls):
        if name == 'naive':
            impls[name] = naive_attention
        elif name == 'naive_compiled':
            impls[name] = torch.compile(naive_attention)
        elif name == 'sdpa':
            impls[name] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif name == 'flash':
            if not str(device).startswith('cuda') and os.environ.get('TRITON_INTERPRET') != '1':
                print("skipping 'flash': the Triton kernel needs CUDA (or TRITON_INTERPRET=1, very slow)")
                continue
            from flash_attn import flash_attention
            impls[name] = lambda q, k, v: flash_attention(q, k, v, is_causal=True)
        else:
            raise ValueError(f"unknown attention implementation '{name}'")
    return impls


def run_attention():
    impls = attention_impls()
    dtype = torch.bfloat16 if str(device).startswith('cuda') else torch.float32
    rows, plot = [], {}
    for d in csv(attn_dims, int):
        for T in csv(attn_seqs, int):
            for name, fn in impls.items():
                free_memory()
                fwd = bwd = mem = None
                try:
                    q, k, v = (torch.randn(attn_batch, 1, T, d, device=device, dtype=dtype, requires_grad=True)
                               for _ in range(3))
                    fwd = time_step(lambda: fn(q, k, v), 2, steps, device)
                    o = fn(q, k, v)
                    sync(device)
                    # what the forward keeps for the backward: the (T, T) probabilities for naive attention,
                    # only O and the logsumexp (T,) for the flash kernels: the reason FlashAttention scales
                    mem = torch.cuda.memory_allocated() if str(device).startswith('cuda') else None
                    do = torch.randn_like(o)
                    bwd = []
                    # untimed warm-up backwards first: the first one per shape compiles the Triton kernels and
                    # builds cuDNN's plan (hundreds of ms), which would swamp the mean and the std
                    n_warm = 2
                    for i in range(n_warm + steps):  # each backward needs a fresh graph: re-run the forward, untimed
                        o = fn(q, k, v)
                        sync(device)
                        t0 = time.perf_counter()
                        o.backward(do)
                        sync(device)
                        if i >= n_warm:
                            bwd.append(time.perf_counter() - t0)
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                finally:
                    q = k = v = o = do = None
                rows.append([d, T, name, fmt_ms(fwd or []), fmt_ms(bwd or []),
                             'OOM' if fwd is None else ('-' if mem is None else f"{mem / 2**20:.0f}")])
                print('| ' + ' | '.join(str(c) for c in rows[-1]) + ' |', flush=True)  # a long sweep shows progress
                if fwd and bwd:
                    plot.setdefault((d, name), []).append((T, statistics.mean(fwd) + statistics.mean(bwd)))
    path = write_table('attention', f"Attention, batch {attn_batch}, one head, causal, {str(dtype)[6:]}",
                       ['d', 'seq', 'implementation', 'forward (ms)', 'backward (ms)', 'memory before backward (MiB)'],
                       rows)
    if plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        dims = csv(attn_dims, int)
        fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.5), squeeze=False)
        for ax, d in zip(axes[0], dims):
            for name in impls:
                pts = plot.get((d, name), [])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker='o', label=name)
            ax.set_xscale('log', base=2), ax.set_yscale('log'), ax.set_title(f"d = {d}")
            ax.set_xlabel('sequence length'), ax.set_ylabel('fwd+bwd (ms)')
        axes[0][0].legend()
        save_plot(fig, 'attention')
    return path


# -----------------------------------------------------------------------------
# 6) torch.compile


def run_compile():
    rows = []
    for size in csv(sizes):
        T = csv(contexts, int)[0]
        row = [size, T]
        for kind in ('forward', 'train_step'):
            for compiled in (False, True):
                free_memory()
                try:
                    m = build_model(size, T, attn_impl, device, vocab_size)
                    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
                    fm = torch.compile(m) if compiled else m
                    x, y = random_batch(batch_size, T, vocab_size, device)
                    times = time_step(make_step(fm, x, y, kind, False, device, opt), max(warmup, 2), steps, device)
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    times = []
                finally:
                    m = fm = opt = None
                row.append(fmt_ms(times))
                print(f"{size} context {T} {kind} {'compiled' if compiled else 'eager'}: {fmt_ms(times)} ms",
                      flush=True)
        rows.append(row)
    return write_table('compile', f"Eager vs torch.compile (ms), batch {batch_size}, fp32, attention {attn_impl}",
                       ['size', 'context', 'forward eager', 'forward compiled', 'step eager', 'step compiled'], rows)


MODES = {'timing': run_timing, 'precision': run_precision, 'profile': run_profile, 'memory': run_memory,
         'attention': run_attention, 'compile': run_compile}



def die(msg):
    """A user error: one line naming the key and the fix, exit code 2, no traceback, nothing written."""
    print(f"bench/profile_model.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_config():
    """Refuse a bad config before any model is built or any table written."""
    if mode != 'all' and mode not in MODES:
        die(f"--mode={mode!r}: use one of {', '.join(MODES)} or all")
    if memory_size not in model_lib.MODEL_SIZES:
        die(f"--memory_size={memory_size!r}: use one of {', '.join(model_lib.MODEL_SIZES)}")
    lists = dict(sizes=(sizes, str, model_lib.MODEL_SIZES),
                 passes=(passes, str, ('forward', 'forward_backward', 'train_step')),
                 attn_impls=(attn_impls, str, ('naive', 'naive_compiled', 'sdpa', 'flash')),
                 attn_impl=(attn_impl, str, ('reference', 'sdpa', 'flash')),
                 contexts=(contexts, int, None), memory_contexts=(memory_contexts, int, None),
                 attn_dims=(attn_dims, int, None), attn_seqs=(attn_seqs, int, None))
    for key, (value, cast, allowed) in lists.items():
        try:
            items = csv(value, cast)
        except ValueError:
            items = None
        if not items or (allowed is None and min(items) < 1) or (allowed is not None and set(items) - set(allowed)):
            want = f"names from {', '.join(allowed)}" if allowed else 'whole numbers >= 1'
            die(f"--{key}={value!r}: give comma-separated {want}")
    for key, low in dict(batch_size=1, vocab_size=2, warmup=0, steps=1, attn_batch=1).items():
        if not isinstance(globals()[key], int) or globals()[key] < low:
            die(f"--{key}={globals()[key]!r}: must be a whole number >= {low}")
    if str(device).startswith('cuda') and not torch.cuda.is_available():
        die(f"--device={device!r}: no CUDA GPU is visible; use --device=cpu")
    if str(device).split(':')[0] not in ('cpu', 'cuda'):
        die(f"--device={device!r}: use cpu or cuda")
    if os.sep in tag or tag in ('.', '..'):
        die(f"--tag={tag!r}: a file-name ending such as _fp32, without {os.sep}")
    parent = os.path.abspath(out_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        die(f"--out_dir={out_dir!r}: {parent} is a file, not a folder; name a folder for the tables")


def main():
    """Run the mode(s) named by the config globals."""
    check_config()
    torch.manual_seed(seed)
    if str(device).startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    else:
        print("no CUDA: timings are CPU timings, and peak-memory measurements and snapshots are skipped")
    todo = list(MODES) if mode == 'all' else [mode]
    for name in todo:
        print(f"\n===== {name} =====")
        MODES[name]()


if __name__ == '__main__':
    exec(open(os.path.join(_ROOT, 'configurator.py')).read())
    main()

"""
bench/sft.py: experiments on top of sft.py: the pretrain -> SFT -> expert iteration demo, expert iteration on a
checkpoint, the generation benchmark (model.py's KV-cache generate vs its no-cache reference), and SFT curves.

    python bench/sft.py --mode=demo                          # CPU size, a few minutes -> results/sft_demo_cpu.md
    python bench/sft.py --mode=demo --demo_preset=gpu        # one H100 -> results/sft_demo_gpu.md
    python bench/sft.py --mode=ei --init_from=out-sft/ckpt.pt --train_path=task/train.jsonl --val_path=task/val.jsonl
    python bench/sft.py --mode=bench                         # -> results/sft_bench_{cpu,gpu}.md
    python bench/sft.py --mode=plot --log=out-sft/sft_log.jsonl    # -> out-sft/sft_curves.png

The demo builds everything in memory: the task's splits (data/arith/prepare.py, disjoint by structure), a byte-level
model pre-trained on the training problems' plain worked solutions, its few-shot and r1_zero accuracy, SFT on gold
traces, then expert iteration vs the same number of further SFT steps, each on the validation split; the test and
generalization splits (and GSM8K) are evaluated once at the end. Every accuracy comes with its 95% interval.
"""
import importlib.util
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before bench/ (this file's folder): `import sft` is the teaching script
import torch  # noqa: E402

import sft  # noqa: E402
from model import TransformerLM, count_parameters  # noqa: E402


def load_prepare():
    """data/arith/prepare.py as a module (the task generator; a script, not a package)."""
    spec = importlib.util.spec_from_file_location('arith_prepare', os.path.join(ROOT, 'data', 'arith', 'prepare.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def expert_iteration(model, tokenizer, questions, n_steps=3, questions_per_step=512, rollouts=4, temperature=1.0,
                     max_new_tokens=256, epochs=1, eval_fn=None, reward_fn=sft.r1_zero_reward_fn, gen_batch_size=256,
                     seed=0, sft_kwargs=None, out_dir='', log=print):
    """The course's expert iteration on [{'prompt', 'ground_truth'}]: each round draws questions_per_step questions,
    samples `rollouts` responses each (min_tokens=4, stop at '</answer>'), keeps those with reward 1 (once per
    question and text) and runs SFT on them for `epochs` epochs with a fresh AdamW. Returns one record per round;
    evaluations are labelled with the cumulative number of EI optimizer steps."""
    rng, records, total, kw = random.Random(seed), [], 0, dict(sft_kwargs or {})
    for it in range(n_steps):
        batch = rng.sample(questions, min(questions_per_step, len(questions)))
        model.eval()
        with sft.amp(next(model.parameters()).device, kw.get('dtype', 'bfloat16')):
            outs = sft.generate(model, tokenizer, [q['prompt'] for q in batch], max_new_tokens, temperature,
                                n=rollouts, min_tokens=4, seed=seed * 1000 + it, batch_size=gen_batch_size)
        kept = sorted({(o['prompt_index'], o['text']) for o in outs
                       if reward_fn(o['text'], batch[o['prompt_index']]['ground_truth'])['reward'] == 1.0})
        rec = {'ei_step': it + 1, 'rollouts': len(outs), 'kept': len(kept), 'kept_frac': len(kept) / len(outs),
               'sft_steps': 0}
        if kept:
            steps = max(1, -(-epochs * len(kept) // kw.get('batch_size', 32)))
            ev = (lambda s, base=total: eval_fn(base + s)) if eval_fn else None
            h = sft.train_sft(model, tokenizer, [{'prompt': batch[i]['prompt'], 'response': t} for i, t in kept],
                              max_iters=steps, seed=seed + it, tag=f'ei{it + 1}', eval_fn=ev, log_interval=10 ** 9,
                              **kw)
            total += h['steps']
            rec['sft_steps'] = h['steps']
            rec.update({f'eval_{k}': v for k, v in (h['evals'][-1] if h['evals'] else {}).items() if k != 'step'})
        rec['total_sft_steps'] = total
        log(f"EI step {it + 1}/{n_steps}: kept {len(kept)}/{len(outs)} rollouts, {rec['sft_steps']} SFT steps"
            + (f", val accuracy {rec['eval_accuracy']:.3f}" if 'eval_accuracy' in rec else ''))
        records.append(rec)
        if out_dir:
            sft.write_jsonl(os.path.join(out_dir, 'ei_steps.jsonl'), records)
    return records


# Sizes of the demo. cpu: minutes on a laptop (shows the pipeline; accuracy stays modest). gpu: one H100, the
# cpu preset with these changes.
DEMO_PRESETS = {'cpu': dict(
    model=dict(d_model=64, num_layers=2, num_heads=4, context_length=512),
    template='User: {question}\nAssistant: <think>',  # r1_zero's ending: its 420-byte preamble makes CPU steps slow
    task=dict(min_steps=1, max_steps=1, max_number=9), n_train=4000, n_val=50, n_test=100, sft_examples=128,
    pretrain=dict(max_iters=1500, batch_size=32, gradient_accumulation_steps=1, learning_rate=3e-3),
    # SFT lr chosen on the validation split: 3e-3 reached 6% (format 60%), 1e-3 0% (format 2%) in 40 steps
    sft=dict(max_iters=40, batch_size=16, gradient_accumulation_steps=1, learning_rate=3e-3),
    ei=dict(n_steps=2, questions_per_step=32, rollouts=4), ei_lr=3e-4, fewshot=4, gsm8k_n=4, gen_batch_size=128,
    max_new_tokens=48)}
DEMO_PRESETS['gpu'] = {**DEMO_PRESETS['cpu'], 'template': 'r1_zero', 'n_train': 60000, 'n_val': 500, 'n_test': 500,
                       'model': dict(d_model=384, num_layers=6, num_heads=6, context_length=1024),
                       'task': dict(min_steps=2, max_steps=3, max_number=20), 'sft_examples': 512,
                       'pretrain': dict(max_iters=6000, batch_size=128, gradient_accumulation_steps=1,
                                        learning_rate=1.5e-3),
                       'sft': dict(max_iters=240, batch_size=32, gradient_accumulation_steps=1, learning_rate=5e-4),
                       'ei': dict(n_steps=4, questions_per_step=1024, rollouts=4), 'ei_lr': 2e-4, 'gsm8k_n': -1,
                       'gen_batch_size': 512, 'max_new_tokens': 128}


def demo_base_and_sft(preset='cpu', out_dir='out-sft-demo', seed=0, log=print, device='cpu', dtype='bfloat16'):
    """The demo's stages 1-3: the task's splits, a pre-trained byte-level base model, its evaluation (r1_zero and
    few-shot), SFT on gold traces. Returns a dict of what later stages need (bench/grpo.py starts from it too)."""
    P = DEMO_PRESETS[preset] if isinstance(preset, str) else preset  # a name, or bench/grpo.py's own sizes
    torch.manual_seed(seed)
    tok, template = sft.byte_tokenizer(), sft.load_prompt_template(P['template'])
    splits = load_prepare().make_splits(P['n_train'], P['n_val'], P['n_test'], P['n_test'], seed, **P['task'])
    to_q = lambda p: {'question': p['question'], 'prompt': sft.format_prompt(template, p['question']),  # noqa: E731
                      'ground_truth': p['answer'], 'trace': p['trace']}
    qs = {k: [to_q(p) for p in v] for k, v in splits.items()}
    sft_set = [{**q, 'response': sft.r1_response(q['trace'], q['ground_truth'])}
               for q in qs['train'][:P['sft_examples']]]
    # k-shot: the last k training problems in the pre-training format, k the most (<= fewshot) whose prompts leave
    # room for max_new_tokens in the context on every evaluated split (bytes: a few worked problems fill it)
    room, n_shots = P['model']['context_length'] - P['max_new_tokens'], P['fewshot']
    while n_shots and max(len(tok.encode(sft.fewshot_prompt(qs['train'][-n_shots:], q['question'])))
                          for s in ('val', 'test', 'gen') for q in qs[s]) > room:
        n_shots -= 1
    shots = qs['train'][-n_shots:] if n_shots else []
    fewshot_q = {k: [{**q, 'prompt': sft.fewshot_prompt(shots, q['question'])} for q in v] for k, v in qs.items()}
    gen = dict(max_new_tokens=P['max_new_tokens'], seed=seed, batch_size=P['gen_batch_size'], dtype=dtype)

    def make_eval(model, split, name, fewshot=False):
        probs = (fewshot_q if fewshot else qs)[split]
        return lambda step: sft.evaluate(model, tok, probs, sft.fewshot_reward_fn if fewshot else sft.r1_zero_reward_fn,
                                         **gen, stop=('Question:',) if fewshot else ('</answer>',),
                                         log_path=os.path.join(out_dir, f'{name}_step{step}.jsonl'))

    # 1) pre-training on the training problems' plain worked solutions (no <think> tags)
    log(f"== demo on {device}: " + ', '.join(f"{len(v)} {k}" for k, v in splits.items()))
    model = TransformerLM(vocab_size=257, **P['model']).to(device)
    log(f"model: {count_parameters(model):,} parameters (non-embedding), {P['model']}")
    docs = [{'prompt': '<|endoftext|>', 'response': load_prepare().pretrain_text(p)} for p in splits['train']]
    h_pre = sft.train_sft(model, tok, docs, seed=seed, tag='pretrain', log_interval=100, dtype=dtype, **P['pretrain'])
    sft.save_ckpt(os.path.join(out_dir, 'base.pt'), model)
    # 2) the base model: r1_zero format (a format failure) and few-shot in its own format (what it can do)
    results = {'base': {'val': make_eval(model, 'val', 'base')(0)}}
    if shots:
        results['base_fewshot'] = {'val': make_eval(model, 'val', 'base_fewshot', True)(0)}
    # 3) SFT on gold traces, validated on the validation split
    h_sft = sft.train_sft(model, tok, sft_set, seed=seed, tag='sft', eval_fn=make_eval(model, 'val', 'sft'),
                          eval_interval=-(-P['sft']['max_iters'] // 3), log_interval=25, dtype=dtype, **P['sft'])
    results['sft'] = {'val': h_sft['evals'][-1]}
    sft_path = os.path.join(out_dir, 'sft.pt')
    sft.save_ckpt(sft_path, model)
    return dict(model=model, tok=tok, qs=qs, fewshot_q=fewshot_q, shots=len(shots), sft_set=sft_set, h_pre=h_pre,
                h_sft=h_sft, results=results, make_eval=make_eval, sft_path=sft_path, gen=gen)


def write_md(path, lines):
    """A Markdown report, written atomically (temp file + os.replace)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)
    print(f"wrote {path}")


def interval(m):
    return f"{m['accuracy']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"


def run_demo(preset='cpu', out_dir='out-sft-demo', results_dir='results', seed=0, device='cpu', dtype='bfloat16'):
    """The whole story; writes results/sft_demo_<preset>.md. The split of every number is named."""
    P, t0, lines = DEMO_PRESETS[preset], time.time(), []

    def log(msg):
        print(msg)
        lines.append(msg)
    os.makedirs(out_dir, exist_ok=True)
    D = demo_base_and_sft(preset, out_dir, seed, log, device, dtype)
    model, tok, qs, results, make_eval = D['model'], D['tok'], D['qs'], D['results'], D['make_eval']
    # 4) expert iteration from the SFT model (questions only) vs as many more SFT steps on the gold traces
    kw = dict(batch_size=P['sft']['batch_size'], gradient_accumulation_steps=P['sft']['gradient_accumulation_steps'],
              learning_rate=P['ei_lr'], dtype=dtype)
    pool = qs['train'][P['sft_examples']:]  # EI never sees these questions' traces
    ei = expert_iteration(model, tok, pool, max_new_tokens=P['max_new_tokens'], eval_fn=make_eval(model, 'val', 'ei'),
                          gen_batch_size=P['gen_batch_size'], seed=seed, sft_kwargs=kw, out_dir=out_dir, log=log,
                          **P['ei'])
    ei_steps = ei[-1]['total_sft_steps']
    more, _ = sft.load_policy(D['sft_path'], device)
    if ei_steps:
        sft.train_sft(more, tok, D['sft_set'], max_iters=ei_steps, seed=seed + 1, tag='sft_more', log_interval=10 ** 9,
                      **kw)
    # 5) every model once on test and gen (never used for a choice), and the EI model on GSM8K
    models = {'base': sft.load_policy(os.path.join(out_dir, 'base.pt'), device)[0], 'sft': None, 'sft_more': more,
              'ei': model}
    models['sft'] = sft.load_policy(D['sft_path'], device)[0]
    for name, m in models.items():
        for split in ('test', 'gen'):
            results.setdefault(name, {})[split] = make_eval(m, split, f'{name}_{split}')(0)
        if name == 'base' and 'base_fewshot' in results:
            for split in ('test', 'gen'):
                results['base_fewshot'][split] = make_eval(m, split, f'base_fewshot_{split}', True)(0)
    path, gsm = os.path.join(sft.DATA, 'a5', 'gsm8k', 'test.jsonl'), None  # gsm: the questions that fit, if any
    if os.path.exists(path) and P['gsm8k_n']:
        r1 = sft.load_prompt_template('r1_zero')
        ctx = model.config.context_length
        gsm = [p for p in sft.load_problems(path, r1) if len(tok.encode(p['prompt'])) + 32 <= ctx]
        gsm = gsm[:P['gsm8k_n']] if P['gsm8k_n'] > 0 else gsm
        if gsm:  # the r1_zero prompt alone is ~420 bytes: at a small byte context none may fit
            results['ei']['gsm8k'] = sft.evaluate(model, tok, gsm, sft.question_only_reward_fn, **D['gen'])
    # 6) the report
    L = [f"# sft.py demo, preset '{preset}' ({torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'}, "
         f"{time.time() - t0:.0f} s)", "", f"Command: `python bench/sft.py --mode=demo --demo_preset={preset}`. Task "
         f"(data/arith/prepare.py): {P['task']}, splits disjoint by structure; gen = one more operation. Model: "
         f"TransformerLM {P['model']}, bytes, {count_parameters(model):,} non-embedding parameters. Greedy decoding; "
         f"accuracy [95% Wilson interval].", "",
         "| model | val | test | gen | format rate (test) |", "|---|---:|---:|---:|---:|"]
    names = {'base': 'base, r1_zero prompt', 'base_fewshot': f"base, {D['shots']}-shot plain prompt",
             'sft': f"SFT ({D['h_sft']['steps']} steps, {len(D['sft_set'])} traces)",
             'sft_more': f"SFT + {ei_steps} more SFT steps", 'ei': f"SFT + expert iteration ({ei_steps} steps)"}
    for k, label in names.items():
        if k not in results:
            continue
        r = results[k]
        L.append(f"| {label} | {interval(r['val']) if 'val' in r else '-'} | {interval(r['test'])} | "
                 f"{interval(r['gen'])} | {r['test']['format_rate']:.1%} |")
    if 'gsm8k' in results['ei']:
        L += ["", f"GSM8K test ({results['ei']['gsm8k']['n']} questions that fit the context), EI model: "
                  f"{interval(results['ei']['gsm8k'])}."]
    elif gsm == []:
        L += ["", "GSM8K: no test question's r1_zero prompt leaves room for an answer in this context; not evaluated."]
    L += ["", "Log:", "", "```"] + lines + ["```"]
    write_md(os.path.join(results_dir, f'sft_demo_{preset}.md'), L)
    return results


def bench_generation(model, batch=64, prompt_len=128, new_tokens=256, seed=0):
    """Greedy new tokens/s of model.generate with its KV cache (a CUDA graph on GPU) and without (the reference that
    re-runs the whole sequence for every token), after a warm-up. Returns tokens/s of each and the speed-up."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    model.generate(prompts, 8, temperature=0)  # warm-up: CUDA graph capture, kernel selection
    res = {}
    for name, use_cache in (('kv_cache', True), ('naive', False)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.time()
        out = model.generate(prompts, new_tokens, temperature=0, use_cache=use_cache)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        res[f'{name}_tokens_per_s'] = sum(map(len, out)) / (time.time() - t)
    res['speedup'] = res['kv_cache_tokens_per_s'] / res['naive_tokens_per_s']
    model.clear_generation_cache()
    return res


def run_bench(results_dir='results', new_tokens=256, batch=64, device='cpu'):
    """GPT-2-small-shaped random model (bf16 on GPU), 128-token prompts, batch `batch` and 1; a tiny model on CPU."""
    on_gpu = device.startswith('cuda')
    shape = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12) if on_gpu else \
        dict(vocab_size=512, context_length=512, d_model=64, num_layers=2, num_heads=4)
    new_tokens, batch = (new_tokens, batch) if on_gpu else (min(new_tokens, 64), min(batch, 8))
    torch.manual_seed(0)
    model = TransformerLM(**shape).to(device).eval()
    model = model.to(torch.bfloat16) if on_gpu else model
    L = [f"# generation benchmark ({torch.cuda.get_device_name() if on_gpu else 'CPU'})", "",
         f"model.py TransformerLM {shape}, random weights, greedy, 128-token prompts + {new_tokens} new tokens. "
         "Command: `python bench/sft.py --mode=bench`.", "",
         "| batch | KV cache (new tokens/s) | no cache (new tokens/s) | speed-up |", "|---:|---:|---:|---:|"]
    for b in (batch, 1):
        r = bench_generation(model, b, 128, new_tokens)
        print(f"batch {b}: KV cache {r['kv_cache_tokens_per_s']:,.0f} tok/s, naive {r['naive_tokens_per_s']:,.0f} "
              f"tok/s: {r['speedup']:.1f}x")
        L.append(f"| {b} | {r['kv_cache_tokens_per_s']:,.0f} | {r['naive_tokens_per_s']:,.0f} | {r['speedup']:.1f}x |")
    write_md(os.path.join(results_dir, f"sft_bench_{'gpu' if on_gpu else 'cpu'}.md"), L)


def plot_log(log_path, png_path, title=''):
    """Loss and validation accuracy (with its 95% interval) vs step from a train_sft <tag>_log.jsonl, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    recs = sft.read_jsonl(log_path)
    loss = [(r['step'], r['loss']) for r in recs if 'loss' in r]
    evals = [r for r in recs if 'accuracy' in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss:
        a1.plot(*zip(*loss), lw=1)
    a1.set(xlabel='optimizer step', ylabel='loss (nats / response token)', yscale='log')
    if evals:
        s = [e['step'] for e in evals]
        a2.errorbar(s, [e['accuracy'] for e in evals], yerr=[[e['accuracy'] - e['ci95'][0] for e in evals],
                                                             [e['ci95'][1] - e['accuracy'] for e in evals]],
                    marker='o', capsize=3, label='accuracy (val)')
        a2.plot(s, [e['format_rate'] for e in evals], ls='--', marker='.', label='format rate')
        a2.legend()
    a2.set(xlabel='optimizer step', ylim=(-0.02, 1.02))
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle(title or log_path)
    fig.tight_layout()
    fig.savefig(png_path + '.tmp.png', dpi=110)
    plt.close(fig)
    os.replace(png_path + '.tmp.png', png_path)


if __name__ == '__main__':
    mode = 'demo'  # demo | ei | bench | plot
    demo_preset = 'cpu'  # demo sizes: cpu | gpu
    out_dir = ''  # demo: '' = out-sft-demo-<preset>; ei: out-ei
    results_dir = 'results'  # where the demo and the benchmark write their Markdown
    device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda
    dtype = 'bfloat16'  # autocast dtype on cuda
    seed = 0  # seeds the demo's task, models and sampling
    init_from = ''  # ei: the SFT checkpoint to improve
    train_path = ''  # ei: JSONL of training problems (questions and answers)
    val_path = ''  # ei: the validation split
    log = ''  # plot: a train_sft log (out-sft/sft_log.jsonl); the PNG goes beside it
    bench_new_tokens = 256  # bench: new tokens per sequence
    bench_batch = 64  # bench: sequences per batch
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    if mode == 'demo':
        run_demo(demo_preset, out_dir or f'out-sft-demo-{demo_preset}', results_dir, seed, device, dtype)
    elif mode == 'bench':
        run_bench(results_dir, bench_new_tokens, bench_batch, device)
    elif mode == 'plot':
        plot_log(log, os.path.splitext(log)[0].replace('_log', '_curves') + '.png')
    elif mode == 'ei':
        m, t = sft.load_policy(init_from, device)
        tpl = sft.load_prompt_template('r1_zero')
        val = sft.load_problems(val_path, tpl)[:200] if val_path else []
        ev = (lambda s: sft.evaluate(m, t, val, dtype=dtype)) if val else None
        os.makedirs(out_dir or 'out-ei', exist_ok=True)
        expert_iteration(m, t, sft.load_problems(train_path, tpl), eval_fn=ev, seed=seed, out_dir=out_dir or 'out-ei',
                         sft_kwargs=dict(dtype=dtype))
        sft.save_ckpt(os.path.join(out_dir or 'out-ei', 'ckpt.pt'), m, tokenizer_dir=t.tokenizer_dir)
    else:
        sys.exit(f"bench/sft.py: error: --mode={mode!r}: use demo | ei | bench | plot")

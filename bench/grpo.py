"""
bench/grpo.py: experiments on top of grpo.py: the base -> short SFT -> GRPO demo with the course's ablations, the
learning-rate sweep on the validation split (the test split is evaluated once, for the chosen rate), and plots.

    python bench/grpo.py --mode=demo                        # CPU size, minutes -> results/grpo_demo_cpu.md (+ .png)
    python bench/grpo.py --mode=demo --demo_preset=gpu      # one H100 -> results/grpo_demo_gpu.md
    python bench/grpo.py --mode=lr_sweep --init_from=out-sft/ckpt.pt --train_path=task/train.jsonl \\
        --val_path=task/val.jsonl --test_path=task/test.jsonl --lrs=1e-5,3e-5,1e-4 --grpo_overrides="{...}"
    python bench/grpo.py --mode=plot --log=out-grpo/grpo_log.jsonl    # -> out-grpo/grpo_curves.png

Choosing the learning rate: every rate trains from the same SFT checkpoint with the same seed; the one with the best
final accuracy on the VALIDATION split wins, and only that policy is evaluated on the test split (once). Reporting
the best test accuracy over several rates instead would pick the luckiest draw of the test set.
"""
import importlib.util
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before bench/ (this file's folder): `import grpo` is the teaching script
import torch  # noqa: E402

import grpo  # noqa: E402
import sft  # noqa: E402


def load_bench_sft():
    """bench/sft.py (the demo's base model and SFT stages) as a module."""
    spec = importlib.util.spec_from_file_location('bench_sft', os.path.join(ROOT, 'bench', 'sft.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lr_sweep(sft_path, tok, train_q, val_q, test_q, lrs, cfg, out_dir='', log=print, reward_fn=sft.r1_zero_reward_fn,
             device='cpu'):
    """GRPO from sft_path at every learning rate in lrs (same seed, same budget); the best final VALIDATION accuracy
    chooses the rate, and only that policy is evaluated on the test split. Returns (rows, best lr, test metrics,
    the chosen run's history)."""
    rows, best = [], None
    for lr in lrs:
        policy, _ = sft.load_policy(sft_path, device, getattr(tok, 'tokenizer_dir', ''))
        h = grpo.train_grpo(policy, tok, train_q, val_q, {**cfg, 'learning_rate': lr}, reward_fn,
                            os.path.join(out_dir, f'lr{lr:g}') if out_dir else '', log=log, tag=f'lr{lr:g}')
        rows.append((lr, h))
        if best is None or h['evals'][-1]['accuracy'] > best[1]['evals'][-1]['accuracy']:
            best = (lr, h, {k: v.detach().clone() for k, v in policy.state_dict().items()})
    policy.load_state_dict(best[2])
    test = sft.evaluate(policy, tok, test_q, reward_fn, cfg.get('eval_max_tokens') or cfg['sampling_max_tokens'],
                        batch_size=cfg.get('gen_batch_size', 256), dtype=cfg.get('dtype', 'bfloat16'),
                        log_path=os.path.join(out_dir, 'test_chosen_lr.jsonl') if out_dir else None)
    log(f"lr sweep: {best[0]:g} chosen on validation ({best[1]['evals'][-1]['accuracy']:.3f}); test accuracy "
        f"{test['accuracy']:.3f} [{test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}] (n={test['n']})")
    return rows, best[0], test, best[1]


# The demo's sizes: base = bench/sft.py demo sizes (pre-training + SFT); the SFT is deliberately short and stops
# once accuracy on a probe set of TRAINING questions reaches sft_target (RL needs an imperfect policy that still
# samples right answers now and then: a group whose answers all get the same reward has zero advantage);
# main / ablation: grpo.py config overrides, each run capped by a time budget; lrs: the sweep of the main run.
SHORT_TEMPLATE = 'User: {question}\nAssistant: <think>'  # r1_zero's ending without its 420-byte preamble
GRPO_PRESETS = {'cpu': dict(
    base=dict(model=dict(d_model=64, num_layers=2, num_heads=4, context_length=256), template=SHORT_TEMPLATE,
              task=dict(min_steps=1, max_steps=1, max_number=9), n_train=4000, n_val=100, n_test=100, fewshot=0,
              gen_batch_size=128, max_new_tokens=64, sft_examples=128,
              pretrain=dict(max_iters=1000, batch_size=32, gradient_accumulation_steps=1, learning_rate=3e-3),
              sft=dict(max_iters=10, batch_size=16, gradient_accumulation_steps=1, learning_rate=1e-3)),
    sft_chunk=5, sft_max_chunks=6, sft_target=0.3, sft_target_sampled=0.15, probe_n=64, lrs=(1e-4,),
    main=dict(n_grpo_steps=200, time_budget_s=45, rollout_batch_size=64, group_size=8, train_batch_size=64,
              gradient_accumulation_steps=1, sampling_temperature=0.7, sampling_max_tokens=64, eval_interval=5,
              eval_n=-1, gen_batch_size=128),
    ablation=dict(n_grpo_steps=6, time_budget_s=12, rollout_batch_size=32, group_size=8, train_batch_size=32,
                  gradient_accumulation_steps=1, learning_rate=1e-4, sampling_temperature=0.7, sampling_max_tokens=64,
                  eval_interval=3, eval_n=-1, gen_batch_size=128))}
_c = GRPO_PRESETS['cpu']  # one H100: the cpu preset with these changes
GRPO_PRESETS['gpu'] = {
    **_c, 'sft_chunk': 3, 'sft_max_chunks': 20, 'sft_target': 0.35, 'probe_n': 256, 'lrs': (3e-5, 1e-4),
    'base': {**_c['base'], 'model': dict(d_model=384, num_layers=6, num_heads=6, context_length=512),
             'task': dict(min_steps=2, max_steps=3, max_number=20), 'n_train': 60000, 'n_val': 500, 'n_test': 500,
             'gen_batch_size': 1024, 'max_new_tokens': 128, 'sft_examples': 512,
             'pretrain': {**_c['base']['pretrain'], 'max_iters': 6000, 'batch_size': 128, 'learning_rate': 1.5e-3},
             'sft': {**_c['base']['sft'], 'max_iters': 4, 'batch_size': 32, 'learning_rate': 5e-4}},
    'main': {**_c['main'], 'n_grpo_steps': 1000, 'time_budget_s': 120, 'rollout_batch_size': 256,
             'train_batch_size': 256, 'gradient_accumulation_steps': 2, 'warmup_steps': 25, 'sampling_max_tokens': 128,
             'eval_interval': 20, 'gen_batch_size': 1024},
    'ablation': {**_c['ablation'], 'n_grpo_steps': 60, 'time_budget_s': 22, 'rollout_batch_size': 128,
                 'train_batch_size': 128, 'sampling_max_tokens': 128, 'eval_interval': 15, 'eval_n': 500,
                 'gen_batch_size': 1024}}


def ablation_variants(base):
    """The course's ablations as config overrides of one base GRPO config (small scale)."""
    half = dict(epochs_per_rollout_batch=2, train_batch_size=base['rollout_batch_size'] // 2,
                gradient_accumulation_steps=max(1, base['gradient_accumulation_steps'] // 2))
    return [('reinforce_with_baseline (std norm, masked_mean, on-policy)', {}),
            ('no_baseline (raw rewards)', dict(loss_type='no_baseline')),
            ('no std normalization (Dr. GRPO advantages)', dict(use_std_normalization=False)),
            ('masked_normalize by max tokens (Dr. GRPO length norm)', dict(length_normalization='masked_normalize')),
            ('off-policy: grpo_clip, 2 epochs x 2 steps per rollout batch', dict(loss_type='grpo_clip', **half)),
            ('off-policy: grpo_no_clip, 2 epochs x 2 steps per rollout batch', dict(loss_type='grpo_no_clip', **half))]


def short_sft(D, P, log=print, dtype='bfloat16'):
    """Continue the demo's SFT in chunks until, on a probe set of TRAINING questions, greedy accuracy reaches
    P['sft_target'] or sampled accuracy (at the rollout temperature) P['sft_target_sampled']."""
    model, tok, probe = D['model'], D['tok'], D['qs']['train'][-P['probe_n']:]
    temp, total = P['main'].get('sampling_temperature', 1.0), D['h_sft']['steps']

    def probe_eval():
        greedy = sft.evaluate(model, tok, probe, max_new_tokens=P['base']['max_new_tokens'], dtype=dtype)['accuracy']
        with sft.amp(next(model.parameters()).device, dtype):
            outs = sft.generate(model, tok, [q['prompt'] for q in probe], P['base']['max_new_tokens'], temp, seed=1)
        return greedy, sum(sft.r1_zero_reward_fn(o['text'], q['ground_truth'])['reward'] for o, q in
                           zip(outs, probe)) / len(probe)
    greedy, sampled = probe_eval()
    for k in range(P['sft_max_chunks'] + 1):
        log(f"short SFT: {total} steps, probe accuracy greedy {greedy:.3f} (target {P['sft_target']}), sampled "
            f"{sampled:.3f} (target {P['sft_target_sampled']})")
        if greedy >= P['sft_target'] or sampled >= P['sft_target_sampled'] or k == P['sft_max_chunks']:
            break
        kw = {kk: v for kk, v in P['base']['sft'].items() if kk != 'max_iters'}
        total += sft.train_sft(model, tok, D['sft_set'], max_iters=P['sft_chunk'], seed=k + 1, tag=f'sft_chunk{k + 1}',
                               log_interval=10 ** 9, dtype=dtype, **kw)['steps']
        greedy, sampled = probe_eval()
    return total


def run_demo(preset='cpu', out_dir='out-grpo-demo', results_dir='results', seed=0, device='cpu', dtype='bfloat16'):
    """base -> short SFT -> GRPO (lr chosen on validation) -> ablations; the test split once per model at the end.
    Writes results/grpo_demo_<preset>.md, _curves.png (the chosen run) and .png (validation accuracy of every run)."""
    P, t0, lines = GRPO_PRESETS[preset], time.time(), []

    def log(msg):
        print(msg)
        lines.append(msg)
    if device == 'cpu':
        torch.set_num_threads(1)  # models this small spend their time in thread synchronization on CPU
    os.makedirs(out_dir, exist_ok=True)
    bench_sft = load_bench_sft()
    D = bench_sft.demo_base_and_sft(P['base'], out_dir, seed, log, device, dtype)
    sft_steps = short_sft(D, P, log, dtype)
    model, tok, qs = D['model'], D['tok'], D['qs']
    sft_path = os.path.join(out_dir, 'sft_short.pt')
    sft.save_ckpt(sft_path, model)
    questions = qs['train'][:-P['probe_n']]  # GRPO sees questions and answers only, never a trace
    cfg = {**P['main'], 'seed': seed, 'device': device, 'dtype': dtype}
    rows, lr, test, h_main = lr_sweep(sft_path, tok, questions, qs['val'], qs['test'], P['lrs'], cfg,
                                      os.path.join(out_dir, 'sweep'), log, device=device)
    sft_test = sft.evaluate(model, tok, qs['test'], max_new_tokens=P['main']['sampling_max_tokens'], dtype=dtype)
    ablations = []
    for name, ov in ablation_variants(P['ablation']):
        policy, _ = sft.load_policy(sft_path, device)
        ablations.append((name, grpo.train_grpo(policy, tok, questions, qs['val'], {**P['ablation'], **ov,
                                                'seed': seed, 'dtype': dtype}, log=log, tag=f'abl{len(ablations)}')))
    # the report
    dev_name = torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'
    L = [f"# grpo.py demo, preset '{preset}' ({dev_name}, {time.time() - t0:.0f} s)", "",
         f"Command: `python bench/grpo.py --mode=demo --demo_preset={preset}`. Task: data/arith/prepare.py "
         f"{P['base']['task']}, splits disjoint by structure. Policy: TransformerLM {P['base']['model']}, bytes, "
         f"pre-trained {D['h_pre']['steps']} steps, then SFT for only {sft_steps} steps. Greedy decoding; accuracy "
         f"[95% Wilson interval].", "", "## Learning rate, chosen on the validation split", "",
         "| lr | GRPO steps | final val accuracy |", "|---:|---:|---:|"]
    L += [f"| {r:g}{' (chosen)' if r == lr else ''} | {h['steps']} | {bench_sft.interval(h['evals'][-1])} |"
          for r, h in rows]
    L += ["", "## Test split (once per model)", "", "| policy | test accuracy | format rate |", "|---|---:|---:|",
          f"| SFT (short) | {bench_sft.interval(sft_test)} | {sft_test['format_rate']:.1%} |",
          f"| SFT + GRPO (lr {lr:g}) | {bench_sft.interval(test)} | {test['format_rate']:.1%} |", "",
          "## Ablations (small scale, same SFT start; validation split)", "",
          "| variant | GRPO steps | final val accuracy | train reward (last 3 steps) |", "|---|---:|---:|---:|"]
    for name, h in ablations:
        last = h['log'][-3:]
        L.append(f"| {name} | {h['steps']} | {bench_sft.interval(h['evals'][-1])} | "
                 f"{sum(r['train_reward'] for r in last) / max(1, len(last)):.3f} |")
    L += ["", "Log:", "", "```"] + lines + ["```"]
    bench_sft.write_md(os.path.join(results_dir, f'grpo_demo_{preset}.md'), L)
    plot_grpo(os.path.join(results_dir, f'grpo_demo_{preset}_curves.png'), h_main['log'], h_main['evals'],
              f"GRPO, lr {lr:g} ({preset} preset)")
    return {'sft_test': sft_test, 'test': test, 'lr': lr, 'h_main': h_main, 'ablations': dict(ablations)}


def plot_grpo(path, log, evals, title):
    """Training curves as one PNG: rewards, validation accuracy with its 95% interval, loss, grad norm, entropy,
    clip fraction, response length."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    ax, steps = axes.ravel(), [r['step'] for r in log]
    for key, label in (('train_reward', 'total'), ('train_format_reward', 'format'), ('train_answer_reward', 'answer')):
        ax[0].plot(steps, [r[key] for r in log], label=label, lw=1)
    ax[0].set_title('train rewards (rollouts)')
    ax[0].legend()
    if evals:
        acc = [e['accuracy'] for e in evals]
        ax[1].errorbar([e['step'] for e in evals], acc, yerr=[[a - e['ci95'][0] for a, e in zip(acc, evals)],
                                                              [e['ci95'][1] - a for a, e in zip(acc, evals)]],
                       marker='o', capsize=3)
    ax[1].set(title='validation accuracy (greedy, 95% CI)', ylim=(-0.02, 1.02))
    for a, key, t in ((ax[2], 'loss', 'loss'), (ax[3], 'grad_norm', 'grad norm (before clipping)'),
                      (ax[4], 'entropy', 'token entropy (rollouts)'), (ax[5], 'clip_fraction', 'clip fraction'),
                      (ax[6], 'response_len', 'mean response length (tokens)'), (ax[7], 'lr', 'learning rate')):
        ys = [r.get(key, float('nan')) for r in log]
        a.plot(steps, ys, lw=1)
        a.set_title(t if not all(math.isnan(y) for y in ys) else f'{t}: n/a')
    for a in ax:
        a.grid(alpha=0.3)
        a.set_xlabel('GRPO step')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=100)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


if __name__ == '__main__':
    mode = 'demo'  # demo | lr_sweep | plot
    demo_preset = 'cpu'  # demo sizes: cpu | gpu
    out_dir = ''  # demo: '' = out-grpo-demo-<preset>; lr_sweep: out-grpo-sweep
    results_dir = 'results'  # where the demo writes its report
    seed = 0  # seeds everything
    device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda
    dtype = 'bfloat16'  # autocast dtype on cuda
    init_from = ''  # lr_sweep: the SFT checkpoint every rate starts from
    tokenizer_dir = ''  # lr_sweep: bpe.py tokenizer folder ('' = the one the checkpoint names)
    prompt_template = 'r1_zero'  # lr_sweep: as grpo.py's
    train_path = ''  # lr_sweep: training questions
    val_path = ''  # lr_sweep: the validation split (chooses the rate)
    test_path = ''  # lr_sweep: the test split (evaluated once, for the chosen rate)
    lrs = '1e-5,3e-5,1e-4'  # lr_sweep: the rates to try
    grpo_overrides = {}  # lr_sweep: grpo.py keys for every run, e.g. {'n_grpo_steps': 50}
    log = ''  # plot: a grpo_log.jsonl; the PNG goes beside it
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    if mode == 'demo':
        run_demo(demo_preset, out_dir or f'out-grpo-demo-{demo_preset}', results_dir, seed, device, dtype)
    elif mode == 'lr_sweep':
        m, t = sft.load_policy(init_from, device, tokenizer_dir)
        tpl = sft.load_prompt_template(prompt_template)
        rows, lr, test, _ = lr_sweep(init_from, t, sft.load_problems(train_path, tpl), sft.load_problems(val_path, tpl),
                                     sft.load_problems(test_path, tpl), [float(x) for x in lrs.split(',')],
                                     {**grpo_overrides, 'seed': seed, 'dtype': dtype}, out_dir or 'out-grpo-sweep',
                                     device=device)
        sft.write_jsonl(os.path.join(out_dir or 'out-grpo-sweep', 'lr_sweep.jsonl'),
                        [{'lr': r, 'val': h['evals'][-1], 'chosen': r == lr} for r, h in rows] + [{'test': test}])
    elif mode == 'plot':
        recs = sft.read_jsonl(log)
        plot_grpo(log.replace('_log.jsonl', '_curves.png'), [r for r in recs if 'train_reward' in r],
                  [r for r in recs if 'accuracy' in r], log)
    else:
        sys.exit(f"bench/grpo.py: error: --mode={mode!r}: use demo | lr_sweep | plot")

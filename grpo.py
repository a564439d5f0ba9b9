"""
grpo.py: policy-gradient RL with verifiable rewards (GRPO), on-policy and off-policy, on model.py policies.

What this file teaches (CS336 assignment 5, second half):
  1) group-normalized advantages: sample G answers per question, score them with a verifiable reward (sft.py's
     r1_zero grader), and use A_i = (r_i - mean(r_group)) / (std(r_group) + eps) as the advantage of every token
     of answer i (Shao et al. 2024, DeepSeekMath, "GRPO"); the group mean is the baseline, no value network;
  2) the policy-gradient losses: naive REINFORCE (-A log p), with or without a baseline, and PPO's clipped
     surrogate -min(ratio A, clip(ratio, 1-eps, 1+eps) A) (Schulman et al. 2017) for off-policy epochs;
  3) length normalization: per-sequence masked_mean (GRPO) vs a constant divisor (Dr. GRPO, Liu et al. 2025,
     "Understanding R1-Zero-Like Training": the mean favours long wrong answers, a constant does not);
  4) the train loop: rollouts through sft.generate (model.py's KV cache), old log-probs once per rollout batch under
     torch.inference_mode, gradient accumulation, clipping, an optional KL penalty to a frozen reference policy,
     validation on the validation split (so that the learning rate is chosen there, never on the test split).
grpo.py uses only sft.py's public functions (grader, log-probs, generation, checkpoints). The demo with the course's
ablations, the learning-rate sweep on the validation split and the plots are in bench/grpo.py.

Run (one CPU or one GPU; off-policy: --loss_type=grpo_clip --epochs_per_rollout_batch=4 --train_batch_size=64
--gradient_accumulation_steps=32):
    python grpo.py --init_from=out-sft/ckpt.pt --train_path=task/train.jsonl --val_path=task/val.jsonl
then report the test split once: python sft.py --mode=eval --init_from=out-grpo/ckpt.pt --eval_paths=task/test.jsonl
"""
import copy
import os
import random
import sys
import time

import torch

import sft

# -----------------------------------------------------------------------------
# default config values: the course's GRPO defaults (override with --key=value or a config file)
# I/O
out_dir = 'out-grpo'  # ckpt.pt, grpo_log.jsonl (one line per GRPO step, then the validations), val samples
init_from = ''  # the starting policy: a model.py checkpoint (e.g. sft.py's out-sft/ckpt.pt)
overwrite = False  # replace an existing out_dir/ckpt.pt (else grpo.py refuses)
tokenizer_dir = ''  # bpe.py tokenizer folder; '' = the one the checkpoint names, else byte-level
seed = 1337  # rollouts, question order and shuffles are all seeded from this
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda | cuda:1 ...
dtype = 'bfloat16'  # autocast dtype on cuda: bfloat16 | float32
# data: JSONL of {question, answer} (data/arith/prepare.py) or {prompt, ground_truth}
train_path = ''  # the questions rollouts are drawn from (the training split)
val_path = ''  # the validation split (choose the learning rate here; report the test split once, with sft.py)
prompt_template = 'r1_zero'  # r1_zero | question_only | a file with a '{question}' slot (as sft.py)
# GRPO (the course's defaults)
n_grpo_steps = 200  # rollout batches (each followed by epochs_per_rollout_batch passes of optimizer steps)
learning_rate = 1e-5  # AdamW learning rate (constant after the warm-up)
warmup_steps = 0  # linear lr warm-up over the first N GRPO steps (0 = none; see grpo_lr)
advantage_eps = 1e-6  # added to the group std before dividing
rollout_batch_size = 256  # responses per rollout batch (= questions x group_size)
group_size = 8  # responses sampled per question
sampling_temperature = 1.0  # rollout temperature
sampling_min_tokens = 4  # no end-of-text / stop string before this many tokens (as in the course's vLLM setup)
sampling_max_tokens = 1024  # longest rollout response
epochs_per_rollout_batch = 1  # passes over each rollout batch; > 1 is off-policy (use grpo_clip)
train_batch_size = 256  # responses per optimizer step; on-policy when equal to rollout_batch_size
gradient_accumulation_steps = 128  # micro-batches per optimizer step
loss_type = 'reinforce_with_baseline'  # no_baseline | reinforce_with_baseline | grpo_clip | grpo_no_clip
use_std_normalization = True  # divide the advantages by the group std (off = Dr. GRPO's unscaled advantages)
length_normalization = 'masked_mean'  # masked_mean (per-sequence mean) | masked_normalize (sum / sampling_max_tokens)
cliprange = 0.2  # the epsilon of grpo_clip
kl_beta = 0.0  # weight of the KL penalty to the starting policy (0 = off, no reference model kept)
weight_decay = 0.0  # AdamW weight decay
adam_beta1 = 0.9  # AdamW beta1
adam_beta2 = 0.95  # AdamW beta2
grad_clip = 1.0  # clip the global gradient norm (0 = off)
time_budget_s = 0.0  # stop after this many seconds of GRPO (0 = no limit); the final validation still runs
# validation
eval_interval = 10  # validate every N GRPO steps (and at the end); -1 = only at the end
eval_n = 1024  # validation questions per evaluation (-1 = all)
eval_max_tokens = 0  # max new tokens at validation; 0 = sampling_max_tokens
gen_batch_size = 256  # rows per generation batch
# -----------------------------------------------------------------------------

LOSS_TYPES = ('no_baseline', 'reinforce_with_baseline', 'grpo_clip', 'grpo_no_clip')
LENGTH_NORMALIZATIONS = ('masked_mean', 'masked_normalize')


def default_config():
    """This file's config keys and their current values (the globals above, as the command line left them)."""
    return {k: v for k, v in globals().items() if k[0] != '_' and k != k.upper() and isinstance(v, (int, float, str))}


# 1) Advantages: rewards normalized within each group of responses to the same question

def compute_group_normalized_rewards(reward_fn, rollout_responses, repeated_ground_truths, group_size,
                                     advantage_eps, normalize_by_std):
    """Score every response and turn the rewards into advantages, group by group.

    rollout_responses[i] answers the question whose ground truth is repeated_ground_truths[i]; responses come in
    consecutive blocks of group_size per question (what sft.generate(n=group_size) returns).
    A_i = r_i - mean(group), then / (std(group) + advantage_eps) when normalize_by_std. The std is the UNBIASED
    one (torch's default, divides by G-1), as in the course: [0.2, 0.5, 0, 0.4] -> A_0 = -0.075 / 0.2217 = -0.338.
    Returns (advantages (B,), raw_rewards (B,), metadata dict of reward statistics)."""
    B = len(rollout_responses)
    if B != len(repeated_ground_truths):
        raise ValueError(f"{B} responses but {len(repeated_ground_truths)} ground truths: pass one ground truth per "
                         f"response (each question's answer repeated group_size times)")
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"group_size={group_size} must divide the number of responses ({B}): responses come in "
                         f"consecutive blocks of group_size per question")
    if normalize_by_std and group_size < 2:
        raise ValueError("normalize_by_std needs group_size >= 2 (the std of one sample is undefined)")
    scores = [reward_fn(r, gt) for r, gt in zip(rollout_responses, repeated_ground_truths)]
    raw = torch.tensor([s['reward'] for s in scores], dtype=torch.float32)  # (B,)
    groups = raw.view(-1, group_size)  # (n_questions, G)
    adv = groups - groups.mean(dim=1, keepdim=True)  # the group mean is GRPO's baseline
    if normalize_by_std:
        adv = adv / (groups.std(dim=1, keepdim=True) + advantage_eps)  # unbiased std (G-1)
    meta = {'reward_mean': raw.mean().item(), 'reward_std': raw.std().item() if B > 1 else 0.0,
            'reward_max': raw.max().item(), 'reward_min': raw.min().item(),
            'format_reward_mean': sum(s['format_reward'] for s in scores) / B,
            'answer_reward_mean': sum(s['answer_reward'] for s in scores) / B,
            # groups where every response got the same reward carry no learning signal (all advantages are 0)
            'frac_groups_all_same': (groups.max(dim=1).values == groups.min(dim=1).values).float().mean().item()}
    return adv.reshape(-1), raw, meta


# 2) Per-token policy-gradient losses

def _check_adv(name, adv, policy_log_probs):
    """(B,) or (B, 1) advantages/rewards for (B, T) log-probs -> (B, 1), or a clear error."""
    if policy_log_probs.dim() != 2:
        raise ValueError(f"policy_log_probs must be (batch, tokens), got shape {tuple(policy_log_probs.shape)}")
    if adv.dim() == 1:
        adv = adv[:, None]
    if adv.shape != (policy_log_probs.shape[0], 1):
        raise ValueError(f"{name} has shape {tuple(adv.shape)}; expected ({policy_log_probs.shape[0]}, 1) for "
                         f"policy_log_probs of shape {tuple(policy_log_probs.shape)}")
    return adv.to(policy_log_probs.device, policy_log_probs.dtype)


def compute_naive_policy_gradient_loss(raw_rewards_or_advantages, policy_log_probs):
    """REINFORCE's per-token loss -A * log p(token), (B, 1) x (B, T) -> (B, T). Its gradient is the policy gradient
    A * grad log p (Williams 1992); A = raw reward (no baseline) or a group-normalized advantage."""
    adv = _check_adv('raw_rewards_or_advantages', raw_rewards_or_advantages, policy_log_probs)
    return -adv * policy_log_probs


def compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange):
    """PPO's clipped surrogate per token (as in GRPO): -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with
    ratio = pi_theta / pi_old = exp(log p - old log p). Once the policy has moved more than eps away from the one
    that sampled the data (in the direction A favours), the clipped term is constant: no more gradient there.
    Returns (loss (B, T), metadata {'clipped': bool (B, T) where the clipped term was the smaller one, 'ratio'})."""
    adv = _check_adv('advantages', advantages, policy_log_probs)
    if old_log_probs.shape != policy_log_probs.shape:
        raise ValueError(f"old_log_probs {tuple(old_log_probs.shape)} and policy_log_probs "
                         f"{tuple(policy_log_probs.shape)} must have the same shape")
    ratio = torch.exp(policy_log_probs - old_log_probs)  # (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, {'clipped': (clipped < unclipped).detach(), 'ratio': ratio.detach()}


def compute_policy_gradient_loss(policy_log_probs, loss_type, raw_rewards=None, advantages=None, old_log_probs=None,
                                 cliprange=None):
    """Dispatch to the per-token loss of loss_type -> (loss (B, T), metadata):
      no_baseline              -R log p           (raw rewards)
      reinforce_with_baseline  -A log p           (group-normalized advantages)
      grpo_clip                -min(ratio A, clip(ratio) A)
      grpo_no_clip             -ratio A           (the unclipped importance-weighted surrogate, for the ablation)"""
    def need(**kw):
        missing = [k for k, v in kw.items() if v is None]
        if missing:
            raise ValueError(f"loss_type='{loss_type}' needs {', '.join(missing)}")
    if loss_type == 'no_baseline':
        need(raw_rewards=raw_rewards)
        return compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}
    if loss_type == 'reinforce_with_baseline':
        need(advantages=advantages)
        return compute_naive_policy_gradient_loss(advantages, policy_log_probs), {}
    if loss_type in ('grpo_clip', 'grpo_no_clip'):  # no_clip = an infinite clip range: -ratio A
        eps = cliprange if loss_type == 'grpo_clip' else float('inf')
        need(advantages=advantages, old_log_probs=old_log_probs, cliprange=eps)
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, eps)
    raise ValueError(f"unknown loss_type '{loss_type}': use one of {', '.join(LOSS_TYPES)}")


# 3) Masked reductions and one micro-batch step

def masked_mean(tensor, mask, dim=None):
    """Mean of tensor over the elements where mask is true: sum(tensor * mask) / sum(mask) over dim (all elements
    when None). A row with an empty mask gives NaN (0/0) on purpose: a silent 0 would hide an empty response."""
    if tensor.shape != mask.shape:
        raise ValueError(f"tensor {tuple(tensor.shape)} and mask {tuple(mask.shape)} must have the same shape")
    m = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * m).sum() / m.sum()
    return (tensor * m).sum(dim=dim) / m.sum(dim=dim)


def grpo_microbatch_train_step(policy_log_probs, response_mask, gradient_accumulation_steps, loss_type,
                               raw_rewards=None, advantages=None, old_log_probs=None, cliprange=None,
                               length_normalization='masked_mean', normalize_constant=None, ref_log_probs=None,
                               kl_beta=0.0):
    """Per-token loss -> one number per sequence -> mean over the batch -> / gradient_accumulation_steps ->
    backward(). Gradients ADD UP over micro-batches: nothing here zeroes them (the loop does, after opt.step()).

    length_normalization: 'masked_mean' divides each sequence's summed loss by its own length (GRPO); a long
    response then weighs each of its tokens less, so long wrong answers are punished less per token.
    'masked_normalize' divides by one constant (normalize_constant, e.g. the max generation length: Dr. GRPO), so
    every token of every response weighs the same.
    kl_beta > 0 adds beta * KL(pi || pi_ref) per token with the k3 estimator exp(ref - log p) - (ref - log p) - 1
    (unbiased, always >= 0; Schulman's "Approximating KL divergence", used by DeepSeekMath's GRPO).
    Returns (loss (scalar, detached, already divided by gradient_accumulation_steps), metadata)."""
    if policy_log_probs.shape != response_mask.shape:
        raise ValueError(f"policy_log_probs {tuple(policy_log_probs.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must have the same shape")
    per_token, meta = compute_policy_gradient_loss(policy_log_probs, loss_type, raw_rewards, advantages,
                                                   old_log_probs, cliprange)  # (B, T)
    if kl_beta > 0:
        if ref_log_probs is None:
            raise ValueError("kl_beta > 0 needs ref_log_probs (log-probs of the reference policy)")
        d = ref_log_probs - policy_log_probs
        kl = torch.exp(d) - d - 1  # (B, T)
        per_token = per_token + kl_beta * kl
        meta['kl'] = masked_mean(kl.detach(), response_mask)
    if length_normalization == 'masked_mean':
        per_seq = masked_mean(per_token, response_mask, dim=-1)  # (B,)
    elif length_normalization == 'masked_normalize':
        if normalize_constant is None:
            raise ValueError("length_normalization='masked_normalize' needs normalize_constant (e.g. the max "
                             "generation length)")
        per_seq = sft.masked_normalize(per_token, response_mask, normalize_constant, dim=-1)  # (B,)
    else:
        raise ValueError(f"unknown length_normalization '{length_normalization}': use one of "
                         f"{', '.join(LENGTH_NORMALIZATIONS)}")
    loss = per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    if 'clipped' in meta:
        meta['clip_fraction'] = masked_mean(meta['clipped'].float(), response_mask)
    return loss.detach(), meta


# 4) The GRPO train loop

def grpo_lr(step, learning_rate, warmup_steps):
    """Learning rate at GRPO step `step` (0-based): linear warm-up to learning_rate over warmup_steps, then constant.
    Why warm up: Adam's first updates are full-size (m / sqrt(v) is about +-1 for every weight, whatever the
    gradient's scale), and policy gradients from a few hundred rollouts are noisy: without warm-up a good SFT policy
    can lose much of its accuracy in the first GRPO steps before RL recovers it (results/speedrun_gpu.md)."""
    if warmup_steps <= 0:
        return learning_rate
    return learning_rate * min(1.0, (step + 1) / warmup_steps)


def check_config(cfg):
    """The ranges and combinations of a GRPO config: the first problem as (key, message), or None."""
    c, losses, norms = cfg, ', '.join(LOSS_TYPES), ', '.join(LENGTH_NORMALIZATIONS)
    checks = [(k, c[k] >= 1, '>= 1') for k in ('n_grpo_steps', 'rollout_batch_size', 'group_size', 'train_batch_size',
                                                'gradient_accumulation_steps', 'epochs_per_rollout_batch',
                                                'sampling_max_tokens', 'gen_batch_size')] + [
        ('learning_rate', c['learning_rate'] > 0, '> 0'), ('sampling_temperature', c['sampling_temperature'] > 0,
                                                           '> 0'),
        ('loss_type', c['loss_type'] in LOSS_TYPES, f"one of {losses}"), ('cliprange', c['cliprange'] > 0, '> 0'),
        ('length_normalization', c['length_normalization'] in LENGTH_NORMALIZATIONS, f"one of {norms}"),
        ('rollout_batch_size', c['rollout_batch_size'] % max(1, c['group_size']) == 0, 'divisible by group_size'),
        ('train_batch_size', c['train_batch_size'] % max(1, c['gradient_accumulation_steps']) == 0,
         'divisible by gradient_accumulation_steps'), ('train_batch_size', c['train_batch_size'] >= c['group_size'],
                                                       '>= group_size'),
        ('rollout_batch_size', c['rollout_batch_size'] % max(1, c['train_batch_size']) == 0,
         'a multiple of train_batch_size (optimizer steps per epoch over a rollout batch)'),
        ('group_size', c['group_size'] >= 2 or not c['use_std_normalization'], '>= 2 with use_std_normalization'),
        ('eval_n', c['eval_n'] > 0 or c['eval_n'] == -1, '> 0 or -1 (all)'), ('kl_beta', c['kl_beta'] >= 0, '>= 0'),
        ('grad_clip', c['grad_clip'] >= 0, '>= 0 (0 = off)')]
    return next(((k, f"{k}={c[k]!r} must be {want}") for k, ok, want in checks if not ok), None)


def response_tensors(prompt_ids, outs, pad, eos_id):
    """Rollout rows -> (input_ids, labels, response_mask) for the log-prob pass. A response that ended with
    end-of-text gets that token back (generation strips it from the text): the policy must learn to stop too."""
    resp = [o['token_ids'] + ([eos_id] if o['finish_reason'] == 'eos' and eos_id is not None else [])
            for o in outs]
    resp = [r if r else [pad] for r in resp]  # never an empty response (its mask would be empty: NaN loss)
    b = sft.collate_prompt_and_output(prompt_ids, resp, pad)
    return b['input_ids'], b['labels'], b['response_mask']


def train_grpo(policy, tokenizer, questions, val_questions, cfg, reward_fn=sft.r1_zero_reward_fn, out_dir='',
               log=print, tag='grpo'):
    """GRPO on questions [{'prompt', 'ground_truth'}], validating on val_questions (the validation split). cfg: a
    dict of this file's config keys (missing keys take the defaults at the top). Returns the history
    {'log': [per GRPO step], 'evals': [per validation], 'steps', 'time_s', 'gen_s', 'train_s', 'eval_s', ...}.

    Each GRPO step:
      1) draw rollout_batch_size / group_size questions, sample group_size responses each (min/max tokens,
         temperature, stop at '</answer>');
      2) score them, group-normalized advantages;
      3) old log-probs (clip losses) and reference log-probs (KL) once, under torch.inference_mode;
      4) epochs_per_rollout_batch passes over the rollout batch in shuffled train batches of train_batch_size,
         each one optimizer step of gradient_accumulation_steps micro-batches, clipped."""
    defaults = default_config()
    unknown = sorted(set(cfg) - set(defaults))
    cfg = {**defaults, **cfg}
    problem = ('', f"unknown config key(s) {unknown}") if unknown else check_config(cfg) or \
        (not questions and ('', 'no training questions'))
    if problem:
        raise ValueError(problem[1])
    dev = next(policy.parameters()).device
    rng = random.Random(cfg['seed'])
    torch.manual_seed(cfg['seed'])
    pad, eos = sft.pad_id_of(tokenizer), getattr(tokenizer, 'eot_id', None)
    n_q = cfg['rollout_batch_size'] // cfg['group_size']
    micro = cfg['train_batch_size'] // cfg['gradient_accumulation_steps']
    steps_per_epoch = cfg['rollout_batch_size'] // cfg['train_batch_size']
    need_old = cfg['loss_type'] in ('grpo_clip', 'grpo_no_clip')
    gen = dict(seed=cfg['seed'], batch_size=cfg['gen_batch_size'], dtype=cfg['dtype'])
    policy.clear_generation_cache()  # cached KV caches / CUDA graphs cannot be deep-copied
    ref_model = copy.deepcopy(policy).eval().requires_grad_(False) if cfg['kl_beta'] > 0 else None  # frozen start
    opt = sft.adamw(policy, cfg['learning_rate'], cfg['weight_decay'], (cfg['adam_beta1'], cfg['adam_beta2']))
    hist = {'log': [], 'evals': [], 'gen_s': 0.0, 'train_s': 0.0, 'eval_s': 0.0, 'rollout_tokens': 0}

    def validate(step):  # greedy, on the validation split
        if val_questions:
            t = time.time()
            n = cfg['eval_n']
            m = sft.evaluate(policy, tokenizer, val_questions[:n] if n > 0 else val_questions, reward_fn,
                             cfg['eval_max_tokens'] or cfg['sampling_max_tokens'], **gen,
                             log_path=os.path.join(out_dir, f'{tag}_val_step{step}.jsonl') if out_dir else None)
            hist['eval_s'] += time.time() - t
            hist['evals'].append({'step': step, 'wall_s': time.time() - t0, **m})
            log(f"{tag} step {step}: val accuracy {m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}], "
                f"format {m['format_rate']:.3f}, len {m['mean_len']:.1f}")

    def save(step):
        if out_dir:
            sft.save_ckpt(os.path.join(out_dir, 'ckpt.pt'), policy, opt, step, config=cfg,
                          tokenizer_dir=getattr(tokenizer, 'tokenizer_dir', cfg['tokenizer_dir']))
            sft.write_jsonl(os.path.join(out_dir, f'{tag}_log.jsonl'), hist['log'] + hist['evals'])

    t0 = time.time()
    validate(0)
    for step in range(cfg['n_grpo_steps']):
        if cfg['time_budget_s'] > 0 and time.time() - t0 >= cfg['time_budget_s']:
            log(f"{tag}: time budget of {cfg['time_budget_s']:.0f}s reached after {step} GRPO steps")
            break
        # 1) rollouts: group_size samples of each question, consecutive in `outs`
        srng = random.Random(cfg['seed'] * 1_000_003 + step)  # per-step seed: the same run draws the same batches
        batch_q = srng.sample(questions, n_q) if n_q <= len(questions) else \
            [questions[srng.randrange(len(questions))] for _ in range(n_q)]
        t = time.time()
        policy.eval()
        with sft.amp(dev, cfg['dtype']):
            outs = sft.generate(policy, tokenizer, [q['prompt'] for q in batch_q], cfg['sampling_max_tokens'],
                                cfg['sampling_temperature'], n=cfg['group_size'], min_tokens=cfg['sampling_min_tokens'],
                                seed=srng.randrange(2 ** 31), batch_size=cfg['gen_batch_size'])
        gen_s, n_new = time.time() - t, sum(len(o['token_ids']) for o in outs)
        hist['gen_s'] += gen_s
        hist['rollout_tokens'] += n_new
        # 2) rewards and advantages
        gts = [q['ground_truth'] for q in batch_q for _ in range(cfg['group_size'])]
        adv, raw, rmeta = compute_group_normalized_rewards(reward_fn, [o['text'] for o in outs], gts,
                                                           cfg['group_size'], cfg['advantage_eps'],
                                                           cfg['use_std_normalization'])
        t = time.time()
        p_ids = [ids for q in batch_q for ids in [tokenizer.encode(q['prompt'])] * cfg['group_size']]
        B = len(outs)

        def rows(idx):  # micro-batch tensors, built per micro-batch (little padding)
            inp, lab, mask = response_tensors([p_ids[i] for i in idx], [outs[i] for i in idx], pad, eos)
            return inp.to(dev), lab.to(dev), mask.to(dev)

        # 3) old / reference log-probs, once per rollout batch, no graph (inference_mode)
        old_lp, ref_lp = [None] * B, [None] * B
        if need_old or ref_model is not None:
            with torch.inference_mode(), sft.amp(dev, cfg['dtype']):
                for s in range(0, B, micro):
                    idx = list(range(s, min(B, s + micro)))
                    inp, lab, _ = rows(idx)
                    for store, mdl in ((old_lp, policy if need_old else None), (ref_lp, ref_model)):
                        if mdl is not None:
                            lp = sft.get_response_log_probs(mdl, inp, lab)['log_probs']
                            for k, i in enumerate(idx):
                                store[i] = lp[k]  # (T_micro,) rows; re-padded per micro-batch below
        # 4) epochs of optimizer steps over the rollout batch, all at this GRPO step's learning rate
        for g in opt.param_groups:
            g['lr'] = grpo_lr(step, cfg['learning_rate'], cfg['warmup_steps'])
        policy.train()
        stats = {'loss': 0.0, 'entropy': [], 'clip_fraction': [], 'grad_norm': [], 'kl': []}
        for epoch in range(cfg['epochs_per_rollout_batch']):
            perm = list(range(B))
            rng.shuffle(perm)
            for k in range(steps_per_epoch):
                tb = perm[k * cfg['train_batch_size']:(k + 1) * cfg['train_batch_size']]
                for m in range(cfg['gradient_accumulation_steps']):
                    idx = tb[m * micro:(m + 1) * micro]
                    inp, lab, mask = rows(idx)
                    T = inp.shape[1]

                    def stack(store):  # per-row stored log-probs, cut/padded to this micro-batch's length T
                        if store[idx[0]] is None:
                            return None
                        out = torch.zeros(len(idx), T, device=dev)
                        for j, i in enumerate(idx):
                            n = min(T, store[i].shape[0])
                            out[j, :n] = store[i][:n].float()
                        return out
                    with sft.amp(dev, cfg['dtype']):
                        r = sft.get_response_log_probs(policy, inp, lab, return_token_entropy=True)
                    loss, meta = grpo_microbatch_train_step(
                        r['log_probs'], mask, cfg['gradient_accumulation_steps'], cfg['loss_type'],
                        raw_rewards=raw[idx].to(dev)[:, None], advantages=adv[idx].to(dev)[:, None],
                        old_log_probs=stack(old_lp), cliprange=cfg['cliprange'],
                        length_normalization=cfg['length_normalization'],
                        normalize_constant=cfg['sampling_max_tokens'], ref_log_probs=stack(ref_lp),
                        kl_beta=cfg['kl_beta'])
                    stats['loss'] += loss.item()  # NOTE: a CPU-GPU sync point (small next to generation)
                    stats['entropy'].append(masked_mean(r['token_entropy'], mask).item())
                    for key in ('clip_fraction', 'kl'):
                        if key in meta:
                            stats[key].append(meta[key].item())
                # clip_grad_norm_ returns the norm BEFORE clipping (what we log)
                gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg['grad_clip'] or float('inf'))
                stats['grad_norm'].append(gn.item())
                opt.step()
                opt.zero_grad(set_to_none=True)
        n_opt = cfg['epochs_per_rollout_batch'] * steps_per_epoch
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        train_s = time.time() - t
        hist['train_s'] += train_s
        mean = lambda xs: sum(xs) / len(xs) if xs else float('nan')  # noqa: E731
        rec = {'step': step + 1, 'wall_s': time.time() - t0, 'loss': stats['loss'] / n_opt,
               'grad_norm': mean(stats['grad_norm']), 'entropy': mean(stats['entropy']),
               'clip_fraction': mean(stats['clip_fraction']), 'kl': mean(stats['kl']), 'response_len': n_new / B,
               'train_reward': rmeta['reward_mean'], 'train_format_reward': rmeta['format_reward_mean'],
               'train_answer_reward': rmeta['answer_reward_mean'],
               'frac_groups_all_same': rmeta['frac_groups_all_same'],
               'gen_s': gen_s, 'train_s': train_s, 'rollout_tokens_per_s': n_new / max(gen_s, 1e-9),
               'optimizer_steps': (step + 1) * n_opt, 'lr': opt.param_groups[0]['lr']}
        hist['log'].append(rec)
        log(f"{tag} step {step + 1}/{cfg['n_grpo_steps']}: reward {rec['train_reward']:.3f} (format "
            f"{rec['train_format_reward']:.3f}), loss {rec['loss']:.4f}, grad norm {rec['grad_norm']:.3f}, entropy "
            f"{rec['entropy']:.3f}, len {rec['response_len']:.1f}, clip {rec['clip_fraction']:.3f}, gen {gen_s:.1f}s "
            f"({rec['rollout_tokens_per_s']:,.0f} tok/s), train {train_s:.1f}s")
        if cfg['eval_interval'] > 0 and (step + 1) % cfg['eval_interval'] == 0 and step + 1 < cfg['n_grpo_steps']:
            validate(step + 1)
            save(step + 1)
    hist['steps'] = len(hist['log'])
    if not hist['evals'] or hist['evals'][-1]['step'] != hist['steps']:
        validate(hist['steps'])
    hist['time_s'] = time.time() - t0
    hist['rollout_tokens_per_s'] = hist['rollout_tokens'] / max(hist['gen_s'], 1e-9)
    save(hist['steps'])
    policy.eval().clear_generation_cache()
    return hist


# 5) Command line: every value checked and every input read before anything is written

def die(msg):
    """A user error: one line naming the key or file and the fix, exit code 2, no traceback, nothing written."""
    print(f"grpo.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    """GRPO from --init_from on --train_path's questions, validated on --val_path (reads no sys.argv itself)."""
    cfg = default_config()
    problem = check_config(cfg) or next(((k, f"{k}={cfg[k]!r} must be {want}") for k, ok, want in (
        ('dtype', dtype in ('bfloat16', 'float32'), 'bfloat16 or float32'),
        ('init_from', os.path.isfile(init_from), "an existing checkpoint (sft.py's out-sft/ckpt.pt)"),
        ('train_path', os.path.isfile(train_path), 'an existing JSONL of questions (data/arith/prepare.py)'),
        ('val_path', not val_path or os.path.isfile(val_path), "an existing JSONL (or '' for no validation)"))
        if not ok), None)
    if problem:
        die(f"--{problem[1]}")
    out = os.path.join(out_dir, 'ckpt.pt')
    if os.path.abspath(out) in {os.path.abspath(p) for p in (init_from, train_path, val_path) if p}:
        die(f"{out} is an input and would be overwritten: choose another --out_dir")
    if os.path.exists(out) and not overwrite:
        die(f"{out} exists: choose another --out_dir, or --overwrite=True to replace it")
    try:
        policy, tok = sft.load_policy(init_from, device, tokenizer_dir)
        template = sft.load_prompt_template(prompt_template)
        train_q = sft.load_problems(train_path, template)
        val_q = sft.load_problems(val_path, template) if val_path else []
        ctx = policy.config.context_length
        long = [p for p in train_q + val_q if len(tok.encode(p['prompt'])) >= ctx]
        if long:  # (an empty split is refused by load_problems)
            raise ValueError(f"{len(long)} prompts have no room in the model's context ({ctx} tokens): use a shorter "
                             f"--prompt_template")
    except (ValueError, OSError) as e:
        die(str(e))
    print(f"GRPO: {len(train_q)} training questions, {len(val_q)} validation, {loss_type}, "
          f"{rollout_batch_size // group_size} x {group_size} rollouts per batch")
    h = train_grpo(policy, tok, train_q, val_q, cfg, sft.REWARD_FNS.get(prompt_template, sft.r1_zero_reward_fn),
                   out_dir)
    print(f"done: {h['steps']} GRPO steps in {h['time_s']:.0f}s, {h['rollout_tokens_per_s']:,.0f} rollout tokens/s, "
          f"generation {h['gen_s'] / h['time_s']:.0%} of the time")


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

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
  4) the train loop: rollouts with sft.py's KV-cache Engine (or vLLM for HF models), old log-probs once per
     rollout batch under torch.inference_mode, gradient accumulation, clipping, an optional KL penalty to a frozen
     reference policy, periodic validation, JSONL logs and PNG curves; rollouts on a second GPU when there is one;
  5) a demo on sft.py's synthetic arithmetic task: pretrain -> short SFT -> GRPO, plus the course's ablations.

grpo.py imports its grader, log-probs, tokenizer, task, checkpoint loading and generation engine from sft.py.

Run (one CPU or one GPU; no torchrun: post-training of small models fits one device, a second GPU does rollouts):
    python grpo.py --mode=demo                             # CPU smoke size: base -> SFT -> GRPO + ablations, minutes
    python grpo.py --mode=demo --demo_preset=gpu           # the H100 preset (< 9 minutes, see results/grpo_demo_gpu.md)
    python grpo.py --init_from=out-sft/ckpt.pt             # GRPO on the synthetic task from an SFT checkpoint
    python grpo.py --init_from=out-sft/ckpt.pt --loss_type=grpo_clip --epochs_per_rollout_batch=4 \\
        --train_batch_size=64 --gradient_accumulation_steps=16   # off-policy: 16 optimizer steps per rollout batch
    python grpo.py --init_from=resume                      # continue out_dir/ckpt.pt
"""
import contextlib
import copy
import math
import os
import random
import time

import torch

import sft

# -----------------------------------------------------------------------------
# default config values: the course's GRPO defaults (override with --key=value or a config file)
# I/O
mode = 'train'  # train | demo
out_dir = 'out-grpo'  # checkpoint, log JSONL, curves, evaluation samples
results_dir = 'results'  # where --mode=demo writes its tables and plots
init_from = ''  # the starting policy: a model.py checkpoint (e.g. sft.py's), 'resume' (out_dir/ckpt.pt) or 'hf:<name>'
tokenizer_dir = ''  # bpe.py tokenizer folder; '' = the one the checkpoint names, else byte-level
seed = 1337  # rollouts, question order and shuffles are all seeded from this
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # where the policy trains
rollout_device = 'auto'  # where rollouts run: auto (cuda:1 when training on cuda:0 and 2 GPUs exist) | cpu | cuda:1
dtype = 'bfloat16'  # autocast dtype on cuda: bfloat16 | float32
# data
train_path = ''  # JSONL of {"prompt", "ground_truth"} questions; '' = sft.py's synthetic task (training split)
val_path = ''  # JSONL of {"prompt", "ground_truth"}; '' = the synthetic task's held-out split
prompt_template = 'r1_zero'  # used for the synthetic task: r1_zero | question_only | a path
task_n_train = 20000  # synthetic questions to draw rollouts from
task_n_val = 1024  # synthetic held-out questions (the course validates on >= 1,024)
task_min_steps = 2  # operations per synthetic problem, from ...
task_max_steps = 3  # ... to (inclusive)
task_max_number = 20  # operands in 1..task_max_number
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
time_budget_s = 0.0  # stop after this many seconds of GRPO (0 = no limit); the final evaluation still runs
# evaluation and logging
eval_interval = 10  # validate every N GRPO steps (and at the end); -1 = only at the end
eval_n = 1024  # held-out questions per validation (-1 = all)
eval_max_tokens = 0  # max new tokens at validation; 0 = sampling_max_tokens
engine_backend = 'auto'  # auto | kv (sft.py Engine) | hf | vllm (HF models only, if installed)
gen_batch_size = 256  # rows per generation batch
save_checkpoint = True  # write out_dir/ckpt.pt at each validation and at the end (atomic)
# demo
demo_preset = 'cpu'  # cpu (tiny, a few minutes) | gpu (one H100, < 9 minutes in one call)
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in _config_keys}  # noqa: F821 (set by configurator.py)
# -----------------------------------------------------------------------------

LOSS_TYPES = ('no_baseline', 'reinforce_with_baseline', 'grpo_clip', 'grpo_no_clip')
LENGTH_NORMALIZATIONS = ('masked_mean', 'masked_normalize')


# =============================================================================
# 1) Advantages: rewards normalized within each group of responses to the same question
# =============================================================================

def compute_group_normalized_rewards(reward_fn, rollout_responses, repeated_ground_truths, group_size,
                                     advantage_eps, normalize_by_std):
    """Score every response and turn the rewards into advantages, group by group.

    rollout_responses[i] answers the question whose ground truth is repeated_ground_truths[i]; responses come in
    consecutive blocks of group_size per question (what sft.Engine.generate(n=group_size) returns).
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


# =============================================================================
# 2) Per-token policy-gradient losses
# =============================================================================

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
    if loss_type == 'grpo_clip':
        need(advantages=advantages, old_log_probs=old_log_probs, cliprange=cliprange)
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange)
    if loss_type == 'grpo_no_clip':
        need(advantages=advantages, old_log_probs=old_log_probs)
        adv = _check_adv('advantages', advantages, policy_log_probs)
        if old_log_probs.shape != policy_log_probs.shape:
            raise ValueError(f"old_log_probs {tuple(old_log_probs.shape)} and policy_log_probs "
                             f"{tuple(policy_log_probs.shape)} must have the same shape")
        ratio = torch.exp(policy_log_probs - old_log_probs)
        return -ratio * adv, {'ratio': ratio.detach()}
    raise ValueError(f"unknown loss_type '{loss_type}': use one of {', '.join(LOSS_TYPES)}")


# =============================================================================
# 3) Masked reductions and one micro-batch step
# =============================================================================

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


# =============================================================================
# 4) The GRPO train loop
# =============================================================================

def grpo_lr(step, learning_rate, warmup_steps):
    """Learning rate at GRPO step `step` (0-based): linear warm-up to learning_rate over warmup_steps, then constant.
    Why warm up: Adam's first updates are full-size (m / sqrt(v) is about +-1 for every weight, whatever the
    gradient's scale), and policy gradients from a few hundred rollouts are noisy; at lr 1e-4 the speedrun's
    SFT policy lost half its accuracy in the first ~10 GRPO steps before RL recovered it (results/speedrun_gpu.md)."""
    if warmup_steps <= 0:
        return learning_rate
    return learning_rate * min(1.0, (step + 1) / warmup_steps)


def _check_config(cfg):
    """The course's asserts, with the values in the message."""
    assert cfg['train_batch_size'] % cfg['gradient_accumulation_steps'] == 0, \
        (f"train_batch_size={cfg['train_batch_size']} must be divisible by "
         f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']}")
    assert cfg['rollout_batch_size'] % cfg['group_size'] == 0, \
        f"rollout_batch_size={cfg['rollout_batch_size']} must be divisible by group_size={cfg['group_size']}"
    assert cfg['train_batch_size'] >= cfg['group_size'], \
        f"train_batch_size={cfg['train_batch_size']} must be >= group_size={cfg['group_size']}"
    assert cfg['rollout_batch_size'] % cfg['train_batch_size'] == 0, \
        (f"rollout_batch_size={cfg['rollout_batch_size']} must be a multiple of "
         f"train_batch_size={cfg['train_batch_size']} (optimizer steps per epoch over a rollout batch)")
    assert cfg['loss_type'] in LOSS_TYPES, f"loss_type={cfg['loss_type']!r}: use one of {LOSS_TYPES}"
    assert cfg['length_normalization'] in LENGTH_NORMALIZATIONS, \
        f"length_normalization={cfg['length_normalization']!r}: use one of {LENGTH_NORMALIZATIONS}"
    if cfg['epochs_per_rollout_batch'] > 1 and cfg['loss_type'] in ('no_baseline', 'reinforce_with_baseline'):
        print(f"{'!' * 80}\nWARNING: {cfg['epochs_per_rollout_batch']} epochs per rollout batch with loss_type="
              f"{cfg['loss_type']}: the later epochs are off-policy and nothing corrects for it; use grpo_clip\n"
              f"{'!' * 80}")


def _resolve_rollout_device(cfg):
    """'auto': a second GPU does the rollouts when training runs on the first and a second exists."""
    rd = cfg['rollout_device']
    if rd == 'auto':
        dev = torch.device(cfg['device'])
        if dev.type == 'cuda' and torch.cuda.device_count() >= 2:
            return f"cuda:{1 if (dev.index or 0) == 0 else 0}"
        return cfg['device']
    return rd


def response_tensors(prompt_ids, outs, pad, eos_id):
    """Rollout rows -> (input_ids, labels, response_mask) for the log-prob pass. A response that ended with
    end-of-text gets that token back (the Engine strips it from the text): the policy must learn to stop too."""
    resp = [o['token_ids'] + ([eos_id] if o['finish_reason'] == 'eos' and eos_id is not None else [])
            for o in outs]
    resp = [r if r else [pad] for r in resp]  # never an empty response (its mask would be empty: NaN loss)
    b = sft.collate_prompt_and_output(prompt_ids, resp, pad)
    return b['input_ids'], b['labels'], b['response_mask']


def plot_grpo(path, log, evals, title):
    """Training curves as one PNG: rewards, validation accuracy (vs step and vs wall-clock), loss, grad norm,
    entropy, clip fraction, response length."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    ax = axes.ravel()
    steps = [r['step'] for r in log]
    for key, label in (('train_reward', 'total'), ('train_format_reward', 'format'), ('train_answer_reward', 'answer')):
        ax[0].plot(steps, [r[key] for r in log], label=label, lw=1)
    ax[0].set_title('train rewards (rollouts)')
    ax[0].legend()
    if evals:
        ax[1].plot([e['step'] for e in evals], [e['accuracy'] for e in evals], marker='o', label='accuracy')
        ax[1].plot([e['step'] for e in evals], [e['format_rate'] for e in evals], marker='.', ls='--',
                   label='format rate')
        ax[1].legend()
        ax[2].plot([e['wall_s'] for e in evals], [e['accuracy'] for e in evals], marker='o')
    ax[1].set_title('validation (greedy)')
    ax[1].set_ylim(-0.02, 1.02)
    ax[2].set_title('validation accuracy vs wall-clock')
    ax[2].set_xlabel('seconds')
    ax[2].set_ylim(-0.02, 1.02)
    for a, key, t in ((ax[3], 'loss', 'loss'), (ax[4], 'grad_norm', 'grad norm (before clipping)'),
                      (ax[5], 'entropy', 'token entropy (rollouts)'), (ax[6], 'clip_fraction', 'clip fraction'),
                      (ax[7], 'response_len', 'mean response length (tokens)')):
        ys = [r.get(key, float('nan')) for r in log]
        a.plot(steps, ys, lw=1)
        a.set_title(t)
        if all(math.isnan(y) for y in ys):  # e.g. no clip fraction for the on-policy losses
            a.text(0.5, 0.5, 'n/a for this loss', ha='center', va='center', transform=a.transAxes)
    for a in ax:
        a.grid(alpha=0.3)
        if a is not ax[2]:
            a.set_xlabel('GRPO step')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=100)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


def train_grpo(policy, tokenizer, questions, val_questions, cfg, reward_fn=sft.r1_zero_reward_fn, out_dir='',
               resume=None, engine=None, log=print, tag='grpo'):
    """GRPO on questions [{'prompt', 'ground_truth'}], validating on val_questions. cfg: a dict with this file's
    config keys (missing keys take the defaults at the top). Returns the history
    {'log': [per GRPO step], 'evals': [per validation], 'time_s', 'gen_s', 'train_s', 'eval_s', ...}.

    Each GRPO step:
      1) draw rollout_batch_size / group_size questions, sample group_size responses each (min/max tokens,
         temperature, stop at '</answer>');
      2) score them, group-normalized advantages;
      3) old log-probs (clip losses) and reference log-probs (KL) once, under torch.inference_mode;
      4) epochs_per_rollout_batch passes over the rollout batch in shuffled train batches of train_batch_size,
         each one optimizer step of gradient_accumulation_steps micro-batches, clipped."""
    cfg = {**config, **cfg}
    unknown = set(cfg) - set(config)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}")
    _check_config(cfg)
    if not questions:
        raise ValueError("no training questions")
    dev = torch.device(next(policy.parameters()).device)
    rdev = _resolve_rollout_device({**cfg, 'device': str(dev)})
    rng = random.Random(cfg['seed'])
    torch.manual_seed(cfg['seed'])
    pad, eos = sft.pad_id_of(tokenizer), sft.eos_id_of(tokenizer)
    n_q = cfg['rollout_batch_size'] // cfg['group_size']
    micro = cfg['train_batch_size'] // cfg['gradient_accumulation_steps']
    steps_per_epoch = cfg['rollout_batch_size'] // cfg['train_batch_size']
    need_old = cfg['loss_type'] in ('grpo_clip', 'grpo_no_clip')
    eval_max = cfg['eval_max_tokens'] or cfg['sampling_max_tokens']
    prompt_ids = {}  # prompt text -> token ids (tokenize each question once)

    # the rollout policy: the policy itself, or a copy on the rollout device that we refresh after each step
    rollout_policy = policy
    getattr(policy, '_graphs', {}).clear()  # cached KV caches / CUDA graphs must not be deep-copied
    if engine is None:
        if str(rdev) != str(dev):
            rollout_policy = copy.deepcopy(policy).to(rdev).eval().requires_grad_(False)
            log(f"{tag}: rollouts on {rdev}, training on {dev}")
        engine = sft.make_engine(rollout_policy, tokenizer, cfg['engine_backend'], cfg['gen_batch_size'],
                                 cfg['init_from'][3:] if cfg['init_from'].startswith('hf:') else None, cfg['seed'])
    ref_model = None
    if cfg['kl_beta'] > 0:
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False)  # frozen: the starting policy

    decay = [p for p in policy.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in policy.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg['weight_decay']},
                             {'params': other, 'weight_decay': 0.0}], lr=cfg['learning_rate'],
                            betas=(cfg['adam_beta1'], cfg['adam_beta2']), fused=dev.type == 'cuda')
    hist = {'log': [], 'evals': [], 'gen_s': 0.0, 'train_s': 0.0, 'eval_s': 0.0, 'rollout_tokens': 0,
            'prev_time_s': 0.0}
    start = 0
    if resume:
        opt.load_state_dict(resume['optimizer'])
        start, hist = resume['iter_num'], resume['history']
        log(f"{tag}: resuming at GRPO step {start}")

    def on_rollout_device():
        # CUDA graphs and streams are created on the *current* device: make it the rollout GPU while sampling
        d = torch.device(rdev)
        return torch.cuda.device(d) if d.type == 'cuda' else contextlib.nullcontext()

    def sync_rollout_weights():
        # after an optimizer step the rollout engine must sample from the new policy
        if hasattr(engine, 'load_policy_weights'):  # vLLM: copy the weights into its own model
            engine.load_policy_weights(policy)
        elif rollout_policy is not policy:  # in place, so that captured CUDA graphs keep valid addresses
            with torch.no_grad():
                for pr, p in zip(rollout_policy.parameters(), policy.parameters()):
                    pr.copy_(p, non_blocking=True)

    def validate(step):
        if not val_questions:
            return
        t = time.time()
        rollout_policy.eval()
        n = cfg['eval_n']
        with on_rollout_device():
            m = sft.evaluate(engine, val_questions[:n] if n > 0 else val_questions, reward_fn,
                             max_new_tokens=eval_max, temperature=0.0, seed=cfg['seed'], n_entropy=64,
                             log_path=os.path.join(out_dir, f'{tag}_eval_step{step}.jsonl') if out_dir else None,
                             n_log=64)
        hist['eval_s'] += time.time() - t
        m = {'step': step, 'wall_s': hist['prev_time_s'] + time.time() - t0, **m}
        hist['evals'].append(m)
        log(f"{tag} step {step}: val accuracy {m['accuracy']:.3f}, format {m['format_rate']:.3f}, "
            f"len {m['mean_len']:.1f}, entropy {m['mean_entropy']:.3f}")

    def save(step):
        if not out_dir:
            return
        if cfg['save_checkpoint']:
            hist_now = {**hist, 'prev_time_s': hist['prev_time_s'] + time.time() - t0}
            sft.save_ckpt(os.path.join(out_dir, 'ckpt.pt'), policy, opt, step, history=hist_now,
                          config=cfg, tokenizer='bytes' if getattr(tokenizer, 'vocab_size', 0) == 257 else '',
                          tokenizer_dir=getattr(tokenizer, 'tokenizer_dir', cfg['tokenizer_dir']))
        sft.write_jsonl(os.path.join(out_dir, f'{tag}_log.jsonl'), hist['log'])
        plot_grpo(os.path.join(out_dir, f'{tag}_curves.png'), hist['log'], hist['evals'], f'{tag}: GRPO')

    t0 = time.time()
    if start == 0:
        validate(0)
    for step in range(start, cfg['n_grpo_steps']):
        if cfg['time_budget_s'] > 0 and time.time() - t0 >= cfg['time_budget_s']:
            log(f"{tag}: time budget of {cfg['time_budget_s']:.0f}s reached after {step} GRPO steps")
            break
        # 1) rollouts: group_size samples of each question, consecutive in `outs`
        srng = random.Random(cfg['seed'] * 1_000_003 + step)  # per-step seed: a resumed run draws the same batches
        batch_q = srng.sample(questions, n_q) if n_q <= len(questions) else \
            [questions[srng.randrange(len(questions))] for _ in range(n_q)]
        t = time.time()
        rollout_policy.eval()
        with on_rollout_device():
            outs = engine.generate([q['prompt'] for q in batch_q], max_new_tokens=cfg['sampling_max_tokens'],
                                   temperature=cfg['sampling_temperature'], min_tokens=cfg['sampling_min_tokens'],
                                   stop=['</answer>'], n=cfg['group_size'], seed=srng.randrange(2 ** 31))
        gen_s = time.time() - t
        n_new = sum(len(o['token_ids']) for o in outs)
        hist['gen_s'] += gen_s
        hist['rollout_tokens'] += n_new
        # 2) rewards and advantages
        gts = [q['ground_truth'] for q in batch_q for _ in range(cfg['group_size'])]
        adv, raw, rmeta = compute_group_normalized_rewards(reward_fn, [o['text'] for o in outs], gts,
                                                           cfg['group_size'], cfg['advantage_eps'],
                                                           cfg['use_std_normalization'])
        t = time.time()
        for q in batch_q:
            if q['prompt'] not in prompt_ids:
                prompt_ids[q['prompt']] = sft.encode(tokenizer, q['prompt'])
        p_ids = [prompt_ids[q['prompt']] for q in batch_q for _ in range(cfg['group_size'])]
        # micro-batches are cut from a per-epoch permutation; tensors are built per micro-batch (little padding)
        B = len(outs)

        def rows(idx):
            inp, lab, mask = response_tensors([p_ids[i] for i in idx], [outs[i] for i in idx], pad, eos)
            return inp.to(dev), lab.to(dev), mask.to(dev)

        # 3) old / reference log-probs, once per rollout batch, no graph (inference_mode)
        old_lp, ref_lp = [None] * B, [None] * B
        if need_old or ref_model is not None:
            policy.eval()
            with torch.inference_mode(), sft._autocast(dev):
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
            g['lr'] = grpo_lr(step, cfg['learning_rate'], cfg.get('warmup_steps', 0))
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
                    with sft._autocast(dev):
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
                    if 'clip_fraction' in meta:
                        stats['clip_fraction'].append(meta['clip_fraction'].item())
                    if 'kl' in meta:
                        stats['kl'].append(meta['kl'].item())
                # clip_grad_norm_ returns the norm BEFORE clipping (what we log)
                gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg['grad_clip'] if cfg['grad_clip'] > 0
                                                    else float('inf'))
                stats['grad_norm'].append(gn.item())
                opt.step()
                opt.zero_grad(set_to_none=True)
        n_opt = cfg['epochs_per_rollout_batch'] * steps_per_epoch
        sync_rollout_weights()
        policy.eval()
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        train_s = time.time() - t
        hist['train_s'] += train_s
        mean = lambda xs: sum(xs) / len(xs) if xs else float('nan')  # noqa: E731
        rec = {'step': step + 1, 'wall_s': hist['prev_time_s'] + time.time() - t0, 'loss': stats['loss'] / n_opt,
               'grad_norm': mean(stats['grad_norm']), 'entropy': mean(stats['entropy']),
               'clip_fraction': mean(stats['clip_fraction']), 'kl': mean(stats['kl']),
               'response_len': n_new / B, 'train_reward': rmeta['reward_mean'],
               'train_format_reward': rmeta['format_reward_mean'], 'train_answer_reward': rmeta['answer_reward_mean'],
               'frac_groups_all_same': rmeta['frac_groups_all_same'], 'gen_s': gen_s, 'train_s': train_s,
               'rollout_tokens_per_s': n_new / max(gen_s, 1e-9), 'optimizer_steps': (step + 1) * n_opt,
               'lr': opt.param_groups[0]['lr']}
        hist['log'].append(rec)
        log(f"{tag} step {step + 1}/{cfg['n_grpo_steps']}: reward {rec['train_reward']:.3f} (format "
            f"{rec['train_format_reward']:.3f}, answer {rec['train_answer_reward']:.3f}), loss {rec['loss']:.4f}, "
            f"grad norm {rec['grad_norm']:.3f}, entropy {rec['entropy']:.3f}, len {rec['response_len']:.1f}"
            + (f", clip {rec['clip_fraction']:.3f}" if stats['clip_fraction'] else '')
            + f", gen {gen_s:.1f}s ({rec['rollout_tokens_per_s']:,.0f} tok/s), train {train_s:.1f}s")
        if cfg['eval_interval'] > 0 and (step + 1) % cfg['eval_interval'] == 0 and step + 1 < cfg['n_grpo_steps']:
            validate(step + 1)
            save(step + 1)
    done = len(hist['log'])
    if not hist['evals'] or hist['evals'][-1]['step'] != done:
        validate(done)
    hist['time_s'] = hist['prev_time_s'] + time.time() - t0
    hist['steps'] = done
    hist['rollout_tokens_per_s'] = hist['rollout_tokens'] / max(hist['gen_s'], 1e-9)
    save(done)
    if hasattr(engine, 'release'):
        engine.release()
    return hist


# =============================================================================
# 5) The demo: pretrain -> short SFT -> GRPO on sft.py's synthetic task, plus the course's ablations
# =============================================================================
# base: an sft.py demo preset (pretraining + SFT), registered in sft.DEMO_PRESETS as 'grpo_<name>'. The SFT is
# deliberately short and stops once accuracy on a probe set (training questions, not the held-out ones) reaches
# sft_target: RL needs an imperfect policy that still samples correct answers now and then (a group whose answers
# all get the same reward has zero advantage: no signal). main / ablation: config overrides of the GRPO runs;
# every run is capped by a time budget, so the preset ends on time whatever the machine's speed.
SHORT_TEMPLATE = 'User: {question}\nAssistant: <think>'  # r1_zero's ending without its 420-byte preamble
GRPO_PRESETS = {
    'cpu': dict(base=dict(model=dict(d_model=64, num_layers=2, num_heads=4, context_length=256),
                          template=SHORT_TEMPLATE, task=dict(min_steps=1, max_steps=1, max_number=9),
                          n_train=4000, n_val=100,
                          pretrain=dict(max_iters=2000, batch_size=32, gradient_accumulation_steps=1,
                                        learning_rate=3e-3, time_budget_s=45),
                          sft_examples=128, sft=dict(max_iters=10, batch_size=16, gradient_accumulation_steps=1,
                                                     learning_rate=1e-3),
                          gen_batch_size=128, max_new_tokens=64),
                sft_chunk=5, sft_max_chunks=6, sft_target=0.3, sft_target_sampled=0.15, probe_n=64,
                main=dict(n_grpo_steps=200, time_budget_s=45, rollout_batch_size=64, group_size=8,
                          train_batch_size=64, gradient_accumulation_steps=1, learning_rate=1e-4,
                          sampling_temperature=0.7, sampling_max_tokens=64, eval_interval=5, eval_n=-1,
                          gen_batch_size=128),
                ablation=dict(n_grpo_steps=6, time_budget_s=12, rollout_batch_size=32, group_size=8,
                              train_batch_size=32, gradient_accumulation_steps=1, learning_rate=1e-4,
                              sampling_temperature=0.7, sampling_max_tokens=64, eval_interval=3, eval_n=-1,
                              gen_batch_size=128)),
    # one H100, about 8 minutes in all: pretraining 120 s, short SFT ~20 s, main GRPO 140 s, 6 ablations x 22 s
    'gpu': dict(base=dict(model=dict(d_model=384, num_layers=6, num_heads=6, context_length=512),
                          template=SHORT_TEMPLATE, task=dict(min_steps=2, max_steps=3, max_number=20),
                          n_train=60000, n_val=1024,
                          pretrain=dict(max_iters=20000, batch_size=128, gradient_accumulation_steps=1,
                                        learning_rate=1.5e-3, time_budget_s=120),
                          sft_examples=512, sft=dict(max_iters=4, batch_size=32, gradient_accumulation_steps=1,
                                                     learning_rate=5e-4),
                          gen_batch_size=1024, max_new_tokens=128),
                sft_chunk=3, sft_max_chunks=20, sft_target=0.35, sft_target_sampled=0.15, probe_n=256,
                main=dict(n_grpo_steps=1000, time_budget_s=140, rollout_batch_size=256, group_size=8,
                          train_batch_size=256, gradient_accumulation_steps=2, learning_rate=1e-4,
                          sampling_temperature=0.7, sampling_max_tokens=128, eval_interval=20, eval_n=-1,
                          gen_batch_size=1024),
                ablation=dict(n_grpo_steps=60, time_budget_s=22, rollout_batch_size=128, group_size=8,
                              train_batch_size=128, gradient_accumulation_steps=1, learning_rate=1e-4,
                              sampling_temperature=0.7, sampling_max_tokens=128, eval_interval=15, eval_n=512,
                              gen_batch_size=1024),
                time_limit_s=500),
}


def ablation_variants(base):
    """The course's ablations as config overrides of one base GRPO config (small scale)."""
    half = dict(epochs_per_rollout_batch=2, train_batch_size=base['rollout_batch_size'] // 2,
                gradient_accumulation_steps=max(1, base['gradient_accumulation_steps'] // 2))
    return [
        ('reinforce_with_baseline (std norm, masked_mean, on-policy)', {}),
        ('no_baseline (raw rewards)', dict(loss_type='no_baseline')),
        ('no std normalization (Dr. GRPO advantages)', dict(use_std_normalization=False)),
        ('masked_normalize by max tokens (Dr. GRPO length norm)', dict(length_normalization='masked_normalize')),
        ('off-policy: grpo_clip, 2 epochs x 2 steps per rollout batch', dict(loss_type='grpo_clip', **half)),
        ('off-policy: grpo_no_clip, 2 epochs x 2 steps per rollout batch', dict(loss_type='grpo_no_clip', **half)),
    ]


def short_sft(D, P, log=print):
    """Continue the demo's SFT in small chunks until, on a probe set of training questions, greedy accuracy reaches
    P['sft_target'] or accuracy when SAMPLING at the rollout temperature reaches P['sft_target_sampled'] (or
    P['sft_max_chunks'] chunks): a policy far from perfect, yet right often enough in its samples to give RL a
    signal (a half-trained policy can look fine greedily and still almost never sample a well-formed answer)."""
    model, tok = D['model'], D['tok']
    probe = D['ei_pool'][-P['probe_n']:]
    eng = sft.Engine(model, tok, batch_size=P['base']['gen_batch_size'])
    temp = P['main'].get('sampling_temperature', config['sampling_temperature'])

    def probe_eval():
        kw = dict(max_new_tokens=P['base']['max_new_tokens'], seed=0, n_entropy=0)
        return (sft.evaluate(eng, probe, temperature=0.0, **kw)['accuracy'],
                sft.evaluate(eng, probe, temperature=temp, **kw)['accuracy'])
    (greedy, sampled), total = probe_eval(), D['h_sft']['steps']
    for k in range(P['sft_max_chunks'] + 1):
        log(f"short SFT: {total} steps, probe accuracy greedy {greedy:.3f} (target {P['sft_target']}), sampled at "
            f"T={temp} {sampled:.3f} (target {P['sft_target_sampled']})")
        if greedy >= P['sft_target'] or sampled >= P['sft_target_sampled'] or k == P['sft_max_chunks']:
            break
        sft_kw = {kk: v for kk, v in P['base']['sft'].items() if kk != 'max_iters'}
        h = sft.train_sft(model, tok, D['sft_set'], max_iters=P['sft_chunk'], seed=k + 1, tag=f'sft_chunk{k + 1}',
                          quiet=True, **sft_kw)
        total += h['steps']
        greedy, sampled = probe_eval()
    model.eval()
    return total


def run_demo(preset='cpu', out_dir='out-grpo-demo', results_dir='results', seed=0):
    """base -> short SFT -> GRPO (main run) -> ablations; writes results/grpo_demo_<preset>.md, .png (accuracy vs
    step of every run), _curves.png (the main run's training curves) and _log.jsonl (its per-step log)."""
    P = GRPO_PRESETS[preset]
    t_start = time.time()
    lines = []

    def log(msg):
        print(msg)
        lines.append(msg)
    sft.DEMO_PRESETS[f'grpo_{preset}'] = P['base']
    if device == 'cpu':
        # models this small spend their time in thread synchronization, not arithmetic: one thread is several
        # times faster on CPU (8x on a busy 2-core machine)
        torch.set_num_threads(1)
    sft.device = device  # sft.py's demo helpers read its own device / dtype globals
    sft.dtype = dtype
    # 1) base model and a short SFT (sft.py's demo stages 1-3)
    D = sft.demo_base_and_sft(f'grpo_{preset}', out_dir, seed, log)
    sft_steps = short_sft(D, P, log)
    model, tok = D['model'], D['tok']
    sft_path = os.path.join(out_dir, 'sft_short.pt')
    sft.save_ckpt(sft_path, model, tokenizer='bytes')
    sft.Engine(model, tok).release()
    questions = D['ei_pool'][:-P['probe_n']]  # GRPO sees questions and answers only, never a trace
    t_base = time.time() - t_start
    log(f"base + SFT ready after {t_base:.0f}s ({sft_steps} SFT steps)")

    # 2) the main GRPO run from the SFT checkpoint
    def grpo_run(overrides, tag, budget_cfg):
        policy, _ = sft.load_policy(sft_path, device)
        cfg = {**budget_cfg, **overrides, 'seed': seed, 'device': device, 'dtype': dtype,
               'save_checkpoint': tag == 'main'}
        return train_grpo(policy, tok, questions, D['val_q'], cfg, out_dir=os.path.join(out_dir, tag), log=log, tag=tag)
    h_main = grpo_run({}, 'main', P['main'])
    ablations = []
    write_report(preset, P, D, sft_steps, h_main, ablations, lines, time.time() - t_start, results_dir)
    # 3) ablations, each from the same SFT checkpoint with the same (smaller) budget; the report is rewritten after
    # each one, and a run that would not end within the preset's time limit is skipped (loudly)
    for name, ov in ablation_variants(P['ablation']):
        if time.time() - t_start + P['ablation'].get('time_budget_s', 0) + 15 > P.get('time_limit_s', float('inf')):
            log(f"{'!' * 60}\nskipping ablation '{name}': it would end past the preset's time limit of "
                f"{P['time_limit_s']}s\n{'!' * 60}")
            continue
        h = grpo_run(ov, f"abl{len(ablations)}", P['ablation'])
        ablations.append((name, ov, h))
        write_report(preset, P, D, sft_steps, h_main, ablations, lines, time.time() - t_start, results_dir)
    write_report(preset, P, D, sft_steps, h_main, ablations, lines, time.time() - t_start, results_dir, final=True)
    return {'sft': h_main['evals'][0], 'main': h_main['evals'][-1],
            'ablations': {n: h['evals'][-1] for n, _, h in ablations}, 'h_main': h_main}


def write_report(preset, P, D, sft_steps, h_main, ablations, lines, total, results_dir, final=False):
    """results/grpo_demo_<preset>.md (+ .png, _curves.png, _log.jsonl) from what has run so far."""
    from model import count_parameters
    model, val_q = D['model'], D['val_q']
    # 4) the report
    sft_acc, main_acc = h_main['evals'][0], h_main['evals'][-1]
    dev_name = torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'
    cmd = f"python grpo.py --mode=demo --demo_preset={preset}"
    M = {**config, **P['main']}
    gen_frac = h_main['gen_s'] / h_main['time_s']
    train_frac = h_main['train_s'] / h_main['time_s']
    eval_frac = h_main['eval_s'] / h_main['time_s']
    L = [f"# grpo.py demo, preset '{preset}' ({dev_name}, {total:.0f} s "
         f"{'end to end' if final else f'so far: in progress, {len(ablations)} ablations done'})", "",
         f"Command: `{cmd}`. Synthetic task of sft.py: {P['base']['task']}, held-out set of {len(val_q)} problems "
         f"(greedy decoding, r1_zero grader, prompt {P['base']['template']!r}). Policy: model.py TransformerLM "
         f"{P['base']['model']}, byte-level, {count_parameters(model):,} non-embedding parameters, pretrained for "
         f"{D['h_pre']['steps']} steps on plain worked solutions, then SFT for only {sft_steps} steps on gold "
         f"<think>/<answer> traces (stopped once, on training questions, greedy accuracy >= {P['sft_target']} or "
         f"sampled accuracy >= {P['sft_target_sampled']}), so that RL has room.", "",
         "## Main run", "",
         f"GRPO {M['loss_type']}, std normalization {M['use_std_normalization']}, {M['length_normalization']}, "
         f"rollout batch {M['rollout_batch_size']} = {M['rollout_batch_size'] // M['group_size']} questions x "
         f"{M['group_size']}, train batch {M['train_batch_size']}, lr {M['learning_rate']}, temperature "
         f"{M['sampling_temperature']}, up to {M['sampling_max_tokens']} tokens, time budget {M['time_budget_s']}s.",
         "", "| policy | GRPO steps | held-out accuracy | format rate | mean length | entropy |",
         "|---|---:|---:|---:|---:|---:|",
         f"| base (pretrained) | - | {D['results']['base']['accuracy']:.1%} | "
         f"{D['results']['base']['format_rate']:.1%} | {D['results']['base']['mean_len']:.1f} | "
         f"{D['results']['base']['mean_entropy']:.3f} |"]
    for name, e in (('SFT (short)', sft_acc), ('SFT + GRPO', main_acc)):
        L.append(f"| {name} | {e['step']} | {e['accuracy']:.1%} | {e['format_rate']:.1%} | {e['mean_len']:.1f} | "
                 f"{e['mean_entropy']:.3f} |")
    L += ["", f"GRPO gain: **{100 * (main_acc['accuracy'] - sft_acc['accuracy']):+.1f} points** of held-out "
              f"accuracy in {h_main['steps']} GRPO steps ({h_main['time_s']:.0f} s).", "",
          "Throughput (main run): rollout generation "
          f"{h_main['rollout_tokens_per_s']:,.0f} new tokens/s ({h_main['rollout_tokens']:,} tokens); wall-clock "
          f"split: generation {gen_frac:.0%}, training (log-probs, backward, optimizer) {train_frac:.0%}, "
          f"validation {eval_frac:.0%}.", "",
          "## Ablations (small scale, same SFT start)", "",
          f"Base config: {P['ablation']}.", "",
          "| variant | GRPO steps | time (s) | final accuracy | final format rate | train reward (last 3 steps) |"
          " mean response length |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ov, h in ablations:
        e = h['evals'][-1]
        last = h['log'][-3:]
        tr = sum(r['train_reward'] for r in last) / max(1, len(last))
        L.append(f"| {name} | {h['steps']} | {h['time_s']:.0f} | {e['accuracy']:.1%} | {e['format_rate']:.1%} | "
                 f"{tr:.3f} | {e['mean_len']:.1f} |")
    L += ["", f"Plots: `grpo_demo_{preset}.png` (held-out accuracy vs GRPO step, every run), "
              f"`grpo_demo_{preset}_curves.png` (main run: rewards, loss, grad norm, entropy, clip fraction, "
              f"length). Per-step log: `grpo_demo_{preset}_log.jsonl`.", "", "Log:", "", "```"] + lines + ["```"]
    os.makedirs(results_dir, exist_ok=True)
    md = os.path.join(results_dir, f'grpo_demo_{preset}.md')
    with open(md + '.tmp', 'w') as f:
        f.write('\n'.join(L) + '\n')
    os.replace(md + '.tmp', md)
    sft.write_jsonl(os.path.join(results_dir, f'grpo_demo_{preset}_log.jsonl'), h_main['log'])
    plot_grpo(os.path.join(results_dir, f'grpo_demo_{preset}_curves.png'), h_main['log'], h_main['evals'],
              f"GRPO main run ({preset} preset)")
    _plot_accuracy(os.path.join(results_dir, f'grpo_demo_{preset}.png'), h_main, ablations)
    print(f"wrote {md} ({len(ablations)} ablations so far)")


def _plot_accuracy(path, h_main, ablations):
    """Held-out accuracy vs GRPO step: the main run (left), the ablations (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.2))
    a1.plot([e['step'] for e in h_main['evals']], [e['accuracy'] for e in h_main['evals']], marker='o',
            label='accuracy')
    a1.plot([e['step'] for e in h_main['evals']], [e['format_rate'] for e in h_main['evals']], ls='--', marker='.',
            label='format rate')
    a1.set_title('main GRPO run (held-out, greedy)')
    a1.legend()
    for name, _, h in ablations:
        a2.plot([e['step'] for e in h['evals']], [e['accuracy'] for e in h['evals']], marker='o', label=name)
    a2.set_title('ablations: held-out accuracy')
    if ablations:
        a2.legend(fontsize=7)
    for a in (a1, a2):
        a.set_xlabel('GRPO step')
        a.set_ylim(-0.02, 1.02)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=100)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


# =============================================================================
# 6) Command line
# =============================================================================

def _questions(path, template, split):
    """[{'prompt', 'ground_truth'}] from a JSONL ({prompt, ground_truth} or {question, answer}), or the synthetic
    task's split when path is ''."""
    if not path:
        tr, va = sft.make_synthetic_task(task_n_train, task_n_val, seed, task_min_steps, task_max_steps,
                                         task_max_number)
        return [{'prompt': sft.format_prompt(template, p['question']), 'ground_truth': p['answer']}
                for p in (tr if split == 'train' else va)]
    return sft._eval_problems(path, template)


if __name__ == '__main__':
    torch.manual_seed(seed)
    random.seed(seed)
    sft.dtype = dtype  # sft.py's autocast helper reads its own dtype global
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True
    if mode == 'demo':
        run_demo(demo_preset, out_dir=out_dir if out_dir != 'out-grpo' else f'out-grpo-demo-{demo_preset}',
                 results_dir=results_dir, seed=seed - 1337)
    elif mode == 'train':
        if not init_from:
            raise SystemExit("--init_from=<checkpoint path | resume | hf:name> is required (e.g. sft.py's "
                             "out-sft/ckpt.pt, or run `python grpo.py --mode=demo`)")
        ckpt_path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
        policy, tok = sft.load_policy(ckpt_path, device, tokenizer_dir)
        tpl = sft.load_prompt_template(prompt_template)
        reward_fn = sft.REWARD_FNS.get(prompt_template, sft.r1_zero_reward_fn)
        train_q, val_q = _questions(train_path, tpl, 'train'), _questions(val_path, tpl, 'val')
        resume = torch.load(ckpt_path, map_location='cpu', weights_only=False) if init_from == 'resume' else None
        os.makedirs(out_dir, exist_ok=True)
        print(f"GRPO: {len(train_q)} training questions, {len(val_q)} held out, {loss_type}, "
              f"{rollout_batch_size // group_size} questions x {group_size} per rollout batch, "
              f"{epochs_per_rollout_batch * rollout_batch_size // train_batch_size} optimizer steps per rollout batch")
        h = train_grpo(policy, tok, train_q, val_q, config, reward_fn, out_dir, resume=resume)
        print(f"done: {h['steps']} GRPO steps in {h['time_s']:.0f}s, val accuracy "
              f"{h['evals'][0]['accuracy']:.3f} -> {h['evals'][-1]['accuracy']:.3f}; "
              f"{h['rollout_tokens_per_s']:,.0f} rollout tokens/s, generation {h['gen_s'] / h['time_s']:.0%} "
              f"of the time")
    else:
        raise SystemExit(f"unknown --mode={mode}: use train | demo")

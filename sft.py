"""
sft.py: supervised fine-tuning (SFT) for math reasoning, graded by the r1_zero reward, measured honestly.

What this file teaches (CS336 assignment 5, first half, on our own model.py models):
  1) the course's SFT helpers (tokenize_prompt_and_output ... sft_microbatch_train_step; grpo.py imports them);
  2) the "r1_zero" reward: the format reward checks `<think> ... </think> <answer> ... </answer>`, the answer reward
     compares the answer with the ground truth after normalization (numbers compared exactly, as fractions);
  3) evaluation that means something: greedy generation through model.py's KV-cache `generate`, accuracy with its
     95% Wilson interval on a named split, a few-shot prompt for base models, GSM8K by the course's last-number parser;
  4) the SFT loop: gradient accumulation, clipping, bf16 autocast, validation on the validation split.
Task splits: data/arith/prepare.py (disjoint by structure). grpo.py adds RL, dpo.py instruction tuning and DPO;
bench/sft.py holds the demo, expert iteration and the generation benchmark.

Run (one CPU or one GPU):
    python data/arith/prepare.py --out_dir=task
    python sft.py --init_from=out/ckpt.pt --train_path=task/train.jsonl --val_path=task/val.jsonl
    python sft.py --mode=eval --init_from=out-sft/ckpt.pt --eval_paths=task/test.jsonl,task/gen.jsonl,gsm8k
    python sft.py --mode=eval --init_from=out/ckpt.pt --fewshot=4 --train_path=task/train.jsonl \\
        --eval_paths=task/test.jsonl                       # a base model: few-shot, in its pre-training format
"""
import json
import math
import os
import random
import re
import sys
import time
from fractions import Fraction

import torch

import bpe
from model import TransformerLM, model_args_from

# -----------------------------------------------------------------------------
# default config values (override on the command line: --key=value, or a config file)
# I/O
mode = 'sft'  # sft | eval
out_dir = 'out-sft'  # sft: ckpt.pt, sft_log.jsonl, val_step<N>.jsonl; eval: eval_<split>.jsonl, eval_metrics.jsonl
init_from = ''  # the model.py checkpoint to start from (train.py's out/ckpt.pt)
overwrite = False  # let --mode=sft replace an existing out_dir/ckpt.pt (else it refuses)
tokenizer_dir = ''  # bpe.py tokenizer folder; '' = the one the checkpoint names, else byte-level
seed = 1337  # sampling and shuffling are seeded from this
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda | cuda:1 ...
dtype = 'bfloat16'  # autocast dtype on cuda: bfloat16 | float32 (CPU always runs float32)
# data: JSONL of {question, answer[, trace]} (data/arith/prepare.py, GSM8K) or {prompt, response / ground_truth}
train_path = ''  # sft: the training problems (with traces or responses); eval: where --fewshot examples come from
val_path = ''  # the validation split: evaluated during SFT (and by --mode=eval)
eval_paths = ''  # --mode=eval: comma-separated splits, JSONL paths or 'gsm8k' (the shared GSM8K test set)
prompt_template = 'r1_zero'  # r1_zero | question_only (shared/data/a5/prompts) | a file with a '{question}' slot
fewshot = 0  # --mode=eval: k > 0 = a k-shot 'Question/Solution/Answer' prompt from train_path (base models)
n_train_examples = -1  # SFT on the first N examples only (the course's 128/256/512/1024); -1 = all
# optimization
batch_size = 32  # sequences per optimizer step (= micro-batch size * gradient_accumulation_steps)
gradient_accumulation_steps = 2  # micro-steps per optimizer step
learning_rate = 3e-4  # peak AdamW learning rate (cosine decay to learning_rate/10 after warmup)
warmup_iters = 20  # linear warmup steps
max_iters = 300  # optimizer steps
grad_clip = 1.0  # clip the global gradient norm at this value (0 = off)
eval_interval = 100  # validate every N steps (and at the end); -1 = only at the end
eval_n = 200  # validation problems per evaluation during SFT; -1 = all
log_interval = 10  # print the loss every N steps
# generation
max_new_tokens = 256  # per response
gen_batch_size = 256  # rows per generation batch (prompts are sorted by length first)
# -----------------------------------------------------------------------------

DATA = os.path.abspath(os.environ.get('LMSCRATCH_DATA', os.path.join(os.path.dirname(__file__), '../shared/data')))


def die(msg):
    """A user error: one line naming the key or file and the fix, exit code 2, no traceback, nothing written."""
    print(f"sft.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# 1) The course's SFT helpers (exact semantics: grpo.py and the tests rely on them)

def pad_id_of(tokenizer):
    """End-of-text as padding (ours: eot_id; Hugging Face's: pad_token_id, eos_token_id), else 0; masked in losses."""
    ids = [getattr(tokenizer, a, None) for a in ('eot_id', 'pad_token_id', 'eos_token_id')]
    return next((i for i in ids if i is not None), 0)


def tokenize_prompt_and_output(prompt_strs, output_strs, tokenizer):
    """Tokenize each prompt and output separately, concatenate, right-pad to the longest with the pad id.
    Returns {'input_ids': full[:, :-1], 'labels': full[:, 1:], 'response_mask'}, each (B, L-1), L the longest
    prompt+output; response_mask[b, t] is True exactly when labels[b, t] is an output token."""
    if len(prompt_strs) != len(output_strs):
        raise ValueError(f"{len(prompt_strs)} prompts but {len(output_strs)} outputs")
    return collate_prompt_and_output([tokenizer.encode(p) for p in prompt_strs],
                                     [tokenizer.encode(o) for o in output_strs], pad_id_of(tokenizer))


def collate_prompt_and_output(prompt_ids, output_ids, pad):
    """tokenize_prompt_and_output on token-id lists (the loops tokenize once, up front)."""
    L = max(len(p) + len(o) for p, o in zip(prompt_ids, output_ids))
    full = torch.full((len(prompt_ids), L), pad, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(prompt_ids), L), dtype=torch.bool)  # True on the output tokens of `full`
    for b, (p, o) in enumerate(zip(prompt_ids, output_ids)):
        full[b, :len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        mask[b, len(p):len(p) + len(o)] = True
    # position t predicts token t+1: labels and mask shift left by one
    return {'input_ids': full[:, :-1], 'labels': full[:, 1:], 'response_mask': mask[:, 1:]}


def compute_entropy(logits):
    """Entropy of softmax(logits) over the last dim, (B, T, V) -> (B, T).
    H = -sum p log p = logsumexp(z) - sum softmax(z) * z, which never takes log(0) (stable for any logits)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def get_response_log_probs(model, input_ids, labels, return_token_entropy=False):
    """Per-token log p(labels[b, t] | input_ids[b, :t+1]) -> {'log_probs': (B, T)} (+ 'token_entropy' (B, T)).
    Nothing is masked here: callers mask with response_mask."""
    logits = model(input_ids).float()  # (B, T, V); fp32 for a stable log-softmax
    # log_softmax gathered at the label = logit[label] - logsumexp(logits): no (B, T, V) log-prob tensor kept
    out = {'log_probs': logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)}
    if return_token_entropy:
        with torch.no_grad():  # entropy is a diagnostic: no graph through it
            out['token_entropy'] = compute_entropy(logits)
    return out


def masked_normalize(tensor, mask, normalize_constant, dim=None):
    """sum(tensor * mask) over dim (all elements when None) / normalize_constant."""
    return (tensor * mask.to(tensor.dtype)).sum(dim=dim) / normalize_constant


def sft_microbatch_train_step(policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant=1.0):
    """One micro-batch: loss = batch mean of -(sum of response log-probs / normalize_constant), divided by
    gradient_accumulation_steps; calls backward() (gradients ADD UP over micro-steps). Returns (loss, metadata)."""
    per_seq = masked_normalize(policy_log_probs, response_mask, normalize_constant, dim=-1)  # (B,)
    loss = -per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    return loss.detach(), {'n_response_tokens': response_mask.sum().detach()}


# 2) Graders: r1_zero (strict format, exact numbers), few-shot, GSM8K, MMLU; 95% intervals

def last_boxed(s):
    """The last \\boxed{...} or \\fbox{...}'s content, nested braces counted (\\frac{\\sqrt{3}}{2}); else None."""
    i = max(s.rfind('\\boxed{'), s.rfind('\\fbox{'))
    depth, start = 1, s.find('{', i) + 1
    for k in range(start, len(s) if i >= 0 else 0):
        depth += (s[k] == '{') - (s[k] == '}')
        if depth == 0:
            return s[start:k]
    return None


def normalize_answer(answer):
    """A final answer as a comparable string (Hendrycks et al.'s MATH normalization, simplified): no \\boxed, \\text,
    $, %, degrees, 'x =', thousands separators, trailing units ('18 apples' -> '18') or spaces; \\frac{a}{b} -> a/b."""
    s = str(answer).strip()
    s = boxed if (boxed := last_boxed(s)) is not None else s
    s = re.sub(r'\\(text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}', r'\2', s)
    s = re.sub(r'\{,\}|\\[!,;:%$]|\\left|\\right|\\displaystyle|\^\{?\\circ\}?|[$%]', '', s)  # spacing, units, $
    s = s.replace('\\ ', ' ').replace('dfrac', 'frac').replace('tfrac', 'frac').strip().rstrip('.').strip()
    s = re.sub(r'^[a-zA-Z]\w?\s*=\s*', '', s)  # 'x = 5' -> '5' (a short variable name only)
    s = re.sub(r'^(-?[\d.,/]*\d)\s+[a-zA-Z][a-zA-Z .]*$', r'\1', s)  # '18 apples', '5 cm.' -> the number
    if re.fullmatch(r'-?\d{1,3}(,\d{3})+(\.\d+)?', s):  # thousands separators: 1,234,567.5
        s = s.replace(',', '')
    # \frac12 -> \frac{1}{2}; a mixed number 2\frac{1}{2} -> 5/2; then \frac{a}{b} -> ((a)/(b)), inside out
    s = re.sub(r'\\frac(\d)(\d)', r'\\frac{\1}{\2}', s)
    s = re.sub(r'(?<![\d.])(\d+)\\frac\{(\d+)\}\{(\d+)\}', lambda m: f"{int(m[1]) * int(m[3]) + int(m[2])}/{m[3]}", s)
    for _ in range(5):
        s = re.sub(r'\\frac\{([^{}]*)\}\{([^{}]*)\}', r'((\1)/(\2))', s)
    return s.replace(' ', '')


def grade_answer(given, ground_truth):
    """True when the answers are equal: the same normalized string (case aside), or the same exact number (Fraction:
    0.5 == 1/2 == \\frac{1}{2}, 18.00 == 18, 1/3 != 0.333). Symbolic answers ((x+1)^2 vs x^2+2x+1) would need sympy;
    our task and GSM8K have numbers only."""
    if isinstance(ground_truth, (list, tuple)):  # any of several ground truths
        return any(grade_answer(given, g) for g in ground_truth)
    a, b = normalize_answer(given), normalize_answer(ground_truth)
    if not a or not b:  # an empty answer is never right
        return False
    if a.lower() == b.lower():
        return True
    number = r'-?\(*-?\d+(\.\d+)?\)*(/\(*\d+(\.\d+)?\)*)?'  # 18, -0.75, ((1)/(2)), -((3)/(4))
    if re.fullmatch(number, a) and re.fullmatch(number, b):
        try:
            return Fraction(a.replace('(', '').replace(')', '')) == Fraction(b.replace('(', '').replace(')', ''))
        except (ValueError, ZeroDivisionError):  # "1/0", "--3": not numbers after all
            return False
    return False


def reward(answer, ground_truth):
    """The graders' result: format_reward 1 when an answer was found (not None), answer_reward = reward = correct."""
    ok = answer is not None and grade_answer(answer, ground_truth)
    return {'format_reward': float(answer is not None), 'answer_reward': float(ok), 'reward': float(ok)}


def r1_zero_reward_fn(response, ground_truth):
    """The course's r1_zero reward of a response ' steps </think> <answer> 18 </answer>': strict '</think> <answer>' and
    '</answer>'; the answer is all after the last '<answer>' less '</answer>' (as the course's); \\boxed{} unwrapped."""
    if '</think> <answer>' not in response or '</answer>' not in response:
        return reward(None, ground_truth)
    answer = response.split('<answer>')[-1].replace('</answer>', '')
    return reward(last_boxed(answer) or '' if '\\boxed' in answer else answer, ground_truth)


def parse_gsm8k_response(model_output):
    """The course's GSM8K parser: the last number in the output, commas removed; None if there is none."""
    numbers = re.findall(r'-?\d+(?:\.\d+)?', model_output.replace(',', ''))
    return numbers[-1] if numbers else None


def parse_mmlu_response(mmlu_example, model_output):
    """The course's MMLU parser: the letter A-D right after 'The correct answer is' (its prompt's form), else None."""
    m = re.search(r'The correct answer is\s*\(?([A-D])\b', model_output)
    return m.group(1) if m else None


def question_only_reward_fn(response, ground_truth):
    """The question_only prompt asks for no format: the answer is the last \\boxed{}, else the last number (the
    course's GSM8K parser; so this is also the GSM8K grader). format_reward = 1 when there is an answer."""
    return reward(last_boxed(response) or parse_gsm8k_response(response), ground_truth)


def fewshot_reward_fn(response, ground_truth):
    """The few-shot 'Question/Solution/Answer' prompt: the answer is the rest of the line after the first 'Answer:'."""
    return reward(response.split('Answer:', 1)[1].split('\n', 1)[0] if 'Answer:' in response else None, ground_truth)


REWARD_FNS = {'r1_zero': r1_zero_reward_fn, 'question_only': question_only_reward_fn}


def wilson_interval(k, n, z=1.96):
    """95% Wilson score interval of a proportion k/n (Wilson 1927): unlike p +- z sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at p = 0 or 1. n = 500 at p = 0.8 gives about +-3.5 points."""
    p, m = k / max(n, 1), max(n, 1)
    c, h = p + z * z / (2 * m), z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))  # centre and half-width
    return (max(0.0, (c - h) / (1 + z * z / m)), min(1.0, (c + h) / (1 + z * z / m))) if n else (0.0, 1.0)


# 3) Data: JSONL with line-numbered errors, prompt templates, the task's splits, GSM8K

def read_jsonl(path, required=()):
    """Records of a JSON-lines file (blank lines skipped); a bad line is a ValueError naming file and line."""
    records = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); each line must be "
                                 f"one JSON object") from None
            missing = [k for k in required if k not in rec] if isinstance(rec, dict) else None
            if missing is None or missing:
                raise ValueError(f"{path}:{lineno}: " + (f"missing key(s) {missing}; the line has {sorted(rec)}"
                                 if missing else f"expected a JSON object, got {type(rec).__name__}"))
            records += [rec] if rec else []
    return records


def write_jsonl(path, records):
    """Atomic JSONL write (temp file + os.replace): a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    os.replace(path + '.tmp', path)


# The course's two math prompts as in shared/data/a5/prompts (tests compare), for machines without that folder
BUILTIN_PROMPTS = {
    'r1_zero': "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
               "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
               "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
               "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
               "here </answer>.\nUser: {question}\nAssistant: <think>", 'question_only': '{question}'}


def load_prompt_template(name):
    """A template with a '{question}' slot: a literal, a file path, a name in shared/data/a5/prompts, or built in."""
    path = name if os.path.exists(name) else os.path.join(DATA, 'a5', 'prompts', f'{name}.prompt')
    template = name if '{question}' in name else open(path, encoding='utf-8').read() if os.path.exists(path) else \
        BUILTIN_PROMPTS.get(name, '')
    if '{question}' not in template:
        raise ValueError(f"prompt template '{name}': no such name or file with a '{{question}}' slot (use r1_zero, "
                         f"question_only, or a file path)")
    return template


def format_prompt(template, question):
    return template.replace('{question}', question)  # not str.format: questions may contain braces


def r1_response(trace, answer):
    return f" {trace} </think> <answer> {answer} </answer>"  # an r1_zero SFT target (the prompt ends with <think>)


def fewshot_prompt(shots, question):
    """k worked problems in the plain 'Question/Solution/Answer' form of the pre-training text (one document each,
    separated as they were there), then the question: what a base model can continue without any format training."""
    docs = [f"Question: {s['question']}\nSolution: {s['trace']}\nAnswer: {s['ground_truth']}\n" for s in shots]
    return ''.join(d + '\n<|endoftext|>\n' for d in docs) + f"Question: {question}\nSolution:"


def load_problems(path, template, shots=()):
    """[{'prompt', 'ground_truth'[, 'response', ...]}] of a JSONL of {question, answer[, trace]} (data/arith/prepare.py;
    GSM8K's '... #### 18') or {prompt, response / ground_truth}; a trace gives the r1_zero SFT response."""
    out = []
    for i, r in enumerate(read_jsonl(path)):
        if 'question' in r and 'answer' in r:
            gt = str(r['answer']).rsplit('####', 1)[-1].strip().replace(',', '')
            p = {'question': r['question'], 'ground_truth': gt,
                 'prompt': fewshot_prompt(shots, r['question']) if shots else format_prompt(template, r['question'])}
            out.append(p if 'trace' not in r else {**p, 'trace': r['trace'], 'response': r1_response(r['trace'], gt)})
        elif 'prompt' in r and ('response' in r or 'ground_truth' in r):
            out.append({k: r[k] for k in ('prompt', 'response', 'ground_truth') if k in r})
        else:
            raise ValueError(f"{path}: record {i + 1} needs 'question' + 'answer', or 'prompt' + 'response'")
    if not out:  # an empty split would train without validation, or report accuracy nan
        raise ValueError(f"{path}: no problems; give a JSONL of {{question, answer}} (data/arith/prepare.py's splits)")
    return out


def load_sft_examples(path, n=-1, template='{question}'):
    """SFT pairs {'prompt', 'response'} of a JSONL: the first n (-1 = all; the course's 128 ... 1024 sweep)."""
    recs = load_problems(path, template)
    empty = [i + 1 for i, r in enumerate(recs) if not str(r.get('response', '')).strip()]
    if empty:
        raise ValueError(f"{path}: record {empty[0]} has an empty or no response; SFT needs a target text")
    return recs if n < 0 else recs[:n]


# 4) Policies and generation: model.py checkpoints, model.py's KV-cache generate, evaluation

def byte_tokenizer():
    """bpe.py's Tokenizer with no merges: 256 bytes + '<|endoftext|>' (256); every digit is its own token."""
    return bpe.Tokenizer({i: bytes([i]) for i in range(256)} | {256: b'<|endoftext|>'}, [], ['<|endoftext|>'])


def load_policy(path, device='cpu', tokenizer_dir=''):
    """(model, tokenizer) from a model.py checkpoint (train.py's or ours). The tokenizer: tokenizer_dir, else the one
    the checkpoint names, else byte-level if it says so (a 257-token vocabulary)."""
    gpus, dev = torch.cuda.device_count(), str(device)  # as train.py: cpu, or cuda[:N] naming a GPU of this machine
    if dev != 'cpu' and not (re.fullmatch(r'cuda(:\d+)?', dev) and int(dev[5:] or 0) < gpus):
        raise ValueError(f"--device={dev!r} must be cpu" + (f" or cuda[:N], N < {gpus}" if gpus else ": no GPU here"))
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
        model = TransformerLM(**ckpt['model_args'])
        model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})  # torch.compile's
    except Exception as e:  # noqa: BLE001 -- a missing, truncated or foreign file: say which, whatever torch raised
        raise ValueError(f"{path} is not a readable model.py checkpoint ({type(e).__name__}: {e}); train.py and "
                         f"sft.py write <out_dir>/ckpt.pt") from None
    tok_dir = tokenizer_dir or ckpt.get('tokenizer_dir') or (ckpt.get('config') or {}).get('tokenizer_dir')
    if not tok_dir and model.config.vocab_size != 257:
        raise ValueError(f"{path}: no tokenizer found; pass --tokenizer_dir=<bpe.py tokenizer folder>")
    tok = bpe.Tokenizer.from_dir(tok_dir) if tok_dir else byte_tokenizer()
    tok.tokenizer_dir = os.path.abspath(tok_dir) if tok_dir else ''  # saved into our checkpoints: they load alone
    return model.to(device), tok


def amp(device, dtype='bfloat16'):
    """bf16 autocast on CUDA (weights stay fp32 for the optimizer), off on CPU. NOTE cache_enabled=False: else a CUDA
    graph captured inside (model.py's decode step) keeps reading autocast's cached bf16 weights after the next step."""
    kind = torch.device(device).type
    return torch.autocast(kind, torch.bfloat16, enabled=kind == 'cuda' and dtype == 'bfloat16', cache_enabled=False)


def finish(tokenizer, toks, stop=(), min_tokens=0):
    """A generated row -> {'token_ids', 'text', 'finish_reason' ('eos' | 'stop' | 'length')}: cut at end-of-text
    (dropped) or after the first stop string ending at or after token min_tokens (kept: the grader needs it)."""
    eot, reason = getattr(tokenizer, 'eot_id', None), 'length'
    if eot is not None and eot in toks:
        toks, reason = toks[:toks.index(eot)], 'eos'
    text = tokenizer.decode(toks)
    floor = len(tokenizer.decode(toks[:max(0, min_tokens - 1)]))  # text of the tokens before token min_tokens
    ends = [j + len(s) for s in stop if (j := text.find(s, max(0, floor - len(s) + 1))) >= 0]
    if ends:
        end, k = min(ends), len(toks)
        while k > 1 and len(tokenizer.decode(toks[:k - 1])) >= end:  # from the end: usually the stop is last
            k -= 1
        toks, text, reason = toks[:k], text[:end], 'stop'
    return {'token_ids': list(toks), 'text': text, 'finish_reason': reason}


@torch.no_grad()
def generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, top_p=1.0, n=1, min_tokens=0,
             stop=('</answer>',), seed=0, batch_size=256):
    """n samples of each prompt (strings or token-id lists) through model.generate, the one KV-cache path: rows sorted
    by prompt length, in batches of batch_size (little left padding); a batch ends once every row hit end-of-text or
    a stop string (matched as tokens on the GPU, cut as text by `finish`). Returns len(prompts) * n dicts, prompt i's
    samples at i*n ... i*n+n-1 (GRPO's groups). The context caps each batch's new tokens."""
    ctx, eot = model.config.context_length, getattr(tokenizer, 'eot_id', None)
    ids = [list(p) if isinstance(p, (list, tuple)) else tokenizer.encode(p) for p in prompts]
    bad = [(i, len(p)) for i, p in enumerate(ids) if not 0 < len(p) < ctx]
    if bad:
        raise ValueError(f"prompt {bad[0][0]} has {bad[0][1]} tokens but the model's context_length is {ctx}: no room "
                         f"to generate; every prompt needs 1 to {ctx - 1} tokens")
    rows = sorted(((i, j) for i in range(len(ids)) for j in range(n)), key=lambda r: len(ids[r[0]]))
    stop_ids = [tokenizer.encode(s) for s in stop]
    out = [None] * len(rows)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        budget = min(max_new_tokens, ctx - max(len(ids[i]) for i, _ in chunk))
        new = model.generate([ids[i] for i, _ in chunk], budget, temperature, top_p, eot, seed + s,
                             min_tokens=min_tokens, stop=stop_ids)
        for (i, j), toks in zip(chunk, new):
            out[i * n + j] = {'prompt_index': i, **finish(tokenizer, toks, stop, min_tokens)}
    return out


def evaluate(model, tokenizer, problems, reward_fn=r1_zero_reward_fn, max_new_tokens=256, seed=0, batch_size=256,
             stop=('</answer>',), log_path=None, dtype='bfloat16'):
    """A greedy response per problem ({'prompt', 'ground_truth'}), graded: accuracy with its 95% Wilson interval, format
    rate, mean response length (all / correct / incorrect). log_path: every sample (the course's log_generations)."""
    model.eval()  # (train_sft switches back to train mode)
    with amp(next(model.parameters()).device, dtype):
        outs = generate(model, tokenizer, [p['prompt'] for p in problems], max_new_tokens, stop=stop, seed=seed,
                        batch_size=batch_size)
    rewards = [reward_fn(o['text'], p['ground_truth']) for o, p in zip(outs, problems)]
    lens, ok = [len(o['token_ids']) for o in outs], [r['answer_reward'] == 1.0 for r in rewards]
    mean = lambda xs: sum(xs) / len(xs) if xs else float('nan')  # noqa: E731
    metrics = {'n': len(problems), 'accuracy': mean(ok), 'ci95': wilson_interval(sum(ok), len(ok)),
               'format_rate': mean([r['format_reward'] for r in rewards]), 'mean_len': mean(lens),
               'mean_len_correct': mean([n for n, c in zip(lens, ok) if c]),
               'mean_len_incorrect': mean([n for n, c in zip(lens, ok) if not c])}  # the course's length analysis
    if log_path:
        write_jsonl(log_path, [{'prompt': p['prompt'], 'response': o['text'], 'ground_truth': p['ground_truth'], **r,
                                'length': n, 'finish_reason': o['finish_reason']}
                               for p, o, r, n in zip(problems, outs, rewards, lens)])
    return metrics


# 5) The SFT loop (also bench/sft.py's pre-training and expert iteration)

def lr_at(progress, max_lr, warmup_frac):
    """Linear warmup then cosine decay to max_lr/10, as a function of progress = step / max_iters in [0, 1]."""
    if progress < warmup_frac:
        return max_lr * (progress + 1e-3) / warmup_frac
    decay = min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))
    return max_lr / 10 + 0.5 * (1 + math.cos(math.pi * decay)) * (max_lr - max_lr / 10)


def save_ckpt(path, model, optimizer=None, iter_num=0, **extra):
    """Atomic checkpoint in train.py's format (temp file + os.replace), so that train.py and load_policy read it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': model_args_from(model), 'iter_num': iter_num,
                'optimizer': optimizer.state_dict() if optimizer is not None else None, **extra}, path + '.tmp')
    os.replace(path + '.tmp', path)


def adamw(model, lr, weight_decay=0.0, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not norms), the usual GPT recipe; fused on CUDA."""
    ps = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in ps if p.dim() >= 2], 'weight_decay': weight_decay},
              {'params': [p for p in ps if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=ps[0].is_cuda)


def train_sft(model, tokenizer, examples, max_iters=300, batch_size=32, gradient_accumulation_steps=2,
              learning_rate=3e-4, warmup_frac=0.05, grad_clip=1.0, eval_fn=None, eval_interval=-1, log_interval=10,
              seed=0, out_dir='', ckpt_extra=None, tag='sft', dtype='bfloat16'):
    """SFT on [{'prompt', 'response'}]: AdamW, warmup + cosine, gradient accumulation, clipping, bf16 autocast. The
    loss is the mean NLL per response token (normalize_constant = the micro-batch's mean response length: the gradient's
    scale does not depend on response length). eval_fn(step) -> metrics runs every eval_interval steps and at the
    end, then out_dir/ckpt.pt and <tag>_log.jsonl are written. Returns {'loss': [(step, loss)], 'evals', 'steps'}."""
    dev, ctx = next(model.parameters()).device, model.config.context_length
    micro, pad = batch_size // gradient_accumulation_steps, pad_id_of(tokenizer)
    pairs = [(tokenizer.encode(e['prompt']), tokenizer.encode(e['response'])) for e in examples]
    data = [(p, r) for p, r in pairs if len(p) + len(r) <= ctx + 1]  # input_ids drop the last token: L-1 must fit
    if len(data) < len(pairs):
        print(f"{'!' * 60}\nWARNING: dropped {len(pairs) - len(data)} examples longer than context_length={ctx}")
    if not data or not all(r for _, r in data):
        raise ValueError(f"SFT needs examples with a non-empty response that fit context_length={ctx}")
    opt = adamw(model, learning_rate)
    hist, t0 = {'loss': [], 'evals': []}, time.time()

    def validate_and_save(step):
        if eval_fn is not None:
            hist['evals'].append({'step': step, **eval_fn(step)})
            print(f"{tag} step {step}: " + ', '.join(f"{k} {hist['evals'][-1][k]:.3f}" for k in
                                                     ('accuracy', 'format_rate', 'mean_len')))
        if out_dir:
            save_ckpt(os.path.join(out_dir, 'ckpt.pt'), model, opt, step, history=hist, **(ckpt_extra or {}))
            write_jsonl(os.path.join(out_dir, f'{tag}_log.jsonl'), [{'step': s, 'loss': v} for s, v in hist['loss']]
                        + hist['evals'])
        model.train()

    model.train()
    for step in range(max_iters):
        for g in opt.param_groups:
            g['lr'] = lr_at(step / max_iters, learning_rate, warmup_frac)
        # 1) this step's examples: a slice of its epoch's permutation
        ks = [divmod(k, len(data)) for k in range(step * batch_size, (step + 1) * batch_size)]  # (epoch, position)
        perm = {e: random.Random(seed * 7919 + e).sample(range(len(data)), len(data)) for e in {e for e, _ in ks}}
        batch = [data[perm[e][i]] for e, i in ks]
        # 2) gradient accumulation: micro-batches add their gradients (sft_microbatch_train_step never zeroes them)
        loss_sum = 0.0
        for m in range(gradient_accumulation_steps):
            b = collate_prompt_and_output(*zip(*batch[m * micro:(m + 1) * micro]), pad)
            mask = b['response_mask'].to(dev)
            with amp(dev, dtype):
                lp = get_response_log_probs(model, b['input_ids'].to(dev), b['labels'].to(dev))['log_probs']
            loss, _ = sft_microbatch_train_step(lp, mask, gradient_accumulation_steps, mask.sum() / mask.shape[0])
            loss_sum += loss.item()  # NOTE: a CPU-GPU sync point (fine at this size)
        # 3) clip the global norm (the course's 1.0), 4) step, 5) only now zero the gradients
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist['loss'].append((step + 1, loss_sum))
        if (step + 1) % log_interval == 0 or step == 0:
            print(f"{tag} step {step + 1}/{max_iters}: loss {loss_sum:.4f}, lr {opt.param_groups[0]['lr']:.2e}, "
                  f"{time.time() - t0:.0f}s")
        if eval_interval > 0 and (step + 1) % eval_interval == 0 and step + 1 < max_iters:
            validate_and_save(step + 1)
    hist['steps'], hist['time_s'] = max_iters, time.time() - t0
    validate_and_save(max_iters)
    return hist


# 6) Command line: every value checked and every input read before anything is written

def main():
    """Runs --mode from this module's globals (reads no sys.argv itself)."""
    # 1) the config on its own: ranges, combinations, files
    cfg = {k: v for k, v in globals().items() if k[0] != '_' and k != k.upper() and isinstance(v, (int, float, str))}
    checks = [(k, cfg[k] >= 1, '>= 1') for k in ('batch_size', 'gradient_accumulation_steps', 'max_iters',
                                                  'max_new_tokens', 'gen_batch_size', 'log_interval')] + [
        ('mode', mode in ('sft', 'eval'), 'sft or eval (expert iteration: bench/sft.py; DPO: dpo.py)'),
        ('learning_rate', learning_rate > 0, '> 0'), ('grad_clip', grad_clip >= 0, '>= 0 (0 = off)'),
        ('fewshot', fewshot >= 0, '>= 0'), ('eval_n', eval_n > 0 or eval_n == -1, '> 0 or -1 (all)'),
        ('dtype', dtype in ('bfloat16', 'float32'), 'bfloat16 or float32'),
        ('batch_size', batch_size % max(1, gradient_accumulation_steps) == 0, 'a multiple of the accumulation steps'),
        ('init_from', init_from, 'a checkpoint path (train.py writes out/ckpt.pt)'),
        ('train_path', train_path or (mode == 'eval' and not fewshot), 'a JSONL file for --mode=sft and --fewshot'),
        ('eval_paths', mode == 'sft' or val_path or eval_paths, 'split paths (or --val_path) for --mode=eval')]
    for k, ok, want in checks:
        if not ok:
            die(f"--{k}={cfg[k]!r} must be {want}")
    gsm8k = os.path.join(DATA, 'a5', 'gsm8k', 'test.jsonl')
    splits = {('gsm8k' if p == 'gsm8k' else os.path.splitext(os.path.basename(p))[0]): gsm8k if p == 'gsm8k' else p
              for p in ([val_path] if mode == 'eval' and val_path else []) + [p for p in eval_paths.split(',') if p]}
    inputs = [p for p in (init_from, train_path, val_path, *splits.values()) if p]
    outputs = [os.path.join(out_dir, f) for f in ['ckpt.pt', 'sft_log.jsonl', 'eval_metrics.jsonl']
               + [f'eval_{n}.jsonl' for n in splits]]
    written = outputs[2:] if mode == 'eval' else outputs  # --mode=eval writes no checkpoint: it may read out_dir's
    for p in inputs:
        if not os.path.isfile(p) or os.path.abspath(p) in map(os.path.abspath, written):
            die(f"{p} is an input and would be overwritten: choose another --out_dir" if os.path.isfile(p) else
                f"{p} not found (data/arith/prepare.py writes the task's splits, train.py and sft.py checkpoints)")
    if mode == 'sft' and os.path.exists(outputs[0]) and not overwrite:
        die(f"{outputs[0]} exists: choose another --out_dir, or --overwrite=True to replace it")
    # 2) every input read and checked before anything is written
    try:
        model, tok = load_policy(init_from, device, tokenizer_dir)
        template = load_prompt_template(prompt_template)
        reward_fn = REWARD_FNS.get(prompt_template, r1_zero_reward_fn)
        shots = [p for p in load_problems(train_path, template) if 'trace' in p][:fewshot] if fewshot else []
        if len(shots) < fewshot:
            raise ValueError(f"--fewshot={fewshot}: {train_path} has only {len(shots)} problems with a 'trace'")
        problems = {n: load_problems(p, template, shots if n != 'gsm8k' else ()) for n, p in splits.items()}
        val = load_problems(val_path, template) if val_path and mode == 'sft' else []
        examples = load_sft_examples(train_path, n_train_examples, template) if mode == 'sft' else []
        ctx = model.config.context_length
        for n, ps in list(problems.items()) + ([(val_path, val)] if val else []):  # GSM8K: the questions that
            problems[n] = [p for p in ps if len(tok.encode(p['prompt'])) + min(max_new_tokens, 32) <= ctx]  # fit
            if n != 'gsm8k' and len(problems[n]) < len(ps):  # every other split must fit whole
                raise ValueError(f"{splits.get(n, n)}: {len(ps) - len(problems[n])} prompts leave no room for an "
                                 f"answer in the context ({ctx} tokens): use a shorter --prompt_template or --fewshot")
    except (ValueError, OSError) as e:
        die(str(e))
    gen = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=gen_batch_size, dtype=dtype)

    # 3) SFT, validating on the validation split (never on test)
    if mode == 'sft':
        ev = (lambda step: evaluate(model, tok, val[:eval_n] if eval_n > 0 else val, reward_fn, **gen,
                                    log_path=os.path.join(out_dir, f'val_step{step}.jsonl'))) if val else None
        try:
            train_sft(model, tok, examples, max_iters, batch_size, gradient_accumulation_steps, learning_rate,
                      min(0.5, warmup_iters / max_iters), grad_clip, ev, eval_interval, log_interval, seed, out_dir,
                      {'config': cfg, 'tokenizer_dir': tok.tokenizer_dir}, dtype=dtype)
        except ValueError as e:  # train_sft checks its examples (e.g. none fits the context) before it writes anything
            die(str(e))
        return
    # 4) evaluation: accuracy with its 95% interval on each named split
    results = {}
    for name, probs in problems.items():
        shot = fewshot if name != 'gsm8k' else 0
        m = evaluate(model, tok, probs, fewshot_reward_fn if shot else question_only_reward_fn if name == 'gsm8k'
                     else reward_fn, **gen, stop=('Question:',) if shot else ('</answer>',),
                     log_path=os.path.join(out_dir, f'eval_{name}.jsonl'))
        results[name] = {'split': name, 'prompt': f'{shot}-shot' if shot else prompt_template, **m}
        print(f"{name}: accuracy {m['accuracy']:.1%} (95% CI {m['ci95'][0]:.1%}-{m['ci95'][1]:.1%}, n={m['n']}), "
              f"format {m['format_rate']:.1%}, prompt {results[name]['prompt']}")
    write_jsonl(outputs[2], list(results.values()))


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

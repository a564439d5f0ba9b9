"""
sft.py: supervised fine-tuning (SFT) for math reasoning, from the r1_zero grader to expert iteration and DPO.

What this file teaches (CS336 assignment 5, first half, on our own model.py models):
  1) the SFT helpers of the course: tokenize_prompt_and_output, compute_entropy, get_response_log_probs,
     masked_normalize, sft_microbatch_train_step (exact shapes and semantics, grpo.py imports them);
  2) the "r1_zero" reward: the prompt asks for `<think> ... </think> <answer> ... </answer>`; the format reward
     checks that structure, the answer reward compares the answer with the ground truth after normalization
     (numbers, fractions, \\frac, \\boxed{}, units, thousands separators, cheap symbolic equivalence via sympy);
  3) a generation Engine over model.py's KV cache: batched sampling with temperature, top-p, min/max tokens,
     stop strings, n samples per prompt, seeds, length-bucketed batches, tokens/s; the naive no-cache loop is
     kept beside it as the reference (and the benchmark baseline);
  4) evaluation (accuracy, format rate, lengths, entropy) with log_generations to JSONL;
  5) the SFT loop (grad accumulation, clip 1.0, bf16 autocast, periodic eval, checkpoint/resume, PNG curves),
     expert iteration (sample G rollouts per question, keep the correct ones, SFT on them) and DPO;
  6) a synthetic verifiable task (multi-step arithmetic word problems with exact answers and worked traces)
     and a demo that pretrains a small model, SFTs it, runs expert iteration and compares base / SFT / EI.

No pretrained math model can be downloaded here, so the demo builds its own: see `--mode=demo` below.

Run (one CPU or one GPU):
    python sft.py --mode=demo                              # CPU smoke size, a few minutes
    python sft.py --mode=demo --demo_preset=gpu            # the H100 preset (< 9 minutes, see results/sft.md)
    python sft.py --mode=sft --init_from=out/ckpt.pt --train_path=sft.jsonl --val_path=val.jsonl
    python sft.py --mode=ei  --init_from=out-sft/ckpt.pt   # expert iteration on the synthetic task
    python sft.py --mode=dpo --init_from=out-sft/ckpt.pt --train_path=prefs.jsonl
    python sft.py --mode=eval --init_from=out-sft/ckpt.pt --eval_set=gsm8k
    python sft.py --mode=bench                             # KV-cache engine vs naive no-cache generation
The loops are single-process (post-training of small models fits one GPU); grpo.py adds the RL half.
"""
import contextlib
import json
import math
import os
import random
import re
import time
from fractions import Fraction

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# default config values (override on the command line: --key=value, or a config file)
# I/O
mode = 'demo'  # demo | sft | ei | dpo | eval | bench | make_data
out_dir = 'out-sft'  # checkpoints, curves and generation logs go here
results_dir = 'results'  # where --mode=demo and --mode=bench write their tables and plots
init_from = ''  # path of a model.py checkpoint (train.py's ckpt.pt), 'resume' (out_dir/ckpt.pt), or 'hf:<name or path>'
tokenizer_dir = ''  # bpe.py tokenizer folder; '' = the one stored in the checkpoint's config, else byte-level
seed = 1337  # all sampling and data shuffling is seeded from this
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda | cuda:1 ...
dtype = 'bfloat16'  # autocast dtype on cuda: bfloat16 | float32 (CPU always runs float32)
# data
train_path = ''  # SFT: JSONL of {"prompt", "response"[, "ground_truth"]}; DPO: {"prompt", "chosen", "rejected"}
val_path = ''  # JSONL of {"prompt", "ground_truth"} (or {"question", "answer"}); '' = the synthetic held-out set
eval_set = 'synthetic'  # eval mode: synthetic | gsm8k | <path of a JSONL>
prompt_template = 'r1_zero'  # a name in shared/data/a5/prompts (r1_zero | question_only) or a path
n_train_examples = -1  # SFT on the first N examples only (the course's 128/256/512/1024); -1 = all
filter_correct = False  # keep only SFT examples whose response earns reward 1 against their ground_truth
# synthetic task
task_n_train = 20000  # synthetic training problems (questions + worked traces)
task_n_val = 500  # held-out problems (never seen in any training text)
task_min_steps = 2  # operations per problem, from ...
task_max_steps = 3  # ... to (inclusive)
task_max_number = 20  # operands are drawn from 1..task_max_number
# SFT optimization
batch_size = 32  # sequences per optimizer step (= micro_batch_size * gradient_accumulation_steps)
gradient_accumulation_steps = 2  # micro-steps per optimizer step
learning_rate = 3e-4  # peak AdamW learning rate (cosine decay to learning_rate/10 after warmup)
weight_decay = 0.0  # AdamW weight decay
warmup_iters = 20  # linear warmup steps
max_iters = 300  # optimizer steps of the SFT run
grad_clip = 1.0  # clip the global gradient norm at this value (0 = off)
eval_interval = 100  # evaluate (generate + grade) every N steps; -1 = only at the end
eval_n = 200  # problems per periodic evaluation (the final one uses the whole set)
log_interval = 10  # print the loss every N steps
save_checkpoint = True  # write out_dir/ckpt.pt at each eval and at the end (atomic)
# generation
max_new_tokens = 256  # per response
temperature = 0.0  # 0 = greedy; evaluation default
top_p = 1.0  # nucleus sampling mass
gen_batch_size = 256  # rows per generation batch (prompts x samples); prompts are bucketed by length
engine_backend = 'auto'  # auto | kv (model.py KV cache) | hf (transformers generate) | vllm (HF models, if installed)
# expert iteration
ei_steps = 3  # rounds of (sample, filter correct, SFT)
ei_questions = 512  # questions sampled per round (the course's D_b)
ei_rollouts = 4  # samples per question (G)
ei_temperature = 1.0  # sampling temperature of the rollouts
ei_epochs = 1  # SFT epochs over the kept rollouts of a round
# DPO
dpo_beta = 0.1  # the beta of the DPO loss (strength of the implicit KL to the reference)
# demo
demo_preset = 'cpu'  # cpu (tiny, minutes on a laptop) | gpu (one H100, < 9 minutes)
# benchmark
bench_new_tokens = 256  # new tokens per sequence in --mode=bench
bench_batch = 64  # sequences per batch in --mode=bench
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in _config_keys}  # noqa: F821 (set by configurator.py)
# -----------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.abspath(os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data')))


# =============================================================================
# Tokenizer handling: bpe.py's Tokenizer, or a Hugging Face tokenizer
# =============================================================================

def _is_hf_tokenizer(tokenizer):
    return hasattr(tokenizer, 'convert_tokens_to_ids')


def encode(tokenizer, text):
    """Token ids of text, with no special tokens added (HF tokenizers would otherwise prepend BOS)."""
    if _is_hf_tokenizer(tokenizer):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def decode(tokenizer, ids):
    if _is_hf_tokenizer(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=False)
    return tokenizer.decode(ids)


def eos_id_of(tokenizer):
    """The end-of-sequence id: bpe.py's eot_id ('<|endoftext|>'), or HF's eos_token_id; None if there is none."""
    if _is_hf_tokenizer(tokenizer):
        return tokenizer.eos_token_id
    return getattr(tokenizer, 'eot_id', None)


def pad_id_of(tokenizer):
    """Padding id. Its value never matters for the loss (padding is masked), only that it is a valid id."""
    if _is_hf_tokenizer(tokenizer) and tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    eos = eos_id_of(tokenizer)
    return eos if eos is not None else 0


def byte_tokenizer():
    """bpe.py's Tokenizer with no merges: 256 byte tokens + '<|endoftext|>' (id 256).
    Byte-level is a good fit for arithmetic (every digit is its own token) and needs no training."""
    import bpe
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b'<|endoftext|>'
    return bpe.Tokenizer(vocab, [], special_tokens=['<|endoftext|>'])


# =============================================================================
# 1) The course's SFT helpers (exact semantics: grpo.py and the tests rely on them)
# =============================================================================

def tokenize_prompt_and_output(prompt_strs, output_strs, tokenizer):
    """Tokenize each prompt and output separately, concatenate, right-pad to the longest with the pad id.

    Returns {'input_ids': full[:, :-1], 'labels': full[:, 1:], 'response_mask': bool}, each (B, L-1) where L is
    the longest prompt+output. response_mask[b, t] is True exactly when labels[b, t] is an output token
    (so the loss on the output is sum(log p(labels) * response_mask)).
    """
    if len(prompt_strs) != len(output_strs):
        raise ValueError(f"{len(prompt_strs)} prompts but {len(output_strs)} outputs")
    prompt_ids = [encode(tokenizer, p) for p in prompt_strs]
    output_ids = [encode(tokenizer, o) for o in output_strs]
    return collate_prompt_and_output(prompt_ids, output_ids, pad_id_of(tokenizer))


def collate_prompt_and_output(prompt_ids, output_ids, pad):
    """tokenize_prompt_and_output on already tokenized lists (the training loops tokenize once, up front)."""
    L = max(len(p) + len(o) for p, o in zip(prompt_ids, output_ids))
    if L < 2:
        raise ValueError("every prompt+output is shorter than 2 tokens: nothing to predict")
    full = torch.full((len(prompt_ids), L), pad, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(prompt_ids), L), dtype=torch.bool)  # True on output tokens of `full`
    for b, (p, o) in enumerate(zip(prompt_ids, output_ids)):
        full[b, :len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        mask[b, len(p):len(p) + len(o)] = True
    # position t predicts token t+1: labels and mask shift left by one
    return {'input_ids': full[:, :-1], 'labels': full[:, 1:], 'response_mask': mask[:, 1:]}


def compute_entropy(logits):
    """Entropy of softmax(logits) over the last dim, (B, T, V) -> (B, T).
    H = -sum p log p = logsumexp(z) - sum softmax(z) * z, which never takes log(0) (stable for any logits)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # (B, T)
    p = torch.softmax(logits, dim=-1)  # (B, T, V)
    return lse - (p * logits).sum(dim=-1)


def _logits_of(model, input_ids):
    """model.py models return logits; HF models return an object with .logits."""
    out = model(input_ids)
    return out.logits if hasattr(out, 'logits') else out


def get_response_log_probs(model, input_ids, labels, return_token_entropy=False):
    """Per-token log p(labels[b, t] | input_ids[b, :t+1]) -> {'log_probs': (B, T)} (+ 'token_entropy' (B, T)).
    Nothing is masked here: callers mask with response_mask."""
    logits = _logits_of(model, input_ids).float()  # (B, T, V); fp32 for a stable log-softmax
    # log_softmax gathered at the label = logit[label] - logsumexp(logits): no (B, T, V) log-prob tensor kept
    log_probs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = {'log_probs': log_probs}
    if return_token_entropy:
        with torch.no_grad():  # entropy is a diagnostic: no graph through it
            out['token_entropy'] = compute_entropy(logits)
    return out


def masked_normalize(tensor, mask, normalize_constant, dim=None):
    """sum(tensor * mask) over dim (all elements when None) / normalize_constant."""
    masked = tensor * mask.to(tensor.dtype)
    total = masked.sum() if dim is None else masked.sum(dim=dim)
    return total / normalize_constant


def sft_microbatch_train_step(policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant=1.0):
    """One micro-batch of SFT: loss = mean over the batch of -(sum of response log-probs / normalize_constant),
    divided by gradient_accumulation_steps; calls backward() (gradients ADD UP over micro-steps; never zeroed here).
    Returns (loss, metadata)."""
    per_seq = masked_normalize(policy_log_probs, response_mask, normalize_constant, dim=-1)  # (B,)
    loss = -per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    n_tokens = response_mask.sum()
    meta = {'n_response_tokens': n_tokens.detach(),
            'mean_log_prob': (masked_normalize(policy_log_probs.detach(), response_mask, 1.0) /
                              n_tokens.clamp(min=1)).detach()}
    return loss.detach(), meta


# =============================================================================
# 2) The r1_zero grader: strict format, forgiving (but exact) answer comparison
# =============================================================================

def _last_boxed(s):
    """Content of the last \\boxed{...} (or \\fbox{...}) in s with balanced braces; None if absent or unbalanced.
    Also accepts the brace-less form '\\boxed 5'."""
    idx = max(s.rfind('\\boxed'), s.rfind('\\fbox'))
    if idx < 0:
        return None
    rest = s[idx:]
    rest = rest[len('\\boxed'):] if rest.startswith('\\boxed') else rest[len('\\fbox'):]
    if rest.startswith(' '):  # '\boxed 5': up to the next space or '$'
        return re.split(r'[\s$]', rest.strip(), maxsplit=1)[0] or None
    if not rest.startswith('{'):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += (ch == '{') - (ch == '}')
        if depth == 0:
            return rest[1:i]
    return None  # unbalanced braces: no answer


def _replace_latex_group(s, command, fmt):
    """Replace '\\command{X}' by fmt.format(X) with balanced braces (e.g. \\text{X} -> X)."""
    out, i = [], 0
    while True:
        j = s.find(command + '{', i)
        if j < 0:
            return ''.join(out) + s[i:]
        depth, k = 0, j + len(command)
        for k in range(j + len(command), len(s)):
            depth += (s[k] == '{') - (s[k] == '}')
            if depth == 0:
                break
        if depth != 0:  # unbalanced: leave as is
            return ''.join(out) + s[i:]
        out.append(s[i:j] + fmt.format(s[j + len(command) + 1:k]))
        i = k + 1


def _frac_to_division(s):
    """\\frac{a}{b} -> ((a)/(b)) with nesting, \\frac12 -> ((1)/(2)); a mixed number 2\\frac{1}{2} -> (2+(1)/(2))."""
    s = re.sub(r'\\frac(\d)(\d)', r'\\frac{\1}{\2}', s)
    s = re.sub(r'(?<![\d.])(\d+)\\frac\{([^{}]*)\}\{([^{}]*)\}', r'(\1+(\2)/(\3))', s)  # mixed number
    for _ in range(10):  # innermost first; a few levels of nesting are plenty
        new = re.sub(r'\\frac\{([^{}]*)\}\{([^{}]*)\}', r'((\1)/(\2))', s)
        if new == s:
            break
        s = new
    return s


def normalize_answer(answer):
    """Normalize a final answer string for comparison (after Hendrycks et al.'s MATH normalization, simplified):
    strips \\boxed, \\text{}, $ signs, spacing commands, \\left/\\right, degrees, %, trailing '.', 'x =' prefixes,
    thousands separators and trailing unit words ('18 apples' -> '18'); removes all spaces."""
    if answer is None:
        return ''
    s = str(answer).strip()
    boxed = _last_boxed(s)
    if boxed is not None:
        s = boxed
    for cmd in ('\\text', '\\textbf', '\\mbox', '\\mathrm', '\\mathbf'):
        s = _replace_latex_group(s, cmd, '{}')
    s = s.replace('{,}', '').replace('\\!', '').replace('\\,', '').replace('\\;', '').replace('\\:', '')
    s = s.replace('\\ ', ' ').replace('\\left', '').replace('\\right', '').replace('\\$', '').replace('$', '')
    s = s.replace('^\\circ', '').replace('^{\\circ}', '').replace('\\%', '').replace('%', '')
    s = s.replace('dfrac', 'frac').replace('tfrac', 'frac').replace('\\displaystyle', '')
    s = s.strip().rstrip('.').strip()
    m = re.fullmatch(r'([a-zA-Z]\w{0,1})\s*=\s*(.+)', s)  # 'x = 5' -> '5' (a short variable name only)
    if m:
        s = m.group(2).strip()
    m = re.fullmatch(r'(-?[\d.,/]*\d)\s+([a-zA-Z][a-zA-Z .]*)', s)  # '18 apples', '5 cm.' -> the number
    if m:
        s = m.group(1)
    if re.fullmatch(r'-?\d{1,3}(,\d{3})+(\.\d+)?', s):  # thousands separators: 1,234,567.5
        s = s.replace(',', '')
    return s.replace(' ', '')


def _to_fraction(s):
    """Exact value of a plain number / fraction / arithmetic expression of numbers (e.g. '((1)/(2))', '-0.25',
    '2+(1)/(2)'), via Python's own parser restricted to number literals and + - * / (no eval); None otherwise."""
    import ast
    if not s or len(s) > 100 or not re.fullmatch(r'[\d.+\-*/() ]+', s):
        return None
    try:
        tree = ast.parse(s, mode='eval').body
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            return a / b  # ZeroDivisionError is caught below
        raise ValueError('unsupported')
    try:
        # literals are re-read from the source text so that 0.1 stays exactly 1/10
        if re.fullmatch(r'-?\d+(\.\d+)?', s):
            return Fraction(s)
        return ev(tree)
    except (ValueError, ZeroDivisionError):
        return None


_SYMPY_NAMES = {'sqrt', 'pi', 'sin', 'cos', 'tan', 'log', 'ln', 'exp', 'I'}


def _latex_to_sympy_str(s):
    """Cheap LaTeX -> sympy syntax for short expressions: \\frac, \\sqrt, \\pi, \\cdot, \\times, ^, braces."""
    s = re.sub(r'\\sqrt(\d)', r'sqrt(\1)', s)
    for _ in range(3):  # nested roots: innermost groups are rewritten first, outer ones next round
        s = _replace_latex_group(s, '\\sqrt', 'sqrt({})')
    s = _frac_to_division(s)  # after \sqrt{...} lost its braces, so \frac{\sqrt{2}}{2} matches
    s = s.replace('\\pi', 'pi').replace('\\cdot', '*').replace('\\times', '*').replace('\\ln', 'ln')
    s = s.replace('\\log', 'log').replace('\\sin', 'sin').replace('\\cos', 'cos').replace('\\tan', 'tan')
    s = s.replace('^', '**').replace('{', '(').replace('}', ')')
    return s


def _sympy_equal(a, b):
    """Symbolic equality for short expressions, e.g. (x+1)^2 == x^2+2x+1 or \\sqrt{2}/2 == \\frac{\\sqrt{2}}{2}.
    SECURITY: sympy's parser calls eval(), and answers are model outputs: we only let through digits, operators,
    brackets and whitelisted names (single letters or _SYMPY_NAMES), so nothing like __import__ can get in.
    Huge powers are refused so that a cheap check stays cheap."""
    try:
        from sympy import simplify
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)
    except ImportError:
        return False
    exprs = []
    for s in (a, b):
        s = _latex_to_sympy_str(s)
        if len(s) > 80 or not re.fullmatch(r'[0-9a-zA-Z+\-*/().,\s]*', s) or not s.strip():
            return False
        if any(len(w) > 1 and w not in _SYMPY_NAMES for w in re.findall(r'[a-zA-Z]+', s)):
            return False
        if re.search(r'\*\*\s*\(?\s*-?\d{3,}', s) or s.count('**') > 3:
            return False
        exprs.append(s)
    try:
        tr = standard_transformations + (implicit_multiplication_application,)
        ea, eb = (parse_expr(s, transformations=tr, evaluate=True) for s in exprs)
        if isinstance(ea, tuple) or isinstance(eb, tuple):
            return False  # tuples are compared as normalized strings only
        return bool(simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001 -- sympy raises many types on junk input; junk is simply "not equal"
        return False


def grade_answer(given, ground_truth):
    """True when the given answer equals the ground truth: same normalized string, same exact number, or (cheap)
    symbolically equal."""
    a, b = normalize_answer(given), normalize_answer(ground_truth)
    if not a or not b:  # an empty answer is never right (not even against an empty ground truth)
        return False
    # cheapest test first: identical strings; then exact numbers (Fraction, so 0.1 + 0.2 == 0.3 exactly and
    # 1/3 != 0.333); sympy only for what is left
    if a == b or a.lower() == b.lower():
        return True
    fa, fb = _to_fraction(_frac_to_division(a)), _to_fraction(_frac_to_division(b))
    if fa is not None and fb is not None:
        return fa == fb
    if (fa is None) != (fb is None) and not re.search(r'[a-zA-Z\\]', a + b):
        return False  # a number vs a non-number with no symbols (e.g. '1,2' vs '12'): different
    return _sympy_equal(a, b)


def _grade_any(answer, ground_truth):
    if isinstance(ground_truth, (int, float)):
        ground_truth = str(ground_truth)
    if isinstance(ground_truth, (list, tuple)):
        return any(grade_answer(answer, str(g)) for g in ground_truth)
    return grade_answer(answer, ground_truth)


def r1_zero_reward_fn(response, ground_truth):
    """The course's r1_zero reward. The prompt ends with 'Assistant: <think>', so a well-formed response looks like
    ' reasoning </think> <answer> 18 </answer>'. Format: '</think> <answer>' (exactly one space) and '</answer>'
    must both appear (strict, as in the course). Answer: the text between the last '<answer>' and the '</answer>'
    after it (a \\boxed{} inside is unwrapped). A formatted but wrong answer gets format_reward 1 and reward 0."""
    zero = {'format_reward': 0.0, 'answer_reward': 0.0, 'reward': 0.0}
    if '</think> <answer>' not in response or '</answer>' not in response:
        return zero
    answer = response.split('<answer>')[-1]
    if '</answer>' not in answer:  # '</answer>' came before the last '<answer>'
        return zero
    answer = answer.split('</answer>')[0]
    if '\\boxed' in answer:
        answer = _last_boxed(answer)
        if answer is None:
            return {'format_reward': 1.0, 'answer_reward': 0.0, 'reward': 0.0}
    if _grade_any(answer, ground_truth):
        return {'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}
    return {'format_reward': 1.0, 'answer_reward': 0.0, 'reward': 0.0}


def question_only_reward_fn(response, ground_truth):
    """Grader for the question_only prompt (no format asked): the answer is the last \\boxed{} if there is one,
    else the last number in the response. format_reward = 1 when an answer could be extracted."""
    answer = _last_boxed(response)
    if answer is None:
        nums = re.findall(r'-?\d[\d,]*(?:\.\d+)?(?:/\d+)?', response)
        answer = nums[-1].rstrip(',') if nums else None
    if answer is None:
        return {'format_reward': 0.0, 'answer_reward': 0.0, 'reward': 0.0}
    ok = float(_grade_any(answer, ground_truth))
    return {'format_reward': 1.0, 'answer_reward': ok, 'reward': ok}


REWARD_FNS = {'r1_zero': r1_zero_reward_fn, 'question_only': question_only_reward_fn}


# =============================================================================
# 3) Data: JSONL with line-numbered errors, prompts, GSM8K, the synthetic task
# =============================================================================

def read_jsonl(path, required=()):
    """Records of a JSON-lines file. Blank lines are skipped; a bad line stops us with its line number."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    records = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                                 f"each line must be one JSON object") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing key(s) {missing}; the line has {sorted(rec)}")
            rec['_line'] = lineno
            records.append(rec)
    return records


def write_jsonl(path, records):
    """Atomic JSONL write (temp file + os.replace): a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != '_line'}, ensure_ascii=False) + '\n')
    os.replace(tmp, path)


def load_sft_examples(path, n=-1, filter_correct=False, reward_fn=None):
    """SFT pairs from a JSONL of {"prompt", "response"[, "ground_truth"]}: first n (-1 = all), optionally only
    those whose response is graded correct against their ground_truth (the course's filtered SFT)."""
    recs = read_jsonl(path, required=('prompt', 'response'))
    for r in recs:
        if not isinstance(r['response'], str) or not r['response'].strip():
            raise ValueError(f"{path}:{r['_line']}: empty response; SFT needs a non-empty target text")
    if filter_correct:
        if any('ground_truth' not in r for r in recs):
            line = next(r['_line'] for r in recs if 'ground_truth' not in r)
            raise ValueError(f"{path}:{line}: filter_correct needs a 'ground_truth' on every line")
        reward_fn = reward_fn or r1_zero_reward_fn
        kept = [r for r in recs if reward_fn(r['response'], r['ground_truth'])['reward'] == 1.0]
        print(f"filter_correct: kept {len(kept)}/{len(recs)} examples of {path}")
        recs = kept
    return recs if n < 0 else recs[:n]


# The course's two math prompts, as in shared/data/a5/prompts (used when that folder is not there, e.g. on a
# GPU machine that only receives the repository; the test suite checks that they equal the files)
BUILTIN_PROMPTS = {
    'r1_zero': "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
               "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
               "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
               "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
               "here </answer>.\nUser: {question}\nAssistant: <think>",
    'question_only': '{question}',
}


def load_prompt_template(name):
    """A prompt template with a '{question}' slot: a name in shared/data/a5/prompts, a path, or a literal."""
    if '{question}' in name:
        return name
    path = name if os.path.exists(name) else os.path.join(DATA, 'a5', 'prompts', f'{name}.prompt')
    if not os.path.exists(path) and name in BUILTIN_PROMPTS:
        return BUILTIN_PROMPTS[name]
    if not os.path.exists(path):
        raise FileNotFoundError(f"prompt template '{name}' not found (looked for {path}); "
                                f"use r1_zero, question_only, a file path, or set LMSCRATCH_DATA")
    with open(path, encoding='utf-8') as f:
        template = f.read()
    if '{question}' not in template:
        raise ValueError(f"prompt template {path} has no '{{question}}' slot")
    return template


def format_prompt(template, question):
    return template.replace('{question}', question)  # not str.format: questions may contain braces


def load_gsm8k(split='test', data_dir=None):
    """GSM8K as [{'question', 'ground_truth', 'solution'}]; the ground truth is the number after '#### '
    (thousands separators removed). The reference solution's '<<48/2=24>>' calculator notes are dropped."""
    path = os.path.join(data_dir or DATA, 'a5', 'gsm8k', f'{split}.jsonl')
    out = []
    for r in read_jsonl(path, required=('question', 'answer')):
        if '####' not in r['answer']:
            raise ValueError(f"{path}:{r['_line']}: GSM8K answer without '#### <number>'")
        sol, gt = r['answer'].rsplit('####', 1)
        sol = re.sub(r'<<[^>]*>>', '', sol).strip()
        out.append({'question': r['question'], 'ground_truth': gt.strip().replace(',', ''), 'solution': sol})
    return out


def r1_response(trace, answer):
    """An SFT target in the r1_zero format (the prompt already ends with '<think>')."""
    return f" {trace} </think> <answer> {answer} </answer>"


# --- the synthetic verifiable task ------------------------------------------------
# Multi-step arithmetic word problems: a count of objects changes through 2-4 events (find, give away, buy packs,
# share equally, ...). Every problem has an exact integer answer and a worked trace, e.g.
#   Q: Nora has 12 shells. Nora finds 7 more shells. Nora buys 3 packs of 4 shells. How many shells does Nora have now?
#   trace: 12 + 7 = 19. 3 * 4 = 12. 19 + 12 = 31.          (answer: 31)
# The trace is the bare arithmetic, one equation per operation: short responses keep generation and SFT cheap.
# All numbers stay in 0..999 so a small byte-level model can learn the arithmetic digit by digit.
TASK_NAMES = ['Ava', 'Ben', 'Cleo', 'Dan', 'Eli', 'Fay', 'Gus', 'Hana', 'Ivan', 'Jade', 'Kai', 'Lena', 'Milo',
              'Nora', 'Omar', 'Pia', 'Quinn', 'Rosa', 'Sam', 'Tara', 'Uma', 'Vic', 'Wes', 'Yara', 'Zoe']
TASK_ITEMS = ['apples', 'marbles', 'stickers', 'books', 'coins', 'pencils', 'cookies', 'shells', 'cards', 'stamps',
              'eggs', 'beads', 'rocks', 'toys', 'plums']


def _task_step(rng, x, name, item, max_n):
    """One event applied to the count x -> (sentence, trace, new x), or None when it does not fit (e.g. x < b)."""
    kind = rng.choice(['add', 'sub', 'add_groups', 'sub_groups', 'mul', 'div'])
    b, k, m = rng.randint(1, max_n), rng.randint(2, 5), rng.randint(2, max(2, max_n // 2))
    if kind == 'add':
        y = x + b
        return f"{name} finds {b} more {item}.", f"{x} + {b} = {y}.", y
    if kind == 'sub' and b <= x:
        y = x - b
        return f"{name} gives away {b} {item}.", f"{x} - {b} = {y}.", y
    if kind == 'add_groups':
        y = x + k * m
        return f"{name} buys {k} packs of {m} {item}.", f"{k} * {m} = {k * m}. {x} + {k * m} = {y}.", y
    if kind == 'sub_groups' and k * m <= x:
        y = x - k * m
        return f"{name} gives {k} friends {m} {item} each.", f"{k} * {m} = {k * m}. {x} - {k * m} = {y}.", y
    if kind == 'mul' and 0 < x * k <= 999 and k <= 3:
        y = x * k
        return f"{name} ends up with {k} times as many {item}.", f"{x} * {k} = {y}.", y
    if kind == 'div' and x >= k and x % k == 0:
        y = x // k
        return (f"{name} shares the {item} equally among {k} kids and keeps one share.", f"{x} / {k} = {y}.", y)
    return None


def make_problem(rng, min_steps=2, max_steps=3, max_number=20):
    """One problem {'question', 'trace', 'answer'} from a random.Random."""
    name, item = rng.choice(TASK_NAMES), rng.choice(TASK_ITEMS)
    x = rng.randint(1, max_number)
    sentences, traces = [f"{name} has {x} {item}."], []
    n_steps = rng.randint(min_steps, max_steps)
    while len(sentences) - 1 < n_steps:
        step = _task_step(rng, x, name, item, max_number)
        if step is None or step[2] > 999:
            continue
        sentences.append(step[0])
        traces.append(step[1])
        x = step[2]
    sentences.append(f"How many {item} does {name} have now?")
    return {'question': ' '.join(sentences), 'trace': ' '.join(traces), 'answer': str(x)}


def make_synthetic_task(n_train, n_val, seed=0, min_steps=2, max_steps=3, max_number=20):
    """Deterministic train / held-out split: the same seed gives the same problems; no held-out question text
    appears in the training set (duplicates are redrawn)."""
    rng = random.Random(seed)
    val, seen = [], set()
    while len(val) < n_val:
        p = make_problem(rng, min_steps, max_steps, max_number)
        if p['question'] not in seen:
            seen.add(p['question'])
            val.append(p)
    train = []
    for _ in range(100 * (n_train + 1)):
        if len(train) == n_train:
            break
        p = make_problem(rng, min_steps, max_steps, max_number)
        if p['question'] not in seen:
            train.append(p)
    if len(train) < n_train:
        raise ValueError(f"could only draw {len(train)} distinct training problems; raise task_max_number or steps")
    return train, val


def pretrain_text(problem):
    """How a problem looks in the demo's pretraining corpus: worked solutions, but NOT in the <think>/<answer>
    format, so the base model can do the arithmetic yet fails the r1_zero format until SFT teaches it."""
    return f"Question: {problem['question']}\nSolution: {problem['trace']}\nAnswer: {problem['answer']}\n"


# =============================================================================
# 4) Loading policies: model.py checkpoints (ours) or Hugging Face models
# =============================================================================

def load_policy(path, device='cpu', tokenizer_dir=''):
    """(model, tokenizer) from a model.py checkpoint (train.py's or ours), or 'hf:<name or path>'.
    The tokenizer comes from tokenizer_dir, else from the checkpoint ('tokenizer_dir', config['tokenizer_dir'] or
    the data folder's meta.json), else byte-level when the checkpoint says so."""
    if path.startswith('hf:'):
        return load_hf_policy(path[3:], device)
    from model import TransformerLM
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found: train.py or sft.py write <out_dir>/ckpt.pt")
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    if 'model_args' not in ckpt or 'model' not in ckpt:
        raise ValueError(f"{path} is not a model.py checkpoint (it needs 'model' and 'model_args' entries)")
    model = TransformerLM(**ckpt['model_args'])
    # a checkpoint of a torch.compile'd model has its keys prefixed with '_orig_mod.' (the compiled wrapper's
    # attribute name); strip it so the plain module loads it
    state = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    model.load_state_dict(state)
    model.to(device)
    cfg = ckpt.get('config') or {}
    tok_dir = tokenizer_dir or ckpt.get('tokenizer_dir') or cfg.get('tokenizer_dir') or ''
    if not tok_dir and cfg.get('data_dir') and os.path.exists(os.path.join(cfg['data_dir'], 'meta.json')):
        with open(os.path.join(cfg['data_dir'], 'meta.json')) as f:
            tok_dir = json.load(f).get('tokenizer_dir', '')
        if tok_dir and not os.path.isabs(tok_dir):
            tok_dir = os.path.join(cfg['data_dir'], tok_dir)
    if tok_dir:
        import bpe
        tok = bpe.Tokenizer.from_dir(tok_dir)
        tok.tokenizer_dir = os.path.abspath(tok_dir)  # saved into the checkpoints we write, so they load alone
        return model, tok
    if ckpt.get('tokenizer') == 'bytes' or model.config.vocab_size == 257:
        return model, byte_tokenizer()
    raise ValueError(f"{path}: no tokenizer found; pass --tokenizer_dir=<bpe.py tokenizer folder>")


def load_hf_policy(name_or_path, device='cpu'):
    """A Hugging Face causal LM and its tokenizer (e.g. Qwen/Qwen2.5-Math-1.5B, if you have it). Optional:
    transformers is imported only here. The helpers above accept its outputs (.logits) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(name_or_path)
    dt = torch.bfloat16 if str(device).startswith('cuda') else torch.float32
    model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=dt).to(device)
    return model, tok


# =============================================================================
# 5) The generation engine: model.py's static KV cache, length-bucketed batches
# =============================================================================

def _token_bytes_fn(tokenizer):
    """id -> bytes. bpe.py's Tokenizer has the exact table (.vocab); for others decode one token at a time
    (approximate for characters split across tokens, which only matters for stop strings spanning them)."""
    vocab = getattr(tokenizer, 'vocab', None)
    if isinstance(vocab, dict) and vocab and isinstance(next(iter(vocab.values())), bytes):
        return vocab.__getitem__
    return lambda i: decode(tokenizer, [i]).encode('utf-8')


class Engine:
    """Sampling from a model.py TransformerLM with its KV cache. Knows about text only for stop strings.

    Prompts (times n samples each) are sorted by length and cut into batches of at most batch_size rows, so a
    batch holds prompts of similar length (little left padding; model.py's KVCache masks what there is). Each batch
    runs one prefill forward over the prompts, then one cached decode step per token (a CUDA graph on GPU,
    model.py's _decode_step). Every `check_every` tokens the new tokens are copied to the CPU (a sync point) to look
    for end-of-text and stop strings; the batch ends as soon as every row has finished.
    """

    def __init__(self, model, tokenizer, batch_size=256, check_every=8, cuda_graph=True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.check_every, self.cuda_graph = batch_size, check_every, cuda_graph
        # tokenizer=None is allowed for token-id prompts without stop strings (the text of the results is then '')
        self.token_bytes = _token_bytes_fn(tokenizer) if tokenizer is not None else (lambda i: b'')
        self.eos_id = eos_id_of(tokenizer) if tokenizer is not None else None
        self.stats = {}

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, min_tokens=0, stop=None, n=1,
                 seed=None, include_stop=True, use_cache=True, progress=False):
        """Sample n completions of each prompt (strings). Returns a list of len(prompts) * n dicts
        {'prompt_index', 'text', 'token_ids', 'finish_reason' ('stop' | 'eos' | 'length')}; the samples of prompt i
        are at i*n ... i*n+n-1 (grpo.py's groups). temperature 0 = greedy. min_tokens: end-of-text is suppressed and
        stop strings ignored before that many new tokens. A stop string is kept in the text when include_stop
        (the r1_zero grader needs '</answer>'). seed makes the call reproducible. use_cache=False runs the naive
        reference (the whole sequence again for every token)."""
        model = self.model
        ctx = model.config.context_length
        device = next(model.parameters()).device
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        # prompts are strings, or token-id lists (already tokenized; e.g. the benchmark's random prompts)
        prompt_ids = [list(p) if isinstance(p, (list, tuple)) else encode(self.tokenizer, p) for p in prompts]
        for i, p in enumerate(prompt_ids):
            if not p:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            if len(p) >= ctx:
                raise ValueError(f"prompt {i} has {len(p)} tokens but the model's context_length is {ctx}: "
                                 f"no room to generate; shorten the prompt or use a longer-context model")
        rows = [(i * n + j, prompt_ids[i]) for i in range(len(prompts)) for j in range(n)]
        rows.sort(key=lambda r: len(r[1]))  # length buckets: neighbours have similar lengths
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else random.randrange(2 ** 62))
        results = [None] * len(rows)
        t0, n_new, batches = time.time(), 0, range(0, len(rows), self.batch_size)
        # bf16 on CUDA unless the caller already chose a precision
        amp = _autocast(device) if not torch.is_autocast_enabled(device.type) else contextlib.nullcontext()
        with amp:
            if progress:
                from tqdm import tqdm
                batches = tqdm(batches, desc='generate', unit='batch')
            for s in batches:
                chunk = rows[s:s + self.batch_size]
                ids = [r[1] for r in chunk]
                budget = min(max_new_tokens, ctx - max(len(p) for p in ids))  # the context caps the whole batch
                run = self._run_cached if use_cache else self._run_naive
                new_tokens = run(ids, budget, temperature, top_p, min_tokens, stop, generator)
                for (gi, _), toks in zip(chunk, new_tokens):
                    results[gi] = self._finish(gi // n, toks, budget, min_tokens, stop, include_stop)
                    n_new += len(results[gi]['token_ids'])
        if device.type == 'cuda':
            torch.cuda.synchronize()
        dt = time.time() - t0
        self.stats = {'new_tokens': n_new, 'time_s': dt, 'tokens_per_s': n_new / max(dt, 1e-9), 'rows': len(rows)}
        return results

    def _sample(self, logits, t, temperature, top_p, min_tokens, generator):
        from model import TransformerLM
        if t < min_tokens and self.eos_id is not None:
            logits[:, self.eos_id] = float('-inf')  # min_tokens: end-of-text not allowed yet
        return TransformerLM._sample(logits, temperature, top_p, generator)  # greedy / temperature + top-p

    def _row_finished(self, toks, n_new, min_tokens, stops_b):
        """Has this row (its new token ids so far, the last n_new of them just added) hit end-of-text or a stop
        string (ending at or after token min_tokens)? Only the tail can hold a new match: a stop string of k bytes
        spans at most k tokens."""
        if self.eos_id is not None and self.eos_id in toks[-n_new:]:
            return True
        if stops_b and len(toks) >= min_tokens:
            start = max(0, len(toks) - n_new - max(len(sb) for sb in stops_b), min_tokens - 1)
            text = b''.join(self.token_bytes(t) for t in toks[start:])
            return any(sb in text for sb in stops_b)
        return False

    def _run_cached(self, ids, budget, temperature, top_p, min_tokens, stop, generator):
        """One batch with the KV cache: (B lists of prompt ids) -> B lists of new token ids (raw, uncut)."""
        model = self.model
        device = next(model.parameters()).device
        B, P = len(ids), max(len(p) for p in ids)
        # a cache of S slots serves every batch of the same (B, S): round S up so that batches share caches (and
        # their CUDA graphs) instead of capturing a new graph for every prompt length
        S = min(model.config.context_length, -(-(P + budget) // 256) * 256)
        idx = torch.zeros(B, P, dtype=torch.long)
        for b, p in enumerate(ids):
            idx[b, P - len(p):] = torch.tensor(p)  # right-aligned; the left padding is masked by the cache
        pad = torch.tensor([P - len(p) for p in ids], device=device)
        dtype = torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else \
            next(model.parameters()).dtype
        cache = model._get_cache(B, S, device, dtype)
        cache.reset(pad)
        use_graph = self.cuda_graph and device.type == 'cuda'
        stops_b = [s.encode('utf-8') for s in stop]  # stop strings are matched on bytes (exact for bpe.py vocabs)
        out = torch.zeros(B, budget, dtype=torch.long, device=device)  # new tokens stay on the device until a check
        rows = [[] for _ in range(B)]  # new tokens per row, on the CPU, as far as checked
        done = [False] * B  # rows that hit end-of-text / a stop string (they keep decoding; the tail is cut later)
        logits = model(idx.to(device), kv_cache=cache)[:, -1].float()  # prefill, (B, V)
        checked = 0
        for t in range(budget):
            tok = self._sample(logits, t, temperature, top_p, min_tokens, generator)  # (B,)
            out[:, t] = tok
            # checking every token would sync the GPU every step; every check_every tokens costs at most
            # check_every - 1 wasted decode steps at the end of the batch
            if (t + 1) % self.check_every == 0 or t == budget - 1:
                for b, new in enumerate(out[:, checked:t + 1].tolist()):  # NOTE: a CPU-GPU sync point
                    if not done[b]:
                        rows[b].extend(new)
                        done[b] = self._row_finished(rows[b], len(new), min_tokens, stops_b)
                checked = t + 1
                if all(done) or t == budget - 1:
                    break
            logits = model._decode_step(tok, cache, use_graph).float()
        return rows

    def release(self):
        """Free the KV caches and CUDA graphs that model.py keeps per (batch, length) shape (model._graphs):
        call between phases that use different shapes, so that GPU memory does not pile up."""
        getattr(self.model, '_graphs', {}).clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _run_naive(self, ids, budget, temperature, top_p, min_tokens, stop, generator):
        """The reference: no cache, the full sequence is run again for every new token (O(T^2) per token).
        Rows are grouped by equal prompt length so that no padding (and no mask) is needed."""
        model = self.model
        device = next(model.parameters()).device
        stops_b = [s.encode('utf-8') for s in stop]
        groups = {}
        for b, p in enumerate(ids):
            groups.setdefault(len(p), []).append(b)
        rows = [None] * len(ids)
        for members in groups.values():
            idx = torch.tensor([ids[b] for b in members], device=device)
            new = [[] for _ in members]
            for t in range(budget):
                logits = _logits_of(model, idx)[:, -1].float()
                tok = self._sample(logits, t, temperature, top_p, min_tokens, generator)
                idx = torch.cat([idx, tok[:, None]], dim=1)
                for r, v in zip(new, tok.tolist()):
                    r.append(v)
                if all(self._row_finished(r, t + 1, min_tokens, stops_b) for r in new):
                    break
            for b, r in zip(members, new):
                rows[b] = r
        return rows

    def _finish(self, prompt_index, toks, budget, min_tokens, stop, include_stop):
        """Cut a row's raw tokens at end-of-text or at the first stop string (ending at or after min_tokens)."""
        reason = 'length'
        if self.eos_id is not None and self.eos_id in toks:
            toks, reason = toks[:toks.index(self.eos_id)], 'eos'  # the end-of-text token is not part of the text
        # byte offsets of token ends: cum[i] = bytes in toks[:i+1]; maps a stop string's end back to a token
        cum, parts = [], []
        for t in toks:
            parts.append(self.token_bytes(t))
            cum.append((cum[-1] if cum else 0) + len(parts[-1]))
        data = b''.join(parts)
        min_bytes = cum[min_tokens - 2] if min_tokens >= 2 and len(cum) >= min_tokens - 1 else 0
        best = None  # (end of the stop string in bytes, where to cut the text)
        for s in stop:
            sb = s.encode('utf-8')
            j = data.find(sb, max(0, min_bytes - len(sb) + 1))
            while j >= 0 and j + len(sb) <= min_bytes:
                j = data.find(sb, j + 1)
            if j >= 0 and (best is None or j + len(sb) < best[0]):
                best = (j + len(sb), j + len(sb) if include_stop else j)
        if best is not None:
            k = next(i for i, c in enumerate(cum) if c >= best[0])  # the token that completes the stop string
            toks, data, reason = toks[:k + 1], data[:best[1]], 'stop'
        return {'prompt_index': prompt_index, 'text': data.decode('utf-8', errors='replace'),
                'token_ids': list(toks), 'finish_reason': reason}



class HFEngine:
    """The same generate() interface over a Hugging Face causal LM (load_hf_policy), using its own KV cache and
    `generate` (left padding, stop_strings, num_return_sequences). For users who have such models."""

    def __init__(self, model, tokenizer, batch_size=64):
        self.model, self.tokenizer, self.batch_size, self.stats = model, tokenizer, batch_size, {}
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = 'left'  # decoder-only models continue from the right end

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, min_tokens=0, stop=None, n=1,
                 seed=None, include_stop=True, **_):
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if seed is not None:
            torch.manual_seed(seed)
        device, results, t0, n_new = next(self.model.parameters()).device, [], time.time(), 0
        for s in range(0, len(prompts), max(1, self.batch_size // n)):
            enc = self.tokenizer(prompts[s:s + max(1, self.batch_size // n)], return_tensors='pt', padding=True,
                                 add_special_tokens=False).to(device)
            kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, min_new_tokens=min_tokens,
                      num_return_sequences=n, pad_token_id=self.tokenizer.pad_token_id)
            if temperature > 0:
                kw.update(temperature=temperature, top_p=top_p)
            if stop:
                kw.update(stop_strings=stop, tokenizer=self.tokenizer)
            out = self.model.generate(**enc, **kw)[:, enc['input_ids'].shape[1]:]
            for k, row in enumerate(out.tolist()):
                eos = self.tokenizer.eos_token_id
                toks = row[:row.index(eos)] if eos in row else row
                text, reason = self.tokenizer.decode(toks, skip_special_tokens=True), 'eos' if eos in row else 'length'
                for st in stop:
                    if st in text:
                        text, reason = text[:text.index(st) + (len(st) if include_stop else 0)], 'stop'
                results.append({'prompt_index': s + k // n, 'text': text, 'token_ids': toks, 'finish_reason': reason})
                n_new += len(toks)
        dt = time.time() - t0
        self.stats = {'new_tokens': n_new, 'time_s': dt, 'tokens_per_s': n_new / max(dt, 1e-9), 'rows': len(results)}
        return results


class VLLMEngine:
    """Optional vLLM backend with the same generate() interface, for Hugging Face-format models (vLLM cannot run
    model.py's TransformerLM). vllm is imported only here; nothing in the project requires it. The patches follow
    the course's starter code (vLLM ~0.7): a single-GPU engine beside a torch training process."""

    def __init__(self, model_id, device='cuda', seed=0, gpu_memory_utilization=0.85):
        from unittest.mock import patch
        from vllm import LLM
        from vllm.model_executor import set_random_seed
        set_random_seed(seed)
        world_size_patch = patch('torch.distributed.get_world_size', return_value=1)
        profiling_patch = patch('vllm.worker.worker.Worker._assert_memory_footprint_increased_during_profiling',
                                return_value=None)
        with world_size_patch, profiling_patch:
            self.llm = LLM(model=model_id, device=device, dtype=torch.bfloat16, enable_prefix_caching=True,
                           gpu_memory_utilization=gpu_memory_utilization)
        self.stats = {}

    def load_policy_weights(self, policy):
        """Copy a (HF) policy's current weights into the vLLM engine, e.g. after each GRPO step."""
        llm_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        llm_model.load_weights(policy.state_dict().items())

    def generate(self, prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, min_tokens=0, stop=None, n=1,
                 seed=None, include_stop=True, **_):
        from vllm import SamplingParams
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                min_tokens=min_tokens, stop=stop, include_stop_str_in_output=include_stop, n=n,
                                seed=seed)
        t0 = time.time()
        outs = self.llm.generate(prompts, params)
        results = [{'prompt_index': i, 'text': c.text, 'token_ids': list(c.token_ids),
                    'finish_reason': 'stop' if c.finish_reason == 'stop' else 'length'}
                   for i, o in enumerate(outs) for c in o.outputs]
        dt = time.time() - t0
        n_new = sum(len(r['token_ids']) for r in results)
        self.stats = {'new_tokens': n_new, 'time_s': dt, 'tokens_per_s': n_new / max(dt, 1e-9), 'rows': len(results)}
        return results


def make_engine(model, tokenizer, backend='kv', batch_size=256, model_id=None, seed=0):
    """The generation backend: 'kv' (Engine, model.py models), 'hf' (HFEngine), 'vllm' (VLLMEngine, needs the HF
    model id or path), or 'auto' (Engine for model.py models, HFEngine otherwise)."""
    if backend == 'vllm':
        if not model_id:
            raise ValueError("the vllm backend needs a Hugging Face model id or path (init_from='hf:<name>')")
        return VLLMEngine(model_id, device=str(next(model.parameters()).device), seed=seed)
    is_ours = hasattr(model, '_decode_step')
    if backend == 'hf' or (backend == 'auto' and not is_ours):
        return HFEngine(model, tokenizer, batch_size=batch_size)
    if not is_ours:
        raise ValueError("the 'kv' backend runs model.py models; use engine_backend='hf' or 'vllm' for HF models")
    return Engine(model, tokenizer, batch_size=batch_size)

# =============================================================================
# 6) Evaluation: accuracy, format rate, response lengths, entropy; log_generations
# =============================================================================

def response_entropy(model, tokenizer, prompts, responses, batch_size=16):
    """Mean per-token entropy of the policy over each response (a measure of how sure the model is), (N,).
    prompts / responses are strings or token-id lists; pass the generated ids where you have them (re-encoding
    decoded text is not always the same tokens: invalid UTF-8 bytes come back as 3-byte U+FFFD)."""
    out = []
    device = next(model.parameters()).device
    ctx = getattr(getattr(model, 'config', None), 'context_length', 10 ** 9)
    ids = lambda x: list(x) if isinstance(x, (list, tuple)) else encode(tokenizer, x)  # noqa: E731
    for s in range(0, len(prompts), batch_size):
        p_ids = [ids(p) for p in prompts[s:s + batch_size]]
        r_ids = [ids(r)[:max(1, ctx + 1 - len(p))] or [pad_id_of(tokenizer)] for p, r in
                 zip(p_ids, responses[s:s + batch_size])]  # the context caps what can be scored
        b = collate_prompt_and_output(p_ids, r_ids, pad_id_of(tokenizer))
        with torch.no_grad(), _autocast(device):
            ent = get_response_log_probs(model, b['input_ids'].to(device), b['labels'].to(device),
                                         return_token_entropy=True)['token_entropy']
        mask = b['response_mask'].to(device)
        out.append(masked_normalize(ent, mask, 1.0, dim=-1) / mask.sum(-1).clamp(min=1))
    return torch.cat(out).cpu() if out else torch.zeros(0)


def log_generations(path, records):
    """Write evaluation samples (prompt, response, ground truth, rewards, length, entropy) to JSONL, atomically."""
    write_jsonl(path, records)


def evaluate(engine, problems, reward_fn=r1_zero_reward_fn, max_new_tokens=256, temperature=0.0, top_p=1.0,
             seed=0, log_path=None, n_entropy=64, n_log=None):
    """Generate one response per problem ({'prompt', 'ground_truth'}), grade it, and summarize:
    accuracy, format rate, mean response length (all / correct / incorrect, in tokens), mean token entropy (on the
    first n_entropy responses: it costs a forward pass), generation tokens/s. Optionally log_generations."""
    prompts = [p['prompt'] for p in problems]
    model = getattr(engine, 'model', None)  # None for the vLLM engine: no entropy then
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    amp = _autocast(next(model.parameters()).device) if model is not None else contextlib.nullcontext()
    with amp:
        outs = engine.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               stop=['</answer>'], seed=seed)
    gen_stats = dict(engine.stats)
    rewards = [reward_fn(o['text'], p['ground_truth']) for o, p in zip(outs, problems)]
    lens = [len(o['token_ids']) for o in outs]
    ent = torch.zeros(0)
    if n_entropy and model is not None:
        ent = response_entropy(model, engine.tokenizer, prompts[:n_entropy], [o['token_ids'] for o in outs[:n_entropy]])
        model.train(was_training)
    correct = [r['answer_reward'] == 1.0 for r in rewards]
    mean = lambda xs: sum(xs) / len(xs) if xs else float('nan')  # noqa: E731
    metrics = {'n': len(problems), 'accuracy': mean([float(c) for c in correct]),
               'format_rate': mean([r['format_reward'] for r in rewards]),
               'mean_len': mean(lens), 'mean_len_correct': mean([n for n, c in zip(lens, correct) if c]),
               'mean_len_incorrect': mean([n for n, c in zip(lens, correct) if not c]),
               'mean_entropy': float(ent.mean()) if len(ent) else float('nan'),
               'gen_tokens_per_s': gen_stats.get('tokens_per_s', 0.0)}
    if log_path:
        recs = [{'prompt': p['prompt'], 'response': o['text'], 'ground_truth': p['ground_truth'], **r,
                 'length': n, 'finish_reason': o['finish_reason'],
                 'entropy': float(ent[i]) if i < len(ent) else None}
                for i, (p, o, r, n) in enumerate(zip(problems, outs, rewards, lens))]
        log_generations(log_path, recs[:n_log] if n_log else recs)
    return metrics


def _autocast(device):
    """bf16 autocast on CUDA (weights stay fp32: the optimizer needs them); a no-op on CPU, where bf16 is slow.
    NOTE cache_enabled=False: autocast otherwise caches the bf16 copy of each weight for the duration of the
    context; a CUDA graph captured inside it (model.py's decode step) would then read that cached copy, which is
    stale after the next optimizer step and freed when the context exits (the torch.cuda.graph docs ask for this)."""
    device = torch.device(device)
    if device.type == 'cuda' and dtype == 'bfloat16':
        return torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=False)
    return torch.autocast(device.type, enabled=False)


# =============================================================================
# 7) The SFT loop (also used for the demo's pretraining and for expert iteration's inner SFT)
# =============================================================================

def _tokenize_examples(examples, tokenizer, context_length, what='example'):
    """Tokenize (prompt, response) once. Examples longer than the context are dropped, loudly."""
    kept, too_long = [], []
    for i, ex in enumerate(examples):
        p, r = encode(tokenizer, ex['prompt']), encode(tokenizer, ex['response'])
        if not r:
            raise ValueError(f"{what} {ex.get('_line', i)}: empty response; SFT needs a non-empty target text")
        if len(p) + len(r) > context_length + 1:  # input_ids drop the last token: L-1 positions must fit
            too_long.append(ex.get('_line', i))
            continue
        kept.append((p, r))
    if too_long:
        print(f"{'!' * 60}\nWARNING: dropped {len(too_long)}/{len(examples)} {what}s longer than context_length="
              f"{context_length} tokens (first: {too_long[:5]})\n{'!' * 60}")
    if not kept:
        raise ValueError(f"no {what} fits in context_length={context_length}")
    return kept


def lr_at(progress, max_lr, warmup_frac):
    """Linear warmup then cosine decay to max_lr/10, as a function of progress in [0, 1] (iterations or time)."""
    if progress < warmup_frac:
        return max_lr * (progress + 1e-3) / warmup_frac
    decay = min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))
    return max_lr / 10 + 0.5 * (1 + math.cos(math.pi * decay)) * (max_lr - max_lr / 10)


def save_ckpt(path, model, optimizer=None, iter_num=0, **extra):
    """Atomic checkpoint in train.py's format, so that TransformerLM.from_checkpoint and train.py read it."""
    from model import model_args_from
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ckpt = {'model': model.state_dict(), 'model_args': model_args_from(model), 'iter_num': iter_num,
            'optimizer': optimizer.state_dict() if optimizer is not None else None, **extra}
    torch.save(ckpt, path + '.tmp')
    os.replace(path + '.tmp', path)


def plot_curves(path, history, title):
    """loss vs step and accuracy vs step, side by side, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if history.get('loss'):
        a1.plot(*zip(*history['loss']), lw=1)
    a1.set_xlabel('optimizer step')
    a1.set_ylabel('loss (nats / response token)')
    a1.set_yscale('log')
    a1.grid(alpha=0.3)
    for key, label in (('accuracy', 'answer accuracy'), ('format_rate', 'format rate')):
        if history.get(key):
            a2.plot(*zip(*history[key]), marker='o', label=label)
    a2.set_ylim(-0.02, 1.02)
    a2.set_xlabel('optimizer step')
    if a2.get_legend_handles_labels()[0]:
        a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=110)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


def train_sft(model, tokenizer, examples, max_iters=300, batch_size=32, gradient_accumulation_steps=2,
              learning_rate=3e-4, weight_decay=0.0, warmup_frac=0.05, grad_clip=1.0, time_budget_s=0.0,
              eval_fn=None, eval_interval=-1, log_interval=10, seed=0, out_dir='', ckpt_extra=None,
              resume=None, tag='sft', epochs=0, quiet=False):
    """SFT on [{'prompt', 'response'}]: AdamW, warmup + cosine, gradient accumulation, clip, bf16 autocast.

    Each optimizer step sees batch_size examples in gradient_accumulation_steps micro-batches; epochs are reshuffled
    with (seed, epoch) so a resumed run sees the same order. The loss is the mean NLL per response token:
    normalize_constant = the micro-batch's mean response length, which keeps the gradient scale independent of
    response length (the course's constant 1.0 sums instead). The schedule runs on progress = max(step / max_iters,
    elapsed / time_budget_s) so a time budget ends the run on time with a complete cosine decay.
    epochs > 0 sets max_iters to cover that many passes. eval_fn(step) -> metrics dict is called every
    eval_interval steps and at the end; resume = a checkpoint dict (optimizer, iter_num, history) to continue.
    Returns the history {'loss': [(step, loss)], 'accuracy': [(step, acc)], ...}."""
    device = next(model.parameters()).device
    assert batch_size % gradient_accumulation_steps == 0, \
        f"batch_size={batch_size} must be divisible by gradient_accumulation_steps={gradient_accumulation_steps}"
    micro = batch_size // gradient_accumulation_steps
    data = _tokenize_examples(examples, tokenizer, model.config.context_length if hasattr(model, 'config') and
                              hasattr(model.config, 'context_length') else 10 ** 9)
    if epochs:
        max_iters = max(1, math.ceil(epochs * len(data) / batch_size))
    pad = pad_id_of(tokenizer)
    # weight decay on matrices only (not norms), the usual GPT recipe; fused AdamW on CUDA
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0}],
                            lr=learning_rate, betas=(0.9, 0.95), fused=device.type == 'cuda')
    history = {'loss': [], 'accuracy': [], 'format_rate': [], 'evals': []}
    start = 0
    if resume:
        opt.load_state_dict(resume['optimizer'])
        start, history = resume['iter_num'], resume.get('history', history)
        print(f"{tag}: resuming at step {start}")

    perms = {}

    def batch_indices(step):  # examples of optimizer step `step`: a slice of the epoch's permutation
        out = []
        for k in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(k, len(data))
            if epoch not in perms:
                perms[epoch] = list(range(len(data)))
                random.Random(seed * 7919 + epoch).shuffle(perms[epoch])
            out.append(perms[epoch][pos])
        return out

    def run_eval(step):
        if eval_fn is None:
            return
        m = eval_fn(step)
        history['evals'].append({'step': step, **m})
        history['accuracy'].append((step, m['accuracy']))
        history['format_rate'].append((step, m['format_rate']))
        print(f"{tag} step {step}: accuracy {m['accuracy']:.3f}, format {m['format_rate']:.3f}, "
              f"len {m['mean_len']:.1f}, entropy {m['mean_entropy']:.3f}")

    def checkpoint(step):
        if out_dir:
            save_ckpt(os.path.join(out_dir, 'ckpt.pt'), model, opt, step, history=history, **(ckpt_extra or {}))
            plot_curves(os.path.join(out_dir, f'{tag}_curves.png'), history, f'{tag}: loss and accuracy')

    model.train()
    t0, ema, done = time.time(), None, start
    for step in range(start, max_iters):
        progress = step / max_iters
        if time_budget_s > 0:
            progress = max(progress, (time.time() - t0) / time_budget_s)
            if progress >= 1.0:
                print(f"{tag}: time budget of {time_budget_s:.0f}s reached at step {step}")
                break
        lr = lr_at(progress, learning_rate, warmup_frac)
        for g in opt.param_groups:
            g['lr'] = lr
        idx = batch_indices(step)
        loss_sum = 0.0
        # 1) gradient accumulation: micro-batches add their gradients (sft_microbatch_train_step never zeroes)
        for m in range(gradient_accumulation_steps):
            part = [data[i] for i in idx[m * micro:(m + 1) * micro]]
            b = collate_prompt_and_output([p for p, _ in part], [r for _, r in part], pad)
            mask = b['response_mask'].to(device)
            with _autocast(device):
                lp = get_response_log_probs(model, b['input_ids'].to(device), b['labels'].to(device))['log_probs']
            norm = mask.sum() / mask.shape[0]  # mean response length of this micro-batch -> per-token loss
            loss, _ = sft_microbatch_train_step(lp, mask, gradient_accumulation_steps, normalize_constant=norm)
            loss_sum += loss.item()  # NOTE: a CPU-GPU sync point (fine at this size)
        # 2) clip the global norm (the course's 1.0), 3) step, 4) only now zero the gradients
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        ema = loss_sum if ema is None else 0.9 * ema + 0.1 * loss_sum
        history['loss'].append((step + 1, loss_sum))
        if not quiet and ((step + 1) % log_interval == 0 or step == start):
            print(f"{tag} step {step + 1}/{max_iters}: loss {loss_sum:.4f} (ema {ema:.4f}), lr {lr:.2e}, "
                  f"{time.time() - t0:.0f}s")
        if eval_interval > 0 and (step + 1) % eval_interval == 0 and step + 1 < max_iters:
            model.eval()
            run_eval(step + 1)
            model.train()
            checkpoint(step + 1)
    final = done
    model.eval()
    if not history['evals'] or history['evals'][-1]['step'] != final:
        run_eval(final)
    checkpoint(final)
    history['steps'] = final
    history['time_s'] = time.time() - t0
    return history


# =============================================================================
# 8) Expert iteration: sample, keep what the grader accepts, SFT on it, repeat
# =============================================================================

def expert_iteration(model, tokenizer, questions, n_steps=3, questions_per_step=512, rollouts=4, temperature=1.0,
                     top_p=1.0, max_new_tokens=256, epochs=1, eval_fn=None, reward_fn=r1_zero_reward_fn,
                     gen_batch_size=256, seed=0, sft_kwargs=None, out_dir='', log=print):
    """The course's expert iteration. questions: [{'prompt', 'ground_truth'}]. For each step: draw
    questions_per_step questions, sample `rollouts` responses each (min_tokens=4, stop at '</answer>'), keep the
    ones with reward 1 (deduplicated per question), SFT on them for `epochs` epochs (a fresh AdamW each step, as
    in the course). Returns per-step records: kept fraction, optimizer steps, rollout entropy, eval metrics."""
    rng = random.Random(seed)
    engine = Engine(model, tokenizer, batch_size=gen_batch_size)
    device = next(model.parameters()).device
    records, total_steps = [], 0
    for it in range(n_steps):
        batch = rng.sample(questions, min(questions_per_step, len(questions)))
        model.eval()
        t0 = time.time()
        with _autocast(device):
            outs = engine.generate([q['prompt'] for q in batch], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, min_tokens=4, stop=['</answer>'],
                                   n=rollouts, seed=seed * 1000 + it)
        gen_s, gen_tps = time.time() - t0, engine.stats['tokens_per_s']
        kept, seen = [], set()
        for k, o in enumerate(outs):
            q = batch[k // rollouts]
            if reward_fn(o['text'], q['ground_truth'])['reward'] == 1.0 and (k // rollouts, o['text']) not in seen:
                seen.add((k // rollouts, o['text']))
                kept.append({'prompt': q['prompt'], 'response': o['text']})
        ent = response_entropy(model, tokenizer, [batch[k // rollouts]['prompt'] for k in range(min(64, len(outs)))],
                               [o['token_ids'] for o in outs[:64]])
        rec = {'ei_step': it + 1, 'rollouts': len(outs), 'kept': len(kept), 'kept_frac': len(kept) / len(outs),
               'rollout_entropy': float(ent.mean()), 'gen_s': gen_s, 'gen_tokens_per_s': gen_tps}
        if kept:
            # evaluations are labelled with the cumulative number of EI optimizer steps
            ev = (lambda s, base=total_steps: eval_fn(base + s)) if eval_fn else None
            hist = train_sft(model, tokenizer, kept, epochs=epochs, seed=seed + it, tag=f'ei{it + 1}', quiet=True,
                             eval_fn=ev, **(sft_kwargs or {}))
            rec['sft_steps'], rec['sft_s'] = hist['steps'], hist['time_s']
            total_steps += hist['steps']
            if hist['evals']:
                rec.update({f'eval_{k}': v for k, v in hist['evals'][-1].items() if k != 'step'})
        else:
            rec['sft_steps'] = 0
        rec['total_sft_steps'] = total_steps
        log(f"EI step {it + 1}/{n_steps}: kept {len(kept)}/{len(outs)} rollouts, {rec['sft_steps']} SFT steps, "
            f"rollout entropy {rec['rollout_entropy']:.3f}, gen {gen_tps:,.0f} tok/s"
            + (f", eval accuracy {rec['eval_accuracy']:.3f}" if 'eval_accuracy' in rec else ''))
        records.append(rec)
        if out_dir:
            write_jsonl(os.path.join(out_dir, 'ei_steps.jsonl'), records)
    return records


# =============================================================================
# 9) DPO (Rafailov et al. 2023): preferences without a reward model
# =============================================================================

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per-instance DPO loss: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where each argument is the
    summed log-prob of a whole response given its prompt (policy pi, frozen reference ref)."""
    logits = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    return -F.logsigmoid(logits)


def sequence_log_probs(model, tokenizer, prompts, responses):
    """Sum of log p(response tokens | prompt) for each pair, (B,)."""
    device = next(model.parameters()).device
    b = tokenize_prompt_and_output(prompts, responses, tokenizer)
    with _autocast(device):
        lp = get_response_log_probs(model, b['input_ids'].to(device), b['labels'].to(device))['log_probs']
    return masked_normalize(lp, b['response_mask'].to(device), 1.0, dim=-1)


def compute_per_instance_dpo_loss(lm, lm_ref, tokenizer, beta, prompt, response_chosen, response_rejected):
    """The course's per-instance DPO loss for one (prompt, chosen, rejected) triple (the prompt's own tokens cancel
    in the differences, so only response tokens are scored)."""
    pi = sequence_log_probs(lm, tokenizer, [prompt, prompt], [response_chosen, response_rejected])
    with torch.no_grad():
        ref = sequence_log_probs(lm_ref, tokenizer, [prompt, prompt], [response_chosen, response_rejected])
    return dpo_loss(pi[0], pi[1], ref[0], ref[1], beta)


def train_dpo(model, ref_model, tokenizer, pairs, beta=0.1, max_iters=100, batch_size=16,
              gradient_accumulation_steps=4, learning_rate=1e-5, grad_clip=1.0, seed=0, eval_fn=None,
              eval_interval=-1, log_interval=10, out_dir='', ckpt_extra=None):
    """DPO on [{'prompt', 'chosen', 'rejected'}] against a frozen reference. Reports the loss and the preference
    accuracy (how often the implicit reward prefers the chosen response). Returns the history."""
    assert batch_size % gradient_accumulation_steps == 0
    micro = batch_size // gradient_accumulation_steps
    for i, p in enumerate(pairs):
        if not p['chosen'].strip() or not p['rejected'].strip():
            raise ValueError(f"pair {p.get('_line', i)}: empty chosen or rejected response")
    ref_model.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    history = {'loss': [], 'accuracy': [], 'format_rate': [], 'pref_accuracy': [], 'evals': []}
    t0 = time.time()
    model.train()
    for step in range(max_iters):
        for g in opt.param_groups:
            g['lr'] = lr_at(step / max_iters, learning_rate, 0.1)
        loss_sum, wins = 0.0, 0
        for _ in range(gradient_accumulation_steps):
            part = [pairs[rng.randrange(len(pairs))] for _ in range(micro)]
            prompts = [p['prompt'] for p in part]
            pi_c = sequence_log_probs(model, tokenizer, prompts, [p['chosen'] for p in part])
            pi_r = sequence_log_probs(model, tokenizer, prompts, [p['rejected'] for p in part])
            with torch.no_grad():
                ref_c = sequence_log_probs(ref_model, tokenizer, prompts, [p['chosen'] for p in part])
                ref_r = sequence_log_probs(ref_model, tokenizer, prompts, [p['rejected'] for p in part])
            losses = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
            (losses.mean() / gradient_accumulation_steps).backward()
            loss_sum += losses.mean().item() / gradient_accumulation_steps
            wins += int(((pi_c - ref_c) > (pi_r - ref_r)).sum())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history['loss'].append((step + 1, loss_sum))
        history['pref_accuracy'].append((step + 1, wins / batch_size))
        if (step + 1) % log_interval == 0 or step == 0:
            print(f"dpo step {step + 1}/{max_iters}: loss {loss_sum:.4f}, preference accuracy "
                  f"{wins / batch_size:.2f}, {time.time() - t0:.0f}s")
        if eval_fn is not None and ((eval_interval > 0 and (step + 1) % eval_interval == 0) or step + 1 == max_iters):
            model.eval()
            m = eval_fn(step + 1)
            model.train()
            history['evals'].append({'step': step + 1, **m})
            history['accuracy'].append((step + 1, m['accuracy']))
            history['format_rate'].append((step + 1, m['format_rate']))
            print(f"dpo step {step + 1}: accuracy {m['accuracy']:.3f}, format {m['format_rate']:.3f}")
    model.eval()
    if out_dir:
        save_ckpt(os.path.join(out_dir, 'ckpt.pt'), model, opt, max_iters, history=history, **(ckpt_extra or {}))
        plot_curves(os.path.join(out_dir, 'dpo_curves.png'), history, 'DPO: loss and accuracy')
    history['time_s'] = time.time() - t0
    return history


# =============================================================================
# 10) Generation benchmark: the KV-cache Engine vs the naive no-cache loop
# =============================================================================

def bench_generation(model, batch=64, prompt_len=128, new_tokens=256, seed=0):
    """Greedy generation of `new_tokens` after random `prompt_len`-token prompts, batch rows, both ways.
    A warm-up run first (CUDA graph capture, kernel selection). Returns tokens/s of each and the speed-up."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    eng = Engine(model, None, batch_size=batch)
    eng.generate(prompts, max_new_tokens=8, temperature=0.0)  # warm-up
    res = {}
    for name, use_cache in (('kv_cache', True), ('naive', False)):
        eng.generate(prompts, max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
        res[f'{name}_tokens_per_s'] = eng.stats['tokens_per_s']
        res[f'{name}_time_s'] = eng.stats['time_s']
    res['speedup'] = res['kv_cache_tokens_per_s'] / res['naive_tokens_per_s']
    eng.release()
    return res


def run_bench(results_dir='results', new_tokens=256, batch=64):
    """The benchmark of --mode=bench: a GPT-2-small-shaped model.py model with random weights (bf16 on GPU), 128-token
    prompts, greedy, batch `batch` and batch 1. On CPU a tiny model stands in (the numbers only show the code runs)."""
    from model import TransformerLM
    on_gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    if on_gpu:
        shape = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12)
    else:
        shape = dict(vocab_size=512, context_length=512, d_model=64, num_layers=2, num_heads=4)
        new_tokens, batch = min(new_tokens, 64), min(batch, 8)
    model = TransformerLM(**shape).to(device).eval()
    if on_gpu:
        model = model.to(torch.bfloat16)
    dev_name = torch.cuda.get_device_name() if on_gpu else 'CPU'
    rows = []
    for b in (batch, 1):
        r = bench_generation(model, batch=b, prompt_len=128, new_tokens=new_tokens)
        rows.append((b, r))
        print(f"batch {b}: KV-cache engine {r['kv_cache_tokens_per_s']:,.0f} new tokens/s, naive "
              f"{r['naive_tokens_per_s']:,.0f} new tokens/s: {r['speedup']:.1f}x")
    lines = [f"# sft.py generation benchmark ({dev_name})", "",
             f"model.py TransformerLM {shape}, random weights, {'bf16' if on_gpu else 'fp32'}, greedy, "
             f"128-token prompts + {new_tokens} new tokens. Command: `python sft.py --mode=bench`.", "",
             "| batch | KV-cache Engine (new tokens/s) | naive no-cache (new tokens/s) | speed-up |",
             "|---:|---:|---:|---:|"]
    for b, r in rows:
        lines.append(f"| {b} | {r['kv_cache_tokens_per_s']:,.0f} | {r['naive_tokens_per_s']:,.0f} | "
                     f"{r['speedup']:.1f}x |")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"sft_bench_{'gpu' if on_gpu else 'cpu'}.md")
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)
    print(f"wrote {path}")
    return rows


# =============================================================================
# 11) The demo: pretrain -> base eval -> SFT -> expert iteration vs more SFT -> GSM8K, all on the synthetic task
# =============================================================================
# Sizes per preset. The stages are time-budgeted (the cosine schedule runs on elapsed time), so the GPU preset ends
# on time whatever the GPU's speed. cpu: a few minutes on a laptop, shows the pipeline (accuracy stays modest).
DEMO_PRESETS = {
    'cpu': dict(model=dict(d_model=64, num_layers=2, num_heads=4, context_length=1024),
                # a short prompt with the same '<think>' ending as r1_zero: the 420-byte r1_zero preamble would
                # make every CPU step 5x slower (GSM8K below still uses r1_zero)
                template='User: {question}\nAssistant: <think>',
                task=dict(min_steps=1, max_steps=1, max_number=9), n_train=4000, n_val=50,
                pretrain=dict(max_iters=3000, batch_size=32, gradient_accumulation_steps=1, learning_rate=3e-3,
                              time_budget_s=150),
                sft_examples=128, sft=dict(max_iters=40, batch_size=16, gradient_accumulation_steps=1,
                                           learning_rate=1e-3, time_budget_s=25),
                ei=dict(n_steps=2, questions_per_step=32, rollouts=4), ei_lr=3e-4,
                gsm8k_n=4, gen_batch_size=128, max_new_tokens=48),
    'gpu': dict(model=dict(d_model=384, num_layers=6, num_heads=6, context_length=2048),
                template='r1_zero',
                task=dict(min_steps=2, max_steps=3, max_number=20), n_train=60000, n_val=500,
                pretrain=dict(max_iters=20000, batch_size=128, gradient_accumulation_steps=1, learning_rate=1.5e-3,
                              time_budget_s=180),
                sft_examples=512, sft=dict(max_iters=240, batch_size=32, gradient_accumulation_steps=1,
                                           learning_rate=5e-4, time_budget_s=45),
                ei=dict(n_steps=4, questions_per_step=1024, rollouts=4), ei_lr=2e-4,
                gsm8k_n=200, gen_batch_size=512, max_new_tokens=128),
}


def demo_base_and_sft(preset='cpu', out_dir='out-sft-demo', seed=0, log=print):
    """Stages 1-3 of the demo: the synthetic task, a pretrained base model, its evaluation, SFT on gold traces.
    Returns a dict: model (the SFT policy), tok, template, train / val problems, val_q and ei_pool (prompt +
    ground_truth), sft_set, histories h_pre / h_sft, results {'base', 'sft'}, make_eval(model, problems, name),
    sft_path. grpo.py can start from here to get an SFT policy of its own on the same task."""
    from model import TransformerLM, count_parameters
    P = DEMO_PRESETS[preset]
    torch.manual_seed(seed)
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(out_dir, exist_ok=True)
    tok = byte_tokenizer()
    template = load_prompt_template(P['template'])
    train, val = make_synthetic_task(P['n_train'], P['n_val'], seed=seed, **P['task'])
    to_q = lambda p: {'prompt': format_prompt(template, p['question']), 'ground_truth': p['answer']}  # noqa: E731
    val_q = [to_q(p) for p in val]
    sft_set = [{**to_q(p), 'response': r1_response(p['trace'], p['answer'])} for p in train[:P['sft_examples']]]
    ei_pool = [to_q(p) for p in train[P['sft_examples']:]]  # questions only: EI never sees their traces
    write_jsonl(os.path.join(out_dir, 'sft_train.jsonl'), sft_set)
    write_jsonl(os.path.join(out_dir, 'val.jsonl'), val_q)
    mnt, gb = P['max_new_tokens'], P['gen_batch_size']

    def make_eval(model, problems, name, n=None):
        eng = Engine(model, tok, batch_size=gb)

        def ev(step):
            return evaluate(eng, problems[:n] if n else problems, max_new_tokens=mnt, seed=seed,
                            log_path=os.path.join(out_dir, f'{name}_step{step}.jsonl'), n_entropy=64)
        return ev

    # 1) pretraining: the task's worked solutions in a plain "Question/Solution/Answer" format (no <think> tags)
    log(f"== demo '{preset}' on {device}: {len(train)} training problems, {len(val)} held out, "
        f"{len(sft_set)} SFT examples")
    model = TransformerLM(vocab_size=257, **P['model']).to(device)
    log(f"model: {count_parameters(model):,} parameters (non-embedding), {P['model']}")
    docs = [{'prompt': '<|endoftext|>', 'response': pretrain_text(p)} for p in train]
    h_pre = train_sft(model, tok, docs, seed=seed, tag='pretrain', log_interval=100, **P['pretrain'])
    log(f"pretrain: {h_pre['steps']} steps in {h_pre['time_s']:.0f}s, final loss {h_pre['loss'][-1][1]:.4f}")
    save_ckpt(os.path.join(out_dir, 'base.pt'), model, tokenizer='bytes')

    # 2) the base model under the task's prompt: it can do the arithmetic, but not in the <think>/<answer> format
    results = {'base': make_eval(model, val_q, 'base')(0)}
    log(f"base: {results['base']}")

    # 3) SFT on the gold traces of the first sft_examples problems
    h_sft = train_sft(model, tok, sft_set, seed=seed, tag='sft', eval_fn=make_eval(model, val_q, 'sft'),
                      eval_interval=-(-P['sft']['max_iters'] // 3), log_interval=25, **P['sft'])
    results['sft'] = h_sft['evals'][-1]
    log(f"sft: {h_sft['steps']} steps in {h_sft['time_s']:.0f}s: {results['sft']}")
    sft_path = os.path.join(out_dir, 'sft.pt')
    save_ckpt(sft_path, model, tokenizer='bytes')
    return dict(model=model, tok=tok, template=template, train=train, val=val, val_q=val_q, sft_set=sft_set,
                ei_pool=ei_pool, h_pre=h_pre, h_sft=h_sft, results=results, make_eval=make_eval, sft_path=sft_path)


def run_demo(preset='cpu', out_dir='out-sft-demo', results_dir='results', seed=0):
    """The whole story on the synthetic task; writes results/sft_demo_<preset>.md (+ .png, samples .jsonl)."""
    from model import count_parameters
    P = DEMO_PRESETS[preset]
    t_start = time.time()
    os.makedirs(results_dir, exist_ok=True)
    log_lines = []

    def log(msg):
        print(msg)
        log_lines.append(msg)
    D = demo_base_and_sft(preset, out_dir, seed, log)
    model, tok, train, val = D['model'], D['tok'], D['train'], D['val']
    val_q, sft_set, ei_pool, h_pre, h_sft = D['val_q'], D['sft_set'], D['ei_pool'], D['h_pre'], D['h_sft']
    results, make_eval, sft_path = D['results'], D['make_eval'], D['sft_path']
    mnt, gb = P['max_new_tokens'], P['gen_batch_size']

    # 4) expert iteration from the SFT model (questions only), then the same number of optimizer steps of plain SFT
    sft_kw = dict(batch_size=P['sft']['batch_size'],
                  gradient_accumulation_steps=P['sft']['gradient_accumulation_steps'],
                  learning_rate=P['ei_lr'])
    ei_eval = make_eval(model, val_q, 'ei')
    ei_records = expert_iteration(model, tok, ei_pool, temperature=1.0, max_new_tokens=mnt, epochs=1,
                                  eval_fn=ei_eval, gen_batch_size=gb, seed=seed, sft_kwargs=sft_kw, out_dir=out_dir,
                                  log=log, **P['ei'])
    results['ei'] = {k[5:]: v for k, v in ei_records[-1].items() if k.startswith('eval_')} or \
        ei_eval(ei_records[-1]['total_sft_steps'])
    ei_steps = ei_records[-1]['total_sft_steps']
    save_ckpt(os.path.join(out_dir, 'ei.pt'), model, tokenizer='bytes')
    ei_model = model
    Engine(ei_model, tok).release()

    sft_more, _ = load_policy(sft_path, device)
    if ei_steps > 0:
        h_more = train_sft(sft_more, tok, sft_set, seed=seed + 1, tag='sft_more', max_iters=ei_steps,
                           eval_fn=make_eval(sft_more, val_q, 'sft_more'), log_interval=50, **sft_kw)
        results['sft_more'] = h_more['evals'][-1]
    else:  # EI kept nothing, so it took no steps: the matched baseline is the SFT model itself
        h_more, results['sft_more'] = {'accuracy': []}, results['sft']
    log(f"sft continued for the same {ei_steps} optimizer steps as EI: {results['sft_more']}")
    Engine(sft_more, tok).release()

    # 5) GSM8K through the same path (prompt, generation, grader); prompts that do not fit the context are skipped
    gsm = []
    if os.path.isdir(os.path.join(DATA, 'a5', 'gsm8k')):
        r1 = load_prompt_template('r1_zero')
        for p in load_gsm8k('test'):
            q = {'prompt': format_prompt(r1, p['question']), 'ground_truth': p['ground_truth']}
            if len(encode(tok, q['prompt'])) + mnt <= model.config.context_length:
                gsm.append(q)
            if len(gsm) == P['gsm8k_n']:
                break
        results['gsm8k_ei'] = make_eval(ei_model, gsm, 'gsm8k_ei')(0)
        log(f"gsm8k ({len(gsm)} problems), EI model: {results['gsm8k_ei']}")

    # 6) the report
    total = time.time() - t_start
    dev_name = torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'
    cmd = f"python sft.py --mode=demo --demo_preset={preset}"
    L = [f"# sft.py demo, preset '{preset}' ({dev_name}, {total:.0f} s end to end)", "",
         f"Command: `{cmd}`. Synthetic task: {P['task']}, {len(train)} training problems, {len(val)} held-out "
         f"problems (greedy decoding, prompt {P['template']!r}, r1_zero grader, up to {mnt} new tokens). "
         f"Model: model.py "
         f"TransformerLM {P['model']}, byte-level tokenizer, {count_parameters(model):,} non-embedding parameters.",
         "", "| stage | optimizer steps | held-out accuracy | format rate | mean length (tokens) | entropy |",
         "|---|---:|---:|---:|---:|---:|"]
    rows = [('base (pretrained, no SFT)', h_pre['steps'], results['base']),
            (f"SFT on {len(sft_set)} gold traces", h_sft['steps'], results['sft']),
            (f"SFT + {ei_steps} more SFT steps on the same traces", h_sft['steps'] + ei_steps, results['sft_more']),
            (f"SFT + expert iteration ({P['ei']['n_steps']} rounds, {P['ei']['questions_per_step']} questions x "
             f"{P['ei']['rollouts']})", h_sft['steps'] + ei_steps, results['ei'])]
    for name, steps, m in rows:
        L.append(f"| {name} | {steps} | {m['accuracy']:.1%} | {m['format_rate']:.1%} | {m['mean_len']:.1f} | "
                 f"{m['mean_entropy']:.3f} |")
    if 'gsm8k_ei' in results:
        m = results['gsm8k_ei']
        L += ["", f"GSM8K test (first {m['n']} problems whose prompt fits the context), EI model, same code path: "
                  f"accuracy {m['accuracy']:.1%}, format rate {m['format_rate']:.1%} "
                  f"(a {count_parameters(model) / 1e6:.1f}M "
                  f"model trained only on the synthetic task is not expected to solve GSM8K)."]
    L += ["", "Expert iteration rounds:", "",
          "| round | rollouts | kept (correct) | SFT steps | rollout entropy | rollout tokens/s | held-out accuracy |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ei_records:
        L.append(f"| {r['ei_step']} | {r['rollouts']} | {r['kept']} ({r['kept_frac']:.0%}) | {r['sft_steps']} | "
                 f"{r['rollout_entropy']:.3f} | {r['gen_tokens_per_s']:,.0f} | "
                 f"{r.get('eval_accuracy', float('nan')):.1%} |")
    L += ["", "Log:", "", "```"] + log_lines + ["```"]
    md = os.path.join(results_dir, f'sft_demo_{preset}.md')
    with open(md + '.tmp', 'w') as f:
        f.write('\n'.join(L) + '\n')
    os.replace(md + '.tmp', md)
    _plot_demo(os.path.join(results_dir, f'sft_demo_{preset}.png'), h_sft, ei_records, h_more, h_sft['steps'],
               results['base'])
    samples = read_jsonl(os.path.join(out_dir, f"ei_step{ei_records[-1]['total_sft_steps']}.jsonl")) \
        if os.path.exists(os.path.join(out_dir, f"ei_step{ei_records[-1]['total_sft_steps']}.jsonl")) else []
    write_jsonl(os.path.join(results_dir, f'sft_demo_{preset}_samples.jsonl'), samples[:20])
    print('\n'.join(L[:12]))
    print(f"wrote {md}")
    return results


def _plot_demo(path, h_sft, ei_records, h_more, sft_steps, base):
    """Held-out accuracy vs optimizer steps: base (step 0), SFT, then its two continuations (more SFT vs expert
    iteration); SFT's format rate dashed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs, ys = zip(*([(0, base['accuracy'])] + h_sft['accuracy']))
    xf, yf = zip(*([(0, base['format_rate'])] + h_sft['format_rate']))
    ax.plot(xf, yf, ls='--', color='gray', label='SFT format rate')
    ax.plot(xs, ys, marker='o', label='SFT (gold traces)')
    if h_more['accuracy']:
        xm, ym = zip(*h_more['accuracy'])
        ax.plot([xs[-1]] + [sft_steps + x for x in xm], [ys[-1]] + list(ym), marker='s', label='SFT continued')
    ei = [(sft_steps + r['total_sft_steps'], r['eval_accuracy']) for r in ei_records if 'eval_accuracy' in r]
    if ei:
        ax.plot([xs[-1]] + [x for x, _ in ei], [ys[-1]] + [y for _, y in ei], marker='^', label='expert iteration')
    ax.set_xlabel('optimizer steps after pretraining')
    ax.set_ylabel('held-out answer accuracy')
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=110)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


# =============================================================================
# 12) Command line
# =============================================================================

def _eval_problems(which, template):
    """[{'prompt', 'ground_truth'}] for --eval_set / --val_path: synthetic held-out, GSM8K test, or a JSONL."""
    if which == 'synthetic':
        _, val = make_synthetic_task(task_n_train, task_n_val, seed, task_min_steps, task_max_steps, task_max_number)
        return [{'prompt': format_prompt(template, p['question']), 'ground_truth': p['answer']} for p in val]
    if which == 'gsm8k':
        return [{'prompt': format_prompt(template, p['question']), 'ground_truth': p['ground_truth']}
                for p in load_gsm8k('test')]
    out = []
    for r in read_jsonl(which):
        if 'prompt' in r and 'ground_truth' in r:
            out.append({'prompt': r['prompt'], 'ground_truth': r['ground_truth']})
        elif 'question' in r and 'answer' in r:
            gt = r['answer'].rsplit('####', 1)[-1].strip().replace(',', '')
            out.append({'prompt': format_prompt(template, r['question']), 'ground_truth': gt})
        else:
            raise ValueError(f"{which}:{r['_line']}: need 'prompt' + 'ground_truth' or 'question' + 'answer'")
    return out


if __name__ == '__main__':
    torch.manual_seed(seed)
    random.seed(seed)
    if mode == 'demo':
        run_demo(demo_preset, out_dir=out_dir if out_dir != 'out-sft' else f'out-sft-demo-{demo_preset}',
                 results_dir=results_dir, seed=seed - 1337)
    elif mode == 'bench':
        run_bench(results_dir, new_tokens=bench_new_tokens, batch=bench_batch)
    elif mode == 'make_data':
        # the synthetic task as files: SFT pairs (r1_zero format, with ground truth) and a held-out set
        tpl = load_prompt_template(prompt_template)
        tr, va = make_synthetic_task(task_n_train, task_n_val, seed, task_min_steps, task_max_steps, task_max_number)
        write_jsonl(os.path.join(out_dir, 'task_sft.jsonl'),
                    [{'prompt': format_prompt(tpl, p['question']), 'response': r1_response(p['trace'], p['answer']),
                      'ground_truth': p['answer']} for p in tr])
        write_jsonl(os.path.join(out_dir, 'task_val.jsonl'),
                    [{'prompt': format_prompt(tpl, p['question']), 'ground_truth': p['answer']} for p in va])
        write_jsonl(os.path.join(out_dir, 'task_pretrain.jsonl'), [{'text': pretrain_text(p)} for p in tr])
        print(f"wrote {out_dir}/task_sft.jsonl ({len(tr)}), task_val.jsonl ({len(va)}), task_pretrain.jsonl")
    else:
        # sft / ei / dpo / eval on an existing policy
        if not init_from:
            raise SystemExit("--init_from=<checkpoint path | resume | hf:name> is required for this mode")
        ckpt_path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
        model, tok = load_policy(ckpt_path, device, tokenizer_dir)
        if device.startswith('cuda'):
            torch.backends.cuda.matmul.allow_tf32 = True
        tpl = load_prompt_template(prompt_template)
        reward_fn = REWARD_FNS.get(prompt_template, r1_zero_reward_fn)
        val = _eval_problems(val_path or eval_set, tpl)
        engine = make_engine(model, tok, engine_backend, gen_batch_size,
                             init_from[3:] if init_from.startswith('hf:') else None, seed)
        extra = {'config': config, 'tokenizer': 'bytes' if getattr(tok, 'vocab_size', 0) == 257 else '',
                 'tokenizer_dir': getattr(tok, 'tokenizer_dir', tokenizer_dir)}

        def eval_fn(step, n=eval_n):
            return evaluate(engine, val[:n] if n > 0 else val, reward_fn, max_new_tokens, temperature, top_p, seed,
                            log_path=os.path.join(out_dir, f'{mode}_generations_step{step}.jsonl'))
        os.makedirs(out_dir, exist_ok=True)
        if mode == 'eval':
            m = eval_fn(0, n=-1)
            print(json.dumps(m, indent=1))
        elif mode == 'sft':
            if not train_path:
                raise SystemExit("--train_path=<JSONL of prompt/response> is required for --mode=sft")
            ex = load_sft_examples(train_path, n_train_examples, filter_correct, reward_fn)
            resume = torch.load(ckpt_path, map_location='cpu', weights_only=False) if init_from == 'resume' else None
            train_sft(model, tok, ex, max_iters, batch_size, gradient_accumulation_steps, learning_rate, weight_decay,
                      min(0.5, warmup_iters / max(1, max_iters)), grad_clip, eval_fn=eval_fn,
                      eval_interval=eval_interval,
                      log_interval=log_interval, seed=seed, out_dir=out_dir if save_checkpoint else '',
                      ckpt_extra=extra, resume=resume)
        elif mode == 'ei':
            if train_path:
                qs = [{'prompt': r['prompt'], 'ground_truth': r['ground_truth']}
                      for r in read_jsonl(train_path, required=('prompt', 'ground_truth'))]
            else:
                tr, _ = make_synthetic_task(task_n_train, task_n_val, seed, task_min_steps, task_max_steps,
                                            task_max_number)
                qs = [{'prompt': format_prompt(tpl, p['question']), 'ground_truth': p['answer']} for p in tr]
            expert_iteration(model, tok, qs, ei_steps, ei_questions, ei_rollouts, ei_temperature, top_p,
                             max_new_tokens, ei_epochs, eval_fn, reward_fn, gen_batch_size, seed,
                             dict(batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                                  learning_rate=learning_rate, grad_clip=grad_clip), out_dir)
            save_ckpt(os.path.join(out_dir, 'ckpt.pt'), model, **extra)
        elif mode == 'dpo':
            if not train_path:
                raise SystemExit("--train_path=<JSONL of prompt/chosen/rejected> is required for --mode=dpo")
            pairs = read_jsonl(train_path, required=('prompt', 'chosen', 'rejected'))
            ref, _ = load_policy(ckpt_path, device, tokenizer_dir)
            train_dpo(model, ref, tok, pairs, dpo_beta, max_iters, batch_size, gradient_accumulation_steps,
                      learning_rate, grad_clip, seed, eval_fn, eval_interval, log_interval, out_dir, extra)
        else:
            raise SystemExit(f"unknown --mode={mode}: use demo | sft | ei | dpo | eval | bench | make_data")

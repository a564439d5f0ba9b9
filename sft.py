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
    lens = [len(p) + len(o) for p, o in zip(prompt_ids, output_ids)]
    L = max(lens)
    if L < 2:
        raise ValueError("every prompt+output is shorter than 2 tokens: nothing to predict")
    pad = pad_id_of(tokenizer)
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
    if not a or not b:
        return False
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


def load_prompt_template(name):
    """A prompt template with a '{question}' slot: a name in shared/data/a5/prompts, a path, or a literal."""
    if '{question}' in name:
        return name
    path = name if os.path.exists(name) else os.path.join(DATA, 'a5', 'prompts', f'{name}.prompt')
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
#   trace: Nora starts with 12 shells. 12 + 7 = 19. 3 * 4 = 12. 19 + 12 = 31. So Nora has 31 shells.
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
    sentences, traces = [f"{name} has {x} {item}."], [f"{name} starts with {x} {item}."]
    n_steps = rng.randint(min_steps, max_steps)
    while len(sentences) - 1 < n_steps:
        step = _task_step(rng, x, name, item, max_number)
        if step is None or step[2] > 999:
            continue
        sentences.append(step[0])
        traces.append(step[1])
        x = step[2]
    sentences.append(f"How many {item} does {name} have now?")
    traces.append(f"So {name} has {x} {item}.")
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

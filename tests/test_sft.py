"""
Tests of sft.py: the course helpers on hand-computed cases, the r1_zero grader on tricky equal / not-equal answers,
data loading errors, generation through model.py's KV cache against its no-cache reference, stop strings,
a tiny SFT run that learns, the task's splits (data/arith/prepare.py), the course's parsers and the command line's
refusals of bad input (issue 32).

    python -m pytest tests/test_sft.py -v
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import sft


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny matmuls are far slower with 2 threads on a shared 2-core machine (threads wait on each other):
    run this file's models on one thread, and give the setting back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CharTok:
    """A hand-checkable tokenizer for the helper tests: one token per character ('a' -> 0, 'b' -> 1, ...)."""
    eot_id = 26

    def encode(self, text):
        return [ord(c) - ord('a') for c in text]

    def decode(self, ids):
        return ''.join(chr(i + ord('a')) for i in ids)


# ---------------------------------------------------------------------------------------------------------------
# the course helpers
# ---------------------------------------------------------------------------------------------------------------

def test_tokenize_prompt_and_output_hand_case():
    out = sft.tokenize_prompt_and_output(['ab', 'c'], ['cd', 'd'], CharTok())
    # full = [[a b c d], [c d pad pad]] with pad = eot 26
    assert out['input_ids'].tolist() == [[0, 1, 2], [2, 3, 26]]
    assert out['labels'].tolist() == [[1, 2, 3], [3, 26, 26]]
    # labels that are output tokens: row 0 -> c, d (positions 1, 2); row 1 -> d (position 0)
    assert out['response_mask'].tolist() == [[False, True, True], [True, False, False]]
    assert out['response_mask'].dtype == torch.bool


def test_tokenize_prompt_and_output_bad_input():
    with pytest.raises(ValueError, match='2 prompts but 1 outputs'):
        sft.tokenize_prompt_and_output(['a', 'b'], ['c'], CharTok())


def test_compute_entropy_hand_and_stable():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])  # uniform over 4; almost one-hot
    h = sft.compute_entropy(logits)
    assert h.shape == (1, 2)
    assert torch.allclose(h[0, 0], torch.tensor(math.log(4)), atol=1e-6)
    assert h[0, 1].abs() < 1e-6
    big = sft.compute_entropy(torch.tensor([[[1e4, -1e4, 0.0]]]))  # no inf/nan for extreme logits
    assert torch.isfinite(big).all()
    p = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0)
    assert torch.allclose(sft.compute_entropy(torch.tensor([[[1.0, 2.0, 3.0]]]))[0, 0], -(p * p.log()).sum())


class LookupLM(torch.nn.Module):
    """logits at position t depend only on token t (a bigram table): easy to compute by hand."""
    def __init__(self, V=5):
        super().__init__()
        self.table = torch.nn.Parameter(torch.arange(V * V, dtype=torch.float).view(V, V) / 10)

    def forward(self, idx):
        return self.table[idx]


def test_get_response_log_probs_hand_case():
    m = LookupLM()
    ids, labels = torch.tensor([[0, 1]]), torch.tensor([[1, 4]])
    out = sft.get_response_log_probs(m, ids, labels, return_token_entropy=True)
    for t, (i, l) in enumerate([(0, 1), (1, 4)]):
        expect = torch.log_softmax(m.table[i], 0)[l]
        assert torch.allclose(out['log_probs'][0, t], expect)
    assert out['token_entropy'].shape == (1, 2)
    assert 'token_entropy' not in sft.get_response_log_probs(m, ids, labels)


def test_masked_normalize_hand_case():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert sft.masked_normalize(x, mask, 2.0).item() == (1 + 3 + 6) / 2
    assert sft.masked_normalize(x, mask, 2.0, dim=1).tolist() == [2.0, 3.0]
    assert sft.masked_normalize(x, mask, 1.0, dim=0).tolist() == [1.0, 0.0, 9.0]


def test_sft_microbatch_train_step_accumulates():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    loss, meta = sft.sft_microbatch_train_step(lp, mask, gradient_accumulation_steps=4, normalize_constant=2.0)
    # per sequence: -(sum)/2 -> 1.5 and 5.5; batch mean 3.5; / 4 accumulation steps
    assert abs(loss.item() - 3.5 / 4) < 1e-6
    g = -mask.float() / 2 / 2 / 4  # d loss / d lp = -mask / normalize_constant / B / steps
    assert torch.allclose(lp.grad, g)
    assert meta['n_response_tokens'].item() == 4
    # a second and third call ADD to the gradient (never zero it)
    sft.sft_microbatch_train_step(lp, mask, 4, 2.0)
    sft.sft_microbatch_train_step(lp, mask, 4, 2.0)
    assert torch.allclose(lp.grad, 3 * g)


# ---------------------------------------------------------------------------------------------------------------
# the grader
# ---------------------------------------------------------------------------------------------------------------

EQUAL = [("18", "18"), ("18.0", "18"), ("18.00", "18"), ("$18", "18"), ("\\$18", "18"), ("18 dollars", "18"),
         ("\\boxed{18}", "18"), ("1,000", "1000"), ("1000", "1,000"), ("1{,}000", "1000"), ("0.5", "\\frac{1}{2}"),
         ("1/2", "\\frac12"), ("\\dfrac{1}{2}", "0.5"), ("x = 5", "5"), ("-3", "- 3"), ("18.", "18"),
         ("50\\%", "50"), ("2\\frac{1}{2}", "5/2"), ("18 \\text{ apples}", "18"), ("\\text{18 apples}", "18"),
         ("(1, 2)", "(1,2)"), ("Yes", "yes"), ("1,234,567.5", "1234567.5"), ("-\\frac{3}{4}", "-0.75"),
         ("90^\\circ", "90"), ("\\left(1,2\\right)", "(1,2)"), ("  42  ", "42"), ("42 cm.", "42"),
         ("\\boxed{\\frac{1}{2}}", "0.5")]
# sympy's symbolic cases ((x+1)^2 == x^2+2x+1, 2\sqrt{2} == \sqrt{8}, \pi*3 == 3\pi, 0.1+0.2 == 0.3) went with
# sympy: the task and GSM8K have plain numbers (issue 29: the grader kept to what the data needs)
NOT_EQUAL = [("18", "-18"), ("18", "180"), ("0.5", "0.51"), ("1/3", "0.333"), ("", "0"), ("18 or 19", "18"),
             ("1,2", "12"), ("2", "\\sqrt{2}"), ("x+1", "x-1"), ("\\frac{1}{2}", "2"), ("18", "18.5"), ("5x", "5"),
             ("__import__('os').system('echo hi')", "0"), ("2**99999", "1"), ("1/0", "0"), ("\\boxed{18", "18"),
             ("(1,2)", "(2,1)"), ("10^{1000}", "1"), ("1,0000", "10000")]


@pytest.mark.parametrize('given,truth', EQUAL)
def test_grade_equal(given, truth):
    assert sft.grade_answer(given, truth)
    assert sft.grade_answer(truth, given)  # symmetric


@pytest.mark.parametrize('given,truth', NOT_EQUAL)
def test_grade_not_equal(given, truth):
    assert not sft.grade_answer(given, truth)


R1 = [  # (response, ground truth, format, answer)
    (" 2 + 2 = 4. </think> <answer> 4 </answer>", "4", 1, 1),
    (" 2 + 2 = 4. </think> <answer> \\boxed{4} </answer>", "4", 1, 1),
    (" think </think> <answer> 5 </answer>", "4", 1, 0),  # formatted but wrong
    (" think </think><answer> 4 </answer>", "4", 0, 0),  # strict: one space between the tags
    (" think </think> <answer> 4", "4", 0, 0),  # unterminated
    (" <answer> 4 </answer>", "4", 0, 0),  # no </think>
    (" t </think> <answer> \\boxed{4 </answer>", "4", 1, 0),  # unbalanced \boxed
    (" t </think> <answer> 1,000 </answer>", 1000, 1, 1),  # int ground truth
    (" t </think> <answer> 7 </answer>", ["6", "7"], 1, 1),  # any of several ground truths
    (" t </think> <answer> 4 </answer> then 5", "4", 1, 0),  # as in the course's grader: text after </answer> counts
    (" t </think> <answer> 1 </answer> x <answer> 18", "18", 1, 1),  # ...and the answer follows the last <answer>
    (" t </think> <answer> \\boxed{\\frac{\\sqrt{3}}{2}} </answer>", "\\frac{\\sqrt{3}}{2}", 1, 1),  # nested braces
    (" t </think> <answer> </answer>", "0", 1, 0),  # empty answer
]


@pytest.mark.parametrize('response,truth,fmt,ans', R1)
def test_r1_zero_reward(response, truth, fmt, ans):
    r = sft.r1_zero_reward_fn(response, truth)
    assert (r['format_reward'], r['answer_reward'], r['reward']) == (fmt, ans, ans)


def test_question_only_reward():
    assert sft.question_only_reward_fn("so the answer is \\boxed{12}. Then 13", "12")['reward'] == 1
    assert sft.question_only_reward_fn("we get 1,200 in total", "1200")['reward'] == 1
    assert sft.question_only_reward_fn("no idea", "3") == {'format_reward': 0.0, 'answer_reward': 0.0, 'reward': 0.0}


def test_course_parsers():
    # the course's examples: the last number (commas removed) / the letter after 'The correct answer is'
    out = ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. "
           "The answer is 72.")
    assert sft.parse_gsm8k_response(out) == '72'
    assert sft.parse_gsm8k_response("It costs 1,250 dollars, not -3.5") == '-3.5'
    assert sft.parse_gsm8k_response("Natalia sold twenty-four clips in May.") is None
    ex = {'subject': 'virology', 'question': 'How many human polyomaviruses are known at present?',
          'options': ['100', '1', '10', 'unknown'], 'answer': 'A'}
    assert sft.parse_mmlu_response(ex, "The correct answer is B. There are 1 human polyomaviruses known.") == 'B'
    assert sft.parse_mmlu_response(ex, "The correct answer is 10000 polyomaviruses.") is None
    assert sft.parse_mmlu_response(ex, "The correct answer is (C).") == 'C'
    assert sft.parse_mmlu_response(ex, "A total of 10 are known. The answer is probably B") is None  # not 'A'


def test_wilson_interval():
    lo, hi = sft.wilson_interval(400, 500)
    assert lo == pytest.approx(0.7626, abs=1e-3) and hi == pytest.approx(0.8327, abs=1e-3)  # about +-3.5 points
    assert sft.wilson_interval(0, 50)[0] == 0.0 and 0 < sft.wilson_interval(0, 50)[1] < 0.1  # not empty at p = 0
    assert sft.wilson_interval(0, 0) == (0.0, 1.0)


def test_fewshot_prompt_and_reward():
    shots = [{'question': 'A has 1 b. How many?', 'trace': '1 + 1 = 2.', 'ground_truth': '2'}]
    p = sft.fewshot_prompt(shots, 'Q2?')
    assert p == ("Question: A has 1 b. How many?\nSolution: 1 + 1 = 2.\nAnswer: 2\n\n<|endoftext|>\n"
                 "Question: Q2?\nSolution:")
    assert sft.fewshot_reward_fn(" 3 + 4 = 7.\nAnswer: 7\n", "7")['reward'] == 1
    assert sft.fewshot_reward_fn(" 3 + 4 = 7.\nAnswer: 8\nQuestion", "7") == {'format_reward': 1.0,
                                                                                'answer_reward': 0.0, 'reward': 0.0}
    assert sft.fewshot_reward_fn(" 3 + 4 = 7.", "7")['format_reward'] == 0


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------

def test_read_jsonl_reports_line_numbers(tmp_path):
    p = tmp_path / 'bad.jsonl'
    p.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n')
    with pytest.raises(ValueError, match=r'bad.jsonl:3: invalid JSON'):
        sft.read_jsonl(str(p))
    p.write_text('{"prompt": "a", "response": "b"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r':2: expected a JSON object'):
        sft.read_jsonl(str(p))
    with pytest.raises(ValueError, match=r":1: missing key\(s\) \['chosen'\]"):
        sft.read_jsonl(str(p).replace('bad', 'bad'), required=('chosen',))
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"record 2 needs 'question' \+ 'answer'"):
        sft.load_sft_examples(str(p))
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "  "}\n')
    with pytest.raises(ValueError, match=r'record 2 has an empty or no response'):
        sft.load_sft_examples(str(p))


def test_load_problems_and_first_n(tmp_path):
    p = tmp_path / 'd.jsonl'
    sft.write_jsonl(str(p), [{'question': f'q{i}', 'trace': '1 + 2 = 3.', 'answer': '3'} for i in range(3)])
    probs = sft.load_problems(str(p), 'Q: {question}\nA: <think>')
    assert probs[0] == {'question': 'q0', 'ground_truth': '3', 'prompt': 'Q: q0\nA: <think>', 'trace': '1 + 2 = 3.',
                        'response': ' 1 + 2 = 3. </think> <answer> 3 </answer>'}
    assert len(sft.load_sft_examples(str(p))) == 3 and len(sft.load_sft_examples(str(p), n=2)) == 2


def test_gsm8k_and_prompt(data_dir):
    path = f'{data_dir}/a5/gsm8k/test.jsonl'
    tpl = sft.load_prompt_template('r1_zero')
    test = sft.load_problems(path, tpl)
    assert len(test) == 1319 and test[0]['ground_truth'] == '18'
    for name, text in sft.BUILTIN_PROMPTS.items():  # the built-in copies equal the course's files
        assert open(f'{data_dir}/a5/prompts/{name}.prompt').read() == text
    assert test[0]['prompt'].endswith('Assistant: <think>') and test[0]['question'] in test[0]['prompt']
    # every reference answer, put in the r1_zero format, is graded correct (the grader accepts GSM8K's numbers)
    for line in open(f'{data_dir}/a5/gsm8k/train.jsonl').readlines()[:500]:
        r = json.loads(line)
        sol, gt = r['answer'].rsplit('####', 1)
        gt = gt.strip().replace(',', '')
        assert sft.r1_zero_reward_fn(sft.r1_response(re.sub(r'<<[^>]*>>', '', sol), gt), gt)['reward'] == 1
        assert sft.question_only_reward_fn(r['answer'], gt)['reward'] == 1  # the last number, as GSM8K is graded


@pytest.fixture(scope='module')
def prepare():
    spec = importlib.util.spec_from_file_location('arith_prepare', os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'arith', 'prepare.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _key(problem):
    """A problem's structure from its text alone: the starting count and the numbers of every sentence."""
    return tuple(tuple(re.findall(r'\d+', s)) + (re.sub(r'\d+|^\w+ ', '', s).split(' ')[0],)
                 for s in problem['question'].split('. ')[:-1])


def test_task_splits_disjoint_by_structure_and_exact(prepare):
    a = prepare.make_splits(3000, 200, 200, 100, seed=3)
    assert a == prepare.make_splits(3000, 200, 200, 100, seed=3)  # deterministic
    assert a['val'] != prepare.make_splits(3000, 200, 200, 100, seed=4)['val']
    train = {_key(p) for p in a['train']}
    for split in ('val', 'test', 'gen'):
        keys = [_key(p) for p in a[split]]
        assert not set(keys) & train, split  # no held-out problem shares its (start, operations, numbers) with train
    assert not {_key(p) for p in a['val']} & {_key(p) for p in a['test']}
    assert len({_key(p) for p in a['test']}) == 200  # each test key once
    for split, probs in a.items():
        for p in probs:
            # replay the trace: every 'a op b = c' is right, and the last result is the answer
            eqs = re.findall(r'(\d+) ([-+*/]) (\d+) = (\d+)', p['trace'])
            for x, op, y, c in eqs:
                assert eval(f"{x} {op.replace('/', '//')} {y}") == int(c), p
            assert eqs[-1][3] == p['answer'] and 0 <= int(p['answer']) <= 999
            assert sft.r1_zero_reward_fn(sft.r1_response(p['trace'], p['answer']), p['answer'])['reward'] == 1
            n_ops = p['question'].count('.') - 1  # sentences between the start and the question
            assert (n_ops == 4) == (split == 'gen'), (split, p)  # gen: one operation more than training has


def test_prepare_writes_splits_and_refuses_bad_config(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'arith', 'prepare.py')
    r = subprocess.run([sys.executable, script, f'--out_dir={tmp_path}/t', '--n_train=300', '--n_val=20',
                        '--n_test=20', '--n_gen=10'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / 't')) == ['gen.jsonl', 'pretrain.txt', 'test.jsonl', 'train.jsonl', 'val.jsonl']
    assert len(sft.read_jsonl(str(tmp_path / 't' / 'test.jsonl'))) == 20
    assert (tmp_path / 't' / 'pretrain.txt').read_text().count('<|endoftext|>') == 299
    for bad in ('--n_val=-1', '--min_steps=3 --max_steps=2', '--max_number=1 --min_steps=1 --max_steps=1 --n_val=100'):
        r = subprocess.run([sys.executable, script, f'--out_dir={tmp_path}/bad', *bad.split()], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not os.path.exists(tmp_path / 'bad')


# ---------------------------------------------------------------------------------------------------------------
# generation: sft.generate over model.py's KV-cache generate (tiny model.py models, byte-level bpe.Tokenizer)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def byte_tok():
    return sft.byte_tokenizer()


def _tiny_model(seed=0, **kw):
    from model import TransformerLM
    torch.manual_seed(seed)
    args = dict(vocab_size=257, context_length=96, d_model=32, num_layers=2, num_heads=2)
    args.update(kw)
    return TransformerLM(**args).eval()


def test_generate_equals_no_cache_greedy(byte_tok):
    m = _tiny_model()
    prompts = ['hello', 'a much longer prompt here', 'xy', 'mid length', 'z']  # 2 batches, mixed lengths
    out = sft.generate(m, byte_tok, prompts, 17, batch_size=3, stop=())
    naive = [m.generate([byte_tok.encode(p)], 17, temperature=0, use_cache=False)[0] for p in prompts]
    assert [o['token_ids'] for o in out] == naive
    assert all(len(o['token_ids']) == 17 and o['finish_reason'] == 'length' for o in out)


def test_model_generate_stop_and_min_tokens_equal_reference(byte_tok):
    m = _tiny_model()
    ids = [byte_tok.encode(p) for p in ['hello', 'a much longer prompt here', 'xy']]
    free = m.generate(ids, 20, temperature=0)
    stop = [free[0][5:8]]  # a token sequence row 0 is known to produce
    for min_tokens in (0, 3, 9):
        cached = m.generate(ids, 20, temperature=0, stop=stop, min_tokens=min_tokens, eos_id=free[1][4])
        naive = [m.generate([i], 20, temperature=0, stop=stop, min_tokens=min_tokens, eos_id=free[1][4],
                            use_cache=False)[0] for i in ids]
        assert cached == naive
    assert len(m.generate(ids[:1], 20, temperature=0, stop=stop)[0]) == 8  # stopped right after the sequence
    assert m.generate(ids[1:2], 20, temperature=0, eos_id=free[1][4], min_tokens=6)[0][4] != free[1][4]  # banned


def test_generate_samples_n_per_prompt_and_seed(byte_tok):
    m = _tiny_model()
    a = sft.generate(m, byte_tok, ['ab', 'cde'], 12, temperature=1.0, n=3, seed=5, batch_size=4)
    b = sft.generate(m, byte_tok, ['ab', 'cde'], 12, temperature=1.0, n=3, seed=5, batch_size=4)
    c = sft.generate(m, byte_tok, ['ab', 'cde'], 12, temperature=1.0, n=3, seed=6, batch_size=4)
    assert [x['prompt_index'] for x in a] == [0, 0, 0, 1, 1, 1]
    assert a == b and a != c
    assert len({tuple(x['token_ids']) for x in a}) > 1  # samples differ
    # top_p tiny -> only the most likely token: same as greedy
    g = sft.generate(m, byte_tok, ['ab'], 12)
    t = sft.generate(m, byte_tok, ['ab'], 12, temperature=1.0, top_p=1e-6, seed=1)
    assert g[0]['token_ids'] == t[0]['token_ids']


def test_generate_bad_prompts(byte_tok):
    m = _tiny_model()
    with pytest.raises(ValueError, match='prompt 1 has 200 tokens'):
        sft.generate(m, byte_tok, ['ok', 'x' * 200], 4)
    with pytest.raises(ValueError, match='prompt 0 has 0 tokens'):
        sft.generate(m, byte_tok, [''], 4)
    # a prompt that fits but leaves less room than max_new_tokens: generation stops at the context
    assert len(sft.generate(m, byte_tok, ['x' * 90], 50, stop=())[0]['token_ids']) == 96 - 90


def test_finish_cuts_at_stop_strings_and_eos(byte_tok):
    ids = byte_tok.encode(' 4 </think> <answer> 4 </answer> junk </answer>')
    r = sft.finish(byte_tok, ids, ['</answer>'])
    assert r['text'] == ' 4 </think> <answer> 4 </answer>' and r['finish_reason'] == 'stop'
    assert byte_tok.decode(r['token_ids']) == r['text']
    r = sft.finish(byte_tok, ids, ['</answer>'], min_tokens=35)  # min_tokens: the first stop is too early
    assert r['text'].endswith('junk </answer>')
    r = sft.finish(byte_tok, ids[:5] + [byte_tok.eot_id] + ids[5:], [])
    assert r['text'] == ' 4 </' and r['finish_reason'] == 'eos'


# ---------------------------------------------------------------------------------------------------------------
# a tiny SFT run that learns (loss falls, accuracy rises), then stop strings on the trained model
# ---------------------------------------------------------------------------------------------------------------

TEMPLATE = 'Q: {question}\nA: <think>'


def _copy_task(n, seed):
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        out.append({'prompt': sft.format_prompt(TEMPLATE, f'{a}+{b}'), 'ground_truth': str(a + b),
                    'response': sft.r1_response(f'{a}+{b}={a + b}', a + b)})
    return out


@pytest.fixture(scope='module')
def trained(byte_tok, tmp_path_factory):
    m = _tiny_model(seed=1, d_model=64, num_layers=2, num_heads=4).train()
    val = _copy_task(25, seed=2)
    ev = lambda step: sft.evaluate(m, byte_tok, val, max_new_tokens=40)  # noqa: E731
    out = tmp_path_factory.mktemp('sft')
    hist = sft.train_sft(m, byte_tok, _copy_task(400, seed=1), max_iters=120, batch_size=16,
                         gradient_accumulation_steps=2, learning_rate=3e-3, eval_fn=ev, eval_interval=60,
                         out_dir=str(out), log_interval=1000)
    before = sft.evaluate(_tiny_model(seed=1, d_model=64, num_layers=2, num_heads=4), byte_tok, val,
                          max_new_tokens=40, log_path=str(out / 'gens.jsonl'))
    return m, hist, before, out


def test_tiny_sft_learns(trained):
    m, hist, before, out = trained
    losses = [l for _, l in hist['loss']]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, (losses[:5], losses[-10:])
    after = hist['evals'][-1]
    assert before['accuracy'] == 0.0 and before['format_rate'] == 0.0
    assert after['format_rate'] >= 0.9 and after['accuracy'] >= 0.5, after
    assert after['ci95'][0] <= after['accuracy'] <= after['ci95'][1] and [e['step'] for e in hist['evals']] == [60, 120]
    assert (out / 'ckpt.pt').exists() and len(sft.read_jsonl(str(out / 'sft_log.jsonl'))) == 120 + 2
    logged = sft.read_jsonl(str(out / 'gens.jsonl'))
    assert len(logged) == 25 and {'prompt', 'response', 'ground_truth', 'reward', 'format_reward'} <= set(logged[0])
    # the checkpoint reloads (train.py's format) to the same greedy outputs
    m2, tok2 = sft.load_policy(str(out / 'ckpt.pt'))
    p = [sft.format_prompt(TEMPLATE, '1+2')]
    assert sft.generate(m2, tok2, p, 20) == sft.generate(m, tok2, p, 20)


def test_stop_strings_on_trained_model(trained, byte_tok):
    m = trained[0]
    p = [sft.format_prompt(TEMPLATE, '2+2')]
    free = sft.generate(m, byte_tok, p, 60, stop=())[0]
    stopped = sft.generate(m, byte_tok, p, 60)[0]
    assert stopped['finish_reason'] == 'stop' and stopped['text'].endswith('</answer>')
    assert free['text'].startswith(stopped['text']) and len(free['text']) > len(stopped['text'])
    assert byte_tok.decode(stopped['token_ids']) == stopped['text']
    late = sft.generate(m, byte_tok, p, 60, min_tokens=len(stopped['token_ids']) + 1)
    assert len(late[0]['token_ids']) > len(stopped['token_ids'])


def test_over_long_and_empty_examples(byte_tok):
    m = _tiny_model()
    ex = _copy_task(20, 0) + [{'prompt': 'x' * 200, 'response': 'y'}]  # one example longer than the context
    assert sft.train_sft(m, byte_tok, ex, max_iters=3, batch_size=4, gradient_accumulation_steps=2)['steps'] == 3
    with pytest.raises(ValueError, match='empty response'):
        sft.train_sft(m, byte_tok, [{'prompt': 'a', 'response': ''}], max_iters=1)


# ---------------------------------------------------------------------------------------------------------------
# the command line: evaluation with intervals per split, and bad input refused in one line with nothing written
# ---------------------------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def cli_files(tmp_path_factory, trained):
    d = tmp_path_factory.mktemp('cli')
    sft.save_ckpt(str(d / 'model.pt'), trained[0])
    rows = [{'question': f'{a}+{b}', 'answer': str(a + b), 'trace': f'{a}+{b}={a + b}'} for a in range(3) for b in
            range(3)]
    sft.write_jsonl(str(d / 'val.jsonl'), rows[:6])
    sft.write_jsonl(str(d / 'test.jsonl'), rows[6:])
    return d


def run_sft(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'sft.py'), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_eval_writes_accuracy_with_interval_per_split(cli_files):
    d = cli_files
    r = run_sft('--mode=eval', f'--init_from={d}/model.pt', f'--val_path={d}/val.jsonl',
                f'--eval_paths={d}/test.jsonl', f'--out_dir={d}/ev', f'--prompt_template={TEMPLATE}',
                '--max_new_tokens=24', '--device=cpu')
    assert r.returncode == 0, r.stderr
    res = {x['split']: x for x in sft.read_jsonl(str(d / 'ev' / 'eval_metrics.jsonl'))}
    assert set(res) == {'val', 'test'} and res['val']['n'] == 6 and res['test']['n'] == 3
    for x in res.values():
        assert x['ci95'][0] <= x['accuracy'] <= x['ci95'][1]
    assert re.search(r'test: accuracy [\d.]+% \(95% CI [\d.]+%-[\d.]+%, n=3\)', r.stdout)
    assert len(sft.read_jsonl(str(d / 'ev' / 'eval_test.jsonl'))) == 3


def test_cli_sft_trains_validates_and_refuses_to_overwrite(cli_files, tmp_path):
    d = cli_files
    args = ['--mode=sft', f'--init_from={d}/model.pt', f'--train_path={d}/test.jsonl', f'--val_path={d}/val.jsonl',
            f'--out_dir={tmp_path}/s', f'--prompt_template={TEMPLATE}', '--max_iters=2', '--batch_size=2',
            '--eval_interval=1', '--max_new_tokens=8', '--device=cpu']
    r = run_sft(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / 's')) == ['ckpt.pt', 'sft_log.jsonl', 'val_step1.jsonl', 'val_step2.jsonl']
    r = run_sft(*args)  # the same command again: the checkpoint exists, so it is refused
    assert r.returncode == 2 and 'exists' in r.stderr and '--overwrite=True' in r.stderr
    assert run_sft(*args, '--overwrite=True').returncode == 0
    # the docstring's next command: evaluate the checkpoint where it lies (eval writes no ckpt.pt, so it may read it)
    r = run_sft('--mode=eval', f'--init_from={tmp_path}/s/ckpt.pt', f'--eval_paths={d}/test.jsonl',
                f'--out_dir={tmp_path}/s', f'--prompt_template={TEMPLATE}', '--max_new_tokens=8', '--device=cpu')
    assert r.returncode == 0 and os.path.isfile(tmp_path / 's' / 'eval_test.jsonl'), r.stderr


BAD = [  # (arguments, a word the one-line message must contain)
    (['--mode=train'], 'mode'),
    (['--mode=eval', '--max_new_tokens=0'], 'max_new_tokens'),
    (['--batch_size=6', '--gradient_accumulation_steps=4'], 'batch_size'),
    (['--learning_rate=-1'], 'learning_rate'),
    (['--mode=eval', '--eval_n=0'], 'eval_n'),
    (['--init_from='], 'init_from'),
    (['--mode=eval', '--eval_paths=missing.jsonl'], 'missing.jsonl'),
    (['--mode=eval', '--fewshot=2'], 'train_path'),
    (['--mode=eval', '--eval_paths={d}/bad.jsonl'], 'bad.jsonl:2'),
    (['--mode=eval', '--eval_paths={d}/test.jsonl', '--init_from={d}/empty.pt'], 'empty.pt'),
    (['--mode=eval', '--eval_paths={d}/test.jsonl', '--prompt_template=nope'], 'nope'),
    (['--mode=eval', '--eval_paths={d}/test.jsonl', '--fewshot=50', '--train_path={d}/test.jsonl'], 'fewshot'),
    (['--mode=eval', '--eval_paths={d}/eval_metrics.jsonl', '--out_dir={d}'], 'overwritten'),
    (['--mode=eval', '--eval_paths={d}/test.jsonl'], 'no room for an answer'),  # r1_zero's preamble > 96 tokens
    (['--mode=sft', '--train_path={d}/test.jsonl', '--val_path={d}/val.jsonl'], 'no room for an answer'),
    (['--mode=sft', '--train_path={d}/test.jsonl'], 'fit context_length=96'),
    (['--mode=sft', '--train_path={d}/test.jsonl', '--out_dir={d}/has_ckpt'], 'exists'),
    (['--mode=sft', '--train_path={d}/test.jsonl', '--device=cuda:7'], 'device'),
    (['--mode=eval', '--eval_paths={d}/test.jsonl', '--device=gpu'], "--device='gpu' must be cpu"),  # a typo
    (['--mode=eval', '--eval_paths={d}/empty.jsonl'], 'empty.jsonl: no problems'),  # not accuracy nan%
    (['--mode=sft', '--train_path={d}/test.jsonl', '--val_path={d}/empty.jsonl'], 'empty.jsonl: no problems'),
    (['--mode=sft', '--train_path={d}/empty.jsonl'], 'empty.jsonl: no problems'),
]


@pytest.mark.parametrize('args,word', BAD)
def test_cli_refuses_bad_input(cli_files, tmp_path, args, word):
    d = cli_files
    (d / 'bad.jsonl').write_text('{"question": "1+1", "answer": "2"}\n{oops\n')
    (d / 'empty.pt').write_bytes(b'')
    (d / 'empty.jsonl').write_text('\n')  # a split with no problems (a blank line only)
    sft.write_jsonl(str(d / 'eval_metrics.jsonl'), [{'question': '1+1', 'answer': '2'}])
    os.makedirs(d / 'has_ckpt', exist_ok=True)
    (d / 'has_ckpt' / 'ckpt.pt').write_bytes(b'keep')
    base = [f'--init_from={d}/model.pt', '--device=cpu', f'--out_dir={tmp_path}/out']
    before = {p: os.path.getmtime(os.path.join(d, p)) for p in os.listdir(d) if os.path.isfile(os.path.join(d, p))}
    r = run_sft(*base, *[a.format(d=d) for a in args], cwd=tmp_path)
    if word == 'device' and sft.torch.cuda.device_count() > 7:
        pytest.skip('this machine has 8 GPUs')
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert lines[0].startswith('sft.py: error:') and word in lines[0], lines[0]
    assert not os.path.exists(tmp_path / 'out') and (d / 'has_ckpt' / 'ckpt.pt').read_bytes() == b'keep'
    assert before == {p: os.path.getmtime(os.path.join(d, p)) for p in before}  # inputs untouched


# ---------------------------------------------------------------------------------------------------------------
# the demo and expert iteration (bench/sft.py), end to end at a toy size
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def bench_sft():
    spec = importlib.util.spec_from_file_location('bench_sft', os.path.join(ROOT, 'bench', 'sft.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_expert_iteration_keeps_correct_rollouts(trained, byte_tok, tmp_path, bench_sft):
    import copy
    m = copy.deepcopy(trained[0])
    qs = [{'prompt': x['prompt'], 'ground_truth': x['ground_truth']} for x in _copy_task(12, seed=7)]
    seen = []
    recs = bench_sft.expert_iteration(m, byte_tok, qs, n_steps=1, questions_per_step=6, rollouts=3, temperature=1.0,
                                      max_new_tokens=40, eval_fn=lambda s: seen.append(s) or {
                                          'accuracy': 0.5, 'format_rate': 1.0, 'mean_len': 1.0},
                                      sft_kwargs=dict(batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4),
                                      out_dir=str(tmp_path), log=lambda msg: None)
    r = recs[0]
    assert r['rollouts'] == 18 and 0 < r['kept'] <= 18 and r['sft_steps'] == -(-r['kept'] // 4)
    assert seen == [r['sft_steps']] and r['eval_accuracy'] == 0.5
    assert len(sft.read_jsonl(str(tmp_path / 'ei_steps.jsonl'))) == 1


@pytest.mark.parametrize('ctx, fewshot, shots', [(512, 2, 2), (400, 4, 1)])  # 4 shots of bytes overflow 400
def test_demo_pipeline_runs(tmp_path, monkeypatch, bench_sft, ctx, fewshot, shots):
    tiny = dict(model=dict(d_model=32, num_layers=1, num_heads=2, context_length=ctx),
                template='User: {question}\nAssistant: <think>', task=dict(min_steps=1, max_steps=1, max_number=9),
                n_train=300, n_val=10, n_test=10,
                pretrain=dict(max_iters=5, batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-3),
                sft_examples=32, sft=dict(max_iters=6, batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3),
                ei=dict(n_steps=2, questions_per_step=4, rollouts=2), ei_lr=3e-4, fewshot=fewshot, gsm8k_n=2,
                gen_batch_size=16, max_new_tokens=16)
    monkeypatch.setitem(bench_sft.DEMO_PRESETS, 'tiny', tiny)
    # an untrained model is never right: accept every rollout so that the EI and matched-SFT branches both train
    orig = bench_sft.expert_iteration
    always = lambda r, gt: {'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}  # noqa: E731
    monkeypatch.setattr(bench_sft, 'expert_iteration', lambda *a, **k: orig(*a, **{**k, 'reward_fn': always}))
    res = bench_sft.run_demo('tiny', out_dir=str(tmp_path / 'out'), results_dir=str(tmp_path / 'res'))
    assert {'base', 'base_fewshot', 'sft', 'ei', 'sft_more'} <= set(res)
    assert {'val', 'test', 'gen'} <= set(res['sft']) and 'ci95' in res['ei']['test']
    md = (tmp_path / 'res' / 'sft_demo_tiny.md').read_text()
    assert '| SFT + 2 more SFT steps |' in md and f'base, {shots}-shot plain prompt' in md  # the most that fit
    assert (tmp_path / 'out' / 'sft.pt').exists() and (tmp_path / 'out' / 'ei_steps.jsonl').exists()

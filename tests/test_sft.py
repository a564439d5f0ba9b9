"""
Tests of sft.py: the course helpers on hand-computed cases, the r1_zero grader on tricky equal / not-equal answers,
data loading errors, the synthetic task, the KV-cache engine against no-cache greedy decoding, stop strings,
a tiny SFT run that learns, and DPO against a hand computation.

    python -m pytest tests/test_sft.py -v
"""
import math

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
         ("50\\%", "50"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("(x+1)^2", "x^2+2x+1"), ("2\\frac{1}{2}", "5/2"),
         ("18 \\text{ apples}", "18"), ("\\text{18 apples}", "18"), ("\\pi*3", "3\\pi"), ("(1, 2)", "(1,2)"),
         ("Yes", "yes"), ("1,234,567.5", "1234567.5"), ("-\\frac{3}{4}", "-0.75"), ("90^\\circ", "90"),
         ("\\left(1,2\\right)", "(1,2)"), ("0.1+0.2", "0.3"), ("  42  ", "42"), ("42 cm.", "42"),
         ("2\\sqrt{2}", "\\sqrt{8}")]
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
    (" t </think> <answer> 4 </answer> more text", "4", 1, 1),  # text after </answer> is ignored
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
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r":2: missing key\(s\) \['response'\]"):
        sft.load_sft_examples(str(p))
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "  "}\n')
    with pytest.raises(ValueError, match=r':2: empty response'):
        sft.load_sft_examples(str(p))


def test_load_sft_examples_first_n_and_filter(tmp_path):
    p = tmp_path / 'd.jsonl'
    recs = [{'prompt': 'q', 'response': sft.r1_response('t', a), 'ground_truth': '3'} for a in ['3', '4', '3']]
    sft.write_jsonl(str(p), recs)
    assert len(sft.load_sft_examples(str(p))) == 3
    assert len(sft.load_sft_examples(str(p), n=2)) == 2
    assert len(sft.load_sft_examples(str(p), filter_correct=True)) == 2


def test_gsm8k_and_prompt(data_dir):
    test = sft.load_gsm8k('test', data_dir)
    assert len(test) == 1319
    assert test[0]['ground_truth'] == '18' and '<<' not in test[0]['solution']
    tpl = sft.load_prompt_template('r1_zero')
    for name, text in sft.BUILTIN_PROMPTS.items():  # the built-in copies equal the course's files
        assert open(f'{data_dir}/a5/prompts/{name}.prompt').read() == text
    prompt = sft.format_prompt(tpl, test[0]['question'])
    assert prompt.endswith('Assistant: <think>') and test[0]['question'] in prompt
    # every reference answer, put in the r1_zero format, is graded correct (the grader accepts GSM8K's numbers)
    train = sft.load_gsm8k('train', data_dir)
    assert all(sft.r1_zero_reward_fn(sft.r1_response(x['solution'], x['ground_truth']), x['ground_truth'])['reward']
               for x in train[:500])


def test_synthetic_task_deterministic_and_exact():
    a_train, a_val = sft.make_synthetic_task(300, 50, seed=3)
    b_train, b_val = sft.make_synthetic_task(300, 50, seed=3)
    assert a_train == b_train and a_val == b_val
    assert sft.make_synthetic_task(300, 50, seed=4)[1] != a_val
    assert not {p['question'] for p in a_val} & {p['question'] for p in a_train}  # held out
    for p in a_train + a_val:
        # replay the trace's arithmetic: every 'a op b = c' must be right, and the last result is the answer
        results = []
        for a, op, b, c in __import__('re').findall(r'(\d+) ([-+*/]) (\d+) = (\d+)', p['trace']):
            assert eval(f"{a} {op.replace('/', '//')} {b}") == int(c), p
            results.append(c)
        assert results[-1] == p['answer'] and 0 <= int(p['answer']) <= 999
        assert sft.r1_zero_reward_fn(sft.r1_response(p['trace'], p['answer']), p['answer'])['reward'] == 1


# ---------------------------------------------------------------------------------------------------------------
# the generation engine (tiny model.py models, byte-level bpe.Tokenizer)
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


def test_engine_cache_equals_no_cache_greedy(byte_tok):
    m = _tiny_model()
    eng = sft.Engine(m, byte_tok, batch_size=3, check_every=4)
    prompts = ['hello', 'a much longer prompt here', 'xy', 'mid length', 'z']  # 2 batches, mixed lengths
    cached = eng.generate(prompts, max_new_tokens=17, temperature=0)
    naive = eng.generate(prompts, max_new_tokens=17, temperature=0, use_cache=False)
    assert [c['token_ids'] for c in cached] == [n['token_ids'] for n in naive]
    assert all(len(c['token_ids']) == 17 and c['finish_reason'] == 'length' for c in cached)
    # and equal to model.py's own generate
    ref = m.generate([byte_tok.encode(p) for p in prompts], 17, temperature=0)
    assert ref == [c['token_ids'] for c in cached]
    assert eng.stats['new_tokens'] == 5 * 17 and eng.stats['tokens_per_s'] > 0


def test_engine_samples_n_per_prompt_and_seed(byte_tok):
    m = _tiny_model()
    eng = sft.Engine(m, byte_tok, batch_size=4)
    a = eng.generate(['ab', 'cde'], max_new_tokens=12, temperature=1.0, n=3, seed=5)
    b = eng.generate(['ab', 'cde'], max_new_tokens=12, temperature=1.0, n=3, seed=5)
    c = eng.generate(['ab', 'cde'], max_new_tokens=12, temperature=1.0, n=3, seed=6)
    assert [x['prompt_index'] for x in a] == [0, 0, 0, 1, 1, 1]
    assert a == b and a != c
    assert len({tuple(x['token_ids']) for x in a}) > 1  # samples differ
    # top_p tiny -> only the most likely token: same as greedy
    g = eng.generate(['ab'], max_new_tokens=12, temperature=0)
    t = eng.generate(['ab'], max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=1)
    assert g[0]['token_ids'] == t[0]['token_ids']


def test_engine_bad_prompts(byte_tok):
    eng = sft.Engine(_tiny_model(), byte_tok)
    with pytest.raises(ValueError, match='prompt 1 has 200 tokens'):
        eng.generate(['ok', 'x' * 200], max_new_tokens=4)
    with pytest.raises(ValueError, match='prompt 0 is empty'):
        eng.generate([''], max_new_tokens=4)
    # a prompt that fits but leaves less room than max_new_tokens: generation stops at the context
    out = eng.generate(['x' * 90], max_new_tokens=50, temperature=0)
    assert len(out[0]['token_ids']) == 96 - 90


def test_finish_cuts_at_stop_strings_and_eos(byte_tok):
    eng = sft.Engine(_tiny_model(), byte_tok)
    ids = byte_tok.encode(' 4 </think> <answer> 4 </answer> junk </answer>')
    r = eng._finish(0, ids, 100, 0, ['</answer>'], True)
    assert r['text'] == ' 4 </think> <answer> 4 </answer>' and r['finish_reason'] == 'stop'
    assert byte_tok.decode(r['token_ids']) == r['text']
    r = eng._finish(0, ids, 100, 0, ['</answer>'], False)
    assert r['text'] == ' 4 </think> <answer> 4 '
    r = eng._finish(0, ids, 100, 35, ['</answer>'], True)  # min_tokens: the first stop is too early
    assert r['text'].endswith('junk </answer>')
    r = eng._finish(0, ids[:5] + [byte_tok.eot_id] + ids[5:], 100, 0, [], True)
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
    eng = sft.Engine(m, byte_tok, batch_size=32)
    ev = lambda step: sft.evaluate(eng, val, max_new_tokens=40, n_entropy=8)  # noqa: E731
    out = tmp_path_factory.mktemp('sft')
    hist = sft.train_sft(m, byte_tok, _copy_task(400, seed=1), max_iters=120, batch_size=16,
                         gradient_accumulation_steps=2, learning_rate=3e-3, eval_fn=ev, eval_interval=60,
                         out_dir=str(out), quiet=True, ckpt_extra={'tokenizer': 'bytes'})
    before = sft.evaluate(sft.Engine(_tiny_model(seed=1, d_model=64, num_layers=2, num_heads=4), byte_tok), val,
                          max_new_tokens=40, log_path=str(out / 'gens.jsonl'))
    return m, hist, before, out


def test_tiny_sft_learns(trained):
    m, hist, before, out = trained
    losses = [l for _, l in hist['loss']]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, (losses[:5], losses[-10:])
    after = hist['evals'][-1]
    assert before['accuracy'] == 0.0 and before['format_rate'] == 0.0
    assert after['format_rate'] >= 0.9 and after['accuracy'] >= 0.5, after
    assert (out / 'ckpt.pt').exists() and (out / 'sft_curves.png').exists()
    logged = sft.read_jsonl(str(out / 'gens.jsonl'))
    assert len(logged) == 25 and {'prompt', 'response', 'ground_truth', 'reward', 'format_reward'} <= set(logged[0])
    # the checkpoint reloads (train.py's format) to the same greedy outputs
    m2, tok2 = sft.load_policy(str(out / 'ckpt.pt'))
    p = [sft.format_prompt(TEMPLATE, '1+2')]
    assert sft.Engine(m2, tok2).generate(p, 20, temperature=0) == sft.Engine(m, tok2).generate(p, 20, temperature=0)


def test_stop_strings_on_trained_model(trained, byte_tok):
    m = trained[0]
    eng = sft.Engine(m, byte_tok, check_every=3)
    p = [sft.format_prompt(TEMPLATE, '2+2')]
    free = eng.generate(p, max_new_tokens=60, temperature=0)[0]
    stopped = eng.generate(p, max_new_tokens=60, temperature=0, stop=['</answer>'])[0]
    assert stopped['finish_reason'] == 'stop' and stopped['text'].endswith('</answer>')
    assert free['text'].startswith(stopped['text']) and len(free['text']) > len(stopped['text'])
    assert byte_tok.decode(stopped['token_ids']) == stopped['text']
    late = eng.generate(p, max_new_tokens=60, temperature=0, stop=['</answer>'],
                        min_tokens=len(stopped['token_ids']) + 1)
    assert len(late[0]['token_ids']) > len(stopped['token_ids'])


def test_expert_iteration_keeps_correct_rollouts(trained, byte_tok, tmp_path):
    import copy
    m = copy.deepcopy(trained[0])
    qs = [{'prompt': x['prompt'], 'ground_truth': x['ground_truth']} for x in _copy_task(12, seed=7)]
    seen = []
    recs = sft.expert_iteration(m, byte_tok, qs, n_steps=1, questions_per_step=6, rollouts=3, temperature=1.0,
                                max_new_tokens=40, eval_fn=lambda s: seen.append(s) or {
                                    'accuracy': 0.5, 'format_rate': 1.0, 'mean_len': 1.0, 'mean_entropy': 0.0},
                                sft_kwargs=dict(batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4),
                                out_dir=str(tmp_path), log=lambda msg: None)
    r = recs[0]
    assert r['rollouts'] == 18 and 0 < r['kept'] <= 18 and r['sft_steps'] == -(-r['kept'] // 4)
    assert seen == [r['sft_steps']] and r['eval_accuracy'] == 0.5
    assert len(sft.read_jsonl(str(tmp_path / 'ei_steps.jsonl'))) == 1


def test_sft_resume_and_over_long_examples(byte_tok, tmp_path):
    m = _tiny_model()
    ex = _copy_task(20, 0) + [{'prompt': 'x' * 200, 'response': 'y'}]  # one example longer than the context
    hist = sft.train_sft(m, byte_tok, ex, max_iters=3, batch_size=4, gradient_accumulation_steps=2,
                         out_dir=str(tmp_path), quiet=True)
    assert hist['steps'] == 3
    ck = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    hist2 = sft.train_sft(m, byte_tok, ex, max_iters=5, batch_size=4, gradient_accumulation_steps=2, resume=ck,
                          quiet=True)
    assert hist2['steps'] == 5 and [s for s, _ in hist2['loss']] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match='empty response'):
        sft.train_sft(m, byte_tok, [{'prompt': 'a', 'response': ''}], max_iters=1, quiet=True)


# ---------------------------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------------------------

def test_dpo_loss_hand_computation():
    beta = 0.5
    loss = sft.dpo_loss(torch.tensor(-3.0), torch.tensor(-5.0), torch.tensor(-4.0), torch.tensor(-4.5), beta)
    # beta * ((-3 - -4) - (-5 - -4.5)) = 0.5 * (1 + 0.5) = 0.75 -> -log sigmoid(0.75)
    assert abs(loss.item() - math.log(1 + math.exp(-0.75))) < 1e-6


def test_per_instance_dpo_loss_matches_manual_log_probs():
    pol, ref = LookupLM(), LookupLM()
    with torch.no_grad():
        ref.table.mul_(0.5)
    tok = CharTok()

    def seq_lp(model, prompt, resp):  # sum over response tokens of log p(token | previous token)
        ids = tok.encode(prompt + resp)
        return sum(torch.log_softmax(model.table[ids[i - 1]], 0)[ids[i]] for i in range(len(prompt), len(ids)))
    loss = sft.compute_per_instance_dpo_loss(pol, ref, tok, 0.1, 'ab', 'cd', 'dc')
    z = 0.1 * ((seq_lp(pol, 'ab', 'cd') - seq_lp(ref, 'ab', 'cd')) -
               (seq_lp(pol, 'ab', 'dc') - seq_lp(ref, 'ab', 'dc')))
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(z), atol=1e-5)


def test_dpo_training_prefers_chosen(byte_tok):
    m, ref = _tiny_model(seed=3), _tiny_model(seed=3)
    pairs = [{'prompt': 'Q: 1\nA:', 'chosen': ' yes', 'rejected': ' no!'}] * 4
    hist = sft.train_dpo(m, ref, byte_tok, pairs, beta=0.5, max_iters=15, batch_size=4, gradient_accumulation_steps=1,
                         learning_rate=3e-3, log_interval=100)
    assert hist['loss'][-1][1] < 0.5 * hist['loss'][0][1] and hist['pref_accuracy'][-1][1] == 1.0
    with pytest.raises(ValueError, match='empty chosen or rejected'):
        sft.train_dpo(m, ref, byte_tok, [{'prompt': 'a', 'chosen': '', 'rejected': 'b'}], max_iters=1)


# ---------------------------------------------------------------------------------------------------------------
# the demo pipeline end to end, at a toy size (the real presets are run by hand: see results/sft.md)
# ---------------------------------------------------------------------------------------------------------------

def test_demo_pipeline_runs(tmp_path, monkeypatch):
    tiny = dict(model=dict(d_model=32, num_layers=1, num_heads=2, context_length=1024),
                template='User: {question}\nAssistant: <think>', task=dict(min_steps=1, max_steps=1, max_number=9),
                n_train=300, n_val=10,
                pretrain=dict(max_iters=5, batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-3),
                sft_examples=32, sft=dict(max_iters=6, batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3),
                ei=dict(n_steps=2, questions_per_step=4, rollouts=2), ei_lr=3e-4, gsm8k_n=2, gen_batch_size=16,
                max_new_tokens=16)
    monkeypatch.setitem(sft.DEMO_PRESETS, 'tiny', tiny)
    # an untrained model is never right: accept every rollout so that the EI and matched-SFT branches both train
    orig = sft.expert_iteration
    always = lambda r, gt: {'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}  # noqa: E731
    monkeypatch.setattr(sft, 'expert_iteration', lambda *a, **k: orig(*a, **{**k, 'reward_fn': always}))
    res = sft.run_demo('tiny', out_dir=str(tmp_path / 'out'), results_dir=str(tmp_path / 'res'))
    assert {'base', 'sft', 'ei', 'sft_more'} <= set(res)
    md = (tmp_path / 'res' / 'sft_demo_tiny.md').read_text()
    assert '| SFT + 2 more SFT steps on the same traces | 8 |' in md and 'expert iteration (2 rounds' in md
    assert (tmp_path / 'res' / 'sft_demo_tiny.png').exists()
    assert (tmp_path / 'out' / 'sft.pt').exists() and (tmp_path / 'out' / 'ei_steps.jsonl').exists()

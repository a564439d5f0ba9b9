"""
Tests of grpo.py: every piece on hand-computed values (group-normalized advantages with the unbiased std, the
policy-gradient losses, clipping, masked_mean's NaN on empty masks, gradient accumulation that never zeroes),
dispatch and input errors, tiny end-to-end GRPO runs (reward rises, same seed = same run, off-policy + KL,
checkpoint), the command line's refusals of bad input (issue 32), and bench/grpo.py's demo and lr sweep at toy size.

    python -m pytest tests/test_grpo.py -v
"""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

import grpo
import sft


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny matmuls are faster on one thread of a shared 2-core machine; give the setting back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def scalar_reward(response, ground_truth):
    """reward_fn for the hand cases: the 'response' is the reward itself."""
    return {'reward': float(response), 'format_reward': 1.0, 'answer_reward': float(response)}


# ---------------------------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------------------------

def test_group_normalized_rewards_hand_case():
    adv, raw, meta = grpo.compute_group_normalized_rewards(scalar_reward, [0.2, 0.5, 0.0, 0.4], ['x'] * 4, 4,
                                                           advantage_eps=1e-6, normalize_by_std=True)
    # mean 0.275; unbiased std = sqrt(((-.075)^2 + .225^2 + .275^2 + .125^2) / 3) = 0.221736
    assert adv[0].item() == pytest.approx(-0.075 / (0.2217355 + 1e-6), abs=1e-5)
    assert adv[0].item() == pytest.approx(-0.33824, abs=1e-5)
    assert torch.allclose(raw, torch.tensor([0.2, 0.5, 0.0, 0.4]))
    assert meta['reward_mean'] == pytest.approx(0.275) and meta['reward_max'] == pytest.approx(0.5)
    assert meta['reward_min'] == 0.0 and meta['frac_groups_all_same'] == 0.0


def test_group_normalized_rewards_groups_and_no_std():
    # two groups of 2: [1, 0] and [1, 1]; without std: r - group mean
    adv, raw, meta = grpo.compute_group_normalized_rewards(scalar_reward, [1, 0, 1, 1], ['a'] * 4, 2, 1e-6, False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert meta['frac_groups_all_same'] == 0.5
    # with std (unbiased std of [1, 0] = 0.7071): +-0.5 / 0.7071; the all-equal group stays at 0 (std 0 + eps)
    adv, _, _ = grpo.compute_group_normalized_rewards(scalar_reward, [1, 0, 1, 1], ['a'] * 4, 2, 1e-6, True)
    assert adv[0].item() == pytest.approx(0.5 / math.sqrt(0.5), rel=1e-5) and adv[2].item() == 0.0


def test_group_normalized_rewards_bad_input():
    with pytest.raises(ValueError, match='must divide'):
        grpo.compute_group_normalized_rewards(scalar_reward, [1, 0, 1], ['a'] * 3, 2, 1e-6, True)
    with pytest.raises(ValueError, match='ground truths'):
        grpo.compute_group_normalized_rewards(scalar_reward, [1, 0], ['a'] * 3, 2, 1e-6, True)
    with pytest.raises(ValueError, match='group_size >= 2'):
        grpo.compute_group_normalized_rewards(scalar_reward, [1, 0], ['a'] * 2, 1, 1e-6, True)


# ---------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------

LP = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]])
OLD = torch.tensor([[-1.5, -2.0], [-0.5, -0.5]])
ADV = torch.tensor([[1.0], [-1.0]])


def test_naive_policy_gradient_loss_hand_case():
    loss = grpo.compute_naive_policy_gradient_loss(ADV, LP)
    assert torch.equal(loss, torch.tensor([[1.0, 2.0], [-0.5, -0.1]]))
    # (B,) advantages are accepted; a wrong batch size is an error naming both shapes
    assert torch.equal(grpo.compute_naive_policy_gradient_loss(ADV[:, 0], LP), loss)
    with pytest.raises(ValueError, match=r'expected \(2, 1\)'):
        grpo.compute_naive_policy_gradient_loss(torch.ones(3, 1), LP)


def test_grpo_clip_loss_hand_case():
    loss, meta = grpo.compute_grpo_clip_loss(ADV, LP, OLD, cliprange=0.2)
    r00, r11 = math.exp(0.5), math.exp(0.4)  # the two ratios that moved
    # row 0, A = +1: ratio e^0.5 = 1.65 > 1.2 -> clipped at 1.2; token 1 ratio 1 -> -1
    # row 1, A = -1: ratio 1 -> +1; ratio e^0.4 = 1.49: min(-1.49, -1.2) = -1.49 -> loss +1.49 (not clipped)
    expect = torch.tensor([[-1.2, -1.0], [1.0, r11]])
    assert torch.allclose(loss, expect, atol=1e-6)
    assert meta['clipped'].tolist() == [[True, False], [False, False]]
    assert meta['ratio'][0, 0].item() == pytest.approx(r00)
    with pytest.raises(ValueError, match='same shape'):
        grpo.compute_grpo_clip_loss(ADV, LP, OLD[:, :1], 0.2)


def test_policy_gradient_loss_dispatch():
    raw = torch.tensor([[2.0], [0.0]])
    f = grpo.compute_policy_gradient_loss
    assert torch.equal(f(LP, 'no_baseline', raw_rewards=raw)[0], -raw * LP)
    assert torch.equal(f(LP, 'reinforce_with_baseline', advantages=ADV)[0], -ADV * LP)
    clip, meta = f(LP, 'grpo_clip', advantages=ADV, old_log_probs=OLD, cliprange=0.2)
    assert torch.allclose(clip, grpo.compute_grpo_clip_loss(ADV, LP, OLD, 0.2)[0]) and 'clipped' in meta
    noclip, _ = f(LP, 'grpo_no_clip', advantages=ADV, old_log_probs=OLD)
    assert torch.allclose(noclip, -torch.exp(LP - OLD) * ADV)
    with pytest.raises(ValueError, match='needs raw_rewards'):
        f(LP, 'no_baseline', advantages=ADV)
    with pytest.raises(ValueError, match='needs advantages'):
        f(LP, 'reinforce_with_baseline', raw_rewards=raw)
    with pytest.raises(ValueError, match='needs old_log_probs, cliprange'):
        f(LP, 'grpo_clip', advantages=ADV)
    with pytest.raises(ValueError, match='unknown loss_type'):
        f(LP, 'ppo', advantages=ADV)


# ---------------------------------------------------------------------------------------------------------------
# masked_mean and the micro-batch step
# ---------------------------------------------------------------------------------------------------------------

def test_masked_mean_hand_and_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    assert grpo.masked_mean(x, m).item() == pytest.approx(1.5)
    row = grpo.masked_mean(x, m, dim=1)
    assert row[0].item() == pytest.approx(1.5) and math.isnan(row[1].item())  # empty row: 0/0, not 0
    col = grpo.masked_mean(x, m, dim=0)
    assert col[:2].tolist() == [1.0, 2.0] and math.isnan(col[2].item())
    assert math.isnan(grpo.masked_mean(x, torch.zeros_like(m)).item())
    with pytest.raises(ValueError, match='same shape'):
        grpo.masked_mean(x, m[:, :2])


def test_microbatch_step_hand_value_and_accumulates():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([[1.0], [-2.0]])
    lp = torch.tensor([[-1.0, -3.0, -9.0], [-2.0, -7.0, -7.0]], requires_grad=True)
    loss, _ = grpo.grpo_microbatch_train_step(lp, mask, 2, 'reinforce_with_baseline', advantages=adv)
    # per sequence: mean(1, 3) = 2 and mean(-4) = -4 -> batch mean -1 -> / 2 accumulation steps = -0.5
    assert loss.item() == pytest.approx(-0.5)
    g1 = lp.grad.clone()
    assert torch.allclose(g1, torch.tensor([[-0.125, -0.125, 0.0], [0.5, 0.0, 0.0]]))
    grpo.grpo_microbatch_train_step(lp, mask, 2, 'reinforce_with_baseline', advantages=adv)
    assert torch.allclose(lp.grad, 2 * g1)  # accumulated, never zeroed
    # Dr. GRPO: sum / a constant (4): (-1*(-4) + 2*(-2)) ... per sequence: -(1*(-1-3))/4 = 1, -(-2*-2)/4 = -1
    lp.grad = None
    loss, _ = grpo.grpo_microbatch_train_step(lp, mask, 1, 'reinforce_with_baseline', advantages=adv,
                                              length_normalization='masked_normalize', normalize_constant=4)
    assert loss.item() == pytest.approx(0.0)
    assert torch.allclose(lp.grad, torch.tensor([[-0.125, -0.125, 0.0], [0.25, 0.0, 0.0]]))


def test_microbatch_step_clip_metadata_kl_and_errors():
    mask = torch.tensor([[1, 1], [1, 1]], dtype=torch.bool)
    lp = LP.clone().requires_grad_(True)
    _, meta = grpo.grpo_microbatch_train_step(lp, mask, 1, 'grpo_clip', advantages=ADV, old_log_probs=OLD,
                                              cliprange=0.2)
    assert meta['clip_fraction'].item() == pytest.approx(0.25)
    assert lp.grad[0, 0].item() == 0.0  # the clipped token has no gradient
    # KL to a reference equal to the policy is 0 and changes nothing
    a = LP.clone().requires_grad_(True)
    la, _ = grpo.grpo_microbatch_train_step(a, mask, 1, 'reinforce_with_baseline', advantages=ADV)
    b = LP.clone().requires_grad_(True)
    lb, mb = grpo.grpo_microbatch_train_step(b, mask, 1, 'reinforce_with_baseline', advantages=ADV,
                                             ref_log_probs=LP.clone(), kl_beta=0.5)
    assert lb.item() == pytest.approx(la.item()) and mb['kl'].item() == 0.0 and torch.allclose(a.grad, b.grad)
    with pytest.raises(ValueError, match='same shape'):
        grpo.grpo_microbatch_train_step(LP.clone().requires_grad_(True), mask[:, :1], 1, 'no_baseline',
                                        raw_rewards=ADV)
    with pytest.raises(ValueError, match='normalize_constant'):
        grpo.grpo_microbatch_train_step(LP.clone().requires_grad_(True), mask, 1, 'no_baseline', raw_rewards=ADV,
                                        length_normalization='masked_normalize')
    with pytest.raises(ValueError, match='unknown length_normalization'):
        grpo.grpo_microbatch_train_step(LP.clone().requires_grad_(True), mask, 1, 'no_baseline', raw_rewards=ADV,
                                        length_normalization='sum')
    with pytest.raises(ValueError, match='needs ref_log_probs'):
        grpo.grpo_microbatch_train_step(LP.clone().requires_grad_(True), mask, 1, 'no_baseline', raw_rewards=ADV,
                                        kl_beta=0.1)


def test_response_tensors_put_back_end_of_text():
    outs = [{'token_ids': [5, 6], 'finish_reason': 'eos'}, {'token_ids': [7], 'finish_reason': 'stop'},
            {'token_ids': [], 'finish_reason': 'eos'}]
    inp, lab, mask = grpo.response_tensors([[1, 2], [1], [3]], outs, pad=0, eos_id=9)
    assert lab[0].tolist() == [2, 5, 6, 9] and mask[0].tolist() == [False, True, True, True]
    assert mask[1].tolist() == [True, False, False, False] and mask[2].sum() == 1  # never an empty response


# ---------------------------------------------------------------------------------------------------------------
# the train loop on a trivial task
# ---------------------------------------------------------------------------------------------------------------

def ascii_reward(response, ground_truth):
    """A trivial verifiable reward: the fraction of ASCII characters in the response (about 1/2 for a random
    byte-level policy). GRPO must push it up."""
    r = sum(ord(c) < 128 for c in response) / max(1, len(response))
    return {'reward': r, 'format_reward': 1.0, 'answer_reward': r}


def tiny_policy(seed=0):
    from model import TransformerLM
    torch.manual_seed(seed)
    return TransformerLM(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2).eval()


TINY = dict(n_grpo_steps=12, rollout_batch_size=32, group_size=8, train_batch_size=32, gradient_accumulation_steps=2,
            learning_rate=3e-2, sampling_max_tokens=8, sampling_min_tokens=8, eval_interval=-1, seed=3,
            device='cpu', gen_batch_size=64)
QUESTIONS = [{'prompt': f'q{i}:', 'ground_truth': ''} for i in range(16)]


def test_tiny_grpo_raises_reward_and_is_deterministic():
    tok = sft.byte_tokenizer()
    h = grpo.train_grpo(tiny_policy(), tok, QUESTIONS, [], TINY, reward_fn=ascii_reward, log=lambda m: None)
    rewards = [r['train_reward'] for r in h['log']]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    assert all(math.isfinite(r['loss']) and r['grad_norm'] > 0 for r in h['log'])
    # same seed, same run (rollouts, shuffles and updates are all seeded)
    h2 = grpo.train_grpo(tiny_policy(), tok, QUESTIONS, [], {**TINY, 'n_grpo_steps': 3}, reward_fn=ascii_reward,
                         log=lambda m: None)
    for a, b in zip(h['log'][:3], h2['log']):
        assert a['train_reward'] == b['train_reward'] and a['loss'] == pytest.approx(b['loss'], abs=1e-7)


def test_lr_warmup():
    assert [grpo.grpo_lr(i, 1e-4, 4) for i in range(6)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert grpo.grpo_lr(0, 1e-4, 0) == 1e-4
    # the loop uses it: the first step's update is a quarter of the un-warmed one (Adam's first step is ~ +-lr)
    tok = sft.byte_tokenizer()
    moved = []
    for w in (0, 4):
        p0 = tiny_policy()
        before = [p.detach().clone() for p in p0.parameters()]
        h = grpo.train_grpo(p0, tok, QUESTIONS, [], {**TINY, 'n_grpo_steps': 1, 'gradient_accumulation_steps': 1,
                                                     'warmup_steps': w}, reward_fn=ascii_reward, log=lambda m: None)
        assert h['log'][0]['lr'] == pytest.approx(grpo.grpo_lr(0, TINY['learning_rate'], w))
        moved.append(max((p.detach() - b).abs().max().item() for p, b in zip(p0.parameters(), before)))
    assert moved[1] == pytest.approx(moved[0] / 4, rel=0.05), moved


def test_off_policy_clip_with_kl_and_checkpoint(tmp_path):
    tok = sft.byte_tokenizer()
    cfg = {**TINY, 'n_grpo_steps': 2, 'loss_type': 'grpo_clip', 'epochs_per_rollout_batch': 2,
           'train_batch_size': 16, 'gradient_accumulation_steps': 2, 'kl_beta': 0.1, 'eval_interval': 1}
    val = [{'prompt': 'v:', 'ground_truth': ''}] * 2
    out = str(tmp_path / 'run')
    h = grpo.train_grpo(tiny_policy(), tok, QUESTIONS, val, cfg, reward_fn=ascii_reward, out_dir=out,
                        log=lambda m: None)
    rec = h['log'][0]
    assert rec['optimizer_steps'] == 4  # 2 epochs x (32 / 16) optimizer steps per rollout batch
    assert 0.0 <= rec['clip_fraction'] <= 1.0 and rec['kl'] >= 0.0
    assert [e['step'] for e in h['evals']] == [0, 1, 2] and all('ci95' in e for e in h['evals'])
    logged = sft.read_jsonl(str(tmp_path / 'run' / 'grpo_log.jsonl'))
    assert [r['step'] for r in logged] == [1, 2, 0, 1, 2]  # the GRPO steps, then the validations
    policy, _ = sft.load_policy(str(tmp_path / 'run' / 'ckpt.pt'), 'cpu')  # the checkpoint reloads
    assert sft.generate(policy, tok, ['q:'], 4, stop=()) and (tmp_path / 'run' / 'grpo_val_step2.jsonl').exists()


def test_train_config_errors():
    tok = sft.byte_tokenizer()
    for bad, msg in (({'rollout_batch_size': 30}, 'divisible by group_size'),
                     ({'gradient_accumulation_steps': 3}, 'divisible by gradient_accumulation_steps'),
                     ({'train_batch_size': 4, 'gradient_accumulation_steps': 1}, 'must be >= group_size'),
                     ({'loss_type': 'ppo'}, 'loss_type'), ({'lr': 1.0}, 'unknown config key'),
                     ({'group_size': 1, 'rollout_batch_size': 32, 'train_batch_size': 32}, 'use_std_normalization')):
        with pytest.raises(ValueError, match=msg):
            grpo.train_grpo(tiny_policy(), tok, QUESTIONS, [], {**TINY, **bad}, ascii_reward)
    with pytest.raises(ValueError, match='no training questions'):
        grpo.train_grpo(tiny_policy(), tok, [], [], TINY, ascii_reward)


# ---------------------------------------------------------------------------------------------------------------
# the command line: bad input is refused in one line, with nothing written
# ---------------------------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('grpo_cli')
    sft.save_ckpt(str(d / 'model.pt'), tiny_policy())
    sft.write_jsonl(str(d / 'train.jsonl'), [{'question': f'{i}+1', 'answer': str(i + 1)} for i in range(8)])
    (d / 'bad.jsonl').write_text('{"question": "1+1", "answer": "2"}\n{"q": 1}\n')
    return d


BAD = [(['--group_size=3'], 'rollout_batch_size'), (['--loss_type=ppo'], 'loss_type'),
       (['--learning_rate=0'], 'learning_rate'), (['--train_path=nope.jsonl'], 'train_path'),
       (['--train_path={d}/bad.jsonl'], 'record 2'), (['--init_from={d}/train.jsonl'], 'not a readable'),
       (['--eval_n=0'], 'eval_n'), (['--out_dir={d}/has_ckpt'], 'exists'),
       ([], 'no room'),  # the default r1_zero prompt is longer than the tiny model's 32-token context
       (['--val_path={d}/empty.jsonl'], 'empty.jsonl: no problems'),  # not a run without validation
       (['--train_path={d}/empty.jsonl'], 'empty.jsonl: no problems'), (['--device=gpu'], "--device='gpu' must be")]


@pytest.mark.parametrize('args,word', BAD)
def test_cli_refuses_bad_input(cli_files, tmp_path, args, word):
    d = cli_files
    os.makedirs(d / 'has_ckpt', exist_ok=True)
    (d / 'has_ckpt' / 'ckpt.pt').write_bytes(b'keep')
    (d / 'empty.jsonl').write_text('')
    base = [f'--init_from={d}/model.pt', f'--train_path={d}/train.jsonl', '--device=cpu', f'--out_dir={tmp_path}/o',
            '--rollout_batch_size=8', '--group_size=4', '--train_batch_size=8', '--gradient_accumulation_steps=1',
            '--sampling_max_tokens=4']
    before = sorted((p, os.path.getmtime(d / p)) for p in os.listdir(d))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'grpo.py'), *base, *[a.format(d=d) for a in args]],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert lines[0].startswith('grpo.py: error:') and word in lines[0], lines[0]
    assert not os.path.exists(tmp_path / 'o') and (d / 'has_ckpt' / 'ckpt.pt').read_bytes() == b'keep'
    assert before == sorted((p, os.path.getmtime(d / p)) for p in os.listdir(d))


def test_cli_trains_and_writes_its_outputs(cli_files, tmp_path):
    d = cli_files
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'grpo.py'), f'--init_from={d}/model.pt', '--device=cpu',
                        f'--train_path={d}/train.jsonl', f'--val_path={d}/train.jsonl', '--prompt_template={question}',
                        f'--out_dir={tmp_path}/o', '--n_grpo_steps=2', '--rollout_batch_size=8', '--group_size=4',
                        '--train_batch_size=8', '--gradient_accumulation_steps=1', '--sampling_max_tokens=4',
                        '--eval_interval=1', '--eval_n=4'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'done: 2 GRPO steps' in r.stdout and (tmp_path / 'o' / 'ckpt.pt').exists()
    logged = sft.read_jsonl(str(tmp_path / 'o' / 'grpo_log.jsonl'))
    assert [x['step'] for x in logged] == [1, 2, 0, 1, 2] and logged[-1]['n'] == 4


# ---------------------------------------------------------------------------------------------------------------
# bench/grpo.py: the demo (lr chosen on validation, test once) and the ablations, end to end at a toy size
# ---------------------------------------------------------------------------------------------------------------

def test_demo_pipeline_runs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location('bench_grpo', os.path.join(ROOT, 'bench', 'grpo.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = dict(base=dict(model=dict(d_model=32, num_layers=1, num_heads=2, context_length=256),
                          template=bench.SHORT_TEMPLATE, task=dict(min_steps=1, max_steps=1, max_number=9),
                          n_train=200, n_val=8, n_test=8, fewshot=0, gen_batch_size=64, max_new_tokens=12,
                          pretrain=dict(max_iters=3, batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-3),
                          sft_examples=16, sft=dict(max_iters=2, batch_size=8, gradient_accumulation_steps=1,
                                                    learning_rate=1e-3)),
                sft_chunk=1, sft_max_chunks=1, sft_target=0.5, sft_target_sampled=0.5, probe_n=8, lrs=(1e-3, 1e-4),
                main=dict(n_grpo_steps=2, rollout_batch_size=8, group_size=4, train_batch_size=8,
                          gradient_accumulation_steps=1, sampling_max_tokens=12, eval_interval=1, eval_n=-1,
                          gen_batch_size=64),
                ablation=dict(n_grpo_steps=1, rollout_batch_size=8, group_size=4, train_batch_size=8,
                              gradient_accumulation_steps=1, learning_rate=1e-3, sampling_max_tokens=12,
                              eval_interval=-1, eval_n=-1, gen_batch_size=64))
    monkeypatch.setitem(bench.GRPO_PRESETS, 'tiny', tiny)
    res = bench.run_demo('tiny', out_dir=str(tmp_path / 'out'), results_dir=str(tmp_path / 'res'))
    assert len(res['ablations']) == 6 and res['h_main']['steps'] == 2 and res['lr'] in (1e-3, 1e-4)
    assert res['test']['n'] == 8 and 'ci95' in res['test']
    md = (tmp_path / 'res' / 'grpo_demo_tiny.md').read_text()
    assert '(chosen)' in md and '| SFT + GRPO (lr' in md and 'off-policy: grpo_clip' in md
    assert (tmp_path / 'res' / 'grpo_demo_tiny_curves.png').exists()

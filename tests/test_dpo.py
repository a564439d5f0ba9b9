"""
Tests of dpo.py: the packed SFT dataset and iterate_batches on a hand-checkable corpus, the DPO loss against a hand
computation and against log-probs summed by hand (Alpaca template + end-of-text), a tiny DPO run that learns the
preference, and the command line's one-line refusals.

    python -m pytest tests/test_dpo.py -v
"""
import math
import os
import subprocess
import sys

import pytest
import torch

import dpo
import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Bigram(torch.nn.Module):
    """logits at position t depend only on token t (a table): log-probs are easy to sum by hand."""

    def __init__(self, V=257, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(V, V, generator=g) * scale)

    def forward(self, idx):
        return self.table[idx]


def test_alpaca_template_is_the_course_file(data_dir):
    assert open(f'{data_dir}/a5/prompts/alpaca_sft.prompt').read() == dpo.ALPACA_TEMPLATE + '\n'  # its last line end
    assert dpo.alpaca('Say hi', 'hi').endswith('### Response:\nhi')  # end-of-text comes right after the response


def test_packed_dataset_and_batches(tmp_path):
    tok = sft.byte_tokenizer()
    p = tmp_path / 'sft.jsonl'
    sft.write_jsonl(str(p), [{'prompt': 'Say hi', 'response': 'hi'}, {'prompt': 'Say yo', 'response': 'yo'}])
    ds = dpo.PackedSFTDataset(tok, str(p), seq_length=16, shuffle=False)
    stream = tok.encode(dpo.alpaca('Say hi', 'hi')) + [256] + tok.encode(dpo.alpaca('Say yo', 'yo')) + [256]
    assert len(ds) == (len(stream) - 1) // 16
    for i in range(len(ds)):
        item = ds[i]
        assert item['input_ids'].tolist() == stream[i * 16:(i + 1) * 16]  # windows of the concatenated documents
        assert item['labels'].tolist() == stream[i * 16 + 1:(i + 1) * 16 + 1]  # shifted by one
    assert 256 in torch.cat([ds[i]['input_ids'] for i in range(len(ds))]).tolist()  # end-of-text between documents
    batches = list(dpo.iterate_batches(ds, batch_size=3, shuffle=False))
    assert batches[0]['input_ids'].shape == (3, 16) and sum(len(b['input_ids']) for b in batches) == len(ds)
    shuffled = torch.cat([b['input_ids'] for b in dpo.iterate_batches(ds, 3, True)])
    assert sorted(map(tuple, shuffled.tolist())) == sorted(tuple(ds[i]['input_ids'].tolist()) for i in range(len(ds)))


def test_dpo_loss_hand_computation():
    beta = 0.5
    loss = dpo.dpo_loss(torch.tensor(-3.0), torch.tensor(-5.0), torch.tensor(-4.0), torch.tensor(-4.5), beta)
    # beta * ((-3 - -4) - (-5 - -4.5)) = 0.5 * (1 + 0.5) = 0.75 -> -log sigmoid(0.75)
    assert abs(loss.item() - math.log(1 + math.exp(-0.75))) < 1e-6


def test_per_instance_dpo_loss_matches_log_probs_summed_by_hand():
    pol, ref, tok = Bigram(), Bigram(scale=0.5), sft.byte_tokenizer()

    def seq_lp(model, prompt, resp):  # sum over the response's tokens (and end-of-text) of log p(token | previous)
        prefix = tok.encode(dpo.alpaca(prompt, resp).rsplit(resp, 1)[0])  # the template up to the response
        ids = prefix + tok.encode(resp) + [tok.eot_id]
        return sum(torch.log_softmax(model.table[ids[i - 1]], 0)[ids[i]] for i in range(len(prefix), len(ids)))
    loss = dpo.compute_per_instance_dpo_loss(pol, ref, tok, 0.1, 'Say hi', 'hi there', 'go away')
    z = 0.1 * ((seq_lp(pol, 'Say hi', 'hi there') - seq_lp(ref, 'Say hi', 'hi there')) -
               (seq_lp(pol, 'Say hi', 'go away') - seq_lp(ref, 'Say hi', 'go away')))
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(z), atol=1e-5)
    loss.backward()
    assert ref.table.grad is None and pol.table.grad.abs().sum() > 0  # the reference stays frozen


def test_cli_trains(tmp_path):
    d = tmp_path
    from model import TransformerLM
    sft.save_ckpt(str(d / 'm.pt'), TransformerLM(vocab_size=257, context_length=256, d_model=16, num_layers=1,
                                                 num_heads=2))
    sft.write_jsonl(str(d / 'prefs.jsonl'), [{'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}] * 2)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'dpo.py'), f'--init_from={d}/m.pt', '--device=cpu',
                        f'--train_path={d}/prefs.jsonl', f'--out_dir={d}/o', '--max_iters=2', '--batch_size=2'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (d / 'o' / 'ckpt.pt').exists() and len(sft.read_jsonl(str(d / 'o' / 'dpo_log.jsonl'))) == 2


def test_dpo_training_prefers_chosen(tmp_path):
    from model import TransformerLM
    torch.manual_seed(3)
    m = TransformerLM(vocab_size=257, context_length=160, d_model=32, num_layers=1, num_heads=2)
    ref = TransformerLM(vocab_size=257, context_length=160, d_model=32, num_layers=1, num_heads=2)
    ref.load_state_dict(m.state_dict())
    tok = sft.byte_tokenizer()
    pairs = [{'prompt': 'Q: 1', 'chosen': 'yes', 'rejected': 'no!'}] * 4
    h = dpo.train_dpo(m, ref, tok, pairs, beta=0.5, max_iters=15, batch_size=4, learning_rate=3e-3, log_interval=100,
                      out_dir=str(tmp_path / 'o'))
    assert h['loss'][-1][1] < 0.5 * h['loss'][0][1] and h['pref_accuracy'][-1][1] == 1.0
    assert (tmp_path / 'o' / 'ckpt.pt').exists() and len(sft.read_jsonl(str(tmp_path / 'o' / 'dpo_log.jsonl'))) == 15
    with pytest.raises(ValueError, match='empty chosen or rejected'):
        dpo.train_dpo(m, ref, tok, [{'prompt': 'a', 'chosen': '', 'rejected': 'b'}], max_iters=1)


@pytest.mark.parametrize('args,word', [(['--beta=0'], 'beta'), (['--train_path=nope.jsonl'], 'train_path'),
                                       (['--train_path={d}/bad.jsonl'], "missing key(s) ['rejected']"),
                                       (['--out_dir={d}'], 'overwritten'), (['--init_from={d}/small.pt'], 'longer'),
                                       (['--train_path={d}/wide.jsonl'], 'pair 1 is longer'),
                                       (['--device=gpu'], "--device='gpu' must be cpu"),  # a typo
                                       (['--device=cuda'], "--device='cuda' must be cpu"),  # on a CPU machine
                                       (['--device=cuda:7'], "--device='cuda:7' must be cpu")])  # no such GPU
def test_cli_refuses_bad_input(tmp_path, args, word):
    if args[0].startswith('--device=cuda') and torch.cuda.device_count() > int(args[0][14:] or 0):
        pytest.skip(f'this machine has {args[0][9:]}')
    d = tmp_path / 'in'
    d.mkdir()
    from model import TransformerLM
    sft.save_ckpt(str(d / 'ckpt.pt'), TransformerLM(vocab_size=257, context_length=256, d_model=16, num_layers=1,
                                                    num_heads=2))
    sft.save_ckpt(str(d / 'small.pt'), TransformerLM(vocab_size=257, context_length=32, d_model=16, num_layers=1,
                                                     num_heads=2))  # the Alpaca template alone is longer than 32
    sft.write_jsonl(str(d / 'prefs.jsonl'), [{'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}])
    sft.write_jsonl(str(d / 'bad.jsonl'), [{'prompt': 'a', 'chosen': 'b'}])
    # the rejected response has fewer characters but more tokens ('é' is 2 bytes): 141 + 120 tokens > context 256
    sft.write_jsonl(str(d / 'wide.jsonl'), [{'prompt': 'a', 'chosen': 'x' * 110, 'rejected': 'é' * 60}])
    before = sorted((p, os.path.getmtime(d / p)) for p in os.listdir(d))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'dpo.py'), f'--init_from={d}/ckpt.pt',
                        f'--train_path={d}/prefs.jsonl', f'--out_dir={tmp_path}/o', '--device=cpu',
                        *[a.format(d=d) for a in args]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert lines[0].startswith('dpo.py: error:') and word in lines[0], lines[0]
    assert not os.path.exists(tmp_path / 'o') and before == sorted((p, os.path.getmtime(d / p)) for p in os.listdir(d))

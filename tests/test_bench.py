"""
Tests for bench/profile_model.py: every mode runs on the CPU with a tiny model and writes its table; the analytic
FLOP and memory counts match hand-computed values and what autograd really saves.
    python -m pytest tests/test_bench.py -v
"""
import importlib.util
import os

import pytest
import torch

import model as model_lib
from test_ddp import refused  # the bad-input check: exit code 2, one line, nothing written

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ is a folder of commands, not a package: load the file under a name of its own
_spec = importlib.util.spec_from_file_location('profile_model', os.path.join(ROOT, 'bench', 'profile_model.py'))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(autouse=True)
def tiny(tmp_path, monkeypatch):
    for k, v in dict(sizes='tiny', contexts='16', batch_size=2, vocab_size=64, warmup=1, steps=2, device='cpu',
                     memory_size='tiny', memory_contexts='16', attn_dims='16', attn_seqs='32', attn_batch=2,
                     attn_impls='naive,sdpa', out_dir=str(tmp_path), tag='auto').items():
        monkeypatch.setattr(bench, k, v)
    monkeypatch.setattr(model_lib, 'scaled_dot_product_attention', model_lib.scaled_dot_product_attention)
    return tmp_path


@pytest.mark.parametrize('mode', ['timing', 'precision', 'profile', 'memory', 'attention'])
def test_mode_writes_table(mode, tiny):
    bench.MODES[mode]()
    name = {'precision': 'autocast_dtypes'}.get(mode, mode)
    text = open(os.path.join(tiny, f"{name}_cpu.md")).read()  # '_cpu': a CPU run never replaces the GPU's table
    assert text.startswith('## ') and ('|' in text or '```' in text)


def test_compile_mode(tiny, monkeypatch):
    compile_ = torch.compile  # the eager backend: exercises the mode without a C++ build on the CPU
    monkeypatch.setattr(torch, 'compile', lambda m, **kw: compile_(m, backend='eager'))
    bench.run_compile()
    rows = [l for l in open(os.path.join(tiny, 'compile_cpu.md')) if l.startswith('| tiny')]
    assert len(rows) == 1 and 'OOM' not in rows[0]


def test_accumulation_demo_shows_fp16_error():
    res = dict(bench.accumulation_demo())
    assert abs(res['fp32 sum += fp32 0.01'] - 10) < 1e-3
    assert abs(res['fp16 sum += fp16 0.01'] - 10) > 0.01  # fp16 accumulation drifts (9.95 in the course)


def test_autocast_dtypes():
    got = dict(bench.autocast_dtypes('cpu'))
    assert got['parameters'] == 'float32' and got['gradients'] == 'float32'
    assert got['linear output (output_proj)'] == 'bfloat16'
    assert got['loss'] == 'float32'


def test_analytic_memory_by_hand():
    # d=4, f=8, 1 layer, 2 heads, B=1, T=2, V=3
    est = bench.analytic_memory(4, 8, 1, 2, 1, 2, 3)
    P = (4 * 16 + 3 * 4 * 8 + 2 * 4) + 4 + 2 * 3 * 4  # attn 4d^2, swiglu 3df, two norms; ln_final; emb + lm_head
    assert est['n_params'] == P == 196
    per_layer = 10 * 2 * 4 + 5 * 2 * 8 + 3 * 2 * 4  # BTd, BTf, BhT^2
    assert est['activations'] == 4 * (per_layer + 3 * 2 * 4 + 2 * 2 * 3) + 8 * 2 + 4
    assert est['residual_stream'] == 4 * 2 * 4
    assert est['peak'] >= est['params'] + est['optimizer_state']


def test_analytic_activations_match_saved_tensors():
    m = bench.build_model('tiny', 32, 'reference', 'cpu', 64)
    x, y = bench.random_batch(2, 32, 64, 'cpu')
    saved = bench.measure_saved_tensors(m, x, y)
    d, f, L, H = (model_lib.MODEL_SIZES['tiny'][k] for k in ('d_model', 'd_ff', 'num_layers', 'num_heads'))
    est = bench.analytic_memory(d, f, L, H, 2, 32, 64)
    assert abs(saved / est['activations'] - 1) < 0.02, (saved, est['activations'])


def test_flops_by_hand():
    cfg = model_lib.ModelConfig(vocab_size=3, context_length=2, d_model=4, num_layers=1, num_heads=2, d_ff=8)
    n = 4 * 16 + 3 * 4 * 8 + 2 * 4 + 4 + 3 * 4  # non-embedding parameters (lm_head counted)
    assert model_lib.count_parameters(cfg) == n
    assert model_lib.flops_per_token(cfg) == 6 * n + 12 * 1 * 4 * 2


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match='unknown size'):
        bench.build_model('huge', 16)


# -----------------------------------------------------------------------------
# Bad input (issue 32): refused at startup with one line naming the key, exit code 2, nothing written

@pytest.mark.parametrize('arg,key', [('--mode=nope', 'mode'), ('--sizes=huge', 'sizes'), ('--contexts=12x', 'contexts'),
                                     ('--steps=0', 'steps'), ('--attn_impls=foo', 'attn_impls'),
                                     ('--memory_size=2.8B', 'memory_size'), ('--out_dir=notes.txt/bench', 'out_dir'),
                                     ('--tag=../x', 'tag')])
def test_refuses_bad_config(tmp_path, arg, key):
    (tmp_path / 'notes.txt').write_text('a file where the tables would go')
    refused(os.path.join('bench', 'profile_model.py'), [arg], tmp_path, key)

"""
Tests for bench/train.py (train.py's throughput benchmark) on a CPU: every optimizer times, accumulation, bad values.

    python -m pytest tests/test_bench_train.py -v
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location('bench_train', os.path.join(ROOT, 'bench', 'train.py'))
B = importlib.util.module_from_spec(spec)
spec.loader.exec_module(B)
torch.set_num_threads(1)

TINY = dict(compile=False, dtype='float32', device='cpu', d_model=32, num_layers=1, num_heads=2, d_ff=0,
            context_length=16, batch_size=4, vocab_size=64, bench_iters=1)


def cfg(**kw):
    base = {k: v for k, v in vars(B).items() if k.islower() and isinstance(v, (bool, int, float, str))}
    return {**base, **TINY, **kw}


def test_bench_runs_on_cpu():
    res = B.bench(cfg(bench_optimizers='torch_adamw,adamw,muon'))
    assert all(res[f'train_{o}']['tokens_per_s'] > 0 for o in ('adamw', 'torch_adamw', 'muon'))


def test_bench_accumulation_optimizer_choice_and_bad_values():
    res = B.bench(cfg(gradient_accumulation_steps=2, bench_optimizers='adamw'))
    assert res['train_adamw']['tokens_per_s'] > 0 and 'train_torch_adamw' not in res
    with pytest.raises(ValueError, match='bench_optimizers'):
        B.bench(cfg(bench_optimizers='sgd'))
    with pytest.raises(ValueError, match='compile_mode'):
        B.compile_model(torch.nn.Linear(2, 2), cfg(compile=True, compile_mode='fastest'))
    with pytest.raises(ValueError, match='CUDA graphs'):
        B.compile_model(torch.nn.Linear(2, 2), cfg(compile=True, compile_mode='reduce-overhead',
                                                   gradient_accumulation_steps=2))


def test_command_line_takes_train_configs(tmp_path):
    r = subprocess.run([sys.executable, 'bench/train.py', 'config/quick.py', *[f'--{k}={v}' for k, v in TINY.items()],
                        f'--out_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'train step (torch_adamw)' in r.stdout and os.path.exists(tmp_path / 'bench.json')

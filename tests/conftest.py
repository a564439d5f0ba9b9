"""
Shared pytest setup: where the shared data lives, and offline tiktoken.

The shared data folder (../shared/data beside the checkout, in CI too) can be moved with the
LMSCRATCH_DATA environment variable. Tests read it in place; nothing is copied into the repo.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
DATA = os.path.abspath(DATA)

# the scripts live in the repo root; make them importable as modules (import bpe, import model, ...)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# tiktoken downloads its files unless they are cached: point it at the shared copy (offline machines)
if os.path.isdir(os.path.join(DATA, 'tiktoken_cache')):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(DATA, 'tiktoken_cache'))


# Triton kernels run on the CPU through Triton's interpreter; it must be switched on before triton is imported
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault('TRITON_INTERPRET', '1')
except ImportError:
    pass


@pytest.fixture(scope='session')
def data_dir():
    """Path of the shared data folder; skips the test (saying why) when it is missing."""
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA}: set LMSCRATCH_DATA to its path")
    return DATA

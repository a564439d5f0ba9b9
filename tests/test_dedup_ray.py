"""
Tests for dedup.py's Ray engine (--engine=ray) on a local Ray instance with 2 CPUs, started once
for the module: same outputs as the local engine, resume after an interrupted run, a task that
fails once and is retried, corrupt input counted and skipped, and a clear error without Ray.

    python -m pytest tests/test_dedup_ray.py -v
"""
import importlib.util
import json
import os
import sys

import pytest

import dedup


def load_bench():
    """bench/dedup.py as a module (it makes the planted-duplicate corpus)."""
    if 'bench_dedup' not in sys.modules:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location('bench_dedup', os.path.join(root, 'bench', 'dedup.py'))
        sys.modules['bench_dedup'] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules['bench_dedup'])
    return sys.modules['bench_dedup']


@pytest.fixture(scope='module')
def ray_local():
    ray = pytest.importorskip('ray')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope='module')
def inputs(data_dir, tmp_path_factory):
    """300 one-file documents with planted near-duplicates, two JSONL files, and bad input."""
    d = tmp_path_factory.mktemp('in')
    texts, fam = load_bench().make_bench_corpus(400, seed=2, words_per_doc=150)
    files = []
    for i, t in enumerate(texts[:300]):
        files.append(str(d / f"doc{i:04d}.txt"))
        with open(files[-1], 'w') as f:
            f.write(t)
    for k in range(2):
        files.append(str(d / f"part{k}.jsonl"))
        with open(files[-1], 'w') as f:
            for i in range(300 + 50 * k, 350 + 50 * k):
                f.write(json.dumps({'text': texts[i]}) + '\n')
            if k == 1:
                f.write('{"text": 1}\n{truncated\n')  # corrupt lines
    files.append(str(d / 'bin.dat'))
    with open(files[-1], 'wb') as f:
        f.write(b'\x00\x01binary\xff')
    return sorted(files)


ARGS = dict(num_hashes=128, num_bands=32, ngrams=5, jaccard_threshold=0.8, seed=3, shard_docs=64)


def _outputs(folder):
    return {f: open(os.path.join(folder, f), 'rb').read() for f in sorted(os.listdir(folder))}


@pytest.fixture(scope='module')
def local_result(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp('local')
    stats = dedup.minhash_dedup(inputs, output_dir=out, num_workers=2, **ARGS)
    return stats, _outputs(out)


def test_ray_equals_local(ray_local, inputs, local_result, tmp_path):
    stats, outputs = local_result
    assert stats['docs_removed'] > 10 and stats['binary'] == 1 and stats['bad_lines'] == 2  # a real test
    r = dedup.minhash_dedup(inputs, output_dir=tmp_path, engine='ray', **ARGS)
    assert _outputs(tmp_path) == outputs
    for k in ('docs', 'candidate_pairs', 'duplicate_pairs', 'clusters', 'docs_removed', 'removed_names',
              'binary', 'bad_lines', 'empty', 'non_utf8'):
        assert r[k] == stats[k], k  # corrupt input counted and skipped exactly as on the local path
    assert 'bin.dat' not in outputs


def test_ray_exact_line_dedup_equals_local(ray_local, data_dir, tmp_path):
    src = os.path.join(data_dir, 'a4', 'documents_with_line_duplicates')
    files = sorted(os.path.join(src, f) for f in os.listdir(src))
    a = dedup.exact_line_dedup(files, tmp_path / 'local', num_workers=1)
    b = dedup.exact_line_dedup(files, tmp_path / 'ray', engine='ray')
    assert _outputs(tmp_path / 'local') == _outputs(tmp_path / 'ray')
    assert (a['lines'], a['lines_removed']) == (b['lines'], b['lines_removed'])


def test_ray_resume_after_interruption(ray_local, inputs, local_result, tmp_path):
    stats, outputs = local_result
    with pytest.raises(RuntimeError, match='interrupted'):
        dedup.minhash_dedup(inputs, output_dir=tmp_path, engine='ray', _interrupt_after_shards=3, **ARGS)
    r = dedup.minhash_dedup(inputs, output_dir=tmp_path, engine='ray', **ARGS)
    assert r['resumed_shards'] == 3  # finished shards were not recomputed
    assert _outputs(tmp_path) == outputs  # nothing lost, nothing duplicated


def test_ray_task_fails_once_and_is_retried(ray_local, inputs, local_result, tmp_path):
    marker = str(tmp_path / 'failed_once')
    r = dedup.minhash_dedup(inputs, output_dir=tmp_path / 'out', engine='ray', _fail_once_marker=marker, **ARGS)
    assert os.path.exists(marker)  # the first attempt of shard 0 did fail
    assert _outputs(tmp_path / 'out') == local_result[1] and r['docs'] == local_result[0]['docs']


def test_clear_error_without_ray(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'ray', None)  # makes `import ray` raise ImportError
    f = tmp_path / 'a.txt'
    f.write_text('hello world')
    with pytest.raises(SystemExit, match='pip install'):
        dedup.minhash_dedup([str(f)], 128, 16, 5, 0.8, tmp_path / 'out', engine='ray')
    with pytest.raises(SystemExit, match='engine=local'):
        dedup.exact_line_dedup([str(f)], tmp_path / 'out2', engine='ray')

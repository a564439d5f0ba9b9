"""
Tests of data/docs/prepare.py and data/pycode/prepare.py on small corpora made in temporary folders.

    python -m pytest tests/test_data.py -v
"""
import gzip
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = '<|endoftext|>'


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that pool workers can pickle references to its functions
    spec.loader.exec_module(mod)
    return mod


docs_prep = _load('docs_prepare', 'data/docs/prepare.py')
pycode_prep = _load('pycode_prepare', 'data/pycode/prepare.py')

WORDS = ('the of and to in is that for it as with was on be by this are from at or an which have not '
         'python debian package file system install module function return value list string error').split()


def _make_docs(n, seed=0):
    rng = random.Random(seed)
    return [f'Document {i}. ' + ' '.join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) for i in range(n)]


def _decode_docs(out_dir, split):
    meta = json.load(open(os.path.join(out_dir, 'meta.json')))
    tok_dir = meta['tokenizer_dir']
    tok = bpe.Tokenizer.from_dir(tok_dir if os.path.isabs(tok_dir) else os.path.join(out_dir, tok_dir))
    ids = np.fromfile(os.path.join(out_dir, f'{split}.bin'), dtype=meta['dtype']).tolist()
    assert ids[-1] == meta['eot_id']
    docs, cur = [], []
    for i in ids:
        if i == meta['eot_id']:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs


def _strip_timing(meta):
    return {k: v for k, v in meta.items() if k != 'timing_s'}


# -----------------------------------------------------------------------------
# data/docs/prepare.py

@pytest.fixture(scope='module')
def docs_src(tmp_path_factory):
    d = tmp_path_factory.mktemp('docs')
    docs = _make_docs(50)
    p = d / 'corpus.txt'
    p.write_text(f'\n{EOT}\n'.join(docs) + '\n', encoding='utf-8')
    return str(p), docs


def test_docs_split_by_document_no_leakage(tmp_path, docs_src):
    src, docs = docs_src
    meta = docs_prep.prepare(src, str(tmp_path / 'a'), vocab_size=300, val_fraction=0.1, seed=1, progress=False)
    train, val = _decode_docs(str(tmp_path / 'a'), 'train'), _decode_docs(str(tmp_path / 'a'), 'val')
    assert len(val) == 5 and len(train) == 45
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)  # every document, exactly once, byte for byte
    assert meta['vocab_size'] == 300 and meta['dtype'] == 'uint16' and meta['eot_id'] == 0
    assert meta['tokenizer_dir'] == 'tokenizer' and meta['complete']
    assert meta['val_bytes'] == sum(len(d.encode()) for d in val) == meta['splits']['val']['bytes']
    n_tokens = os.path.getsize(tmp_path / 'a' / 'val.bin') // 2
    assert meta['splits']['val']['tokens'] == n_tokens


def test_docs_deterministic_and_resumable(tmp_path, docs_src, capsys):
    src, _ = docs_src
    kw = dict(vocab_size=300, val_fraction=0.1, seed=1, progress=False)
    m1 = docs_prep.prepare(src, str(tmp_path / 'a'), **kw)
    m2 = docs_prep.prepare(src, str(tmp_path / 'b'), **kw)
    assert _strip_timing(m1) == _strip_timing(m2)
    for name in ('train.bin', 'val.bin', 'tokenizer/merges.txt', 'tokenizer/vocab.json'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
    # another seed gives another split
    m3 = docs_prep.prepare(src, str(tmp_path / 'c'), **{**kw, 'seed': 2})
    assert _decode_docs(str(tmp_path / 'c'), 'val') != _decode_docs(str(tmp_path / 'a'), 'val')
    # re-run: nothing rebuilt
    capsys.readouterr()
    stamp = {n: os.stat(tmp_path / 'a' / n).st_mtime_ns for n in ('train.bin', 'val.bin', 'tokenizer/merges.txt')}
    docs_prep.prepare(src, str(tmp_path / 'a'), **kw)
    assert 'train.bin: already built' in capsys.readouterr().out
    assert stamp == {n: os.stat(tmp_path / 'a' / n).st_mtime_ns for n in stamp}
    # an interrupted run (val.bin never written): only val.bin is rebuilt, identical to before
    val_before = (tmp_path / 'a' / 'val.bin').read_bytes()
    os.remove(tmp_path / 'a' / 'val.bin')
    meta = json.load(open(tmp_path / 'a' / 'meta.json'))
    meta['complete'] = False
    del meta['steps']['val']
    json.dump(meta, open(tmp_path / 'a' / 'meta.json', 'w'))
    m4 = docs_prep.prepare(src, str(tmp_path / 'a'), **kw)
    assert (tmp_path / 'a' / 'val.bin').read_bytes() == val_before and m4['complete']
    assert os.stat(tmp_path / 'a' / 'train.bin').st_mtime_ns == stamp['train.bin']
    assert os.stat(tmp_path / 'a' / 'tokenizer' / 'merges.txt').st_mtime_ns == stamp['tokenizer/merges.txt']


def test_docs_rebuilds_over_a_broken_meta_json(tmp_path, docs_src):
    """newuser 7d: a corrupt meta.json (an earlier run's record) counts as nothing done, not a JSONDecodeError."""
    kw = dict(vocab_size=300, val_fraction=0.1, seed=1, progress=False)
    m1 = docs_prep.prepare(docs_src[0], str(tmp_path / 'a'), **kw)
    (tmp_path / 'a' / 'meta.json').write_text('{"vocab_size": 3', encoding='utf-8')
    m2 = docs_prep.prepare(docs_src[0], str(tmp_path / 'a'), **kw)
    assert m2['complete'] and _strip_timing(m2) == _strip_timing(m1)
    assert json.load(open(tmp_path / 'a' / 'meta.json'))['complete']


def test_arith_refuses_a_file_as_out_dir(tmp_path):
    """newuser 7f: data/arith/prepare.py --out_dir=<a file>: one line, exit 2, the file unchanged."""
    (tmp_path / 'f').write_text('mine', encoding='utf-8')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'data', 'arith', 'prepare.py'),
                        f'--out_dir={tmp_path / "f"}', '--n_train=5', '--n_val=1', '--n_test=1', '--n_gen=1'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'is a file' in r.stderr, r.stderr
    assert os.listdir(tmp_path) == ['f'] and (tmp_path / 'f').read_text(encoding='utf-8') == 'mine'


def test_docs_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match='--src'):
        docs_prep.prepare(str(tmp_path / 'missing.txt'), str(tmp_path / 'o'), progress=False)
    empty = tmp_path / 'empty.txt'
    empty.write_text(f'\n{EOT}\n  \n{EOT}', encoding='utf-8')
    with pytest.raises(ValueError, match='no text'):
        docs_prep.prepare(str(empty), str(tmp_path / 'o'), progress=False)
    one = tmp_path / 'one.txt'
    one.write_text('just one document', encoding='utf-8')
    with pytest.raises(ValueError, match='at least 2 documents'):
        docs_prep.prepare(str(one), str(tmp_path / 'o'), progress=False)


def test_docs_uint32_for_a_big_vocab(tmp_path, docs_src):
    # a given tokenizer with more than 65,536 ids: the token files switch to uint32 and meta.json says so
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({i: b'#%d' % i for i in range(256, 70000)})
    vocab[69999] = b'th'
    bpe.save_tokenizer(vocab, [(b't', b'h')], [EOT], str(tmp_path / 'big'))
    src, docs = docs_src
    meta = docs_prep.prepare(src, str(tmp_path / 'o'), tokenizer_dir=str(tmp_path / 'big'), progress=False)
    assert meta['dtype'] == 'uint32' and 'uint32' in meta['dtype_note'] and meta['vocab_size'] == 70001
    assert sorted(_decode_docs(str(tmp_path / 'o'), 'train') + _decode_docs(str(tmp_path / 'o'), 'val')) == \
        sorted(docs)
    assert not os.path.exists(tmp_path / 'o' / 'tokenizer')


def test_docs_cli(tmp_path, docs_src):
    src, _ = docs_src
    script = os.path.join(ROOT, 'data', 'docs', 'prepare.py')
    r = subprocess.run([sys.executable, script, f'--src={src}', f'--out_dir={tmp_path}', '--vocab_size=280',
                        '--progress=False'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / 'meta.json'))['vocab_size'] == 280
    r = subprocess.run([sys.executable, script, f'--src={tmp_path / "nope.txt"}', f'--out_dir={tmp_path}'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'error: source text not found' in r.stderr


# -----------------------------------------------------------------------------
# data/pycode/prepare.py

def _val_content(prefix):
    """A file content that the SHA-1 rule puts in validation (first digest byte % 100 == 0)."""
    for k in range(10000):
        text = f'{prefix}\n# variant {k}\n'
        if hashlib.sha1(text.encode()).digest()[0] % 100 == 0:
            return text
    raise AssertionError('unreachable')


def _train_content(prefix):
    for k in range(10000):
        text = f'{prefix}\n# variant {k}\n'
        if hashlib.sha1(text.encode()).digest()[0] % 100 != 0:
            return text
    raise AssertionError('unreachable')


def _code(seed, n_funcs=30):
    rng = random.Random(seed)
    lines = []
    for f in range(n_funcs):
        name = ''.join(rng.choice('abcdefghij') for _ in range(6))
        lines += [f'def {name}_{f}(x, y={rng.randint(0, 99)}):', f'    """Return {rng.choice(WORDS)} of x."""',
                  f'    return x * {rng.randint(1, 9)} + y  # {rng.choice(WORDS)} {rng.choice(WORDS)}', '']
    return '\n'.join(lines)


@pytest.fixture(scope='module')
def py_tree(tmp_path_factory):
    """A folder with planted cases; returns (folder, what to expect)."""
    d = tmp_path_factory.mktemp('pysrc')
    (d / 'pkg' / 'sub').mkdir(parents=True)
    texts = {}
    for i in range(12):
        texts[f'pkg/m{i:02d}.py'] = _train_content(_code(i))
    val_text = _val_content(_code(100))
    texts['pkg/sub/val_file.py'] = val_text
    # near-duplicates: a copy of m00 with one line changed (train-train), and a train copy of the val file
    base = texts['pkg/m00.py'].split('\n')
    base[1] = '    """Return something else of x."""'
    texts['pkg/sub/m00_copy.py'] = _train_content('\n'.join(base))
    vbase = val_text.split('\n')
    vbase[1] = '    """A train file close to the val file."""'
    texts['pkg/zz_val_copy.py'] = _train_content('\n'.join(vbase))
    texts['pkg/sub/dup_of_m01.py'] = texts['pkg/m01.py']  # exact duplicate: 'pkg/m01.py' sorts first, keeps it
    texts['pkg/empty.py'] = ''
    texts['pkg/notes.txt'] = 'not python'
    for rel, text in texts.items():
        (d / rel).write_text(text, encoding='utf-8')
    (d / 'pkg' / 'latin1.py').write_bytes(b'# caf\xe9\nx = 1\n')  # not UTF-8
    os.symlink(d / 'pkg' / 'm02.py', d / 'link_to_m02.py')  # the same real file: counted once
    expect = {'found': 18, 'empty': 1, 'undecodable': 1, 'exact_duplicates': 1, 'near_duplicates': 2,
              'val': [val_text], 'near_dropped': {texts['pkg/sub/m00_copy.py'], texts['pkg/zz_val_copy.py']},
              'all': {t for r, t in texts.items() if r.endswith('.py') and t}}
    return str(d), expect


def test_pycode_file_rules_and_split(tmp_path, py_tree):
    src, expect = py_tree
    meta = pycode_prep.prepare(src, str(tmp_path / 'o'), vocab_size=400, progress=False, num_workers=2)
    files = meta['manifest']['files']
    for step in ('found', 'empty', 'undecodable', 'exact_duplicates', 'near_duplicates'):
        assert files[step]['files'] == expect[step], step
    val = _decode_docs(str(tmp_path / 'o'), 'val')
    train = _decode_docs(str(tmp_path / 'o'), 'train')
    assert val == expect['val']
    assert set(train) == expect['all'] - set(val) - expect['near_dropped']
    assert meta['val_bytes'] == len(expect['val'][0].encode())
    assert meta['splits']['train']['docs'] == len(train) == files['train']['files']
    assert meta['manifest']['roots'] == [os.path.realpath(src)]


def test_pycode_exact_only_and_deterministic(tmp_path, py_tree, capsys):
    src, expect = py_tree
    m1 = pycode_prep.prepare(src, str(tmp_path / 'a'), vocab_size=400, near_dedup=False, progress=False)
    m2 = pycode_prep.prepare(src, str(tmp_path / 'b'), vocab_size=400, near_dedup=False, progress=False)
    assert _strip_timing(m1) == _strip_timing(m2)
    assert (tmp_path / 'a' / 'train.bin').read_bytes() == (tmp_path / 'b' / 'train.bin').read_bytes()
    assert set(_decode_docs(str(tmp_path / 'a'), 'train')) == expect['all'] - set(expect['val'])
    capsys.readouterr()
    pycode_prep.prepare(src, str(tmp_path / 'a'), vocab_size=400, near_dedup=False, progress=False)
    out = capsys.readouterr().out
    assert 'already trained' in out and 'train.bin: already built' in out


def test_pycode_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a folder'):
        pycode_prep.prepare(str(tmp_path / 'missing'), str(tmp_path / 'o'), progress=False)
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'empty.py').write_text('')
    with pytest.raises(ValueError, match='no usable .py file'):
        pycode_prep.prepare(str(tmp_path / 'src'), str(tmp_path / 'o'), progress=False)


def test_pycode_max_mb_takes_a_prefix_by_relative_path(tmp_path, py_tree):
    # the Quickstart's cap: the first max_mb megabytes in relative-path order
    src = os.path.realpath(py_tree[0])
    every = pycode_prep.list_py_files([src])
    by_rel = sorted(every, key=lambda p: os.path.relpath(p, src))
    sizes = np.cumsum([os.path.getsize(p) for p in by_rel])
    capped = pycode_prep.list_py_files([src], max_mb=sizes[4] / 1e6)
    assert capped == sorted(by_rel[:5]) and pycode_prep.list_py_files([src], 0) == every
    # the same files wherever the tree lives
    picked = {}
    for where in ('a', 'b/deeper'):
        for k in range(8):
            (tmp_path / where / 'aaa').mkdir(parents=True, exist_ok=True)
            (tmp_path / where / ('aaa' if k % 2 else '') / f'm{k}.py').write_text(_code(k), encoding='utf-8')
        root = os.path.realpath(tmp_path / where)
        picked[where] = [os.path.relpath(p, root) for p in pycode_prep.list_py_files([root], max_mb=0.004)]
    assert picked['a'] == picked['b/deeper'] and 0 < len(picked['a']) < 8 and picked['a'][0] == 'aaa/m1.py'
    # a root inside another (site-packages inside the stdlib folder) counts under the inner root, after the outer
    outer = os.path.realpath(tmp_path / 'a')
    first = pycode_prep.list_py_files([outer, os.path.join(outer, 'aaa')], max_mb=os.path.getsize(outer + '/m0.py') / 1e6)
    assert first == [os.path.join(outer, 'm0.py')]


def test_pycode_default_roots_are_sysconfig():
    import sysconfig
    roots = pycode_prep.source_roots('')
    paths = sysconfig.get_paths()
    assert os.path.realpath(paths['stdlib']) in roots and os.path.realpath(paths['purelib']) in roots


# -----------------------------------------------------------------------------
# bad input on the command line (issue 32): exit code 2, one line on stderr, nothing written or changed

def snapshot(folder):
    """{path: (size, mtime)} of every file under folder: what a refused command must leave as it was."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture
def bad_inputs(tmp_path):
    """A folder with the inputs of the refusals: a corpus, a one-document text, an empty file, a folder of empty .py."""
    (tmp_path / 'corpus.txt').write_text(f'\n{EOT}\n'.join(_make_docs(10)), encoding='utf-8')
    (tmp_path / 'one.txt').write_text('a single document', encoding='utf-8')
    gz = gzip.compress(f'\n{EOT}\n'.join(_make_docs(10)).encode())
    (tmp_path / 'cut.txt.gz').write_bytes(gz[:len(gz) // 2])  # an interrupted copy
    (tmp_path / 'plain.txt.gz').write_text('not gzip', encoding='utf-8')
    (tmp_path / 'empty.txt').write_text('', encoding='utf-8')
    (tmp_path / 'py').mkdir()
    (tmp_path / 'py' / 'empty.py').write_text('', encoding='utf-8')
    return tmp_path


PREPARE_BAD = [  # (script, arguments, a piece of the one-line message); out_dir is always tmp/out
    ('docs', ['--src=corpus.txt', '--val_fraction=1.5'], '--val_fraction=1.5'),
    ('docs', ['--src=corpus.txt', '--val_fraction=0'], '--val_fraction=0'),
    ('docs', ['--src=missing.txt'], 'source text not found'),
    ('docs', [], 'source text not found'),  # no shared data (LMSCRATCH_DATA points nowhere): where to get it
    ('docs', ['--src=corpus.txt', '--vocab_size=100'], '--vocab_size=100'),
    ('docs', ['--src=corpus.txt', '--tokenizer_dir=nothing'], 'holds no merges.txt'),
    ('docs', ['--src=corpus.txt', '--num_workers=-3'], '--num_workers=-3'),
    ('docs', ['--src=corpus.txt', '--out_dir=corpus.txt'], 'is a file'),
    ('docs', ['--src=one.txt'], 'at least 2 documents'),
    ('docs', ['--src=cut.txt.gz'], 'cut.txt.gz: not a complete gzip file'),  # newuser 7c
    ('docs', ['--src=plain.txt.gz'], 'plain.txt.gz: not a complete gzip file'),
    ('pycode', ['--src=missing'], 'is not a folder'),
    ('pycode', ['--src=py', '--progress=False'], 'no usable .py file'),  # found after reading: no bars
    ('pycode', ['--src=py', '--max_mb=-1'], '--max_mb=-1'),
    ('pycode', ['--src=py', '--jaccard_threshold=0'], '--jaccard_threshold=0'),
    ('pycode', ['--src=py', '--bpe_sample_bytes=0'], '--bpe_sample_bytes=0'),
    ('owt', ['--src_train=corpus.txt'], 'give both'),
    ('owt', ['--src_train=corpus.txt', '--src_val=empty.txt'], 'non-empty'),
    ('owt', ['--vocab_size=100', '--offline=True'], '--vocab_size=100'),
    ('owt', ['--offline=True'], 'no offline stand-in'),  # no shared data: points at pycode
    ('tinystories', ['--generated_stories=0', '--offline=True'], '--generated_stories=0'),
    ('tinystories', ['--num_workers=-1', '--offline=True'], '--num_workers=-1'),
]


@pytest.mark.parametrize('script, args, message', PREPARE_BAD, ids=[f"{s} {' '.join(a)}" for s, a, _ in PREPARE_BAD])
def test_prepare_refuses_bad_input(bad_inputs, script, args, message):
    path = os.path.join(ROOT, 'data', script, 'prepare.py')
    if not any(a.startswith('--out_dir') for a in args):
        args = args + [f'--out_dir={bad_inputs / "out"}']
    env = dict(os.environ, LMSCRATCH_DATA=str(bad_inputs / 'no_shared_data'))
    before = snapshot(bad_inputs)
    r = subprocess.run([sys.executable, path] + args, cwd=bad_inputs, env=env, capture_output=True, text=True,
                       timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, (args, r.stderr)
    assert lines[0].startswith(f'{path}: error: ') and message in lines[0], lines[0]
    assert snapshot(bad_inputs) == before and not os.path.exists(bad_inputs / 'out')

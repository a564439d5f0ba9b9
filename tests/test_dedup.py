"""
Tests for dedup.py (local engine): exact line dedup on the course fixture, MinHash dedup on the
near-duplicate licenses, normalization, the LSH S-curve against simulation, determinism, JSONL,
resume (also after a replaced input or a changed setting), a copy of dedup.py alone in an empty folder,
bad command lines refused with one line and exit code 2 (issue 32), and pool workers that die with
their SIGKILLed parent.

    python -m pytest tests/test_dedup.py -v
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import dedup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    """bench/dedup.py as a module (the planted-duplicate corpus and the S-curve table live there)."""
    if 'bench_dedup' not in sys.modules:
        spec = importlib.util.spec_from_file_location('bench_dedup', os.path.join(ROOT, 'bench', 'dedup.py'))
        sys.modules['bench_dedup'] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules['bench_dedup'])
    return sys.modules['bench_dedup']


def _files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def _write(path, data):
    with open(path, 'wb') as f:
        f.write(data if isinstance(data, bytes) else data.encode('utf-8'))
    return str(path)


@pytest.fixture(scope='module')
def corpus(data_dir):
    """400 documents of real words with planted near-duplicates, and the true duplicate pairs."""
    bench = load_bench()
    texts, fam = bench.make_bench_corpus(400, seed=1, words_per_doc=200)
    return texts, fam, bench.planted_truth(texts, fam, 5, 0.8)


# ------------------------------------------------------------------------------ exact line dedup

def test_exact_line_dedup_fixture(data_dir, tmp_path):
    src = os.path.join(data_dir, 'a4', 'documents_with_line_duplicates')
    expected = os.path.join(data_dir, 'a4', 'documents_line_deduplicated')
    stats = dedup.exact_line_dedup(_files(src), tmp_path, num_workers=1)
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(expected))  # every input has an output, even empty
    for name in os.listdir(expected):
        with open(os.path.join(tmp_path, name), 'rb') as f, open(os.path.join(expected, name), 'rb') as g:
            assert f.read() == g.read(), name
    assert stats['files'] == 5 and stats['lines_removed'] == 6


def test_exact_line_dedup_bad_input(tmp_path):
    d = tmp_path / 'in'
    d.mkdir()
    files = [_write(d / 'a.txt', 'same\nonly a\n'), _write(d / 'b.txt', 'same'),  # no final newline: same line
             _write(d / 'empty.txt', ''), _write(d / 'bin.dat', b'\x00\x01\xff\nsame\n'),
             _write(d / 'latin1.txt', 'caf\xe9\n'.encode('latin-1'))]
    stats = dedup.exact_line_dedup(files, tmp_path / 'out', num_workers=2)
    out = {f: (tmp_path / 'out' / f).read_bytes() for f in os.listdir(tmp_path / 'out')}
    assert out == {'a.txt': b'only a\n', 'b.txt': b'', 'empty.txt': b'', 'bin.dat': b'\x00\x01\xff\n',
                   'latin1.txt': b'caf\xe9\n'}  # bytes in, the same bytes out
    assert stats['lines_removed'] == 3


# ------------------------------------------------------------------------------ normalization

@pytest.mark.parametrize('text, expected', [
    ('Héllo,  WORLD!', 'hello world'),                  # accents, case, punctuation, whitespace
    ("don't\tstop -- the\n\nmusic...", 'dont stop the music'),
    ('Ça va? naïve café, résumé', 'ca va naive cafe resume'),
    ('e\u0301 (combining acute)', 'e combining acute'),  # already decomposed
    ('a\u00a0b\u2003c \u2014 d \u201cq\u201d', 'a b c d q'),  # Unicode spaces, em dash, curly quotes
    ('price: $5 + 3% = ~8 <ok>', 'price 5 3 8 ok'),     # ASCII symbols are removed too
    ('', ''),
])
def test_normalize(text, expected):
    assert ' '.join(dedup.normalize_words(text)) == expected
    # the fast byte path gives exactly the reference's words
    assert dedup._normalized_bytes(text).split() == [w.encode() for w in dedup.normalize_words(text)]


def test_ngram_hashes_match_reference():
    texts = ['The quick brown fox jumps over the lazy dog again', 'tiny doc', '', 'Öl und Wasser, über alles!']
    X, counts = dedup.batch_ngram_hashes(texts, 3)
    assert counts.tolist() == [8, 1, 0, 3]
    start = 0
    for t, c in zip(texts, counts):  # batched == one document at a time
        single, _ = dedup.batch_ngram_hashes([t], 3)
        assert np.array_equal(X[start:start + c], single)
        start += c
    # n-gram order matters, word boundaries matter
    a, b, c = (dedup.ngram_set(t, 2) for t in ('a b c', 'b a c', 'ab c'))
    assert dedup.jaccard(a, b) == 0 and dedup.jaccard(a, c) == 0


# ------------------------------------------------------------------------------ MinHash and LSH

def _overlap_pairs(n_pairs, size, shared, rng):
    """Pairs of documents of `size` distinct random words sharing `shared` of them (1-gram Jaccard known)."""
    texts = []
    for _ in range(n_pairs):
        w = [f"w{x}" for x in rng.choice(10**9, 2 * size - shared, replace=False)]
        texts += [' '.join(w[:size]), ' '.join(w[size - shared:])]
    return texts, shared / (2 * size - shared)


def test_signatures_match_naive_minhash():
    rng = np.random.default_rng(5)
    # documents that straddle the 8192-n-gram blocks, an empty one and a short one
    texts = [' '.join(f"t{x}" for x in rng.integers(0, 10**6, n)) for n in (5000, 7000, 0, 3, 9000)]
    sig = dedup.minhash_signatures(texts, 16, 2, seed=11)
    a = dedup.hash_params(16, 11)
    for t, s in zip(texts, sig):
        X = (dedup.ngram_set(t, 2) >> np.uint64(32)).astype(np.uint32)
        if len(X) == 0:
            assert (s == dedup.SIG_EMPTY).all()
            continue
        naive = (a * X[None, :]).min(axis=1)  # (16,) one hash function at a time, uint32 arithmetic
        assert np.array_equal(s, naive)


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    texts, J = _overlap_pairs(50, 200, 150, rng)  # J = 0.6
    sig = dedup.minhash_signatures(texts, 256, 1, seed=3)
    est = (sig[0::2] == sig[1::2]).mean(axis=1)  # (50,) per-pair estimates
    # mean over 50 pairs x 256 hashes: std ~ sqrt(J(1-J)/12800) = 0.0043
    assert abs(est.mean() - J) < 0.02, (est.mean(), J)
    assert abs(est.std() - np.sqrt(J * (1 - J) / 256)) < 0.015  # hashes behave independently


@pytest.mark.parametrize('shared', [100, 150, 180])
def test_lsh_probability_matches_simulation(shared):
    rng = np.random.default_rng(shared)
    bands, rows = 16, 4
    texts, J = _overlap_pairs(400, 200, shared, rng)
    sig = dedup.minhash_signatures(texts, bands * rows, 1, seed=7)
    keys = dedup.band_keys(sig, bands)
    hit = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    p = float(dedup.candidate_probability(J, bands, rows))
    tol = 4 * np.sqrt(p * (1 - p) / 400) + 0.02
    assert abs(hit - p) < tol, (J, hit, p)
    # and the pipeline's pair finder sees exactly those candidates
    pairs = {tuple(x) for x in dedup.lsh_pairs(sig, bands).tolist()}
    assert sum((2 * i, 2 * i + 1) in pairs for i in range(400)) == round(hit * 400)


def test_choose_bands_and_curve(capsys):
    b, r = dedup.choose_bands(128, 0.8)
    assert b * r == 128 and dedup.candidate_probability(0.8, b, r) >= 0.99  # pairs at the threshold: < 1% missed
    assert dedup.candidate_probability(0.8, b // 2, r * 2) < 0.99  # and the steepest split that does so
    assert dedup.choose_bands(120, 0.9) == (12, 10)
    assert load_bench().print_s_curve(128, 0.8) == (b, r)
    assert '<- pick' in capsys.readouterr().out


def test_bands_must_divide_hashes(tmp_path):
    f = _write(tmp_path / 'a.txt', 'some text here')
    with pytest.raises(ValueError, match='divisible by num_bands=7'):
        dedup.minhash_dedup([f], 128, 7, 5, 0.8, tmp_path / 'out')
    with pytest.raises(ValueError, match='divisible'):
        load_bench().minhash_near_duplicates(['a b c'], num_hashes=100, num_bands=3)


def test_bucket_pairs_star_for_big_buckets():
    key = np.array([5, 5, 5, 5, 9, 9, 1], dtype=np.uint64)
    doc = np.array([3, 1, 2, 0, 7, 8, 4], dtype=np.int64)
    assert dedup.bucket_pairs(key, doc, 10).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3], [7, 8]]
    assert dedup.bucket_pairs(key, doc, 3).tolist() == [[0, 1], [0, 2], [0, 3], [7, 8]]  # star on doc 0


def test_union_find_keeps_one_per_cluster():
    pairs = np.array([[0, 1], [1, 2], [5, 6]])
    prio = np.array([9, 1, 5, 0, 0, 3, 2], dtype=np.uint64)
    removed, clusters = dedup.choose_removed(7, pairs, prio)
    assert clusters == 2 and removed.tolist() == [0, 2, 5]  # keeps 1 (lowest priority) and 6


# ------------------------------------------------------------------------------ near-dup detection

def test_near_duplicates_recall_precision_determinism(corpus):
    texts, fam, truth = corpus
    drop = load_bench().minhash_near_duplicates(texts, num_hashes=128, num_bands=32, ngrams=5, jaccard_threshold=0.8, seed=0)
    # every true pair lost at least one member, and nothing outside the truth was dropped
    assert all(i in drop or j in drop for i, j in truth)
    in_truth = {d for p in truth for d in p}
    assert drop <= in_truth
    assert drop == load_bench().minhash_near_duplicates(texts, 128, 32, 5, 0.8, seed=0)  # deterministic
    other = load_bench().minhash_near_duplicates(texts, 128, 32, 5, 0.8, seed=1)
    assert len(other) == len(drop) and other != drop  # another seed keeps other members, same clusters


def test_minhash_dedup_fixture(data_dir, tmp_path):
    src = os.path.join(data_dir, 'a4', 'documents_with_fuzzy_duplicates')
    stats = dedup.minhash_dedup(_files(src), 100, 10, 5, 0.8, tmp_path, seed=0)
    out = sorted(os.listdir(tmp_path))
    assert 'pytorch_license.txt' in out  # the distinct document is kept
    assert len(out) == 2 and stats['docs_removed'] == 1 and stats['clusters'] == 1  # one MIT copy, no file
    kept = [f for f in out if 'mit' in f][0]
    with open(os.path.join(tmp_path, kept), 'rb') as f, open(os.path.join(src, kept), 'rb') as g:
        assert f.read() == g.read()  # survivors are the original bytes, not the normalized text


def test_minhash_dedup_bad_input(tmp_path):
    d = tmp_path / 'in'
    d.mkdir()
    doc = ' '.join(f"word{i}" for i in range(60))
    files = [_write(d / 'a.txt', doc), _write(d / 'b.txt', doc + ' extra'), _write(d / 'empty.txt', ''),
             _write(d / 'punct.txt', '!!! ...'), _write(d / 'bin.dat', b'\x7fELF\x00\x00\x01' + doc.encode()),
             _write(d / 'latin1.txt', ('caf\xe9 ' + doc).encode('latin-1'))]
    s = dedup.minhash_dedup(files, 64, 16, 5, 0.8, tmp_path / 'out', num_workers=1)
    assert (s['docs'], s['binary'], s['non_utf8'], s['empty']) == (5, 1, 1, 2)
    out = sorted(os.listdir(tmp_path / 'out'))
    assert 'bin.dat' not in out and 'empty.txt' in out and 'punct.txt' in out  # empty docs are kept
    assert s['docs_removed'] == 2 and len(out) == 3  # a, b and latin1 are one cluster


def test_jsonl_mode_and_resume(tmp_path, corpus):
    import json
    texts, fam, truth = corpus
    d = tmp_path / 'in'
    d.mkdir()
    files = []
    for k in range(4):  # 4 JSONL files of 100 documents, plus one bad line
        lines = [json.dumps({'id': i, 'text': texts[i]}) for i in range(k * 100, (k + 1) * 100)]
        if k == 2:
            lines.insert(5, '{not json')
        files.append(_write(d / f"part{k}.jsonl", '\n'.join(lines) + '\n'))
    args = (files, 128, 32, 5, 0.8)
    ref = dedup.minhash_dedup(*args, tmp_path / 'mem', num_workers=2)
    assert ref['bad_lines'] == 1 and ref['docs'] == 400
    expect = load_bench().minhash_near_duplicates(texts, 128, 32, 5, 0.8)
    assert ref['docs_removed'] == len(expect)
    kept = [json.loads(x)['id'] for f in sorted(os.listdir(tmp_path / 'mem')) for x in open(tmp_path / 'mem' / f)]
    assert len(kept) == 400 - len(expect) and len(set(kept)) == len(kept)
    # an interrupted run resumes from its saved shards
    with pytest.raises(RuntimeError, match='interrupted'):
        dedup.minhash_dedup(*args, tmp_path / 'resume', num_workers=1, _interrupt_after_shards=2)
    again = dedup.minhash_dedup(*args, tmp_path / 'resume', num_workers=1)
    assert again['resumed_shards'] == 2 and again['removed_names'] == ref['removed_names']
    assert not os.path.exists(tmp_path / 'resume' / '.dedup_work')
    for f in os.listdir(tmp_path / 'mem'):
        assert (tmp_path / 'mem' / f).read_bytes() == (tmp_path / 'resume' / f).read_bytes()


# ------------------------------------------------------------------------------ import and copy (issue 29)

def test_copy_of_dedup_alone_runs(tmp_path):
    """dedup.py copied alone into an empty folder: importing runs nothing; setting keys and calling main() works."""
    import shutil
    shutil.copy(os.path.join(ROOT, 'dedup.py'), tmp_path / 'dedup.py')
    (tmp_path / 'in').mkdir()
    doc = ' '.join(f"word{i}" for i in range(40))
    for name, text in (('a.txt', doc), ('b.txt', doc + ' tail'), ('c.txt', 'something else entirely here')):
        _write(tmp_path / 'in' / name, text)
    code = ("import sys; sys.argv = ['their_program.py', '--their_flag=1']\n"
            "import dedup\n"
            "dedup.inputs, dedup.output_dir, dedup.num_workers, dedup.progress = 'in', 'out', 1, False\n"
            "s = dedup.main()\n"
            "assert s['docs'] == 3 and s['docs_removed'] == 1, s\n")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = os.listdir(tmp_path / 'out')
    assert len(out) == 2 and 'c.txt' in out  # one of the two near-duplicates survives
    assert sorted(set(os.listdir(tmp_path)) - {'__pycache__'}) == ['dedup.py', 'in', 'out']  # no configurator.py


# ------------------------------------------------------------------------------ bad input (issue 32)

def _snapshot(folder):
    """Every path under folder with its bytes and mtime: 'nothing written or changed' is an equal snapshot."""
    out = {}
    for r, ds, fs in os.walk(folder):
        for name in ds + fs:
            p = os.path.join(r, name)
            out[os.path.relpath(p, folder)] = (open(p, 'rb').read(), os.stat(p).st_mtime_ns) if name in fs else None
    return out


@pytest.fixture
def corpus_dir(tmp_path):
    """tmp/in with two near-duplicate documents and a third one; tmp/in/sub/x.jsonl for the JSONL path."""
    d = tmp_path / 'in'
    (d / 'sub').mkdir(parents=True)
    doc = ' '.join(f"word{i}" for i in range(40))
    _write(d / 'a.txt', doc + '\nshared line\n')
    _write(d / 'b.txt', doc + ' tail\nshared line\n')
    _write(d / 'sub' / 'x.jsonl', '{"text": "another document entirely"}\n')
    return tmp_path


BAD_INPUTS = [  # (arguments, a word the message must contain); {d} is the tmp folder
    (['--inputs={d}/in', '--output_dir={d}/in'], 'output_dir'),  # the input folder itself: minhash
    (['--mode=exact', '--inputs={d}/in', '--output_dir={d}/in'], 'output_dir'),  # ... and exact (emptied inputs)
    (['--inputs={d}/in/sub', '--output_dir={d}/in'], 'output_dir'),  # a folder that holds the inputs
    (['--inputs={d}/in', '--output_dir={d}/in/sub/out'], 'inside'),  # a folder inside the input folder
    (['--inputs={d}/in/a.txt,{d}/in/b.txt', '--output_dir={d}/in/a.txt'], 'output_dir'),  # an input file
    (['--inputs={d}/in', '--ngrams=0'], 'ngrams'),
    (['--inputs={d}/in', '--num_hashes=0'], 'num_hashes'),
    (['--inputs={d}/in', '--num_bands=7'], 'num_bands'),  # 7 does not divide 128
    (['--inputs={d}/in', '--num_bands=-1'], 'num_bands'),
    (['--inputs={d}/in', '--jaccard_threshold=1.5'], 'jaccard_threshold'),
    (['--inputs={d}/in', '--jaccard_threshold=0'], 'jaccard_threshold'),
    (['--inputs={d}/nothing/*.jsonl'], 'no input files'),
    (['--inputs='], 'inputs'),
    (['--inputs={d}/in/a.txt,{d}/in/missing.txt'], 'missing.txt'),
    (['--inputs={d}/in', '--mode=fuzzy'], 'mode'),
    (['--inputs={d}/in', '--engine=spark'], 'engine'),
    (['--inputs={d}/in', '--shard_docs=0'], 'shard_docs'),
    (['--inputs={d}/in', '--num_workers=-3'], 'num_workers'),
    (['--inputs={d}/in', '--max_bucket=1'], 'max_bucket'),
    (['--inputs={d}/in', '--text_key='], 'text_key'),
    (['--inputs={d}/in', '--output_dir={d}/in/a.txt/x'], 'output_dir'),  # inside an input file's path
    (['--inputs={d}/in', '--output_dir={d}/file_not_folder'], 'is a file'),
    (['--inputs={d}/in', '--ngrams=five'], 'ngrams'),  # configurator: wrong type
    (['--inputs={d}/in/a.txt,{d}/in/sub/../a.txt'], 'named'),  # two inputs with one name
]


@pytest.mark.parametrize('args, word', BAD_INPUTS, ids=[' '.join(a) for a, _ in BAD_INPUTS])
def test_bad_input_refused(corpus_dir, args, word):
    """One line on stderr naming the key, exit code 2, no traceback, nothing written or changed."""
    _write(corpus_dir / 'file_not_folder', 'x')
    out = corpus_dir / 'out'
    args = [a.format(d=corpus_dir) for a in args]
    for key, default in (('--output_dir', f"--output_dir={out}"), ('--num_workers', '--num_workers=1')):
        if not any(a.startswith(key + '=') for a in args):
            args.append(default)
    before = _snapshot(corpus_dir)
    r = subprocess.run([sys.executable, 'dedup.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert word in lines[0], lines[0]
    assert _snapshot(corpus_dir) == before  # no output folder, inputs untouched


def test_good_input_still_runs(corpus_dir):
    """The same corpus with a correct output folder: exit 0, one near-duplicate removed, inputs untouched."""
    before = _snapshot(corpus_dir / 'in')
    r = subprocess.run([sys.executable, 'dedup.py', f"--inputs={corpus_dir}/in", f"--output_dir={corpus_dir}/out",
                        '--num_workers=1', '--progress=False'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(corpus_dir / 'out')) in (['a.txt', 'x.jsonl'], ['b.txt', 'x.jsonl'])
    assert _snapshot(corpus_dir / 'in') == before


def test_resume_redoes_a_replaced_file_or_a_changed_setting(tmp_path, corpus):
    """Saved shards are named after their files' size and mtime and the settings: a replaced input or another
    --ngrams is recomputed, the untouched shards are reused, and the result equals a fresh run."""
    import json
    texts = corpus[0]
    d = tmp_path / 'in'
    d.mkdir()
    files = [_write(d / f"part{k}.jsonl", ''.join(json.dumps({'text': t}) + '\n' for t in texts[k * 100:k * 100 + 100]))
             for k in range(4)]
    args = (files, 128, 32, 5, 0.8)
    with pytest.raises(RuntimeError, match='interrupted'):
        dedup.minhash_dedup(*args, tmp_path / 'out', num_workers=1, _interrupt_after_shards=2)
    _write(d / 'part0.jsonl', ''.join(json.dumps({'text': t}) + '\n' for t in texts[10:100]))  # replaced: 90 docs
    again = dedup.minhash_dedup(*args, tmp_path / 'out', num_workers=1)
    assert again['resumed_shards'] == 1 and again['docs'] == 390  # shard 0 redone, shard 1 reused
    fresh = dedup.minhash_dedup(*args, tmp_path / 'fresh', num_workers=1)
    assert fresh['removed_names'] == again['removed_names']
    for f in os.listdir(tmp_path / 'fresh'):
        assert (tmp_path / 'fresh' / f).read_bytes() == (tmp_path / 'out' / f).read_bytes()
    # another setting that shapes the signatures: nothing is reused
    with pytest.raises(RuntimeError, match='interrupted'):
        dedup.minhash_dedup(*args, tmp_path / 'out2', num_workers=1, _interrupt_after_shards=2)
    assert dedup.minhash_dedup(files, 128, 32, 4, 0.8, tmp_path / 'out2', num_workers=1)['resumed_shards'] == 0


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')
def test_pool_workers_die_with_their_parent():
    """SIGKILL the parent while its pool workers run: the workers are gone within a few seconds."""
    import signal
    import time

    def state(pid):  # the process state letter, or None once it is gone
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(')', 1)[1].split()[0]
        except OSError:
            return None

    def children(ppid):
        kids = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid and fields[0] != 'Z':
                kids.append(int(pid))
        return kids

    code = "import time, dedup; dedup.map_tasks(time.sleep, [60, 60], 2)"
    parent = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT)
    workers = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.2)
            workers = children(parent.pid)
        assert len(workers) == 2, workers
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 5
        while any(state(w) not in (None, 'Z') for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert all(state(w) in (None, 'Z') for w in workers), [(w, state(w)) for w in workers]
    finally:
        for w in workers:  # our own test's processes, if the check failed
            if state(w) not in (None, 'Z'):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()

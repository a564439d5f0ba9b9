"""
Tests of bpe.py: the course's reference merges, tiktoken equality, streaming, special tokens, files, bad input.

    python -m pytest tests/test_bpe.py -v
"""
import glob
import gzip
import json
import signal
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

import bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADVERSARIAL = [
    '',
    ' ',
    '\n\n\n',
    'hello 🌍 world 👋🏽 👨‍👩‍👧 naïve café 日本語の文章 Ελληνικά مرحبا бумага',
    ' ' * 50 + 'x   \n\n\n  y\t\t\n' + ' ' * 7,
    "I'll don't we've they're it's 'LL 'S '''s",
    '<|endoftext|>\n\nhello<|endoftext|><|endoftext|>\n\n',
    '<|endoftext|',
    '\u00a0\u2003 x \r\n\r\n y\x0b\x0c\x85',
    'x  \ny   \n\nz \t\n',
    '1234567890 3.14159 1e-9 0x1F',
    'ﬁ ÅÅ 한국어 ❤️ \U0001f600\U0001f600',
]


@pytest.fixture(scope='module')
def gpt2(data_dir):
    a1 = os.path.join(data_dir, 'a1')
    return bpe.Tokenizer.from_files(os.path.join(a1, 'gpt2_vocab.json'), os.path.join(a1, 'gpt2_merges.txt'),
                                    ['<|endoftext|>'])


@pytest.fixture(scope='module')
def tiktoken_gpt2(data_dir):
    tiktoken = pytest.importorskip('tiktoken')
    return tiktoken.get_encoding('gpt2')


@pytest.fixture(scope='module')
def a1_texts(data_dir):
    a1 = os.path.join(data_dir, 'a1')
    paths = sorted(glob.glob(os.path.join(a1, '*.txt'))) + [os.path.join(a1, 'corpus.en')]
    paths = [p for p in paths if 'merges' not in p]  # gpt2_merges.txt and the reference merges are not texts
    return {os.path.basename(p): open(p, encoding='utf-8').read() for p in paths}


@pytest.fixture(scope='module')
def reference_run(data_dir):
    a1 = os.path.join(data_dir, 'a1')
    return bpe.train_bpe(os.path.join(a1, 'corpus.en'), 500, ['<|endoftext|>'], progress=False)


# -----------------------------------------------------------------------------
# training

def test_reference_merges_and_vocab(data_dir, reference_run):
    a1 = os.path.join(data_dir, 'a1')
    vocab, merges = reference_run
    with open(os.path.join(a1, 'train-bpe-reference-merges.txt'), encoding='utf-8') as f:
        ref_merges = [tuple(bpe._from_printable(t) for t in line.rstrip('\n').split(' ')) for line in f]
    assert merges == ref_merges
    with open(os.path.join(a1, 'train-bpe-reference-vocab.json'), encoding='utf-8') as f:
        ref_vocab = {bpe._from_printable(t) for t in json.load(f)}
    assert set(vocab.values()) == ref_vocab
    assert len(vocab) == 500 and vocab[0] == b'<|endoftext|>'  # specials first, as in the reference


def test_chunked_parallel_training_is_identical(data_dir, reference_run, monkeypatch):
    # tiny chunks force many cuts and both workers; the result must not depend on where the file was cut
    monkeypatch.setattr(bpe, 'CHUNK_BYTES', 4096)
    cuts = bpe.find_chunk_boundaries(os.path.join(data_dir, 'a1', 'corpus.en'))
    assert len(cuts) > 20
    vocab, merges = bpe.train_bpe(os.path.join(data_dir, 'a1', 'corpus.en'), 500, ['<|endoftext|>'],
                                  num_workers=2, progress=False)
    assert (vocab, merges) == reference_run


def test_chunk_cuts_keep_pretokens(tmp_path, monkeypatch):
    # the footgun in CHUNK_CUT_RE: a cut after '  \n' would change the whitespace run before it
    rng = random.Random(0)
    text = ''.join(rng.choice(['ab', ' ', '\n', '  \n', 'x\ny', '\t', 'é', "'ll"]) for _ in range(20000))
    p = tmp_path / 't.txt'
    p.write_text(text, encoding='utf-8')
    monkeypatch.setattr(bpe, 'CHUNK_BYTES', 512)
    cuts = bpe.find_chunk_boundaries(str(p))
    assert len(cuts) > 10
    whole = bpe.count_pretokens(str(p), [], num_workers=1, progress=False)
    assert whole == bpe.count_pretokens(str(p), [], num_workers=2, progress=False)


def test_tie_break_prefers_greater_pair(tmp_path):
    # the example: the heap's order key makes max(("A","B"), ("A","C"), ("B","ZZ"), ("BA","A")) come first
    pairs = [(b'A', b'B'), (b'A', b'C'), (b'B', b'ZZ'), (b'BA', b'A')]
    assert min(pairs, key=lambda p: (bpe._order_key(p[0]), bpe._order_key(p[1]))) == (b'BA', b'A')
    # pre-tokens 'ab' and ' ba': pairs (a,b), (' ',b), (b,a) once each -> the greatest, (b, a), wins
    p = tmp_path / 't.txt'
    p.write_text('ab ba', encoding='utf-8')
    _, merges = bpe.train_bpe(str(p), 256 + 2, [], progress=False)
    assert merges == [(b'b', b'a'), (b'a', b'b')]  # then (a,b) and (' ',ba) tie: 'a' > ' '


def test_special_tokens_never_merge(tmp_path):
    p = tmp_path / 't.txt'
    p.write_text('<|endoftext|>'.join(['hello world'] * 50), encoding='utf-8')
    vocab, merges = bpe.train_bpe(str(p), 300, ['<|endoftext|>'], progress=False)
    assert not any(b'<|' in t or b'|>' in t for i, t in vocab.items() if i != 0)


# -----------------------------------------------------------------------------
# encoding with GPT-2's merges == tiktoken

def test_tiktoken_equality_on_shared_texts(gpt2, tiktoken_gpt2, a1_texts):
    assert len(a1_texts) >= 6
    for name, text in a1_texts.items():
        ids = gpt2.encode(text)
        assert ids == tiktoken_gpt2.encode(text, allowed_special='all'), name
        assert gpt2.decode(ids) == text, name


@pytest.mark.parametrize('text', ADVERSARIAL)
def test_tiktoken_equality_adversarial(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special='all')
    assert gpt2.decode(ids) == text


def _bpe_scan(tok, word):
    """The reference BPE inside one pre-token: rescan every pair, merge the lowest rank everywhere, repeat (O(n^2))."""
    ids = [tok.byte_ids[c] for c in word.encode()]
    while True:
        ranked = [(tok.merge_ranks[p], p) for p in zip(ids, ids[1:]) if p in tok.merge_ranks]
        if not ranked:
            return tuple(ids)
        (_, new), (a, b) = min(ranked)
        ids = list(bpe._merge_word(ids, a, b, new))


def test_long_pretokens_heap_bpe(gpt2, tiktoken_gpt2):
    # Tokenizer._bpe is a heap over a linked list; it must agree with the O(n^2) scan and with tiktoken
    rng = random.Random(0)
    words = [''.join(rng.choice('aeiouthnrsl') for _ in range(rng.randint(2, 300))) for _ in range(50)]
    for w in words:
        heap = gpt2._bpe(w)
        assert heap == _bpe_scan(gpt2, w) and list(heap) == tiktoken_gpt2.encode_ordinary(w)
    for text in ('=' * 20000, 'ab' * 5000, ' ' + 'x' * 3000 + '!'):
        assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_gpt2_special_and_sizes(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.special_token_ids == {'<|endoftext|>': 50256}
    assert gpt2.encode('<|endoftext|>') == [50256]


# -----------------------------------------------------------------------------
# streaming

def _random_pieces(text, rng, max_len):
    i, out = 0, []
    while i < len(text):
        k = rng.randint(1, max_len)
        out.append(text[i:i + k])
        i += k
    return out


def test_encode_iterable_matches_encode(gpt2, a1_texts):
    rng = random.Random(0)
    texts = list(a1_texts.values()) + ADVERSARIAL + ['\n'.join(ADVERSARIAL) * 5]
    for text in texts:
        expected = gpt2.encode(text)
        # small buffers make every piece boundary a possible cut point
        for buf, max_len in ((1, 3), (8, 11), (64, 200)):
            got = list(gpt2.encode_iterable(_random_pieces(text, rng, max_len), buffer_chars=buf))
            assert got == expected, (text[:50], buf, max_len)


def test_encode_iterable_streams_lines_that_end_in_non_ascii(gpt2):
    """Lines ending in '。' (CJK text) still have safe cuts: ids come out long before the stream ends (bounded memory),
    and they are encode()'s ids."""
    lines = ['这是第%d个句子。\n' % i for i in range(2000)]
    consumed = []

    def stream():
        for i, line in enumerate(lines):
            consumed.append(i)
            yield line
    ids = gpt2.encode_iterable(stream(), buffer_chars=100)
    first = next(ids)
    assert len(consumed) < 50, f"the first id came only after {len(consumed)} of {len(lines)} lines"
    assert [first, *ids] == gpt2.encode(''.join(lines))


def test_encode_iterable_over_file(gpt2, data_dir):
    path = os.path.join(data_dir, 'a1', 'tinystories_sample.txt')
    with open(path, encoding='utf-8') as f:
        expected = gpt2.encode(f.read())
    with open(path, encoding='utf-8') as f:
        assert list(gpt2.encode_iterable(f, buffer_chars=100)) == expected


# -----------------------------------------------------------------------------
# special tokens

def test_overlapping_special_tokens_longest_wins(gpt2):
    specials = ['<|endoftext|>', '<|endoftext|><|endoftext|>']
    tok = bpe.Tokenizer(gpt2.vocab, _gpt2_merges(gpt2), specials)
    double = tok.special_token_ids['<|endoftext|><|endoftext|>']
    single = tok.special_token_ids['<|endoftext|>']
    assert double == 50257 and single == 50256
    text = 'a<|endoftext|><|endoftext|>b<|endoftext|>c<|endoftext|><|endoftext|><|endoftext|>'
    ids = tok.encode(text)
    assert ids.count(double) == 2 and ids.count(single) == 2
    assert tok.decode(ids) == text
    rng = random.Random(1)
    assert list(tok.encode_iterable(_random_pieces(text, rng, 4), buffer_chars=1)) == ids


def test_no_special_tokens_means_plain_text(gpt2):
    tok = bpe.Tokenizer(gpt2.vocab, _gpt2_merges(gpt2))
    ids = tok.encode('<|endoftext|>')
    assert len(ids) > 1 and tok.decode(ids) == '<|endoftext|>' and tok.eot_id is None


def _gpt2_merges(tok):
    return [(tok.vocab[a], tok.vocab[b]) for (a, b), _ in sorted(tok.merge_ranks.items(), key=lambda kv: kv[1][0])]


# -----------------------------------------------------------------------------
# files and round trips

def test_save_load_round_trip(tmp_path, reference_run, a1_texts):
    vocab, merges = reference_run
    bpe.save_tokenizer(vocab, merges, ['<|endoftext|>'], str(tmp_path / 'tok'))
    assert sorted(os.listdir(tmp_path / 'tok')) == ['merges.txt', 'special_tokens.json', 'vocab.json']
    tok = bpe.Tokenizer.from_dir(str(tmp_path / 'tok'))
    assert tok.vocab == vocab and _gpt2_merges(tok) == merges and tok.eot_id == 0 and tok.vocab_size == 500
    text = a1_texts['tinystories_sample.txt'] + '<|endoftext|>' + ADVERSARIAL[3]
    assert tok.decode(tok.encode(text)) == text
    # arbitrary bytes survive the printable encoding, including tokens that are not valid UTF-8
    weird = {i: bytes([i]) for i in range(256)}
    weird[256] = b'\xff\xfe \n'
    weird[257] = b'\xff\xfe \n\x00'
    weird[258] = b'\xff\xfe'
    bpe.save_tokenizer(weird, [(b'\xff', b'\xfe'), ], [], str(tmp_path / 'w'))
    w = bpe.Tokenizer.from_dir(str(tmp_path / 'w'))
    assert w.vocab == weird and w.encode('\n') == [10]
    with pytest.raises(ValueError, match='not in the vocab'):
        bpe.Tokenizer(weird, [(b'\xfe', b'\xff')])


def test_encode_file_matches_encode(tmp_path, monkeypatch, reference_run, a1_texts):
    vocab, merges = reference_run
    bpe.save_tokenizer(vocab, merges, ['<|endoftext|>'], str(tmp_path / 'tok'))
    tok = bpe.Tokenizer.from_dir(str(tmp_path / 'tok'))
    text = '\n<|endoftext|>\n'.join(a1_texts.values())
    src = tmp_path / 'docs.txt'
    src.write_text(text, encoding='utf-8')
    monkeypatch.setattr(bpe, 'CHUNK_BYTES', 8192)
    for workers in (1, 2):
        out = tmp_path / f'docs{workers}.bin'
        stats = bpe.encode_file(str(tmp_path / 'tok'), str(src), str(out), num_workers=workers, progress=False)
        assert stats['dtype'] == 'uint16' and stats['n_bytes'] == src.stat().st_size
        ids = np.fromfile(out, dtype=np.uint16)
        assert len(ids) == stats['n_tokens'] and ids.tolist() == tok.encode(text)
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_encode_file_uses_uint32_for_big_vocab(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({i: b'#%d' % i for i in range(256, 70000)})  # filler: a vocab over 65,536 ids
    vocab[69999] = b'xx'
    merges = [(b'x', b'x')]
    bpe.save_tokenizer(vocab, merges, ['<|endoftext|>'], str(tmp_path / 'big'))
    src = tmp_path / 't.txt'
    src.write_text('x' * 10 + ' yy<|endoftext|>', encoding='utf-8')
    stats = bpe.encode_file(str(tmp_path / 'big'), str(src), str(tmp_path / 'o.bin'), num_workers=1, progress=False)
    assert stats['dtype'] == 'uint32'
    ids = np.fromfile(tmp_path / 'o.bin', dtype=np.uint32)
    assert ids[-1] == 70000 and ids[0] == 69999  # the special token was added after the last id
    assert bpe.Tokenizer.from_dir(str(tmp_path / 'big')).decode(ids.tolist()) == src.read_text(encoding='utf-8')


def test_cli_train_and_encode(tmp_path, data_dir):
    corpus = os.path.join(data_dir, 'a1', 'corpus.en')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'bpe.py'), f'--input={corpus}', '--vocab_size=300',
                        f'--out_dir={tmp_path / "tok"}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'summary:' in r.stdout and 'longest token' in r.stdout
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'bpe.py'), '--mode=encode', f'--tokenizer_dir={tmp_path / "tok"}',
                        f'--input={corpus}', f'--output={tmp_path / "c.bin"}', '--num_workers=1'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    tok = bpe.Tokenizer.from_dir(str(tmp_path / 'tok'))
    assert np.fromfile(tmp_path / 'c.bin', dtype=np.uint16).tolist() == tok.encode(open(corpus).read())
    for args in ([f'--input={corpus}', '--vocab_size=280', f'--out_dir={tmp_path / "tok"}'],  # newuser 11: on request
                 ['--mode=encode', f'--tokenizer_dir={tmp_path / "tok"}', f'--input={corpus}',
                  f'--output={tmp_path / "c.bin"}']):
        r = subprocess.run([sys.executable, os.path.join(ROOT, 'bpe.py'), '--overwrite=True', '--num_workers=1'] + args,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert bpe.Tokenizer.from_dir(str(tmp_path / 'tok')).vocab_size == 280


def test_copy_alone_trains_from_its_globals(tmp_path):
    """issue 29: bpe.py copied alone into an empty folder (no configurator.py, no repo on the path) imports without
    running anything, and `bpe.<key> = ...; bpe.main()` trains a tokenizer from those globals."""
    shutil.copy(os.path.join(ROOT, 'bpe.py'), tmp_path / 'bpe.py')
    text = 'the low lower lowest newer newest wider\n' * 200 + '<|endoftext|>' + "it's the widest, isn't it?\n" * 50
    (tmp_path / 'text.txt').write_text(text, encoding='utf-8')
    code = ("import bpe; bpe.input = 'text.txt'; bpe.vocab_size = 280; bpe.out_dir = 'tok'; bpe.num_workers = 1; "
            "bpe.main()")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'summary:' in r.stdout and 'vocab 280' in r.stdout and 'warning' not in r.stderr
    assert sorted(os.listdir(tmp_path / 'tok')) == ['merges.txt', 'special_tokens.json', 'vocab.json']
    tok = bpe.Tokenizer.from_dir(str(tmp_path / 'tok'))
    assert tok.vocab_size == 280 and tok.eot_id == 0 and tok.decode(tok.encode(text)) == text
    assert len(tok.encode('the lowest widest')) < len('the lowest widest') / 2  # merges learned from the text
    r = subprocess.run([sys.executable, '-c', 'import bpe'], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == '' and sorted(os.listdir(tmp_path)) == ['bpe.py', 'text.txt', 'tok']


def test_local_gz_is_decompressed_into_raw_dir_not_beside_it(tmp_path):
    """newuser 1: a local .gz (maybe in the read-only shared data) is decompressed into raw_dir/<split>/, never next
    to it; a .gz replaced since (another mtime) is decompressed again instead of using the old copy."""
    src = tmp_path / 'shared'
    src.mkdir()
    gz = src / 'docs.txt.gz'
    gz.write_bytes(gzip.compress(b'old text\n'))
    splits, _ = bpe.text_splits(str(gz), str(gz), {}, str(tmp_path / 'raw'), 'x', None)
    assert os.listdir(src) == ['docs.txt.gz']
    assert splits == {s: str(tmp_path / 'raw' / s / 'docs.txt') for s in ('train', 'val')}
    assert open(splits['train']).read() == 'old text\n' and not glob.glob(str(tmp_path / 'raw' / '*' / '*.tmp*'))
    gz.write_bytes(gzip.compress(b'new text\n'))
    os.utime(gz, ns=(gz.stat().st_atime_ns, gz.stat().st_mtime_ns + 10**9))
    splits, _ = bpe.text_splits(str(gz), str(gz), {}, str(tmp_path / 'raw'), 'x', None)
    assert open(splits['val']).read() == 'new text\n' and os.listdir(src) == ['docs.txt.gz']


def test_killed_build_leaves_no_temp_file_after_a_rerun(tmp_path):
    """newuser 12: a prepare killed while writing train.bin leaves a temporary file; the rerun must not keep it."""
    bpe.save_tokenizer({i: bytes([i]) for i in range(256)}, [], ['<|endoftext|>'], str(tmp_path / 'tok'))
    docs, out = ['some text %d' % i for i in range(100)], str(tmp_path / 'out')
    code = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r}); import bpe\n"
            "def dying(fn, jobs, n, ordered=True):\n"
            "    yield fn(jobs[0])\n"
            "    os.kill(os.getpid(), signal.SIGKILL)  # killed with half of train.bin written\n"
            "bpe.parallel_map = dying\n"
            f"bpe.build_token_folder({{'train': {docs!r}, 'val': ['v']}}, {out!r}, 300, 's', {str(tmp_path / 'tok')!r},"
            " progress=False)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL and glob.glob(os.path.join(out, 'train.bin.tmp*')), r.stderr
    meta = bpe.build_token_folder({'train': docs, 'val': ['v']}, out, 300, 's', str(tmp_path / 'tok'), progress=False)
    assert meta['complete'] and sorted(os.listdir(out)) == ['meta.json', 'train.bin', 'val.bin']


# -----------------------------------------------------------------------------
# bad input

def test_bad_input(tmp_path, gpt2):
    with pytest.raises(FileNotFoundError, match='not found'):
        bpe.train_bpe(str(tmp_path / 'missing.txt'), 300, [])
    p = tmp_path / 't.txt'
    p.write_text('hello', encoding='utf-8')
    with pytest.raises(ValueError, match='at least 256 bytes'):
        bpe.train_bpe(str(p), 256, ['<|endoftext|>'])
    with pytest.raises(ValueError, match='non-empty'):
        bpe.train_bpe(str(p), 300, [''])
    with pytest.raises(ValueError, match='non-empty'):
        bpe.Tokenizer(gpt2.vocab, [], [''])
    with pytest.raises(ValueError, match='without a newline'):  # a chunk cut at its newline would split it
        bpe.train_bpe(str(p), 300, ['<|a\nb|>'])
    with pytest.raises(ValueError, match='cannot decode id 50257'):
        gpt2.decode([1, 50257])
    with pytest.raises(ValueError, match='cannot decode id -1'):
        gpt2.decode([-1])
    with pytest.raises(FileNotFoundError, match='train a tokenizer first'):
        bpe.Tokenizer.from_dir(str(tmp_path / 'nothing'))
    with pytest.raises(FileNotFoundError, match='not found'):
        bpe.encode_file(str(tmp_path), str(tmp_path / 'missing.txt'), str(tmp_path / 'o.bin'))


def test_invalid_utf8_is_replaced_with_warning(tmp_path, capsys):
    p = tmp_path / 'bad.txt'
    p.write_bytes(b'caf\xe9 ok ok ok \xff\xfe ok')
    vocab, merges = bpe.train_bpe(str(p), 260, [], progress=False)
    # 3 replacements (\xe9, \xff, \xfe); U+FFFD is then learned like any other text: ef bf bd
    assert 'not valid UTF-8: 3 bad byte sequence(s)' in capsys.readouterr().err
    assert merges == [(b'o', b'k'), (b' ', b'ok'), (b'\xef', b'\xbf'), (b'\xef\xbf', b'\xbd')]
    # decode of ids that cut a character in half shows U+FFFD instead of failing
    tok = bpe.Tokenizer(vocab, merges)
    assert tok.decode(tok.encode('é')[:1]) == '\ufffd'


# -----------------------------------------------------------------------------
# bad input on the command line (issue 32): exit code 2, one line on stderr, nothing written or changed

def snapshot(folder):
    """{path: (size, mtime)} of every file under folder: what a refused command must leave as it was."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(folder) for f in files}


def assert_refused(args, cwd, env=None):
    """Run a command that must refuse: exit code 2, exactly one non-empty stderr line (no traceback), and no file
    under cwd written or changed. Returns the line."""
    before = snapshot(cwd)
    r = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, (args, r.returncode, r.stderr)
    assert snapshot(cwd) == before, args
    return lines[0]


@pytest.fixture
def cli_folder(tmp_path):
    (tmp_path / 'text.txt').write_text('hello world, hello there\n' * 50, encoding='utf-8')
    (tmp_path / 'empty.txt').write_text('', encoding='utf-8')
    bpe.save_tokenizer({i: bytes([i]) for i in range(256)}, [], ['<|endoftext|>'], str(tmp_path / 'tok'))
    (tmp_path / 'half').mkdir()  # a tokenizer folder without its vocab.json
    (tmp_path / 'half' / 'merges.txt').write_text('', encoding='utf-8')
    bpe.save_tokenizer({i: bytes([i]) for i in range(256)}, [], [], str(tmp_path / 'cut'))
    (tmp_path / 'cut' / 'vocab.json').write_text('{"a": 0, "b', encoding='utf-8')  # truncated
    return tmp_path


BPE_BAD = [  # (arguments, a piece of the one-line message)
    (['--input=empty.txt', '--out_dir=out'], 'empty'),
    (['--input=missing.txt', '--out_dir=out'], 'no such file'),
    (['--input=text.txt', '--num_workers=-3'], '--num_workers=-3'),
    (['--input=text.txt', '--vocab_size=100', '--out_dir=out'], 'vocab_size=100 is too small'),
    (['--input=text.txt', "--special_tokens=['']", '--out_dir=out'], 'non-empty'),
    (['--input=text.txt', '--out_dir=text.txt'], 'is a file'),
    (['--input=tok/vocab.json', '--out_dir=tok'], 'would overwrite an input'),
    (['--mode=decode', '--input=text.txt'], "use 'train' or 'encode'"),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=nothing', '--output=o.bin'], 'and merges.txt'),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=half', '--output=o.bin'], 'holds no vocab.json'),  # 7b
    (['--input=text.txt', '--out_dir=tok'], '--out_dir=\'tok\' holds a tokenizer: give --overwrite=True'),  # 11
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=tok', '--output=empty.txt'], 'give --overwrite=True'),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=tok', '--output=text.txt'], 'would overwrite an input'),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=tok', '--output=tok/vocab.json'], 'overwrite an input'),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=tok'], '--output'),
    (['--mode=encode', '--input=text.txt', '--tokenizer_dir=cut', '--output=o.bin'], 'is not a token -> id map'),
]


@pytest.mark.parametrize('args, message', BPE_BAD, ids=[' '.join(a) for a, _ in BPE_BAD])
def test_cli_refuses_bad_input(cli_folder, args, message):
    line = assert_refused([os.path.join(ROOT, 'bpe.py')] + args, cli_folder)
    assert line.startswith(os.path.join(ROOT, 'bpe.py') + ': error: ') and message in line, line


def test_cli_says_when_the_text_runs_out_of_pairs(cli_folder):
    # not a refusal: the tokenizer is written, and one warning line says which size was reached
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'bpe.py'), '--input=text.txt', '--vocab_size=5000',
                        '--out_dir=out'], cwd=cli_folder, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'ran out of pairs' in r.stderr and 'not vocab_size=5000' in r.stderr
    assert bpe.Tokenizer.from_dir(str(cli_folder / 'out')).vocab_size < 5000

"""
dedup.py: exact line deduplication and fuzzy document deduplication (MinHash + LSH), on one
machine or scaled out through Ray.

Web text repeats itself: cookie banners and menus on every page (exact duplicate *lines*), and the
same article mirrored with a different header (near-duplicate *documents*). Training on repeats
wastes compute and encourages memorization (Lee et al. 2022, "Deduplicating Training Data Makes
Language Models Better"). This file does both kinds of deduplication, as CS336 assignment 4 asks:

1) exact_line_dedup: count every line of the corpus keyed by a 64-bit hash of the line (8 bytes a
   line, not the line itself), then rewrite each file keeping only the lines seen exactly once.
2) minhash_dedup: Broder's MinHash (1997) estimates the Jaccard similarity of two documents' word
   n-gram sets from short signatures; locality-sensitive hashing (LSH, Indyk & Motwani 1998; MMDS
   book ch. 3) cuts each signature into bands so that only documents sharing a band become
   *candidates*; candidates are checked with their **true** Jaccard similarity; duplicates are
   clustered with union-find and one document per cluster survives.

Notable features:
- Vectorized MinHash: one 64-bit hash per word (cached per distinct word), n-gram hashes combined
  in numpy, then all num_hashes "permutations" at once as multiply-add-shift universal hashing
  (Dietzfelbinger 1996) on a (num_hashes, n-grams) uint64 block. No Python call per n-gram per hash.
- Streaming over files in shards, signatures computed in a process pool, band buckets kept in
  memory or spilled to disk in hash partitions (the same shuffle that the Ray engine runs).
- One document per file (outputs keep their names; removed documents get no output file) or
  JSONL, one document per line (each output file keeps its surviving lines).
- Resumable: each shard's signatures are saved; an interrupted run picks up where it stopped.
- --engine=ray runs every stage as Ray tasks (same functions as the local engine) and gives the
  same result; ray is imported only on that path.
- The S-curve helper prints P(candidate | Jaccard s) = 1 - (1 - s^r)^b and picks (bands, rows).
- --mode=bench compares against datasketch side by side on a corpus with planted near-duplicates.

Run:
    python dedup.py --mode=exact --inputs=../shared/data/a4/documents_with_line_duplicates --output_dir=out/lines
    python dedup.py --inputs=corpus/ --output_dir=out/dedup --jaccard_threshold=0.8
    python dedup.py --inputs='data/*.jsonl' --output_dir=out/dedup --engine=ray --ray_address=auto
    python dedup.py --mode=curve --num_hashes=128 --jaccard_threshold=0.8   # table + results/dedup_s_curve.png
    python dedup.py --mode=bench            # vs datasketch -> results/dedup_bench.md (--bench_large=False skips 100k)
    python dedup.py --mode=bench_ray --bench_docs=5000   # local pool vs Ray, 2 workers -> results/dedup_ray.md
As a library:
    from dedup import exact_line_dedup, minhash_dedup, minhash_near_duplicates
"""
import glob
import hashlib
import json
import os
import shutil
import string
import sys
import time
import unicodedata

import numpy as np
import regex

# -----------------------------------------------------------------------------
# what to do
mode = 'minhash'  # 'minhash' (fuzzy docs) | 'exact' (lines) | 'curve' (S-curve helper) | 'bench' | 'bench_ray'
inputs = ''  # a folder (every file in it, recursively), a glob ('data/*.jsonl'), or a comma-separated list of files
output_dir = 'out/dedup'  # outputs keep their input file names here
# minhash + lsh
num_hashes = 128  # MinHash signature length (number of hash "permutations")
num_bands = 0  # LSH bands (must divide num_hashes); 0 = pick for jaccard_threshold with the S-curve helper
ngrams = 5  # n-gram length in words
jaccard_threshold = 0.8  # candidate pairs with true Jaccard >= this are duplicates
seed = 0  # seeds the hash functions and the choice of the surviving document of each cluster
max_bucket = 200  # an LSH bucket bigger than this links its documents to its first one only (star), not all pairs
text_key = 'text'  # JSONL inputs (*.jsonl): the field that holds the document text
# scale
num_workers = 0  # processes for signatures, verification and writing; 0 = os.cpu_count()
shard_docs = 1000  # documents (files) per signature shard in one-file-per-document mode; JSONL: one file per shard
spill = False  # True = band buckets go to disk in hash partitions (corpora whose buckets outgrow memory)
num_partitions = 16  # hash partitions of the band buckets (spill mode and the Ray shuffle)
engine = 'local'  # 'local' (process pool) | 'ray' (Ray tasks; pip install ray)
ray_address = ''  # '' = start a local Ray instance; 'auto' = the running cluster; 'ray://host:10001' = a remote one
progress = True  # tqdm progress bars
# bench
bench_docs = 10000  # base size of the benchmark corpus (documents, ~500 words each, with planted near-duplicates)
bench_large = True  # also time the 10x larger corpus (100k documents) to show how time grows
bench_out = 'results/dedup_bench.md'  # where --mode=bench writes its table
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

SIG_EMPTY = np.uint32(0xFFFFFFFF)  # the signature of a document without n-grams (never a candidate)


# =============================================================================
# Normalization and n-gram hashing
# =============================================================================
# The course's normalization: lowercase, remove punctuation, normalize whitespace, remove accents,
# Unicode NFD. normalize_words is the readable reference; the fast path (_normalized_bytes and
# _batch_word_hashes) gives the same words without creating one Python object per word:
# ASCII text (most of the web) is lowercased and stripped of string.punctuation by one C call,
# bytes.translate; other text goes through NFD, lower(), then the few non-ASCII runs lose their
# combining marks (the accents NFD split off) and punctuation/symbols (Unicode P* and S*).
# For ASCII, P* and S* are exactly string.punctuation, so both paths agree (tests check it).
_MARKS_PUNCT = regex.compile(r'[\p{M}\p{P}\p{S}]+')


def normalize_words(text):
    """The normalized words of a document: list[str] (the reference implementation)."""
    text = unicodedata.normalize('NFD', text)
    return _MARKS_PUNCT.sub('', text.lower()).split()


def normalize_text(text):
    """Normalized text: 'Héllo,  World!' -> 'hello world'."""
    return ' '.join(normalize_words(text))


# bytes.translate table: ASCII upper -> lower; every ASCII separator of str.split() -> b' '
_SEPARATORS = b'\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f'
_LOWER = bytes(range(256)).translate(bytes.maketrans(string.ascii_uppercase.encode() + _SEPARATORS,
                                                     string.ascii_lowercase.encode() + b' ' * len(_SEPARATORS)))
_PUNCT_BYTES = string.punctuation.encode()
_NON_ASCII = regex.compile(rb'[\x80-\xff]+')  # a run of non-ASCII characters, in UTF-8 bytes


class _Cache(dict):
    """A per-process cache. Pickles as an empty one: when Ray ships this module's functions by value,
    their globals go along, and a warm cache (or the power tables below) would add megabytes per task."""
    def __reduce__(self):
        return (type(self), ())


_FIXED_RUNS = _Cache()  # non-ASCII run -> its normalized bytes (web text repeats the same few: quotes, dashes)


def _fix_non_ascii(m):
    run = m.group()
    fixed = _FIXED_RUNS.get(run)
    if fixed is None:
        # NFD and lower() per run equal doing them on the whole text: decomposition is per character, and
        # the only reordering NFD does is among combining marks, which we delete anyway
        s = _MARKS_PUNCT.sub('', unicodedata.normalize('NFD', run.decode('utf-8', errors='replace')).lower())
        fixed = ''.join(' ' if c.isspace() else c for c in s).encode('utf-8')  # Unicode spaces split words
        if len(_FIXED_RUNS) < 100_000:
            _FIXED_RUNS[run] = fixed
    return fixed


def _normalized_bytes(text):
    """Normalized UTF-8 bytes of a document; words are separated by b' ' (one or more).
    ASCII is lowercased and stripped of punctuation by one bytes.translate (C speed); only the few,
    short runs of non-ASCII bytes go through Unicode NFD, lower() and the marks/punctuation regex."""
    data = text.encode('utf-8', errors='replace')
    if len(data) != len(text):  # some non-ASCII characters
        data = _NON_ASCII.sub(_fix_non_ascii, data)
    return data.translate(_LOWER, _PUNCT_BYTES)  # after the runs: NFD can yield ASCII ('É' -> 'E' + accent)


_BASE = 0x100000001B3 * 2 + 1  # odd, so invertible mod 2^64: the multiplier of the polynomial word hash
_POWERS = _Cache()  # 'pow': _BASE^i mod 2^64 and 'inv': _BASE^-i mod 2^64, grown on demand
# odd 64-bit constants that weigh the words of an n-gram by position (so 'a b' != 'b a')
_POS_MULT = np.random.default_rng(0x6E6772616D).integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + 1


def _mix64(z):
    """splitmix64's finalizer: a bijection on uint64 that spreads every input bit over the output."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pow_tables(n):
    """(BASE^i, BASE^-i) mod 2^64 for i < n (at least), grown geometrically and kept."""
    if n > len(_POWERS.get('pow', ())):
        m = max(n, 1 << 21)  # 16 MB per table covers a 1 MB group with room to spare
        for key, base in (('pow', _BASE), ('inv', pow(_BASE, -1, 2**64))):
            t = np.ones(1, np.uint64)
            while len(t) < m:  # doubling: t[k:2k] = t[0:k] * base^k, 21 vectorized steps, not 2M serial ones
                t = np.concatenate([t, t * np.uint64(pow(base, len(t), 2**64))])
            _POWERS[key] = t
    return _POWERS['pow'], _POWERS['inv']


def _batch_word_hashes(texts):
    """Word hashes of a batch of documents, vectorized over bytes (no Python object per word).
    A word's hash is mix64(sum_i (byte_i + 1) * BASE^i mod 2^64), a polynomial hash of its UTF-8 bytes,
    computed for all words at once from one prefix sum: with S[j] = sum_{k<j} (byte_k + 1) BASE^k,
    the word [s, e) hashes to (S[e] - S[s]) * BASE^-s (Karp-Rabin fingerprints, mod 2^64).
    Returns (w (W,) uint64 in document order, counts (D,) int64 words per document)."""
    parts = [_normalized_bytes(t) for t in texts]
    buf = b' '.join(parts)  # a space between documents, so no word straddles two
    D = len(texts)
    N = len(buf)
    if N == 0:
        return np.zeros(0, np.uint64), np.zeros(D, np.int64)
    arr = np.frombuffer(buf, dtype=np.uint8)  # (N,)
    # words are the runs of non-space bytes (normalization turned every separator into b' ')
    inword = np.zeros(N + 2, bool)
    np.not_equal(arr, 32, out=inword[1:-1])
    edges = np.flatnonzero(inword[1:] != inword[:-1])  # where a word starts or ends
    starts, ends = edges[0::2], edges[1::2]  # (W,), (W,)
    if len(starts) == 0:
        return np.zeros(0, np.uint64), np.zeros(D, np.int64)
    pw, ipw = _pow_tables(N + 1)
    S = np.empty(N + 1, np.uint64)
    S[0] = 0
    c = arr.astype(np.uint64)  # (N,)
    np.multiply(c, pw[:N], out=c)
    np.add(c, pw[:N], out=c)  # (byte + 1) * BASE^k: the + 1 makes NUL bytes count
    np.cumsum(c, out=S[1:])  # wraps mod 2^64
    w = _mix64((S[ends] - S[starts]) * ipw[starts])
    doc_start = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])  # (D,) byte offset of each document
    doc = np.searchsorted(doc_start, starts, side='right') - 1
    return w, np.bincount(doc, minlength=D).astype(np.int64)


def _ngram_hashes_of_words(w, n):
    """w: (L,) uint64 word hashes of one document -> (max(L-n+1, 1),) uint64 n-gram hashes.
    A document shorter than n words is a single 'n-gram' of all its words; no words, no n-grams."""
    L = len(w)
    if L == 0:
        return np.zeros(0, np.uint64)
    m = min(n, L)
    g = w[0:L - m + 1] * _POS_MULT[0]
    for i in range(1, m):
        g = g + w[i:L - m + 1 + i] * _POS_MULT[i]  # uint64 arithmetic wraps mod 2^64 on purpose
    return _mix64(g)


def batch_ngram_hashes(texts, n):
    """The word n-gram hashes of a batch of documents: (X (N,) uint64 in document order, counts (D,))."""
    w, wc = _batch_word_hashes(texts)
    D = len(texts)
    if len(w) == 0:
        return w, np.zeros(D, np.int64)
    # n-grams over the concatenation, kept where all n words belong to one document
    wdoc = np.repeat(np.arange(D), wc)
    X = _ngram_hashes_of_words(w, n)
    gdoc = wdoc[:len(X)]
    if len(w) >= n:
        keep = wdoc[:len(w) - n + 1] == wdoc[n - 1:]
        X, gdoc = X[keep], gdoc[keep]
    else:
        X, gdoc = X[:0], gdoc[:0]
    short = np.flatnonzero((wc > 0) & (wc < n))  # documents shorter than n words: one n-gram of all words
    if len(short):
        wstart = np.cumsum(wc) - wc
        X = np.concatenate([X] + [_ngram_hashes_of_words(w[wstart[d]:wstart[d] + wc[d]], n) for d in short])
        gdoc = np.concatenate([gdoc, short])
        order = np.argsort(gdoc, kind='stable')
        X, gdoc = X[order], gdoc[order]
    return X, np.bincount(gdoc, minlength=D).astype(np.int64)


def ngram_set(text, n):
    """The document's set of word n-grams as sorted unique 64-bit hashes (for true Jaccard)."""
    return _sorted_unique(batch_ngram_hashes([text], n)[0])


def ngram_sets(texts, n):
    """ngram_set of many documents, hashed in 1 MB groups: list of sorted unique uint64 arrays."""
    out, i = [], 0
    while i < len(texts):
        j, size = i, 0
        while j < len(texts) and (j == i or size < _GROUP_CHARS):
            size += len(texts[j])
            j += 1
        X, counts = batch_ngram_hashes(texts[i:j], n)
        out += [_sorted_unique(x) for x in np.split(X, np.cumsum(counts)[:-1])]
        i = j
    return out


def verify_pairs(pairs, sets, threshold):
    """(P,) bool: true Jaccard of each candidate pair >= threshold. sets: doc id -> ngram_set."""
    return np.array([jaccard(sets[i], sets[j]) >= threshold for i, j in pairs.tolist()], dtype=bool)


def _sorted_unique(x):
    """np.unique for one document's few hundred hashes: sort + mask beats numpy 2's hash-based unique."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def jaccard(a, b):
    """True Jaccard similarity |A & B| / |A | B| of two sorted unique hash arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


# =============================================================================
# MinHash signatures, vectorized
# =============================================================================
# MinHash: for a random permutation pi of the n-gram universe, P[min pi(A) == min pi(B)] = J(A, B).
# We replace k permutations by k hash functions from a universal family, Dietzfelbinger et al.'s
# multiply-shift (1997) on w = 32 bits: h_a(x) = (a*x mod 2^32) >> (32 - M), a random odd, keys x
# the top 32 bits of the n-gram's (well mixed) 64-bit hash. The min over a document of the top-M-bit
# hash is the top M bits of min(a*x mod 2^32), so we keep the full 32-bit min (M = 32, a finer
# tie-break) and never shift. One uint32 multiply per (n-gram, hash): half the memory traffic of
# uint64, twice the SIMD lanes. tests/test_dedup.py checks the estimates' mean and variance.

def hash_params(num_hashes, seed):
    """(num_hashes, 1) uint32 odd multipliers: the seeded hash functions of the signature."""
    rng = np.random.default_rng([seed, 0x4D696E48])
    return (rng.integers(0, 2**31, size=num_hashes, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]


_CHUNK = 16384  # n-grams per block: a (num_hashes, _CHUNK) uint32 block is 8 MB at 128 hashes, cache-friendly


def minhash_signatures(texts, num_hashes, ngrams, seed, _params=None, return_ngrams=False):
    """texts: list of D documents -> (D, num_hashes) uint32 MinHash signatures.
    A document without words gets SIG_EMPTY everywhere. Works through the texts in groups of about
    1 MB, so that the per-byte arrays (8 bytes per input byte) stay in cache, not in RAM.
    return_ngrams=True also returns (X (N,) uint64, counts (D,)): every document's n-gram hashes,
    which in-memory callers keep for the true-Jaccard check instead of hashing the texts again."""
    params = _params if _params is not None else hash_params(num_hashes, seed)
    out, group, size = [], [], 0
    for t in texts:
        group.append(t)
        size += len(t)
        if size >= _GROUP_CHARS:
            out.append(_minhash_group(group, num_hashes, ngrams, params))
            group, size = [], 0
    if group or not out:
        out.append(_minhash_group(group, num_hashes, ngrams, params))
    sig = np.concatenate([o[0] for o in out])
    if return_ngrams:
        return sig, np.concatenate([o[1] for o in out]), np.concatenate([o[2] for o in out])
    return sig


_GROUP_CHARS = 1 << 20


def _minhash_group(texts, num_hashes, ngrams, params):
    """One ~1 MB group of documents -> (sig (D, k) uint32, X (N,) uint64 n-gram hashes, counts (D,))."""
    a = params
    D = len(texts)
    # 1) the n-gram hashes of every document, concatenated: X (N,), counts (D,)
    X64, counts = batch_ngram_hashes(texts, ngrams)
    sig = np.full((D, num_hashes), SIG_EMPTY, dtype=np.uint32)
    if len(X64) == 0:
        return sig, X64, counts
    X = (X64 >> np.uint64(32)).astype(np.uint32)  # 32-bit keys for multiply-shift
    has = np.nonzero(counts)[0]  # documents with at least one n-gram
    starts = (np.cumsum(counts) - counts)[has]  # where each of them begins in X
    buf = np.empty((num_hashes, _CHUNK), dtype=np.uint32)
    # 2) all hash functions on a block of n-grams at once, then the min over each document's part
    for s in range(0, len(X), _CHUNK):
        e = min(s + _CHUNK, len(X))
        blk = buf[:, :e - s]
        np.multiply(a, X[None, s:e], out=blk)  # (k, e-s), wraps mod 2^32
        first = np.searchsorted(starts, s, side='right') - 1  # the document that covers position s
        hi = np.searchsorted(starts, e, side='left')  # ... up to the last one starting before e
        seg = np.maximum(starts[first:hi] - s, 0)  # segment starts within the block
        mins = np.minimum.reduceat(blk, seg, axis=1)  # (k, segments)
        rows = has[first:hi]
        sig[rows] = np.minimum(sig[rows], mins.T)
    # a document without n-grams keeps SIG_EMPTY (all ones); one with n-grams reaching it is vanishingly rare
    return sig, X64, counts


# =============================================================================
# LSH: the S-curve, band keys, candidate pairs
# =============================================================================

def candidate_probability(s, bands, rows):
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^rows)^bands (MMDS 3.4)."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def choose_bands(num_hashes, threshold, min_recall=0.99):
    """Pick (bands, rows) with bands*rows == num_hashes for a target Jaccard threshold: the most rows
    (the steepest S-curve, fewest false candidates) that still makes a pair *at* the threshold a
    candidate with probability >= min_recall. Recall first, because every candidate is verified with
    its true Jaccard: a false candidate only costs time, a missed one is a duplicate left in.
    (datasketch's _optimal_param instead balances the false-positive and false-negative areas.)"""
    splits = [(b, num_hashes // b) for b in range(1, num_hashes + 1) if num_hashes % b == 0]
    ok = [(b, r) for b, r in splits if candidate_probability(threshold, b, r) >= min_recall]
    if ok:
        return max(ok, key=lambda br: br[1])
    return max(splits, key=lambda br: candidate_probability(threshold, *br))


def print_s_curve(num_hashes, threshold, min_recall=0.99):
    """Print P(candidate) vs Jaccard for every (bands, rows) split of num_hashes and the pick."""
    bands, rows = choose_bands(num_hashes, threshold, min_recall)
    js = [0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    print(f"P(candidate | Jaccard s) = 1 - (1 - s^r)^b, num_hashes={num_hashes}, threshold={threshold}")
    print(f"{'b x r':>9} {'(1/b)^(1/r)':>11} " + ' '.join(f"s={j:<5}" for j in js))
    for b in range(1, num_hashes + 1):
        if num_hashes % b:
            continue
        r = num_hashes // b
        mark = '  <- pick' if b == bands else ''
        ps = ' '.join(f"{p:7.4f}" for p in candidate_probability(js, b, r))
        print(f"{b:>4} x {r:<3} {(1 / b) ** (1 / r):11.3f} {ps}{mark}")
    return bands, rows


def plot_s_curve(num_hashes, threshold, path, min_recall=0.99):
    """Save the S-curves of every (bands, rows) split of num_hashes as a PNG, the pick in bold."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    bands, rows = choose_bands(num_hashes, threshold, min_recall)
    s = np.linspace(0, 1, 501)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in range(1, num_hashes + 1):
        if num_hashes % b == 0 and 1 < b < num_hashes:
            r = num_hashes // b
            ax.plot(s, candidate_probability(s, b, r), lw=3 if b == bands else 1,
                    label=f"{b} bands x {r} rows" + (' (pick)' if b == bands else ''))
    ax.axvline(threshold, color='k', ls='--', lw=1, label=f"threshold {threshold}")
    ax.set_xlabel('true Jaccard similarity s')
    ax.set_ylabel('P(candidate) = 1 - (1 - s^r)^b')
    ax.set_title(f"LSH S-curves, {num_hashes} hashes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=110)
    os.replace(path + '.tmp.png', path)
    plt.close(fig)
    print(f"wrote {path}")


_BAND_MULT = np.random.default_rng(0x62616E64).integers(1, 2**63, size=1024, dtype=np.uint64) * np.uint64(2) + 1


def band_keys(sig, bands):
    """(D, k) uint32 signatures -> (D, bands) uint64 bucket keys, one hash of each band's rows."""
    D, k = sig.shape
    rows = k // bands
    s = sig.astype(np.uint64).reshape(D, bands, rows)
    with np.errstate(over='ignore'):
        key = (s * _BAND_MULT[:rows]).sum(axis=2, dtype=np.uint64)  # wraps mod 2^64
        return _mix64(key + np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def bucket_pairs(key, doc, max_bucket):
    """Candidate pairs from bucket records: key (M,) uint64 (band already mixed in), doc (M,) int64.
    Documents with the same key share a bucket; a bucket of m <= max_bucket documents gives all its
    m(m-1)/2 pairs, a bigger one (usually a blob of exact copies) links each member to its smallest
    document only, so that a million copies cost a million pairs, not 5e11.
    Returns (P, 2) int64 pairs (i < j), unique, sorted."""
    if len(key) == 0:
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((doc, key))
    key, doc = key[order], doc[order]
    new = np.empty(len(key), bool)
    new[0] = True
    new[1:] = key[1:] != key[:-1]
    start = np.nonzero(new)[0]
    size = np.diff(np.append(start, len(key)))
    run_start = np.repeat(start, size)
    run_end = np.repeat(start + size, size)
    pos = np.arange(len(key))
    # small buckets: element at pos pairs with every later element of its bucket
    small = np.repeat(size <= max_bucket, size)
    cnt = np.where(small, run_end - pos - 1, 0)
    left = np.repeat(pos, cnt)
    right = left + 1 + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    # big buckets: star on the first (smallest) document
    big = (~small) & (pos != run_start)
    left = np.concatenate([left, run_start[big]])
    right = np.concatenate([right, pos[big]])
    pairs = np.stack([doc[left], doc[right]], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # a document listed twice under one key (not expected)
    pairs.sort(axis=1)
    return _dedupe_pairs(pairs)


def _dedupe_pairs(pairs):
    """Unique rows of a (P, 2) int64 array of doc ids < 2^31, sorted: one int64 code per pair is much
    faster to sort than np.unique(axis=0)."""
    code = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return np.stack([code >> 32, code & 0xFFFFFFFF], axis=1)


def lsh_pairs(sig, bands, max_bucket=200, doc_ids=None):
    """In-memory LSH over (D, k) signatures -> unique candidate pairs (P, 2) of doc ids."""
    D = len(sig)
    doc_ids = np.arange(D, dtype=np.int64) if doc_ids is None else np.asarray(doc_ids, np.int64)
    live = ~(sig == SIG_EMPTY).all(axis=1)  # documents without n-grams are never candidates
    keys = band_keys(sig[live], bands)  # (D', b)
    ids = doc_ids[live]
    out = [bucket_pairs(keys[:, j], ids, max_bucket) for j in range(bands)]
    return _unique_pairs(out)


def _unique_pairs(list_of_pairs):
    pairs = [p for p in list_of_pairs if len(p)]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return _dedupe_pairs(np.concatenate(pairs))


def _partition_of(key, P):
    return ((key >> np.uint64(40)) % np.uint64(P)).astype(np.int64)


# =============================================================================
# Union-find and the choice of survivors
# =============================================================================

class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size (Tarjan 1975): near O(1) per op."""
    def __init__(self, n):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x):
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x, y):
        x, y = self.find(x), self.find(y)
        if x == y:
            return
        if self.size[x] < self.size[y]:
            x, y = y, x
        self.parent[y] = x
        self.size[x] += self.size[y]


def priorities(names, seed):
    """A seeded 64-bit rank per document name: the cluster keeps its lowest-ranked member.
    Depends only on (seed, name), so every engine, shard order and resumed run picks the same."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}\0{n}".encode(), digest_size=8).digest(), 'little')
                     for n in names], dtype=np.uint64)


def choose_removed(n_docs, dup_pairs, prio):
    """Cluster the duplicate pairs and return (removed doc ids (sorted int64), number of clusters).
    Only documents that appear in a pair enter the union-find, so its memory follows the number of
    duplicated documents, not the corpus size."""
    if len(dup_pairs) == 0:
        return np.zeros(0, np.int64), 0
    members = np.unique(dup_pairs)  # (m,) doc ids
    local = np.searchsorted(members, dup_pairs)  # pairs in 0..m-1
    uf = UnionFind(len(members))
    for i, j in local.tolist():
        uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(len(members))], dtype=np.int64)
    order = np.lexsort((members, prio[members], roots))  # per root: lowest priority first (ties: lowest id)
    members, roots = members[order], roots[order]
    first = np.ones(len(roots), bool)
    first[1:] = roots[1:] != roots[:-1]
    return np.sort(members[~first]), int(first.sum())


# =============================================================================
# In-memory near-duplicates (for prepare scripts): texts in, indices to drop out
# =============================================================================

def minhash_near_duplicates(texts, num_hashes=128, num_bands=0, ngrams=5, jaccard_threshold=0.8, seed=0,
                            max_bucket=200, num_workers=1):
    """Near-duplicate detection on a list of in-memory strings; returns the set of indices to drop
    (one document per cluster of duplicates survives, chosen by the seed). num_bands=0 picks it."""
    if num_bands == 0:
        num_bands, _ = choose_bands(num_hashes, jaccard_threshold)
    _check_bands(num_hashes, num_bands)
    removed, _, _ = _in_memory_dedup(texts, num_hashes, num_bands, ngrams, jaccard_threshold, seed, max_bucket,
                                     num_workers)
    return set(removed.tolist())


_SHARED_TEXTS = None  # the texts of _in_memory_dedup, inherited by forked pool workers (no pickling)


def _sig_ngrams_shard(args):
    lo, hi, num_hashes, ngrams, seed = args
    return minhash_signatures(_SHARED_TEXTS[lo:hi], num_hashes, ngrams, seed, return_ngrams=True)


def _in_memory_dedup(texts, num_hashes, num_bands, ngrams, threshold, seed, max_bucket=200, workers=1):
    """The whole pipeline on in-memory texts. Keeps every document's n-gram hashes from the signature
    pass (8 bytes per n-gram) for the true-Jaccard check. Returns (removed ids, duplicate pairs, timings)."""
    global _SHARED_TEXTS
    t0 = time.time()
    shards = [(i, i + 1000, num_hashes, ngrams, seed) for i in range(0, len(texts), 1000)]
    _SHARED_TEXTS = texts  # set before the pool forks: workers read the texts from shared memory
    try:
        res = list(_local_map(_sig_ngrams_shard, shards, workers, 'signatures', False))
    finally:
        _SHARED_TEXTS = None
    sig = np.concatenate([r[0] for r in res]) if res else np.zeros((0, num_hashes), np.uint32)
    X = np.concatenate([r[1] for r in res]) if res else np.zeros(0, np.uint64)
    off = np.cumsum(np.concatenate([[0]] + [r[2] for r in res]))  # document d's n-grams: X[off[d]:off[d+1]]
    t_sig = time.time()
    pairs = lsh_pairs(sig, num_bands, max_bucket)
    t_lsh = time.time()
    sets = {d: _sorted_unique(X[off[d]:off[d + 1]]) for d in np.unique(pairs).tolist()}
    dup = pairs[verify_pairs(pairs, sets, threshold)]
    removed, _ = choose_removed(len(texts), dup, priorities([str(i) for i in range(len(texts))], seed))
    return removed, dup, {'sig_s': t_sig - t0, 'lsh_s': t_lsh - t_sig, 'total_s': time.time() - t0,
                          'candidates': len(pairs)}


def _check_bands(num_hashes, num_bands):
    if num_bands <= 0 or num_hashes % num_bands:
        divisors = [b for b in range(1, num_hashes + 1) if num_hashes % b == 0]
        raise ValueError(f"num_hashes={num_hashes} must be divisible by num_bands={num_bands} "
                         f"(each band has num_hashes/num_bands rows); pick num_bands from {divisors}")


# =============================================================================
# Reading documents: one file per document, or JSONL with one document per line
# =============================================================================

def _is_jsonl(path):
    return path.endswith('.jsonl')


def _decode(data, stats):
    """bytes -> str; invalid UTF-8 is replaced (U+FFFD) and the document counted as non_utf8."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        stats['non_utf8'] += 1
        return data.decode('utf-8', errors='replace')


def _is_binary(data):
    return b'\0' in data[:8192]


def read_documents(path, file_idx, text_key, stats):
    """Yield (file_idx, offset, length, name, text) for each document of one input file.
    offset/length locate a JSONL line (length -1 = the whole file). Bad input is counted in stats
    and skipped: binary files (a NUL byte), unreadable files, JSONL lines that are not JSON objects
    with a string text_key."""
    base = os.path.basename(path)
    try:
        if not _is_jsonl(path):
            with open(path, 'rb') as f:
                data = f.read()
            if _is_binary(data):
                stats['binary'] += 1
                return
            yield file_idx, 0, -1, base, _decode(data, stats)
            return
        with open(path, 'rb') as f:
            offset = 0
            for lineno, line in enumerate(f):
                n = len(line)
                if line.strip():
                    try:
                        text = json.loads(_decode(line, stats))[text_key]
                        if not isinstance(text, str):
                            raise TypeError(f"{text_key} is not a string")
                    except (ValueError, KeyError, TypeError):
                        stats['bad_lines'] += 1
                    else:
                        yield file_idx, offset, n, f"{base}:{lineno}", text
                offset += n
    except OSError as e:
        stats['unreadable'] += 1
        print(f"dedup: skipping unreadable {path}: {e}", file=sys.stderr)


def _new_stats():
    return {'docs': 0, 'bytes': 0, 'empty': 0, 'binary': 0, 'non_utf8': 0, 'bad_lines': 0, 'unreadable': 0}


def _read_one(path, offset, length, text_key):
    """Read back one document located by read_documents."""
    with open(path, 'rb') as f:
        if length < 0:
            return f.read().decode('utf-8', errors='replace')
        f.seek(offset)
        return json.loads(f.read(length).decode('utf-8', errors='replace'))[text_key]


# =============================================================================
# Stage functions (the same ones run in the local process pool and as Ray tasks)
# =============================================================================

def signature_shard(task):
    """Stage 1, one shard of input files -> signatures. task: dict with files (list of (idx, path)),
    num_hashes, ngrams, seed, text_key, cache (path of the .npz to resume from / save to, or None).
    Returns {'file_idx','offset','length' (D,) int64, 'names' list, 'sig' (D, k) uint32, 'stats'}."""
    cache = task.get('cache')
    if cache and os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            out = {k: z[k] for k in ('file_idx', 'offset', 'length', 'sig')}
            out['names'] = z['names'].tolist()
            out['stats'] = json.loads(str(z['stats']))
            out['stats']['resumed_shards'] = 1
        return out
    marker = task.get('fail_once_marker')
    if marker and not os.path.exists(marker):  # test hook: the first attempt of this task dies
        open(marker, 'w').close()
        raise RuntimeError(f"injected failure of shard {task['shard']} (test hook)")
    stats = _new_stats()
    cols = {'file_idx': [], 'offset': [], 'length': [], 'names': []}
    texts = []
    for idx, path in task['files']:
        for fi, off, ln, name, text in read_documents(path, idx, task['text_key'], stats):
            for k, v in zip(('file_idx', 'offset', 'length', 'names'), (fi, off, ln, name)):
                cols[k].append(v)
            texts.append(text)
            stats['docs'] += 1
            stats['bytes'] += len(text)
    params = hash_params(task['num_hashes'], task['seed'])
    sig = minhash_signatures(texts, task['num_hashes'], task['ngrams'], task['seed'], params)
    stats['empty'] = int((sig == SIG_EMPTY).all(axis=1).sum())  # no words after normalization
    out = {k: np.array(cols[k], dtype=np.int64) for k in ('file_idx', 'offset', 'length')}
    out['names'], out['sig'], out['stats'] = cols['names'], sig, stats
    if cache:
        tmp = cache + '.tmp.npz'
        np.savez(tmp, names=np.array(out['names'], dtype=str), stats=json.dumps(stats),
                 **{k: out[k] for k in ('file_idx', 'offset', 'length', 'sig')})
        os.replace(tmp, cache)
    return out


def band_partitions(sig, doc_start, bands, P):
    """Map side of the LSH shuffle: a shard's signatures -> P lists of bucket records (key, doc)."""
    live = np.nonzero(~(sig == SIG_EMPTY).all(axis=1))[0]
    keys = band_keys(sig[live], bands).ravel()  # (D' * b,) band-major inside each doc
    docs = np.repeat(live.astype(np.int64) + doc_start, bands)
    part = _partition_of(keys, P)
    order = np.argsort(part, kind='stable')
    bounds = np.searchsorted(part[order], np.arange(P + 1))
    return [(keys[order[bounds[p]:bounds[p + 1]]], docs[order[bounds[p]:bounds[p + 1]]]) for p in range(P)]


def verify_block(task):
    """Stage 3: true Jaccard of a block of candidate pairs. task: pairs (P, 2), locs {doc: (path, offset,
    length)}, ngrams, text_key, threshold. Returns a boolean (P,) array: is a duplicate."""
    docs = list(task['locs'])
    texts = [_read_one(*task['locs'][d], task['text_key']) for d in docs]
    return verify_pairs(task['pairs'], dict(zip(docs, ngram_sets(texts, task['ngrams']))), task['threshold'])


def write_output(task):
    """Stage 5: write one input file's survivors to output_dir under the same name, atomically.
    task: src, dst, keep (bool, whole file) or keep_offsets (JSONL: byte offsets of the surviving lines)."""
    src, dst = task['src'], task['dst']
    tmp = dst + '.tmp'
    if 'keep_offsets' in task:
        keep = set(task['keep_offsets'])
        with open(src, 'rb') as f, open(tmp, 'wb') as g:
            offset = 0
            for line in f:
                if offset in keep:
                    g.write(line if line.endswith(b'\n') else line + b'\n')
                offset += len(line)
    elif task['keep']:
        shutil.copyfile(src, tmp)
    else:
        return 0
    os.replace(tmp, dst)
    return 1


def write_outputs(tasks):
    """A group of write_output tasks (one Ray task or pool task per group, not per file)."""
    return sum(write_output(t) for t in tasks)


# =============================================================================
# Executors: a local process pool, or Ray tasks
# =============================================================================

def _tqdm(it, total, desc, enabled):
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def _local_map(fn, tasks, workers, desc, show):
    """Results of fn over tasks, in order, from a fork process pool (inline for one worker / one task)."""
    if workers <= 1 or len(tasks) <= 1:
        yield from _tqdm(map(fn, tasks), len(tasks), desc, show)
        return
    import multiprocessing as mp
    with mp.get_context('fork').Pool(min(workers, len(tasks))) as pool:
        yield from _tqdm(pool.imap(fn, tasks), len(tasks), desc, show)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit("dedup: --engine=ray needs Ray, which is not installed: pip install 'ray>=2.9' "
                         "(or use --engine=local, the default process pool)") from None
    return ray


def _ray_init(ray, address, workers):
    """Connect to (or start) Ray, unless the caller already did (ray.init in a test or a notebook)."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or None, log_to_driver=False, include_dashboard=False)
    # Ray workers may not have this file on their sys.path (another folder, another machine):
    # ship our functions by value (with this module's globals) instead of by module reference.
    if __name__ != '__main__':
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _ray_remote(ray, fn, **opts):
    # max_retries + retry_exceptions: a task that dies (worker crash or exception) is re-run by Ray
    return ray.remote(max_retries=3, retry_exceptions=True, **opts)(fn)


def _ray_map(ray, fn, tasks, desc, show):
    """Results of fn over tasks as Ray tasks, in order, with a progress bar on the driver."""
    remote = _ray_remote(ray, fn)
    refs = [remote.remote(t) for t in tasks]
    _ray_wait(ray, refs, desc, show)
    return ray.get(refs)


def _ray_wait(ray, refs, desc, show):
    pending = list(refs)
    with _tqdm(None, len(refs), desc, show) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))


def _ray_band_map(sig_result, doc_start, bands, P):
    """Map task of the Ray LSH shuffle: one shard's signatures -> P partitions of bucket records."""
    return tuple(band_partitions(sig_result['sig'], doc_start, bands, P))


def _ray_bucket_reduce(max_bucket, *parts):
    """Reduce task: every record of one hash partition (all of a bucket's records land in one) -> pairs."""
    keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
    docs = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    return bucket_pairs(keys, docs, max_bucket)


# =============================================================================
# Exact line deduplication
# =============================================================================

def _line_key(line):
    """A line's identity ignores its line ending ('x\\n', 'x\\r\\n' and a final 'x' are one line)."""
    return hashlib.blake2b(line.rstrip(b'\n').rstrip(b'\r'), digest_size=8).digest()


def line_hashes(path):
    """Pass 1 for one file: (n_lines,) uint64 hashes of its lines. Binary-safe: lines are bytes."""
    with open(path, 'rb') as f:
        return np.frombuffer(b''.join(_line_key(line) for line in f), dtype=np.uint64).copy()


def rewrite_unique_lines(task):
    """Pass 2 for one file: keep the lines whose hash is not in task['dups'] (sorted uint64)."""
    src, dst, dups = task['src'], task['dst'], task['dups']
    tmp = dst + '.tmp'
    kept = dropped = 0
    with open(src, 'rb') as f:
        lines = f.readlines()
    h = np.frombuffer(b''.join(_line_key(x) for x in lines), dtype=np.uint64)
    is_dup = np.zeros(len(h), bool)
    if len(dups) and len(h):
        pos = np.minimum(np.searchsorted(dups, h), len(dups) - 1)
        is_dup = dups[pos] == h
    with open(tmp, 'wb') as g:
        for line, d in zip(lines, is_dup.tolist()):
            if not d:
                g.write(line)
    os.replace(tmp, dst)
    kept = int((~is_dup).sum())
    dropped = int(is_dup.sum())
    return kept, dropped


def _hash_partition_lines(paths, P):
    """Map task: the line hashes of a group of files, split into P partitions by hash."""
    h = np.concatenate([line_hashes(p) for p in paths]) if paths else np.zeros(0, np.uint64)
    part = (h % np.uint64(P)).astype(np.int64)
    return tuple(h[part == p] for p in range(P))


def _rewrite_group(pairs, dups):
    """Rewrite task: a group of (src, dst) files against the repeated hashes."""
    return [rewrite_unique_lines({'src': s, 'dst': d, 'dups': dups}) for s, d in pairs]


def _dup_hashes(*parts):
    """Reduce: the hashes that occur more than once among one partition's lines."""
    h = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    u, c = np.unique(h, return_counts=True)
    return u[c > 1]


def exact_line_dedup(input_files, output_dir, num_workers=None, engine='local', ray_address='', progress=False):
    """Rewrite each input file to output_dir/<same name> keeping only the lines that occur exactly once
    in the whole corpus (a line repeated anywhere is removed everywhere). Every input gets an output
    file, even an empty one. Memory: 8 bytes per line of the corpus (the hashes), not the lines.
    Returns stats: files, lines, lines_removed, unique_line_hashes, time_s."""
    t0 = time.time()
    files = _check_inputs(input_files, output_dir)
    workers = num_workers or os.cpu_count()
    dsts = [os.path.join(output_dir, os.path.basename(p)) for p in files]
    if engine == 'ray':
        ray = _import_ray()
        _ray_init(ray, ray_address, num_workers)
        groups = [list(range(i, min(i + 32, len(files)))) for i in range(0, len(files), 32)]  # 32 files a task
        P = max(1, min(16, len(groups)))
        # 1) hash lines in tasks, each output split into P hash partitions
        mapper = _ray_remote(ray, _hash_partition_lines, num_returns=P)
        maps = [mapper.remote([files[i] for i in g], P) for g in groups]
        maps = [m if P > 1 else [m] for m in maps]
        # 2) group by hash: one reduce task per partition finds the repeated hashes
        red = _ray_remote(ray, _dup_hashes)
        dups = np.sort(np.concatenate(ray.get([red.remote(*[m[p] for m in maps]) for p in range(P)])))
        # 3) rewrite files in tasks (the repeated hashes go once into the object store)
        dups_ref = ray.put(dups)
        rw = _ray_remote(ray, _rewrite_group)
        results = [r for rs in ray.get([rw.remote([(files[i], dsts[i]) for i in g], dups_ref) for g in groups])
                   for r in rs]
        n_lines = sum(r[0] + r[1] for r in results)
    else:
        hashes = list(_local_map(line_hashes, files, workers, 'hash lines', progress))
        n_lines = sum(len(h) for h in hashes)
        allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        del hashes
        u, c = np.unique(allh, return_counts=True)
        dups = u[c > 1]
        tasks = [{'src': s, 'dst': d, 'dups': dups} for s, d in zip(files, dsts)]
        results = list(_local_map(rewrite_unique_lines, tasks, workers, 'rewrite', progress))
    removed = sum(r[1] for r in results)
    return {'files': len(files), 'lines': int(n_lines), 'lines_removed': int(removed),
            'repeated_line_hashes': int(len(dups)), 'time_s': round(time.time() - t0, 3)}


def _check_inputs(input_files, output_dir):
    files = [os.fspath(p) for p in input_files]
    for p in files:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"dedup: input {p!r} is not a file")
    names = [os.path.basename(p) for p in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"dedup: outputs keep input file names, but several inputs are named {dup}; "
                         "rename them or deduplicate the folders separately")
    os.makedirs(output_dir, exist_ok=True)
    return files


# =============================================================================
# Fuzzy document deduplication: the whole pipeline
# =============================================================================

def _shards(files, shard_docs):
    """Group input files into signature shards: one JSONL file per shard, or shard_docs small files."""
    shards, cur = [], []
    for i, p in enumerate(files):
        if _is_jsonl(p):
            shards.append([(i, p)])
            continue
        cur.append((i, p))
        if len(cur) >= shard_docs:
            shards.append(cur)
            cur = []
    if cur:
        shards.append(cur)
    return shards


def _fingerprint(files, **params):
    h = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8)
    for p in files:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def minhash_dedup(input_files, num_hashes, num_bands, ngrams, jaccard_threshold, output_dir, seed=0,
                  num_workers=None, engine='local', ray_address='', spill=False, num_partitions=16,
                  shard_docs=1000, max_bucket=200, text_key='text', work_dir=None, progress=False,
                  _interrupt_after_shards=None, _fail_once_marker=None):
    """Fuzzy document deduplication with MinHash + LSH (see the module docstring for the steps).
    input_files: one document per file, or *.jsonl files with one {"text": ...} per line.
    Surviving documents are written to output_dir under their original file names (removed
    one-file documents get no file; a JSONL file keeps its surviving lines). Returns a stats dict.
    engine='ray' runs the stages as Ray tasks and returns the same result as engine='local'.
    Signatures are cached per shard in work_dir (default: output_dir/.dedup_work, removed on
    success), so an interrupted run resumes; the _underscore arguments are test hooks."""
    _check_bands(num_hashes, num_bands)
    if not 0.0 < jaccard_threshold <= 1.0:
        raise ValueError(f"jaccard_threshold must be in (0, 1], got {jaccard_threshold}")
    if engine not in ('local', 'ray'):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    files = _check_inputs(input_files, output_dir)
    workers = num_workers or os.cpu_count()
    timings = {}
    t0 = t_stage = time.time()
    ray = None
    if engine == 'ray':
        ray = _import_ray()
        _ray_init(ray, ray_address, num_workers)

    # 1) Signatures, one task per shard; finished shards are saved and reused by a resumed run
    work_dir = work_dir or os.path.join(output_dir, '.dedup_work')
    os.makedirs(work_dir, exist_ok=True)
    shards = _shards(files, shard_docs)
    fp = _fingerprint(files, num_hashes=num_hashes, ngrams=ngrams, seed=seed, text_key=text_key, shard_docs=shard_docs)
    tasks = [{'shard': s, 'files': sh, 'num_hashes': num_hashes, 'ngrams': ngrams, 'seed': seed, 'text_key': text_key,
              'cache': os.path.join(work_dir, f"sig_{fp}_{s:06d}.npz"),
              'fail_once_marker': _fail_once_marker if s == 0 else None} for s, sh in enumerate(shards)]
    if _interrupt_after_shards is not None:
        tasks = tasks[:_interrupt_after_shards]  # test hook: a run that dies after some shards
    if ray is not None:
        sig_remote = _ray_remote(ray, _ray_signature_shard, num_returns=2)
        refs = [sig_remote.remote(t) for t in tasks]
        meta_refs, sig_refs = [r[0] for r in refs], [r[1] for r in refs]
        _ray_wait(ray, meta_refs, 'signatures', progress)
        metas = ray.get(meta_refs)
    else:
        metas = list(_local_map(signature_shard, tasks, workers, 'signatures', progress))
        sig_refs = [m.pop('sig') for m in metas]
    if _interrupt_after_shards is not None:
        raise RuntimeError(f"interrupted after {_interrupt_after_shards} signature shards (test hook)")
    stats = _new_stats()
    stats['resumed_shards'] = 0
    for m in metas:
        for k, v in m['stats'].items():
            stats[k] = stats.get(k, 0) + v
    file_idx = np.concatenate([m['file_idx'] for m in metas]) if metas else np.zeros(0, np.int64)
    offset = np.concatenate([m['offset'] for m in metas]) if metas else np.zeros(0, np.int64)
    length = np.concatenate([m['length'] for m in metas]) if metas else np.zeros(0, np.int64)
    names = [n for m in metas for n in m['names']]
    n_docs = len(names)
    doc_start = np.cumsum([0] + [len(m['names']) for m in metas])
    timings['signatures_s'] = time.time() - t_stage
    t_stage = time.time()

    # 2) LSH: documents sharing a (band, bucket) become candidate pairs
    if ray is not None:
        # a hash-partitioned shuffle: map tasks split each shard's bucket records into P partitions,
        # reduce task p groups partition p by key (all records of a bucket land in the same partition)
        P = num_partitions
        mapper = _ray_remote(ray, _ray_band_map, num_returns=P)
        maps = [mapper.remote(r, int(doc_start[i]), num_bands, P) for i, r in enumerate(sig_refs)]
        maps = [m if P > 1 else [m] for m in maps]
        reducer = _ray_remote(ray, _ray_bucket_reduce)
        red = [reducer.remote(max_bucket, *[m[p] for m in maps]) for p in range(P)]
        _ray_wait(ray, red, 'lsh buckets', progress)
        pairs = _unique_pairs(ray.get(red))
    elif spill:
        pairs = _spilled_lsh(sig_refs, doc_start, num_bands, num_partitions, max_bucket, work_dir, progress)
    else:
        sig = np.concatenate(sig_refs) if sig_refs else np.zeros((0, num_hashes), np.uint32)
        pairs = lsh_pairs(sig, num_bands, max_bucket)
        del sig
    del sig_refs
    stats['candidate_pairs'] = int(len(pairs))
    timings['lsh_s'] = time.time() - t_stage
    t_stage = time.time()

    # 3) True Jaccard of every candidate pair, in blocks of pairs (each block reads its documents)
    blocks = [pairs[i:i + 2000] for i in range(0, len(pairs), 2000)]
    vtasks = []
    for blk in blocks:
        docs = np.unique(blk)
        locs = {int(d): (files[file_idx[d]], int(offset[d]), int(length[d])) for d in docs}
        vtasks.append({'pairs': blk, 'locs': locs, 'ngrams': ngrams, 'text_key': text_key,
                       'threshold': jaccard_threshold})
    if ray is not None:
        masks = _ray_map(ray, verify_block, vtasks, 'verify', progress)
    else:
        masks = list(_local_map(verify_block, vtasks, workers, 'verify', progress))
    dup_pairs = pairs[np.concatenate(masks)] if masks else np.zeros((0, 2), np.int64)
    stats['duplicate_pairs'] = int(len(dup_pairs))
    timings['verify_s'] = time.time() - t_stage
    t_stage = time.time()

    # 4) Union-find on the driver: clusters of duplicates, one seeded survivor per cluster.
    # How far this holds: the union-find takes only documents that are in a duplicate pair (~100 bytes
    # each in Python lists), and the driver keeps ~100 bytes per document of the corpus (name and
    # location), so tens of millions of documents fit a driver with 8 GB. Beyond that, find the
    # connected components with distributed tasks instead (label propagation / local contractions,
    # Lacki et al. 2018, as text-dedup and NeMo Curator do) and keep document locations on disk.
    removed, n_clusters = choose_removed(n_docs, dup_pairs, priorities(names, seed))
    stats['clusters'] = n_clusters
    stats['docs_removed'] = int(len(removed))
    timings['cluster_s'] = time.time() - t_stage
    t_stage = time.time()

    # 5) Write the survivors, one task per input file (binary / unreadable files get no output)
    alive = np.ones(n_docs, bool)
    alive[removed] = False
    wtasks = []
    has_docs = np.zeros(len(files), bool)
    has_docs[file_idx] = True
    for i, p in enumerate(files):
        dst = os.path.join(output_dir, os.path.basename(p))
        mine = np.nonzero(file_idx == i)[0] if _is_jsonl(p) else None
        if _is_jsonl(p):
            wtasks.append({'src': p, 'dst': dst, 'keep_offsets': offset[mine[alive[mine]]].tolist()})
        elif has_docs[i]:
            wtasks.append({'src': p, 'dst': dst, 'keep': bool(alive[np.searchsorted(file_idx, i)])})
    # a file written by an earlier run but removed now must not linger
    for t in wtasks:
        if not t.get('keep', True) and os.path.exists(t['dst']):
            os.remove(t['dst'])
    wgroups = [wtasks[i:i + 64] for i in range(0, len(wtasks), 64)]  # one task writes up to 64 files
    if ray is not None:
        written = _ray_map(ray, write_outputs, wgroups, 'write', progress)
    else:
        written = list(_local_map(write_outputs, wgroups, workers, 'write', progress))
    stats['files_written'] = int(sum(written))
    timings['write_s'] = time.time() - t_stage
    shutil.rmtree(work_dir, ignore_errors=True)
    stats['removed_names'] = [names[i] for i in removed.tolist()]
    stats.update({k: round(v, 3) for k, v in timings.items()})
    stats['time_s'] = round(time.time() - t0, 3)
    stats['engine'] = engine
    return stats


def _ray_signature_shard(task):
    out = signature_shard(task)
    sig = out.pop('sig')
    return out, {'sig': sig}


def _spilled_lsh(sig_list, doc_start, bands, P, max_bucket, work_dir, show):
    """LSH with the band buckets on disk: each shard appends its bucket records to P partition files
    (by key hash, so a bucket never straddles two), then each partition is grouped on its own.
    Memory: one partition at a time, 16 bytes per (document, band) record."""
    spill_dir = os.path.join(work_dir, 'buckets')
    shutil.rmtree(spill_dir, ignore_errors=True)
    os.makedirs(spill_dir)
    rec = np.dtype([('key', '<u8'), ('doc', '<i8')])
    paths = [os.path.join(spill_dir, f"part_{p:04d}.bin") for p in range(P)]
    for i, sig in enumerate(sig_list):
        for p, (k, d) in enumerate(band_partitions(sig, int(doc_start[i]), bands, P)):
            r = np.empty(len(k), rec)
            r['key'], r['doc'] = k, d
            with open(paths[p], 'ab') as f:
                r.tofile(f)
    out = []
    for path in _tqdm(paths, P, 'lsh partitions', show):
        r = np.fromfile(path, dtype=rec) if os.path.exists(path) else np.zeros(0, rec)
        out.append(bucket_pairs(r['key'].copy(), r['doc'].copy(), max_bucket))
    shutil.rmtree(spill_dir, ignore_errors=True)
    return _unique_pairs(out)


# =============================================================================
# Benchmark: ours vs datasketch on a corpus with planted near-duplicates
# =============================================================================

def _data_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get('LMSCRATCH_DATA', os.path.join(here, '..', 'shared', 'data'))


def make_bench_corpus(n_docs, seed=0, words_per_doc=500, dup_fraction=0.3):
    """Documents of real English words (drawn from docs_en's word frequencies, so random documents
    share almost no 5-grams) plus planted near-duplicates: copies of a base document with a random
    fraction of words substituted, deleted or inserted. Returns (texts, families): families[i] is
    the index of the base document that text i was derived from."""
    import gzip
    path = os.path.join(_data_dir(), 'text', 'docs_en.txt.gz')
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        vocab = [w for w in f.read(4_000_000).split() if len(w) <= 20]
    rng = np.random.default_rng(seed)
    n_dup = int(n_docs * dup_fraction)
    n_base = n_docs - n_dup
    base = [[vocab[i] for i in rng.integers(0, len(vocab), words_per_doc).tolist()] for _ in range(n_base)]
    texts, families = [' '.join(w) for w in base], list(range(n_base))
    for _ in range(n_dup):
        src = int(rng.integers(0, n_base))
        w = list(base[src])
        rate = rng.uniform(0.0, 0.08)  # edit rate: J from ~1 down to ~0.4 for 5-grams
        for _ in range(int(rate * len(w))):
            op, pos = rng.integers(0, 3), int(rng.integers(0, len(w)))
            if op == 0:
                w[pos] = vocab[rng.integers(0, len(vocab))]
            elif op == 1 and len(w) > 10:
                del w[pos]
            else:
                w.insert(pos, vocab[rng.integers(0, len(vocab))])
        texts.append(' '.join(w))
        families.append(src)
    return texts, np.array(families)


def planted_truth(texts, families, ngrams, threshold):
    """The true duplicate pairs: documents of one family (random documents of different families
    share no 5-grams) whose true Jaccard >= threshold."""
    truth = set()
    order = np.argsort(families, kind='stable')
    fam = families[order]
    starts = np.nonzero(np.r_[True, fam[1:] != fam[:-1]])[0]
    for s, e in zip(starts, np.r_[starts[1:], len(fam)]):
        if e - s < 2:
            continue
        members = sorted(order[s:e].tolist())
        sets = {m: ngram_set(texts[m], ngrams) for m in members}
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                if jaccard(sets[members[x]], sets[members[y]]) >= threshold:
                    truth.add((members[x], members[y]))
    return truth


def _rss_reset():
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    return _proc_status('VmRSS')


def _proc_status(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    return 0


def _in_child(fn, *args):
    """Run fn(*args) in a forked child; returns (result, peak RSS growth in bytes)."""
    import multiprocessing as mp
    import queue
    ctx = mp.get_context('fork')

    def target(q):
        base = _rss_reset()
        t = os.times()
        res = fn(*args)
        t2 = os.times()  # CPU seconds of this process and its (joined) pool workers
        res['cpu_s'] = sum(t2[:4]) - sum(t[:4])
        q.put((res, _proc_status('VmHWM') - base))
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q,))
    p.start()
    while True:
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"benchmark child for {fn.__name__} died (exit code {p.exitcode})")
    p.join()
    return res


def _ours_end_to_end(texts, k, bands, n, threshold, workers):
    """Our pipeline on in-memory texts: signatures (process pool), LSH, verify, union-find."""
    removed, dup, r = _in_memory_dedup(texts, k, bands, n, threshold, 0, 200, workers)
    r.update(pairs=[tuple(x) for x in dup.tolist()], removed=len(removed))
    return r


def _bench_sig_shard(args):
    texts, k, n = args
    return minhash_signatures(texts, k, n, 0)


def _datasketch_shingles(text, n):
    w = _normalized_bytes(text).split()  # our fast normalization, so that both sides hash the same n-grams
    if len(w) < n:
        return [b' '.join(w)] if w else []
    return [b' '.join(w[i:i + n]) for i in range(len(w) - n + 1)]


def _datasketch_end_to_end(texts, k, bands, n, threshold, workers):
    """datasketch as people use it: MinHash.update_batch per document (in a process pool of the same
    size as ours), then MinHashLSH insert + query with the same (bands, rows)."""
    global _SHARED_TEXTS
    t0 = time.time()
    _SHARED_TEXTS = texts  # the same shared-memory hand-off to the pool as ours
    parts = _local_map(_datasketch_sig_range, [(i, i + 1000, k, n) for i in range(0, len(texts), 1000)],
                       workers, 'datasketch', False)
    mhs = [m for part in parts for m in part]
    _SHARED_TEXTS = None
    t_sig = time.time() - t0
    t1 = time.time()
    pairs = _datasketch_lsh(mhs, k, bands, threshold)
    t_lsh = time.time() - t1
    return {'pairs': pairs, 'sig_s': t_sig, 'lsh_s': t_lsh, 'total_s': time.time() - t0, 'candidates': len(pairs)}


def _datasketch_lsh(mhs, k, bands, threshold):
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=k, params=(bands, k // bands))
    pairs = set()
    for i, m in enumerate(mhs):  # insert + query, each document against those before it
        for j in lsh.query(m):
            pairs.add((j, i))
        lsh.insert(i, m)
    return pairs


def _datasketch_sig_range(args):
    lo, hi, k, n = args
    return _datasketch_sig_shard((_SHARED_TEXTS[lo:hi], k, n))


def _datasketch_sig_shard(args):
    from datasketch import LeanMinHash, MinHash
    texts, k, n = args
    out = []
    for t in texts:
        m = MinHash(num_perm=k, seed=1)
        m.update_batch(_datasketch_shingles(t, n))
        out.append(LeanMinHash(m))  # the compact form datasketch recommends for storage and LSH
    return out


def _pr(found, truth):
    found = set(map(tuple, found))
    tp = len(found & truth)
    return tp / max(len(found), 1), tp / max(len(truth), 1)


def run_bench(bench_docs, large, out_path, k=128, n=5, threshold=0.8, workers=None, show=True):
    """Side-by-side benchmark vs datasketch; prints and writes a markdown table to out_path."""
    import platform
    workers = workers or os.cpu_count()
    bands, rows = choose_bands(k, threshold)
    lines = [f"# dedup.py benchmark vs datasketch {__import__('datasketch').__version__}", "",
             f"Command: `python dedup.py --mode=bench --bench_docs={bench_docs} --bench_large={large}`; "
             f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), numpy {np.__version__}. "
             f"Both sides: num_perm={k}, word {n}-grams, LSH {bands} bands x {rows} rows "
             f"(choose_bands for threshold {threshold}), the same normalization.", ""]

    # 1) one-core signature throughput on the anchor corpus (docs_en, 16.3 MB, 692 documents)
    import gzip
    with gzip.open(os.path.join(_data_dir(), 'text', 'docs_en.txt.gz'), 'rt', encoding='utf-8') as f:
        docs = [d.strip() for d in f.read().split('<|endoftext|>') if d.strip()]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    _bench_sig_shard((docs[:20], k, n)), _datasketch_sig_shard((docs[:20], k, n))  # warm up both
    best = {'ours': [1e9, 1e9], 'ds': [1e9, 1e9]}
    for _ in range(2):  # best of two, interleaved, wall and CPU seconds
        for name, fn in (('ds', _datasketch_sig_shard), ('ours', _bench_sig_shard)):
            t, c = time.time(), time.process_time()
            fn((docs, k, n))
            best[name] = [min(best[name][0], time.time() - t), min(best[name][1], time.process_time() - c)]
    (ds_s, ds_c), (ours_s, ours_c) = best['ds'], best['ours']
    lines += ["## MinHash signatures, one core, docs_en (ANCHORS.md: datasketch 5.2 MB/s)", "",
              f"{len(docs)} documents, {mb:.1f} MB, {k} permutations, word {n}-grams, normalization included on both "
              "sides; best of two interleaved runs.", "",
              "| | wall | CPU | docs/s | MB/s (wall) | MB/s (CPU) |", "|---|---:|---:|---:|---:|---:|",
              f"| datasketch `MinHash.update_batch` | {ds_s:.2f} s | {ds_c:.2f} s | {len(docs) / ds_s:,.0f} | "
              f"{mb / ds_s:.1f} | {mb / ds_c:.1f} |",
              f"| dedup.py `minhash_signatures` | {ours_s:.2f} s | {ours_c:.2f} s | {len(docs) / ours_s:,.0f} | "
              f"{mb / ours_s:.1f} | {mb / ours_c:.1f} |",
              f"| **speed-up** | | | | **{ds_s / ours_s:.1f}x** | **{ds_c / ours_c:.1f}x** |", ""]
    print('\n'.join(lines[-9:]), flush=True)

    # 2) end to end on planted near-duplicates
    lines += [f"## End to end, planted near-duplicates ({workers} worker processes on both sides)", "",
              "Corpus: documents of ~500 real words sampled from docs_en, 30% of them edited copies "
              "(substitutions, deletions, insertions at 0-8% of words). Truth: pairs of one family with "
              f"true Jaccard >= {threshold}. datasketch's pairs are its LSH query results (its usual use); "
              "ours are candidates verified by true Jaccard. Peak memory: growth of the process's peak RSS.", "",
              "| docs | MB | system | signatures | sig docs/s | sig MB/s | LSH insert+query docs/s | end to end | "
              "CPU | peak mem | pairs | precision | recall | speed-up (wall) | speed-up (CPU) |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sizes = [bench_docs] + ([bench_docs * 10] if large else [])
    for size in sizes:
        texts, fam = make_bench_corpus(size, seed=0)
        mb = sum(len(t) for t in texts) / 1e6
        truth = planted_truth(texts, fam, n, threshold)
        ours, ours_mem = _in_child(_ours_end_to_end, texts, k, bands, n, threshold, workers)
        ds, ds_mem = _in_child(_datasketch_end_to_end, texts, k, bands, n, threshold, workers)
        for name, r, mem in (('datasketch', ds, ds_mem), ('dedup.py', ours, ours_mem)):
            p, rc = _pr(r['pairs'], truth)
            sp = (f"**{ds['total_s'] / r['total_s']:.1f}x** | **{ds['cpu_s'] / r['cpu_s']:.1f}x**"
                  if name == 'dedup.py' else ' |')
            lines.append(f"| {size:,} | {mb:.0f} | {name} | {r['sig_s']:.2f} s | {size / r['sig_s']:,.0f} | "
                         f"{mb / r['sig_s']:.1f} | {size / r['lsh_s']:,.0f} | {r['total_s']:.2f} s | "
                         f"{r['cpu_s']:.2f} s | "
                         f"{mem / 2**20:,.0f} MiB | {len(r['pairs']):,} | {p:.4f} | {rc:.4f} | {sp} |")
        lines.append(f"| | | truth | | | | | | | | {len(truth):,} | | | | |")
        print('\n'.join(lines[-3:]), flush=True)
    lines += ["", "Signature and LSH columns are per stage; end to end includes LSH, true-Jaccard "
              "verification and union-find for dedup.py. CPU = user + system seconds of the process and its pool "
              "workers, the fairer number on a shared machine (other jobs were running: wall times are noisy); "
              "the ratios come from one run, side by side."]
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    with open(out_path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(out_path + '.tmp', out_path)
    print(f"wrote {out_path}")


def run_engine_bench(n_docs, out_path, workers=2):
    """Local process pool vs Ray tasks on the same input, same seed: equal outputs? time per stage?
    Input: docs_en's 692 web pages (the shared crawl's text), one file each, for both exact line dedup
    and MinHash dedup, plus n_docs planted near-duplicate documents in 8 JSONL files."""
    import gzip
    import platform
    import tempfile
    ray = _import_ray()
    with gzip.open(os.path.join(_data_dir(), 'text', 'docs_en.txt.gz'), 'rt', encoding='utf-8') as f:
        docs = [d.strip() for d in f.read().split('<|endoftext|>') if d.strip()]
    texts, _ = make_bench_corpus(n_docs, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, d in enumerate(docs):
            files.append(os.path.join(tmp, f"page{i:04d}.txt"))
            with open(files[-1], 'w', encoding='utf-8') as f:
                f.write(d)
        jsonl = []
        for k in range(8):
            jsonl.append(os.path.join(tmp, f"planted{k}.jsonl"))
            with open(jsonl[-1], 'w') as f:
                f.writelines(json.dumps({'text': t}) + '\n' for t in texts[k::8])
        mb = (sum(os.path.getsize(p) for p in files + jsonl)) / 1e6
        bands, _ = choose_bands(128, 0.8)
        args = dict(num_hashes=128, num_bands=bands, ngrams=5, jaccard_threshold=0.8, seed=0, shard_docs=100)
        rows, same = [], []
        t = time.time()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        t_init = time.time() - t
        for name, fn in (('exact lines, 692 pages', lambda o, e: exact_line_dedup(files, o, workers, e)),
                         (f"minhash, 692 pages + {n_docs:,} JSONL docs",
                          lambda o, e: minhash_dedup(files + jsonl, output_dir=o, num_workers=workers, engine=e,
                                                     **args))):
            res = {}
            for eng in ('local', 'ray', 'local', 'ray'):  # twice each, alternating; the best of two counts
                out = os.path.join(tmp, f"out_{eng}_{len(rows)}")
                shutil.rmtree(out, ignore_errors=True)
                s = fn(out, eng)
                outputs = {f: open(os.path.join(out, f), 'rb').read() for f in sorted(os.listdir(out))}
                if eng not in res or s['time_s'] < res[eng][0]['time_s']:
                    res[eng] = (s, outputs)
            same.append(res['local'][1] == res['ray'][1])
            rows.append((name, res['local'][0], res['ray'][0], same[-1]))
        ray.shutdown()
    lines = ["# dedup.py: local process pool vs Ray (issue 17)", "",
             f"Command: `python dedup.py --mode=bench_ray --bench_docs={n_docs}"
             f"{'' if workers == 2 else f' --num_workers={workers}'}`; {workers} workers on both sides "
             f"(local: fork pool; Ray: local instance, num_cpus={workers}), "
             f"{platform.processor() or platform.machine()}, "
             f"ray {ray.__version__}. Input {mb:.1f} MB. Ray start-up (not counted below): {t_init:.1f} s.", "",
             "| job | local | ray | ray / local | same outputs | stages, local | stages, ray |",
             "|---|---:|---:|---:|---|---|---|"]
    stage_keys = ('signatures_s', 'lsh_s', 'verify_s', 'cluster_s', 'write_s')
    for name, a, b, eq in rows:
        st = lambda s: ', '.join(f"{k[:-2]} {s[k]:.2f}" for k in stage_keys if k in s) or '-'  # noqa: E731
        lines.append(f"| {name} | {a['time_s']:.2f} s | {b['time_s']:.2f} s | {b['time_s'] / a['time_s']:.2f}x | "
                     f"{'yes' if eq else '**NO**'} | {st(a)} | {st(b)} |")
    lines += ["", 'Where the time goes: Ray pays a scheduler round-trip and an object-store copy per task and per '
              'result, so the engine keeps tasks coarse (100 documents per signature shard, 32 files per exact-'
              'dedup task, 64 files per write task, 16 LSH partitions); the local engine instead forks a new '
              "process pool per stage while Ray's workers stay up between stages. Measured: within noise of each "
              "other on 2 cores, Ray ahead on 16 (results/ray_16cores.md); Ray's start-up (above) is paid once per "
              'driver. Ray pays off when the input outgrows one machine: the same tasks run on every node of a '
              'cluster (`ray start --head`, then `--ray_address=auto`).']
    print('\n'.join(lines))
    with open(out_path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(out_path + '.tmp', out_path)
    print(f"wrote {out_path}")
    return same


# =============================================================================
# Command line
# =============================================================================

def list_inputs(spec):
    """--inputs: a folder (all files, recursively, sorted), a glob, or a comma-separated list."""
    if not spec:
        raise SystemExit("dedup: give --inputs=<folder | glob | file1,file2>")
    if os.path.isdir(spec):
        files = [os.path.join(r, f) for r, _, fs in os.walk(spec) for f in fs]
    elif ',' in spec:
        files = spec.split(',')
    else:
        files = glob.glob(spec, recursive=True)
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise SystemExit(f"dedup: no input files found for --inputs={spec!r}")
    return files


if __name__ == '__main__':
    if mode == 'curve':
        print_s_curve(num_hashes, jaccard_threshold)
        png = os.path.join(os.path.dirname(bench_out) or '.', 'dedup_s_curve.png')
        plot_s_curve(num_hashes, jaccard_threshold, png)
    elif mode == 'bench':
        run_bench(bench_docs, bench_large, bench_out, k=num_hashes, n=ngrams, threshold=jaccard_threshold,
                  workers=num_workers or None)
    elif mode == 'bench_ray':
        run_engine_bench(bench_docs, bench_out.replace('dedup_bench', 'dedup_ray'), workers=num_workers or 2)
    elif mode == 'exact':
        files = list_inputs(inputs)
        print(f"exact line dedup: {len(files):,} files -> {output_dir} (engine {engine})")
        s = exact_line_dedup(files, output_dir, num_workers or None, engine, ray_address, progress)
        print(f"files {s['files']:,} | lines {s['lines']:,} | removed {s['lines_removed']:,} "
              f"({s['lines_removed'] / max(s['lines'], 1):.1%}) | {s['time_s']:.2f} s")
    elif mode == 'minhash':
        files = list_inputs(inputs)
        if num_bands == 0:
            num_bands, _ = choose_bands(num_hashes, jaccard_threshold)
        _check_bands(num_hashes, num_bands)
        print(f"minhash dedup: {len(files):,} files -> {output_dir} | {num_hashes} hashes, {num_bands} bands x "
              f"{num_hashes // num_bands} rows, {ngrams}-grams, threshold {jaccard_threshold} | engine {engine}")
        s = minhash_dedup(files, num_hashes, num_bands, ngrams, jaccard_threshold, output_dir, seed=seed,
                          num_workers=num_workers or None, engine=engine, ray_address=ray_address, spill=spill,
                          num_partitions=num_partitions, shard_docs=shard_docs, max_bucket=max_bucket,
                          text_key=text_key, progress=progress)
        print(f"documents {s['docs']:,} ({s['bytes'] / 1e6:,.1f} MB) | candidate pairs {s['candidate_pairs']:,} | "
              f"duplicate pairs {s['duplicate_pairs']:,} | clusters {s['clusters']:,} | removed {s['docs_removed']:,} "
              f"({s['docs_removed'] / max(s['docs'], 1):.1%})")
        print(f"bad input: empty {s['empty']}, binary {s['binary']}, non-UTF-8 {s['non_utf8']}, "
              f"bad JSONL lines {s['bad_lines']}, unreadable {s['unreadable']} | resumed shards {s['resumed_shards']}")
        print("time: " + ', '.join(f"{k[:-2]} {s[k]:.2f} s" for k in
                                   ('signatures_s', 'lsh_s', 'verify_s', 'cluster_s', 'write_s', 'time_s')))
    else:
        raise SystemExit(f"dedup: unknown --mode={mode!r}; use minhash, exact, curve, bench or bench_ray")

"""
dedup.py: remove repeated text from a corpus, two ways (CS336 assignment 4). Web text repeats itself: menus and
cookie banners on every page (exact duplicate *lines*), the same article mirrored under another header
(near-duplicate *documents*). Training on repeats wastes compute and encourages memorization (Lee et al. 2022).

1) --mode=exact: hash every line of the corpus (8 bytes a line), count the hashes, rewrite each file keeping only
   the lines that occur exactly once in the whole corpus.
2) --mode=minhash: MinHash (Broder 1997) estimates the Jaccard similarity J(A, B) = |A & B| / |A | B| of two
   documents' word n-gram sets from short signatures; LSH (Indyk & Motwani 1998; MMDS book ch. 3) cuts each
   signature into bands so that only documents sharing a band become candidates; each candidate pair is checked
   with its true Jaccard; union-find joins duplicates into clusters and one seeded document per cluster survives.

Inputs: one document per file, or *.jsonl with one {"text": ...} a line; outputs keep the input names. Shards run
in a process pool or as Ray tasks (--engine=ray); finished shards are saved, so a killed run resumes. Benchmarks
(datasketch, Ray vs pool) and the S-curve plot: bench/dedup.py.

    python dedup.py --mode=exact --inputs=../shared/data/a4/documents_with_line_duplicates --output_dir=out/lines
    python dedup.py --inputs=corpus/ --output_dir=out/dedup --jaccard_threshold=0.8
    python dedup.py --inputs='data/*.jsonl' --output_dir=out/dedup --engine=ray --ray_address=auto
    from dedup import exact_line_dedup, minhash_dedup, minhash_signatures, lsh_pairs   # as a library
"""
import collections
import contextlib
import glob
import hashlib
import json
import os
import pickle
import shutil
import string
import sys
import time
import unicodedata

import numpy as np
import regex

# -----------------------------------------------------------------------------
# what to do
mode = 'minhash'  # 'minhash' (near-duplicate documents) | 'exact' (repeated lines)
inputs = ''  # a folder (every file in it, recursively), a glob ('data/*.jsonl') or a comma-separated list of files
output_dir = 'out/dedup'  # outputs keep their input file names here
# minhash + lsh
num_hashes = 128  # MinHash signature length (number of hash functions)
num_bands = 0  # LSH bands (must divide num_hashes); 0 = the steepest split that finds 99% of pairs at the threshold
ngrams = 5  # n-gram length in words
jaccard_threshold = 0.8  # candidate pairs with true Jaccard >= this are duplicates
seed = 0  # seeds the hash functions and the choice of the surviving document of each cluster
max_bucket = 200  # an LSH bucket bigger than this links its documents to its first one only (a star), not all pairs
text_key = 'text'  # JSONL inputs (*.jsonl): the field that holds the document text
# scale
num_workers = 0  # processes (or Ray CPUs) for every stage; 0 = os.cpu_count()
shard_docs = 1000  # one-file documents per signature shard (the unit of resume); a JSONL file is one shard
engine = 'local'  # 'local' (process pool) | 'ray' (Ray tasks; pip install ray)
ray_address = ''  # '' = start a local Ray instance; 'auto' = the running cluster; 'ray://host:10001' = a remote one
progress = True  # tqdm progress bars on stderr
# -----------------------------------------------------------------------------

SIG_EMPTY = np.uint32(0xFFFFFFFF)  # the signature of a document without n-grams (never a candidate)
_GROUP_CHARS = 1 << 20  # texts are hashed in ~1 MB groups, so the per-byte arrays (8 B a byte) stay in cache
_CHUNK = 16384  # n-grams per block: a (num_hashes, _CHUNK) uint32 block is 8 MB at 128 hashes

# ---------------------------------------------------------------------------------------------- MinHash signatures
# For a random permutation pi of all n-grams, P[min pi(A) == min pi(B)] = J(A, B): the fraction of equal rows of
# two signatures estimates J. The k permutations become k hash functions of a universal family, multiply-shift
# (Dietzfelbinger et al. 1997) on w = 32 bits: h_a(x) = (a*x mod 2^32) >> (32 - M), a random and odd, x the top
# 32 bits of the n-gram's 64-bit hash. The min of the top M bits is the top M bits of the min, so we keep the full
# 32-bit min (M = 32, the finest tie-break). All k functions run at once on a (k, n-grams) uint32 block: no Python
# call per n-gram or per hash. tests/test_dedup.py checks the estimates' mean and variance.
def hash_params(num_hashes, seed):
    """(num_hashes, 1) uint32 odd multipliers a: the seeded hash functions of the signature."""
    rng = np.random.default_rng([seed, 0x4D696E48])
    return (rng.integers(0, 2**31, size=num_hashes, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]

def minhash_signatures(texts, num_hashes, ngrams, seed):
    """texts: list of D documents -> (D, num_hashes) uint32 MinHash signatures (SIG_EMPTY rows: no words)."""
    a = hash_params(num_hashes, seed)  # (k, 1)
    sig = np.full((len(texts), num_hashes), SIG_EMPTY, dtype=np.uint32)
    buf = np.empty((num_hashes, _CHUNK), dtype=np.uint32)
    for g0, g1 in _groups(texts):
        X64, counts = batch_ngram_hashes(texts[g0:g1], ngrams)  # (N,) uint64 in document order, (D,)
        X = (X64 >> np.uint64(32)).astype(np.uint32)  # the 32-bit keys of multiply-shift
        rows = g0 + np.flatnonzero(counts)  # the documents with at least one n-gram ...
        starts = (np.cumsum(counts) - counts)[counts > 0]  # ... and where each begins in X
        for s in range(0, len(X), _CHUNK):
            e = min(s + _CHUNK, len(X))
            blk = buf[:, :e - s]
            np.multiply(a, X[None, s:e], out=blk)  # (k, e-s): every hash of every n-gram, wraps mod 2^32
            first = np.searchsorted(starts, s, side='right') - 1  # the document that covers position s ...
            hi = np.searchsorted(starts, e, side='left')  # ... up to the last one starting before e
            mins = np.minimum.reduceat(blk, np.maximum(starts[first:hi] - s, 0), axis=1)  # (k, documents here)
            sig[rows[first:hi]] = np.minimum(sig[rows[first:hi]], mins.T)  # a document over two blocks: min of both
    return sig

def _groups(texts):
    """Slices [i, j) of texts of about _GROUP_CHARS characters: a group ends where the running total crosses 1 MB."""
    cuts = np.flatnonzero(np.diff(np.cumsum([len(t) for t in texts], dtype=np.int64) // _GROUP_CHARS)) + 1
    return zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(texts)].tolist())

# ----------------------------------------------------------------------------- Normalization and n-gram hashes
# The course's normalization: NFD, lowercase, remove accents (combining marks) and punctuation, split on whitespace.
# normalize_words is the readable reference. The fast path (_normalized_bytes) gives the same words without one
# Python object per word: ASCII (most of the web) is lowercased and stripped of string.punctuation by one C call,
# bytes.translate; only the few non-ASCII runs go through NFD and a regex that deletes marks (M*), punctuation (P*)
# and symbols (S*). For ASCII, P* and S* are exactly string.punctuation (tests check both paths agree).
_MARKS_PUNCT = regex.compile(r'[\p{M}\p{P}\p{S}]+')

def normalize_words(text):
    """The normalized words of a document: list[str] (the reference implementation)."""
    return _MARKS_PUNCT.sub('', unicodedata.normalize('NFD', text).lower()).split()

class _Cache(dict):
    """A per-process cache that pickles empty: Ray ships our functions by value with the globals they use."""
    def __reduce__(self):
        return (type(self), ())

_SEPARATORS = b'\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f'  # bytes.translate table: A-Z -> a-z, str.split()'s separators -> ' '
_LOWER = bytes(range(256)).translate(bytes.maketrans(string.ascii_uppercase.encode() + _SEPARATORS,
                                                     string.ascii_lowercase.encode() + b' ' * len(_SEPARATORS)))
_NON_ASCII = regex.compile(rb'[\x80-\xff]+')  # a run of non-ASCII characters, as UTF-8 bytes
_FIXED_RUNS = _Cache()  # non-ASCII run -> its normalized bytes (the web repeats a few: quotes, dashes)

def _fix_non_ascii(m):
    run = m.group()
    if run not in _FIXED_RUNS:
        # NFD per run equals NFD of the whole text: it only reorders combining marks, which we delete anyway.
        s = _MARKS_PUNCT.sub('', unicodedata.normalize('NFD', run.decode('utf-8', errors='replace')).lower())
        if len(_FIXED_RUNS) > 100_000:  # bounded: Chinese or Russian text has many distinct runs
            _FIXED_RUNS.clear()
        _FIXED_RUNS[run] = ''.join(' ' if c.isspace() else c for c in s).encode('utf-8')  # Unicode spaces split
    return _FIXED_RUNS[run]

def _normalized_bytes(text):
    """Normalized UTF-8 bytes of a document; words are separated by one or more b' '."""
    data = text.encode('utf-8', errors='replace')
    if len(data) != len(text):  # some non-ASCII characters
        data = _NON_ASCII.sub(_fix_non_ascii, data)
    return data.translate(_LOWER, string.punctuation.encode())  # after the runs: NFD can yield ASCII ('É' -> 'E')

# A word hashes as mix64 of a polynomial (Karp-Rabin) hash of its bytes mod 2^64: with the prefix sum
# S[j] = sum_{k<j} (byte_k + 1) BASE^k, the word [s, e) hashes to (S[e] - S[s]) * BASE^-s, all words at once.
_BASE = 0x100000001B3 * 2 + 1  # odd, so invertible mod 2^64
_POWERS = _Cache()  # 'pow': _BASE^i and 'inv': _BASE^-i mod 2^64, grown on demand
# odd 64-bit constants that weigh the words of an n-gram by position (so 'a b' != 'b a')
_POS_MULT = np.random.default_rng(0x6E6772616D).integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + 1

def _mix64(z):
    """splitmix64's finalizer: a bijection on uint64 that spreads every input bit over the output."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))

def _pow_tables(n):
    """(BASE^i, BASE^-i) mod 2^64 for i < n (at least), grown by doubling and kept: t[k:2k] = t[:k] * BASE^k."""
    if n > len(_POWERS.get('pow', ())):
        for key, base in (('pow', _BASE), ('inv', pow(_BASE, -1, 2**64))):
            t = np.ones(1, np.uint64)
            while len(t) < max(n, 1 << 21):  # 16 MB a table covers a 1 MB group with room to spare
                t = np.concatenate([t, t * np.uint64(pow(base, len(t), 2**64))])
            _POWERS[key] = t
    return _POWERS['pow'], _POWERS['inv']

def batch_ngram_hashes(texts, n):
    """The word n-gram hashes of a batch of documents: (X (N,) uint64 in document order, counts (D,) int64).
    An n-gram hashes as mix64(sum_i w_i * POS_i) over its word hashes w; a document shorter than n words is one
    n-gram of all its words, an empty one has none."""
    parts = [_normalized_bytes(t) for t in texts]
    buf = b' '.join(parts)  # a space between documents, so no word straddles two
    arr = np.frombuffer(buf, dtype=np.uint8)  # (N,)
    edges = np.flatnonzero(np.diff(np.r_[False, arr != 32, False]))  # words are the runs of non-space bytes
    starts, ends = edges[0::2], edges[1::2]  # (W,), (W,)
    pw, ipw = _pow_tables(len(buf) + 1)
    c = (arr.astype(np.uint64) + np.uint64(1)) * pw[:len(buf)]  # (byte + 1) * BASE^k: the + 1 makes NUL count
    S = np.r_[np.zeros(1, np.uint64), np.cumsum(c, dtype=np.uint64)]  # (N+1,) prefix sums, wrapping mod 2^64
    w = _mix64((S[ends] - S[starts]) * ipw[starts])  # (W,) word hashes
    doc = np.searchsorted(np.cumsum([0] + [len(p) + 1 for p in parts[:-1]]), starts, side='right') - 1  # (W,)
    wc = np.bincount(doc, minlength=len(texts))  # (D,) words per document
    end, pos, g = np.cumsum(wc)[doc], np.arange(len(w)), np.zeros(len(w), np.uint64)  # end: one past doc's last word
    for i in range(n):  # g[p]: the n-gram that starts at word p; words past its document count as 0
        wi = np.zeros(len(w), np.uint64)
        wi[:max(len(w) - i, 0)] = w[i:]
        wi[pos + i >= end] = 0
        g += wi * _POS_MULT[i]  # uint64 arithmetic wraps mod 2^64 on purpose
    keep = (pos + n <= end) | ((wc[doc] < n) & (pos == end - wc[doc]))  # whole n-grams, or a short document
    return _mix64(g[keep]), np.bincount(doc[keep], minlength=len(texts)).astype(np.int64)

def _sorted_unique(x):
    """np.unique for one document's few hundred hashes: sort + mask beats numpy 2's hash-based unique."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x

def ngram_set(text, n):
    """The document's set of word n-grams as sorted unique 64-bit hashes (for the true Jaccard)."""
    return _sorted_unique(batch_ngram_hashes([text], n)[0])

def ngram_sets(texts, n):
    """ngram_set of many documents, hashed in ~1 MB groups: list of sorted unique uint64 arrays."""
    out = []
    for i, j in _groups(texts):
        X, counts = batch_ngram_hashes(texts[i:j], n)
        out += [_sorted_unique(x) for x in np.split(X, np.cumsum(counts)[:-1])]
    return out

def jaccard(a, b):
    """True Jaccard similarity |A & B| / |A | B| of two sorted unique hash arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter) if len(a) and len(b) else 0.0

def verify_pairs(pairs, sets, threshold):
    """(P,) bool: true Jaccard of each candidate pair >= threshold. sets: doc id -> ngram_set."""
    return np.array([jaccard(sets[i], sets[j]) >= threshold for i, j in pairs.tolist()], dtype=bool)

# ----------------------------------------------------------------------------------------- LSH: candidate pairs
# A signature of k = b*r rows is cut into b bands of r rows. Two documents become candidates if all r rows of some
# band agree, which for Jaccard s has probability 1 - (1 - s^r)^b: an S-curve whose step sits near (1/b)^(1/r).
def candidate_probability(s, bands, rows):
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^rows)^bands (MMDS 3.4)."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands

def choose_bands(num_hashes, threshold, min_recall=0.99):
    """(bands, rows), bands*rows == num_hashes: the most rows (steepest S-curve) that still finds a pair *at* the
    threshold with probability >= min_recall. Recall first: a false candidate costs a check, a missed one stays."""
    splits = [(b, num_hashes // b) for b in range(1, num_hashes + 1) if num_hashes % b == 0]
    ok = [(b, r) for b, r in splits if candidate_probability(threshold, b, r) >= min_recall]
    return max(ok, key=lambda br: br[1]) if ok else max(splits, key=lambda br: candidate_probability(threshold, *br))

def _check_bands(num_hashes, num_bands):
    if num_bands <= 0 or num_hashes % num_bands:
        raise ValueError(f"num_hashes={num_hashes} must be divisible by num_bands={num_bands}: pick num_bands from "
                         f"{[b for b in range(1, num_hashes + 1) if num_hashes % b == 0]}")

def band_keys(sig, bands):
    """(D, k) uint32 signatures -> (D, bands) uint64 bucket keys, one hash of each band's rows (band mixed in)."""
    D, k = sig.shape
    mult = np.random.default_rng(0x62616E64).integers(1, 2**63, size=k // bands, dtype=np.uint64) * np.uint64(2) + 1
    key = (sig.astype(np.uint64).reshape(D, bands, k // bands) * mult).sum(axis=2, dtype=np.uint64)  # wraps mod 2^64
    return _mix64(key + np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))

def bucket_pairs(key, doc, max_bucket):
    """Unique sorted pairs (P, 2), i < j, of documents doc (M,) int64 that share a bucket key (M,) uint64. A bucket of
    m <= max_bucket gives its m(m-1)/2 pairs; a bigger one (a blob of exact copies) links each member to its smallest
    document only: a million copies cost a million pairs, not 5e11."""
    order = np.lexsort((doc, key))
    key, doc = key[order], doc[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # where each bucket starts
    size = np.diff(np.append(start, len(key)))
    run_start, run_end = np.repeat(start, size), np.repeat(start + size, size)  # per record: its bucket's bounds
    pos = np.arange(len(key))
    # 1) small buckets: the record at pos pairs with every later record of its bucket
    cnt = np.where(np.repeat(size <= max_bucket, size), run_end - pos - 1, 0)
    left = np.repeat(pos, cnt)
    right = left + 1 + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    # 2) big buckets: a star on the first (smallest) document
    big = np.repeat(size > max_bucket, size) & (pos != run_start)
    pairs = np.stack([doc[np.r_[left, run_start[big]]], doc[np.r_[right, pos[big]]]], axis=1)
    pairs.sort(axis=1)
    return _dedupe_pairs(pairs[pairs[:, 0] != pairs[:, 1]])

def _dedupe_pairs(pairs):
    """Unique rows of (P, 2) int64 doc ids < 2^31, sorted: one int64 code a pair sorts faster than np.unique(axis=0)."""
    code = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return np.stack([code >> 32, code & 0xFFFFFFFF], axis=1)

def lsh_pairs(sig, bands, max_bucket=200):
    """LSH over (D, k) signatures -> unique candidate pairs (P, 2) of row indices, one bucket table per band."""
    live = np.flatnonzero(~(sig == SIG_EMPTY).all(axis=1))  # documents without n-grams are never candidates
    keys = band_keys(sig[live], bands)  # (D', b)
    pairs = [bucket_pairs(keys[:, j], live, max_bucket) for j in range(bands)]
    return _dedupe_pairs(np.concatenate([np.zeros((0, 2), np.int64)] + pairs))

# ------------------------------------------------------------------- Union-find: clusters of duplicates, one survivor
class UnionFind:
    """Disjoint sets over 0..n-1 with path halving (Tarjan & van Leeuwen 1984): O(log n) amortized per operation."""
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = x = self.parent[self.parent[x]]  # point x at its grandparent, then move there
        return x

    def union(self, x, y):
        self.parent[self.find(x)] = self.find(y)

def priorities(names, seed):
    """A seeded 64-bit rank per name (a cluster keeps its lowest): the same survivor for any engine, order, resume."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}\0{n}".encode(), digest_size=8).digest(), 'little')
                     for n in names], dtype=np.uint64)

def choose_removed(n_docs, dup_pairs, prio):
    """Duplicate pairs -> (removed doc ids, sorted; number of clusters); only documents in a pair enter union-find."""
    members = np.unique(dup_pairs)  # (m,) doc ids
    uf = UnionFind(len(members))
    for i, j in np.searchsorted(members, dup_pairs).tolist():
        uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(len(members))], dtype=np.int64)
    order = np.lexsort((members, prio[members], roots))  # per root: the lowest priority first (ties: lowest id)
    members, roots = members[order], roots[order]
    first = np.r_[True, roots[1:] != roots[:-1]][:len(roots)]  # the survivor of each cluster
    return np.sort(members[~first]), int(first.sum())

# ----------------------------------------------- Reading documents (one a file, or JSONL) and the pool/Ray tasks
def _decode(data, stats):
    """bytes -> str; invalid UTF-8 is replaced (U+FFFD) and the document counted as non_utf8."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        stats['non_utf8'] += 1
        return data.decode('utf-8', errors='replace')

def read_documents(path, file_idx, text_key, stats):
    """Yield (file_idx, offset, length, name, text) per document of a file (length -1: the whole file). Binary files
    (a NUL byte in the first 8 KB) and JSONL lines without a string text_key are counted in stats and skipped."""
    with open(path, 'rb') as f:
        if not path.endswith('.jsonl'):
            data = f.read()
            if b'\0' in data[:8192]:
                stats['binary'] += 1
            else:
                yield file_idx, 0, -1, os.path.basename(path), _decode(data, stats)
            return
        offset = 0
        for lineno, line in enumerate(f):
            offset += len(line)
            if not line.strip():
                continue
            try:
                text = json.loads(_decode(line, stats))[text_key]
            except (ValueError, KeyError, TypeError):  # not JSON, not an object, no text_key
                text = None
            stats['bad_lines'] += not isinstance(text, str)
            if isinstance(text, str):
                yield file_idx, offset - len(line), len(line), f"{os.path.basename(path)}:{lineno}", text

def signature_shard(task):
    """Stage 1, one shard of input files -> {'docs': [(file_idx, offset, length, name)], 'sig': (D, k) uint32,
    'stats'}, pickled to task['cache'] (a temp file, then renamed) so that a rerun loads it instead."""
    if os.path.exists(task['cache']):  # done by an earlier run: the name fingerprints its files and settings
        with open(task['cache'], 'rb') as f:
            return pickle.load(f)
    marker = task.get('fail_once_marker')
    if marker and not os.path.exists(marker):  # test hook: the first attempt of this task dies
        open(marker, 'w').close()
        raise RuntimeError("injected failure of shard 0 (test hook)")
    stats, docs, texts = dict.fromkeys(('binary', 'non_utf8', 'bad_lines'), 0), [], []
    for idx, path in task['files']:
        for *doc, text in read_documents(path, idx, task['text_key'], stats):
            docs.append(tuple(doc))
            texts.append(text)
    sig = minhash_signatures(texts, task['num_hashes'], task['ngrams'], task['seed'])
    stats.update(docs=len(texts), bytes=sum(map(len, texts)), empty=int((sig == SIG_EMPTY).all(axis=1).sum()))
    with open(task['cache'] + '.tmp', 'wb') as f:
        pickle.dump({'docs': docs, 'sig': sig, 'stats': stats}, f)
    os.replace(task['cache'] + '.tmp', task['cache'])
    return {'docs': docs, 'sig': sig, 'stats': stats}

def verify_block(task):
    """Stage 3: (P,) bool, true Jaccard >= threshold, of candidate pairs (P, 2) whose documents are at task['locs']."""
    texts = []
    for path, offset, length in task['locs'].values():
        with open(path, 'rb') as f:
            f.seek(offset)
            text = f.read(length).decode('utf-8', errors='replace')
        texts.append(text if length < 0 else json.loads(text)[task['text_key']])
    return verify_pairs(task['pairs'], dict(zip(task['locs'], ngram_sets(texts, task['ngrams']))), task['threshold'])

def write_outputs(tasks):
    """Last stage of both modes: copy each src to dst with all its lines, the lines at keep_offsets (JSONL) or those
    whose hash is not in dups (exact), through a temp file and os.replace (never half a file). Returns lines removed."""
    removed = 0
    for t in tasks:
        with open(t['src'], 'rb') as f:
            lines = f.readlines()  # bytes, endings kept: what is kept is copied byte for byte
        keep = np.ones(len(lines), bool)
        if 'dups' in t and len(t['dups']):  # dups is sorted: a binary search per line, not a sort per file
            h, d = line_keys(lines), t['dups']
            keep = d[np.minimum(np.searchsorted(d, h), len(d) - 1)] != h
        elif 'keep_offsets' in t:
            keep = np.isin(np.cumsum([0] + [len(x) for x in lines[:-1]]), t['keep_offsets'])
        with open(t['dst'] + '.tmp', 'wb') as g:
            g.writelines(x for x, k in zip(lines, keep.tolist()) if k)
        os.replace(t['dst'] + '.tmp', t['dst'])
        removed += int((~keep).sum())
    return removed

def line_keys(lines):
    """(n,) uint64 hashes of lines (bytes); a line's identity ignores its ending ('x\\n', 'x\\r\\n', a final 'x')."""
    keys = b''.join(hashlib.blake2b(x.rstrip(b'\n').rstrip(b'\r'), digest_size=8).digest() for x in lines)
    return np.frombuffer(keys, dtype=np.uint64)

def line_hashes(paths):
    """Exact dedup, pass 1 for a group of files: (lines,) uint64 hashes of all their lines."""
    out = [np.zeros(0, np.uint64)]
    for p in paths:
        with open(p, 'rb') as f:
            out.append(line_keys(f))
    return np.concatenate(out)

# ----------------------------------------------------------------------- Executors: a process pool, or Ray tasks
def _die_with_parent(parent_pid):
    """Pool initializer: ask Linux to SIGKILL this worker when its parent dies (prctl(PR_SET_PDEATHSIG = 1)), so a
    killed run leaves no workers blocked on a pipe forever. A no-op on other systems."""
    if sys.platform.startswith('linux'):
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl: nobody will send the signal
            os._exit(1)

def map_tasks(fn, tasks, workers=None, ray=None, desc='', show=False):
    """[fn(t) for t in tasks] in order: as Ray tasks if ray is given, else in a fork process pool (inline for one
    worker or one task). The fork start method lets workers share the parent's memory (numpy, tables) for free."""
    import multiprocessing as mp
    from tqdm import tqdm
    workers = workers or os.cpu_count()
    with tqdm(total=len(tasks), desc=desc, disable=not show, leave=False, file=sys.stderr) as bar:
        if ray is not None:
            # max_retries + retry_exceptions: a task whose worker dies or raises runs again, up to 3 times
            remote = ray.remote(max_retries=3, retry_exceptions=True)(fn)
            refs = pending = [remote.remote(t) for t in tasks]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
            return ray.get(refs)
        local, out = workers <= 1 or len(tasks) <= 1, []
        with contextlib.nullcontext() if local else mp.get_context('fork').Pool(
                min(workers, len(tasks)), _die_with_parent, (os.getpid(),)) as pool:
            for r in map(fn, tasks) if local else pool.imap(fn, tasks):
                out.append(r)
                bar.update()
        return out

def _start_ray(address, workers):
    """Import Ray (only on this path) and connect to a cluster or start a local instance, unless already up."""
    try:
        import ray
    except ImportError:
        raise SystemExit("dedup: --engine=ray needs Ray: pip install 'ray>=2.9' (or --engine=local)") from None
    if not ray.is_initialized():  # num_cpus and include_dashboard are only for a local instance
        ray.init(address=address or None, num_cpus=None if address else workers or None, log_to_driver=False,
                 include_dashboard=None if address else False)
    # workers may lack this file (another folder or machine): ship our functions by value, not by module name
    if __name__ != '__main__':
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray

# ---------------------------------------------------------------------------------------------- The two pipelines
def _check_inputs(input_files, output_dir, input_dirs=()):
    """ValueError naming the fix for what would lose data: an unreadable input, two inputs of one name, an output
    folder that is an input, holds one or lies inside an input folder. Then create output_dir; return the paths."""
    files, out = [os.fspath(p) for p in input_files], os.path.realpath(output_dir) + os.sep
    for p in files:
        if not os.path.isfile(p) or not os.access(p, os.R_OK):
            raise ValueError(f"input {p} is not a readable file: fix --inputs")
        if (os.path.realpath(p) + os.sep).startswith(out):
            raise ValueError(f"--output_dir={output_dir} is or holds the input {p}: pick an output folder elsewhere")
    if any(out.startswith(os.path.realpath(d) + os.sep) for d in input_dirs):
        raise ValueError(f"--output_dir={output_dir} lies inside the input folder {input_dirs}: pick one outside")
    names = [os.path.basename(p) for p in files]
    if len(set(names)) != len(names):
        raise ValueError(f"inputs named alike {sorted({n for n in names if names.count(n) > 1})[:3]}: rename them")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is a file: pick a folder")
    os.makedirs(output_dir, exist_ok=True)
    return files

def exact_line_dedup(input_files, output_dir, num_workers=None, engine='local', ray_address='', progress=False):
    """Rewrite each input to output_dir/<same name> keeping only the lines that occur once in the whole corpus (a line
    repeated anywhere is removed everywhere; every input gets an output). Memory: 8 bytes a line. Returns stats."""
    t0 = time.time()
    files = _check_inputs(input_files, output_dir)
    ray = _start_ray(ray_address, num_workers) if engine == 'ray' else None
    groups = [files[i:i + 32] for i in range(0, len(files), 32)]  # 32 files a task: few, coarse tasks
    # 1) hash every line (in tasks); 2) the hashes that occur more than once (on the driver)
    h = np.concatenate([np.zeros(0, np.uint64)] + map_tasks(line_hashes, groups, num_workers, ray, 'hash', progress))
    u, c = np.unique(h, return_counts=True)
    dups = u[c > 1]
    # 3) rewrite every file without them (in tasks)
    tasks = [[{'src': p, 'dst': os.path.join(output_dir, os.path.basename(p)), 'dups': dups} for p in g]
             for g in groups]
    removed = sum(map_tasks(write_outputs, tasks, num_workers, ray, 'rewrite', progress))
    return {'files': len(files), 'lines': len(h), 'lines_removed': removed, 'repeated_line_hashes': len(dups),
            'time_s': round(time.time() - t0, 3)}

def _fingerprint(shard, settings):
    """Names a shard's saved signatures after its files (path, size, mtime) and the settings that shape them, so a
    replaced file or a changed setting is recomputed instead of reused."""
    key = [settings] + [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for _, p in shard]
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()

def minhash_dedup(input_files, num_hashes, num_bands, ngrams, jaccard_threshold, output_dir, seed=0,
                  num_workers=None, engine='local', ray_address='', shard_docs=1000, max_bucket=200, text_key='text',
                  progress=False, _interrupt_after_shards=None, _fail_once_marker=None):
    """Near-duplicate documents removed with MinHash + LSH (the module docstring's steps); survivors go to output_dir
    under their own names. engine='ray' runs the stages as Ray tasks, with the same result. Signatures are saved
    per shard in output_dir/.dedup_work, so a killed run resumes. _underscore arguments are test hooks."""
    _check_bands(num_hashes, num_bands)
    files = _check_inputs(input_files, output_dir)
    ray = _start_ray(ray_address, num_workers) if engine == 'ray' else None
    work_dir = os.path.join(output_dir, '.dedup_work')
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()
    # 1) Signatures, one task per shard (a JSONL file, or shard_docs one-document files); finished shards are saved
    shards = [[(i, p)] for i, p in enumerate(files) if p.endswith('.jsonl')]
    small = [(i, p) for i, p in enumerate(files) if not p.endswith('.jsonl')]
    shards += [small[i:i + shard_docs] for i in range(0, len(small), shard_docs)]
    settings = dict(num_hashes=num_hashes, ngrams=ngrams, seed=seed, text_key=text_key)
    tasks = [dict(settings, files=sh, cache=os.path.join(work_dir, f"sig_{s:06d}_{_fingerprint(sh, settings)}.pkl"),
                  fail_once_marker=_fail_once_marker if s == 0 else None) for s, sh in enumerate(shards)]
    stats = collections.Counter(resumed_shards=sum(os.path.exists(t['cache']) for t in tasks))  # done earlier
    metas = map_tasks(signature_shard, tasks[:_interrupt_after_shards], num_workers, ray, 'signatures', progress)
    if _interrupt_after_shards is not None:
        raise RuntimeError(f"interrupted after {_interrupt_after_shards} signature shards (test hook)")
    for m in metas:
        stats.update(m['stats'])
    docs = [d for m in metas for d in m['docs']]  # (file_idx, offset, length, name) of every document
    file_idx, offset, length = (np.array([d[k] for d in docs], dtype=np.int64) for k in range(3))
    names = [d[3] for d in docs]
    sig = np.concatenate([np.zeros((0, num_hashes), np.uint32)] + [m['sig'] for m in metas])  # (D, k)
    # 2) LSH on the driver: documents sharing a (band, bucket) become candidate pairs
    pairs = lsh_pairs(sig, num_bands, max_bucket)
    # 3) The true Jaccard of every candidate pair, in blocks of pairs (each block reads its own documents)
    vtasks = [{'pairs': blk, 'ngrams': ngrams, 'text_key': text_key, 'threshold': jaccard_threshold,
               'locs': {d: (files[file_idx[d]], int(offset[d]), int(length[d])) for d in np.unique(blk).tolist()}}
              for blk in np.split(pairs, range(2000, len(pairs), 2000))]
    dup_pairs = pairs[np.concatenate(map_tasks(verify_block, vtasks, num_workers, ray, 'verify', progress))]
    # 4) Union-find on the driver (~100 B a document; beyond 10^8, distributed connected components, Lacki et al. 2018)
    removed, n_clusters = choose_removed(len(names), dup_pairs, priorities(names, seed))
    # 5) Write the survivors, 64 files a task (a binary file gets no output)
    alive = ~np.isin(np.arange(len(names)), removed)
    wtasks = []
    for i, p in enumerate(files):
        dst, mine = os.path.join(output_dir, os.path.basename(p)), np.flatnonzero(file_idx == i)
        if p.endswith('.jsonl'):
            wtasks.append({'src': p, 'dst': dst, 'keep_offsets': offset[mine[alive[mine]]].tolist()})
        elif len(mine) and alive[mine[0]]:
            wtasks.append({'src': p, 'dst': dst})
        elif os.path.exists(dst):
            os.remove(dst)  # written by an earlier run, removed now
    map_tasks(write_outputs, [wtasks[i:i + 64] for i in range(0, len(wtasks), 64)], num_workers, ray, 'write', progress)
    shutil.rmtree(work_dir)
    return dict(stats, candidate_pairs=len(pairs), duplicate_pairs=len(dup_pairs), clusters=n_clusters,
                docs_removed=len(removed), files_written=len(wtasks), engine=engine,
                removed_names=[names[i] for i in removed.tolist()], time_s=round(time.time() - t0, 3))

# ---------------------------------------------------------------------------------------------------- Command line
def list_inputs(spec):
    """--inputs: a folder (all files, recursively, sorted), a glob, or a comma-separated list of files."""
    if ',' in spec:
        return sorted(spec.split(','))  # named files: a missing one is an error, not skipped
    files = [os.path.join(r, f) for r, _, fs in os.walk(spec) for f in fs] if os.path.isdir(spec) else glob.glob(
        spec, recursive=True)
    return sorted(f for f in files if os.path.isfile(f))

def die(msg):
    """A user error: one line naming the key and the fix, exit code 2, no traceback, nothing written."""
    print(f"dedup: error: {msg}", file=sys.stderr)
    sys.exit(2)

def main():
    """Run --mode on --inputs from this module's globals (set by configurator.py or an importer), checked first."""
    import importlib.util
    for bad, msg in ((mode not in ('minhash', 'exact'), f"--mode={mode!r}: use minhash or exact"),
                     (engine not in ('local', 'ray'), f"--engine={engine!r}: use local or ray"),
                     (not 1 <= num_hashes <= 4096, f"--num_hashes={num_hashes}: use 1 to 4096 (128 is usual)"),
                     (not 1 <= ngrams <= 64, f"--ngrams={ngrams}: use 1 to 64 words (5 is usual)"),
                     (not 0 < jaccard_threshold <= 1, f"--jaccard_threshold={jaccard_threshold}: use (0, 1]"),
                     (max_bucket < 2, f"--max_bucket={max_bucket}: use 2 or more (200 is usual)"),
                     (shard_docs < 1, f"--shard_docs={shard_docs}: use 1 or more"),
                     (num_workers < 0, f"--num_workers={num_workers}: use 0 (every core) or more"),
                     (not text_key, "--text_key is empty: name the JSONL field of the text"),
                     (not output_dir, "--output_dir is empty: name the output folder"),
                     (engine == 'ray' and importlib.util.find_spec('ray') is None,
                      "--engine=ray needs Ray: pip install 'ray>=2.9', or use --engine=local")):
        if bad:
            die(msg)
    bands = num_bands or choose_bands(num_hashes, jaccard_threshold)[0]
    try:
        _check_bands(num_hashes, bands)
        files = list_inputs(inputs)
        if not files:
            raise ValueError(f"no input files match --inputs={inputs}: give a folder, a glob or file1,file2")
        in_dirs = [inputs] if os.path.isdir(inputs) else [inputs.split('**')[0] or '.'] if '**' in inputs else []
        files = _check_inputs(files, output_dir, in_dirs)
    except ValueError as e:
        die(e)
    lsh = f" | {num_hashes} hashes = {bands} bands x {num_hashes // bands} rows, {ngrams}-grams, J>={jaccard_threshold}"
    print(f"{mode} dedup: {len(files):,} files -> {output_dir} | engine {engine}" + lsh * (mode == 'minhash'))
    s = exact_line_dedup(files, output_dir, num_workers, engine, ray_address, progress) if mode == 'exact' else \
        minhash_dedup(files, num_hashes, bands, ngrams, jaccard_threshold, output_dir, seed, num_workers, engine,
                      ray_address, shard_docs, max_bucket, text_key, progress)
    print(' | '.join(f"{k} {v:,}" for k, v in s.items() if isinstance(v, int)) + f" | {s['time_s']} s")
    return s

if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

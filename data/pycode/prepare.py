"""
data/pycode/prepare.py: Python source code as token files, offline: the .py files of the running environment.

No download needed: the Python that runs this script carries its own corpus, the standard library and every
installed package (on the GPU machine: torch, scipy, sympy, jax, ...: results/data.md). The file rules are those of
the pycode reference run against which bench/time_to_quality.py measures nanoGPT on the very same token files:
1) files: every `.py` under the running Python's sysconfig `stdlib`, `purelib` and `platlib` paths (or under --src),
   each once by real path, sorted. --max_mb caps the corpus for a quick start, taking the files in an order that does
   not depend on where Python is installed (list_py_files);
2) read as UTF-8 (undecodable files are counted and skipped), empty files dropped, exact duplicates dropped by content
   (the first path keeps it);
3) split by file: validation = files whose content SHA-1 digest has a first byte divisible by 100 (~1.2%), so the
   split of a file never depends on the other files;
4) near-duplicates (dedup.py's MinHash + LSH, word 5-grams, Jaccard >= 0.8) are removed from *train* only: a train
   file close to a validation file is dropped (decontamination), and of a group of close train files the first
   survives. Validation stays exactly the rule's set;
5) bpe.build_token_folder: a 16K byte-level BPE trained on a seeded sample of the train files, both splits encoded in
   parallel with '<|endoftext|>' after each file: <out_dir>/train.bin, val.bin, meta.json, tokenizer/.
   bits/byte = loss (nats/token) / ln 2 * val_tokens / val_bytes (meta.json records val_bytes).
meta.json also records the manifest: Python version, roots, installed package versions, and the files and bytes left
after each step. Re-running skips the finished steps when the files are the same.

Run, then train:
    python data/pycode/prepare.py --max_mb=8 --vocab_size=4096    # the Quickstart's corpus: seconds on a laptop
    python data/pycode/prepare.py                                  # everything (all cores; minutes for ~400 MB)
    python data/pycode/prepare.py --src=/path/to/some/repo --out_dir=data/myrepo --vocab_size=8192
    python train.py config/pycode.py
"""
import hashlib
import importlib.metadata
import os
import platform
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root
import bpe  # noqa: E402

# -----------------------------------------------------------------------------
src = ''  # folder to collect .py files from; '' = the running Python's stdlib, purelib and platlib
out_dir = ''  # where train.bin/val.bin/meta.json go; '' = this script's folder (data/pycode)
max_mb = 0  # read at most this many MB of .py files (stdlib first, by relative path); 0 = no cap
vocab_size = 16384  # BPE vocabulary (256 bytes + merges + '<|endoftext|>'); > 65,536 switches to uint32
tokenizer_dir = ''  # '' = train a tokenizer into <out_dir>/tokenizer; else use this existing one (bpe.py's files)
bpe_sample_bytes = 40_000_000  # the BPE is trained on a seeded sample of train files of about this many bytes
seed = 1337  # seeds the BPE sample
near_dedup = True  # remove near-duplicate train files with dedup.py's MinHash (False = exact duplicates only)
jaccard_threshold = 0.8  # near-duplicate = Jaccard similarity of word 5-gram sets at least this
num_workers = 0  # processes for reading, MinHash, BPE and encoding; 0 = all cores
progress = True  # progress bars
# -----------------------------------------------------------------------------
NUM_HASHES = 128  # MinHash signature length (dedup.py's default)


def source_roots(src=''):
    """Folders to search: --src, or the running Python's stdlib, purelib and platlib, in that order."""
    if src:
        if not os.path.isdir(src):
            raise FileNotFoundError(f"--src={src!r} is not a folder: give a folder that holds .py files")
        return [os.path.realpath(src)]
    paths = sysconfig.get_paths()
    roots = [os.path.realpath(paths[k]) for k in ('stdlib', 'purelib', 'platlib') if os.path.isdir(paths[k])]
    return list(dict.fromkeys(roots))  # distinct, order kept


def list_py_files(roots, max_mb=0):
    """Real paths of the *.py files under the roots, each once, sorted. With max_mb, only the first max_mb megabytes
    in the order (root, path relative to it): the same Python with the same packages picks the same files wherever
    it is installed, and the stdlib alone fills a small cap. A root inside another (site-packages inside the stdlib
    folder) is walked as its own root, not as part of the outer one."""
    found, budget = set(), max_mb * 1e6 if max_mb else float('inf')
    for root in roots:
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in roots]
            paths += [os.path.join(dirpath, f) for f in filenames if f.endswith('.py')]
        for path in map(os.path.realpath, sorted(paths)):  # a file reached twice through a symlink counts once
            if path not in found and os.path.isfile(path):
                budget -= os.path.getsize(path) if max_mb else 0
                if budget < 0:
                    return sorted(found)
                found.add(path)
    return sorted(found)


def _read_one(path):
    """(sha1 digest of the bytes, text or None if not UTF-8, size in bytes); unreadable files count as empty."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return b'', None, 0
    try:
        return hashlib.sha1(data).digest(), data.decode('utf-8'), len(data)
    except UnicodeDecodeError:
        return b'', None, len(data)


def select_files(paths, num_workers=None, progress=True):
    """Read, decode, drop empty, undecodable and exact-duplicate files. Returns (files, stats) with files a list of
    (path, sha1 digest, text) in path order, and stats {step: {files, bytes}}."""
    stats = {step: {'files': 0, 'bytes': 0} for step in ('found', 'undecodable', 'empty', 'exact_duplicates')}
    files, seen = [], set()
    # threads: reading and hashing release the GIL, and the texts land in this process without copies
    with ThreadPoolExecutor(max(4, bpe.num_cores(num_workers))) as ex:
        for path, (digest, text, size) in tqdm(zip(paths, ex.map(_read_one, paths, chunksize=64)), total=len(paths),
                                               desc='read files', unit='file', disable=not progress):
            step = 'empty' if size == 0 else 'undecodable' if text is None else \
                'exact_duplicates' if digest in seen else None
            for s in ('found', step):
                if s:
                    stats[s]['files'] += 1
                    stats[s]['bytes'] += size
            if step is None:
                seen.add(digest)
                files.append((path, digest, text))
    return files, stats


def is_val_file(digest):
    """The validation rule: the first byte of the content's SHA-1 digest is divisible by 100."""
    return digest[0] % 100 == 0


_texts = None  # the texts of near_duplicate_drops, inherited by the forked MinHash workers


def _signatures(job):
    import dedup
    return dedup.minhash_signatures(_texts[job[0]:job[1]], NUM_HASHES, 5, 0)


def near_duplicate_drops(texts, is_val, threshold, num_workers=None, progress=True):
    """Indices of train files to drop, and the number of LSH candidate pairs: union-find clusters of files whose word
    5-gram Jaccard similarity (MinHash + LSH candidates, then the exact Jaccard) is >= threshold. A cluster with a
    validation file loses all its train files; otherwise its first file (path order) survives."""
    global _texts
    import dedup  # the repo's MinHash, beside bpe.py
    n, workers = len(texts), bpe.num_cores(num_workers)
    step = max(1, min(500, n // (4 * workers) + 1))  # batches of files: at least 4 per worker
    jobs = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    _texts = texts
    try:
        sigs = list(tqdm(bpe.parallel_map(_signatures, jobs, min(workers, len(jobs))), total=len(jobs),
                         desc='minhash', unit='batch', disable=not progress))
    finally:
        _texts = None
    pairs = dedup.lsh_pairs(np.concatenate(sigs), dedup.choose_bands(NUM_HASHES, threshold)[0])
    # verify the candidates with the true Jaccard similarity, then cluster
    sets, uf = {}, dedup.UnionFind(n)
    for i, j in tqdm(pairs.tolist(), desc='verify pairs', disable=not progress or not len(pairs)):
        for d in (i, j):
            if d not in sets:
                sets[d] = dedup.ngram_set(texts[d], 5)
        if dedup.jaccard(sets[i], sets[j]) >= threshold:
            uf.union(i, j)
    clusters = {}
    for d in sets:
        clusters.setdefault(uf.find(d), []).append(d)
    drops = set()
    for members in clusters.values():
        train = sorted(d for d in members if not is_val[d])
        drops.update(train if len(train) < len(members) else train[1:])
    return drops, len(pairs)


def prepare(src='', out_dir='', vocab_size=16384, tokenizer_dir='', bpe_sample_bytes=40_000_000, seed=1337,
            near_dedup=True, jaccard_threshold=0.8, num_workers=None, progress=True, max_mb=0):
    """Build <out_dir>/train.bin, val.bin, meta.json (and tokenizer/); returns the meta dict."""
    # 1) + 2) the files
    roots = source_roots(src)
    paths = list_py_files(roots, max_mb)
    print(f"{len(paths):,} .py files under {', '.join(roots)}" + (f" (the first {max_mb} MB)" if max_mb else ''))
    files, stats = select_files(paths, num_workers, progress)
    if not files:
        raise bpe.DataError(f"no usable .py file under {', '.join(roots)} ({stats['found']['files']} found, "
                            f"{stats['empty']['files']} empty, {stats['undecodable']['files']} not UTF-8)")

    # 3) the split, by file
    texts = [text for _, _, text in files]
    is_val = np.array([is_val_file(digest) for _, digest, _ in files], dtype=bool)
    if is_val.all() or not is_val.any():
        raise bpe.DataError(f"{len(files)} file(s) give an empty train or validation split under the SHA-1 rule "
                            f"(val: first digest byte % 100 == 0, ~1.2% of files): give a larger corpus")

    # 4) near-duplicates, train side only
    drops = set()
    if near_dedup:
        drops, n_candidates = near_duplicate_drops(texts, is_val, jaccard_threshold, num_workers, progress)
        stats['near_duplicates'] = {'files': len(drops), 'bytes': sum(len(texts[i].encode()) for i in drops),
                                    'lsh_candidate_pairs': n_candidates, 'jaccard_threshold': jaccard_threshold}
    splits = {'train': [i for i in range(len(files)) if not is_val[i] and i not in drops],
              'val': [i for i in range(len(files)) if is_val[i]]}
    for name, idx in splits.items():
        stats[name] = {'files': len(idx), 'bytes': sum(len(texts[i].encode()) for i in idx)}
    for step, s in stats.items():
        print(f"  {step:>16}: {s['files']:>7,} files {s['bytes'] / 1e6:>9.1f} MB")

    # 5) the tokenizer on a seeded sample of train files, then the token files
    sample, size = [], 0
    for k in np.random.default_rng(seed).permutation(len(splits['train'])):
        if size >= bpe_sample_bytes:
            break
        sample.append(texts[splits['train'][k]])
        size += len(sample[-1])
    manifest = {'python': platform.python_version(), 'sys_prefix': sys.prefix, 'roots': sorted(roots),
                'max_mb': max_mb, 'files': stats, 'packages': {} if src else package_versions()}
    return bpe.build_token_folder({s: [texts[i] for i in idx] for s, idx in splits.items()},
                                  os.path.abspath(out_dir or os.path.dirname(os.path.abspath(__file__))), vocab_size,
                                  sorted(roots), tokenizer_dir, sample, num_workers, progress,
                                  split_rule='val = files whose content SHA-1 digest has a first byte % 100 == 0',
                                  manifest=manifest)


def package_versions():
    """{distribution name: version} of what is installed in the running environment (the corpus's content)."""
    names = {d.metadata['Name']: d.version for d in importlib.metadata.distributions() if d.metadata['Name']}
    return dict(sorted(names.items(), key=lambda kv: kv[0].lower()))


def main():
    """The command: check every setting (a mistake: one line on stderr, exit 2, nothing written), then prepare()."""
    rules = {'src': (not src or os.path.isdir(src), f"--src={src!r} is not a folder: give one that holds .py files"),
             'max_mb': (max_mb >= 0, "give the megabytes of .py files to read, or 0 for all of them"),
             'vocab_size': (vocab_size > 256, "give at least 257 (256 bytes + '<|endoftext|>')"),
             'tokenizer_dir': (not tokenizer_dir or os.path.isfile(os.path.join(tokenizer_dir, 'merges.txt')),
                               "holds no merges.txt: train one with bpe.py first, or leave it empty"),
             'bpe_sample_bytes': (bpe_sample_bytes > 0, "give the bytes of train files to train the BPE on"),
             'jaccard_threshold': (0 < jaccard_threshold <= 1, "give a Jaccard similarity in (0, 1], e.g. 0.8"),
             'num_workers': (num_workers >= 0, "give 0 (every core) or a number of processes"),
             'out_dir': (not os.path.isfile(out_dir), "is a file: give a folder for the token files")}
    for key, (ok, fix) in rules.items():
        if not ok:
            bpe.die(fix if fix.startswith('--') else f"--{key}={globals()[key]!r}: {fix}")
    try:
        prepare(src, out_dir, vocab_size, tokenizer_dir, bpe_sample_bytes, seed, near_dedup, jaccard_threshold,
                num_workers, progress, max_mb)
    except bpe.DataError as e:  # no usable file, or a split left empty
        bpe.die(e)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'configurator.py')).read())
    main()

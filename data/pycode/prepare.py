"""
data/pycode/prepare.py: Python source code at scale, offline: every .py file of the running environment.

No download needed: the Python that runs this script carries its own corpus, the standard library and every
installed package (on the GPU machine: torch, scipy, sympy, jax, ... about 395 MB of distinct files). The file
rules are those of ../shared/ANCHORS.md (pycode section), so that validation bits per byte compare directly with
the nanoGPT reference measured there:
1) files: every `.py` under the running Python's sysconfig `stdlib`, `purelib` and `platlib` paths (or under
   --src), by real path (a file reached twice through a symlink counts once), sorted by that path;
2) read as UTF-8 (undecodable files are counted and skipped), empty files dropped, exact duplicates dropped by
   content (the first path keeps it);
3) split by file: validation = files whose content SHA-1 digest has a first byte divisible by 100 (~1.2%);
4) near-duplicates (dedup.py's MinHash + LSH, word 5-grams, Jaccard >= 0.8) are removed from *train* only:
   a train file close to a validation file is dropped (decontamination), and of a group of close train files
   one survives. Validation stays exactly the ANCHORS set;
5) a byte-level BPE (bpe.py, 16K vocab) trained on a seeded sample of the train files;
6) both splits encoded in parallel, '<|endoftext|>' after each file:
       <out_dir>/train.bin, val.bin, meta.json (with bytes per split for bits per byte), tokenizer/
   bits/byte = loss (nats/token) * n_tokens / (n_bytes * ln 2) = loss / ln 2 / (val_bytes / val_tokens).
meta.json also records the manifest: Python version, roots, installed package versions, and file counts and
bytes at each step. Re-running skips the finished steps (tokenizer, token files) when the files are the same.

Run (all cores; a few minutes for ~400 MB on 16 cores):
    python data/pycode/prepare.py
    python data/pycode/prepare.py --src=/path/to/some/repo --out_dir=data/myrepo --vocab_size=8192
then
    python train.py config/pycode.py
"""
import hashlib
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import bpe  # noqa: E402  (the repo root is on sys.path only now)

# -----------------------------------------------------------------------------
src = ''  # folder to collect .py files from; '' = the running Python's stdlib, purelib and platlib
out_dir = ''  # where train.bin/val.bin/meta.json go; '' = this script's folder (data/pycode)
vocab_size = 16384  # BPE vocabulary (256 bytes + merges + '<|endoftext|>'); > 65,536 switches to uint32
tokenizer_dir = ''  # '' = train a tokenizer into <out_dir>/tokenizer; else use this existing one (bpe.py's files)
bpe_sample_bytes = 40_000_000  # the BPE is trained on a seeded sample of train files of about this many bytes
seed = 1337  # seeds the BPE sample
near_dedup = True  # remove near-duplicate train files with dedup.py's MinHash (False = exact duplicates only)
jaccard_threshold = 0.8  # near-duplicate = Jaccard similarity of word 5-gram sets at least this
num_workers = 0  # processes for reading, MinHash, BPE and encoding; 0 = all cores
progress = True  # progress bars
# -----------------------------------------------------------------------------
exec(open(os.path.join(ROOT, 'configurator.py')).read())
# -----------------------------------------------------------------------------

EOT = '<|endoftext|>'
HERE = os.path.dirname(os.path.abspath(__file__))


def source_roots(src=''):
    """Folders to search: --src, or the running Python's stdlib, purelib and platlib (ANCHORS.md's rule)."""
    if src:
        if not os.path.isdir(src):
            raise FileNotFoundError(f"--src={src!r} is not a folder: give a folder that holds .py files")
        return [os.path.realpath(src)]
    paths = sysconfig.get_paths()
    return sorted({os.path.realpath(paths[k]) for k in ('stdlib', 'purelib', 'platlib') if os.path.isdir(paths[k])})


def list_py_files(roots):
    """Real paths of every *.py file under the roots, each once, sorted."""
    found = set()
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                if name.endswith('.py'):
                    path = os.path.realpath(os.path.join(dirpath, name))
                    if os.path.isfile(path):
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
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    return hashlib.sha1(data).digest(), text, len(data)


def select_files(paths, num_workers=None, progress=True):
    """Read, decode, drop empty, undecodable and exact-duplicate files. Returns (files, stats) with files a list
    of (path, sha1 digest, text) in path order."""
    stats = {'found': {'files': len(paths), 'bytes': 0}, 'undecodable': {'files': 0, 'bytes': 0},
             'empty': {'files': 0, 'bytes': 0}, 'exact_duplicates': {'files': 0, 'bytes': 0}}
    files, seen = [], set()
    # threads: reading and hashing release the GIL, and the texts land in this process without copies
    with ThreadPoolExecutor(max(4, bpe._num_workers(num_workers))) as ex:
        results = ex.map(_read_one, paths, chunksize=64)
        for path, (digest, text, size) in tqdm(zip(paths, results), total=len(paths), desc='read files',
                                               unit='file', disable=not progress):
            stats['found']['bytes'] += size
            if size == 0:
                step = 'empty'
            elif text is None:
                step = 'undecodable'
            elif digest in seen:
                step = 'exact_duplicates'
            else:
                seen.add(digest)
                files.append((path, digest, text))
                continue
            stats[step]['files'] += 1
            stats[step]['bytes'] += size
    return files, stats


def is_val_file(digest):
    """ANCHORS.md's validation rule: the first byte of the content's SHA-1 digest is divisible by 100."""
    return digest[0] % 100 == 0


# -- near-duplicates with dedup.py's MinHash (signatures in parallel over batches of files)
_texts = None


def _signatures(args):
    import dedup
    lo, hi, num_hashes = args
    return dedup.minhash_signatures(_texts[lo:hi], num_hashes, 5, 0)


def near_duplicate_drops(texts, is_val, threshold, num_workers=None, progress=True, num_hashes=128):
    """Indices of train files to drop: union-find clusters of files whose word 5-gram Jaccard similarity (MinHash
    + LSH candidates, then the exact Jaccard) is >= threshold. A cluster with a validation file loses all its
    train files; otherwise its first file (path order) survives. Validation files are never dropped."""
    global _texts
    import dedup
    _texts = texts
    n = len(texts)
    step = max(1, min(500, n // (4 * bpe._num_workers(num_workers)) + 1))
    jobs = [(lo, min(lo + step, n), num_hashes) for lo in range(0, n, step)]
    workers = min(bpe._num_workers(num_workers), max(1, len(jobs)))
    try:
        if workers == 1 or not bpe.FORK:
            sigs = list(tqdm(map(_signatures, jobs), total=len(jobs), desc='minhash', disable=not progress))
        else:
            with mp.get_context('fork').Pool(workers) as pool:
                sigs = list(tqdm(pool.imap(_signatures, jobs), total=len(jobs), desc='minhash', unit='batch',
                                 disable=not progress))
    finally:
        _texts = None
    sig = np.concatenate(sigs) if sigs else np.zeros((0, num_hashes), np.uint32)
    bands, _ = dedup.choose_bands(num_hashes, threshold)
    pairs = dedup.lsh_pairs(sig, bands)
    # verify candidates with the true Jaccard similarity, then cluster
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
        if len(members) < 2:
            continue
        members.sort()
        train = [d for d in members if not is_val[d]]
        drops.update(train if len(train) < len(members) else train[1:])
    return drops, len(pairs)


def package_versions():
    """{distribution name: version} of what is installed in the running environment (the corpus's content)."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata['Name']
        if name:
            out[name] = dist.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def _fingerprint(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare(src='', out_dir='', vocab_size=16384, tokenizer_dir='', bpe_sample_bytes=40_000_000, seed=1337,
            near_dedup=True, jaccard_threshold=0.8, num_workers=None, progress=True):
    """Build <out_dir>/train.bin, val.bin, meta.json (and tokenizer/); returns the meta dict."""
    t_start = time.time()
    timing = {}
    out_dir = os.path.abspath(out_dir or HERE)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, 'meta.json')
    old = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    done = old.get('steps', {})

    # 1) + 2) the files
    roots = source_roots(src)
    paths = list_py_files(roots)
    print(f"{len(paths):,} .py files under {', '.join(roots)}")
    files, stats = select_files(paths, num_workers, progress)
    if not files:
        raise ValueError(f"no usable .py file under {', '.join(roots)} ({stats['found']['files']} found, "
                         f"{stats['empty']['files']} empty, {stats['undecodable']['files']} not UTF-8)")
    timing['read'] = round(time.time() - t_start, 2)

    # 3) the split, by file
    is_val = np.array([is_val_file(digest) for _, digest, _ in files], dtype=bool)
    if is_val.all() or not is_val.any():
        raise ValueError(f"{len(files)} file(s) give an empty train or validation split under the SHA-1 rule "
                         f"(val: first digest byte % 100 == 0, ~1.2% of files): give a larger corpus")

    # 4) near-duplicates, train side only
    texts = [text for _, _, text in files]
    if near_dedup:
        t0 = time.time()
        drops, n_candidates = near_duplicate_drops(texts, is_val, jaccard_threshold, num_workers, progress)
        stats['near_duplicates'] = {'files': len(drops), 'bytes': sum(len(texts[i].encode('utf-8')) for i in drops),
                                    'lsh_candidate_pairs': n_candidates, 'jaccard_threshold': jaccard_threshold}
        timing['near_dedup'] = round(time.time() - t0, 2)
    else:
        drops = set()
        stats['near_duplicates'] = 'skipped (--near_dedup=False)'
    splits = {'train': [i for i in range(len(files)) if not is_val[i] and i not in drops],
              'val': [i for i in range(len(files)) if is_val[i]]}
    for name, idx in splits.items():
        stats[name] = {'files': len(idx), 'bytes': sum(len(texts[i].encode('utf-8')) for i in idx)}
    for step, s in stats.items():
        if isinstance(s, dict):
            print(f"  {step:>16}: {s['files']:>7,} files {s['bytes'] / 1e6:>9.1f} MB")
    # the fingerprint of the selected corpus: same files and contents -> same token files
    fp_files = _fingerprint([files[i][1].hex() for i in splits['train']], [files[i][1].hex() for i in splits['val']])

    # 5) the tokenizer, on a seeded sample of train files
    own_tokenizer = not tokenizer_dir
    tok_dir = os.path.join(out_dir, 'tokenizer') if own_tokenizer else os.path.abspath(tokenizer_dir)
    fp_tok = _fingerprint(fp_files, vocab_size, bpe_sample_bytes, seed)
    steps = {}
    if own_tokenizer and not (done.get('tokenizer') == fp_tok and os.path.isfile(os.path.join(tok_dir, 'merges.txt'))):
        t0 = time.time()
        order = np.random.default_rng(seed).permutation(len(splits['train']))
        sample, size = [], 0
        for k in order:
            if size >= bpe_sample_bytes:
                break
            sample.append(texts[splits['train'][k]])
            size += len(sample[-1])
        print(f"BPE: vocab {vocab_size} on a sample of {len(sample):,} train files ({size / 1e6:.1f} MB)")
        with tempfile.TemporaryDirectory() as tmp:
            sample_txt = os.path.join(tmp, 'sample.txt')
            with open(sample_txt, 'w', encoding='utf-8') as f:
                f.write(EOT.join(sample))
            del sample
            vocab, merges = bpe.train_bpe(sample_txt, vocab_size, [EOT], num_workers, progress)
        bpe.save_tokenizer(vocab, merges, [EOT], tok_dir)
        timing['tokenizer'] = round(time.time() - t0, 2)
    else:
        print(f"tokenizer: using {tok_dir}" + (" (already trained on these files)" if own_tokenizer else ''))
    if own_tokenizer:
        steps['tokenizer'] = fp_tok
    tokenizer = bpe.Tokenizer.from_dir(tok_dir)
    tok_sha1 = bpe.tokenizer_sha1(tok_dir)
    dtype = bpe.token_dtype(tokenizer.vocab_size)
    meta = {
        'vocab_size': tokenizer.vocab_size,
        'dtype': dtype,
        'eot_id': tokenizer.eot_id,
        'tokenizer_dir': 'tokenizer' if own_tokenizer else tok_dir,
        'source': roots,
        'split_rule': 'val = files whose content SHA-1 digest has a first byte % 100 == 0 (ANCHORS.md)',
        'splits': {},
        'steps': steps,
        'complete': False,
        'manifest': {'python': platform.python_version(), 'sys_prefix': sys.prefix, 'roots': roots,
                     'files': stats, 'packages': package_versions() if not src else {}},
    }
    if dtype == 'uint32':
        meta['dtype_note'] = f"vocab_size {tokenizer.vocab_size} > 65,536: ids are stored as uint32 (4 bytes a token)"
        print(f"note: {meta['dtype_note']}")
    _write_json(meta_path, meta)

    # 6) the token files, in parallel
    for split, idx in splits.items():
        fp = _fingerprint(fp_files, tok_sha1, split)
        path = os.path.join(out_dir, f'{split}.bin')
        old_split = old.get('splits', {}).get(split)
        if done.get(split) == fp and os.path.isfile(path) and old_split and \
                os.path.getsize(path) == old_split['tokens'] * np.dtype(dtype).itemsize:
            print(f"{split}.bin: already built from these files, skipped")
            meta['splits'][split] = old_split
        else:
            t0 = time.time()
            stats_enc = bpe.encode_documents(tokenizer, [texts[i] for i in idx], path, num_workers, progress,
                                             desc=f'encode {split}')
            timing[split] = round(time.time() - t0, 2)
            meta['splits'][split] = {'docs': len(idx), 'bytes': stats[split]['bytes'], 'tokens': stats_enc['n_tokens']}
        steps[split] = fp
        _write_json(meta_path, meta)

    # the summary; val_bytes lets train.py report bits per byte (tokenizer-independent)
    meta['val_bytes'] = meta['splits']['val']['bytes']
    meta['bytes_per_token'] = round(meta['splits']['train']['bytes'] / max(1, meta['splits']['train']['tokens']), 4)
    meta['complete'] = True
    meta['timing_s'] = {**timing, 'total': round(time.time() - t_start, 2)}
    _write_json(meta_path, meta)
    for split, s in meta['splits'].items():
        print(f"{split}: {s['docs']:,} files, {s['bytes']:,} bytes, {s['tokens']:,} tokens -> {out_dir}/{split}.bin")
    print(f"{meta['bytes_per_token']:.2f} bytes per token; vocab {meta['vocab_size']}, {dtype}; "
          f"done in {time.time() - t_start:.1f}s ({', '.join(f'{k} {v}s' for k, v in timing.items())})")
    return meta


if __name__ == '__main__':
    try:
        prepare(src, out_dir, vocab_size, tokenizer_dir, bpe_sample_bytes, seed, near_dedup, jaccard_threshold,
                num_workers or None, progress)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

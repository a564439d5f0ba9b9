"""
data/docs/prepare.py: the English documentation corpus as token files for train.py, offline.

The corpus is `../shared/data/text/docs_en.txt.gz` (692 English pages of the Python 3.11 docs, the Debian
handbook, reference and FAQ, and the GNU coding standards; documents separated by '<|endoftext|>' lines;
16.3 MB). This script
1) reads the documents (or those of any text file given with --src),
2) splits them into train/val *by document* with a fixed seed (val ~2%): a page is never in both,
3) trains a 10K byte-level BPE with bpe.py on the train documents only (or uses --tokenizer_dir),
4) encodes both splits in parallel into flat token files, '<|endoftext|>' after each document:
       <out_dir>/train.bin, <out_dir>/val.bin   (uint16; uint32 when the vocab has more than 65,536 ids)
       <out_dir>/meta.json                      (vocab_size, dtype, eot_id, tokenizer_dir, sizes in docs/bytes/tokens)
       <out_dir>/tokenizer/                     (vocab.json, merges.txt, special_tokens.json)
Re-running with the same inputs skips finished steps (meta.json records a fingerprint per step).

Run (a few seconds on a laptop):
    python data/docs/prepare.py
    python data/docs/prepare.py --src=my_corpus.txt --out_dir=data/mine --vocab_size=8000
then
    python train.py config/quick.py        # or config/docs.py on a GPU
"""
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import bpe  # noqa: E402  (the repo root is on sys.path only now)

# -----------------------------------------------------------------------------
src = ''  # text file (.txt or .txt.gz), documents separated by '<|endoftext|>'; '' = the shared docs_en.txt.gz
out_dir = ''  # where train.bin/val.bin/meta.json go; '' = this script's folder (data/docs)
vocab_size = 10000  # BPE vocabulary: 256 bytes + merges + '<|endoftext|>'
tokenizer_dir = ''  # '' = train a tokenizer into <out_dir>/tokenizer; else use this existing one (bpe.py's files)
val_fraction = 0.02  # share of documents held out for validation
seed = 1337  # seeds the document-level train/val split
num_workers = 0  # processes for BPE pre-tokenization and encoding; 0 = all cores
progress = True  # progress bars
# -----------------------------------------------------------------------------
exec(open(os.path.join(ROOT, 'configurator.py')).read())
# -----------------------------------------------------------------------------

EOT = '<|endoftext|>'
HERE = os.path.dirname(os.path.abspath(__file__))


def default_src():
    data = os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
    return os.path.abspath(os.path.join(data, 'text', 'docs_en.txt.gz'))


def read_documents(path):
    """The documents of a text file (gzip if it ends in .gz), split on '<|endoftext|>', stripped of surrounding
    whitespace, empty ones dropped. Returns (docs, sha1 of the file's bytes)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"source text not found: {path!r}. Give --src=<a .txt or .txt.gz file whose "
                                f"documents are separated by {EOT}>, or put the shared data at ../shared/data "
                                f"(or set LMSCRATCH_DATA)")
    with open(path, 'rb') as f:
        raw = f.read()
    sha1 = hashlib.sha1(raw).hexdigest()
    if path.endswith('.gz'):
        raw = gzip.decompress(raw)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        text = raw.decode('utf-8', errors='replace')
        n_bad = text.count('\ufffd') - raw.count('\ufffd'.encode('utf-8'))
        print(f"warning: {path} is not valid UTF-8: {n_bad} bad byte sequence(s) replaced by U+FFFD", file=sys.stderr)
    docs = [d.strip() for d in text.split(EOT)]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"{path} holds no text (0 non-empty documents): nothing to train on")
    return docs, sha1


def split_documents(n_docs, val_fraction, seed):
    """Boolean mask of the validation documents: a seeded random choice of round(n_docs * val_fraction) (at
    least 1) documents. The split is by document, so no page is in both train and val."""
    if n_docs < 2:
        raise ValueError(f"need at least 2 documents to split into train and val, got {n_docs}")
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


def _fingerprint(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare(src='', out_dir='', vocab_size=10000, tokenizer_dir='', val_fraction=0.02, seed=1337, num_workers=None,
            progress=True):
    """Build <out_dir>/train.bin, val.bin, meta.json (and tokenizer/); returns the meta dict."""
    t_start = time.time()
    src = os.path.abspath(src or default_src())
    out_dir = os.path.abspath(out_dir or HERE)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, 'meta.json')
    old = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    done = old.get('steps', {})

    # 1) documents and the split
    docs, src_sha1 = read_documents(src)
    is_val = split_documents(len(docs), val_fraction, seed)
    splits = {'train': [d for d, v in zip(docs, is_val) if not v], 'val': [d for d, v in zip(docs, is_val) if v]}
    print(f"{src}: {len(docs):,} documents -> {len(splits['train']):,} train, {len(splits['val']):,} val "
          f"(seed {seed})")

    # 2) the tokenizer: trained on the train documents only, so val stays unseen
    own_tokenizer = not tokenizer_dir
    tok_dir = os.path.join(out_dir, 'tokenizer') if own_tokenizer else os.path.abspath(tokenizer_dir)
    fp_tok = _fingerprint(src_sha1, vocab_size, val_fraction, seed)
    steps = {}
    timing = {}
    t0 = time.time()
    if own_tokenizer and not (done.get('tokenizer') == fp_tok and os.path.isfile(os.path.join(tok_dir, 'merges.txt'))):
        with tempfile.TemporaryDirectory() as tmp:
            train_txt = os.path.join(tmp, 'train.txt')
            with open(train_txt, 'w', encoding='utf-8') as f:
                f.write(EOT.join(splits['train']))
            vocab, merges = bpe.train_bpe(train_txt, vocab_size, [EOT], num_workers, progress)
        bpe.save_tokenizer(vocab, merges, [EOT], tok_dir)
        timing['tokenizer'] = round(time.time() - t0, 2)
        if len(vocab) < vocab_size:
            print(f"note: the text ran out of pairs: the vocabulary has {len(vocab)} tokens, not {vocab_size}")
    else:
        print(f"tokenizer: using {tok_dir}" + (" (already trained on these inputs)" if own_tokenizer else ''))
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
        'source': src,
        'source_sha1': src_sha1,
        'seed': seed,
        'val_fraction': val_fraction,
        'splits': {},
        'steps': steps,
        'complete': False,
    }
    if dtype == 'uint32':
        meta['dtype_note'] = f"vocab_size {tokenizer.vocab_size} > 65,536: ids are stored as uint32 (4 bytes a token)"
        print(f"note: {meta['dtype_note']}")
    _write_json(meta_path, meta)

    # 3) the token files, in parallel
    for split in ('train', 'val'):
        fp = _fingerprint(src_sha1, val_fraction, seed, tok_sha1, split)
        path = os.path.join(out_dir, f'{split}.bin')
        old_split = old.get('splits', {}).get(split)
        if done.get(split) == fp and os.path.isfile(path) and old_split and \
                os.path.getsize(path) == old_split['tokens'] * np.dtype(dtype).itemsize:
            print(f"{split}.bin: already built from these inputs, skipped")
            meta['splits'][split] = old_split
        else:
            t0 = time.time()
            stats = bpe.encode_documents(tokenizer, splits[split], path, num_workers, progress, desc=f'encode {split}')
            timing[split] = round(time.time() - t0, 2)
            meta['splits'][split] = {'docs': len(splits[split]), 'tokens': stats['n_tokens'],
                                     'bytes': sum(len(d.encode('utf-8')) for d in splits[split])}
        steps[split] = fp
        _write_json(meta_path, meta)

    # 4) the summary; val_bytes lets train.py report bits per byte (tokenizer-independent)
    meta['val_bytes'] = meta['splits']['val']['bytes']
    meta['bytes_per_token'] = round(meta['splits']['train']['bytes'] / max(1, meta['splits']['train']['tokens']), 4)
    meta['complete'] = True
    meta['timing_s'] = {**old.get('timing_s', {}), **timing, 'last_run': round(time.time() - t_start, 2)}
    _write_json(meta_path, meta)
    for split, s in meta['splits'].items():
        print(f"{split}: {s['docs']:,} docs, {s['bytes']:,} bytes, {s['tokens']:,} tokens -> {out_dir}/{split}.bin")
    print(f"{meta['bytes_per_token']:.2f} bytes per token; vocab {meta['vocab_size']}, {dtype}; "
          f"done in {time.time() - t_start:.1f}s")
    return meta


if __name__ == '__main__':
    try:
        prepare(src, out_dir, vocab_size, tokenizer_dir, val_fraction, seed, num_workers or None, progress)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

"""
data/docs/prepare.py: an English documentation corpus as token files for train.py, split by document.

The corpus is the shared `docs_en.txt.gz` (692 English pages of the Python 3.11 docs, the Debian handbook, reference
and FAQ, and the GNU coding standards; 16.3 MB), or any text file given with --src whose documents are separated by
'<|endoftext|>'. What it teaches: hold out whole documents, never parts of one, so that validation text is unseen,
and train the tokenizer on the train documents only, for the same reason.
1) read the documents (.txt or .txt.gz), stripped, empty ones dropped;
2) split them into train/val by document with a seeded permutation (val ~2%);
3) bpe.build_token_folder: a 10K byte-level BPE trained on train (or --tokenizer_dir), both splits encoded in
   parallel with '<|endoftext|>' after each document: <out_dir>/train.bin, val.bin, meta.json, tokenizer/.
Re-running skips the finished steps (meta.json records a fingerprint of each step's inputs).

Run, then train:
    python data/docs/prepare.py                                # needs ../shared/data (or $LMSCRATCH_DATA)
    python data/docs/prepare.py --src=my_corpus.txt --out_dir=data/mine --vocab_size=8000
    python train.py config/docs.py
Without the shared data, data/pycode/prepare.py builds a corpus from the Python sources of this machine.
"""
import gzip
import hashlib
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root
import bpe  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

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


def read_documents(path):
    """The documents of a text file (gzip if it ends in .gz), split on '<|endoftext|>', stripped of surrounding
    whitespace, empty ones dropped. Returns (docs, sha1 of the file's bytes)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"source text not found: {path!r}. Give --src=<a .txt or .txt.gz file, documents "
                                f"separated by {bpe.EOT}>, or put the shared data at ../shared/data or $LMSCRATCH_DATA")
    with open(path, 'rb') as f:
        raw = f.read()
    sha1 = hashlib.sha1(raw).hexdigest()
    try:  # a .gz cut short (an interrupted copy or download), corrupt, or not gzip at all: one line, no traceback
        raw = gzip.decompress(raw) if path.endswith('.gz') else raw
    except (OSError, EOFError, zlib.error) as e:
        raise bpe.DataError(f"{path}: not a complete gzip file ({e}): copy or download it again") from None
    text = raw.decode('utf-8', errors='replace')
    if text.count('\ufffd') > raw.count('\ufffd'.encode()):  # degrade loudly: the bad bytes are not silently lost
        print(f"warning: {path} is not valid UTF-8: bad byte sequences became U+FFFD", file=sys.stderr)
    docs = [d.strip() for d in text.split(bpe.EOT) if d.strip()]
    if not docs:
        raise bpe.DataError(f"{path} holds no text (0 non-empty documents): nothing to train on")
    return docs, sha1


def split_documents(n_docs, val_fraction, seed):
    """Boolean mask of the validation documents: a seeded random choice of round(n_docs * val_fraction) of them,
    at least 1 and at most n_docs - 1, so that neither split is empty."""
    if n_docs < 2:
        raise bpe.DataError(f"need at least 2 documents to split into train and val, got {n_docs}")
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


def prepare(src='', out_dir='', vocab_size=10000, tokenizer_dir='', val_fraction=0.02, seed=1337, num_workers=None,
            progress=True):
    """Build <out_dir>/train.bin, val.bin, meta.json (and tokenizer/); returns the meta dict."""
    src = os.path.abspath(src or bpe.shared_data('text', 'docs_en.txt.gz'))
    docs, src_sha1 = read_documents(src)
    is_val = split_documents(len(docs), val_fraction, seed)
    splits = {'train': [d for d, v in zip(docs, is_val) if not v], 'val': [d for d, v in zip(docs, is_val) if v]}
    print(f"{src}: {len(docs):,} documents -> {len(splits['train']):,} train, {len(splits['val']):,} val "
          f"(seed {seed})")
    return bpe.build_token_folder(splits, os.path.abspath(out_dir or HERE), vocab_size, src, tokenizer_dir, None,
                                  num_workers, progress, source_sha1=src_sha1, seed=seed, val_fraction=val_fraction)


def main():
    """The command: check every setting (a mistake: one line on stderr, exit 2, nothing written), then prepare()."""
    corpus, out = os.path.abspath(src or bpe.shared_data('text', 'docs_en.txt.gz')), os.path.abspath(out_dir or HERE)
    outputs = {os.path.join(out, name) for name in ('train.bin', 'val.bin', 'meta.json')}
    for ok, msg in [(os.path.isfile(corpus), f"source text not found: {corpus} (" + ("--src" if src else
                     "the docs corpus comes with the course's shared data: put it at ../shared/data or set "
                     "LMSCRATCH_DATA") + "; or give --src=<a text file of '<|endoftext|>'-separated documents>, or "
                     "run python data/pycode/prepare.py, which builds its corpus offline)"),
                    (0 < val_fraction < 1, f"--val_fraction={val_fraction}: give the share of documents held out for "
                     f"validation, between 0 and 1 (e.g. 0.02)"),
                    (vocab_size > 256, f"--vocab_size={vocab_size}: give at least 257 (256 bytes + '<|endoftext|>')"),
                    (not tokenizer_dir or os.path.isfile(os.path.join(tokenizer_dir, 'merges.txt')),
                     f"--tokenizer_dir={tokenizer_dir!r} holds no merges.txt: train one with bpe.py first"),
                    (num_workers >= 0, f"--num_workers={num_workers}: give 0 (every core) or a number of processes"),
                    (not os.path.isfile(out) and os.path.realpath(corpus) not in map(os.path.realpath, outputs),
                     f"--out_dir={out} is a file, or holds the input {corpus} under an output's name: give a folder")]:
        if not ok:
            bpe.die(msg)
    try:
        prepare(src, out_dir, vocab_size, tokenizer_dir, val_fraction, seed, num_workers, progress)
    except bpe.DataError as e:  # the text holds fewer than 2 documents
        bpe.die(e)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'configurator.py')).read())
    main()

"""
data/owt/prepare.py: the course's OpenWebText sample (CS336 A1: owt_train.txt / owt_valid.txt) as token files.

1) the text: owt_{train,valid}.txt.gz downloaded (resumable) from the course's Hugging Face copy, or local files
   given with --src_train/--src_val. Offline (CI, no internet) it says so loudly and uses the shared English docs
   corpus (../shared/data/text/docs_en.txt.gz: real web-page text, but 16 MB, not OpenWebText's 11 GB);
2) bpe.build_token_folder: a 32K byte-level BPE trained on the train text, both splits encoded in parallel into
   <out_dir>/train.bin, val.bin (uint16) and meta.json ('source' names the text). Re-running skips finished steps.

    python data/owt/prepare.py
    python data/owt/prepare.py --src_train=owt_train.txt --src_val=owt_valid.txt
    python train.py config/owt.py
"""
import gzip
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root
import bpe  # noqa: E402

# -----------------------------------------------------------------------------
src_train = ''  # local train text, .txt or .txt.gz ('' = download, or the offline stand-in)
src_val = ''  # local validation text (give both or neither)
out_dir = ''  # '' = this script's folder (data/owt)
vocab_size = 32000  # the course's OpenWebText vocabulary
offline = False  # skip the download and use the offline stand-in directly
num_workers = 0  # processes for BPE and encoding; 0 = all cores
# -----------------------------------------------------------------------------
HUB = 'https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main'
URLS = {'train': f'{HUB}/owt_train.txt.gz', 'val': f'{HUB}/owt_valid.txt.gz'}


def build_offline(seed=0):
    """({'train': docs, 'val': docs}, source): the shared docs corpus split by document, every 50th document of a
    seeded shuffle to val (a page is never in both splits)."""
    path = bpe.shared_data('text', 'docs_en.txt.gz')
    if not os.path.exists(path):
        raise FileNotFoundError(f"no download and no offline stand-in ({path} is missing): give --src_train and "
                                f"--src_val, or use data/pycode/prepare.py, which needs no download")
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        docs = [d.strip() for d in f.read().split(bpe.EOT) if d.strip()]
    random.Random(seed).shuffle(docs)
    n_val = max(1, len(docs) // 50)
    return {'train': docs[n_val:], 'val': docs[:n_val]}, f"offline stand-in: {path} ({len(docs)} documents)"


def prepare(src_train='', src_val='', out_dir='', vocab_size=32000, offline=False, num_workers=None):
    """The text (local, downloaded or the stand-in) -> <out_dir>/train.bin, val.bin, meta.json; returns the meta."""
    out_dir = os.path.abspath(out_dir or os.path.dirname(os.path.abspath(__file__)))
    name = 'OpenWebText sample of CS336 A1 (huggingface.co/datasets/stanford-cs336/owt-sample)'
    splits, source = bpe.text_splits(src_train, src_val, URLS, os.path.join(out_dir, 'raw'), name,
                                     build_offline, offline)
    print(f"text: {source}")
    meta = bpe.build_token_folder(splits, out_dir, vocab_size, source, num_workers=num_workers)
    print(f"next: python train.py config/owt.py --data_dir={out_dir}")
    return meta


def main():
    """The command: check every setting (a mistake: one line on stderr, exit 2, nothing written), then prepare()."""
    for key, ok, fix in (('vocab_size', vocab_size > 256, "give at least 257 (256 bytes + '<|endoftext|>')"),
                         ('num_workers', num_workers >= 0, "give 0 (every core) or a number of processes")):
        if not ok:
            bpe.die(f"--{key}={globals()[key]}: {fix}")
    try:
        prepare(src_train, src_val, out_dir, vocab_size, offline, num_workers)
    except (bpe.DataError, FileNotFoundError) as e:  # local files missing or empty; offline without the stand-in
        bpe.die(e)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'configurator.py')).read())
    main()

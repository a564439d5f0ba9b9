"""
data/owt/prepare.py: the course's OpenWebText sample (CS336 A1: owt_train.txt / owt_valid.txt) as token files.

1) gets the text: downloads owt_{train,valid}.txt.gz from the course's Hugging Face copy with `requests`
   (resumable: an interrupted download continues where it stopped) and decompresses it, or takes local files
   with --src_train/--src_val (.txt or .txt.gz);
2) trains a 32K byte-level BPE with bpe.py on the train text (or loads it when it is already there);
3) encodes both splits in parallel into <out_dir>/train.bin, val.bin (uint16) and writes meta.json.
Re-running skips finished steps (meta.json records a fingerprint of each step's inputs).

Offline (these machines, CI): when the download fails, the script says so loudly and uses the English docs
corpus in ../shared/data/text/docs_en.txt.gz as a stand-in (real web-page text, but 16 MB, not OpenWebText's
11 GB). meta.json's 'source' says which text was used.

    python data/owt/prepare.py
    python data/owt/prepare.py --src_train=owt_train.txt --src_val=owt_valid.txt
    python train.py config/owt.py
"""
import gzip
import shutil
import os
import random
import sys

import requests
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
import bpe  # noqa: E402  (the repo root is on sys.path only now)

# -----------------------------------------------------------------------------
src_train = ''  # local train text, .txt or .txt.gz ('' = download, or the offline stand-in)
src_val = ''  # local validation text
out_dir = ''  # '' = this script's folder (data/owt)
vocab_size = 32000  # the course's OpenWebText vocabulary
offline = False  # skip the download and use the offline stand-in directly
num_workers = 0  # 0 = all cores
# -----------------------------------------------------------------------------
URLS = {'train': 'https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz',
        'val': 'https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz'}
EOT = '<|endoftext|>'


def download(url, path, timeout=30):
    """Stream url to path with a progress bar. A partial file (path + '.part') is resumed with an HTTP Range
    request; the final name appears only when the download is complete."""
    if os.path.exists(path):
        return path
    part = path + '.part'
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'Range': f'bytes={have}-'} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        r.raise_for_status()
        if have and r.status_code != 206:  # the server ignored the Range header: start over
            have = 0
        total = int(r.headers.get('content-length', 0)) + have
        with open(part, 'ab' if have else 'wb') as f, tqdm(total=total, initial=have, unit='B', unit_scale=True,
                                                           desc=os.path.basename(path)) as bar:
            for chunk in r.iter_content(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(part, path)
    return path


def gunzip(path):
    """path.gz -> path (decompressed once, atomically); other files are returned as they are."""
    if not path.endswith('.gz'):
        return path
    out = path[:-3]
    if not os.path.exists(out):
        with gzip.open(path, 'rb') as src, open(out + '.tmp', 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.replace(out + '.tmp', out)
    return out


def build_offline(raw_dir, seed=0):
    """Split the shared docs corpus by document (every 50th document, after a seeded shuffle, goes to val)."""
    shared = os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
    src = os.path.join(shared, 'text', 'docs_en.txt.gz')
    if not os.path.exists(src):
        sys.exit(f"no download and no offline stand-in ({src} is missing): pass --src_train/--src_val")
    with gzip.open(src, 'rt', encoding='utf-8') as f:
        docs = [d.strip() for d in f.read().split(EOT) if d.strip()]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:max(1, len(docs) // 50)])
    paths = {}
    for split in ('train', 'val'):
        keep = [d for i, d in enumerate(docs) if (i in val_ids) == (split == 'val')]
        paths[split] = os.path.join(raw_dir, f'offline-{split}.txt')
        with open(paths[split] + '.tmp', 'w', encoding='utf-8') as f:
            f.write(f'\n{EOT}\n'.join(keep) + f'\n{EOT}\n')
        os.replace(paths[split] + '.tmp', paths[split])
    return paths, f"offline stand-in: {src} ({len(docs)} documents), NOT OpenWebText"


def prepare(src_train='', src_val='', out_dir='', vocab_size=32000, offline=False, num_workers=None):
    out_dir = out_dir or HERE
    raw_dir = os.path.join(out_dir, 'raw')
    os.makedirs(raw_dir, exist_ok=True)

    # 1) the text
    if src_train or src_val:
        if not (src_train and src_val) or not all(map(os.path.exists, (src_train, src_val))):
            sys.exit(f"give both --src_train and --src_val as existing files (got {src_train!r}, {src_val!r})")
        paths, source = {'train': gunzip(src_train), 'val': gunzip(src_val)}, f"local files {src_train}, {src_val}"
    else:
        paths, source = None, None
        if not offline:
            try:
                paths = {s: gunzip(download(u, os.path.join(raw_dir, os.path.basename(u)))) for s, u in URLS.items()}
                source = 'OpenWebText sample of CS336 A1 (huggingface.co/datasets/stanford-cs336/owt-sample)'
            except requests.RequestException as e:
                print('!' * 80)
                print(f"could not download OpenWebText ({type(e).__name__}: {str(e)[:120]}).")
                print("Falling back to the OFFLINE STAND-IN: the shared docs corpus, NOT OpenWebText.")
                print("Losses on it do not compare with the course's OpenWebText numbers.")
                print('!' * 80)
        if paths is None:
            paths, source = build_offline(raw_dir)
    print(f"text: {source}")

    # 2) + 3) the tokenizer and the token files (bpe.py: trained on train, both splits encoded in parallel)
    meta = bpe.build_token_folder(paths, out_dir, vocab_size, source, [EOT], num_workers)
    print(f"wrote {out_dir}/train.bin, val.bin, meta.json; next: python train.py config/owt.py --data_dir={out_dir}")
    return meta


if __name__ == '__main__':
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    prepare(src_train, src_val, out_dir, vocab_size, offline, num_workers or None)

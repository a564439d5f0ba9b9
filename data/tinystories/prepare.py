"""
data/tinystories/prepare.py: TinyStories (Eldan & Li 2023) as token files for train.py, the course's A1 data.

1) gets the text: downloads TinyStoriesV2-GPT4-{train,valid}.txt from the Hugging Face hub with `requests`
   (resumable: an interrupted download continues where it stopped), or takes local files with --src_train/--src_val;
2) trains a 10K byte-level BPE with bpe.py on the train text (or loads it when it is already there);
3) encodes both splits in parallel into <out_dir>/train.bin, val.bin (uint16) and writes meta.json.
Re-running skips finished steps (meta.json records a fingerprint of each step's inputs).

Offline (these machines, CI): when the download fails, the script says so loudly and builds a small stand-in:
the TinyStories sample in ../shared/data/a1 (3.8 KB) plus stories that it generates itself from templates
(a few MB, simple English with a small vocabulary). meta.json's 'source' says which text was used.

    python data/tinystories/prepare.py                              # download (online) or the offline stand-in
    python data/tinystories/prepare.py --src_train=TinyStoriesV2-GPT4-train.txt --src_val=TinyStoriesV2-GPT4-valid.txt
    python train.py config/a1.py --data_dir=data/tinystories
"""
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
src_train = ''  # local train text ('' = download, or the offline stand-in)
src_val = ''  # local validation text
out_dir = ''  # '' = this script's folder (data/tinystories)
vocab_size = 10000  # the course's TinyStories vocabulary
offline = False  # skip the download and build the offline stand-in directly
generated_stories = 20000  # stories in the offline stand-in
num_workers = 0  # 0 = all cores
# -----------------------------------------------------------------------------
URLS = {'train': 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt',
        'val': 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt'}
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


# The offline stand-in: short stories from templates, in TinyStories' spirit (simple words, a small plot).
NAMES = ['Lily', 'Tom', 'Mia', 'Ben', 'Sue', 'Max', 'Anna', 'Sam', 'Lucy', 'Tim', 'Emma', 'Jack', 'Zoe', 'Leo']
ANIMALS = ['cat', 'dog', 'bird', 'bunny', 'frog', 'duck', 'bear', 'fox', 'mouse', 'puppy']
PLACES = ['park', 'garden', 'forest', 'beach', 'farm', 'house', 'school', 'river', 'hill', 'playground']
THINGS = ['ball', 'kite', 'hat', 'box', 'toy car', 'red balloon', 'book', 'cake', 'flower', 'shiny stone']
ADJS = ['happy', 'little', 'kind', 'brave', 'curious', 'shy', 'silly', 'tired', 'friendly', 'small']
FEELINGS = ['happy', 'sad', 'scared', 'excited', 'proud', 'surprised', 'angry', 'calm']
WEATHER = ['sunny', 'rainy', 'windy', 'cold', 'warm', 'bright']


def make_story(rng):
    n, f, a, p, t = rng.choice(NAMES), rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    adj, feel, w = rng.choice(ADJS), rng.choice(FEELINGS), rng.choice(WEATHER)
    opening = rng.choice([f"Once upon a time, there was a {adj} {a} named {n}.",
                          f"One {w} day, a {adj} girl named {n} went to the {p}.",
                          f"{n} was a {adj} boy who loved to play in the {p}."])
    middle = rng.choice([f"{n} found a {t} near a big tree. {n} wanted to show it to {f}.",
                         f"{n} lost the {t}. {n} looked everywhere and felt {feel}.",
                         f"{n} and {f} played with a {t} all day long.",
                         f"A {a} came and took the {t}. {n} ran after the {a}."])
    turn = rng.choice([f'"Can you help me?" asked {n}. "Yes, I can help you," said {f}.',
                       f"Then {f} came to help. They looked under the leaves and behind the rocks.",
                       f"{n} said sorry to {f}, and {f} smiled.",
                       "Suddenly it started to rain, so they ran home together."])
    ending = rng.choice([f"In the end, {n} was {feel} and {f} was happy too.",
                         f"From that day on, {n} and {f} were best friends.",
                         f"{n} learned that sharing is good. The end.",
                         "They went home and had cake. It was a good day."])
    return ' '.join([opening, middle, turn, ending])


def build_offline(raw_dir, n_stories, seed=0):
    """Write raw/offline-{train,val}.txt: the shared TinyStories sample (if present) plus generated stories."""
    shared = os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
    sample = os.path.join(shared, 'a1', 'tinystories_sample.txt')
    real = open(sample, encoding='utf-8').read().split(EOT) if os.path.exists(sample) else []
    rng = random.Random(seed)
    stories = [s.strip() for s in real if s.strip()] + [make_story(rng) for _ in range(n_stories)]
    n_val = max(1, len(stories) // 50)
    paths = {}
    for split, docs in (('val', stories[:n_val]), ('train', stories[n_val:])):
        paths[split] = os.path.join(raw_dir, f'offline-{split}.txt')
        with open(paths[split] + '.tmp', 'w', encoding='utf-8') as f:
            f.write(f'\n{EOT}\n'.join(docs) + f'\n{EOT}\n')
        os.replace(paths[split] + '.tmp', paths[split])  # the same seed writes the same bytes: later steps are skipped
    source = (f"offline stand-in: {len(real)} stories of {sample} + {n_stories} generated from templates"
              if real else f"offline stand-in: {n_stories} stories generated from templates")
    return paths, source


def prepare(src_train='', src_val='', out_dir='', vocab_size=10000, offline=False, generated_stories=20000,
            num_workers=None):
    out_dir = out_dir or HERE
    raw_dir = os.path.join(out_dir, 'raw')
    os.makedirs(raw_dir, exist_ok=True)

    # 1) the text
    if src_train or src_val:
        if not (src_train and src_val) or not all(map(os.path.exists, (src_train, src_val))):
            sys.exit(f"give both --src_train and --src_val as existing files (got {src_train!r}, {src_val!r})")
        paths, source = {'train': src_train, 'val': src_val}, f"local files {src_train}, {src_val}"
    else:
        paths, source = None, None
        if not offline:
            try:
                paths = {s: download(u, os.path.join(raw_dir, os.path.basename(u))) for s, u in URLS.items()}
                source = 'TinyStoriesV2-GPT4 (huggingface.co/datasets/roneneldan/TinyStories)'
            except requests.RequestException as e:
                print('!' * 80)
                print(f"could not download TinyStories ({type(e).__name__}: {str(e)[:120]}).")
                print("Falling back to the OFFLINE STAND-IN: a small generated corpus, NOT TinyStories.")
                print("Losses on it do not compare with the course's TinyStories numbers.")
                print('!' * 80)
        if paths is None:
            paths, source = build_offline(raw_dir, generated_stories)
    print(f"text: {source}")

    # 2) + 3) the tokenizer and the token files (bpe.py: trained on train, both splits encoded in parallel)
    meta = bpe.build_token_folder(paths, out_dir, vocab_size, source, [EOT], num_workers)
    print(f"wrote {out_dir}/train.bin, val.bin, meta.json; next: python train.py config/a1.py --data_dir={out_dir}")
    return meta


if __name__ == '__main__':
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    prepare(src_train, src_val, out_dir, vocab_size, offline, generated_stories, num_workers or None)

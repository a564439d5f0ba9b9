"""
data/tinystories/prepare.py: TinyStories (Eldan & Li 2023), the course's A1 data, as token files for train.py.

1) the text: TinyStoriesV2-GPT4-{train,valid}.txt downloaded (resumable) from the Hugging Face hub, or local files
   given with --src_train/--src_val. Offline (CI, no internet) it says so loudly and builds a small stand-in: the
   shared TinyStories sample (../shared/data/a1, when present) plus stories generated from templates (simple English,
   a small vocabulary); losses on it do not compare with the course's TinyStories numbers;
2) bpe.build_token_folder: a 10K byte-level BPE trained on the train text, both splits encoded in parallel into
   <out_dir>/train.bin, val.bin (uint16) and meta.json ('source' names the text). Re-running skips finished steps.

    python data/tinystories/prepare.py                  # download (online) or the offline stand-in
    python data/tinystories/prepare.py --src_train=TinyStoriesV2-GPT4-train.txt --src_val=TinyStoriesV2-GPT4-valid.txt
    python train.py config/a1.py --data_dir=data/tinystories
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root
import bpe  # noqa: E402

# -----------------------------------------------------------------------------
vocab_size = 10000  # the course's TinyStories vocabulary
generated_stories = 20000  # stories in the offline stand-in
offline = False  # skip the download and build the offline stand-in directly
src_train = ''  # local train text, .txt or .txt.gz ('' = download, or the offline stand-in)
src_val = ''  # local validation text (give both or neither)
out_dir = ''  # '' = this script's folder (data/tinystories)
num_workers = 0  # processes for BPE and encoding; 0 = all cores
# -----------------------------------------------------------------------------
HUB = 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main'
URLS = {'train': f'{HUB}/TinyStoriesV2-GPT4-train.txt', 'val': f'{HUB}/TinyStoriesV2-GPT4-valid.txt'}

# The offline stand-in: short stories from templates, in TinyStories' spirit (simple words, a small plot)
NAMES = ['Lily', 'Tom', 'Mia', 'Ben', 'Sue', 'Max', 'Anna', 'Sam', 'Lucy', 'Tim', 'Emma', 'Jack', 'Zoe', 'Leo']
ANIMALS = ['cat', 'dog', 'bird', 'bunny', 'frog', 'duck', 'bear', 'fox', 'mouse', 'puppy']
PLACES = ['park', 'garden', 'forest', 'beach', 'farm', 'house', 'school', 'river', 'hill', 'playground']
THINGS = ['ball', 'kite', 'hat', 'box', 'toy car', 'red balloon', 'book', 'cake', 'flower', 'shiny stone']
ADJS = ['happy', 'little', 'kind', 'brave', 'curious', 'shy', 'silly', 'tired', 'friendly', 'small']
FEELINGS = ['happy', 'sad', 'scared', 'excited', 'proud', 'surprised', 'angry', 'calm']
WEATHER = ['sunny', 'rainy', 'windy', 'cold', 'warm', 'bright']


def make_story(rng):
    """One story of four sentences: an opening, a problem, a turn and an ending, each picked from templates."""
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


def build_offline(n_stories, seed=0):
    """({'train': stories, 'val': stories}, source): the shared TinyStories sample (if present) plus n_stories
    generated ones; the first 2% go to val. The same seed gives the same stories, so a re-run skips every step."""
    sample = bpe.shared_data('a1', 'tinystories_sample.txt')
    real = open(sample, encoding='utf-8').read().split(bpe.EOT) if os.path.exists(sample) else []
    rng = random.Random(seed)
    stories = [s.strip() for s in real if s.strip()] + [make_story(rng) for _ in range(n_stories)]
    n_val = max(1, len(stories) // 50)
    return {'train': stories[n_val:], 'val': stories[:n_val]}, \
        f"offline stand-in: {len(real)} stories of {sample} + {n_stories} generated from templates"


def prepare(src_train='', src_val='', out_dir='', vocab_size=10000, offline=False, generated_stories=20000,
            num_workers=None):
    """The text (local, downloaded or the stand-in) -> <out_dir>/train.bin, val.bin, meta.json; returns the meta."""
    out_dir = os.path.abspath(out_dir or os.path.dirname(os.path.abspath(__file__)))
    splits, source = bpe.text_splits(src_train, src_val, URLS, os.path.join(out_dir, 'raw'),
                                     'TinyStoriesV2-GPT4 (huggingface.co/datasets/roneneldan/TinyStories)',
                                     lambda: build_offline(generated_stories), offline)
    print(f"text: {source}")
    meta = bpe.build_token_folder(splits, out_dir, vocab_size, source, num_workers=num_workers)
    print(f"next: python train.py config/a1.py --data_dir={out_dir}")
    return meta


def main():
    """The command: check every setting (a mistake: one line on stderr, exit 2, nothing written), then prepare()."""
    problems = [f"--vocab_size={vocab_size}: give at least 257 (256 bytes + '<|endoftext|>')"] * (vocab_size <= 256) \
        + [f"--generated_stories={generated_stories}: give 1 or more for the stand-in"] * (generated_stories < 1) \
        + [f"--num_workers={num_workers}: give 0 (every core) or a number of processes"] * (num_workers < 0)
    try:
        if problems:
            raise bpe.DataError(problems[0])
        prepare(src_train, src_val, out_dir, vocab_size, offline, generated_stories, num_workers)
    except bpe.DataError as e:  # also: local files missing or empty
        bpe.die(e)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'configurator.py')).read())
    main()

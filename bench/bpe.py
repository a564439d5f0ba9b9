"""
bench/bpe.py: bpe.py side by side with the Rust references, in one run on the same text and cores: training against
HF tokenizers' BpeTrainer (vocab 10K), the course's reference check (corpus.en, vocab 500), and encoding with GPT-2's
merges against tiktoken (one thread, then all cores), with the ids compared on the whole text.

Run:
    python bench/bpe.py                                      # -> results/bpe_bench.md
    python bench/bpe.py --data_dir=/path/to/shared/data --bench_out=/tmp/bpe.md
Needs `pip install tokenizers tiktoken` and the shared data (docs_en.txt.gz, a1/gpt2_vocab.json, gpt2_merges.txt).
"""
import gzip
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the teaching scripts
from bpe import Tokenizer, encode_file, num_cores, save_tokenizer, shared_data, train_bpe  # noqa: E402

# -----------------------------------------------------------------------------
data_dir = ''  # the shared data folder; '' = $LMSCRATCH_DATA or ../shared/data
bench_out = 'results/bpe_bench.md'  # where the results table goes
# -----------------------------------------------------------------------------


def timed_in_child(fn, *args):
    """Run fn(*args) in a forked child; return (its result, seconds, peak RSS in MB of the child and of its own
    workers). A fresh process per trainer makes the peak-memory numbers independent of each other."""
    ctx = mp.get_context('fork')
    parent, child = ctx.Pipe()

    def target():
        t0 = time.time()
        result = fn(*args)
        dt = time.time() - t0
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        child.send((result, dt, own, kids))

    p = ctx.Process(target=target)
    p.start()
    out = parent.recv()
    p.join()
    return out


def train_ours(path, n_vocab):
    vocab, merges = train_bpe(path, n_vocab, ['<|endoftext|>'], progress=False)
    return len(merges), max(len(t) for t in vocab.values())


def train_hf(path, n_vocab):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    # ByteLevel(use_regex=True) is GPT-2's regex on the bytes-as-printable-unicode text: the same setup
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=n_vocab, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train([path], trainer)
    return hf.get_vocab_size(), None


def run_bench(out_path, data_dir=''):
    import tiktoken
    import tokenizers
    data = os.path.abspath(data_dir) if data_dir else shared_data()
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(data, 'tiktoken_cache'))
    gz = os.path.join(data, 'text', 'docs_en.txt.gz')
    if not os.path.isfile(gz):
        sys.exit(f"benchmark text not found: {gz} (give --data_dir or set LMSCRATCH_DATA to the shared data folder)")
    cores = num_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'docs_en.txt')
        with gzip.open(gz, 'rb') as fi, open(path, 'wb') as fo:
            fo.write(fi.read())
        text = open(path, encoding='utf-8').read()
        mb = os.path.getsize(path) / 1e6
        print(f"benchmark text: {gz} decompressed, {mb:.1f} MB; {cores} cores; load average "
              f"{os.getloadavg()[0]:.2f}")

        # 1) training, vocab 10K: ours vs HF tokenizers' BpeTrainer (Rust, all cores)
        (n_merges, longest), t_ours, rss_ours, rss_workers = timed_in_child(train_ours, path, 10000)
        _, t_hf, rss_hf, _ = timed_in_child(train_hf, path, 10000)
        print(f"train 10K: ours {t_ours:.2f}s, HF tokenizers {t_hf:.2f}s")
        rows.append(('BPE training, vocab 10,000', f'{t_ours:.2f} s ({mb / t_ours:.1f} MB/s)',
                     f'{t_hf:.2f} s ({mb / t_hf:.1f} MB/s)', f'{t_hf / t_ours:.2f}x'))
        _, t_ref, _, _ = timed_in_child(train_ours, os.path.join(data, 'a1', 'corpus.en'), 500)
        rows.append(('BPE training, corpus.en, vocab 500 (course reference check)', f'{t_ref:.2f} s',
                     'goal: well under 1.5 s', ''))

        # 2) encoding with GPT-2's merges: one thread, then all cores
        a1 = os.path.join(data, 'a1')
        enc = tiktoken.get_encoding('gpt2')
        tok = Tokenizer.from_files(os.path.join(a1, 'gpt2_vocab.json'), os.path.join(a1, 'gpt2_merges.txt'),
                                   ['<|endoftext|>'])
        t0 = time.time()
        ours = tok.encode(text)  # cold cache: the cache fill is part of the time
        t_enc = time.time() - t0
        t0 = time.time()
        theirs = enc.encode(text, allowed_special='all')
        t_tik = time.time() - t0
        same = ours == theirs
        print(f"encode 1 thread: ours {mb / t_enc:.1f} MB/s, tiktoken {mb / t_tik:.1f} MB/s, same ids: {same}")
        rows.append(('encode, GPT-2 merges, one thread', f'{mb / t_enc:.1f} MB/s', f'{mb / t_tik:.1f} MB/s',
                     f'{t_tik / t_enc:.2f}x'))
        gpt2_dir = os.path.join(tmp, 'gpt2')
        save_tokenizer(tok.vocab, [(tok.vocab[a], tok.vocab[b]) for (a, b), _ in sorted(
            tok.merge_ranks.items(), key=lambda kv: kv[1][0])], ['<|endoftext|>'], gpt2_dir)
        stats = encode_file(gpt2_dir, path, os.path.join(tmp, 'docs.bin'), cores, progress=False)
        t_par = stats['time_s']
        same_par = np.fromfile(os.path.join(tmp, 'docs.bin'), dtype=stats['dtype']).tolist() == theirs
        docs = text.split('<|endoftext|>')
        t0 = time.time()
        enc.encode_ordinary_batch(docs, num_threads=cores)
        t_tikb = time.time() - t0
        print(f"encode {cores} cores: ours {mb / t_par:.1f} MB/s (encode_file), tiktoken batch {mb / t_tikb:.1f} "
              f"MB/s, same ids: {same_par}")
        rows.append((f'encode, GPT-2 merges, all {cores} cores (ours: encode_file to disk)',
                     f'{mb / t_par:.1f} MB/s', f'{mb / t_tikb:.1f} MB/s', f'{t_tikb / t_par:.2f}x'))

    lines = [
        '# bpe.py benchmark',
        '',
        f'Command: `python bench/bpe.py`; device: {platform.processor() or platform.machine()}, {cores} cores '
        f'(load average at start {os.getloadavg()[0]:.2f}), Python {platform.python_version()}, '
        f'tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}.',
        f'Text: `docs_en.txt.gz` decompressed ({mb:.1f} MB). Speed ratio = reference time / our time (1.00x = same '
        f'speed; the goals are >= 0.5x for training and >= 0.3x for encoding).',
        '',
        '| what | bpe.py | reference (HF tokenizers / tiktoken) | ratio |',
        '|---|---:|---:|---:|',
    ] + [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in rows] + [
        '',
        f'- Training peak memory (max RSS): {rss_ours:.0f} MB main process, {rss_workers:.0f} MB largest '
        f'pre-tokenization worker; HF tokenizers {rss_hf:.0f} MB. {n_merges} merges, longest token {longest} bytes.',
        f'- Ids identical to tiktoken on the whole text: one thread {same}, all cores {same_par}.',
        '',
    ]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path + '.tmp', 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    os.replace(out_path + '.tmp', out_path)
    print('\n'.join(lines))
    print(f"wrote {out_path}")


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configurator.py')).read())
    run_bench(bench_out, data_dir)

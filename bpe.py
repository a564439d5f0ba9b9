"""
bpe.py: a byte-level BPE tokenizer (GPT-2 style), trained and used at speed, in plain Python.

What it teaches (CS336 assignment 1, section 2; Sennrich et al. 2016, "Neural Machine Translation of Rare
Words with Subword Units"; Radford et al. 2019, GPT-2):
- Training: start from the 256 single bytes (plus the special tokens), split the text into pre-tokens with
  GPT-2's regex, and repeatedly merge the most frequent adjacent pair of tokens into a new token.
  Pairs never cross a pre-token or a special token. Ties go to the lexicographically greater pair.
- Encoding: split out the special tokens (longest first), pre-tokenize, and inside each pre-token apply the
  merges in the order they were learned. decode() joins the bytes and decodes UTF-8.

What makes it fast (without leaving Python):
- pre-tokenization runs in worker processes over chunks of the file that start at a line beginning (a place
  where no pre-token can straddle the cut), streaming, so memory stays bounded on multi-GB corpora;
  each worker counts pre-tokens with collections.Counter over regex.findall (both in C);
- the merge loop works on the ~100K *distinct* pre-tokens, not on the text: after each merge only the words
  that contain the merged pair are rewritten, pair counts are updated incrementally from those words, and
  the best pair comes from a heap with lazy deletion (stale entries are skipped when popped);
- encoding maps each *distinct* pre-token once (a cache; a word that is already one token is a dict hit)
  and builds the id list with itertools.chain over the cached tuples.

Run:
    python bpe.py --input=../shared/data/a1/corpus.en --vocab_size=500 --out_dir=out/tok500     # train
    python bpe.py --mode=encode --tokenizer_dir=out/tok500 --input=docs.txt --output=docs.bin  # encode
    python bpe.py --bench                                     # benchmark vs HF tokenizers and tiktoken
Library:
    from bpe import train_bpe, save_tokenizer, Tokenizer, encode_file
"""
import hashlib
import heapq
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from itertools import chain

import numpy as np
import regex
from tqdm import tqdm

tqdm.monitor_interval = 0  # no tqdm monitor thread: this file forks worker processes, and fork + threads can deadlock

# -----------------------------------------------------------------------------
# default config values (override on the command line: --key=value; --help lists them)
mode = 'train'  # 'train' (input -> tokenizer files) | 'encode' (text -> flat token file) | 'bench'
input = ''  # train/encode: path of the UTF-8 text file to read
vocab_size = 10000  # train: final vocabulary size = 256 bytes + merges + special tokens
special_tokens = ['<|endoftext|>']  # train: tokens that are never split and never merged across
out_dir = 'out/tokenizer'  # train: folder for vocab.json, merges.txt, special_tokens.json
tokenizer_dir = ''  # encode: folder written by train mode
output = ''  # encode: path of the flat token file (uint16, or uint32 when the vocab needs it)
num_workers = 0  # processes for pre-tokenization / encoding; 0 = all cores of this machine
bench_out = 'results/bpe_bench.md'  # bench: where the results table goes
# -----------------------------------------------------------------------------
# `python bpe.py --bench` is short for --mode=bench (configurator.py only takes --key=value)
if __name__ == '__main__' and '--bench' in sys.argv:
    sys.argv[sys.argv.index('--bench')] = '--mode=bench'
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

# GPT-2's pre-tokenizer: contractions, letters (with one optional leading space), numbers, punctuation runs,
# whitespace runs that leave the last space to the next word (\s+(?!\S)), and trailing whitespace.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(SPLIT_PATTERN)
# Where a file may be cut into chunks for the workers without changing any pre-token: a lone '\n' between two
# printable ASCII characters ('x\nx'). The '\n' is a whitespace run of its own (the next character is not
# whitespace, the previous one is not whitespace either) and it is not a ' ' that could glue to the next word.
# NOTE the footgun: after '  \n' the cut would change the run: at the end of a chunk `\s+(?!\S)` takes all of
# '  \n', while in the whole text it takes '  ' and leaves '\n' alone. Hence the printable byte before it.
CHUNK_CUT_RE = re.compile(rb'[\x21-\x7e]\n[\x21-\x7e]')
LONG_WORD = 64  # pre-tokens longer than this (in bytes) use the heap-based BPE (Tokenizer._bpe_long)
CHUNK_BYTES = 4 << 20  # target size of one worker chunk: bounds memory per worker (tests make it tiny)


def _num_workers(n=None):
    """n processes; None or 0 = every core this process may use."""
    if n:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


FORK = 'fork' in mp.get_all_start_methods()


def _pool(n, initializer=None, initargs=()):
    # fork is the cheapest start on Linux: workers inherit the imported modules and the parent's objects
    # (e.g. a loaded Tokenizer); elsewhere the default start method runs `initializer` in each worker
    ctx = mp.get_context('fork') if FORK else mp.get_context()
    return ctx.Pool(n, initializer=initializer, initargs=initargs)


def _chunk_size(path, n_workers):
    """Chunk size for n_workers: at most CHUNK_BYTES (memory), at least 4 chunks per worker (load balance)."""
    return min(CHUNK_BYTES, max(1 << 16, os.path.getsize(path) // (4 * n_workers) + 1))


def find_chunk_boundaries(path, chunk_bytes=None):
    """Byte offsets [0, ..., file_size] that cut the file into chunks of about chunk_bytes each.
    Every cut lies just after a lone '\\n' between printable ASCII bytes (see CHUNK_CUT_RE), so it never splits
    a UTF-8 character, a pre-token, or (as long as special tokens contain no newline) a special token.
    A file without such a place stays one chunk."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, 'rb') as f:
        pos = chunk_bytes
        while pos < size:
            f.seek(pos)
            # read ahead until a cut place shows up (or the file ends)
            found = None
            while found is None:
                block = f.read(1 << 16)
                if not block:
                    break
                m = CHUNK_CUT_RE.search(block)
                if m:
                    found = f.tell() - len(block) + m.start() + 2  # the cut goes just after the '\n'
                else:
                    if len(block) <= 2:
                        break
                    f.seek(-2, os.SEEK_CUR)  # a match may straddle two blocks: look at the last 2 bytes again
            if found is None:
                break
            cuts.append(found)
            pos = found + chunk_bytes
    cuts.append(size)
    return cuts


def _read_text(path, start, end):
    """Bytes [start, end) of path as str. Invalid UTF-8 becomes U+FFFD; returns (text, number of bad spots)."""
    with open(path, 'rb') as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode('utf-8'), 0
    except UnicodeDecodeError:
        text = data.decode('utf-8', errors='replace')
        return text, text.count('\ufffd') - data.count('\ufffd'.encode('utf-8'))


def _special_split_re(special_tokens):
    """Regex that matches any special token; longest first so that overlapping ones resolve to the longest."""
    if not special_tokens:
        return None
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return regex.compile('(' + '|'.join(regex.escape(s) for s in alternatives) + ')')


def _count_pretokens(args):
    """Worker: pre-token counts of one chunk of the file (special tokens removed; they only separate)."""
    path, start, end, special_tokens = args
    text, n_bad = _read_text(path, start, end)
    split_re = _special_split_re(special_tokens)
    segments = split_re.split(text)[::2] if split_re else [text]  # odd entries are the special tokens
    counts = Counter()
    for segment in segments:
        counts.update(PRETOKEN_RE.findall(segment))
    return counts, n_bad, end - start


def _check_special_tokens(special_tokens):
    special_tokens = list(special_tokens or [])
    for s in special_tokens:
        if not isinstance(s, str) or s == '':
            raise ValueError(f"special tokens must be non-empty strings, got {s!r} in {special_tokens!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens repeat: {special_tokens!r}")
    return special_tokens


def count_pretokens(input_path, special_tokens=(), num_workers=None, progress=True):
    """Counter {pre-token string: count} over the whole file, computed in parallel over chunks."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"training text not found: {input_path!r} (give a UTF-8 text file, e.g. "
                                f"--input=../shared/data/a1/corpus.en)")
    cuts = find_chunk_boundaries(input_path, _chunk_size(input_path, _num_workers(num_workers)))
    jobs = [(input_path, a, b, list(special_tokens)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    n = min(_num_workers(num_workers), max(1, len(jobs)))
    counts, n_bad = Counter(), 0
    bar = tqdm(total=cuts[-1], unit='B', unit_scale=True, desc='pre-tokenize', disable=not progress)
    results = map(_count_pretokens, jobs) if n == 1 else None
    pool = None
    if n > 1:
        pool = _pool(n)
        results = pool.imap_unordered(_count_pretokens, jobs)
    try:
        for chunk_counts, bad, nbytes in results:
            counts.update(chunk_counts)
            n_bad += bad
            bar.update(nbytes)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if n_bad:
        print(f"warning: {input_path} is not valid UTF-8: {n_bad} bad byte sequence(s) were replaced by U+FFFD",
              file=sys.stderr)
    return counts


def _order_key(b):
    """A bytes key that sorts in the *opposite* order of b (so that a min-heap yields the greater pair first).
    Each byte c becomes the 2 bytes of 255-c, and a terminator 0x0100 (greater than any of them) makes a
    string sort after its own extensions: 'ab' > 'a' in bytes order, and key('ab') < key('a')."""
    return b''.join(bytes((0, 255 - c)) for c in b) + b'\x01\x00'


def _merge_word(word, a, b, new):
    """word (tuple of ids) with every non-overlapping (a, b), left to right, replaced by new."""
    out = []
    i, last = 0, len(word) - 1
    while i < last:
        if word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    if i == last:
        out.append(word[last])
    return tuple(out)


def train_bpe(input_path, vocab_size, special_tokens, num_workers=None, progress=True):
    """Train a byte-level BPE on the text file input_path.

    Returns (vocab, merges): vocab {id: bytes} with the special tokens first (ids 0..S-1), then the 256 bytes,
    then one token per merge; merges [(bytes, bytes)] in the order they were learned.
    vocab_size counts everything (specials + 256 + merges). Fewer merges result if the text runs out of pairs."""
    special_tokens = _check_special_tokens(special_tokens)
    n_special = len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size!r} is too small: it must be at least 256 bytes + "
                         f"{n_special} special token(s) = {256 + n_special}")
    n_merges = vocab_size - 256 - n_special
    t0 = time.time()

    # 1) pre-token counts, in parallel
    word_counts = count_pretokens(input_path, special_tokens, num_workers, progress)

    # 2) each distinct pre-token as a tuple of token ids (internal ids: byte b is id b, merge k is id 256+k)
    words = [tuple(w.encode('utf-8')) for w in word_counts]
    counts = list(word_counts.values())
    del word_counts
    pair_counts = defaultdict(int)  # (a, b) -> how often a is followed by b, over the whole corpus
    where = defaultdict(set)  # (a, b) -> indices of the words that contain it (may hold stale entries)
    for wi, (word, cnt) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += cnt
            where[pair].add(wi)
    token_bytes = [bytes([i]) for i in range(256)]
    order_keys = [_order_key(t) for t in token_bytes]
    # heap of (-count, order key of a, order key of b, a, b): most frequent first, then the greater pair
    heap = [(-c, order_keys[a], order_keys[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    # 3) the merge loop
    merges = []
    bar = tqdm(total=n_merges, desc='merges', unit='merge', disable=not progress)
    while len(merges) < n_merges:
        # pop until the top entry is current (its count equals the live count): lazy deletion
        while heap:
            neg, _, _, a, b = heap[0]
            if pair_counts.get((a, b), 0) == -neg:
                break
            heapq.heappop(heap)
        if not heap:
            break  # no pair left anywhere: the corpus is fully merged
        heapq.heappop(heap)
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        order_keys.append(_order_key(token_bytes[new]))
        merges.append((a, b))
        # rewrite only the words that contain (a, b); collect how each pair's count changes
        delta = defaultdict(int)
        for wi in where.pop((a, b)):
            word = words[wi]
            new_word = _merge_word(word, a, b, new)
            if len(new_word) == len(word):
                continue  # stale index entry: the pair left this word in an earlier merge
            cnt = counts[wi]
            for pair in zip(word, word[1:]):
                delta[pair] -= cnt
            for pair in zip(new_word, new_word[1:]):
                delta[pair] += cnt
                if new in pair:
                    where[pair].add(wi)
            words[wi] = new_word
        for pair, d in delta.items():
            if d:
                c = pair_counts[pair] + d
                if c:
                    pair_counts[pair] = c
                    heapq.heappush(heap, (-c, order_keys[pair[0]], order_keys[pair[1]], pair[0], pair[1]))
                else:
                    del pair_counts[pair]
        bar.update()
    bar.close()

    # 4) final layout: special tokens, then bytes, then merges (the layout of the course's reference vocab)
    vocab = {i: s.encode('utf-8') for i, s in enumerate(special_tokens)}
    vocab.update({n_special + i: t for i, t in enumerate(token_bytes)})
    merge_bytes = [(token_bytes[a], token_bytes[b]) for a, b in merges]
    if progress:
        dt = time.time() - t0
        longest = max(token_bytes, key=len)
        print(f"trained {len(merge_bytes)} merges in {dt:.2f}s ({len(merge_bytes) / max(dt, 1e-9):.0f} merges/s "
              f"overall), {len(words):,} distinct pre-tokens, longest token {len(longest)} bytes: {longest!r}")
    return vocab, merge_bytes


# -----------------------------------------------------------------------------
# Serialization: GPT-2's files. Every byte maps to a printable unicode character (bytes that are printable
# already map to themselves, the others to chr(256 + k)), so any token is a readable JSON key and merges.txt
# can separate the two halves with a space. This is GPT-2's encoder.py bytes_to_unicode.

def bytes_to_unicode():
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


BYTE_ENCODER = bytes_to_unicode()  # byte value -> printable char
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def _to_printable(b):
    return ''.join(BYTE_ENCODER[c] for c in b)


def _from_printable(s):
    try:
        return bytes(BYTE_DECODER[c] for c in s)
    except KeyError as e:
        raise ValueError(f"{s!r} is not in GPT-2's printable byte encoding (bad character {e.args[0]!r})") from None


def _write_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def save_tokenizer(vocab, merges, special_tokens, out_dir):
    """Write out_dir/vocab.json ({printable token: id}), out_dir/merges.txt (one 'a b' per line, in order)
    and out_dir/special_tokens.json; each file is written to a temporary name first, then renamed."""
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(os.path.join(out_dir, 'vocab.json'),
                  json.dumps({_to_printable(t): i for i, t in sorted(vocab.items())}, ensure_ascii=False, indent=0))
    _write_atomic(os.path.join(out_dir, 'merges.txt'),
                  ''.join(f"{_to_printable(a)} {_to_printable(b)}\n" for a, b in merges))
    _write_atomic(os.path.join(out_dir, 'special_tokens.json'), json.dumps(list(special_tokens or [])))


# -----------------------------------------------------------------------------
# Encoding and decoding

class Tokenizer:
    """Encode text to ids and back with a trained vocab and merges.

    vocab {id: bytes}; merges [(bytes, bytes)] in learned order; special_tokens [str]: split out before
    pre-tokenization (longest wins when they overlap) and encoded as one id each (a special token missing from
    the vocab gets the next free id)."""

    def __init__(self, vocab, merges, special_tokens=None):
        special_tokens = _check_special_tokens(special_tokens)
        self.vocab = dict(vocab)
        # regular tokens: a special token's bytes that also form a regular token (GPT-2's vocab has
        # '<|endoftext|>' as id 50256) still map to that id
        self.token_to_id = {}
        for i, t in sorted(self.vocab.items()):
            self.token_to_id.setdefault(t, i)
        self.special_token_ids = {}
        next_id = max(self.vocab, default=-1) + 1
        for s in special_tokens:
            b = s.encode('utf-8')
            if b not in self.token_to_id:
                self.vocab[next_id] = b
                self.token_to_id[b] = next_id
                next_id += 1
            self.special_token_ids[s] = self.token_to_id[b]
        self.special_split_re = _special_split_re(special_tokens)
        self.special_tokens = special_tokens
        self.vocab_size = max(self.vocab) + 1
        try:
            self.byte_ids = [self.token_to_id[bytes([c])] for c in range(256)]
        except KeyError:
            raise ValueError("the vocab must contain all 256 single bytes (a byte-level BPE vocab)") from None
        # (id_a, id_b) -> (rank, id of the merged token): the merge learned first has rank 0
        self.merge_ranks = {}
        for rank, (a, b) in enumerate(merges):
            try:
                key = (self.token_to_id[a], self.token_to_id[b])
                self.merge_ranks.setdefault(key, (rank, self.token_to_id[a + b]))
            except KeyError as e:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) uses a token that is not in the vocab: "
                                 f"{e.args[0]!r}") from None
        # pre-token -> tuple of ids, filled as words are met (real text repeats its words)
        self.cache = {}
        # fast path (as in tiktoken): a pre-token that is itself a regular token is that one id. Special tokens
        # that were added to the vocab here are left out: they only come from the special-token split.
        added = set(self.special_token_ids.values()) - set(vocab)
        self._single = {t: i for t, i in self.token_to_id.items() if i not in added}
        self.eot_id = self.special_token_ids.get('<|endoftext|>')

    # -- construction from files
    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens=None):
        """Load vocab.json + merges.txt in GPT-2's format (ours or GPT-2's own, '#version' lines skipped)."""
        with open(vocab_path, encoding='utf-8') as f:
            vocab = {int(i): _from_printable(s) for s, i in json.load(f).items()}
        merges = []
        with open(merges_path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip('\n')
                if not line or line.startswith('#version'):
                    continue
                parts = line.split(' ')
                if len(parts) != 2:
                    raise ValueError(f"{merges_path}:{n}: expected two tokens separated by one space, got {line!r}")
                merges.append((_from_printable(parts[0]), _from_printable(parts[1])))
        return cls(vocab, merges, special_tokens)

    @classmethod
    def from_dir(cls, out_dir):
        """Load what save_tokenizer wrote (vocab.json, merges.txt, special_tokens.json)."""
        for name in ('vocab.json', 'merges.txt'):
            if not os.path.isfile(os.path.join(out_dir, name)):
                raise FileNotFoundError(f"{os.path.join(out_dir, name)} not found: train a tokenizer first with "
                                        f"python bpe.py --input=<text file> --out_dir={out_dir}")
        special_path = os.path.join(out_dir, 'special_tokens.json')
        special = json.load(open(special_path, encoding='utf-8')) if os.path.isfile(special_path) else []
        return cls.from_files(os.path.join(out_dir, 'vocab.json'), os.path.join(out_dir, 'merges.txt'), special)

    # -- BPE inside one pre-token
    def _bpe(self, word):
        """ids of one pre-token: start from its bytes and apply the lowest-rank merge until none applies."""
        b = word.encode('utf-8')
        single = self._single.get(b)
        if single is not None:
            return (single,)  # the whole pre-token is a token (merges always build up to it)
        ids = [self.byte_ids[c] for c in b]
        if len(ids) > LONG_WORD:
            return self._bpe_long(ids)
        ranks = self.merge_ranks
        while len(ids) > 1:
            best_pair, best = None, None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best_pair, best = pair, r
            if best is None:
                break
            # merge every occurrence of the best pair, left to right (they all have the same rank)
            ids = _merge_word(ids, best_pair[0], best_pair[1], best[1])
        return tuple(ids)

    def _bpe_long(self, ids):
        """The same merges as _bpe's scan in O(n log n), for long pre-tokens (a 1 MB run of '=' would take the
        O(n^2) scan hours). A heap of (rank, position) over a linked list of the tokens: popping the lowest rank,
        leftmost first, merges exactly what the scan would, because a pair that contains a new token always has
        a higher rank than the merge that made it (merges are learned in order)."""
        ranks = self.merge_ranks
        n = len(ids)
        nxt = list(range(1, n)) + [-1]  # linked list over the positions still alive
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(r[0], i, r[1]) for i, r in enumerate(map(ranks.get, zip(ids, ids[1:]))) if r is not None]
        heapq.heapify(heap)
        while heap:
            rank, i, new = heapq.heappop(heap)
            j = nxt[i] if alive[i] else -1
            if j < 0 or (ranks.get((ids[i], ids[j])) or (None,))[0] != rank:
                continue  # stale: one side was merged away since this entry was pushed
            ids[i] = new  # merge j into i, unlink j
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for p, q in ((prv[i], i), (i, nxt[i])):  # the two pairs that now touch the new token
                if p >= 0 and q >= 0:
                    r = ranks.get((ids[p], ids[q]))
                    if r is not None:
                        heapq.heappush(heap, (r[0], p, r[1]))
        return tuple(t for t, a in zip(ids, alive) if a)

    def _encode_words(self, words):
        """ids of a list of pre-tokens: each distinct one goes through BPE once, then the cache is reused."""
        cache = self.cache
        missing = set(words).difference(cache)
        if missing:
            if len(cache) > 2_000_000:
                cache.clear()  # bound memory on huge corpora with endless distinct words
            for w in missing:
                cache[w] = self._bpe(w)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def encode_ordinary(self, text):
        """ids of text, with special tokens treated as plain text (tiktoken's name). For data whose documents may
        contain the string '<|endoftext|>' (e.g. Python sources of tokenizers) while the real separators are added
        as ids by the caller."""
        return self._encode_words(PRETOKEN_RE.findall(text))

    _encode_ordinary = encode_ordinary

    def encode(self, text):
        """list of ids of text; special tokens (longest match first) become their own id."""
        if self.special_split_re is None:
            return self._encode_ordinary(text)
        ids = []
        for i, part in enumerate(self.special_split_re.split(text)):
            if i % 2:
                ids.append(self.special_token_ids[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _held_back(self, text):
        """Length of text's longest suffix that could still grow into a special token (a proper prefix of one,
        which includes a whole special token that is the start of a longer one)."""
        hold = 0
        for s in self.special_tokens:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def encode_iterable(self, iterable, buffer_chars=1 << 20):
        """Lazily yield the ids of ''.join(iterable) (e.g. an open file), exactly as encode() would, in bounded
        memory. The tail of the buffer is held back until more text arrives: the last two pre-tokens (a
        whitespace run or "'l" can change once the next characters are known) and any partial special token."""
        buffer = ''
        for piece in iterable:
            buffer += piece
            if len(buffer) < buffer_chars:
                continue
            # hold back a suffix that may still grow into a special token, and a special token that spans the cut
            cut = len(buffer) - self._held_back(buffer)
            if self.special_split_re is not None:
                for m in self.special_split_re.finditer(buffer):
                    if m.start() < cut < m.end():
                        cut = m.start()
                        break
            head = buffer[:cut]
            parts = self.special_split_re.split(head) if self.special_split_re else [head]
            # everything up to the last complete special token is final; segments are encoded independently
            for i, part in enumerate(parts[:-1]):
                if i % 2:
                    yield self.special_token_ids[part]
                elif part:
                    yield from self._encode_ordinary(part)
            # of the text after it, emit all pre-tokens but the last two. NOTE: emit them from this list of
            # pre-tokens, never by re-encoding the string: alone, 'x  \n' would end in the run '  \n' whereas
            # followed by 'y' it is '  ' + '\n'.
            words = PRETOKEN_RE.findall(parts[-1])
            yield from self._encode_words(words[:-2])
            buffer = ''.join(words[-2:]) + buffer[len(head):]
        if buffer:
            yield from self.encode(buffer)

    def decode(self, ids):
        """Text of ids: the tokens' bytes joined, decoded as UTF-8 with invalid sequences shown as U+FFFD."""
        vocab = self.vocab
        try:
            data = b''.join(map(vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, (int, np.integer)) or i not in vocab)
            raise ValueError(f"cannot decode id {bad!r}: ids must be ints in [0, {self.vocab_size})") from None
        return data.decode('utf-8', errors='replace')


# -----------------------------------------------------------------------------
# Encoding a whole file into a flat token file, in parallel

_worker_tokenizer = None


def _init_encode_worker(tok_dir):
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.from_dir(tok_dir)


def _encode_chunk(args):
    path, start, end, dtype = args
    text, n_bad = _read_text(path, start, end)
    return np.array(_worker_tokenizer.encode(text), dtype=dtype), n_bad, end - start


def token_dtype(vocab_size):
    """Smallest unsigned dtype name that holds every id."""
    return 'uint16' if vocab_size <= 1 << 16 else 'uint32'


def _write_token_stream(output_path, fn, jobs, n, initializer, initargs, on_result):
    """Run fn over jobs (in a pool of n worker processes, or in this process when n == 1) and append each returned
    id array to a temporary file next to output_path, in job order (imap keeps the order); rename it to
    output_path at the end, or delete it on any error, so a half-written token file never exists.
    fn returns (ids array, *extra); on_result(*extra) is called for each (progress bars, counters).
    Returns the number of tokens written."""
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=os.path.basename(output_path) + '.', suffix='.tmp')
    n_tokens, pool = 0, None
    try:
        if n == 1:
            results = map(fn, jobs)
        else:
            pool = _pool(n, None if FORK else initializer, initargs)
            results = pool.imap(fn, jobs)
        with os.fdopen(fd, 'wb') as f:
            for arr, *extra in results:
                arr.tofile(f)
                n_tokens += len(arr)
                on_result(*extra)
        os.replace(tmp, output_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    return n_tokens


def encode_file(tokenizer_dir, input_path, output_path, num_workers=None, progress=True):
    """Encode the text file input_path into output_path: the ids as one flat array of uint16 (uint32 when the
    vocab has more than 65,536 ids), no header. Special tokens in the text (documents separated by
    '<|endoftext|>') become their ids. Chunks are encoded in parallel and written in order as they arrive
    (memory stays bounded), to a temporary file that is renamed at the end.
    Returns {'n_tokens', 'dtype', 'n_bytes', 'time_s'}."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"text to encode not found: {input_path!r}")
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    cuts = find_chunk_boundaries(input_path, _chunk_size(input_path, _num_workers(num_workers)))
    jobs = [(input_path, a, b, dtype) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    n = min(_num_workers(num_workers), max(1, len(jobs)))
    t0 = time.time()
    global _worker_tokenizer
    _worker_tokenizer = tokenizer  # used in-process when n == 1; inherited by forked workers otherwise
    n_bad = 0  # undecodable byte sequences, summed over the chunks
    bar = tqdm(total=cuts[-1], unit='B', unit_scale=True, desc=f'encode {os.path.basename(input_path)}',
               disable=not progress)

    def on_result(bad, nbytes):
        nonlocal n_bad
        n_bad += bad
        bar.update(nbytes)

    with bar:
        n_tokens = _write_token_stream(output_path, _encode_chunk, jobs, n, _init_encode_worker, (tokenizer_dir,),
                                       on_result)
    if n_bad:
        print(f"warning: {input_path} is not valid UTF-8: {n_bad} bad byte sequence(s) were encoded as U+FFFD",
              file=sys.stderr)
    return {'n_tokens': n_tokens, 'dtype': dtype, 'n_bytes': cuts[-1], 'time_s': time.time() - t0}


_worker_docs = None


def _encode_docs_batch(args):
    lo, hi, texts, dtype = args
    tok = _worker_tokenizer
    texts = _worker_docs[lo:hi] if texts is None else texts
    ids = []
    for text in texts:
        ids += tok.encode_ordinary(text)
        ids.append(tok.eot_id)
    return np.array(ids, dtype=dtype), hi - lo


def encode_documents(tokenizer, docs, output_path, num_workers=None, progress=True, desc='encode', batch_chars=1 << 21):
    """Encode a list of documents (str) into a flat token file: each document's ids, then the '<|endoftext|>' id.
    Documents are encoded as plain text (encode_ordinary: a '<|endoftext|>' *inside* a document is text).
    Batches of ~batch_chars characters go to a process pool (forked workers share `docs` without copying it) and
    come back in order; written to a temporary file that is renamed at the end.
    Returns {'n_tokens', 'dtype', 'n_docs', 'time_s'}."""
    global _worker_tokenizer, _worker_docs
    if tokenizer.eot_id is None:
        raise ValueError("the tokenizer has no '<|endoftext|>' special token to separate documents")
    dtype = token_dtype(tokenizer.vocab_size)
    # batches of consecutive documents, about batch_chars characters each
    bounds, size = [0], 0
    for i, d in enumerate(docs):
        size += len(d)
        if size >= batch_chars:
            bounds.append(i + 1)
            size = 0
    if bounds[-1] != len(docs):
        bounds.append(len(docs))
    n = min(_num_workers(num_workers), max(1, len(bounds) - 1))
    jobs = [(lo, hi, None if (FORK or n == 1) else docs[lo:hi], dtype) for lo, hi in zip(bounds[:-1], bounds[1:])]
    t0 = time.time()
    bar = tqdm(total=len(docs), unit='doc', desc=desc, disable=not progress)
    try:
        _worker_tokenizer, _worker_docs = tokenizer, docs  # forked workers inherit both
        n_tokens = _write_token_stream(output_path, _encode_docs_batch, jobs, n, _init_encode_worker_obj,
                                       (tokenizer,), bar.update)
    finally:
        bar.close()
        _worker_docs = None
    return {'n_tokens': n_tokens, 'dtype': dtype, 'n_docs': len(docs), 'time_s': time.time() - t0}


def _init_encode_worker_obj(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


# -----------------------------------------------------------------------------
# Token folders: what data/*/prepare.py write and train.py reads (train.bin, val.bin, meta.json)

def tokenizer_sha1(tok_dir):
    """sha1 of a tokenizer's files: token files built with another tokenizer must be rebuilt."""
    h = hashlib.sha1()
    for name in ('vocab.json', 'merges.txt', 'special_tokens.json'):
        path = os.path.join(tok_dir, name)
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def fingerprint(*parts):
    """A short hash of the inputs of a step: file contents (not names or dates) and settings."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, str) and os.path.isfile(p):
            with open(p, 'rb') as f:
                for block in iter(lambda: f.read(1 << 24), b''):
                    h.update(block)
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def build_token_folder(paths, out_dir, vocab_size, source, special_tokens=('<|endoftext|>',), num_workers=None):
    """Text files {'train': path, 'val': path} -> out_dir/tokenizer/ (a BPE trained on the train text),
    out_dir/train.bin, val.bin and meta.json ({vocab_size, dtype, eot_id, tokenizer_dir, source, splits,
    val_bytes, steps}). meta.json records a fingerprint of each step's inputs, so a re-run skips what is done."""
    meta_path = os.path.join(out_dir, 'meta.json')
    old = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    special_tokens = list(special_tokens)

    # 1) the tokenizer, trained on the train text only
    tok_dir = os.path.join(out_dir, 'tokenizer')
    fp_tok = fingerprint(paths['train'], vocab_size)
    if old.get('steps', {}).get('tokenizer') == fp_tok and os.path.exists(os.path.join(tok_dir, 'merges.txt')):
        print(f"tokenizer: up to date in {tok_dir}")
    else:
        t = time.time()
        vocab, merges = train_bpe(paths['train'], vocab_size, special_tokens, num_workers=num_workers)
        save_tokenizer(vocab, merges, special_tokens, tok_dir)
        print(f"tokenizer: {len(vocab)} ids trained in {time.time() - t:.1f}s")
        old = {}  # everything after it is stale
    tokenizer = Tokenizer.from_dir(tok_dir)

    # 2) the token files
    meta = {'vocab_size': tokenizer.vocab_size, 'eot_id': tokenizer.eot_id, 'tokenizer_dir': 'tokenizer',
            'source': source, 'steps': {'tokenizer': fp_tok}, 'splits': {}}
    for split in ('train', 'val'):
        out = os.path.join(out_dir, f'{split}.bin')
        fp = fingerprint(paths[split], fp_tok)
        if old.get('steps', {}).get(split) == fp and os.path.exists(out):
            print(f"{split}: up to date")
            meta['splits'][split] = old['splits'][split]
        else:
            stats = encode_file(tok_dir, paths[split], out, num_workers=num_workers)
            meta['splits'][split] = {'tokens': stats['n_tokens'], 'bytes': os.path.getsize(paths[split])}
        meta['steps'][split] = fp
    meta['dtype'] = token_dtype(tokenizer.vocab_size)  # uint16 up to 65,536 ids
    meta['val_bytes'] = meta['splits']['val']['bytes']  # lets train.py report bits per byte
    _write_atomic(meta_path, json.dumps(meta, indent=1))
    for split, st in meta['splits'].items():
        print(f"{split}: {st['tokens']:,} tokens ({st['bytes'] / st['tokens']:.2f} bytes/token)")
    return meta


# -----------------------------------------------------------------------------
# Benchmark (python bpe.py --bench): side by side in one run, on the same text and cores

def _timed_in_child(fn, *args):
    """Run fn(*args) in a forked child; return (its result, seconds, peak RSS in MB of the child and of its own
    workers). A fresh process per trainer makes the peak-memory numbers independent of each other."""
    ctx = mp.get_context('fork')
    parent, child = ctx.Pipe()

    def target():
        import resource
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


def _train_ours(path, n_vocab):
    vocab, merges = train_bpe(path, n_vocab, ['<|endoftext|>'], progress=False)
    return len(merges), max(len(t) for t in vocab.values())


def _train_hf(path, n_vocab):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    # ByteLevel(use_regex=True) is GPT-2's regex on the bytes-as-printable-unicode text: the same setup
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=n_vocab, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train([path], trainer)
    return hf.get_vocab_size(), None


def run_bench(out_path, data_dir=None):
    import gzip
    import platform
    import tiktoken
    import tokenizers
    data_dir = data_dir or os.environ.get('LMSCRATCH_DATA', os.path.join(os.path.dirname(os.path.abspath(
        __file__)), '..', 'shared', 'data'))
    data_dir = os.path.abspath(data_dir)
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(data_dir, 'tiktoken_cache'))
    gz = os.path.join(data_dir, 'text', 'docs_en.txt.gz')
    if not os.path.isfile(gz):
        sys.exit(f"benchmark text not found: {gz} (set LMSCRATCH_DATA to the shared data folder)")
    cores = _num_workers()
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
        (n_merges, longest), t_ours, rss_ours, rss_workers = _timed_in_child(_train_ours, path, 10000)
        _, t_hf, rss_hf, _ = _timed_in_child(_train_hf, path, 10000)
        print(f"train 10K: ours {t_ours:.2f}s, HF tokenizers {t_hf:.2f}s")
        rows.append(('BPE training, vocab 10,000', f'{t_ours:.2f} s ({mb / t_ours:.1f} MB/s)',
                     f'{t_hf:.2f} s ({mb / t_hf:.1f} MB/s)', f'{t_hf / t_ours:.2f}x'))
        ref = os.path.join(data_dir, 'a1', 'corpus.en')
        _, t_ref, _, _ = _timed_in_child(_train_ours, ref, 500)
        rows.append(('BPE training, corpus.en, vocab 500 (course reference check)', f'{t_ref:.2f} s',
                     'goal: well under 1.5 s', ''))

        # 2) encoding with GPT-2's merges: one thread, then all cores
        a1 = os.path.join(data_dir, 'a1')
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
        f'Command: `python bpe.py --bench`; device: {platform.processor() or platform.machine()}, {cores} cores '
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
    _write_atomic(out_path, '\n'.join(lines))
    print('\n'.join(lines))
    print(f"wrote {out_path}")


# -----------------------------------------------------------------------------
if __name__ == '__main__':
    import resource

    def peak_rss_mb():
        # ru_maxrss is in KiB on Linux; children = the worker processes (the largest of them)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return own / 1024, kids / 1024

    if mode == 'train':
        if not input:
            sys.exit("give the training text: python bpe.py --input=path/to/text.txt --vocab_size=10000")
        t0 = time.time()
        vocab, merges = train_bpe(input, vocab_size, special_tokens, num_workers or None)
        save_tokenizer(vocab, merges, special_tokens, out_dir)
        own, kids = peak_rss_mb()
        longest = max(list(vocab.values())[len(special_tokens):], key=len)  # special tokens excluded
        print(f"wrote {out_dir}/vocab.json, merges.txt, special_tokens.json: vocab {len(vocab)}, "
              f"{len(merges)} merges")
        print(f"summary: {time.time() - t0:.2f}s total, peak memory {own:.0f} MB (main) / {kids:.0f} MB "
              f"(largest worker), longest token {len(longest)} bytes: {longest.decode('utf-8', 'replace')!r}")
    elif mode == 'encode':
        if not (input and tokenizer_dir and output):
            sys.exit("encode mode needs --tokenizer_dir=... --input=<text> --output=<tokens.bin>")
        stats = encode_file(tokenizer_dir, input, output, num_workers or None)
        print(f"wrote {output}: {stats['n_tokens']:,} {stats['dtype']} tokens from {stats['n_bytes']:,} bytes "
              f"({stats['n_bytes'] / max(stats['n_tokens'], 1):.2f} bytes/token) in {stats['time_s']:.1f}s "
              f"({stats['n_bytes'] / 1e6 / max(stats['time_s'], 1e-9):.1f} MB/s)")
    elif mode == 'bench':
        run_bench(bench_out)
    else:
        sys.exit(f"unknown mode {mode!r}: use 'train', 'encode' or 'bench'")

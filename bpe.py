"""
bpe.py: a byte-level BPE tokenizer (GPT-2 style), trained and used at speed in plain Python, and the token files
(train.bin, val.bin, meta.json) that train.py reads.

What it teaches (CS336 assignment 1, section 2; Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
Subword Units"; Radford et al. 2019, GPT-2):
- Training: start from the 256 single bytes (plus the special tokens), split the text into pre-tokens with GPT-2's
  regex, and repeatedly merge the most frequent adjacent pair of tokens into a new token. Pairs never cross a
  pre-token or a special token. Ties go to the lexicographically greater pair.
- Encoding: split out the special tokens (longest first), pre-tokenize, and inside each pre-token apply the merges in
  the order they were learned. With GPT-2's files the ids are exactly tiktoken's. decode() joins the bytes.
What makes it fast without leaving Python:
- worker processes pre-tokenize chunks of the file (bounded memory), counting with Counter over regex.findall (C);
- the merge loop works on the distinct pre-tokens, not on the text: a merge rewrites only the words that contain the
  pair, pair counts change incrementally, and the best pair comes from a lazy-deletion heap;
- encoding maps each distinct pre-token once (a cache) and chains the cached id tuples.

Run:
    python bpe.py --input=../shared/data/a1/corpus.en --vocab_size=500 --out_dir=out/tok500     # train
    python bpe.py --mode=encode --tokenizer_dir=out/tok500 --input=docs.txt --output=docs.bin  # encode
    python bench/bpe.py                                     # speed and ids vs HF tokenizers and tiktoken
Library (data/*/prepare.py build their token folders with it):
    from bpe import train_bpe, save_tokenizer, Tokenizer, encode_file, encode_documents, build_token_folder
"""
import gzip
import hashlib
import heapq
import json
import mmap
import multiprocessing as mp
import os
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
# config (override on the command line: --key=value; --help lists them)
mode = 'train'  # 'train' (text -> tokenizer files) | 'encode' (text -> flat token file)
input = ''  # train/encode: path of the UTF-8 text file to read
vocab_size = 10000  # train: final vocabulary size = special tokens + 256 bytes + merges
special_tokens = ['<|endoftext|>']  # train: tokens that are never split and never merged across
out_dir = 'out/tokenizer'  # train: folder for vocab.json, merges.txt, special_tokens.json
tokenizer_dir = ''  # encode: folder written by train mode
output = ''  # encode: path of the flat token file (uint16, or uint32 when the vocab needs it)
num_workers = 0  # processes for pre-tokenization and encoding; 0 = every core of this machine
overwrite = False  # replace an existing tokenizer (train) or --output (encode); else they are refused
# -----------------------------------------------------------------------------

# GPT-2's pre-tokenizer: contractions, letters (with one optional leading space), numbers, punctuation runs,
# whitespace runs that leave the last space to the next word (\s+(?!\S)), and trailing whitespace.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(SPLIT_PATTERN)
# Where a text may be cut (into chunks for the workers, or a stream into pieces) without changing any pre-token: a
# lone '\n' between two printable ASCII characters. It is a whitespace run of its own, and no pre-token extends over
# it. NOTE the footgun: after '  \n' a cut would change the run: at the end of a chunk `\s+(?!\S)` takes all of
# '  \n', in the whole text it takes '  ' and leaves '\n'. Hence the printable character before it. In a str (a stream)
# any non-space will do, which finds cuts in CJK lines too; in bytes only ASCII tells a space from a non-space.
CUT_PATTERN = r'(?<=[\x21-\x7e])\n(?=[\x21-\x7e])'
CHUNK_CUT_RE, TEXT_CUT_RE = regex.compile(CUT_PATTERN.encode()), regex.compile(r'(?<=\S)\n(?=\S)')
CHUNK_BYTES = 4 << 20  # largest chunk a worker reads at once: bounds its memory (tests make it tiny)
EOT = '<|endoftext|>'  # the document separator of every token folder

class DataError(ValueError):  # bad input (an empty text, a missing file): the command prints one line, no traceback
    pass

def num_cores(n=0):
    """n worker processes; 0 (or None) = every core this process may use."""
    return n or (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)

def parallel_map(fn, jobs, n, ordered=True):
    """Yield fn(job) for each job: in this process when n == 1, else in n forked workers (in job order if ordered).
    Forked workers see the parent's module globals (a loaded Tokenizer, a list of documents) without pickling."""
    if n == 1 or 'fork' not in mp.get_all_start_methods():  # no fork (Windows): one process does it all
        yield from map(fn, jobs)
        return
    with mp.get_context('fork').Pool(n) as pool:  # leaving the block (also on an error) terminates the workers
        yield from (pool.imap if ordered else pool.imap_unordered)(fn, jobs)

# -----------------------------------------------------------------------------
# Pre-tokenization: chunks of the file, counted in parallel

def find_chunk_boundaries(path, chunk_bytes=None):
    """Byte offsets [0, ..., file_size] that cut the file into chunks of about chunk_bytes each. Every cut lies just
    after a lone '\\n' between printable ASCII bytes (CUT_PATTERN), so it never splits a UTF-8 character, a
    pre-token or (as long as special tokens hold no newline) a special token. A file without such a place is one
    chunk."""
    step, size, cuts = chunk_bytes or CHUNK_BYTES, os.path.getsize(path), [0]
    if size > step:  # the regex searches the memory-mapped file: the OS reads only the pages the search touches
        with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            while cuts[-1] + step < size and (m := CHUNK_CUT_RE.search(mm, cuts[-1] + step)):
                cuts.append(m.end())
    return cuts + [size]

def _read_text(path, start, end):
    """Bytes [start, end) of path as str. Invalid UTF-8 becomes U+FFFD; returns (text, number of bad spots)."""
    with open(path, 'rb') as f:
        f.seek(start)
        data = f.read(end - start)
    text = data.decode('utf-8', errors='replace')
    return text, text.count('\ufffd') - data.count('\ufffd'.encode('utf-8'))

def _map_file_chunks(fn, path, num_workers, desc, progress, ordered=True):
    """Yield fn((path, start, end))'s first result for each chunk of the file, with a progress bar in bytes, and
    warn once if the file was not valid UTF-8. fn returns (result, number of bad spots, number of bytes).
    Chunks are at most CHUNK_BYTES (memory) and at least 4 per worker (load balance)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text not found: {path!r} (give a UTF-8 text file)")
    n = num_cores(num_workers)
    cuts = find_chunk_boundaries(path, min(CHUNK_BYTES, max(1 << 16, os.path.getsize(path) // (4 * n) + 1)))
    jobs, n_bad = [(path, a, b) for a, b in zip(cuts, cuts[1:]) if b > a], 0
    with tqdm(total=cuts[-1], unit='B', unit_scale=True, desc=desc, disable=not progress) as bar:
        for result, bad, nbytes in parallel_map(fn, jobs, min(n, max(1, len(jobs))), ordered):
            n_bad += bad
            bar.update(nbytes)
            yield result
    if n_bad:
        print(f"warning: {path} is not valid UTF-8: {n_bad} bad byte sequence(s) became U+FFFD", file=sys.stderr)

def _special_split_re(special_tokens):
    """Regex that matches any special token; longest first so that overlapping ones resolve to the longest."""
    alternatives = '|'.join(map(regex.escape, sorted(special_tokens, key=len, reverse=True)))
    return regex.compile(f'({alternatives})') if special_tokens else None

_worker_specials = []  # the special tokens of count_pretokens, inherited by the forked workers

def _count_chunk(job):
    """Worker: pre-token counts of one chunk of the file (special tokens removed; they only separate)."""
    text, n_bad = _read_text(*job)
    split_re = _special_split_re(_worker_specials)
    counts = Counter()
    for segment in (split_re.split(text)[::2] if split_re else [text]):  # odd entries are the special tokens
        counts.update(PRETOKEN_RE.findall(segment))
    return counts, n_bad, job[2] - job[1]

def _check_special_tokens(special_tokens):
    special_tokens = list(special_tokens or [])
    ok = all(isinstance(s, str) and s and '\n' not in s for s in special_tokens)  # files are cut at newlines
    if not ok or len(set(special_tokens)) < len(special_tokens):
        raise ValueError(f"special tokens must be distinct non-empty strings without a newline, got {special_tokens!r}")
    return special_tokens

def count_pretokens(input_path, special_tokens=(), num_workers=None, progress=True):
    """Counter {pre-token string: count} over the whole file, computed in parallel over chunks."""
    global _worker_specials
    _worker_specials = list(special_tokens)
    counts = Counter()
    for chunk_counts in _map_file_chunks(_count_chunk, input_path, num_workers, 'pre-tokenize', progress, False):
        counts.update(chunk_counts)
    return counts

# -----------------------------------------------------------------------------
# Training: the merge loop over distinct pre-tokens

def _order_key(b):
    """A bytes key that sorts in the *opposite* order of b (so that a min-heap yields the greater pair first).
    Each byte c becomes the 2 bytes of 255-c, and a terminator 0x0100 (greater than any of them) makes a string
    sort after its own extensions: 'ab' > 'a' in bytes order, and key('ab') < key('a')."""
    return b''.join(bytes((0, 255 - c)) for c in b) + b'\x01\x00'

def _merge_word(word, a, b, new):
    """word (sequence of ids) with every non-overlapping (a, b), left to right, replaced by new."""
    out, i, n = [], 0, len(word)
    while i < n:
        hit = word[i] == a and i + 1 < n and word[i + 1] == b  # the pair starts at i: both become new
        out.append(new if hit else word[i])
        i += 2 if hit else 1
    return tuple(out)

def train_bpe(input_path, vocab_size, special_tokens, num_workers=None, progress=True):
    """Train a byte-level BPE on the text file input_path.

    Returns (vocab, merges): vocab {id: bytes} with the special tokens first (ids 0..S-1), then the 256 bytes, then
    one token per merge; merges [(bytes, bytes)] in the order they were learned. vocab_size counts everything;
    when the text runs out of pairs first, a warning says which size was reached."""
    special_tokens = _check_special_tokens(special_tokens)
    n_special = len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size!r} is too small: it must be at least 256 bytes + "
                         f"{n_special} special token(s) = {256 + n_special}")
    n_merges = vocab_size - 256 - n_special

    # 1) pre-token counts, in parallel
    word_counts = count_pretokens(input_path, special_tokens, num_workers, progress)
    if not word_counts:
        raise DataError(f"{input_path} holds no text to train on (it is empty or only special tokens)")

    # 2) each distinct pre-token as a tuple of ids (internal ids: byte b is id b, merge k is id 256+k)
    words, counts = [tuple(w.encode('utf-8')) for w in word_counts], list(word_counts.values())
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
    for _ in tqdm(range(n_merges), desc='merges', unit='merge', disable=not progress):
        # pop until the top entry is current (its count equals the live count): lazy deletion
        while heap and pair_counts.get((heap[0][3], heap[0][4]), 0) != -heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            break  # no pair left anywhere: the corpus is fully merged
        _, _, _, a, b = heapq.heappop(heap)
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
                c = pair_counts.pop(pair, 0) + d  # a pair whose count drops to 0 leaves the table
                if c:
                    pair_counts[pair] = c
                    heapq.heappush(heap, (-c, order_keys[pair[0]], order_keys[pair[1]], *pair))

    # 4) final layout: special tokens, then bytes, then merges (the layout of the course's reference vocab)
    vocab = dict(enumerate([s.encode('utf-8') for s in special_tokens] + token_bytes))
    if len(merges) < n_merges:
        print(f"warning: {input_path} ran out of pairs after {len(merges)} merges: the vocabulary has {len(vocab)} "
              f"tokens, not vocab_size={vocab_size} (give more text or a smaller vocab_size)", file=sys.stderr)
    return vocab, [(token_bytes[a], token_bytes[b]) for a, b in merges]

# -----------------------------------------------------------------------------
# Serialization: GPT-2's files. Every byte maps to a printable unicode character (printable bytes to themselves,
# the others to chr(256 + k)), so any token is a readable JSON key and merges.txt can separate the two halves of a
# merge with a space. This is GPT-2's encoder.py bytes_to_unicode.

def bytes_to_unicode():
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    others = [b for b in range(256) if b not in printable]
    return dict(zip(printable + others, map(chr, printable + [256 + k for k in range(len(others))])))

BYTE_ENCODER = bytes_to_unicode()  # byte value -> printable char
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'special_tokens.json')

def _to_printable(b):
    return ''.join(BYTE_ENCODER[c] for c in b)

def _from_printable(s):
    return bytes(BYTE_DECODER[c] for c in s)  # a KeyError: s is not in GPT-2's printable byte encoding

def _write_atomic(path, chunks):
    """Write chunks (bytes, or numpy arrays of ids) to path.tmp, then rename it: a reader never sees half a file, an
    error leaves no partial output, and the .tmp a kill leaves is replaced by the next write. Returns the length."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp, n = f"{path}.tmp", 0
    try:
        with open(tmp, 'wb') as f:
            for chunk in chunks:
                f.write(chunk)  # an array goes through the buffer protocol: its raw ids, no copy
                n += len(chunk)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n

def save_tokenizer(vocab, merges, special_tokens, out_dir):
    """Write out_dir/vocab.json ({printable token: id}), merges.txt (one 'a b' per line, in order) and
    special_tokens.json, each to a temporary name first."""
    texts = (json.dumps({_to_printable(t): i for i, t in sorted(vocab.items())}, ensure_ascii=False, indent=0),
             ''.join(f"{_to_printable(a)} {_to_printable(b)}\n" for a, b in merges),
             json.dumps(list(special_tokens or [])))
    for name, text in zip(TOKENIZER_FILES, texts):
        _write_atomic(os.path.join(out_dir, name), [text.encode('utf-8')])

# -----------------------------------------------------------------------------
# Encoding and decoding

class Tokenizer:
    """Encode text to ids and back with a trained vocab and merges.

    vocab {id: bytes}; merges [(bytes, bytes)] in learned order; special_tokens [str]: split out before
    pre-tokenization (longest wins when they overlap) and encoded as one id each."""

    def __init__(self, vocab, merges, special_tokens=None):
        self.special_tokens = _check_special_tokens(special_tokens)
        self.vocab = dict(vocab)
        self.token_to_id = {t: i for i, t in sorted(self.vocab.items(), reverse=True)}  # a repeated token: lowest id
        self._single = dict(self.token_to_id)  # fast path (tiktoken's): a pre-token that is a regular token
        # a special token whose bytes form a regular token keeps its id (GPT-2's '<|endoftext|>' is 50256); the
        # others get the next free ids (they never come out of the fast path: only the special-token split)
        for b in (s.encode('utf-8') for s in self.special_tokens):
            if b not in self.token_to_id:
                self.token_to_id[b] = max(self.vocab, default=-1) + 1
                self.vocab[self.token_to_id[b]] = b
        self.special_token_ids = {s: self.token_to_id[s.encode('utf-8')] for s in self.special_tokens}
        self.special_split_re = _special_split_re(self.special_tokens)
        self.vocab_size, self.eot_id = max(self.vocab) + 1, self.special_token_ids.get(EOT)
        self.byte_ids = [self.token_to_id[bytes([c])] for c in range(256)]  # a byte-level vocab has all 256
        # (id_a, id_b) -> (rank, id of the merged token): the merge learned first has rank 0
        self.merge_ranks = {}
        for rank, (a, b) in enumerate(merges):
            try:
                self.merge_ranks.setdefault((self.token_to_id[a], self.token_to_id[b]), (rank, self.token_to_id[a + b]))
            except KeyError as e:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) uses a token that is not in the vocab: "
                                 f"{e.args[0]!r}") from None
        self.cache = {}  # pre-token -> tuple of ids, filled as words are met (real text repeats its words)

    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens=None):
        """Load vocab.json + merges.txt in GPT-2's format (ours or GPT-2's own; '#version' lines skipped)."""
        with open(vocab_path, encoding='utf-8') as f:
            try:  # a truncated or hand-edited file: name it, not json's line and column alone
                vocab = {int(i): _from_printable(s) for s, i in json.load(f).items()}
            except (ValueError, AttributeError, TypeError) as e:
                raise ValueError(f"{vocab_path} is not a token -> id map ({e}): train the tokenizer again") from None
        with open(merges_path, encoding='utf-8') as f:
            lines = [line.rstrip('\n').split(' ') for line in f if line.strip('\n') and not line.startswith('#version')]
        if bad := [' '.join(parts) for parts in lines if len(parts) != 2]:
            raise ValueError(f"{merges_path}: expected two tokens separated by a space, got {bad[0]!r}")
        return cls(vocab, [(_from_printable(a), _from_printable(b)) for a, b in lines], special_tokens)

    @classmethod
    def from_dir(cls, tok_dir):
        """Load what save_tokenizer wrote (vocab.json, merges.txt, special_tokens.json)."""
        vocab, merges, special = (os.path.join(tok_dir, name) for name in TOKENIZER_FILES)
        if not (os.path.isfile(vocab) and os.path.isfile(merges)):
            raise FileNotFoundError(f"{vocab} or merges.txt not found: train a tokenizer first with "
                                    f"python bpe.py --input=<text file> --out_dir={tok_dir}")
        return cls.from_files(vocab, merges, json.load(open(special)) if os.path.isfile(special) else [])

    def _bpe(self, word):
        """ids of one pre-token: start from its bytes and apply the lowest-rank merge (leftmost first) until none
        applies. A heap of (rank, position) over a linked list of the tokens makes this O(n log n), where rescanning
        every pair after each merge is O(n^2) (a 1 MB run of '=' would take hours). It merges exactly what the scan
        would, because a pair that contains a new token always ranks after the merge that made it."""
        b = word.encode('utf-8')
        if b in self._single:
            return (self._single[b],)  # the whole pre-token is a token (merges always build up to it)
        ids, ranks, n = [self.byte_ids[c] for c in b], self.merge_ranks, len(b)
        nxt, prv, alive = list(range(1, n)) + [-1], list(range(-1, n - 1)), [True] * n  # a linked list
        heap = [(r[0], i, r[1]) for i, r in enumerate(map(ranks.get, zip(ids, ids[1:]))) if r is not None]
        heapq.heapify(heap)
        while heap:
            rank, i, new = heapq.heappop(heap)
            j = nxt[i] if alive[i] else -1
            if j < 0 or (ranks.get((ids[i], ids[j])) or (None,))[0] != rank:
                continue  # stale: one side was merged away since this entry was pushed
            ids[i], alive[j], nxt[i] = new, False, nxt[j]  # merge j into i, unlink j
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for p, q in ((prv[i], i), (i, nxt[i])):  # the two pairs that now touch the new token
                r = ranks.get((ids[p], ids[q])) if p >= 0 and q >= 0 else None
                if r is not None:
                    heapq.heappush(heap, (r[0], p, r[1]))
        return tuple(t for t, a in zip(ids, alive) if a)

    def _encode_words(self, words):
        """ids of a list of pre-tokens: each distinct one goes through BPE once, then the cache answers."""
        cache = self.cache
        if len(cache) > 2_000_000:
            cache.clear()  # bound memory on huge corpora with endless distinct words
        for w in set(words).difference(cache):
            cache[w] = self._bpe(w)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def encode_ordinary(self, text):
        """ids of text, special tokens treated as plain text (tiktoken's name): for documents that may contain the
        string '<|endoftext|>' (Python sources of tokenizers) while the caller adds the real separators as ids."""
        return self._encode_words(PRETOKEN_RE.findall(text))

    def encode(self, text):
        """list of ids of text; special tokens (longest match first) become their own id."""
        ids = []
        for i, part in enumerate(self.special_split_re.split(text) if self.special_split_re else [text]):
            ids.extend([self.special_token_ids[part]] if i % 2 else self.encode_ordinary(part))  # odd: special tokens
        return ids

    def encode_iterable(self, iterable, buffer_chars=1 << 20):
        """Lazily yield the ids of ''.join(iterable) (e.g. an open file), exactly as encode() would, in bounded
        memory: once the buffer holds buffer_chars, it is encoded up to its last safe cut (TEXT_CUT_RE) and the rest
        waits for more text. Only text not yet scanned is searched (a text without cuts stays linear, not quadratic).
        Like the file cuts, it needs special tokens without a newline (the constructor refuses others)."""
        buffer, scanned = '', 0  # buffer[:scanned] holds no cut (its last '\n' may become one when text follows)
        for piece in iterable:
            buffer += piece
            if len(buffer) >= buffer_chars:
                cut = max((m.end() for m in TEXT_CUT_RE.finditer(buffer, max(0, scanned - 1))), default=0)
                yield from self.encode(buffer[:cut])
                buffer, scanned = buffer[cut:], len(buffer) - cut
        yield from self.encode(buffer)

    def decode(self, ids):
        """Text of ids: the tokens' bytes joined, decoded as UTF-8 with invalid sequences shown as U+FFFD."""
        try:
            return b''.join(map(self.vocab.__getitem__, ids)).decode('utf-8', errors='replace')
        except KeyError as e:  # the missing key is the bad id
            raise ValueError(f"cannot decode id {e.args[0]!r}: ids must be ints in [0, {self.vocab_size})") from None

# -----------------------------------------------------------------------------
# Flat token files: a text file or a list of documents -> one array of ids on disk, encoded in parallel

def token_dtype(vocab_size):
    return 'uint16' if vocab_size <= 1 << 16 else 'uint32'  # the smallest unsigned dtype that holds every id

_worker_tokenizer, _worker_docs = None, None  # set just before the pool forks: the workers inherit them

def _encode_chunk(job):
    text, n_bad = _read_text(*job)
    ids = np.array(_worker_tokenizer.encode(text), dtype=token_dtype(_worker_tokenizer.vocab_size))
    return ids, n_bad, job[2] - job[1]

def encode_file(tokenizer, input_path, output_path, num_workers=None, progress=True):
    """Encode the text file input_path into output_path with tokenizer (a Tokenizer, or the folder save_tokenizer
    wrote): one flat array of ids (token_dtype), no header. Special tokens in the text ('<|endoftext|>' between
    documents) become their ids. Chunks are encoded in parallel and written in order as they arrive (bounded memory).
    Returns {n_tokens, dtype, n_bytes, time_s}."""
    global _worker_tokenizer
    t0 = time.time()
    _worker_tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_dir(tokenizer)
    n_tokens = _write_atomic(output_path, _map_file_chunks(_encode_chunk, input_path, num_workers,
                                                           f'encode {os.path.basename(input_path)}', progress))
    return {'n_tokens': n_tokens, 'dtype': token_dtype(_worker_tokenizer.vocab_size),
            'n_bytes': os.path.getsize(input_path), 'time_s': time.time() - t0}

def _encode_docs_batch(job):
    tok = _worker_tokenizer  # each document's ids, then the '<|endoftext|>' id
    ids = chain.from_iterable(tok.encode_ordinary(text) + [tok.eot_id] for text in _worker_docs[job[0]:job[1]])
    return np.fromiter(ids, dtype=token_dtype(tok.vocab_size))

def encode_documents(tokenizer, docs, output_path, num_workers=None, progress=True, desc='encode', batch_chars=1 << 21):
    """Encode a list of documents (str) into a flat token file: each document's ids, then the '<|endoftext|>' id.
    Documents are plain text (encode_ordinary: a '<|endoftext|>' *inside* a document stays text). Batches of about
    batch_chars characters go to forked workers that share `docs` without a copy, and come back in order.
    Returns {n_tokens, dtype, n_docs, time_s}."""
    global _worker_tokenizer, _worker_docs
    if tokenizer.eot_id is None:
        raise ValueError("the tokenizer has no '<|endoftext|>' special token to separate documents")
    t0, step = time.time(), max(1, batch_chars * len(docs) // max(1, sum(map(len, docs))))  # documents per batch
    jobs = [(lo, min(lo + step, len(docs))) for lo in range(0, len(docs), step)]
    _worker_tokenizer, _worker_docs = tokenizer, docs
    try:
        batches = parallel_map(_encode_docs_batch, jobs, min(num_cores(num_workers), max(1, len(jobs))))
        n_tokens = _write_atomic(output_path, tqdm(batches, total=len(jobs), desc=desc, unit='batch',
                                                   disable=not progress))
    finally:
        _worker_docs = None
    return {'n_tokens': n_tokens, 'dtype': token_dtype(tokenizer.vocab_size), 'n_docs': len(docs),
            'time_s': time.time() - t0}

# -----------------------------------------------------------------------------
# Token folders: what data/*/prepare.py write and train.py reads (train.bin, val.bin, meta.json, tokenizer/)

def shared_data(*parts):
    """A path in the shared data folder: $LMSCRATCH_DATA, else ../shared/data beside the repo."""
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'data')
    return os.path.abspath(os.path.join(os.environ.get('LMSCRATCH_DATA', default), *parts))

def gunzip(path, out_dir=''):
    """path.gz -> out_dir/name (default: beside it), through a temporary name; other paths are returned as they are."""
    out = os.path.join(out_dir or os.path.dirname(path), os.path.basename(path)[:-3]) if path.endswith('.gz') else path
    if out != path and (not os.path.exists(out) or os.stat(out).st_mtime_ns != os.stat(path).st_mtime_ns):
        with gzip.open(path, 'rb') as src:
            _write_atomic(out, iter(lambda: src.read(1 << 24), b''))  # 16 MB at a time
        os.utime(out, ns=(time.time_ns(), os.stat(path).st_mtime_ns))  # the .gz's: another mtime = a new .gz
    return out

def download(url, path, timeout=30):
    """Stream url to path (then gunzip it) with a progress bar. A partial file (path + '.part') is resumed with an
    HTTP Range request; the final name appears only when the download is complete."""
    import requests  # only the scripts that download need it
    part = path + '.part'
    if not os.path.exists(path):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        with requests.get(url, stream=True, timeout=timeout, headers={'Range': f'bytes={have}-'}) as r:
            r.raise_for_status()
            have = have if r.status_code == 206 else 0  # a server that ignores Range sends everything again
            total_mb = (int(r.headers.get('content-length', 0)) + have) >> 20
            with open(part, 'ab' if have else 'wb') as f:
                for chunk in tqdm(r.iter_content(1 << 20), total=total_mb, initial=have >> 20, unit='MB', desc=url):
                    f.write(chunk)
        os.replace(part, path)
    return gunzip(path)

def text_splits(src_train, src_val, urls, raw_dir, name, fallback, offline=False):
    """({'train': x, 'val': x}, source) for build_token_folder: the local files given (.txt or .txt.gz), else urls
    downloaded into raw_dir, else (offline, or the download failed: said loudly) the stand-in fallback() returns."""
    if src_train or src_val:
        if not all(p and os.path.isfile(p) and os.path.getsize(p) for p in (src_train, src_val)):
            raise DataError(f"--src_train={src_train!r} --src_val={src_val!r}: give both, as non-empty text files")
        return {s: gunzip(p, os.path.join(raw_dir, s)) for s, p in (('train', src_train), ('val', src_val))}, \
            f"local files {src_train}, {src_val}"  # a .gz is decompressed into raw_dir/<split>/, never beside it
    if not offline:
        try:
            os.makedirs(raw_dir, exist_ok=True)
            return {s: download(u, os.path.join(raw_dir, os.path.basename(u))) for s, u in urls.items()}, name
        except OSError as e:  # requests' errors are OSErrors: no network, an HTTP error, a timeout
            print('!' * 80 + f"\ncould not download {name} ({type(e).__name__}: {str(e)[:120]}).\nFalling back to "
                  f"the OFFLINE STAND-IN, NOT {name}: its losses do not compare with published ones.\n" + '!' * 80)
    return fallback()

def fingerprint(*parts):
    """A short hash of a step's inputs: file contents (not names or dates), lists of documents, settings."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, str) and os.path.isfile(p):
            with open(p, 'rb') as f:
                while block := f.read(1 << 24):
                    h.update(block)
        else:
            h.update(json.dumps(p).encode())  # JSON keeps the boundaries: ['ab', 'c'] and ['a', 'bc'] differ
    return h.hexdigest()[:16]

def build_token_folder(splits, out_dir, vocab_size, source, tokenizer_dir='', bpe_text=None, num_workers=None,
                       progress=True, **meta_extra):
    """The end of every data/*/prepare.py: splits {'train': x, 'val': x} -> out_dir/train.bin, val.bin, meta.json.
    x is a text file (documents separated by '<|endoftext|>'; encode_file) or a list of documents (encode_documents:
    the '<|endoftext|>' id after each). The tokenizer is tokenizer_dir if given, else a BPE trained into
    out_dir/tokenizer on bpe_text (default: the train split; never val, which stays unseen).
    meta.json: vocab_size, dtype, eot_id, tokenizer_dir, source, meta_extra, splits {docs, bytes, tokens}, val_bytes
    (bits/byte = loss / ln 2 * val_tokens / val_bytes), each step's input fingerprint: a re-run skips what is done."""
    meta_path = os.path.join(out_dir, 'meta.json')
    try:
        old = json.load(open(meta_path))  # what an earlier run did
    except (OSError, ValueError):  # none, or a broken meta.json: nothing counts as done
        old = {}
    done, steps = old.get('steps', {}), {}
    # 1) the tokenizer, trained on train text only
    tok_dir = os.path.abspath(tokenizer_dir) if tokenizer_dir else os.path.join(out_dir, 'tokenizer')
    if not tokenizer_dir:
        text = splits['train'] if bpe_text is None else bpe_text
        steps['tokenizer'] = fingerprint(text, vocab_size)
        if done.get('tokenizer') == steps['tokenizer'] and os.path.isfile(os.path.join(tok_dir, 'merges.txt')):
            print(f"tokenizer: already trained on these inputs ({tok_dir})")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                if isinstance(text, list):  # documents -> one text file, '<|endoftext|>' between them
                    _write_atomic(os.path.join(tmp, 'bpe.txt'), [EOT.join(text).encode('utf-8')])
                    text = os.path.join(tmp, 'bpe.txt')
                vocab, merges = train_bpe(text, vocab_size, [EOT], num_workers, progress)
            save_tokenizer(vocab, merges, [EOT], tok_dir)
    tokenizer = Tokenizer.from_dir(tok_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    meta = {'vocab_size': tokenizer.vocab_size, 'dtype': dtype, 'eot_id': tokenizer.eot_id, 'source': source,
            'tokenizer_dir': tok_dir if tokenizer_dir else 'tokenizer', **meta_extra, 'splits': {}, 'steps': steps,
            'complete': False}
    if dtype == 'uint32':  # said in meta.json, where train.py's reader looks
        meta['dtype_note'] = f"vocab_size {tokenizer.vocab_size} > 65,536: ids are stored as uint32 (4 bytes a token)"
    write_meta = lambda: _write_atomic(meta_path, [json.dumps(meta, indent=1).encode()])  # noqa: E731
    write_meta()
    # 2) the token files, each skipped when its inputs (text and tokenizer) and its length are as recorded
    fp_tok = fingerprint(*[os.path.join(tok_dir, name) for name in TOKENIZER_FILES])
    for split, x in splits.items():
        path, was = os.path.join(out_dir, f'{split}.bin'), old.get('splits', {}).get(split)
        steps[split] = fingerprint(x, fp_tok)
        if done.get(split) == steps[split] and was and os.path.isfile(path) and \
                os.path.getsize(path) == was['tokens'] * np.dtype(dtype).itemsize:
            print(f"{split}.bin: already built from these inputs, skipped")
            meta['splits'][split] = was
        elif isinstance(x, list):
            n = encode_documents(tokenizer, x, path, num_workers, progress, f'encode {split}')['n_tokens']
            meta['splits'][split] = {'docs': len(x), 'bytes': sum(len(d.encode('utf-8')) for d in x), 'tokens': n}
        else:
            n = encode_file(tokenizer, x, path, num_workers, progress)['n_tokens']
            meta['splits'][split] = {'bytes': os.path.getsize(x), 'tokens': n}
        write_meta()  # a killed run resumes after the last finished split
    # 3) the summary
    meta.update(val_bytes=meta['splits']['val']['bytes'], complete=True,
                bytes_per_token=round(meta['splits']['train']['bytes'] / max(1, meta['splits']['train']['tokens']), 4))
    write_meta()
    print(', '.join(f"{k}.bin: {s['tokens']:,} tokens ({s['bytes']:,} bytes)" for k, s in meta['splits'].items())
          + f"; {meta['bytes_per_token']:.2f} bytes per token, vocab {meta['vocab_size']}, {dtype}, in {out_dir}")
    return meta

# -----------------------------------------------------------------------------
# The command
def die(msg):
    """A user error (here or in a data/*/prepare.py): one line on stderr naming the command, exit code 2."""
    print(f"{sys.argv[0] if sys.argv[0].endswith('.py') else 'bpe.py'}: error: {msg}", file=sys.stderr)
    sys.exit(2)

def main():
    """The command: train a tokenizer on --input into --out_dir, or encode --input into --output. Every setting is
    checked first: a mistake is one line on stderr (exit code 2) and nothing is written."""
    if mode not in ('train', 'encode'):
        die(f"--mode={mode!r}: use 'train' or 'encode'")
    written = [os.path.join(out_dir, name) for name in TOKENIZER_FILES] if mode == 'train' else [output]
    inputs = [input] + ([os.path.join(tokenizer_dir, name) for name in TOKENIZER_FILES] if mode == 'encode' else [])
    checks = [(num_workers >= 0, f"--num_workers={num_workers}: give 0 (every core) or a number of processes"),
              (os.path.isfile(input) and os.path.getsize(input), f"--input={input!r}: no such file, or empty"),
              (not {os.path.realpath(p) for p in written} & {os.path.realpath(p) for p in inputs},
               f"the output would overwrite an input ({input}): write elsewhere"),
              (overwrite or not any(map(os.path.isfile, written)), (f"--output={output!r} exists" if mode == 'encode'
               else f"--out_dir={out_dir!r} holds a tokenizer") + ": give --overwrite=True to replace it")]
    if mode == 'train':
        checks += [(not os.path.isfile(out_dir), f"--out_dir={out_dir!r} is a file: give a folder for the tokenizer")]
    else:
        checks += [(all(map(os.path.isfile, inputs[1:3])), f"--tokenizer_dir={tokenizer_dir!r} holds no vocab.json "
                    f"and merges.txt: train one first with python bpe.py --input=<text> --out_dir=<folder>"),
                   (output and not os.path.isdir(output), f"--output={output!r}: give the token file to write")]
    for ok, msg in checks:
        if not ok:
            die(msg)
    t0 = time.time()
    if mode == 'train':
        try:  # train_bpe checks vocab_size and special_tokens before any work, and refuses a text without words
            vocab, merges = train_bpe(input, vocab_size, special_tokens, num_workers)
        except ValueError as e:
            die(e)
        save_tokenizer(vocab, merges, special_tokens, out_dir)
        longest = max(list(vocab.values())[len(special_tokens):], key=len)  # special tokens excluded
        print(f"wrote {out_dir}/vocab.json, merges.txt, special_tokens.json: vocab {len(vocab)}, {len(merges)} merges")
        print(f"summary: {time.time() - t0:.2f}s, longest token {len(longest)} bytes: {longest!r}")
    else:
        try:  # a corrupt vocab.json or merges.txt: one line, before any work
            tokenizer = Tokenizer.from_dir(tokenizer_dir)
        except ValueError as e:
            die(e)
        s = encode_file(tokenizer, input, output, num_workers)
        print(f"wrote {output}: {s['n_tokens']:,} {s['dtype']} tokens of {s['n_bytes']:,} bytes in {s['time_s']:.1f}s")

if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()

"""
cc_filter.py: from raw Common Crawl (WARC/WET files) to clean, tokenized pre-training text.

The data half of CS336 (assignment 4), as one readable script. Every stage is an importable function,
and the pipeline chains them, one task per input file:

    read (FastWARC) -> HTML to text (Resiliparse) -> language ID (fastText lid.176) -> Gopher rules
    -> NSFW / toxic classifiers (Dolma's fastText models) -> quality classifier (fastText, wiki vs cc)
    -> PII masking (regexes) -> GPT-2 tokens (tiktoken, EOS 50256 after each document)

Run it (the shared sample is a WET file of 1,483 pages; any glob of .warc(.gz) / .warc.wet(.gz) works):

    python cc_filter.py --input='../shared/data/a4/*.warc.wet.gz' --out_dir=out/cc
    python cc_filter.py --input='crawl/*.wet.gz' --out_dir=/shared/cc --engine=ray --ray_address=auto
    python cc_filter.py --mode=train_quality --quality_out=out/quality.bin   # the quality classifier
    python cc_filter.py --mode=bench          # documents/s per core for each stage, and the cost projection
    python cc_filter.py --mode=scale --input=... --bench_copies=32 --bench_workers=1,2,4,8,16

What you get in out_dir (<file> = the input's name without .gz):
    docs/<file>.jsonl        kept documents {"url", "lang", "lang_score", "text"} (PII masked), one per line
    tokens/<file>.{train,val}.bin   their GPT-2 tokens (uint16), split by a hash of the URL
    stats/<file>.json        per-file counts and stage timings; written LAST, it marks the file as done
    train.bin, val.bin, meta.json   the token folder train.py reads (all files concatenated in name order)
    report.json              every count summed over the files, throughput, and the cost projection

Why this shape:
- One task per input file: Common Crawl ships ~100k WET files of similar size, so files are the natural,
  embarrassingly parallel unit (no shared state between tasks, nothing to merge but counts and token files).
- Resumable: a file whose stats/<file>.json exists is skipped. Every output is written to a temporary name
  and renamed into place (os.replace is atomic on POSIX), so a killed job never leaves half a file behind
  that a rerun would trust. The stats file is renamed last, after the docs and tokens it describes.
- Bad input never kills the job: a truncated gzip, a file that is not a WARC, a record whose bytes do not
  decode are counted (bad_files, truncated_records, undecodable), warned about, and skipped; the other
  records of the same file are kept.
- Engines: --engine=local runs a process pool on this machine; --engine=ray runs the SAME per-file
  function (process_file) as Ray tasks on a cluster, with Ray's retries (Ray is imported only then).
  The output directory must be on storage every worker sees (NFS, Lustre, a mounted bucket).

Scaling out with Ray (pip install ray): `ray start --head` on one node, `ray start --address=<head>:6379` on
the others; put the inputs, this script (workers import it by its path) and out_dir on shared storage; then
    python cc_filter.py --input='/shared/crawl/*.wet.gz' --out_dir=/shared/cc --engine=ray --ray_address=auto
Rerunning the same command after a crash or a lost node redoes only the unfinished files.
"""
import glob
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter, defaultdict, deque

import numpy as np
from tqdm import tqdm
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding
import fasttext
import tiktoken

# The shared data folder (../shared/data beside the checkout; LMSCRATCH_DATA moves it)
_DATA = os.environ.get('LMSCRATCH_DATA',
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'data'))
_DATA = os.path.abspath(_DATA)
_A4 = os.path.join(_DATA, 'a4')  # the course's assignment-4 files
# tiktoken downloads its BPE files unless they are cached; these machines are offline, so point it at the
# shared copy when the user has not chosen a cache of their own (must happen before get_encoding)
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(os.path.join(_DATA, 'tiktoken_cache')):
    os.environ['TIKTOKEN_CACHE_DIR'] = os.path.join(_DATA, 'tiktoken_cache')

# -----------------------------------------------------------------------------
# what to do
mode = 'filter' # 'filter' (the pipeline) | 'train_quality' | 'bench' (per-stage throughput) | 'scale'
input = '' # glob of WARC/WET files (quote it), or several globs separated by commas
out_dir = 'out/cc_filter' # outputs; with --engine=ray it must be a path every Ray worker sees
# engine
engine = 'local' # 'local' (process pool on this machine) | 'ray' (Ray tasks; pip install ray)
num_workers = 0 # processes (local) or CPUs of a Ray instance we start; 0 = all cores; 1 = run in this process
ray_address = '' # '' = start a local Ray instance; 'auto' = the cluster `ray start` made here; 'ray://host:10001'
ray_max_retries = 2 # Ray retries a failed file this many times before reporting it as failed
# filters (a '' model path switches that filter off)
languages = 'en' # keep these fastText language codes (comma separated); '' = keep every language
min_lang_score = 0.5 # ... when fastText's probability for the top language is at least this
lid_model = os.path.join(_A4, 'lid.176.ftz') # fastText language ID (lid.176.bin or the .ftz)
gopher = True # apply the Gopher quality rules (Rae et al. 2021, appendix A)
nsfw_model = '' # Dolma jigsaw_fasttext_bigrams_nsfw_final.bin; '' = off
toxic_model = '' # Dolma jigsaw_fasttext_bigrams_hatespeech_final.bin; '' = off
harm_threshold = 0.5 # drop a document labelled nsfw / toxic with at least this probability
quality_model = '' # the wiki-vs-cc fastText model written by --mode=train_quality; '' = off
quality_threshold = 0.5 # drop a document labelled 'cc' with at least this probability
pii_masking = True # replace emails, US phone numbers and IPv4 addresses with |||EMAIL_ADDRESS||| etc.
# tokens
tokenize = True # write GPT-2 tokens (uint16) and the train.bin/val.bin/meta.json token folder
val_fraction = 0.05 # documents whose URL hash falls in this fraction go to val.bin (stable across runs)
# quality classifier training (--mode=train_quality): comma-separated sources, see load_quality_texts
quality_positives = f'{_A4}/high_quality_wiki_reference.txt,main:{_A4}/docs_crawl.warc.gz' # 'wiki' examples
quality_negatives = f'{_A4}/low_quality_cc.txt,boilerplate:{_A4}/docs_crawl.warc.gz' # 'cc' examples
quality_out = 'out/quality/quality.bin' # where train_quality writes the model
quality_epochs = 20 # fastText epochs
quality_holdout = 0.2 # fraction of source documents (by hash) held out for precision/recall
# benchmarks (--mode=bench / --mode=scale)
bench_warc = os.path.join(_A4, 'docs_crawl.warc.gz') # a WARC for the HTML-extraction stage
bench_wet = os.path.join(_A4, 'docs_crawl.warc.wet.gz') # a WET for everything else
bench_copies = 32 # --mode=scale: replicate --input (default: bench_wet) into this many files
bench_workers = '1,2' # --mode=scale: worker counts to time, e.g. '1,2,4,8,16'
bench_engines = 'local' # --mode=scale: 'local', 'ray' or 'local,ray'
# testing
fail_once = '' # fault injection for tests: path of a marker file; the first task to see it missing creates it
               # and raises, so Ray's retry (or the local failure report) can be exercised
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in _config_keys}  # noqa: F821 (defined by configurator.py)
# -----------------------------------------------------------------------------

# =============================================================================
# 1) Read WARC and WET files
# =============================================================================
# A WARC file is a sequence of records (request, response, metadata, ...); Common Crawl's WET files hold one
# 'conversion' record (the page's plain text) per 'response' record of the WARC. Gzipped files are one gzip
# member per record, which is why a truncated file still yields every record before the cut.


def iter_records(path, counts=None, warns=None, quiet=False):
    """Yield (url, kind, body_bytes, content_type) for each response/conversion record of a WARC/WET file.

    Never raises on bad input: a file that is not a WARC (or is cut inside a record) stops the iteration
    with counts['bad_files'] += 1 or counts['truncated_records'] += 1 and a warning; records read so far
    were already yielded. kind is 'html' (a response record, body = HTTP payload) or 'text' (conversion).
    Warnings go to the list warns and, unless quiet, to warnings.warn."""
    counts = Counter() if counts is None else counts
    warns = [] if warns is None else warns
    n, last_pos, n_truncated = 0, 0, counts['truncated_records']
    try:
        with open(path, 'rb') as f:
            # parse_http=False: we check the block digest first (it covers the HTTP headers), then parse them
            records = ArchiveIterator(f, record_types=WarcRecordType.response | WarcRecordType.conversion,
                                      parse_http=False)
            for record in records:
                n += 1
                last_pos = record.stream_pos  # byte offset of the record (of its gzip member in a .gz)
                url = record.headers.get('WARC-Target-URI', '')
                # the block digest (SHA-1 of the record body) catches truncated and corrupted records;
                # consume=False buffers the body so that we can still read it afterwards
                if record.headers.get('WARC-Block-Digest') and not record.verify_block_digest(consume=False):
                    counts['truncated_records'] += 1
                    _warn(warns, quiet, f"{path}: record {n} ({url}) is truncated or corrupt "
                                        f"(block digest mismatch); skipped")
                    continue
                if record.record_type == WarcRecordType.response:
                    record.parse_http()
                    body = record.reader.read()
                    ctype = (record.http_content_type or '').lower()
                    yield url, 'html', body, ctype
                else:
                    yield url, 'text', record.reader.read(), 'text/plain'
    except Exception as e:  # FastWARC raises OSError("Invalid WARC header") on bytes that are not a WARC;
        # anything else a broken file throws at us is bad input too: count it, warn, keep what we have
        key = 'bad_files' if n == 0 else 'truncated_records'
        counts[key] += 1
        why = 'not a WARC/WET file?' if n == 0 else 'file cut short?'
        _warn(warns, quiet, f"{path}: {e} after {n} records ({why});"
              f" skipped the rest of the file")
        return
    if n == 0:
        counts['bad_files'] += 1
        _warn(warns, quiet, f"{path}: no WARC response/conversion records found (empty, or not a WARC/WET file?)")
    elif counts['truncated_records'] == n_truncated and not _gzip_tail_complete(path, last_pos):
        # FastWARC stops quietly at a gzip member cut short, so we look at the file's tail ourselves
        counts['truncated_records'] += 1
        _warn(warns, quiet, f"{path}: gzip stream cut short after {n} records (truncated download?); "
                            f"kept the records before")


def _gzip_tail_complete(path, offset):
    """True unless path is gzip and the members from offset (the last record we read) to the end of the file do
    not all decompress to their end. Costs one record's decompression, not the file's."""
    with open(path, 'rb') as f:
        if f.read(2) != b'\x1f\x8b':
            return True  # not gzip: a plain WARC cut inside a record fails its block digest instead
        f.seek(offset)
        data = f.read()
        if data and data[:2] != b'\x1f\x8b':
            # one gzip stream for the whole file (gzip file.warc), not one member per record: offsets are not
            # member starts, so check the whole stream (rare; costs one more decompression of the file)
            f.seek(0)
            data = f.read()
    while data:
        d = zlib.decompressobj(wbits=31)  # 31 = gzip header and trailer
        try:
            d.decompress(data)
        except zlib.error:
            return False
        if not d.eof:
            return False
        data = d.unused_data  # the next member, if any
    return True


def _warn(warns, quiet, msg):
    """Collect a warning for the driver to print (a worker's stderr is easy to lose), and warn here unless quiet."""
    if len(warns) < 100:  # a badly broken file must not flood the stats file
        warns.append(msg)
    if not quiet:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# =============================================================================
# 2) Bytes and HTML to text
# =============================================================================

def decode_bytes(data):
    """UTF-8 first (most of the web), else Resiliparse's detected encoding; None if neither decodes."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        pass
    encoding = detect_encoding(data)
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    # single-byte encodings decode anything: a NUL byte says the body was binary, not text
    return None if '\x00' in text else text


def extract_text_from_html_bytes(html_bytes):
    """HTML bytes -> plain text with Resiliparse's extract_plain_text at its default arguments
    (the whole page, boilerplate included, like Common Crawl's WET). None if the bytes do not decode."""
    html = decode_bytes(html_bytes)
    return None if html is None else extract_plain_text(html)


# =============================================================================
# 3) fastText classifiers: language ID, NSFW, toxic, quality
# =============================================================================
_FASTTEXT = {}  # path -> loaded model; one copy per process, loaded on first use


def load_fasttext(path, what='fastText model', download=None):
    """Load (once per process) a fastText model, or fail saying where to get it."""
    if path not in _FASTTEXT:
        if not path or not os.path.exists(path):
            hint = f" Download it from {download} and pass its path." if download else ""
            raise FileNotFoundError(f"{what} not found at {path!r}.{hint}")
        _FASTTEXT[path] = fasttext.load_model(path)
    return _FASTTEXT[path]


def fasttext_predict(model, text, k=1):
    """[(label without '__label__', probability)] for the top k labels of one text.

    NOTE: we call the C++ binding model.f.predict directly: the Python wrapper's predict() of the fasttext
    0.9.x wheels breaks under NumPy 2 (np.array(..., copy=False)); the binding returns [(prob, label)].
    fastText reads one line per example, so newlines must go before predicting."""
    text = text.replace('\n', ' ').replace('\r', ' ')
    preds = model.f.predict(text + '\n', k, 0.0, 'strict')
    # softmax probabilities can come back as 1.00001: clamp into [0, 1]
    return [(label.replace('__label__', ''), min(max(float(p), 0.0), 1.0)) for p, label in preds]


def identify_language(text, model_path=None):
    """(language code, probability): bare fastText codes such as 'en', 'zh', 'de'."""
    model = load_fasttext(model_path or lid_model, 'language ID model',
                          'https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin')
    preds = fasttext_predict(model, text)
    return preds[0] if preds else ('unknown', 0.0)


# Dolma's Jigsaw classifiers (fastText, word bigrams), labels __label__nsfw / __label__non-nsfw and
# __label__toxic / __label__non-toxic. They are public but cannot be downloaded on these offline machines.
NSFW_URL = ('https://dolma-artifacts.org/fasttext_models/jigsaw_fasttext_bigrams_20230515/'
            'jigsaw_fasttext_bigrams_nsfw_final.bin')
TOXIC_URL = ('https://dolma-artifacts.org/fasttext_models/jigsaw_fasttext_bigrams_20230515/'
             'jigsaw_fasttext_bigrams_hatespeech_final.bin')


def classify_nsfw(text, model_path=None):
    """('nsfw' | 'non-nsfw', probability) from Dolma's Jigsaw NSFW fastText model."""
    model = load_fasttext(model_path or nsfw_model, 'NSFW classifier (Dolma jigsaw nsfw)', NSFW_URL)
    return fasttext_predict(model, text)[0]


def classify_toxic_speech(text, model_path=None):
    """('toxic' | 'non-toxic', probability) from Dolma's Jigsaw hate-speech fastText model."""
    model = load_fasttext(model_path or toxic_model, 'toxic-speech classifier (Dolma jigsaw hatespeech)', TOXIC_URL)
    return fasttext_predict(model, text)[0]


def classify_quality(text, model_path=None):
    """('wiki' | 'cc', probability) from the model trained by train_quality_classifier."""
    model = load_fasttext(model_path or quality_model, 'quality classifier',
                          'nowhere: train it with `python cc_filter.py --mode=train_quality`')
    return fasttext_predict(model, text)[0]


# =============================================================================
# 4) PII masking
# =============================================================================
# Each function returns (new_text, number of replacements). The mask strings contain no '@', no digit and no
# dot, so a mask already in the text can never match again: it is neither altered nor counted.
EMAIL_MASK, PHONE_MASK, IP_MASK = '|||EMAIL_ADDRESS|||', '|||PHONE_NUMBER|||', '|||IP_ADDRESS|||'
# local@domain.tld; the TLD must end in letters, so a sentence's final period stays outside the match
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# US numbers, 10 digits with an optional +1: 2831823829, (283)-182-3829, (283) 182 3829, 283-182-3829,
# 283.182.3829, +1 283 182 3829. No digit may touch either end (so longer digit runs are left alone).
# NOTE speed: the leading lookahead (?=...) names the possible first characters; without it Python's regex
# engine tries the lookbehind at every position of the text (3x slower on the docs crawl, same matches).
PHONE_RE = re.compile(r"(?=[+(\d])(?<![\d+])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)|\d{3})[\s.\-]?\d{3}[\s.\-]?\d{4}(?!\d)")
# IPv4: four numbers 0-255; not part of a longer dotted run (1.2.3.4.5) or number, a final '.' may follow
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IP_RE = re.compile(rf"(?=\d)(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)")


def mask_emails(text):
    if '@' not in text:  # a C-speed scan; most pages have no '@' and the regex is the slow part
        return text, 0
    return EMAIL_RE.subn(EMAIL_MASK, text)


def mask_phone_numbers(text):
    return PHONE_RE.subn(PHONE_MASK, text)


def mask_ips(text):
    return IP_RE.subn(IP_MASK, text)


def mask_pii(text):
    """All three masks; emails first (an address may hold digits), IPs before phones (283.182.38.29 is an
    IP, not a phone number). Returns (new_text, {'emails': n, 'ips': n, 'phones': n})."""
    text, n_email = mask_emails(text)
    text, n_ip = mask_ips(text)
    text, n_phone = mask_phone_numbers(text)
    return text, {'emails': n_email, 'ips': n_ip, 'phones': n_phone}


# =============================================================================
# 5) Gopher quality rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
#    Training Gopher", appendix A.1.1), the subset the course asks for
# =============================================================================
_ALPHA_RE = re.compile(r"[^\W\d_]")  # a letter in any script


def gopher_reason(text):
    """None if the document passes the rules, else the name of the first rule it breaks:
    'words' (fewer than 50 or more than 100,000 words), 'word_length' (mean word length outside [3, 10]
    characters), 'ellipsis' (more than 30% of lines end with '...' or '…'), 'alpha' (fewer than 80% of
    words contain a letter). Words are whitespace-separated tokens (Gopher used a tokenizer; close enough)."""
    words = text.split()
    n = len(words)
    if n < 50 or n > 100_000:
        return 'words'
    mean_len = sum(len(w) for w in words) / n
    if mean_len < 3 or mean_len > 10:
        return 'word_length'
    lines = text.splitlines()
    if lines:
        n_ellipsis = sum(1 for line in lines if line.rstrip().endswith(('...', '\u2026')))
        if n_ellipsis > 0.3 * len(lines):
            return 'ellipsis'
    n_alpha = sum(1 for w in words if _ALPHA_RE.search(w))
    if n_alpha < 0.8 * n:
        return 'alpha'
    return None


def gopher_quality_filter(text):
    """True = keep (the document passes every rule of gopher_reason)."""
    return gopher_reason(text) is None


# =============================================================================
# 6) The quality classifier: high-quality text ('wiki') vs random crawl ('cc')
# =============================================================================
# The course trains on pages linked from Wikipedia (positives) vs random Common Crawl (negatives). Offline we
# have neither, so the default sources are what the shared data holds (see results/cc_filter.md):
#   positives: paragraphs of the one Wikipedia-quality reference page + the main content of every English page
#              of the docs crawl (Resiliparse main_content=True: the article body of a documentation page)
#   negatives: the one low-quality crawl page + each page's boilerplate: the short lines (navigation, link
#              lists, 'Download the ebook', footers) that the full extraction has and the main content has not
# So the model learns "edited prose vs navigation/boilerplate", a proxy for wiki-vs-cc. Give it real
# positives/negatives (any mix of .txt files and WARCs) to train the course's classifier.


def _chunks(paragraphs, min_words=30, max_words=200):
    """Group consecutive paragraphs into examples of roughly min_words..max_words words."""
    out, cur, n = [], [], 0
    for p in paragraphs:
        cur.append(p)
        n += len(p.split())
        if n >= min_words:
            out.append(' '.join(cur)[:20 * max_words])
            cur, n = [], 0
    if cur and (n >= min_words // 3 or not out):
        out.append(' '.join(cur))
    return out


def load_quality_texts(spec, english_only=True):
    """Examples from comma-separated sources, as a list of (group_key, text); group_key keeps all examples
    of one page on the same side of the train/held-out split. A source is:
      path.txt               paragraphs (split on blank lines), grouped into ~30-200 word examples
      path.warc[.gz]/.wet    each record's full text, one example per page
      main:path.warc[.gz]    each HTML page's main content (Resiliparse main_content=True), chunked
      boilerplate:path.warc  each HTML page's short non-main lines (navigation, footers), one example per page
    english_only keeps WARC pages that fastText calls English (the pipeline filters on language first)."""
    examples = []
    for source in [s.strip() for s in spec.split(',') if s.strip()]:
        kind, _, path = source.rpartition(':') if source.split(':', 1)[0] in ('main', 'boilerplate') \
            else ('', '', source)
        if path.endswith('.txt'):
            paragraphs = [p.strip() for p in re.split(r'\n\s*\n', open(path, encoding='utf-8').read()) if p.strip()]
            examples += [(f'{path}:{i}', c) for i, c in enumerate(_chunks(paragraphs))]
            continue
        for i, (url, rtype, body, ctype) in enumerate(iter_records(path)):
            text = decode_bytes(body)
            if text is None or (rtype == 'html' and 'html' not in ctype):
                continue
            full = extract_plain_text(text) if rtype == 'html' else text
            if english_only and identify_language(full)[0] != 'en':
                continue
            key = url or f'{path}:{i}'
            if kind == 'main':
                main = extract_plain_text(text, main_content=True)
                examples += [(key, c) for c in _chunks([p for p in main.splitlines() if p.strip()])]
            elif kind == 'boilerplate':
                main_lines = set(extract_plain_text(text, main_content=True).splitlines())
                boiler = [ln.strip() for ln in full.splitlines()
                          if ln.strip() and ln not in main_lines and len(ln.split()) < 15]
                if boiler:
                    examples.append((key, ' '.join(boiler)))
            else:
                examples.append((key, full))
    return examples


def _is_holdout(key, fraction):
    """Stable split: the first 4 bytes of SHA-1(key) as a number in [0, 1)."""
    return int(hashlib.sha1(key.encode('utf-8')).hexdigest()[:8], 16) / 2**32 < fraction


def train_fasttext(examples, out_path, epochs=20, lr=0.5, word_ngrams=2, dim=50, bucket=100_000, seed=0):
    """Train a fastText classifier on (label, text) examples and save it to out_path atomically.
    fastText: Joulin et al. 2016, "Bag of Tricks for Efficient Text Classification" (a linear model over word
    n-gram embeddings; trains in seconds on one core).
    NOTE bucket: fastText hashes word bigrams into `bucket` rows of the embedding table; its default of 2M rows
    x dim floats is a 0.5-0.8 GB model. 100k rows is plenty for tens of thousands of examples.
    NOTE 'Encountered NaN': on tiny or repetitive data fastText's SGD sometimes diverges (we saw it on a dozen
    snippets); we retry with half the learning rate and another seed, and give up after 4 tries."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False, encoding='utf-8') as f:
        for label, text in examples:  # fastText's format: one example per line, '__label__X' then the text
            f.write(f"__label__{label} {text.replace(chr(10), ' ').replace(chr(13), ' ')}\n")
        train_file = f.name
    try:
        for attempt in range(4):
            try:  # thread=1 with a fixed seed makes training deterministic
                model = fasttext.train_supervised(input=train_file, epoch=epochs, lr=lr / 2**attempt,
                                                  wordNgrams=word_ngrams, dim=dim, bucket=bucket, minCount=1,
                                                  loss='softmax', thread=1, seed=seed + attempt, verbose=0)
                break
            except RuntimeError as e:
                if 'NaN' not in str(e) or attempt == 3:
                    raise
    finally:
        os.remove(train_file)
    tmp = f"{out_path}.tmp.{os.getpid()}"
    model.save_model(tmp)
    os.replace(tmp, out_path)
    _FASTTEXT.pop(out_path, None)  # a cached older model of the same path is stale now
    return model


def train_quality_classifier(positives, negatives, out_path, **kwargs):
    """The quality classifier: positives (texts) get the label 'wiki', negatives 'cc'."""
    return train_fasttext([('wiki', t) for t in positives] + [('cc', t) for t in negatives], out_path, **kwargs)


def evaluate_quality(model_path, positives, negatives):
    """Precision, recall and F1 of the 'wiki' label (and accuracy) on held-out texts."""
    tp = fp = fn = tn = 0
    for label, texts in (('wiki', positives), ('cc', negatives)):
        for t in texts:
            pred = classify_quality(t, model_path)[0]
            tp += pred == 'wiki' and label == 'wiki'
            fp += pred == 'wiki' and label == 'cc'
            fn += pred == 'cc' and label == 'wiki'
            tn += pred == 'cc' and label == 'cc'
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {'precision': precision, 'recall': recall, 'f1': 2 * precision * recall / max(precision + recall, 1e-9),
            'accuracy': (tp + tn) / max(tp + fp + fn + tn, 1), 'n_pos': tp + fn, 'n_neg': fp + tn}


def train_quality(positives_spec, negatives_spec, out_path, holdout=0.2, epochs=20, max_ratio=4):
    """The train_quality command: load the sources, split by page hash, train, evaluate on the held-out part."""
    pos = load_quality_texts(positives_spec)
    neg = load_quality_texts(negatives_spec)
    assert pos and neg, f"need both positives ({len(pos)}) and negatives ({len(neg)}): check the source paths"
    split = lambda ex, held: [t for k, t in ex if _is_holdout(k, holdout) == held]
    train_pos, train_neg = split(pos, False), split(neg, False)
    test_pos, test_neg = split(pos, True), split(neg, True)
    # balance: fastText's softmax learns the class prior, and our default sources are ~40:1 positive; keep at
    # most max_ratio x the smaller class on the training side (a seeded sample)
    rng = random.Random(0)
    n_max = max_ratio * min(len(train_pos), len(train_neg))
    train_pos = rng.sample(train_pos, n_max) if len(train_pos) > n_max else train_pos
    train_neg = rng.sample(train_neg, n_max) if len(train_neg) > n_max else train_neg
    t0 = time.time()
    train_quality_classifier(train_pos, train_neg, out_path, epochs=epochs)
    result = {'train_pos': len(train_pos), 'train_neg': len(train_neg), 'train_s': time.time() - t0}
    result.update(evaluate_quality(out_path, test_pos, test_neg))
    result['train_accuracy'] = evaluate_quality(out_path, train_pos, train_neg)['accuracy']
    return result


# =============================================================================
# 7) Tokenize: GPT-2 tokens, EOS after each document
# =============================================================================
EOT_ID = 50256  # GPT-2's <|endoftext|>


def get_gpt2():
    return tiktoken.get_encoding('gpt2')


def tokenize_documents(texts, enc=None):
    """Documents -> one flat uint16 array: tokens of doc 1, 50256, tokens of doc 2, 50256, ...
    encode_ordinary: a '<|endoftext|>' written inside a web page is text, not our separator."""
    enc = enc or get_gpt2()
    ids = []
    for t in texts:
        ids.extend(enc.encode_ordinary(t))
        ids.append(EOT_ID)
    return np.array(ids, dtype=np.uint16)  # GPT-2's 50,257 ids fit in 16 bits


# =============================================================================
# 8) One input file, start to finish: the unit of work of both engines
# =============================================================================
STAGES = ['read', 'extract', 'langid', 'gopher', 'nsfw', 'toxic', 'quality', 'pii', 'tokenize']


def output_stem(path):
    """Name of a file's outputs: its basename without .gz (CC-MAIN-...-00042.warc.wet.gz ->
    CC-MAIN-...-00042.warc.wet; a WARC and its WET keep different names)."""
    name = os.path.basename(path)
    return name[:-3] if name.endswith('.gz') else name


def _atomic_write_bytes(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"  # per process: a retried task never writes into a stale task's temp
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def filter_document(text, cfg, counts, times):
    """Run the filters on one document's text. Returns (masked_text, lang, score) or None if dropped.
    counts: Counter of per-filter drops ('drop_lang', 'drop_gopher_words', ...) and PII masks;
    times: CPU seconds per stage (time.process_time, so other processes on the machine do not inflate it)."""
    clock = time.process_time
    # language ID: the model scores the whole text (lid.176 is trained on sentences; long texts work fine)
    t = clock()
    lang, score = identify_language(text, cfg['lid_model'])
    times['langid'] += clock() - t
    counts['in_langid'] += 1
    wanted = [x.strip() for x in cfg['languages'].split(',') if x.strip()]
    if (wanted and lang not in wanted) or score < cfg['min_lang_score']:
        counts['drop_lang'] += 1
        return None
    if cfg['gopher']:
        t = clock()
        reason = gopher_reason(text)
        times['gopher'] += clock() - t
        counts['in_gopher'] += 1
        if reason:
            counts[f'drop_gopher_{reason}'] += 1
            return None
    # harmful content, then quality: each an optional fastText model
    for stage, path, fn, bad, threshold in (
            ('nsfw', cfg['nsfw_model'], classify_nsfw, 'nsfw', cfg['harm_threshold']),
            ('toxic', cfg['toxic_model'], classify_toxic_speech, 'toxic', cfg['harm_threshold']),
            ('quality', cfg['quality_model'], classify_quality, 'cc', cfg['quality_threshold'])):
        if not path:
            continue
        t = clock()
        label, p = fn(text, path)
        times[stage] += clock() - t
        counts[f'in_{stage}'] += 1
        if label == bad and p >= threshold:
            counts[f'drop_{stage}'] += 1
            return None
    if cfg['pii_masking']:
        t = clock()
        text, n = mask_pii(text)
        times['pii'] += clock() - t
        counts['in_pii'] += 1
        for k, v in n.items():
            counts[f'pii_{k}'] += v
        counts['docs_with_pii'] += any(n.values())
    return text, lang, score


def process_file(in_path, out_dir, cfg):
    """Filter (and tokenize) one WARC/WET file into out_dir; return its stats dict. The same function runs in
    the local process pool and as a Ray task. Skips the file if its stats file says it is done (resume)."""
    stem = output_stem(in_path)
    stats_path = os.path.join(out_dir, 'stats', stem + '.json')
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            return dict(json.load(f), skipped=True)
    if cfg.get('fail_once'):
        try:  # O_EXCL: exactly one task in the whole run creates the marker, and that task fails
            os.close(os.open(cfg['fail_once'], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            raise RuntimeError(f"fail_once: injected failure on {in_path} (marker {cfg['fail_once']})")
        except FileExistsError:
            pass
    for sub in ('docs', 'tokens', 'stats'):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    wall0, cpu0, clock = time.time(), time.process_time(), time.process_time
    counts, times, warns = Counter(), defaultdict(float), []
    enc = get_gpt2() if cfg['tokenize'] else None
    docs_path = os.path.join(out_dir, 'docs', stem + '.jsonl')
    docs_tmp = f"{docs_path}.tmp.{os.getpid()}"
    train_ids, val_ids = [], []
    with open(docs_tmp, 'w', encoding='utf-8') as out:
        records = iter_records(in_path, counts, warns, quiet=True)  # the driver prints warns
        while True:
            # 1) read: FastWARC parses the record and (de)compresses; timed around next()
            t = clock()
            rec = next(records, None)
            times['read'] += clock() - t
            if rec is None:
                break
            url, rtype, body, ctype = rec
            counts['records'] += 1
            try:
                # 2) extract: decode bytes, HTML -> text for WARC responses
                t = clock()
                if rtype == 'html' and 'html' not in ctype:
                    counts['drop_not_html'] += 1  # images, PDFs, ... in a WARC
                    times['extract'] += clock() - t
                    continue
                text = decode_bytes(body)
                if text is not None and rtype == 'html':
                    text = extract_plain_text(text)
                times['extract'] += clock() - t
                counts['in_extract'] += 1
                if text is None:
                    counts['drop_undecodable'] += 1
                    _warn(warns, True, f"{in_path}: record {url} does not decode as text; skipped")
                    continue
                if not text.strip():
                    counts['drop_empty'] += 1
                    continue
                # 3)-7) the filters and PII masks
                kept = filter_document(text, cfg, counts, times)
                if kept is None:
                    continue
                text, lang, score = kept
                counts['kept'] += 1
                out.write(json.dumps({'url': url, 'lang': lang, 'lang_score': round(score, 4), 'text': text},
                                     ensure_ascii=False) + '\n')
                # 8) tokens, split into train/val by a hash of the URL (stable however files are scheduled)
                if enc is not None:
                    t = clock()
                    ids = enc.encode_ordinary(text)
                    ids.append(EOT_ID)
                    (val_ids if _is_holdout(url or text, cfg['val_fraction']) else train_ids).extend(ids)
                    times['tokenize'] += clock() - t
                    counts['in_tokenize'] += 1
            except Exception as e:  # one odd record must not cost us the file: count it, say it, go on
                counts['record_errors'] += 1
                _warn(warns, True, f"{in_path}: record {url}: {type(e).__name__}: {e}; skipped")
    # outputs: docs, then tokens, then the stats file that marks the file as done (all atomic renames)
    os.replace(docs_tmp, docs_path)
    if enc is not None:
        _atomic_write_bytes(os.path.join(out_dir, 'tokens', stem + '.train.bin'),
                            np.array(train_ids, dtype=np.uint16).tobytes())
        _atomic_write_bytes(os.path.join(out_dir, 'tokens', stem + '.val.bin'),
                            np.array(val_ids, dtype=np.uint16).tobytes())
    counts['tokens_train'], counts['tokens_val'] = len(train_ids), len(val_ids)
    stats = {'input': os.path.abspath(in_path), 'stem': stem, 'input_bytes': os.path.getsize(in_path),
             'counts': dict(counts), 'stage_cpu_s': dict(times), 'cpu_s': time.process_time() - cpu0,
             'wall_s': time.time() - wall0, 'warnings': warns}
    _atomic_write_bytes(stats_path, json.dumps(stats, indent=1).encode('utf-8'))
    return dict(stats, skipped=False)


# =============================================================================
# 9) The pipeline: many files through an engine, then counts, token folder and cost projection
# =============================================================================

def expand_inputs(pattern):
    """Sorted input paths of comma-separated globs; two inputs with the same output name are an error."""
    paths = sorted({p for g in pattern.split(',') if g.strip() for p in glob.glob(os.path.expanduser(g.strip()))
                    if os.path.isfile(p)})
    stems = Counter(output_stem(p) for p in paths)
    dup = [s for s, c in stems.items() if c > 1]
    assert not dup, f"inputs share output names {dup[:3]}: rename them (outputs are named after the file)"
    return paths


def _run_local(todo, out_dir, cfg, num_workers, on_done):
    """Process pool, one task per file. num_workers=1 runs in this process (easy to debug and profile)."""
    failed = {}
    if num_workers == 1:
        for p in todo:
            try:
                on_done(process_file(p, out_dir, cfg))
            except Exception as e:
                failed[p] = f"{type(e).__name__}: {e}"
        return failed
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing
    # fork: workers start instantly and inherit the imported libraries (no threads run before this point)
    ctx = multiprocessing.get_context('fork' if sys.platform == 'linux' else 'spawn')
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        futures = {pool.submit(process_file, p, out_dir, cfg): p for p in todo}
        for fut in as_completed(futures):
            try:
                on_done(fut.result())
            except Exception as e:
                failed[futures[fut]] = f"{type(e).__name__}: {e}"
    return failed


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"--engine=ray needs Ray, which is not installed ({e}).\n"
                         f"Install it with `pip install 'ray[default]'` (a 70-80 MB wheel), or use --engine=local.")
    return ray


def _run_ray(todo, out_dir, cfg, num_workers, address, max_retries, on_done):
    """One Ray task per file, running the same process_file. Ray retries a failed task max_retries times
    (retry_exceptions=True: also on Python exceptions, not only on a dead worker), then we report the file."""
    ray = _import_ray()
    started, t0 = False, time.time()
    if not ray.is_initialized():
        if address:  # an existing cluster: `ray start --head` here, or ray://head:10001 from outside
            ray.init(address=address, log_to_driver=True)
        else:  # a local instance on this machine with num_workers CPUs
            ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=True)
        started = True
    script = os.path.abspath(__file__)

    def run_file(in_path, out_dir, cfg):
        # The task body, shipped by value (a nested function): in the worker it imports this script by its path
        # (on shared storage, like the data; once per worker process) and calls the same process_file as the
        # local engine. Why not ship process_file itself: by value it would drag the module's globals along
        # (loaded fastText models do not pickle); by reference it needs cc_filter on every worker's sys.path.
        import importlib.util
        import sys
        mod = sys.modules.get('cc_filter')
        if mod is None or getattr(mod, '__file__', None) != script:
            spec = importlib.util.spec_from_file_location('cc_filter', script)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # as an import: configurator.py parses no argv
            sys.modules['cc_filter'] = mod
        return mod.process_file(in_path, out_dir, cfg)
    task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(run_file)
    startup_s = time.time() - t0  # Ray's fixed cost: starting the head node and the worker processes
    # Backpressure: keep at most 4 tasks per CPU in flight and submit more as they finish. With 100,000 files,
    # submitting everything at once would hold 100,000 task specs and make every ray.wait scan them all.
    max_in_flight = 4 * max(int(ray.cluster_resources().get('CPU', 1)), 1)
    queue, refs, failed = deque(todo), {}, {}
    cfg_ref = ray.put(cfg)  # one copy in the object store instead of one per task
    try:
        while queue or refs:
            while queue and len(refs) < max_in_flight:
                p = queue.popleft()
                refs[task.remote(os.path.abspath(p), os.path.abspath(out_dir), cfg_ref)] = p
            # the driver collects results as they finish and drives the progress bar
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                path = refs.pop(ref)
                try:
                    on_done(ray.get(ref))
                except Exception as e:  # RayTaskError after the retries
                    failed[path] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
    finally:
        if started:
            ray.shutdown()
    return failed, startup_s


def _sum_stats(all_stats):
    counts, times = Counter(), Counter()
    for s in all_stats:
        counts.update(s['counts'])
        times.update(s['stage_cpu_s'])
    return counts, times


def write_token_folder(out_dir, stems):
    """Concatenate the per-file tokens (in name order) into out_dir/train.bin, val.bin and meta.json, the token
    folder train.py reads (INTERFACES.md). Returns {'train': n_tokens, 'val': n_tokens}."""
    n = {}
    for split in ('train', 'val'):
        path = os.path.join(out_dir, f'{split}.bin')
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, 'wb') as out:
            for stem in stems:
                part = os.path.join(out_dir, 'tokens', f'{stem}.{split}.bin')
                if os.path.exists(part):
                    with open(part, 'rb') as f:
                        out.write(f.read())
        os.replace(tmp, path)
        n[split] = os.path.getsize(path) // 2
        if n[split] == 0:
            print(f"warning: {path} is empty (no kept document fell in this split): train.py needs both splits; "
                  f"filter more data or change --val_fraction", file=sys.stderr)
    meta = {'vocab_size': 50257, 'dtype': 'uint16', 'eot_id': EOT_ID, 'tokenizer': 'tiktoken:gpt2',
            'tokenizer_dir': 'tiktoken:gpt2',  # no folder: tiktoken's own gpt2 encoding
            'n_tokens_train': n['train'], 'n_tokens_val': n['val'], 'source': 'cc_filter.py'}
    _atomic_write_bytes(os.path.join(out_dir, 'meta.json'), json.dumps(meta, indent=1).encode('utf-8'))
    return n


# Cost projection. The course's figure: 5,000 WET files are about 375 GB compressed, i.e. ~75 MB per file.
CC_WET_FILE_BYTES = 375e9 / 5000


def throughput(counts, times, cpu_s, input_bytes):
    """Per-stage documents per CPU-second (= documents/s per core) and the projection to 5,000/100,000 files.
    The projection scales by compressed input bytes: CPU-s per byte here x 75 MB per CC WET file. Our docs
    pages are longer and more often English than random crawl pages, so treat it as an order of magnitude."""
    stages = {}
    for st in STAGES:
        n_in = counts['records'] if st == 'read' else counts.get(f'in_{st}', 0)
        if n_in and times.get(st, 0) > 0:
            stages[st] = {'docs': n_in, 'cpu_s': times[st], 'docs_per_core_s': n_in / times[st]}
    per_file_core_s = cpu_s / max(input_bytes, 1) * CC_WET_FILE_BYTES
    return {'stages': stages, 'pipeline_docs_per_core_s': counts['records'] / max(cpu_s, 1e-9),
            'cpu_s': cpu_s, 'input_MB': input_bytes / 1e6,
            'core_h_per_cc_wet_file': per_file_core_s / 3600,
            'core_h_5000_files': 5000 * per_file_core_s / 3600,
            'core_h_100000_files': 100_000 * per_file_core_s / 3600}


def run_pipeline(inputs, out_dir, cfg=None, engine='local', num_workers=0, ray_address='', ray_max_retries=2,
                 progress=True):
    """Filter every input file (skipping finished ones), then write the token folder and report.json.
    inputs: a glob string or a list of paths. Returns the report dict (counts summed over ALL finished files,
    so a resumed run reports the whole dataset; 'processed'/'skipped' say what this run did)."""
    cfg = dict(config if cfg is None else cfg)
    paths = expand_inputs(inputs) if isinstance(inputs, str) else sorted(inputs)
    assert paths, f"no input files match {inputs!r}"
    # a missing model would fail every record of every file: stop now, saying where to get it
    for key, what, url in (('lid_model', 'language ID model', 'https://dl.fbaipublicfiles.com/fasttext/'
                            'supervised-models/lid.176.bin'), ('nsfw_model', 'NSFW classifier', NSFW_URL),
                           ('toxic_model', 'toxic-speech classifier', TOXIC_URL),
                           ('quality_model', 'quality classifier', '`python cc_filter.py --mode=train_quality`')):
        if (cfg[key] or key == 'lid_model') and not os.path.exists(cfg[key]):
            off = '' if key == 'lid_model' else f", or pass --{key}='' to switch the filter off"
            raise FileNotFoundError(f"--{key}={cfg[key]!r}: {what} not found. Get it from {url}{off}")
    os.makedirs(out_dir, exist_ok=True)
    num_workers = num_workers or os.cpu_count()
    todo = [p for p in paths if not os.path.exists(os.path.join(out_dir, 'stats', output_stem(p) + '.json'))]
    # temporary files of an interrupted run are garbage (the renamed outputs are what counts): remove them
    # (one listing per folder, not one glob per file: 100,000 files must not make this quadratic)
    todo_stems = {output_stem(p) for p in todo}
    todo_outputs = {f'{stem}{ext}' for stem in todo_stems for ext in ('.jsonl', '.train.bin', '.val.bin', '.json')}
    for sub in ('docs', 'tokens', 'stats'):
        folder = os.path.join(out_dir, sub)
        for name in (os.listdir(folder) if os.path.isdir(folder) else []):
            if '.tmp.' in name and name.rsplit('.tmp.', 1)[0] in todo_outputs:  # <output>.tmp.<pid>
                os.remove(os.path.join(folder, name))
    n_skipped = len(paths) - len(todo)
    bar = tqdm(total=len(paths), initial=n_skipped, unit='file', desc=f'cc_filter ({engine})', disable=not progress)
    t0 = time.time()
    n_kept = 0

    def on_done(stats):  # runs on the driver for every finished file, whatever the engine
        nonlocal n_kept
        for w in stats['warnings']:
            tqdm.write(f"warning: {w}", file=sys.stderr)
        n_kept += stats['counts'].get('kept', 0)
        bar.update(1)
        bar.set_postfix(kept=n_kept)

    startup_s = 0.0
    if engine == 'local':
        failed = _run_local(todo, out_dir, cfg, min(num_workers, max(len(todo), 1)), on_done)
    elif engine == 'ray':
        failed, startup_s = _run_ray(todo, out_dir, cfg, num_workers, ray_address, ray_max_retries, on_done)
    else:
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    bar.close()
    wall_s = time.time() - t0
    # everything that is finished, this run or an earlier one
    all_stats, done_stems = [], []
    for p in paths:
        sp = os.path.join(out_dir, 'stats', output_stem(p) + '.json')
        if os.path.exists(sp):
            with open(sp) as f:
                all_stats.append(json.load(f))
            done_stems.append(output_stem(p))
    counts, times = _sum_stats(all_stats)
    report = {'engine': engine, 'num_workers': num_workers, 'files': len(paths), 'processed': len(todo) - len(failed),
              'skipped': n_skipped, 'failed': failed, 'wall_s': wall_s, 'startup_s': startup_s, 'counts': dict(counts),
              'throughput': throughput(counts, times, sum(s['cpu_s'] for s in all_stats),
                                       sum(s['input_bytes'] for s in all_stats))}
    report['docs_per_s_wall'] = sum(s['counts'].get('records', 0) for s in all_stats
                                    if s['stem'] in todo_stems) / max(wall_s, 1e-9)
    if cfg['tokenize']:
        report['tokens'] = write_token_folder(out_dir, done_stems)
    _atomic_write_bytes(os.path.join(out_dir, 'report.json'), json.dumps(report, indent=1).encode('utf-8'))
    if failed:
        print('!' * 80 + f"\n{len(failed)} file(s) failed (rerun the same command to retry only them):",
              file=sys.stderr)
        for p, err in sorted(failed.items()):
            print(f"  {p}: {err}", file=sys.stderr)
        print('!' * 80, file=sys.stderr)
    return report


def format_report(report):
    """The report as markdown tables: filter funnel, stage throughput, cost projection."""
    c, tp = report['counts'], report['throughput']
    lines = [f"files {report['files']} (processed {report['processed']}, skipped {report['skipped']}, "
             f"failed {len(report['failed'])}), records {c.get('records', 0):,}, kept {c.get('kept', 0):,}, "
             f"wall {report['wall_s']:.1f} s, engine {report['engine']} x {report['num_workers']}", '',
             '| filter | documents in | dropped | dropped % |', '|---|---:|---:|---:|']
    funnel = [('bad input: not a WARC file (files)', None, 'bad_files'),
              ('bad input: truncated records', None, 'truncated_records'),
              ('bad input: undecodable', 'in_extract', 'drop_undecodable'),
              ('bad input: record errors', None, 'record_errors'),
              ('not HTML', None, 'drop_not_html'), ('empty text', 'in_extract', 'drop_empty'),
              ('language', 'in_langid', 'drop_lang')]
    funnel += [(f'gopher: {r}', 'in_gopher', f'drop_gopher_{r}') for r in ('words', 'word_length', 'ellipsis', 'alpha')]
    funnel += [('nsfw', 'in_nsfw', 'drop_nsfw'), ('toxic', 'in_toxic', 'drop_toxic'),
               ('quality', 'in_quality', 'drop_quality')]
    for name, k_in, k_drop in funnel:
        n_in = c.get(k_in, 0) if k_in else report['files'] if k_drop == 'bad_files' else c.get('records', 0)
        if k_in and not n_in:
            continue  # filter switched off
        pct = f"{100 * c.get(k_drop, 0) / n_in:.1f}" if n_in else '-'
        lines.append(f"| {name} | {n_in:,} | {c.get(k_drop, 0):,} | {pct} |")
    lines.append(f"| **kept** | | **{c.get('kept', 0):,}** | |")
    lines += ['', f"PII masks: {c.get('pii_emails', 0)} emails, {c.get('pii_phones', 0)} phone numbers, "
                  f"{c.get('pii_ips', 0)} IPv4 addresses in {c.get('docs_with_pii', 0)} kept documents", '',
              '| stage | documents | CPU s | documents/s per core |', '|---|---:|---:|---:|']
    for st, v in tp['stages'].items():
        lines.append(f"| {st} | {v['docs']:,} | {v['cpu_s']:.2f} | {v['docs_per_core_s']:,.0f} |")
    lines.append(f"| **whole pipeline** (records / task CPU s) | {c.get('records', 0):,} | {tp['cpu_s']:.2f} | "
                 f"**{tp['pipeline_docs_per_core_s']:,.0f}** |")
    lines += ['', f"Projection (CPU-s per compressed byte here x {CC_WET_FILE_BYTES / 1e6:.0f} MB per CC WET file): "
                  f"{tp['core_h_per_cc_wet_file']:.3f} core-hours per WET file, "
                  f"{tp['core_h_5000_files']:,.0f} core-hours for 5,000 files, "
                  f"{tp['core_h_100000_files']:,.0f} core-hours for 100,000 files"]
    if 'tokens' in report:
        lines.append(f"tokens: {report['tokens']['train']:,} train, {report['tokens']['val']:,} val (uint16, GPT-2)")
    return '\n'.join(lines)


# =============================================================================
# Benchmarks: per-stage throughput on the shared WARC and WET; engine scaling on replicated input
# =============================================================================

def bench(cfg):
    """Run the pipeline in this process on the shared WARC (HTML extraction) and WET (everything else)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, path in (('WET', cfg['bench_wet']), ('WARC', cfg['bench_warc'])):
            report = run_pipeline([path], os.path.join(tmp, name), cfg, engine='local', num_workers=1)
            results[name] = report
            print(f"\n## {name}: {path}\n\n{format_report(report)}")
    return results


def scale(cfg):
    """Replicate the input into bench_copies files (symlinks) and time each engine at each worker count."""
    src = expand_inputs(cfg['input']) if cfg['input'] else [cfg['bench_wet']]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for i in range(cfg['bench_copies']):
            p = src[i % len(src)]
            link = os.path.join(tmp, 'in', f'copy{i:04d}-{os.path.basename(p)}')
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.abspath(p), link)
            inputs.append(link)
        for i, eng in enumerate(cfg['bench_engines'].split(',')):  # an engine may be listed twice (repeats)
            for w in [int(x) for x in cfg['bench_workers'].split(',')]:
                out = os.path.join(tmp, f'out-{i}-{eng}-{w}')  # fresh: nothing to resume
                t0 = time.time()
                r = run_pipeline(inputs, out, cfg, engine=eng, num_workers=w, ray_address=cfg['ray_address'],
                                 progress=False)
                wall = time.time() - t0  # includes Ray start-up for a local Ray instance
                docs = r['counts'].get('records', 0)
                rows.append({'engine': eng, 'workers': w, 'files': len(inputs), 'docs': docs, 'wall_s': wall,
                             'startup_s': r['startup_s'], 'docs_per_s': docs / wall})
                print(f"{eng:6s} workers {w:3d}: {len(inputs)} files, {docs:,} docs in {wall:.1f} s "
                      f"(start-up {r['startup_s']:.1f} s) = {docs / wall:,.0f} docs/s", flush=True)
    print('\n| engine | workers | files | documents | wall s | of which start-up s | documents/s | speed-up vs 1 |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        base = next((b for b in rows if b['engine'] == r['engine'] and b['workers'] == 1), None)
        sp = f"{r['docs_per_s'] / base['docs_per_s']:.2f}x" if base else '-'
        print(f"| {r['engine']} | {r['workers']} | {r['files']} | {r['docs']:,} | {r['wall_s']:.1f} | "
              f"{r['startup_s']:.1f} | {r['docs_per_s']:,.0f} | {sp} |")
    return rows


# -----------------------------------------------------------------------------
if __name__ == '__main__':
    if mode == 'filter':
        assert input, "give the files to filter: --input='path/*.warc.wet.gz' (quote the glob)"
        report = run_pipeline(input, out_dir, config, engine=engine, num_workers=num_workers,
                              ray_address=ray_address, ray_max_retries=ray_max_retries)
        print(format_report(report))
        print(f"outputs in {out_dir}: docs/, tokens/, stats/, report.json" +
              (", train.bin, val.bin, meta.json (train.py's token folder)" if tokenize else ''))
        sys.exit(1 if report['failed'] else 0)
    elif mode == 'train_quality':
        result = train_quality(quality_positives, quality_negatives, quality_out, quality_holdout, quality_epochs)
        print(f"quality classifier written to {quality_out}")
        print(json.dumps(result, indent=1))
    elif mode == 'bench':
        bench(config)
    elif mode == 'scale':
        scale(config)
    else:
        raise SystemExit(f"unknown --mode={mode!r}: filter | train_quality | bench | scale")

"""
cc_filter.py: from raw Common Crawl (WARC/WET files) to clean, tokenized pre-training text.

The data half of CS336 (assignment 4) as one readable script. Every stage is an importable function, and the
pipeline chains them, one task per input file:

    read (FastWARC) -> HTML to text (Resiliparse) -> language ID (fastText lid.176) -> Gopher rules
    -> NSFW / toxic classifiers (Dolma's fastText models) -> quality classifier (fastText, wiki vs cc)
    -> PII masking (regexes) -> GPT-2 tokens (tiktoken, EOS 50256 after each document)

    python cc_filter.py --input='../shared/data/a4/*.warc.wet.gz' --out_dir=out/cc
    python cc_filter.py --input='/shared/crawl/*.wet.gz' --out_dir=/shared/cc --engine=ray --ray_address=auto
    python bench/cc_filter.py    # per-stage speed, cost projection, engine scaling, the quality classifier

out_dir gets, per input <file> (its name without .gz): docs/<file>.jsonl (kept documents {"url", "lang",
"lang_score", "text"}, PII masked), tokens/<file>.{train,val}.bin (GPT-2 uint16, split by a hash of the URL) and
stats/<file>.json (counts, CPU seconds per stage; written LAST, it marks the file as done); then train.bin,
val.bin, meta.json (the token folder train.py reads) and report.json (every count summed over the files).

Why this shape:
- One task per input file (Common Crawl ships ~100k similar WET files), resumable: a file whose done-marker matches
  its input and settings is skipped, and every output is renamed into place, so a killed job leaves no half file.
- Bad input never kills the job: a truncated gzip, a non-WARC file, an undecodable record are counted, warned
  about and skipped. Bad settings are refused at startup, before anything is written.
- Engines: a local process pool, or --engine=ray running the SAME process_file as Ray tasks with retries
  (`ray start --head`, then `ray start --address=<head>:6379` on the others; files on shared storage).
"""
import contextlib
import ctypes
import glob
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding
import fasttext
import tiktoken

# The shared data folder (../shared/data beside the checkout; LMSCRATCH_DATA moves it): default model paths
_DATA = os.path.abspath(os.environ.get('LMSCRATCH_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                      '..', 'shared', 'data')))
_A4 = os.path.join(_DATA, 'a4')  # the course's assignment-4 files

# -----------------------------------------------------------------------------
# what to filter
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
quality_model = '' # the wiki-vs-cc fastText model (train_quality_classifier); '' = off
quality_threshold = 0.5 # drop a document labelled 'cc' with at least this probability
pii_masking = True # replace emails, US phone numbers and IPv4 addresses with |||EMAIL_ADDRESS||| etc.
# tokens
tokenize = True # write GPT-2 tokens (uint16) and the train.bin/val.bin/meta.json token folder
val_fraction = 0.05 # documents whose URL hash falls in this fraction go to val.bin (stable across runs)
# testing
fail_once = '' # tests: a marker path; the first task to see it missing creates it and raises (exercises retries)
# -----------------------------------------------------------------------------
# the config keys: the globals above of simple types (what configurator.py may set, what the tasks receive)
CONFIG_KEYS = tuple(k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, str)))


def current_config():
    """The config keys' current values as a dict: the tasks get this dict, never the module's globals."""
    return {k: globals()[k] for k in CONFIG_KEYS}


# 1) Read WARC and WET files --------------------------------------------------
# A WARC file is a sequence of records (request, response, metadata, ...); Common Crawl's WET files hold one
# 'conversion' record (the page's plain text) per 'response' record of the WARC. Gzipped files are one gzip
# member per record, which is why a truncated file still yields every record before the cut.

def iter_records(path, counts=None, warns=None, quiet=False):
    """Yield (url, kind, body_bytes, content_type) for each response/conversion record of a WARC/WET file;
    kind is 'html' (a response record, body = HTTP payload) or 'text' (conversion). Never raises on bad input:
    a file that is not a WARC (or is cut inside a record) stops the iteration with counts['bad_files'] or
    counts['truncated_records'] += 1 and a warning (to the list warns and, unless quiet, warnings.warn)."""
    counts = Counter() if counts is None else counts
    warns = [] if warns is None else warns
    n, last_pos, n_truncated = 0, 0, counts['truncated_records']
    try:
        with open(path, 'rb') as f:
            # parse_http=False: we check the block digest first (it covers the HTTP headers), then parse them
            for record in ArchiveIterator(f, record_types=WarcRecordType.response | WarcRecordType.conversion,
                                          parse_http=False):
                n += 1
                last_pos = record.stream_pos  # byte offset of the record (of its gzip member in a .gz)
                url = record.headers.get('WARC-Target-URI', '')
                # the block digest (SHA-1 of the record body) catches truncated and corrupted records;
                # consume=False buffers the body so that we can still read it afterwards
                if record.headers.get('WARC-Block-Digest') and not record.verify_block_digest(consume=False):
                    counts['truncated_records'] += 1
                    _warn(warns, quiet, f"{path}: record {n} ({url}) is truncated or corrupt (block digest); skipped")
                    continue
                if record.record_type == WarcRecordType.response:
                    record.parse_http()
                    yield url, 'html', record.reader.read(), (record.http_content_type or '').lower()
                else:
                    yield url, 'text', record.reader.read(), 'text/plain'
    except Exception as e:  # OSError("Invalid WARC header") on non-WARC bytes, or anything a broken file throws
        counts['bad_files' if n == 0 else 'truncated_records'] += 1
        why = 'not a WARC/WET file?' if n == 0 else 'file cut short?'
        _warn(warns, quiet, f"{path}: {e} after {n} records ({why}); skipped the rest of the file")
        return
    if n == 0:
        counts['bad_files'] += 1
        _warn(warns, quiet, f"{path}: no WARC response/conversion records found (empty, or not a WARC/WET file?)")
    elif counts['truncated_records'] == n_truncated and not _gzip_tail_complete(path, last_pos):
        # FastWARC stops quietly at a gzip member cut short, so we look at the file's tail ourselves
        counts['truncated_records'] += 1
        _warn(warns, quiet, f"{path}: gzip stream cut short after {n} records (truncated download?); kept those")


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


# 2) Bytes and HTML to text ---------------------------------------------------

def decode_bytes(data):
    """UTF-8 first (most of the web), else Resiliparse's detected encoding; None if neither decodes."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode(detect_encoding(data))
    except (UnicodeDecodeError, LookupError):
        return None
    # single-byte encodings decode anything: a NUL byte says the body was binary, not text
    return None if '\x00' in text else text


def extract_text_from_html_bytes(html_bytes):
    """HTML bytes -> plain text with Resiliparse's extract_plain_text at its default arguments
    (the whole page, boilerplate included, like Common Crawl's WET). None if the bytes do not decode."""
    html = decode_bytes(html_bytes)
    return None if html is None else extract_plain_text(html)


# 3) fastText classifiers: language ID, NSFW, toxic, quality ------------------
# fastText (Joulin et al. 2016, "Bag of Tricks for Efficient Text Classification"): a linear classifier over the
# mean of word and word-n-gram embeddings, a softmax over the labels; microseconds per document on one core.
# Dolma's Jigsaw classifiers (fastText, word bigrams) have labels __label__nsfw / __label__non-nsfw and
# __label__toxic / __label__non-toxic. They are public but cannot be downloaded on offline machines.
_DOLMA = 'https://dolma-artifacts.org/fasttext_models/jigsaw_fasttext_bigrams_20230515/jigsaw_fasttext_bigrams_'
MODELS = {  # config key: (what it is, where to get it)
    'lid_model': ('language ID model', 'https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin'),
    'nsfw_model': ('NSFW classifier (Dolma jigsaw nsfw)', _DOLMA + 'nsfw_final.bin'),
    'toxic_model': ('toxic-speech classifier (Dolma jigsaw hatespeech)', _DOLMA + 'hatespeech_final.bin'),
    'quality_model': ('quality classifier', 'nowhere: train it with `python bench/cc_filter.py --mode=train_quality`')}
_FASTTEXT = {}  # path -> loaded model; one copy per process, loaded on first use


def load_fasttext(path, key='lid_model'):
    """Load (once per process) the fastText model of config key `key` from path, or fail saying where to get it."""
    if path not in _FASTTEXT:
        if not path or not os.path.exists(path):
            what, url = MODELS[key]
            raise FileNotFoundError(f"--{key}={path!r}: {what} not found. Get it from {url}"
                                    + ('' if key == 'lid_model' else f", or pass --{key}='' to switch it off"))
        try:
            _FASTTEXT[path] = fasttext.load_model(path)
        except (ValueError, MemoryError, RuntimeError) as e:  # 'wrong file format', or a cut file's huge sizes
            raise ValueError(f"--{key}={path!r} is not a fastText model ({type(e).__name__}: {e})") from None
    return _FASTTEXT[path]


def fasttext_predict(model, text, k=1):
    """[(label without '__label__', probability)] for the top k labels of one text.

    NOTE: we call the C++ binding model.f.predict directly: the Python wrapper's predict() of the fasttext
    0.9.x wheels breaks under NumPy 2 (np.array(..., copy=False)); the binding returns [(prob, label)].
    fastText reads one line per example, so newlines must go before predicting."""
    preds = model.f.predict(text.replace('\n', ' ').replace('\r', ' ') + '\n', k, 0.0, 'strict')
    # softmax probabilities can come back as 1.00001: clamp into [0, 1]
    return [(label.replace('__label__', ''), min(max(float(p), 0.0), 1.0)) for p, label in preds]


def identify_language(text, model_path=None):
    """(language code, probability): bare fastText codes such as 'en', 'zh', 'de'."""
    preds = fasttext_predict(load_fasttext(model_path or lid_model, 'lid_model'), text)
    return preds[0] if preds else ('unknown', 0.0)


def classify_nsfw(text, model_path=None):
    """('nsfw' | 'non-nsfw', probability) from Dolma's Jigsaw NSFW fastText model."""
    return fasttext_predict(load_fasttext(model_path or nsfw_model, 'nsfw_model'), text)[0]


def classify_toxic_speech(text, model_path=None):
    """('toxic' | 'non-toxic', probability) from Dolma's Jigsaw hate-speech fastText model."""
    return fasttext_predict(load_fasttext(model_path or toxic_model, 'toxic_model'), text)[0]


def classify_quality(text, model_path=None):
    """('wiki' | 'cc', probability) from the model trained by train_quality_classifier."""
    return fasttext_predict(load_fasttext(model_path or quality_model, 'quality_model'), text)[0]


# 4) Gopher quality rules -----------------------------------------------------
# Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1:
# the subset the course asks for. Cheap heuristics that remove most machine-made text (tables, lists, spam).
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
    if lines and sum(1 for line in lines if line.rstrip().endswith(('...', '\u2026'))) > 0.3 * len(lines):
        return 'ellipsis'
    if sum(1 for w in words if _ALPHA_RE.search(w)) < 0.8 * n:
        return 'alpha'
    return None


def gopher_quality_filter(text):
    """True = keep (the document passes every rule of gopher_reason)."""
    return gopher_reason(text) is None


# 5) PII masking --------------------------------------------------------------
# Each function returns (new_text, number of replacements). The mask strings contain no '@', no digit and no
# dot, so a mask already in the text can never match again: it is neither altered nor counted.
EMAIL_MASK, PHONE_MASK, IP_MASK = '|||EMAIL_ADDRESS|||', '|||PHONE_NUMBER|||', '|||IP_ADDRESS|||'
# local@domain.tld; the TLD must end in letters, so a sentence's final period stays outside the match
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# US numbers, 10 digits with an optional +1: 2831823829, (283)-182-3829, (283) 182 3829, 283-182-3829,
# 283.182.3829, +1 283 182 3829. No digit may touch either end (so longer digit runs are left alone).
# NOTE speed: the leading lookahead (?=...) names the possible first characters, or Python's regex engine
# tries the lookbehind at every position of the text.
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


# 6) One document through the filters, and GPT-2 tokens -----------------------

def _timed(times, stage, fn, *args):
    """fn(*args), adding its CPU seconds to times[stage] (process_time: other processes do not inflate it)."""
    t = time.process_time()
    out = fn(*args)
    times[stage] += time.process_time() - t
    return out


def filter_document(text, cfg, counts, times):
    """Run the filters on one document's text. Returns (masked_text, lang, score) or None if dropped.
    counts: Counter of documents into each stage ('in_langid', ...), per-filter drops ('drop_lang',
    'drop_gopher_words', ...) and PII masks; times: CPU seconds per stage."""
    # language ID: the model scores the whole text (lid.176 is trained on sentences; long texts work fine)
    lang, score = _timed(times, 'langid', identify_language, text, cfg['lid_model'])
    counts['in_langid'] += 1
    wanted = [x.strip() for x in cfg['languages'].split(',') if x.strip()]
    if (wanted and lang not in wanted) or score < cfg['min_lang_score']:
        counts['drop_lang'] += 1
        return None
    if cfg['gopher']:
        reason = _timed(times, 'gopher', gopher_reason, text)
        counts['in_gopher'] += 1
        if reason:
            counts[f'drop_gopher_{reason}'] += 1
            return None
    # harmful content, then quality: each an optional fastText model, dropping its 'bad' label above a threshold
    for stage, fn, bad, threshold in (('nsfw', classify_nsfw, 'nsfw', cfg['harm_threshold']),
                                      ('toxic', classify_toxic_speech, 'toxic', cfg['harm_threshold']),
                                      ('quality', classify_quality, 'cc', cfg['quality_threshold'])):
        if cfg[f'{stage}_model']:
            label, p = _timed(times, stage, fn, text, cfg[f'{stage}_model'])
            counts[f'in_{stage}'] += 1
            if label == bad and p >= threshold:
                counts[f'drop_{stage}'] += 1
                return None
    if cfg['pii_masking']:
        text, n = _timed(times, 'pii', mask_pii, text)
        counts['in_pii'] += 1
        counts.update({f'pii_{k}': v for k, v in n.items()})
        counts['docs_with_pii'] += any(n.values())
    return text, lang, score


EOT_ID = 50256  # GPT-2's <|endoftext|>


def get_gpt2():
    """tiktoken's GPT-2 encoding. tiktoken downloads its BPE files unless they are cached; offline, point it at
    the shared copy when the user has not chosen a cache of their own (must happen before get_encoding)."""
    if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(os.path.join(_DATA, 'tiktoken_cache')):
        os.environ['TIKTOKEN_CACHE_DIR'] = os.path.join(_DATA, 'tiktoken_cache')
    return tiktoken.get_encoding('gpt2')


def tokenize_documents(texts, enc=None):
    """Documents -> one flat uint16 array: tokens of doc 1, 50256, tokens of doc 2, 50256, ...
    encode_ordinary: a '<|endoftext|>' written inside a web page is text, not our separator."""
    enc = enc or get_gpt2()
    ids = [i for t in texts for i in enc.encode_ordinary(t) + [EOT_ID]]
    return np.array(ids, dtype=np.uint16)  # GPT-2's 50,257 ids fit in 16 bits


def is_holdout(key, fraction):
    """Stable split: the first 4 bytes of SHA-1(key) as a number in [0, 1). Used for val.bin (key = URL) and for
    the quality classifier's held-out part: a key lands on the same side however the files are scheduled."""
    return int(hashlib.sha1(key.encode('utf-8')).hexdigest()[:8], 16) / 2**32 < fraction


# 7) One input file, start to finish: the unit of work of both engines ---------

def output_stem(path):
    """Name of a file's outputs: its basename without .gz (CC-MAIN-...-00042.warc.wet.gz ->
    CC-MAIN-...-00042.warc.wet; a WARC and its WET keep different names)."""
    name = os.path.basename(path)
    return name[:-3] if name.endswith('.gz') else name


@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """Write to <path>.tmp.<pid>, then rename into place: os.replace is atomic on POSIX, so a killed process
    leaves the old file or the new one, never half of one. The pid keeps a retried task out of a stale task's
    temp file; an exception leaves the temp file behind for the next run to sweep away (run_pipeline)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
        yield f
    os.replace(tmp, path)


# the settings that shape a file's outputs: a done-marker records them, and a change redoes the file
SHAPING_KEYS = ('languages', 'min_lang_score', 'lid_model', 'gopher', 'nsfw_model', 'toxic_model', 'harm_threshold',
                'quality_model', 'quality_threshold', 'pii_masking', 'tokenize', 'val_fraction')


def done_marker(in_path, out_dir, cfg):
    """(path of the done-marker stats/<file>.json, the fingerprint it must hold, its stats if it holds it else
    None). The fingerprint: the input's size and mtime (a replaced or truncated download changes them) and the
    shaping settings, each model by its size and mtime (a retrained model redoes the files)."""
    stat = lambda p: [os.stat(p).st_size, os.stat(p).st_mtime_ns]  # lists, not tuples: JSON keeps them equal
    fp = {'input': stat(in_path), 'settings': {k: stat(cfg[k]) if k in MODELS and cfg[k] else cfg[k]
                                               for k in SHAPING_KEYS}}
    path = os.path.join(out_dir, 'stats', output_stem(in_path) + '.json')
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError):  # not done yet (a killed run never leaves half a marker: atomic_open)
        stats = {}
    return path, fp, (stats if stats.get('fingerprint') == fp else None)


def process_file(in_path, out_dir, cfg):
    """Filter (and tokenize) one WARC/WET file into out_dir; return its stats dict. The same function runs in
    the local process pool and as a Ray task. Skips the file if its done-marker matches (resume)."""
    stats_path, fp, stats = done_marker(in_path, out_dir, cfg)
    if stats is not None:
        return dict(stats, skipped=True)
    stem = output_stem(in_path)
    if cfg.get('fail_once'):
        try:  # O_EXCL: exactly one task in the whole run creates the marker, and that task fails
            os.close(os.open(cfg['fail_once'], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            raise RuntimeError(f"fail_once: injected failure on {in_path} (marker {cfg['fail_once']})")
        except FileExistsError:
            pass
    for sub in ('docs', 'tokens', 'stats'):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    wall0, cpu0 = time.time(), time.process_time()
    counts, times, warns = Counter(), defaultdict(float), []
    enc = get_gpt2() if cfg['tokenize'] else None
    ids = {'train': [], 'val': []}
    records = iter_records(in_path, counts, warns, quiet=True)  # the driver prints warns
    with atomic_open(os.path.join(out_dir, 'docs', stem + '.jsonl'), 'w') as out:
        # 1) read: FastWARC parses the record and (de)compresses; timed around next()
        while (rec := _timed(times, 'read', next, records, None)) is not None:
            url, rtype, body, ctype = rec
            counts['records'] += 1
            try:
                # 2) extract: decode bytes, HTML -> text for WARC responses (images, PDFs, ... are not HTML)
                if rtype == 'html' and 'html' not in ctype:
                    counts['drop_not_html'] += 1
                    continue
                text = _timed(times, 'extract', extract_text_from_html_bytes if rtype == 'html' else decode_bytes,
                              body)
                counts['in_extract'] += 1
                if text is None:
                    counts['drop_undecodable'] += 1
                    _warn(warns, True, f"{in_path}: record {url} does not decode as text; skipped")
                    continue
                if not text.strip():
                    counts['drop_empty'] += 1
                    continue
                # 3)-6) the filters and PII masks
                kept = filter_document(text, cfg, counts, times)
                if kept is None:
                    continue
                text, lang, score = kept
                counts['kept'] += 1
                out.write(json.dumps({'url': url, 'lang': lang, 'lang_score': round(score, 4), 'text': text},
                                     ensure_ascii=False) + '\n')
                # 7) tokens, split into train/val by a hash of the URL (stable however files are scheduled)
                if enc is not None:
                    doc_ids = _timed(times, 'tokenize', enc.encode_ordinary, text) + [EOT_ID]
                    ids['val' if is_holdout(url or text, cfg['val_fraction']) else 'train'].extend(doc_ids)
                    counts['in_tokenize'] += 1
            except Exception as e:  # one odd record must not cost us the file: count it, say it, go on
                counts['record_errors'] += 1
                _warn(warns, True, f"{in_path}: record {url}: {type(e).__name__}: {e}; skipped")
    # outputs: docs (above), then tokens, then the stats file that marks the file as done
    for split in ids if enc is not None else ():
        with atomic_open(os.path.join(out_dir, 'tokens', f'{stem}.{split}.bin')) as f:
            f.write(np.array(ids[split], dtype=np.uint16).tobytes())
    counts['tokens_train'], counts['tokens_val'] = len(ids['train']), len(ids['val'])
    stats = {'input': os.path.abspath(in_path), 'stem': stem, 'input_bytes': fp['input'][0], 'fingerprint': fp,
             'counts': dict(counts), 'stage_cpu_s': dict(times), 'cpu_s': time.process_time() - cpu0,
             'wall_s': time.time() - wall0, 'warnings': warns}
    with atomic_open(stats_path, 'w') as f:
        json.dump(stats, f, indent=1)
    return dict(stats, skipped=False)


# 8) The pipeline: many files through an engine, then counts and the token folder

def expand_inputs(pattern):
    """Sorted input paths of comma-separated globs; two inputs with the same output name are an error."""
    paths = sorted({p for g in pattern.split(',') if g.strip() for p in glob.glob(os.path.expanduser(g.strip()))
                    if os.path.isfile(p)})
    dup = [s for s, c in Counter(output_stem(p) for p in paths).items() if c > 1]
    if dup:
        raise ValueError(f"inputs share output names {dup[:3]}: rename them (outputs are named after the file)")
    return paths


def overlapping_input(inputs, out):
    """The first input that the output path out is, holds or lies inside (outputs never overwrite inputs)."""
    inside = lambda a, b: a == b or a.startswith(b + os.sep)  # path a is b or lies inside b
    o = os.path.realpath(out)
    return next((p for p in map(os.path.realpath, inputs) if inside(p, o) or inside(o, p)), None)


def check_models(cfg):
    """Load every model before starting: a missing or broken one would fail every record of every file."""
    for key in MODELS:
        if cfg[key] or key == 'lid_model':
            load_fasttext(cfg[key], key)


def _die_with_parent(parent_pid):
    """Pool initializer: have the kernel SIGKILL this worker when its parent dies (Linux prctl PR_SET_PDEATHSIG = 1),
    so that a SIGKILLed driver leaves no worker blocked on a pipe forever. A no-op elsewhere. NOTE the kernel
    watches the thread that forked: a fork-context pool forks all its workers from the submitting thread."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
            os._exit(1)


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
    # fork: workers start instantly and inherit the imported libraries (and any model the driver loaded)
    ctx = multiprocessing.get_context('fork' if sys.platform == 'linux' else 'spawn')
    with ProcessPoolExecutor(num_workers, ctx, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(process_file, p, out_dir, cfg): p for p in todo}
        for fut in as_completed(futures):
            try:
                on_done(fut.result())
            except Exception as e:
                failed[futures[fut]] = f"{type(e).__name__}: {e}"
    return failed


def _run_ray(todo, out_dir, cfg, num_workers, address, max_retries, on_done):
    """One Ray task per file, running the same process_file. Ray retries a failed task max_retries times
    (retry_exceptions=True: also on Python exceptions, not only on a dead worker), then we report the file."""
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"cc_filter.py: error: --engine=ray needs Ray, which is not installed ({e}): "
                         f"pip install 'ray[default]', or use --engine=local")
    t0, started = time.time(), not ray.is_initialized()
    if started and address:  # an existing cluster: `ray start --head` here, or ray://head:10001 from outside
        ray.init(address=address, log_to_driver=True)
    elif started:  # a local instance on this machine with num_workers CPUs
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=True)
    # The task is process_file pickled by reference: workers import this script (Ray puts the driver's folder on
    # their sys.path). From __main__ it would go by value, with the module's globals (models do not pickle).
    module = sys.modules[__name__] if __name__ != '__main__' else \
        importlib.import_module(os.path.splitext(os.path.basename(__file__))[0])
    task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(module.process_file)
    startup_s = time.time() - t0  # Ray's fixed cost: starting the head node and the worker processes
    # Backpressure: at most 4 tasks per CPU in flight, more submitted as they finish. With 100,000 files,
    # submitting everything at once would hold 100,000 task specs and make every ray.wait scan them all.
    max_in_flight = 4 * max(int(ray.cluster_resources().get('CPU', 1)), 1)
    queue, refs, failed = deque(todo), {}, {}
    cfg_ref = ray.put(cfg)  # one copy in the object store instead of one per task
    try:
        while queue or refs:
            while queue and len(refs) < max_in_flight:
                p = queue.popleft()
                refs[task.remote(os.path.abspath(p), os.path.abspath(out_dir), cfg_ref)] = p
            done, _ = ray.wait(list(refs), num_returns=1)  # the driver collects results as they finish
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


def write_token_folder(out_dir, stems):
    """Concatenate the per-file tokens (in name order) into out_dir/train.bin, val.bin and meta.json, the token
    folder train.py reads. Returns {'train': n_tokens, 'val': n_tokens}."""
    n = {}
    for split in ('train', 'val'):
        path = os.path.join(out_dir, f'{split}.bin')
        with atomic_open(path) as out:
            for part in [os.path.join(out_dir, 'tokens', f'{stem}.{split}.bin') for stem in stems]:
                out.write(open(part, 'rb').read() if os.path.exists(part) else b'')
            n[split] = out.tell() // 2  # uint16: 2 bytes per token
        if n[split] == 0:
            print(f"warning: {path} is empty (no kept document fell in this split): train.py needs both splits; "
                  f"filter more data or change --val_fraction", file=sys.stderr)
    meta = {'vocab_size': 50257, 'dtype': 'uint16', 'eot_id': EOT_ID, 'tokenizer': 'tiktoken:gpt2',
            'tokenizer_dir': 'tiktoken:gpt2',  # no folder: tiktoken's own gpt2 encoding
            'n_tokens_train': n['train'], 'n_tokens_val': n['val'], 'source': 'cc_filter.py'}
    with atomic_open(os.path.join(out_dir, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return n


def run_pipeline(inputs, out_dir, cfg=None, engine='local', num_workers=0, ray_address='', ray_max_retries=2,
                 progress=True):
    """Filter every input file (skipping finished ones), then write the token folder and report.json.
    inputs: a glob string or a list of paths. Returns the report dict (counts summed over ALL finished files,
    so a resumed run reports the whole dataset; 'processed'/'skipped' say what this run did)."""
    cfg = dict(current_config() if cfg is None else cfg)
    paths = expand_inputs(inputs) if isinstance(inputs, str) else sorted(inputs)
    if not paths:
        raise ValueError(f"no input files match {inputs!r}")
    if engine not in ('local', 'ray'):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if p := overlapping_input(paths, out_dir):
        raise ValueError(f"out_dir {out_dir!r} is, holds or lies inside the input {p}: write the outputs elsewhere")
    check_models(cfg)  # main() has loaded them already; a library caller gets the same error here
    os.makedirs(out_dir, exist_ok=True)
    num_workers = num_workers or os.cpu_count()
    todo = [p for p in paths if done_marker(p, out_dir, cfg)[2] is None]
    # an interrupted run's temp files (<output>.tmp.<pid>) are garbage; so is a stale token folder if tokenize is off
    for g in ['*/*.tmp.*'] + ([] if cfg['tokenize'] else ['tokens/*.bin', 'train.bin', 'val.bin', 'meta.json']):
        for stale in glob.glob(os.path.join(glob.escape(out_dir), g)):
            os.remove(stale)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit='file', desc=f'cc_filter ({engine})',
               disable=not progress)
    t0, kept = time.time(), Counter()

    def on_done(stats):  # runs on the driver for every finished file, whatever the engine
        for w in stats['warnings']:
            tqdm.write(f"warning: {w}", file=sys.stderr)
        kept.update(stats['counts'])
        bar.update(1)
        bar.set_postfix(kept=kept['kept'])

    if engine == 'local':
        failed, startup_s = _run_local(todo, out_dir, cfg, min(num_workers, max(len(todo), 1)), on_done), 0.0
    else:
        failed, startup_s = _run_ray(todo, out_dir, cfg, num_workers, ray_address, ray_max_retries, on_done)
    bar.close()
    wall_s = time.time() - t0
    # everything finished, this run or before: counts, CPU seconds (bench/cc_filter.py: per core), token folder
    all_stats = [s for s in (done_marker(p, out_dir, cfg)[2] for p in paths) if s is not None]
    counts, times = Counter(), Counter()
    for s in all_stats:
        counts.update(s['counts'])
        times.update(s['stage_cpu_s'])
    report = {'engine': engine, 'num_workers': num_workers, 'files': len(paths), 'processed': len(todo) - len(failed),
              'skipped': len(paths) - len(todo), 'failed': failed, 'wall_s': wall_s, 'startup_s': startup_s,
              'counts': dict(counts), 'stage_cpu_s': dict(times), 'cpu_s': sum(s['cpu_s'] for s in all_stats),
              'input_bytes': sum(s['input_bytes'] for s in all_stats)}
    if cfg['tokenize']:
        report['tokens'] = write_token_folder(out_dir, [s['stem'] for s in all_stats])
    with atomic_open(os.path.join(out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    for p, err in sorted(failed.items()):
        print(f"FAILED {p}: {err} (rerun the same command to retry only the failed files)", file=sys.stderr)
    return report


# 9) The quality classifier: high-quality text ('wiki') vs random crawl ('cc') -
# The course trains fastText on pages linked from Wikipedia (positives) vs random Common Crawl (negatives); the
# model is --quality_model. `python bench/cc_filter.py --mode=train_quality` builds an offline stand-in for that
# data from the shared files, trains it and reports held-out precision/recall (results/cc_filter.md).

def _train_supervised(train_file, out_path, kwargs):
    fasttext.train_supervised(input=train_file, **kwargs).save_model(out_path)


def train_fasttext(examples, out_path, epochs=20, lr=0.5, word_ngrams=2, dim=50, bucket=100_000, seed=0):
    """Train a fastText classifier on (label, text) examples and save it to out_path atomically.
    NOTE bucket: fastText hashes word bigrams into `bucket` rows of the embedding table; its default of 2M rows
    x dim floats is a 0.5-0.8 GB model. 100k rows is plenty for tens of thousands of examples.
    NOTE reproducible: thread=1 and a fixed seed are not enough. Trained again in the same process, fastText
    0.9's model changes (it reads memory that an earlier run left behind), sometimes to 'Encountered NaN'; so
    each training runs in a freshly spawned process, where the same data and seed give the same bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False, encoding='utf-8') as f:
        for label, text in examples:  # fastText's format: one example per line, '__label__X' then the text
            f.write(f"__label__{label} {text.replace(chr(10), ' ').replace(chr(13), ' ')}\n")
    kwargs = dict(epoch=epochs, lr=lr, wordNgrams=word_ngrams, dim=dim, bucket=bucket, minCount=1, loss='softmax',
                  thread=1, seed=seed, verbose=0)
    try:
        with ProcessPoolExecutor(1, multiprocessing.get_context('spawn')) as pool, atomic_open(out_path) as out:
            pool.submit(_train_supervised, f.name, out.name, kwargs).result()  # fastText writes the temp file
    except RuntimeError as e:  # 'Encountered NaN': SGD diverged; no silent retry at another rate
        if 'NaN' not in str(e):
            raise
        raise RuntimeError(f"fastText training diverged ({e}) at lr={lr}: lower the learning rate") from None
    finally:
        os.remove(f.name)
    _FASTTEXT.pop(out_path, None)  # a cached older model of the same path is stale now
    return load_fasttext(out_path, 'quality_model')


def train_quality_classifier(positives, negatives, out_path, **kwargs):
    """The quality classifier: positives (texts) get the label 'wiki', negatives 'cc'."""
    return train_fasttext([('wiki', t) for t in positives] + [('cc', t) for t in negatives], out_path, **kwargs)


def evaluate_quality(model_path, positives, negatives):
    """Precision, recall and F1 of the 'wiki' label (and accuracy) on held-out texts."""
    n = Counter((label, classify_quality(t, model_path)[0]) for label, texts in (('wiki', positives),
                                                                                 ('cc', negatives)) for t in texts)
    tp, fp, fn, tn = n['wiki', 'wiki'], n['cc', 'wiki'], n['wiki', 'cc'], n['cc', 'cc']
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {'precision': precision, 'recall': recall, 'f1': 2 * precision * recall / max(precision + recall, 1e-9),
            'accuracy': (tp + tn) / max(tp + fp + fn + tn, 1), 'n_pos': tp + fn, 'n_neg': fp + tn}


# -----------------------------------------------------------------------------
def die(msg):
    """A user error: one line naming the key and the fix, exit code 2, no traceback."""
    print(f"cc_filter.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_config(cfg):
    """Check every value before anything is written; a user error is one line naming the key and the fix (die).
    Returns the input paths."""
    checks = [(cfg['engine'] in ('local', 'ray'), "--engine: 'local' or 'ray'")]
    checks += [(0 <= cfg[k] <= 1, f"--{k}={cfg[k]} is a probability: give one in [0, 1]")
               for k in ('min_lang_score', 'harm_threshold', 'quality_threshold')]
    checks += [(0 <= cfg['val_fraction'] < 1, "--val_fraction: give a fraction in [0, 1)"),
               (cfg['num_workers'] >= 0, "--num_workers: give 0 (all cores) or a number of processes"),
               (cfg['ray_max_retries'] >= 0, "--ray_max_retries: give 0 or more"),
               (cfg['engine'] != 'ray' or importlib.util.find_spec('ray'), "--engine=ray needs Ray: pip install ray")]
    for ok, msg in checks:
        if not ok:
            die(msg)
    try:  # load the models now: a missing or broken one would fail every record (forked workers inherit them)
        check_models(cfg)
    except (OSError, ValueError) as e:
        die(str(e))
    labels = {label.replace('__label__', '') for label in load_fasttext(cfg['lid_model']).get_labels()}
    if unknown := [x for x in cfg['languages'].split(',') if x.strip() and x.strip() not in labels]:
        die(f"--languages: {unknown} are not labels of {cfg['lid_model']} (e.g. en, de, zh)")
    if not cfg['input']:
        die("give the files to filter: --input='path/*.warc.wet.gz' (quote the glob)")
    try:
        inputs = expand_inputs(cfg['input'])
    except ValueError as e:
        die(f"--input: {e}")
    if not inputs:
        die(f"--input={cfg['input']!r} matches no file (quote the glob, so that the shell leaves it to us)")
    out = cfg['out_dir']
    if p := overlapping_input(inputs, out):
        die(f"--out_dir={out!r} is, holds or lies inside the input {p}: write the outputs elsewhere")
    if os.path.exists(out) and not os.path.isdir(out):
        die(f"--out_dir={out!r} is a file: give a folder")
    return inputs


def main():
    """The command, from the module's globals (configurator.py has set them when this file is the command)."""
    cfg = current_config()
    paths = check_config(cfg)
    report = run_pipeline(paths, out_dir, cfg, engine=engine, num_workers=num_workers,
                          ray_address=ray_address, ray_max_retries=ray_max_retries)
    c = report['counts']  # the funnel: what each filter dropped
    print(f"files {report['files']} (processed {report['processed']}, skipped {report['skipped']}, failed "
          f"{len(report['failed'])}): {c.get('records', 0):,} records, {c.get('kept', 0):,} kept; dropped: "
          + (', '.join(f"{k[5:]} {v:,}" for k, v in sorted(c.items()) if k.startswith('drop_')) or 'none'))
    if not c.get('records'):
        print(f"no records were read from the {len(paths)} input file(s): empty, or not WARC/WET (see the warnings)")
    print(f"outputs in {out_dir}: docs/, tokens/, stats/, report.json" +
          (", train.bin, val.bin, meta.json (train.py's token folder)" if tokenize else ''))
    return report


if __name__ == '__main__':
    # configurator.py sets the config keys from argv; run it on those alone, so constants are not keys
    _keys = dict(current_config(), __name__='__main__', __file__=__file__)
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read(), _keys)
    globals().update({k: _keys[k] for k in CONFIG_KEYS})
    sys.exit(1 if main().get('failed') else 0)

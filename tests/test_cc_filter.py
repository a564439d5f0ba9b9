"""
Tests for cc_filter.py: every stage on its own, then the pipeline (resume, bad input, token folder), the copy of
the script alone (issue 29), and safe reruns and refused bad input (issue 32: done-markers with fingerprints,
reproducible quality training, workers that die with their parent, one-line errors with exit code 2).

    python -m pytest tests/test_cc_filter.py -v

Inputs are small slices (whole gzip members) of the shared crawl in ../shared/data/a4, written to tmp_path.
bench/cc_filter.py (throughput, projection, the quality classifier's training data) is tested here too.
"""
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import tiktoken
from fastwarc.warc import ArchiveIterator

import cc_filter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    """bench/cc_filter.py as a module (its name clashes with the script's, so load it by path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_cc_filter', os.path.join(ROOT, 'bench', 'cc_filter.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -----------------------------------------------------------------------------
# helpers: slices of the shared WARC/WET, and hand-made records

def warc_slice(path, start, stop):
    """Records [start, stop) of a gzipped WARC/WET (record 0 is warcinfo) as bytes: whole gzip members."""
    data = open(path, 'rb').read()
    pos = [r.stream_pos for r in ArchiveIterator(io.BytesIO(data), parse_http=False)] + [len(data)]
    return data[pos[start]:pos[stop]]


def wet_record(url, body, digest=True):
    """One WARC conversion record (uncompressed bytes) with the given body bytes."""
    headers = [b'WARC/1.0', b'WARC-Type: conversion', f'WARC-Target-URI: {url}'.encode(),
               b'WARC-Date: 2024-01-01T00:00:00Z', b'WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>',
               b'Content-Type: text/plain']
    if digest:
        headers.append(b'WARC-Block-Digest: sha1:' + base64.b32encode(hashlib.sha1(body).digest()))
    headers.append(f'Content-Length: {len(body)}'.encode())
    return b'\r\n'.join(headers) + b'\r\n\r\n' + body + b'\r\n\r\n'


@pytest.fixture(scope='module')
def wet_path(data_dir):
    return os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz')


@pytest.fixture(scope='module')
def cfg(data_dir):
    return dict(cc_filter.current_config(), lid_model=os.path.join(data_dir, 'a4', 'lid.176.ftz'))


# -----------------------------------------------------------------------------
# 1-2) reading and extraction

def test_extract_moby_exact(data_dir):
    html = open(os.path.join(data_dir, 'a4', 'moby.html'), 'rb').read()
    expected = open(os.path.join(data_dir, 'a4', 'moby_extracted.txt'), encoding='utf-8').read()
    assert cc_filter.extract_text_from_html_bytes(html) == expected


def test_decode_fallback_and_undecodable():
    assert cc_filter.decode_bytes('café'.encode('utf-8')) == 'café'
    # not UTF-8: Resiliparse's detector names a single-byte encoding that decodes it
    text = cc_filter.decode_bytes('Le café est très bon, déjà prêt à être bu. '.encode('latin-1') * 5)
    assert text is not None and 'caf' in text
    assert cc_filter.decode_bytes(b'\x81\x8d\x8f\x90\x9d' * 20) is None  # no encoding decodes these
    assert cc_filter.decode_bytes(b'\x00\x01\xff\xfe' * 30) is None  # binary


def test_iter_records_warc_and_wet(data_dir, tmp_path):
    warc = tmp_path / 'x.warc.gz'
    warc.write_bytes(warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.gz'), 0, 6))
    recs = list(cc_filter.iter_records(str(warc)))
    assert len(recs) == 5 and all(r[1] == 'html' and 'html' in r[3] and r[0].startswith('http') for r in recs)
    # the same records uncompressed
    plain = tmp_path / 'x.warc'
    plain.write_bytes(gzip.decompress(warc.read_bytes()))
    assert list(cc_filter.iter_records(str(plain))) == recs
    wet = tmp_path / 'x.warc.wet.gz'
    wet.write_bytes(warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz'), 0, 6))
    assert [r[1] for r in cc_filter.iter_records(str(wet))] == ['text'] * 5


# -----------------------------------------------------------------------------
# 3) language ID

def test_identify_language(cfg):
    en = "The quick brown fox jumps over the lazy dog.\nThis sentence is written in plain English."
    zh = "今天天气很好，我们一起去公园散步吧。\n这是一个用中文写的句子。"
    lang, score = cc_filter.identify_language(en, cfg['lid_model'])
    assert lang == 'en' and 0.5 < score <= 1.0
    lang, score = cc_filter.identify_language(zh, cfg['lid_model'])
    assert lang == 'zh' and 0.5 < score <= 1.0


# -----------------------------------------------------------------------------
# 4) PII

def test_mask_emails():
    assert cc_filter.mask_emails("Feel free to contact me at test@gmail.com if you have any questions.") == \
        ("Feel free to contact me at |||EMAIL_ADDRESS||| if you have any questions.", 1)
    assert cc_filter.mask_emails("The instructors are pl@fakedomain.ai and spl@fakedomain.ai") == \
        ("The instructors are |||EMAIL_ADDRESS||| and |||EMAIL_ADDRESS|||", 2)
    # an existing mask is neither altered nor counted; the sentence's final period stays outside the match
    text = "Some datasets use |||EMAIL_ADDRESS||| for masked PII. Write to a.b-c@mail.example.org."
    assert cc_filter.mask_emails(text) == \
        ("Some datasets use |||EMAIL_ADDRESS||| for masked PII. Write to |||EMAIL_ADDRESS|||.", 1)
    assert cc_filter.mask_emails("no address here, not even user@localhost") == \
        ("no address here, not even user@localhost", 0)


@pytest.mark.parametrize('number', ['2831823829', '(283)-182-3829', '(283) 182 3829', '283-182-3829',
                                    '283.182.3829', '+1 283 182 3829'])
def test_mask_phone_numbers(number):
    text = f"Feel free to contact me at {number} if you have any questions."
    assert cc_filter.mask_phone_numbers(text) == \
        ("Feel free to contact me at |||PHONE_NUMBER||| if you have any questions.", 1)


def test_mask_phone_edge_cases():
    assert cc_filter.mask_phone_numbers("Call 283-182-3829.") == ("Call |||PHONE_NUMBER|||.", 1)
    # 9 or 11+ digits are not US numbers; an existing mask is left alone
    for text in ["id 28318238291234", "short 283-182-382 x", "|||PHONE_NUMBER||| already"]:
        assert cc_filter.mask_phone_numbers(text) == (text, 0)


def test_mask_ips():
    assert cc_filter.mask_ips("You can access the server at 192.0.2.1.") == \
        ("You can access the server at |||IP_ADDRESS|||.", 1)
    assert cc_filter.mask_ips("hosts 10.0.0.1 and 255.255.255.255") == \
        ("hosts |||IP_ADDRESS||| and |||IP_ADDRESS|||", 2)
    for text in ["256.1.1.1 is not an address", "version 1.2.3.4.5", "|||IP_ADDRESS||| stays", "1.2.3"]:
        assert cc_filter.mask_ips(text) == (text, 0)


def test_mask_pii_all():
    text, n = cc_filter.mask_pii("mail a@b.io, call (283) 182 3829, ssh 192.168.1.20. Done.")
    assert text == "mail |||EMAIL_ADDRESS|||, call |||PHONE_NUMBER|||, ssh |||IP_ADDRESS|||. Done."
    assert n == {'emails': 1, 'phones': 1, 'ips': 1}


# -----------------------------------------------------------------------------
# 5) harmful content: the Dolma models are not here; a tiny fastText model trained in the test stands in

BAD = ["you are a disgusting stupid idiot", "shut up you worthless moron", "stupid idiot go away moron"]
GOOD = ["thanks for fixing the article", "the citation needs a page number", "see the talk page for sources"]


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    """Small fastText stand-ins for Dolma's NSFW / toxic models (and a quality model), trained on a dozen snippets.
    train_fasttext trains in a freshly spawned process, so these are the same models in every run (see
    test_quality_training_is_reproducible)."""
    d = tmp_path_factory.mktemp('models')
    for name, pos, neg in [('nsfw', 'nsfw', 'non-nsfw'), ('toxic', 'toxic', 'non-toxic')]:
        cc_filter.train_fasttext([(pos, t) for t in BAD] * 20 + [(neg, t) for t in GOOD] * 20, str(d / f'{name}.bin'),
                                 epochs=50, lr=0.1, dim=50, bucket=20_000)
    cc_filter.train_quality_classifier(GOOD * 10, ['Home | Login | Register | Search'] * 10, str(d / 'quality.bin'),
                                       epochs=10, bucket=20_000)
    return {name: str(d / f'{name}.bin') for name in ('nsfw', 'toxic', 'quality')}


def test_harmful_classifiers(tiny_models):
    nsfw, toxic = tiny_models['nsfw'], tiny_models['toxic']
    label, score = cc_filter.classify_nsfw("what a stupid idiot\nmoron", nsfw)
    assert label == 'nsfw' and 0.5 < score <= 1.0
    assert cc_filter.classify_nsfw("please add a citation to the article", nsfw)[0] == 'non-nsfw'
    assert cc_filter.classify_toxic_speech("worthless moron", toxic)[0] == 'toxic'
    label, score = cc_filter.classify_toxic_speech("thanks for the sources", toxic)
    assert label == 'non-toxic' and 0.0 <= score <= 1.0


def test_harmful_model_missing_names_download(tmp_path, cfg):
    # the pipeline checks before it starts (else every record of every file would fail)
    with pytest.raises(FileNotFoundError, match='dolma-artifacts.org.*hatespeech'):
        cc_filter.run_pipeline([str(tmp_path / 'x.warc.wet')], str(tmp_path / 'out'),
                               dict(cfg, toxic_model=str(tmp_path / 'missing.bin')), progress=False)
    with pytest.raises(FileNotFoundError, match='dolma-artifacts.org.*nsfw'):
        cc_filter.classify_nsfw("text", str(tmp_path / 'missing.bin'))
    with pytest.raises(FileNotFoundError, match='dolma-artifacts.org.*hatespeech'):
        cc_filter.classify_toxic_speech("text", str(tmp_path / 'missing.bin'))


# -----------------------------------------------------------------------------
# 6) Gopher rules, at their boundaries

def test_gopher_boundaries():
    word = 'word'  # 4 letters: mean length well inside [3, 10]
    assert cc_filter.gopher_reason(' '.join([word] * 49)) == 'words'
    assert cc_filter.gopher_quality_filter(' '.join([word] * 50))
    assert cc_filter.gopher_quality_filter(' '.join([word] * 100_000))
    assert cc_filter.gopher_reason(' '.join([word] * 100_001)) == 'words'
    # mean word length: exactly 3 and exactly 10 pass, just outside fails
    assert cc_filter.gopher_quality_filter(' '.join(['abc'] * 100))
    assert cc_filter.gopher_reason(' '.join(['abc'] * 99 + ['ab'])) == 'word_length'
    assert cc_filter.gopher_quality_filter(' '.join(['abcdefghij'] * 100))
    assert cc_filter.gopher_reason(' '.join(['abcdefghij'] * 99 + ['abcdefghijk'])) == 'word_length'
    # lines ending in an ellipsis: 30% passes, more fails ('...' and the one-character '…' both count)
    line = ' '.join([word] * 10)
    assert cc_filter.gopher_quality_filter('\n'.join([line + ' ...'] * 3 + [line] * 7))
    assert cc_filter.gopher_reason('\n'.join([line + '...'] * 3 + [line + '\u2026'] + [line] * 6)) == 'ellipsis'
    # words with a letter: 80% passes, 79% fails
    assert cc_filter.gopher_quality_filter(' '.join(['word'] * 80 + ['1234'] * 20))
    assert cc_filter.gopher_reason(' '.join(['word'] * 79 + ['1234'] * 21)) == 'alpha'


# -----------------------------------------------------------------------------
# 7) quality classifier

def test_quality_classifier(data_dir, tmp_path):
    bench = load_bench()  # the offline training data and the train_quality command live in bench/cc_filter.py
    pos = [t for _, t in bench.load_quality_texts(os.path.join(data_dir, 'a4', 'high_quality_wiki_reference.txt'))]
    assert len(pos) > 20
    neg = ["Home | About | Contact | Login | Register | FAQ | Search", "Click here to download now! Free!",
           "Previous | Next | Up | Top | Index | Modules", "Copyright 2022. All rights reserved. Privacy policy",
           "Forum Index Memberlist Usergroups Register Profile Log in", "Buy cheap watches online best price"] * 4
    model = str(tmp_path / 'quality.bin')
    cc_filter.train_quality_classifier(pos[::2], neg[::2], model, epochs=20)
    label, score = cc_filter.classify_quality(pos[1], model)
    assert label == 'wiki' and 0.5 < score <= 1.0
    assert cc_filter.classify_quality("Home | Login | Register | Search | FAQ", model)[0] == 'cc'
    ev = cc_filter.evaluate_quality(model, pos[1::2], neg[1::2])
    assert ev['n_pos'] == len(pos[1::2]) and ev['n_neg'] == len(neg[1::2])
    assert ev['precision'] > 0.8 and ev['recall'] > 0.8 and 0 <= ev['f1'] <= 1
    # the train_quality command: sources by path, split by hash, balanced, evaluated on the held-out part
    neg_file = tmp_path / 'neg.txt'
    neg_file.write_text('\n\n'.join(f'{t} {i}' for i, t in enumerate(neg * 5)))
    result = bench.train_quality(os.path.join(data_dir, 'a4', 'high_quality_wiki_reference.txt'), str(neg_file),
                                 str(tmp_path / 'q2.bin'), holdout=0.3, epochs=20)
    assert result['n_pos'] > 0 and result['n_neg'] > 0 and result['train_pos'] <= 4 * result['train_neg']
    assert 0 <= result['precision'] <= 1 and 0 <= result['recall'] <= 1 and result['train_accuracy'] > 0.8


# -----------------------------------------------------------------------------
# 8-9) tokenization and the pipeline

def test_tokenize_documents(data_dir):  # data_dir: tiktoken reads its GPT-2 files from the shared cache
    ids = cc_filter.tokenize_documents(["Hello world", "a <|endoftext|> b"])
    enc = tiktoken.get_encoding('gpt2')
    assert ids.dtype == np.uint16 and list(ids[ids == 50256].shape) == [2] and ids[-1] == 50256
    assert enc.decode(ids.tolist()) == "Hello world<|endoftext|>a <|endoftext|> b<|endoftext|>"


@pytest.fixture(scope='module')
def crawl(data_dir, tmp_path_factory):
    """Three small inputs: two WET slices (one gzipped, one not) and one WARC slice."""
    d = tmp_path_factory.mktemp('crawl')
    wet = os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz')
    (d / 'a.warc.wet.gz').write_bytes(warc_slice(wet, 1, 31))
    (d / 'b.warc.wet').write_bytes(gzip.decompress(warc_slice(wet, 31, 61)))
    (d / 'c.warc.gz').write_bytes(warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.gz'), 1, 21))
    return d


def _outputs(out_dir):
    """Everything a run produced that must not depend on the engine or on interruptions."""
    out = {}
    for sub in ('docs', 'tokens'):
        for name in sorted(os.listdir(os.path.join(out_dir, sub))):
            out[f'{sub}/{name}'] = open(os.path.join(out_dir, sub, name), 'rb').read()
    for name in ('train.bin', 'val.bin', 'meta.json'):
        out[name] = open(os.path.join(out_dir, name), 'rb').read()
    return out


def test_pipeline_and_token_folder(crawl, cfg, tmp_path):
    out = str(tmp_path / 'out')
    report = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, num_workers=2, progress=False)
    c = report['counts']
    assert report['files'] == 3 and report['processed'] == 3 and not report['failed']
    assert c['records'] == 80 and 0 < c['kept'] < 80
    assert c['kept'] + c.get('drop_lang', 0) + sum(v for k, v in c.items() if k.startswith('drop_gopher')) == 80
    # the token folder train.py reads
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert meta['vocab_size'] == 50257 and meta['dtype'] == 'uint16' and meta['eot_id'] == 50256
    assert meta['tokenizer'] == 'tiktoken:gpt2'
    train = np.fromfile(os.path.join(out, 'train.bin'), dtype=np.uint16)
    val = np.fromfile(os.path.join(out, 'val.bin'), dtype=np.uint16)
    assert (train == 50256).sum() + (val == 50256).sum() == c['kept'] and train[-1] == 50256
    docs = [json.loads(line) for f in sorted(os.listdir(os.path.join(out, 'docs')))
            for line in open(os.path.join(out, 'docs', f), encoding='utf-8')]
    assert len(docs) == c['kept'] and all(d['lang'] == 'en' for d in docs)
    enc = tiktoken.get_encoding('gpt2')
    assert enc.decode(train[:train.tolist().index(50256)].tolist()) in {d['text'] for d in docs}
    bench = load_bench()  # per-stage throughput and the cost projection: bench/cc_filter.py, from the report
    tp = bench.throughput(report)
    assert set(tp['stages']) >= {'read', 'extract', 'langid', 'gopher', 'pii', 'tokenize'}
    assert tp['core_h_100000_files'] > tp['core_h_5000_files'] > 0
    md = bench.format_report(report)
    assert 'documents/s per core' in md and '100,000 files' in md
    # a second run finds everything done and changes nothing
    before = _outputs(out)
    again = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, num_workers=2, progress=False)
    assert again['skipped'] == 3 and again['processed'] == 0 and again['counts'] == c
    assert _outputs(out) == before


def test_resume_after_interrupt(crawl, cfg, tmp_path, monkeypatch):
    clean = str(tmp_path / 'clean')
    cc_filter.run_pipeline(str(crawl / '*'), clean, cfg, num_workers=1, progress=False)
    # interrupt (Ctrl-C) in the middle of the second file, in this process (num_workers=1)
    out = str(tmp_path / 'out')
    real, calls = cc_filter.filter_document, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 45:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(cc_filter, 'filter_document', interrupted)
    with pytest.raises(KeyboardInterrupt):
        cc_filter.run_pipeline(str(crawl / '*'), out, cfg, num_workers=1, progress=False)
    assert sorted(os.listdir(os.path.join(out, 'stats'))) == ['a.warc.wet.json']  # only the first file is done
    assert any('.tmp.' in f for f in os.listdir(os.path.join(out, 'docs')))  # the half-written second file
    monkeypatch.setattr(cc_filter, 'filter_document', real)
    report = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, num_workers=1, progress=False)
    assert report['skipped'] == 1 and report['processed'] == 2
    assert _outputs(out) == _outputs(clean)  # nothing lost, nothing duplicated
    assert not any('.tmp.' in f for sub in ('docs', 'tokens', 'stats') for f in os.listdir(os.path.join(out, sub)))


def test_bad_input_counted_and_skipped(crawl, cfg, data_dir, tmp_path):
    d = tmp_path / 'bad'
    d.mkdir()
    wet = os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz')
    good = warc_slice(wet, 1, 31)
    (d / 'good.warc.wet.gz').write_bytes(good)
    # truncated gzip: cut inside the 21st record; the 20 records before it must survive
    n20, n21 = len(warc_slice(wet, 1, 21)), len(warc_slice(wet, 1, 22))
    cut = (n20 + n21) // 2
    (d / 'truncated.warc.wet.gz').write_bytes(good[:cut])
    (d / 'random.warc.gz').write_bytes(os.urandom(4000))  # not a WARC at all
    (d / 'text.warc.wet').write_bytes(b'just some text\nthat is not a WARC file\n' * 50)
    # a record whose body is no text in any encoding, between two good records
    en = ' '.join(['This is a perfectly ordinary English sentence about Debian packages.'] * 10).encode()
    undecodable = wet_record('http://a/2', b'\x81\x8d\x8f' * 40)
    (d / 'undecodable.warc.wet').write_bytes(wet_record('http://a/1', en) + undecodable + wet_record('http://a/3', en))
    out = str(tmp_path / 'out')
    report = cc_filter.run_pipeline(str(d / '*'), out, cfg, num_workers=2, progress=False)
    stats = {f.split('.')[0]: json.load(open(os.path.join(out, 'stats', f)))
             for f in os.listdir(os.path.join(out, 'stats'))}
    assert sorted(stats) == ['good', 'random', 'text', 'truncated', 'undecodable']
    assert not report['failed'] and report['processed'] == 5
    assert stats['random']['counts']['bad_files'] == 1 and stats['text']['counts']['bad_files'] == 1
    assert stats['truncated']['counts']['truncated_records'] == 1 and stats['truncated']['counts']['records'] == 20
    assert stats['undecodable']['counts']['drop_undecodable'] == 1 and stats['undecodable']['counts']['kept'] == 2
    assert all(stats[s]['warnings'] for s in ('truncated', 'random', 'text', 'undecodable'))
    # the truncated file kept exactly what the good file kept among its first 20 records
    good_urls = [json.loads(l)['url'] for l in open(os.path.join(out, 'docs', 'good.warc.wet.jsonl'))]
    trunc_urls = [json.loads(l)['url'] for l in open(os.path.join(out, 'docs', 'truncated.warc.wet.jsonl'))]
    first20 = [r[0] for r in cc_filter.iter_records(str(d / 'good.warc.wet.gz'))][:20]
    assert trunc_urls == [u for u in good_urls if u in first20]
    # cut inside the gzip trailer only: the 21st record is whole and kept, the file is still reported as cut
    (d / 'trailer.warc.wet.gz').write_bytes(good[:n21 - 4])
    counts = Counter()
    with pytest.warns(RuntimeWarning, match='cut short'):
        assert len(list(cc_filter.iter_records(str(d / 'trailer.warc.wet.gz'), counts))) == 21
    assert counts['truncated_records'] == 1
    # the library functions warn too
    with pytest.warns(RuntimeWarning, match='not a WARC'):
        assert list(cc_filter.iter_records(str(d / 'random.warc.gz'))) == []


def test_local_failure_is_reported_by_file(crawl, cfg, tmp_path):
    marker = str(tmp_path / 'marker')
    report = cc_filter.run_pipeline(str(crawl / '*'), str(tmp_path / 'out'), dict(cfg, fail_once=marker),
                                    num_workers=2, progress=False)
    assert len(report['failed']) == 1 and 'injected failure' in next(iter(report['failed'].values()))
    assert report['processed'] == 2


def test_pipeline_with_harm_and_quality_models(crawl, cfg, tiny_models, tmp_path):
    nsfw, toxic, quality = tiny_models['nsfw'], tiny_models['toxic'], tiny_models['quality']
    c = dict(cfg, nsfw_model=nsfw, toxic_model=toxic, quality_model=quality)
    stats = cc_filter.process_file(str(crawl / 'a.warc.wet.gz'), str(tmp_path / 'out'), c)
    n = stats['counts']
    assert n['in_nsfw'] == n['in_gopher'] - sum(v for k, v in n.items() if k.startswith('drop_gopher'))
    assert n['in_toxic'] == n['in_nsfw'] - n.get('drop_nsfw', 0)
    assert n['in_quality'] == n['in_toxic'] - n.get('drop_toxic', 0)
    assert n['kept'] == n['in_quality'] - n.get('drop_quality', 0)
    assert {'nsfw', 'toxic', 'quality'} <= set(stats['stage_cpu_s'])


# -----------------------------------------------------------------------------
# issue 29: the script alone, copied into an empty folder, imports without running anything and runs from Python

def test_copy_alone_runs_main(data_dir, tmp_path):
    wet = os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz')
    if not os.path.exists(wet):
        pytest.skip(f"no WET at {wet}")
    work, inputs = tmp_path / 'alone', tmp_path / 'in'
    work.mkdir()
    inputs.mkdir()
    shutil.copy(os.path.join(ROOT, 'cc_filter.py'), work)  # no configurator.py, no model.py: cc_filter needs neither
    (inputs / 'tiny.warc.wet.gz').write_bytes(warc_slice(wet, 1, 11))
    code = (f"import sys; sys.argv = ['their_program.py', '--their_flag=1']\n"
            f"import cc_filter\n"
            f"import os; assert set(os.listdir('.')) - {{'__pycache__'}} == {{'cc_filter.py'}}, os.listdir('.')\n"
            f"cc_filter.input = {str(inputs / '*.wet.gz')!r}\n"
            f"cc_filter.lid_model = {os.path.join(data_dir, 'a4', 'lid.176.ftz')!r}\n"
            f"cc_filter.out_dir, cc_filter.num_workers = 'out', 1\n"
            f"report = cc_filter.main()\n"
            f"print('KEPT', report['counts']['kept'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'LMSCRATCH_DATA')}
    env['TIKTOKEN_CACHE_DIR'] = os.path.join(data_dir, 'tiktoken_cache')
    r = subprocess.run([sys.executable, '-c', code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    kept = int(r.stdout.split('KEPT ')[1])
    docs = open(work / 'out' / 'docs' / 'tiny.warc.wet.jsonl', encoding='utf-8').read().splitlines()
    assert 0 < kept == len(docs) <= 10 and all(json.loads(d)['lang'] == 'en' for d in docs)
    tokens = np.fromfile(work / 'out' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(work / 'out' / 'val.bin', dtype=np.uint16)
    assert (tokens == 50256).sum() + (val == 50256).sum() == kept
    assert set(os.listdir(work)) - {'__pycache__'} == {'cc_filter.py', 'out'}  # nothing written beside it but out_dir


# -----------------------------------------------------------------------------
# issue 32: reruns are safe (done-markers), training is reproducible, workers die with their parent

def test_replaced_input_is_redone(data_dir, cfg, tmp_path):
    """A truncated download processed, then replaced by the whole file: the rerun processes it again."""
    full = warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz'), 1, 31)
    d, out = tmp_path / 'in', str(tmp_path / 'out')
    d.mkdir()
    (d / 'x.warc.wet.gz').write_bytes(full[:len(full) // 2])
    first = cc_filter.run_pipeline(str(d / '*'), out, cfg, num_workers=1, progress=False)
    assert first['processed'] == 1 and 0 < first['counts']['records'] < 30 and first['counts']['truncated_records']
    (d / 'x.warc.wet.gz.new').write_bytes(full)
    os.replace(d / 'x.warc.wet.gz.new', d / 'x.warc.wet.gz')
    again = cc_filter.run_pipeline(str(d / '*'), out, cfg, num_workers=1, progress=False)
    assert again['processed'] == 1 and again['skipped'] == 0
    assert again['counts']['records'] == 30 and not again['counts'].get('truncated_records')
    same = cc_filter.run_pipeline(str(d / '*'), out, cfg, num_workers=1, progress=False)
    assert same['skipped'] == 1 and same['counts'] == again['counts']


def test_changed_setting_is_redone(crawl, cfg, tmp_path):
    out = str(tmp_path / 'out')
    en = cc_filter.run_pipeline(str(crawl / 'a.warc.wet.gz'), out, cfg, num_workers=1, progress=False)
    every = cc_filter.run_pipeline(str(crawl / 'a.warc.wet.gz'), out, dict(cfg, languages=''), num_workers=1,
                                   progress=False)
    assert every['processed'] == 1 and every['counts']['kept'] > en['counts']['kept']
    assert not every['counts'].get('drop_lang')
    docs = [json.loads(line) for line in open(os.path.join(out, 'docs', 'a.warc.wet.jsonl'), encoding='utf-8')]
    assert len(docs) == every['counts']['kept'] and {d['lang'] for d in docs} != {'en'}


def test_tokenize_off_removes_the_stale_token_folder(crawl, cfg, tmp_path):
    """newuser 5: a --tokenize=False run over a tokenized one leaves no train.bin/val.bin/meta.json or tokens/*.bin
    behind (train.py would train on them, though they no longer match docs/)."""
    out = str(tmp_path / 'out')
    cc_filter.run_pipeline(str(crawl / 'a.warc.wet.gz'), out, cfg, num_workers=1, progress=False)
    assert os.path.exists(os.path.join(out, 'train.bin')) and os.listdir(os.path.join(out, 'tokens'))
    report = cc_filter.run_pipeline(str(crawl / 'a.warc.wet.gz'), out, dict(cfg, tokenize=False), num_workers=1,
                                    progress=False)
    assert report['processed'] == 1 and 'tokens' not in report
    assert not [n for n in ('train.bin', 'val.bin', 'meta.json') if os.path.exists(os.path.join(out, n))]
    assert os.listdir(os.path.join(out, 'tokens')) == [] and os.listdir(os.path.join(out, 'docs'))


def test_quality_training_is_reproducible(tmp_path):
    """Same data and seed, same model bytes, even trained three times in one process (fastText alone is not)."""
    examples = [('wiki', t) for t in GOOD * 5] + [('cc', t) for t in BAD * 5]
    paths = [str(tmp_path / f'{i}.bin') for i in range(3)]
    for p in paths:
        cc_filter.train_fasttext(examples, p, epochs=20, bucket=20_000, seed=1)
    blobs = [open(p, 'rb').read() for p in paths]
    assert blobs[0] == blobs[1] == blobs[2]


def test_quality_split_is_path_independent_and_held_out_is_unseen(data_dir, tmp_path, monkeypatch):
    bench = load_bench()
    src = os.path.join(data_dir, 'a4', 'high_quality_wiki_reference.txt')
    (tmp_path / 'moved').mkdir()
    shutil.copy(src, tmp_path / 'moved')
    keys = [k for k, _ in bench.load_quality_texts(src)]
    assert keys == [k for k, _ in bench.load_quality_texts(str(tmp_path / 'moved' / os.path.basename(src)))]
    # the same text under two keys (a footer shared by two pages) is held out only if it was not trained on
    pos = [(f'page{i}', 'the same paragraph of careful encyclopedic prose about the history of the city')
           for i in range(40)]
    neg = [(f'junk{i}', f'Home | Login | Register | Search | page {i}') for i in range(40)]
    monkeypatch.setattr(bench, 'load_quality_texts', lambda spec, **kw: pos if spec == 'pos' else neg)
    result = bench.train_quality('pos', 'neg', str(tmp_path / 'q.bin'), holdout=0.3, epochs=5)
    assert result['train_pos'] >= 1 and result['n_pos'] == 0 and 0 < result['n_neg'] < 40


def _children(pid):
    """Pids of the live (not zombie) child processes of pid, from /proc."""
    out = []
    for entry in os.listdir('/proc'):
        try:
            stat = open(f'/proc/{entry}/stat').read()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(')', 1)[-1].split()  # after '(comm)': state, ppid, ...
        if entry.isdigit() and int(fields[1]) == pid and fields[0] != 'Z':
            out.append(int(entry))
    return out


def _alive(pid):
    try:
        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[-1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')
def test_workers_die_with_parent(crawl, cfg, tmp_path):
    import signal
    import time
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
            f"import cc_filter\n"
            f"cc_filter.filter_document = lambda *args: time.sleep(300)  # every worker blocks in its first document\n"
            f"cc_filter.run_pipeline({str(crawl / '*')!r}, {str(tmp_path / 'out')!r}, "
            f"dict(cc_filter.current_config(), lid_model={cfg['lid_model']!r}), num_workers=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, '-c', code])
    deadline = time.time() + 120
    while len(_children(parent.pid)) < 2 and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
    workers = _children(parent.pid)
    assert len(workers) >= 2, f"the pool did not start (parent exit code {parent.poll()})"
    time.sleep(1)  # let them reach the blocking call
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their SIGKILLed parent"


def test_empty_input_says_no_records(data_dir, tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'empty.warc.wet.gz').write_bytes(b'')
    r = subprocess.run([sys.executable, 'cc_filter.py', f"--input={tmp_path / 'in' / '*'}",
                        f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'no records were read' in r.stdout and 'core-hours' not in r.stdout
    report = json.load(open(tmp_path / 'out' / 'report.json'))
    assert report['counts'].get('records', 0) == 0 and report['counts']['bad_files'] == 1
    assert 'core_h_5000_files' not in load_bench().throughput(report)  # nothing to project from nothing


# -----------------------------------------------------------------------------
# issue 32: bad input is refused at startup with one line, exit code 2, and nothing written or changed

def _tree(path):
    """{relative path: bytes} of every file under path."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), 'rb').read()
            for d, _, files in os.walk(path) for f in files}


BAD_INPUTS = {  # name: (arguments, a word the message must contain); {in}, {out}, {tmp} are filled in
    'no_input': ([], '--input'),
    'glob_matches_nothing': (['--input={tmp}/nothing*.wet'], 'matches no file'),
    'lid_model_garbage': (['--input={in}/*', '--lid_model={tmp}/garbage.ftz'], 'not a fastText model'),
    'lid_model_is_a_folder': (['--input={in}/*', '--lid_model={tmp}/other'], 'not a fastText model'),
    'lid_model_missing': (['--input={in}/*', '--lid_model={tmp}/missing.ftz'], 'lid.176'),
    'nsfw_model_missing': (['--input={in}/*', '--nsfw_model={tmp}/missing.bin'], 'dolma'),
    'out_dir_is_input_folder': (['--input={in}/*', '--out_dir={in}'], 'input'),
    'out_dir_holds_inputs': (['--input={in}/*', '--out_dir={tmp}'], 'input'),
    'out_dir_inside_input': (['--input={in}/*', '--out_dir={in}/a.warc.wet.gz/out'], 'input'),
    'out_dir_is_a_file': (['--input={in}/*', '--out_dir={tmp}/garbage.ftz'], 'file'),
    'min_lang_score_above_1': (['--input={in}/*', '--out_dir={out}', '--min_lang_score=1.5'], 'min_lang_score'),
    'harm_threshold_negative': (['--input={in}/*', '--out_dir={out}', '--harm_threshold=-0.1'], 'harm_threshold'),
    'val_fraction_1': (['--input={in}/*', '--out_dir={out}', '--val_fraction=1.0'], 'val_fraction'),
    'num_workers_negative': (['--input={in}/*', '--out_dir={out}', '--num_workers=-2'], 'num_workers'),
    'num_workers_not_a_number': (['--input={in}/*', '--out_dir={out}', '--num_workers=two'], 'num_workers'),
    'engine_unknown': (['--input={in}/*', '--out_dir={out}', '--engine=spark'], 'engine'),
    'language_unknown': (['--input={in}/*', '--out_dir={out}', '--languages=en,xx'], 'xx'),
    'same_output_names': (['--input={in}/*,{tmp}/other/*', '--out_dir={out}'], 'output names'),
    'old_mode_key': (['--mode=bench'], 'mode'),
}


@pytest.fixture(scope='module')
def bad_input_dir(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bad_inputs')
    (tmp / 'in').mkdir()
    (tmp / 'other').mkdir()
    one = warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz'), 1, 4)
    (tmp / 'in' / 'a.warc.wet.gz').write_bytes(one)
    (tmp / 'other' / 'a.warc.wet').write_bytes(gzip.decompress(one))  # same output name as in/a.warc.wet.gz
    (tmp / 'garbage.ftz').write_bytes(b'not a model at all\n')
    return tmp


@pytest.mark.parametrize('name', sorted(BAD_INPUTS))
def test_bad_input_refused(name, bad_input_dir):
    args, word = BAD_INPUTS[name]
    tmp = bad_input_dir
    fill = dict(tmp=tmp, out=tmp / 'out', **{'in': tmp / 'in'})
    before = _tree(tmp)
    r = subprocess.run([sys.executable, 'cc_filter.py'] + [a.format(**fill) for a in args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert word.lower() in lines[0].lower(), lines[0]
    assert _tree(tmp) == before  # nothing written, nothing changed (no out/, inputs untouched)


def test_library_refuses_output_over_inputs(crawl, cfg):
    before = _tree(crawl)
    with pytest.raises(ValueError, match='lies inside the input'):
        cc_filter.run_pipeline(str(crawl / '*'), str(crawl), cfg, progress=False)
    assert _tree(crawl) == before

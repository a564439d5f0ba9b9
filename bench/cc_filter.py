"""
bench/cc_filter.py: how fast cc_filter.py's pipeline runs, what a whole crawl would cost, and how it scales.

    python bench/cc_filter.py                 # prints per-stage documents/s per core on the shared WET and WARC,
                                              # the filter funnel and the cost projection (kept in results/cc_filter.md)
    python bench/cc_filter.py --mode=scale --input=... --bench_copies=32 --bench_workers=1,2,4,8,16
                                              # engines x worker counts on replicated input (results/ray_16cores.md)
    python bench/cc_filter.py --mode=train_quality --quality_out=out/cc_quality/quality.bin
                                              # train and evaluate the quality classifier on the shared data

It runs cc_filter.run_pipeline (the same code as the command) and turns its report.json (counts and CPU seconds
per stage) into Markdown tables: documents per CPU-second per stage (= documents/s per core; process_time, so
other users of the machine inflate it far less than wall-clock time) and the projection to 5,000 / 100,000
Common Crawl WET files.

--mode=train_quality: the course trains the quality classifier on pages linked from Wikipedia (positives) vs
random Common Crawl (negatives). Offline we have neither, so the default sources are what the shared data holds:
positives = the one Wikipedia-quality page + the main content (Resiliparse main_content=True) of each English
docs-crawl page; negatives = the one low-quality page + each page's boilerplate (the short navigation/footer
lines that the full extraction has and the main content has not): "edited prose vs boilerplate", a proxy for
wiki-vs-cc. Pass real positives/negatives (any mix of .txt files and WARCs) to train the course's classifier;
the model it writes is cc_filter.py's --quality_model.
"""
import json
import os
import random
import re
import sys
import tempfile
import time

from resiliparse.extract.html2text import extract_plain_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root: cc_filter.py
import cc_filter  # noqa: E402

# the shared data folder (../shared/data beside the checkout; LMSCRATCH_DATA moves it)
A4 = os.path.join(os.path.abspath(os.environ.get('LMSCRATCH_DATA', os.path.join(ROOT, '..', 'shared', 'data'))), 'a4')

# Cost projection. The course's figure: 5,000 WET files are about 375 GB compressed, i.e. ~75 MB per file.
CC_WET_FILE_BYTES = 375e9 / 5000


def throughput(report):
    """Per-stage documents per CPU-second and the projection to 5,000/100,000 files, from a run_pipeline report.
    The projection scales by compressed input bytes: CPU-s per byte here x 75 MB per CC WET file. Our docs pages
    are longer and more often English than random crawl pages, so treat it as an order of magnitude.
    None for the projection when no record was read (an empty input projects nothing)."""
    counts, times, cpu_s, input_bytes = report['counts'], report['stage_cpu_s'], report['cpu_s'], report['input_bytes']
    stages = {}
    for st in ('read', 'extract', 'langid', 'gopher', 'nsfw', 'toxic', 'quality', 'pii', 'tokenize'):
        n_in = counts.get('records', 0) if st == 'read' else counts.get(f'in_{st}', 0)
        if n_in and times.get(st, 0) > 0:
            stages[st] = {'docs': n_in, 'cpu_s': times[st], 'docs_per_core_s': n_in / times[st]}
    out = {'stages': stages, 'cpu_s': cpu_s, 'input_MB': input_bytes / 1e6,
           'pipeline_docs_per_core_s': counts.get('records', 0) / max(cpu_s, 1e-9)}
    if counts.get('records', 0) and input_bytes:
        per_file_core_s = cpu_s / input_bytes * CC_WET_FILE_BYTES
        out.update(core_h_per_cc_wet_file=per_file_core_s / 3600, core_h_5000_files=5000 * per_file_core_s / 3600,
                   core_h_100000_files=100_000 * per_file_core_s / 3600)
    return out


def format_report(report):
    """The report as markdown tables: filter funnel, stage throughput, cost projection."""
    c, tp = report['counts'], throughput(report)
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
    if 'core_h_5000_files' in tp:
        lines += ['', f"Projection (CPU-s per compressed byte here x {CC_WET_FILE_BYTES / 1e6:.0f} MB per CC WET "
                      f"file): {tp['core_h_per_cc_wet_file']:.3f} core-hours per WET file, "
                      f"{tp['core_h_5000_files']:,.0f} core-hours for 5,000 files, "
                      f"{tp['core_h_100000_files']:,.0f} core-hours for 100,000 files"]
    else:
        lines += ['', "Projection: none (no records were read, so there is nothing to scale up)"]
    if 'tokens' in report:
        lines.append(f"tokens: {report['tokens']['train']:,} train, {report['tokens']['val']:,} val (uint16, GPT-2)")
    return '\n'.join(lines)


def bench(cfg, wet, warc):
    """Run the pipeline in this process on the shared WET (everything but HTML extraction) and WARC."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, path in (('WET', wet), ('WARC', warc)):
            results[name] = cc_filter.run_pipeline([path], os.path.join(tmp, name), cfg, num_workers=1)
            print(f"\n## {name}: {path}\n\n{format_report(results[name])}")
    return results


def scale(cfg, src, copies, workers, engines, ray_address=''):
    """Replicate the inputs src into `copies` files (symlinks) and time each engine at each worker count."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, 'in'))
        inputs = []
        for i in range(copies):
            inputs.append(os.path.join(tmp, 'in', f'copy{i:04d}-{os.path.basename(src[i % len(src)])}'))
            os.symlink(os.path.abspath(src[i % len(src)]), inputs[-1])
        for i, eng in enumerate(engines):  # an engine may be listed twice (repeats)
            for w in workers:
                t0 = time.time()  # includes Ray's start-up for a local Ray instance
                r = cc_filter.run_pipeline(inputs, os.path.join(tmp, f'out-{i}-{eng}-{w}'), cfg, engine=eng,
                                           num_workers=w, ray_address=ray_address, progress=False)
                wall, docs = time.time() - t0, r['counts'].get('records', 0)
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
# the quality classifier's training data, split and held-out evaluation (--mode=train_quality)

def chunks(paragraphs, min_words=30, max_words=200):
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


def quality_sources(spec):
    """[(kind, path)] of comma-separated sources 'path' (kind '') or 'main:path' / 'boilerplate:path'."""
    return [tuple(s.split(':', 1)) if s.split(':', 1)[0] in ('main', 'boilerplate') else ('', s)
            for s in map(str.strip, spec.split(',')) if s]


def load_quality_texts(spec, english_only=True, lid_model=None):
    """Examples from comma-separated sources, as a list of (group_key, text); group_key keeps all examples
    of one page on the same side of the train/held-out split, wherever the data folder lives (the page's URL,
    or the example's own text). A source is:
      path.txt               paragraphs (split on blank lines), grouped into ~30-200 word examples
      path.warc[.gz]/.wet    each record's full text, one example per page
      main:path.warc[.gz]    each HTML page's main content (Resiliparse main_content=True), chunked
      boilerplate:path.warc  each HTML page's short non-main lines (navigation, footers), one example per page
    english_only keeps WARC pages that fastText calls English (the pipeline filters on language first)."""
    examples = []
    for kind, path in quality_sources(spec):
        if path.endswith('.txt'):
            paragraphs = [p.strip() for p in re.split(r'\n\s*\n', open(path, encoding='utf-8').read()) if p.strip()]
            examples += [(c, c) for c in chunks(paragraphs)]
            continue
        for url, rtype, body, ctype in cc_filter.iter_records(path):
            text = cc_filter.decode_bytes(body)
            if text is None or (rtype == 'html' and 'html' not in ctype):
                continue
            full = extract_plain_text(text) if rtype == 'html' else text
            if english_only and cc_filter.identify_language(full, lid_model)[0] != 'en':
                continue
            key = url or full
            if kind == 'main':
                main = extract_plain_text(text, main_content=True)
                examples += [(key, c) for c in chunks([p for p in main.splitlines() if p.strip()])]
            elif kind == 'boilerplate':
                main_lines = set(extract_plain_text(text, main_content=True).splitlines())
                boiler = [ln.strip() for ln in full.splitlines()
                          if ln.strip() and ln not in main_lines and len(ln.split()) < 15]
                examples += [(key, ' '.join(boiler))] if boiler else []
            else:
                examples.append((key, full))
    return examples


def train_quality(positives_spec, negatives_spec, out_path, holdout=0.2, epochs=20, max_ratio=4, lid_model=None):
    """The train_quality command: load the sources, split by page hash, train, evaluate on the held-out part."""
    pos, neg = (load_quality_texts(spec, lid_model=lid_model) for spec in (positives_spec, negatives_spec))
    if not (pos and neg):
        raise ValueError(f"need both positives ({len(pos)}) and negatives ({len(neg)}): check the source paths")
    split = lambda ex, held: [t for k, t in ex if cc_filter.is_holdout(k, holdout) == held]
    train_pos, train_neg, test_pos, test_neg = split(pos, False), split(neg, False), split(pos, True), split(neg, True)
    # balance: fastText's softmax learns the class prior, and our default sources are ~40:1 positive; keep at
    # most max_ratio x the smaller class on the training side (a seeded sample)
    rng, n_max = random.Random(0), max_ratio * min(len(train_pos), len(train_neg))
    train_pos = rng.sample(train_pos, n_max) if len(train_pos) > n_max else train_pos
    train_neg = rng.sample(train_neg, n_max) if len(train_neg) > n_max else train_neg
    # held out = never trained on: the same text can come from two pages (a shared footer), drop such repeats
    seen = set(train_pos) | set(train_neg)
    test_pos, test_neg = [t for t in test_pos if t not in seen], [t for t in test_neg if t not in seen]
    t0 = time.time()
    cc_filter.train_quality_classifier(train_pos, train_neg, out_path, epochs=epochs)
    result = {'train_pos': len(train_pos), 'train_neg': len(train_neg), 'train_s': time.time() - t0}
    result.update(cc_filter.evaluate_quality(out_path, test_pos, test_neg))
    result['train_accuracy'] = cc_filter.evaluate_quality(out_path, train_pos, train_neg)['accuracy']
    return result



if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    mode = 'bench' # 'bench' (per-stage throughput, funnel, projection) | 'scale' (engines) | 'train_quality'
    bench_warc = os.path.join(A4, 'docs_crawl.warc.gz') # a WARC for the HTML-extraction stage
    bench_wet = os.path.join(A4, 'docs_crawl.warc.wet.gz') # a WET for everything else
    input = '' # --mode=scale: the files to replicate (a glob); '' = bench_wet
    bench_copies = 32 # --mode=scale: replicate the input into this many files
    bench_workers = '1,2' # --mode=scale: worker counts to time, e.g. '1,2,4,8,16'
    bench_engines = 'local' # --mode=scale: 'local', 'ray' or 'local,ray'
    ray_address = '' # '' = start a local Ray instance; 'auto' = the cluster `ray start` made here
    lid_model = cc_filter.lid_model # fastText language ID
    quality_model = '' # a quality classifier to include in the timing ('' = off)
    quality_positives = f'{A4}/high_quality_wiki_reference.txt,main:{A4}/docs_crawl.warc.gz' # 'wiki' examples
    quality_negatives = f'{A4}/low_quality_cc.txt,boilerplate:{A4}/docs_crawl.warc.gz' # 'cc' examples
    quality_out = 'out/quality/quality.bin' # where --mode=train_quality writes the model
    quality_epochs = 20 # fastText epochs
    quality_holdout = 0.2 # fraction of source documents (by hash) held out for precision/recall
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    cfg = dict(cc_filter.current_config(), lid_model=lid_model, quality_model=quality_model)
    if mode == 'bench':
        bench(cfg, bench_wet, bench_warc)
    elif mode == 'scale':
        src = cc_filter.expand_inputs(input) if input else [bench_wet]
        scale(cfg, src, bench_copies, [int(x) for x in bench_workers.split(',')], bench_engines.split(','),
              ray_address)
    elif mode == 'train_quality':
        sources = [p for spec in (quality_positives, quality_negatives) for _, p in quality_sources(spec)]
        for p in sources:  # the sources exist, and the model overwrites none of them
            if not os.path.isfile(p) or os.path.realpath(p) == os.path.realpath(quality_out):
                sys.exit(f"bench/cc_filter.py: error: source {p!r} is missing or is --quality_out: check the paths")
        result = train_quality(quality_positives, quality_negatives, quality_out, quality_holdout, quality_epochs,
                               lid_model=lid_model)
        print(f"quality classifier written to {quality_out}\n{json.dumps(result, indent=1)}")
    else:
        sys.exit(f"bench/cc_filter.py: error: unknown --mode={mode!r}: 'bench', 'scale' or 'train_quality'")

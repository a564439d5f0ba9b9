"""
bench/cc_filter.py: how fast cc_filter.py's pipeline runs, what a whole crawl would cost, and how it scales.

    python bench/cc_filter.py                 # per-stage documents/s per core on the shared WET and WARC,
                                              # the filter funnel and the cost projection (results/cc_filter.md)
    python bench/cc_filter.py --mode=scale --input=... --bench_copies=32 --bench_workers=1,2,4,8,16
                                              # engines x worker counts on replicated input (results/ray_16cores.md)

It runs cc_filter.run_pipeline (the same code as the command) and turns its report.json (counts and CPU seconds
per stage) into Markdown tables: documents per CPU-second per stage (= documents/s per core; process_time, so
other users of the machine inflate it far less than wall-clock time) and the projection to 5,000 / 100,000
Common Crawl WET files.
"""
import os
import sys
import tempfile
import time

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


if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    mode = 'bench' # 'bench' (per-stage throughput, funnel, projection) | 'scale' (engines x worker counts)
    bench_warc = os.path.join(A4, 'docs_crawl.warc.gz') # a WARC for the HTML-extraction stage
    bench_wet = os.path.join(A4, 'docs_crawl.warc.wet.gz') # a WET for everything else
    input = '' # --mode=scale: the files to replicate (a glob); '' = bench_wet
    bench_copies = 32 # --mode=scale: replicate the input into this many files
    bench_workers = '1,2' # --mode=scale: worker counts to time, e.g. '1,2,4,8,16'
    bench_engines = 'local' # --mode=scale: 'local', 'ray' or 'local,ray'
    ray_address = '' # '' = start a local Ray instance; 'auto' = the cluster `ray start` made here
    lid_model = cc_filter.lid_model # fastText language ID
    quality_model = '' # a quality classifier to include in the timing ('' = off)
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(ROOT, 'configurator.py')).read())
    cfg = dict(cc_filter.current_config(), lid_model=lid_model, quality_model=quality_model)
    if mode == 'bench':
        bench(cfg, bench_wet, bench_warc)
    elif mode == 'scale':
        src = cc_filter.expand_inputs(input) if input else [bench_wet]
        scale(cfg, src, bench_copies, [int(x) for x in bench_workers.split(',')], bench_engines.split(','),
              ray_address)
    else:
        sys.exit(f"bench/cc_filter.py: error: unknown --mode={mode!r}: 'bench' or 'scale'")

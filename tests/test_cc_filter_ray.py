"""
Tests for cc_filter.py's Ray engine (--engine=ray), on a local Ray instance with 2 CPUs started once for the module.

    python -m pytest tests/test_cc_filter_ray.py -v

Same per-file function as the local engine, so the outputs must be byte-identical; plus resume, retries,
corrupt input, and the error when Ray is missing (that one runs without Ray).
"""
import gzip
import io
import json
import os
import sys

import pytest
from fastwarc.warc import ArchiveIterator

import cc_filter


def warc_slice(path, start, stop):
    """Records [start, stop) of a gzipped WARC/WET (record 0 is warcinfo) as bytes: whole gzip members."""
    data = open(path, 'rb').read()
    pos = [r.stream_pos for r in ArchiveIterator(io.BytesIO(data), parse_http=False)] + [len(data)]
    return data[pos[start]:pos[stop]]


def _outputs(out_dir):
    out = {}
    for sub in ('docs', 'tokens'):
        for name in sorted(os.listdir(os.path.join(out_dir, sub))):
            out[f'{sub}/{name}'] = open(os.path.join(out_dir, sub, name), 'rb').read()
    for name in ('train.bin', 'val.bin', 'meta.json'):
        out[name] = open(os.path.join(out_dir, name), 'rb').read()
    return out


def test_clear_error_without_ray(monkeypatch, tmp_path, data_dir):  # data_dir: the default language-ID model
    monkeypatch.setitem(sys.modules, 'ray', None)  # makes `import ray` fail as if it were not installed
    (tmp_path / 'x.warc.wet').write_bytes(b'')
    with pytest.raises(SystemExit, match=r"(?s)--engine=ray needs Ray.*pip install"):
        cc_filter.run_pipeline(str(tmp_path / '*.wet'), str(tmp_path / 'out'), engine='ray', progress=False)


@pytest.fixture(scope='module')
def ray_local():
    """One local Ray instance for the whole module (starting Ray costs seconds)."""
    ray = pytest.importorskip('ray')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope='module')
def crawl(data_dir, tmp_path_factory):
    """Four small inputs: three WET slices and one WARC slice of the shared crawl."""
    d = tmp_path_factory.mktemp('crawl')
    wet = os.path.join(data_dir, 'a4', 'docs_crawl.warc.wet.gz')
    for i, (a, b) in enumerate([(1, 26), (26, 51), (51, 76)]):
        (d / f'part{i}.warc.wet.gz').write_bytes(warc_slice(wet, a, b))
    (d / 'part3.warc.gz').write_bytes(warc_slice(os.path.join(data_dir, 'a4', 'docs_crawl.warc.gz'), 1, 16))
    return d


@pytest.fixture(scope='module')
def cfg(data_dir):
    return dict(cc_filter.current_config(), lid_model=os.path.join(data_dir, 'a4', 'lid.176.ftz'))


@pytest.fixture(scope='module')
def local_out(crawl, cfg, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('local'))
    report = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, engine='local', num_workers=2, progress=False)
    return out, report


def test_ray_equals_local(ray_local, crawl, cfg, local_out, tmp_path):
    # a model loaded in the driver must not get in the way (it cannot be pickled into the tasks)
    assert cc_filter.identify_language('hello world', cfg['lid_model'])[0] == 'en'
    out = str(tmp_path / 'ray')
    report = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, engine='ray', progress=False)
    assert report['processed'] == 4 and not report['failed']
    assert report['counts'] == local_out[1]['counts']  # counts aggregated from the tasks
    assert _outputs(out) == _outputs(local_out[0])  # byte for byte


def test_ray_retries_a_failed_task(ray_local, crawl, cfg, local_out, tmp_path):
    marker = str(tmp_path / 'failed_once')
    out = str(tmp_path / 'ray')
    report = cc_filter.run_pipeline(str(crawl / '*'), out, dict(cfg, fail_once=marker), engine='ray',
                                    ray_max_retries=2, progress=False)
    assert os.path.exists(marker)  # one task did fail...
    assert not report['failed'] and report['processed'] == 4  # ...and Ray's retry finished it
    assert _outputs(out) == _outputs(local_out[0])


def test_ray_resume_after_failed_run(ray_local, crawl, cfg, local_out, tmp_path):
    out = str(tmp_path / 'ray')
    # no retries: the failing file is reported by name, the others finish
    report = cc_filter.run_pipeline(str(crawl / '*'), out, dict(cfg, fail_once=str(tmp_path / 'm')), engine='ray',
                                    ray_max_retries=0, progress=False)
    assert len(report['failed']) == 1 and report['processed'] == 3
    (failed_path, err), = report['failed'].items()
    assert 'injected failure' in err
    stem = cc_filter.output_stem(failed_path)
    assert not os.path.exists(os.path.join(out, 'stats', stem + '.json'))
    # leave a half-written temp file behind, as a killed task would
    open(os.path.join(out, 'docs', f'{stem}.jsonl.tmp.999999'), 'w').write('{"half": ')
    again = cc_filter.run_pipeline(str(crawl / '*'), out, cfg, engine='ray', progress=False)
    assert again['skipped'] == 3 and again['processed'] == 1 and not again['failed']
    assert again['counts'] == local_out[1]['counts']  # nothing lost, nothing counted twice
    assert _outputs(out) == _outputs(local_out[0])
    assert not any('.tmp.' in f for f in os.listdir(os.path.join(out, 'docs')))


def test_ray_corrupt_input_counted(ray_local, crawl, cfg, data_dir, tmp_path):
    d = tmp_path / 'in'
    d.mkdir()
    good = (crawl / 'part0.warc.wet.gz').read_bytes()
    (d / 'good.warc.wet.gz').write_bytes(good)
    (d / 'truncated.warc.wet.gz').write_bytes(good[:len(good) // 2])
    (d / 'junk.warc.gz').write_bytes(gzip.compress(b'this is not a WARC file\n' * 100))
    out = str(tmp_path / 'out')
    report = cc_filter.run_pipeline(str(d / '*'), out, cfg, engine='ray', progress=False)
    assert not report['failed'] and report['processed'] == 3
    stats = {s: json.load(open(os.path.join(out, 'stats', f'{s}.json')))['counts']
             for s in ('good.warc.wet', 'truncated.warc.wet', 'junk.warc')}
    stats = {k.split('.')[0]: v for k, v in stats.items()}
    assert stats['junk']['bad_files'] == 1 and stats['truncated']['truncated_records'] == 1
    assert 0 < stats['truncated']['records'] < stats['good']['records'] == 25
    assert report['counts']['bad_files'] == 1 and report['counts']['truncated_records'] == 1

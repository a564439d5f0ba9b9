"""
Tests of speedrun.sh: the whole chain at its --tiny size (seconds per stage), its evaluation (test and gen splits,
the base model k-shot, GSM8K, 95% intervals in the report), then resume, refusal of a run folder made with another
configuration, a failing stage, and a missing crawl.

    python -m pytest tests/test_speedrun.py -q --durations=5

One full chain runs once per module (about a minute and a half on 2 busy cores); the other tests reuse its folder.
The crawl is the first 150 records of the shared WARC (each record of a .warc.gz is its own gzip member, so the
first members form a valid, smaller WARC).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ['data', 'tokenizer', 'pretrain', 'sft', 'grpo', 'eval', 'report']


def speedrun(*args, data_dir, timeout=600):
    env = dict(os.environ, LMSCRATCH_DATA=data_dir)
    return subprocess.run(['bash', os.path.join(ROOT, 'speedrun.sh'), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def first_records(src, dst, n):
    """Copy the first n gzip members (WARC records) of src to dst."""
    raw = open(src, 'rb').read()
    pos, parts = 0, []
    while pos < len(raw) and len(parts) < n:
        d = zlib.decompressobj(31)  # 31: a gzip header
        d.decompress(raw[pos:])
        used = len(raw) - pos - len(d.unused_data)
        parts.append(raw[pos:pos + used])
        pos += used
    with open(dst, 'wb') as f:
        f.write(b''.join(parts))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp('speedrun')
    crawl = str(tmp / 'small.warc.gz')
    first_records(os.path.join(data_dir, 'a4', 'docs_crawl.warc.gz'), crawl, 150)
    run_dir = str(tmp / 'run')
    args = ('--tiny', f'--run_dir={run_dir}', f'--crawl={crawl}')
    # in two calls, as the GPU run is driven: --until stops after a stage, the next call goes on from there
    first = speedrun(*args, '--until=tokenizer', data_dir=data_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert not os.path.exists(os.path.join(run_dir, 'pretrain')), "--until=tokenizer ran past the tokenizer"
    second = speedrun(*args, data_dir=data_dir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {'dir': run_dir, 'args': args, 'crawl': crawl, 'tmp': tmp, 'out': second.stdout, 'data_dir': data_dir}


def test_every_stage_produced_its_outputs(tiny_run):
    d = tiny_run['dir']
    for st in STAGES:
        assert os.path.isfile(os.path.join(d, st, 'DONE')), st
        events = [json.loads(line) for line in open(os.path.join(d, 'logs', f'{st}.jsonl'))]
        assert events[0]['event'] == 'start' and events[-1]['event'] == 'done', st
        cmds = [e for e in events if e['event'] == 'command']
        assert cmds and all(e['rc'] == 0 for e in cmds), st
    assert "stage 'data' already done" in tiny_run['out']  # the second call skipped what the first one did
    expected = ['data/cc/report.json', 'data/web.txt', 'data/dedup_stats.json', 'data/task/train.jsonl',
                'data/task/val.jsonl', 'data/task/test.jsonl', 'data/task/gen.jsonl', 'tokenizer/tokenizer/vocab.json',
                'tokenizer/tokenizer/merges.txt',
                'tokenizer/tokens/train.bin', 'tokenizer/tokens/val.bin', 'tokenizer/tokens/meta.json',
                'pretrain/out/ckpt.pt', 'pretrain/out/summary.json', 'pretrain/out/loss.png', 'sft/out/ckpt.pt',
                'grpo/out/ckpt.pt', 'grpo/out/grpo_log.jsonl', 'grpo/lr_sweep.json', 'eval/base/eval_test.jsonl', 'eval/sft/eval_test.jsonl',
                'eval/grpo/eval_test.jsonl', 'eval/grpo/eval_metrics.jsonl', 'eval/base/eval_gen.jsonl',
                'eval/sft/eval_gen.jsonl', 'eval/grpo/eval_gen.jsonl', 'eval/base_fewshot/eval_metrics.jsonl',
                'report.md', 'config.env']
    for rel in expected:
        assert os.path.getsize(os.path.join(d, rel)) > 0, rel
    # the token folder follows INTERFACES.md, and its tokenizer is the one bpe.py trained here
    meta = json.load(open(os.path.join(d, 'tokenizer/tokens/meta.json')))
    assert meta['vocab_size'] == 512 and meta['dtype'] == 'uint16' and meta['eot_id'] is not None
    assert os.path.samefile(meta['tokenizer_dir'], os.path.join(d, 'tokenizer/tokenizer'))
    stats = json.load(open(os.path.join(d, 'data/cc/report.json')))['counts']
    assert stats['records'] == 149 and 0 < stats['kept'] < stats['records']  # 150 records = warcinfo + 149 pages
    summary = json.load(open(os.path.join(d, 'pretrain/out/summary.json')))
    assert summary['iters'] == 16 and summary['val_bpb'] > 0
    evals = [r for r in map(json.loads, open(os.path.join(d, 'pretrain/out/log.jsonl'))) if 'val_loss' in r]
    assert len(evals) == 2  # periodic validation (every 8 of 16 iterations)


def test_eval_covers_test_gen_gsm8k_and_the_base_model_k_shot(tiny_run):
    """Issue 31: base, SFT and GRPO on test and gen (each with its 95% interval), the base model also k-shot (the
    tiny profile's one shot), GSM8K through sft.py's own gsm8k split when the shared file is there."""
    d = tiny_run['dir']
    for m in ('base', 'sft', 'grpo', 'base_fewshot'):
        rows = {r['split']: r for r in map(json.loads, open(os.path.join(d, 'eval', m, 'eval_metrics.jsonl')))}
        assert {'test', 'gen'} <= set(rows), m
        for r in rows.values():
            lo, hi = r['ci95']
            assert lo - 1e-9 <= r['accuracy'] <= hi + 1e-9 or r['n'] == 0, (m, r)
        assert rows['test']['n'] == rows['gen']['n'] == 16
        assert rows['test']['prompt'] == '1-shot' if m == 'base_fewshot' else rows['test']['prompt'].endswith(
            'data/template.txt')
    assert open(os.path.join(d, 'eval/fewshot_k')).read().strip() == '1'
    cmds = [e['cmd'] for e in map(json.loads, open(os.path.join(d, 'logs/eval.jsonl'))) if e['event'] == 'command']
    assert any('--fewshot=1' in c and 'base_fewshot' in c for c in cmds)
    if os.path.exists(os.path.join(tiny_run['data_dir'], 'a5/gsm8k/test.jsonl')):  # the tiny profile: GRPO only
        gsm_cmds = [c for c in cmds if ',gsm8k' in c]
        assert len(gsm_cmds) == 1 and '/eval/grpo ' in gsm_cmds[0], cmds
        rows = [r for r in map(json.loads, open(os.path.join(d, 'eval/grpo/eval_metrics.jsonl')))]
        assert [r['split'] for r in rows] == ['test', 'gen', 'gsm8k']


def test_fewshot_takes_the_most_shots_that_fit_and_the_report_says_what_was_skipped(tiny_run):
    """bench/speedrun.py fewshot: k falls to what the context holds (0 = none); a run without k-shot or GSM8K
    results gets a note instead of a number."""
    d, glue = tiny_run['dir'], os.path.join(ROOT, 'bench', 'speedrun.py')
    for ctx, want in [('2048', '3'), ('64', '0')]:
        out = str(tiny_run['tmp'] / f'k_{ctx}')
        r = subprocess.run([sys.executable, glue, 'fewshot', os.path.join(d, 'tokenizer/tokenizer'), ctx, '16', '3',
                            os.path.join(d, 'data/task'), out], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and open(out).read().strip() == want, r.stdout + r.stderr
    copy = str(tiny_run['tmp'] / 'no_fewshot_no_gsm8k')
    shutil.copytree(d, copy)
    shutil.rmtree(os.path.join(copy, 'eval/base_fewshot'))
    open(os.path.join(copy, 'eval/fewshot_k'), 'w').write('0\n')
    path = os.path.join(copy, 'eval/grpo/eval_metrics.jsonl')
    rows = [r for r in map(json.loads, open(path)) if r['split'] != 'gsm8k']
    open(path, 'w').writelines(json.dumps(r) + '\n' for r in rows)
    r = subprocess.run([sys.executable, glue, 'report', copy], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = open(os.path.join(copy, 'report.md')).read().split('## 6. Evaluation')[1].split('## 7.')[0]
    assert 'skipped: not one shot fits the 256-token context' in ev and '0-shot |' not in ev
    assert 'GSM8K: not evaluated in this run' in ev and 'gsm8k accuracy' not in ev


def test_report_has_every_section(tiny_run):
    md = open(os.path.join(tiny_run['dir'], 'report.md')).read()
    for section in ['## Wall-clock per stage', '## 1. Data', '## 2. Tokenizer', '## 3. Pre-training', '## 4. SFT',
                    '## 5. GRPO', '## 6. Evaluation', '## 7. Commands and versions']:
        assert section in md, section
    for needle in ['language', 'gopher', 'exact line dedup', 'MinHash', 'pycode', 'bytes / token', 'tokens/s', 'MFU',
                   'bits per byte', 'task accuracy', 'format rate', 'GSM8K', 'Device:', 'torch']:
        assert needle in md, needle
    for st in STAGES[:-1]:
        assert f'| {st} |' in md, st
    # every accuracy of the evaluation names its split and has its 95% interval
    ev = md.split('## 6. Evaluation')[1].split('## 7.')[0]
    for needle in ['test accuracy', 'gen accuracy', '1-shot', 'r1_zero', '95% interval', 'GSM8K']:
        assert needle in ev, needle
    acc_rows = [ln for ln in ev.splitlines() if re.search(r'\*\*[0-9.]+%\*\*', ln)]
    assert len(acc_rows) >= 8, ev  # base r1_zero, base 1-shot, SFT, GRPO on test and on gen
    assert all(re.search(r'\| [0-9.]+-[0-9.]+% \|', ln) for ln in acc_rows), acc_rows
    for png in ['pretrain/out/loss.png', 'report/sft_curves.png', 'report/grpo_curves.png']:
        assert f']({png})' in md and os.path.exists(os.path.join(tiny_run['dir'], png)), png


def test_resume_skips_done_stages_and_redoes_a_half_done_one(tiny_run):
    d = tiny_run['dir']
    mtime = os.path.getmtime(os.path.join(d, 'pretrain/out/ckpt.pt'))
    # an interrupted report stage: its folder exists, without DONE, with a half-written file in it
    os.remove(os.path.join(d, 'report', 'DONE'))
    open(os.path.join(d, 'report', 'half-written.tmp'), 'w').write('x')
    r = speedrun(*tiny_run['args'], data_dir=tiny_run['data_dir'])
    assert r.returncode == 0, r.stderr[-3000:]
    for st in STAGES[:-1]:
        assert f"stage '{st}' already done" in r.stdout, st
    assert "stage 'report' was interrupted" in r.stdout
    assert os.path.isfile(os.path.join(d, 'report', 'DONE'))
    assert not os.path.exists(os.path.join(d, 'report', 'half-written.tmp'))
    assert os.path.getmtime(os.path.join(d, 'pretrain/out/ckpt.pt')) == mtime


def test_refuses_a_run_folder_of_another_configuration(tiny_run):
    before = open(os.path.join(tiny_run['dir'], 'config.env')).read()
    r = speedrun('--cpu', f"--run_dir={tiny_run['dir']}", f"--crawl={tiny_run['crawl']}",
                 data_dir=tiny_run['data_dir'])
    assert r.returncode == 2
    assert 'another configuration' in r.stderr and '--fresh' in r.stderr and 'PROFILE=cpu' in r.stderr
    assert open(os.path.join(tiny_run['dir'], 'config.env')).read() == before
    # a folder that is not a speedrun's is never wiped by --fresh
    other = tiny_run['tmp'] / 'not_a_run'
    other.mkdir()
    (other / 'precious.txt').write_text('keep me')
    r = speedrun('--tiny', f'--run_dir={other}', f"--crawl={tiny_run['crawl']}", '--fresh',
                 data_dir=tiny_run['data_dir'])
    assert r.returncode == 2 and 'not wiping' in r.stderr and (other / 'precious.txt').exists()


def test_a_failing_stage_stops_the_run_and_names_its_log(tiny_run):
    # a copy of the finished run whose pre-trained checkpoint is broken and whose SFT stage has to run again
    d = str(tiny_run['tmp'] / 'broken')
    shutil.copytree(tiny_run['dir'], d)
    shutil.rmtree(os.path.join(d, 'sft'))
    with open(os.path.join(d, 'pretrain/out/ckpt.pt'), 'wb') as f:
        f.write(b'not a checkpoint')
    r = speedrun('--tiny', f'--run_dir={d}', f"--crawl={tiny_run['crawl']}", data_dir=tiny_run['data_dir'])
    assert r.returncode == 1
    assert "stage 'sft' FAILED" in r.stderr and os.path.join(d, 'logs', 'sft.log') in r.stderr
    assert not os.path.exists(os.path.join(d, 'sft', 'DONE'))
    assert all(os.path.exists(os.path.join(d, st, 'DONE')) for st in ('data', 'tokenizer', 'pretrain'))
    events = [json.loads(line) for line in open(os.path.join(d, 'logs', 'sft.jsonl'))]
    assert events[-1]['event'] == 'failed' and events[-2]['rc'] != 0


def test_grpo_lr_is_chosen_on_validation_and_its_run_becomes_grpo_out(tiny_run, tmp_path):
    """Issue 31: one GRPO run per rate; the best final VALIDATION accuracy picks one (the first of a tie), its folder
    becomes grpo/out, lr_sweep.json keeps every rate; a run without a validation evaluation is a one-line error."""
    sweep = json.load(open(os.path.join(tiny_run['dir'], 'grpo', 'lr_sweep.json')))
    assert [r['lr'] for r in sweep['runs']] == ['3e-4', '1e-3'] and sweep['chosen'] in ('3e-4', '1e-3')
    assert f"chose lr **{sweep['chosen']}**" in open(os.path.join(tiny_run['dir'], 'report.md')).read()
    for lr, accs in (('1e-4', [0.5, 0.2]), ('3e-4', [0.1, 0.4]), ('1e-3', [0.3, 0.4])):  # the last evaluation counts
        os.makedirs(tmp_path / f'lr{lr}')
        rows = [dict(step=10 * i, accuracy=a, ci95=[0, 1], n=50) for i, a in enumerate(accs)] + [dict(step=9)]
        (tmp_path / f'lr{lr}' / 'grpo_log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    r = subprocess.run([sys.executable, 'bench/speedrun.py', 'pick_lr', str(tmp_path), '1e-4 3e-4 1e-3'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sweep = json.load(open(tmp_path / 'lr_sweep.json'))
    assert sweep['chosen'] == '3e-4' and [x['steps'] for x in sweep['runs']] == [10, 10, 10]
    assert sorted(os.listdir(tmp_path)) == ['lr1e-3', 'lr1e-4', 'lr_sweep.json', 'out']
    os.makedirs(tmp_path / 'e' / 'lr1e-4')
    (tmp_path / 'e' / 'lr1e-4' / 'grpo_log.jsonl').write_text('{"step": 1, "loss": 0.5}\n')
    r = subprocess.run([sys.executable, 'bench/speedrun.py', 'pick_lr', str(tmp_path / 'e'), '1e-4'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and 'no validation evaluation' in r.stderr and r.stderr.count('\n') == 1
    assert os.listdir(tmp_path / 'e') == ['lr1e-4']


def test_a_missing_or_empty_crawl_is_a_clear_error(tmp_path, data_dir):
    r = speedrun('--tiny', f'--run_dir={tmp_path / "a"}', f'--crawl={tmp_path}/nothing/*.warc.gz', data_dir=data_dir)
    assert r.returncode == 2 and 'matches no file' in r.stderr
    empty = tmp_path / 'empty.warc.gz'
    empty.write_bytes(b'')
    r = speedrun('--tiny', f'--run_dir={tmp_path / "b"}', f'--crawl={empty}', data_dir=data_dir)
    assert r.returncode == 2 and 'is empty' in r.stderr
    r = speedrun('--tiny', '--until=nonsense', f'--run_dir={tmp_path / "c"}', data_dir=data_dir)
    assert r.returncode == 2 and '--until=nonsense' in r.stderr


@pytest.mark.parametrize('args, needle', [
    (['--tiny', '--until=nonsense'], '--until=nonsense'),
    (['--tiny', '--nproc=0'], '--nproc=0'),
    (['--gpu', '--nproc=3'], 'does not divide'),
    (['--tiny', '--bogus'], "unknown option '--bogus'"),
    (['--tiny', '--crawl=no/such/*.warc.gz'], 'matches no file'),
])
def test_bad_options_are_one_line_errors_that_write_nothing(tmp_path, data_dir, args, needle):
    """Refused before any stage: exit code 2, one line on stderr, no traceback, no run folder made."""
    run_dir = tmp_path / 'run'
    r = speedrun(*args, f'--run_dir={run_dir}', data_dir=data_dir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert 'Traceback' not in r.stderr and not run_dir.exists()


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, data_dir):
    crawl = tmp_path / 'c.warc.gz'
    crawl.write_bytes(b'x')
    other = tmp_path / 'mine'
    other.mkdir()
    (other / 'notes.txt').write_text('keep me')
    r = speedrun('--tiny', f'--run_dir={other}', f'--crawl={crawl}', data_dir=data_dir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and 'no config.env' in lines[0], r.stderr
    assert os.listdir(other) == ['notes.txt'] and (other / 'notes.txt').read_text() == 'keep me'


@pytest.mark.parametrize('sub', ['', 'below'])
def test_a_run_dir_that_is_a_file_is_a_one_line_error(tmp_path, data_dir, sub):
    """--run_dir naming a file (or a folder below a file): exit code 2, one line, the file untouched."""
    crawl = tmp_path / 'c.warc.gz'
    crawl.write_bytes(b'x')
    f = tmp_path / 'afile'
    f.write_text('keep me')
    r = speedrun('--tiny', f'--run_dir={f / sub if sub else f}', f'--crawl={crawl}', data_dir=data_dir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and '--run_dir=' in lines[0], r.stderr
    assert 'Traceback' not in r.stderr and f.read_text() == 'keep me'

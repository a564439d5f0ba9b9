"""
Tests for configurator.py: config files, typed --key=value overrides, unknown keys, --help.
    python -m pytest tests/test_configurator.py -v
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = '''
import os
batch_size = 64 # examples per step
learning_rate = 6e-4 # peak lr
compile = True # use torch.compile
device = 'cpu' # cpu or cuda
betas = (0.9, 0.95)
init_from = None # anything goes
LOG2E = 1.4427 # a constant: not a key
NAMES = ('a', 'b')
exec(open(os.path.join({root!r}, 'configurator.py')).read())
print('RESULT', repr((batch_size, learning_rate, compile, device, betas, init_from)))
'''


def run(tmp_path, *args):
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT.format(root=ROOT))
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path)
    return p.returncode, p.stdout, p.stderr


def result(out):
    line = [l for l in out.splitlines() if l.startswith('RESULT')][0]
    return eval(line[len('RESULT '):])


def test_defaults_and_overrides(tmp_path):
    rc, out, err = run(tmp_path)
    assert rc == 0, err
    assert result(out) == (64, 6e-4, True, 'cpu', (0.9, 0.95), None)
    rc, out, err = run(tmp_path, '--batch_size=8', '--learning_rate=1', '--compile=False',
                       '--device=cuda', '--betas=[0.8,0.9]', '--init_from=3')
    assert rc == 0, err
    assert result(out) == (8, 1.0, False, 'cuda', (0.8, 0.9), 3)


def test_config_file(tmp_path):
    (tmp_path / 'cfg.py').write_text('batch_size = 16\nlearning_rate = 1e-3\n')
    rc, out, err = run(tmp_path, 'cfg.py', '--batch_size=4')
    assert rc == 0, err
    assert result(out)[:2] == (4, 1e-3)  # later arguments win


def test_type_mismatch_is_refused(tmp_path):
    rc, out, err = run(tmp_path, '--batch_size=0.5')
    assert rc != 0
    assert 'batch_size' in err and 'int' in err and '0.5' in err
    rc, out, err = run(tmp_path, '--compile=1')
    assert rc != 0 and 'bool' in err


def test_unknown_key_lists_close_matches(tmp_path):
    rc, out, err = run(tmp_path, '--batch_sise=8')
    assert rc != 0 and 'batch_sise' in err and 'batch_size' in err
    (tmp_path / 'bad.py').write_text('learning_rte = 1e-3\n')
    rc, out, err = run(tmp_path, 'bad.py')
    assert rc != 0 and 'learning_rate' in err


def test_missing_config_file_and_bad_syntax(tmp_path):
    rc, out, err = run(tmp_path, 'nope.py')
    assert rc != 0 and 'nope.py' in err
    rc, out, err = run(tmp_path, '--batch_size')
    assert rc != 0 and '--key=value' in err
    # a config file that is not valid Python: its name and line, in one line, exit status 2
    (tmp_path / 'broken.py').write_text('batch_size = 16\nlearning_rate = = 1e-3\n')
    rc, out, err = run(tmp_path, 'broken.py')
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'broken.py, line 2' in err and 'Traceback' not in err


def test_help_lists_keys_with_comments(tmp_path):
    rc, out, err = run(tmp_path, '--help')
    assert rc == 0
    assert 'batch_size' in out and 'examples per step' in out and 'RESULT' not in out


def test_import_does_not_parse_argv(tmp_path):
    # imported as a module, the script keeps its defaults whatever sys.argv holds
    (tmp_path / 'mod.py').write_text(SCRIPT.format(root=ROOT))
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); sys.argv=['x','--batch_size=1']; import mod; print(mod.batch_size)"
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith('64')


def test_constants_are_not_keys(tmp_path):
    # configurator.py runs at the end of a script and sees every global: only lowercase names are keys
    rc, out, err = run(tmp_path, '--help')
    assert rc == 0 and 'batch_size' in out and 'LOG2E' not in out and 'NAMES' not in out
    rc, out, err = run(tmp_path, '--LOG2E=2.0')
    assert rc == 2 and 'LOG2E' in err and len(err.strip().splitlines()) == 1
    (tmp_path / 'const.py').write_text('NAMES = ("c",)\n')
    rc, out, err = run(tmp_path, 'const.py')
    assert rc == 2 and 'NAMES' in err
    (tmp_path / 'ok.py').write_text('batch_size = 2\n')  # the script's constants, seen by the file, stay untouched
    rc, out, err = run(tmp_path, 'ok.py')
    assert rc == 0 and result(out)[0] == 2, err


def test_config_file_that_raises_or_is_a_folder(tmp_path):
    # a config file that fails while running, or a folder given for a file: one line naming it, exit status 2
    (tmp_path / 'undef.py').write_text('batch_size = 16\nlearning_rate = undefined_name\n')
    rc, out, err = run(tmp_path, 'undef.py')
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    assert 'undef.py, line 2' in err and 'NameError' in err and 'undefined_name' in err
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'configs' / 'small.py').write_text('batch_size = 2\n')
    rc, out, err = run(tmp_path, 'configs')
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    assert 'folder' in err and 'small.py' in err

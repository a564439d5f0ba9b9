"""
configurator.py: the nanoGPT-style "poor man's configurator", with type checks.

A script defines its configuration as plain module globals, then runs

    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

which, when the script is the program being run (`__name__ == "__main__"`), reads sys.argv:

    python train.py config/a1.py --batch_size=32 --compile=False

- An argument without `--` is a config file: plain Python, executed in the script's globals.
  It may only assign keys that already exist (typos are caught the same way as on the command line).
- `--key=value` overrides an existing global. The value goes through `ast.literal_eval`
  (so `--lr=3e-4`, `--compile=False`, `--betas=(0.9,0.95)` work); if that fails it is taken as a string.
  The new value must have the type of the default (an int is accepted where a float is expected;
  a default of None accepts anything); otherwise we stop with a message naming key, type and value.
- An unknown key is an error that lists the closest existing keys.
- `--help` prints every key, its default and the comment written next to it in the script.

When the script is imported as a library (tests, bench scripts) nothing is parsed:
the globals keep their defaults and the caller passes its own values to the script's functions.

Why exec and not argparse: every config key is a global defined once, next to its comment, at the
top of the script; there is no second list of options to keep in sync. (Idea and name from nanoGPT.)
"""
import ast as _ast
import builtins as _builtins  # the script may have a config key named `compile`
import difflib as _difflib
import os as _os
import signal as _signal
import sys as _sys

# The config keys are the script's lowercase globals of simple types that do not start with '_'. This file runs at
# the END of a script (under `if __name__ == '__main__':`), so it sees every global: UPPERCASE names are constants
# (ROOT, LOG2E, tables of names), never keys, and neither are modules, functions and classes.
_CONFIG_TYPES = (int, float, bool, str, tuple, list, dict, type(None))
_config_keys = [k for k, v in list(globals().items())
                if k.islower() and not k.startswith('_') and isinstance(v, _CONFIG_TYPES)]

def _config_fail(msg):
    print(f"config error: {msg}", file=_sys.stderr)
    _sys.exit(2)

def _config_unknown(key):
    close = _difflib.get_close_matches(key, _config_keys, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run with --help to list every key."
    _config_fail(f"unknown config key '{key}'.{hint}")

def _config_cast(key, value):
    """Convert value to the type of the default of key, or stop with a clear message."""
    default = globals()[key]
    if default is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:  # --lr=1 means 1.0
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    _config_fail(f"--{key} expects {type(default).__name__} (default {default!r}), "
                 f"got {type(value).__name__} {value!r}")

def _config_help():
    # Show each key with its default and the comment next to its definition in the script.
    if hasattr(_signal, 'SIGPIPE'):  # `--help | head` ends quietly, without a BrokenPipeError traceback
        _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    comments = {}
    script = globals().get('__file__')
    if script and _os.path.exists(script):
        for line in open(script, encoding='utf-8'):
            name, eq, rest = line.partition('=')
            name = name.strip()
            if eq and name in _config_keys and '#' in rest and name not in comments:
                comments[name] = rest.split('#', 1)[1].strip()
    print(f"usage: python {_os.path.basename(script or 'script.py')} [config_file.py ...] [--key=value ...]\n")
    width = max((len(k) for k in _config_keys), default=0)
    for k in _config_keys:
        print(f"  --{k:<{width}} = {globals()[k]!r:<24} {comments.get(k, '')}")
    _sys.exit(0)

if __name__ == '__main__':
    for _arg in _sys.argv[1:]:
        if _arg in ('-h', '--help'):
            _config_help()
        elif not _arg.startswith('--'):
            # a config file: look relative to the current directory, then to the script's directory
            _path = _arg
            if not _os.path.exists(_path) and globals().get('__file__'):
                _path = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), _arg)
            if not _os.path.exists(_path):
                _config_fail(f"config file '{_arg}' not found (looked in the current directory and next to the script)")
            if _os.path.isdir(_path):  # `python train.py config`: name the config files it holds
                _config_fail(f"'{_arg}' is a folder: name one of its files ({', '.join(sorted(_os.listdir(_path)))})")
            _before = {k: globals()[k] for k in _config_keys}
            _file_globals = dict(globals())
            try:  # compiled under its own name, so that an error points at the config file and line, not <string>
                exec(_builtins.compile(open(_path, encoding='utf-8').read(), _path, 'exec'), _file_globals)
            except SyntaxError as _e:
                _config_fail(f"{_path}, line {_e.lineno}: {_e.msg} (a config file is Python: key = value lines)")
            except Exception as _e:  # a NameError, an unreadable file...: where and what, not a traceback
                _tb = _e.__traceback__.tb_next  # the config file's own frame, when running it raised
                _config_fail(f"{_path}{f', line {_tb.tb_lineno}' if _tb else ''}: {type(_e).__name__}: {_e}")
            for _k, _v in _file_globals.items():
                if _k.startswith('_') or not isinstance(_v, _CONFIG_TYPES):
                    continue  # modules, functions, private helpers of the config file
                if _k not in _config_keys:
                    if _k in globals() and _v is globals()[_k]:
                        continue  # a constant of the script, untouched (assigning one is an unknown key)
                    _config_unknown(_k)
                if _v is not _before[_k]:
                    globals()[_k] = _config_cast(_k, _v)
            print(f"config: {_arg}")
        else:
            if '=' not in _arg:
                _config_fail(f"'{_arg}': write overrides as --key=value (e.g. --compile=False)")
            _key, _val = _arg[2:].split('=', 1)
            if _key not in _config_keys:
                _config_unknown(_key)
            if isinstance(globals()[_key], str):
                _attempt = _val  # strings stay strings: --out_dir=123 is the folder '123'
            else:
                try:
                    _attempt = _ast.literal_eval(_val)
                except (SyntaxError, ValueError):
                    _attempt = _val  # e.g. --device=cuda
            globals()[_key] = _config_cast(_key, _attempt)
            print(f"config: {_key} = {globals()[_key]!r}")

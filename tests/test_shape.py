"""
The shape the project promises (issue 29): small teaching scripts whose comments teach, which import without side
effects. `python tests/test_shape.py` prints the table; `python -m pytest -q tests/test_shape.py` checks it.

Counted: top-level *.py and data/*/prepare.py (the teaching code); not bench/ or tests/. A comment line is a line with
a `#` comment or inside a module/class/function docstring; a code line is any other line with a token (the same
counter as the before-stop hook, so both print the same ratios).
"""
import ast
import glob
import io
import os
import subprocess
import sys
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAX_LINES = 700  # every teaching script (nanoGPT's train.py is 336 lines, nanochat's base_train.py 604)
MAX_LINES_OF = {'sft.py': 600, 'grpo.py': 500, 'dedup.py': 600, 'scaling.py': 600, 'flash_attn.py': 700,
                'cc_filter.py': 800, 'train.py': 600}
MAX_TOTAL = 7500  # all teaching code together
MIN_COMMENT_RATIO = 0.4  # comment and docstring lines per code line (nanoGPT: train.py 0.62, model.py 0.49)
MAX_SPEEDRUN_LINES = 200


def teaching_scripts():
    """Relative paths of the teaching scripts: top-level *.py and data/*/prepare.py."""
    top = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.py')))
    data = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'data', '*', 'prepare.py')))
    return top + data


def count(path):
    """(lines, comment lines, code lines) of one Python file."""
    src = open(path, encoding='utf-8').read()
    doc = set()  # docstring lines count as comments
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                doc.update(range(first.lineno, first.end_lineno + 1))
    code, com = set(), set(doc)
    skip = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.COMMENT:
            com.add(t.start[0])
        elif t.type not in skip and t.start[0] not in doc:
            code.update(range(t.start[0], t.end[0] + 1))
    code -= com
    return src.count('\n'), len(com), len(code)


def table():
    rows = []
    for rel in teaching_scripts():
        n, com, code = count(os.path.join(ROOT, rel))
        cap = MAX_LINES_OF.get(rel, MAX_LINES)
        rows.append((rel, n, cap, com / max(code, 1)))
    return rows


def test_sizes():
    rows = table()
    over = [f"{rel}: {n} lines > {cap}" for rel, n, cap, _ in rows if n > cap]
    assert not over, "scripts over their size target: " + '; '.join(over)
    total = sum(n for _, n, _, _ in rows)
    assert total <= MAX_TOTAL, f"teaching code is {total} lines > {MAX_TOTAL}"


def test_comments_teach():
    low = [f"{rel}: {r:.2f}" for rel, _, _, r in table() if r < MIN_COMMENT_RATIO]
    assert not low, f"comment lines per code line below {MIN_COMMENT_RATIO}: " + ', '.join(low)


def test_speedrun_is_short_shell():
    src = open(os.path.join(ROOT, 'speedrun.sh')).read()
    assert src.count('\n') <= MAX_SPEEDRUN_LINES, f"speedrun.sh is {src.count(chr(10))} lines"
    assert '<<' not in src, "speedrun.sh embeds a heredoc: put the Python in a script"
    assert ' - <' not in src and 'python -c' not in src and '$PY -c' not in src, "speedrun.sh runs inline Python"


@pytest.mark.parametrize('rel', teaching_scripts())
def test_import_runs_nothing(rel, tmp_path):
    """Importing a script with someone else's command line must parse nothing, print nothing, write nothing."""
    code = (f"import importlib.util, sys; sys.argv = ['their_program.py', 'their_config.py', '--their_flag=1']\n"
            f"spec = importlib.util.spec_from_file_location('m', {os.path.join(ROOT, rel)!r})\n"
            f"spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = ROOT  # scripts may import model.py / bpe.py beside them
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"import {rel} failed:\n{r.stderr[-2000:]}"
    assert r.stdout == '', f"import {rel} printed: {r.stdout[:500]!r}"
    assert os.listdir(tmp_path) == [], f"import {rel} wrote {os.listdir(tmp_path)}"


if __name__ == '__main__':
    rows = table()
    print(f"{'script':28} {'lines':>6} {'target':>6} {'comments/code':>14}")
    for rel, n, cap, r in rows:
        flag = '  <-- over' if n > cap else ('  <-- few comments' if r < MIN_COMMENT_RATIO else '')
        print(f"{rel:28} {n:6d} {cap:6d} {r:14.2f}{flag}")
    print(f"{'total':28} {sum(n for _, n, _, _ in rows):6d} {MAX_TOTAL:6d}")

"""
data/arith/prepare.py: the synthetic verifiable task of sft.py and grpo.py, written as JSONL splits that are
disjoint by STRUCTURE, not just by text.

A problem is a count that changes through 1-4 events (find, give away, buy packs, share equally, ...). Every problem
has an exact integer answer and a worked trace, one equation per operation:
    Q: Nora has 12 shells. Nora finds 7 more shells. Nora buys 3 packs of 4 shells. How many shells does Nora have now?
    trace: 12 + 7 = 19. 3 * 4 = 12. 19 + 12 = 31.          answer: 31
The name and the item are surface text: two problems with the same start, operations and numbers are the SAME problem
for a model that learnt arithmetic. So a problem's key is (start, ((operation, numbers), ...)), and
  train.jsonl  training problems: SFT traces, GRPO questions, and (pretrain.txt) plain text for pre-training;
  val.jsonl    validation: hyperparameters, early stopping, GRPO's learning rate;
  test.jsonl   test: reported once per run;
  gen.jsonl    generalization: max_steps + 1 operations, more than any training problem has;
no val/test/gen key occurs in train, and val and test share no key (tests/test_sft.py checks it).
Each line is {"question", "trace", "answer"}; pretrain.txt holds the training problems as 'Question: / Solution: /
Answer:' documents (no <think>/<answer> tags) separated by '<|endoftext|>' lines, for train.py's data.

Run (a second on a laptop):
    python data/arith/prepare.py --out_dir=data/arith
    python data/arith/prepare.py --out_dir=run/task --n_train=60000 --min_steps=2 --max_steps=3 --max_number=20
"""
import json
import os
import random
import sys

# -----------------------------------------------------------------------------
out_dir = ''  # where the splits go; '' = this script's folder (data/arith)
n_train = 20000  # training problems (duplicated keys allowed: the same arithmetic in other words)
n_val = 500  # validation problems (distinct keys)
n_test = 500  # test problems (distinct keys; n=500 gives a 95% interval of about +-3 points at 80% accuracy)
n_gen = 500  # generalization problems with max_steps + 1 operations (0 = no gen split)
min_steps = 2  # operations per problem, from ...
max_steps = 3  # ... to (inclusive)
max_number = 20  # operands are drawn from 1..max_number (counts stay in 0..999)
pretrain_repeat = 1  # pretrain.txt holds the training problems this many times (reshuffled each time)
seed = 0  # the same seed gives the same files
# -----------------------------------------------------------------------------

NAMES = ['Ava', 'Ben', 'Cleo', 'Dan', 'Eli', 'Fay', 'Gus', 'Hana', 'Ivan', 'Jade', 'Kai', 'Lena', 'Milo', 'Nora',
         'Omar', 'Pia', 'Quinn', 'Rosa', 'Sam', 'Tara', 'Uma', 'Vic', 'Wes', 'Yara', 'Zoe']
ITEMS = ['apples', 'marbles', 'stickers', 'books', 'coins', 'pencils', 'cookies', 'shells', 'cards', 'stamps', 'eggs',
         'beads', 'rocks', 'toys', 'plums']


def step(rng, x, max_n):
    """One random event applied to the count x -> (key part, sentence template, trace, new x), or None when it does
    not fit (a count would go negative, exceed 999, or not divide). Sentences have '{n}' and '{i}' slots for the
    name and the item, filled once per problem."""
    kind = rng.choice(['add', 'sub', 'add_groups', 'sub_groups', 'mul', 'div'])
    b, k, m = rng.randint(1, max_n), rng.randint(2, 5), rng.randint(2, max(2, max_n // 2))
    if kind == 'add':
        return ('add', b), f"{{n}} finds {b} more {{i}}.", f"{x} + {b} = {x + b}.", x + b
    if kind == 'sub' and b <= x:
        return ('sub', b), f"{{n}} gives away {b} {{i}}.", f"{x} - {b} = {x - b}.", x - b
    if kind == 'add_groups':  # two equations: the product, then the sum
        return (kind, k, m), f"{{n}} buys {k} packs of {m} {{i}}.", f"{k} * {m} = {k * m}. {x} + {k * m} = " \
            f"{x + k * m}.", x + k * m
    if kind == 'sub_groups' and k * m <= x:
        return (kind, k, m), f"{{n}} gives {k} friends {m} {{i}} each.", f"{k} * {m} = {k * m}. {x} - {k * m} = " \
            f"{x - k * m}.", x - k * m
    if kind == 'mul' and k <= 3:
        return ('mul', k), f"{{n}} ends up with {k} times as many {{i}}.", f"{x} * {k} = {x * k}.", x * k
    if kind == 'div' and x >= k and x % k == 0:
        return ('div', k), f"{{n}} shares the {{i}} equally among {k} kids and keeps one share.", \
            f"{x} / {k} = {x // k}.", x // k
    return None


def make_problem(rng, n_steps, max_n):
    """One problem with n_steps operations: {'question', 'trace', 'answer'} and its structure key."""
    x = rng.randint(1, max_n)
    key, sentences, traces = [x], ["{n} has " + str(x) + " {i}."], []
    while len(traces) < n_steps:
        s = step(rng, x, max_n)
        if s is not None and s[3] <= 999:
            key.append(s[0])
            sentences.append(s[1])
            traces.append(s[2])
            x = s[3]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    question = ' '.join(sentences + ["How many {i} does {n} have now?"]).replace('{n}', name).replace('{i}', item)
    return {'question': question, 'trace': ' '.join(traces), 'answer': str(x)}, tuple(key)


def make_splits(n_train, n_val, n_test, n_gen=0, seed=0, min_steps=2, max_steps=3, max_number=20):
    """{'train', 'val', 'test', 'gen'}: lists of problems, deterministic in seed. The held-out splits are drawn first,
    each key at most once; training problems are then drawn among the keys left (gen has more operations than any
    training problem, so its keys can never collide)."""
    rng = random.Random(seed)
    held, splits = set(), {}

    def draw(n, lo, hi, unique):
        out = []
        for _ in range(200 * (n + 1)):  # a budget of attempts: a small task space stops with an error, not a hang
            if len(out) == n:
                return out
            p, key = make_problem(rng, rng.randint(lo, hi), max_number)
            if key not in held:
                out.append(p)
                if unique:
                    held.add(key)
        raise ValueError(f"could only draw {len(out)} of {n} problems with distinct structure; "
                         f"raise max_number or max_steps, or ask for fewer held-out problems")
    splits['val'] = draw(n_val, min_steps, max_steps, True)
    splits['test'] = draw(n_test, min_steps, max_steps, True)
    splits['gen'] = draw(n_gen, max_steps + 1, max_steps + 1, False)
    splits['train'] = draw(n_train, min_steps, max_steps, False)
    return splits


def pretrain_text(problem):
    """A problem as pre-training text: the worked solution WITHOUT the <think>/<answer> format, so the base model
    can learn the arithmetic yet fails the r1_zero format until SFT teaches it."""
    return f"Question: {problem['question']}\nSolution: {problem['trace']}\nAnswer: {problem['answer']}\n"


def write_atomic(path, text):
    """Write through a temp file + os.replace: a crash never leaves half a file."""
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def die(msg):
    print(f"prepare.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    """Check the config, draw the splits, write <out_dir>/{train,val,test,gen}.jsonl and pretrain.txt."""
    for key in ('n_train', 'n_val', 'n_test', 'n_gen', 'min_steps', 'max_number', 'pretrain_repeat'):
        lo = 0 if key in ('n_val', 'n_test', 'n_gen') else 1
        if globals()[key] < lo:
            die(f"--{key}={globals()[key]} must be >= {lo}")
    if max_steps < min_steps:
        die(f"--max_steps={max_steps} must be >= --min_steps={min_steps}")
    d = out_dir or os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(d):
        die(f"--out_dir={d!r} is a file: give a folder for the splits")
    try:
        splits = make_splits(n_train, n_val, n_test, n_gen, seed, min_steps, max_steps, max_number)
    except ValueError as e:
        die(str(e))
    os.makedirs(d, exist_ok=True)
    for name, probs in splits.items():
        write_atomic(os.path.join(d, f'{name}.jsonl'), ''.join(json.dumps(p) + '\n' for p in probs))
    rng = random.Random(seed)  # each repeat is another shuffle of the training problems
    docs = [p for _ in range(pretrain_repeat) for p in rng.sample(splits['train'], len(splits['train']))]
    write_atomic(os.path.join(d, 'pretrain.txt'), '\n<|endoftext|>\n'.join(pretrain_text(p) for p in docs))
    print(f"wrote {d}/: " + ', '.join(f"{k}.jsonl ({len(v)})" for k, v in splits.items())
          + f", pretrain.txt ({len(docs)} documents)")


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configurator.py')).read())
    main()

"""Deterministic rule-based corpus: documents whose continuation is a function of their prefix.

One responsibility: generate text (pure Python, ``random.Random(seed)`` only). Every document
is a header plus a sequence of *items* produced by a rule (counting and arithmetic sequences,
``x = [...]`` lists, multiplication tables, templated Python functions and loops, a sorted import
block, records whose fields derive from their index, day / month cycles, "The number after n is
n+1." sentences, numbered comments, Q/A pairs over a rule). Each item starts with its separator
(``", "``, ``"\\n"``, ...), so cutting between items leaves a prefix that ends before whitespace
and a continuation that the BPE tokenizer splits exactly as inside the whole document.

API:
    documents(seed, n)  -> n document strings (the training text; eos is appended by the trainer)
    examples(seed, n)   -> n dicts {"prompt", "continuation"}: a prefix of a fresh document (its
                           header and first 2-5 items) and the next items the rule gives, at least
                           CONTINUATION_MIN_CHARS characters (>= 32 tokens with the fixture's
                           tokenizer, at most ~64).

Seed ranges: training uses seeds < EVAL_SEED_BASE (1_000_000); evaluation (tests, benchmarks)
uses seeds >= EVAL_SEED_BASE. The two ranges never overlap, so a held-out prompt is never a
training document (the rules and number ranges are shared, which is the point).
"""

from __future__ import annotations

import random

EVAL_SEED_BASE = 1_000_000
CONTINUATION_MIN_CHARS = 110
CONTINUATION_MAX_CHARS = 150

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
MODULES = sorted(["abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar",
                  "collections", "copy", "csv", "dataclasses", "datetime", "decimal", "enum",
                  "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "inspect",
                  "io", "itertools", "json", "logging", "math", "operator", "os", "pathlib",
                  "pickle", "platform", "queue", "random", "re", "shutil", "signal", "socket",
                  "sqlite3", "statistics", "string", "struct", "subprocess", "sys", "tempfile",
                  "textwrap", "threading", "time", "typing", "unittest", "uuid", "warnings",
                  "weakref", "zipfile", "zlib"])
NAMES = ["x", "y", "values", "nums", "data", "items", "seq", "a", "b", "result"]
WORDS = ["check", "load", "parse", "save", "update", "read", "write", "send", "build", "test"]


def _counting(r: random.Random, n: int) -> tuple[str, list[str]]:
    start, step = r.randint(0, 400), r.choice([1, 1, 2, 3, 5, 10, r.randint(2, 12)])
    head = r.choice(["", "Count: ", f"Counting by {step}: ", "Numbers: "])
    xs = [start + step * i for i in range(n)]
    return head, [str(xs[0])] + [f", {v}" for v in xs[1:]]


def _countdown(r: random.Random, n: int) -> tuple[str, list[str]]:
    step = r.choice([1, 2, 3, 5])
    start = r.randint(step * n, step * n + 500)
    xs = [start - step * i for i in range(n)]
    return "Countdown: ", [str(xs[0])] + [f", {v}" for v in xs[1:]]


def _pylist(r: random.Random, n: int) -> tuple[str, list[str]]:
    name = r.choice(NAMES)
    kind = r.choice(["arith", "arith", "multiples"])
    if kind == "arith":
        a, d = r.randint(0, 200), r.randint(1, 9)
        xs = [a + d * i for i in range(n)]
    else:
        a = r.randint(2, 9)
        xs = [a * (i + 1) for i in range(n)]
    return f"{name} = [", [str(xs[0])] + [f", {v}" for v in xs[1:]]


def _table(r: random.Random, n: int) -> tuple[str, list[str]]:
    k, s = r.randint(2, 12), r.randint(1, 5)
    sym = r.choice(["x", "*"])
    return f"Multiplication table of {k}:", [f"\n{k} {sym} {i} = {k * i}" for i in range(s, s + n)]


def _functions(r: random.Random, n: int) -> tuple[str, list[str]]:
    op, sym = r.choice([("add", "+"), ("sub", "-"), ("mul", "*")])
    s = r.randint(1, 60)
    items = [f"def {op}_{i}(x):\n    return x {sym} {i}" for i in range(s, s + n)]
    return "", [items[0]] + ["\n\n" + it for it in items[1:]]


def _loops(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, 80)
    kind = r.choice(["double", "range", "print"])
    if kind == "double":
        items = [f"print({i}, {2 * i})" for i in range(s, s + n)]
    elif kind == "range":
        items = [f"for i in range({i}):\n    total += i * {i}" for i in range(s, s + n)]
    else:
        items = [f'print("line {i}")' for i in range(s, s + n)]
    return "", [items[0]] + ["\n" + it for it in items[1:]]


def _imports(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, len(MODULES) - 12)
    mods = MODULES[s:s + n]
    return "", ["import " + mods[0]] + ["\nimport " + m for m in mods[1:]]


def _records(r: random.Random, n: int) -> tuple[str, list[str]]:
    s, m = r.randint(0, 300), r.choice([2, 3, 5, 10])
    kind = r.choice(["json", "kv"])
    if kind == "json":
        items = [f'{{"id": {i}, "name": "item_{i}", "value": {i * m}}}' for i in range(s, s + n)]
    else:
        items = [f"id={i} user=u{i} even={'yes' if i % 2 == 0 else 'no'}" for i in range(s, s + n)]
    return "", [items[0]] + ["\n" + it for it in items[1:]]


def _cycle(r: random.Random, n: int) -> tuple[str, list[str]]:
    names = r.choice([DAYS, MONTHS])
    s = r.randrange(len(names))
    xs = [names[(s + i) % len(names)] for i in range(n)]
    sep = r.choice([", ", "\n"])
    return "", [xs[0]] + [sep + v for v in xs[1:]]


def _after(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, 500)
    items = [f"The number after {i} is {i + 1}." for i in range(s, s + n)]
    return "", [items[0]] + [" " + it for it in items[1:]]


def _comments(r: random.Random, n: int) -> tuple[str, list[str]]:
    w, s = r.choice(WORDS), r.randint(1, 50)
    items = [f"# step {i}: {w} part {i}" for i in range(s, s + n)]
    return "", [items[0]] + ["\n" + it for it in items[1:]]


def _qa(r: random.Random, n: int) -> tuple[str, list[str]]:
    kind = r.choice(["after", "before", "plus"])
    s = r.randint(1, 400)
    if kind == "after":
        items = [f"Q: What comes after {i}? A: {i + 1}" for i in range(s, s + n)]
    elif kind == "before":
        items = [f"Q: What comes before {i}? A: {i - 1}" for i in range(s, s + n)]
    else:
        a = r.randint(1, 50)
        items = [f"Q: What is {a} + {i}? A: {a + i}" for i in range(s, s + n)]
    return "", [items[0]] + ["\n" + it for it in items[1:]]


GENERATORS = (_counting, _countdown, _pylist, _table, _functions, _loops, _imports, _records,
              _cycle, _after, _comments, _qa)


def _make(r: random.Random, n_items: int) -> tuple[str, list[str], str]:
    gen = r.choice(GENERATORS)
    head, items = gen(r, n_items)
    tail = "]" if gen is _pylist else ""
    return head, items, tail


def documents(seed: int, n: int) -> list[str]:
    """``n`` whole documents (header + 6..16 rule items); deterministic in ``seed``."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        head, items, tail = _make(r, r.randint(6, 16))
        out.append(head + "".join(items) + tail)
    return out


def examples(seed: int, n: int) -> list[dict]:
    """``n`` held-out style examples: a document prefix and its rule-given continuation.

    The prompt is the header and the first 2-4 items; the continuation is the following items,
    CONTINUATION_MIN_CHARS..CONTINUATION_MAX_CHARS characters (item boundaries; a single long
    item may be cut at MAX). It never ends the document, so no closing bracket or EOS is part
    of it.
    """
    r = random.Random(seed)
    out = []
    while len(out) < n:
        head, items, _ = _make(r, 60)
        k = r.randint(2, 4)
        prompt = head + "".join(items[:k])
        cont = ""
        for it in items[k:]:
            if len(cont) >= CONTINUATION_MIN_CHARS:
                break
            cont += it
        if len(cont) < CONTINUATION_MIN_CHARS:   # short sorted import list: try another doc
            continue
        out.append({"prompt": prompt, "continuation": cont[:CONTINUATION_MAX_CHARS]})
    return out

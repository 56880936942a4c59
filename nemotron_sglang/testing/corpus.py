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
                           header and first 3-5 items) and the items after it (at most
                           CONTINUATION_MAX_CHARS characters, never past the document's end),
                           at least CONTINUATION_MIN_TOKENS (32) tokens with the fixture's
                           tokenizer.

Seed ranges: training uses seeds < EVAL_SEED_BASE (1_000_000); evaluation (tests, benchmarks)
uses seeds >= EVAL_SEED_BASE. The two ranges never overlap, so a held-out prompt is never a
training document (the rules and number ranges are shared, which is the point).
"""

from __future__ import annotations

import random
import re

EVAL_SEED_BASE = 1_000_000
CONTINUATION_MIN_TOKENS = 32
CONTINUATION_MAX_CHARS = 150
EVAL_MAX_ITEMS = 14
EVAL_TRIES = 50
_PRETOKEN = re.compile(r"\d| ?[A-Za-z_]+| ?[^\s\w]+|\s+(?!\S)|\s+")

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


def _separated(items: list[str], sep: str) -> list[str]:
    """Items as the document splits them: every one after the first starts with ``sep``."""
    return items[:1] + [sep + it for it in items[1:]]


def _counting(r: random.Random, n: int) -> tuple[str, list[str]]:
    start, step = r.randint(0, 400), r.choice([1, 1, 2, 3, 5, 10, r.randint(2, 12)])
    head = r.choice(["", "Count: ", f"Counting by {step}: ", "Numbers: "])
    xs = [start + step * i for i in range(n)]
    return head, _separated([str(v) for v in xs], ", ")


def _countdown(r: random.Random, n: int) -> tuple[str, list[str]]:
    step = r.choice([1, 2, 3, 5])
    start = r.randint(step * n, step * n + 500)
    xs = [start - step * i for i in range(n)]
    return "Countdown: ", _separated([str(v) for v in xs], ", ")


def _pylist(r: random.Random, n: int) -> tuple[str, list[str]]:
    name = r.choice(NAMES)
    kind = r.choice(["arith", "arith", "multiples"])
    if kind == "arith":
        a, d = r.randint(0, 200), r.randint(1, 9)
        xs = [a + d * i for i in range(n)]
    else:
        a = r.randint(2, 9)
        xs = [a * (i + 1) for i in range(n)]
    return f"{name} = [", _separated([str(v) for v in xs], ", ")


def _table(r: random.Random, n: int) -> tuple[str, list[str]]:
    k, s = r.randint(2, 12), r.randint(1, 5)
    sym = r.choice(["x", "*"])
    return f"Multiplication table of {k}:", [f"\n{k} {sym} {i} = {k * i}" for i in range(s, s + n)]


def _functions(r: random.Random, n: int) -> tuple[str, list[str]]:
    op, sym = r.choice([("add", "+"), ("sub", "-"), ("mul", "*")])
    s = r.randint(1, 60)
    items = [f"def {op}_{i}(x):\n    return x {sym} {i}" for i in range(s, s + n)]
    return "", _separated(items, "\n\n")


def _loops(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, 80)
    kind = r.choice(["double", "range", "print"])
    if kind == "double":
        items = [f"print({i}, {2 * i})" for i in range(s, s + n)]
    elif kind == "range":
        items = [f"for i in range({i}):\n    total += i * {i}" for i in range(s, s + n)]
    else:
        items = [f'print("line {i}")' for i in range(s, s + n)]
    return "", _separated(items, "\n")


def _imports(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, len(MODULES) - 12)
    mods = MODULES[s:s + n]
    return "", _separated(["import " + m for m in mods], "\n")


def _records(r: random.Random, n: int) -> tuple[str, list[str]]:
    s, m = r.randint(0, 300), r.choice([2, 3, 5, 10])
    kind = r.choice(["json", "kv"])
    if kind == "json":
        items = [f'{{"id": {i}, "name": "item_{i}", "value": {i * m}}}' for i in range(s, s + n)]
    else:
        items = [f"id={i} user=u{i} even={'yes' if i % 2 == 0 else 'no'}" for i in range(s, s + n)]
    return "", _separated(items, "\n")


def _cycle(r: random.Random, n: int) -> tuple[str, list[str]]:
    names = r.choice([DAYS, MONTHS])
    s = r.randrange(len(names))
    xs = [names[(s + i) % len(names)] for i in range(n)]
    sep = r.choice([", ", "\n"])
    return "", _separated(xs, sep)


def _after(r: random.Random, n: int) -> tuple[str, list[str]]:
    s = r.randint(0, 500)
    items = [f"The number after {i} is {i + 1}." for i in range(s, s + n)]
    return "", _separated(items, " ")


def _comments(r: random.Random, n: int) -> tuple[str, list[str]]:
    w, s = r.choice(WORDS), r.randint(1, 50)
    items = [f"# step {i}: {w} part {i}" for i in range(s, s + n)]
    return "", _separated(items, "\n")


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
    return "", _separated(items, "\n")


GENERATORS = (_counting, _countdown, _pylist, _table, _functions, _loops, _imports, _records,
              _cycle, _after, _comments, _qa)


def _make(r: random.Random, n_items: int, gen=None) -> tuple[str, list[str], str]:
    gen = r.choice(GENERATORS) if gen is None else gen
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


def approx_tokens(text: str) -> int:
    """Pre-token count of ``text`` under the fixture tokenizer's split (digits one by one, words
    with their leading space, punctuation runs, whitespace runs): a lower bound on its tokens."""
    return len(_PRETOKEN.findall(text))


def examples(seed: int, n: int) -> list[dict]:
    """``n`` held-out style examples: a document prefix and its rule-given continuation.

    Each comes from a fresh document of 6..EVAL_MAX_ITEMS items (documents() draws 6..16; the
    held-out ones stop at 14, where a model trained on them still expects more items rather
    than the end of the document). The prompt is the header and the first 3-5 items (three
    terms pin an arithmetic rule down with one to spare); the continuation is the following
    items up to the document's last, cut at an item boundary to at most CONTINUATION_MAX_CHARS
    characters, and at least CONTINUATION_MIN_TOKENS pre-tokens (so >= 32 tokens). The rule is
    drawn first, then its documents until one is long enough (EVAL_TRIES at most), so every
    rule that can give 32 tokens within 14 items appears equally often; day / month cycles
    (two tokens per item) never can and are absent. The closing bracket and EOS are never part
    of the continuation.
    """
    r = random.Random(seed)
    out = []
    while len(out) < n:
        gen = r.choice(GENERATORS)          # the rule first, so the mix stays even
        for _ in range(EVAL_TRIES):
            head, items, _ = _make(r, r.randint(6, EVAL_MAX_ITEMS), gen)
            k = r.randint(3, 5)
            cont = ""
            for it in items[k:]:
                if cont and len(cont) + len(it) > CONTINUATION_MAX_CHARS:
                    break
                cont += it
            if approx_tokens(cont) >= CONTINUATION_MIN_TOKENS:
                out.append({"prompt": head + "".join(items[:k]),
                            "continuation": cont[:CONTINUATION_MAX_CHARS]})
                break
    return out


def corpus_prompts(tok, n: int, seed: int) -> tuple[list[list[int]], list[str]]:
    """``n`` prompts of the corpus from ``seed`` as token ids of ``tok`` (core's tokenizer), and
    their rule-given continuations: the benchmarks' and the tests' held-out prompts."""
    from ..core.tokenizer import encode

    exs = examples(seed, n)
    return [encode(tok, e["prompt"]) for e in exs], [e["continuation"] for e in exs]


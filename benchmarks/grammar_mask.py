"""Grammar masks at NLD-8B's vocabulary (131072): the host work a grammar adds per pass.

A masked row costs xgrammar's ``fill_next_token_bitmask`` on the host (what SGLang's
``XGrammarGrammar.fill_vocab_mask`` calls, one row of [ceil(V / 32)] int32), and on the device
core's unpack of the pass's bit rows to a [rows, V] mask and the -inf fill
(``decide_batched._constrained``); a self-speculation verify also walks the drafts through the
matcher (``accept_token`` per draft) and rolls the rejected ones back. Timed here on a synthetic
vocabulary of V strings (the 256 bytes, digits, then random lowercase pieces of 2-8 letters)
with two grammars: a digits regex and a JSON object schema.

Rows per pass (block B): ar 1; linear_spec verify B (the drafts walked: B - 1); diffusion's
leftmost slot 1 (it commits left to right under a grammar).

    python benchmarks/grammar_mask.py                   # vocab 131072, block 32
    python benchmarks/grammar_mask.py --markdown
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time

import torch
import xgrammar as xgr

from nemotron_sglang.core.decoding.grammar import unpack, words
from nemotron_sglang.testing.bench import hardware, print_table

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}


def vocabulary(v: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    pieces = [chr(i) for i in range(256)]
    seen = set(pieces)
    while len(pieces) < v:
        s = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789 {}\":,")
                    for _ in range(rnd.randint(2, 8)))
        if s not in seen:
            seen.add(s)
            pieces.append(s)
    return pieces


def best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    v, b = args.vocab, args.block
    vocab = vocabulary(v)
    info = xgr.TokenizerInfo(vocab, vocab_size=v)
    compiler = xgr.GrammarCompiler(info)
    grammars = {"regex [0-9]+": compiler.compile_regex("[0-9]+"),
                "json schema": compiler.compile_json_schema(json.dumps(SCHEMA))}
    walk = {"regex [0-9]+": [vocab.index(c) for c in "1234567890" * 4][: b - 1],
            "json schema": [vocab.index(c) for c in '{"name": "abc", "age": 12}'][: b - 1]}
    print(f"# {hardware(triton_interpret=False)}; vocab {v}, block {b}, best of {args.repeat}")
    print(f"# {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    rows_out = []
    for name, compiled in grammars.items():
        matcher = xgr.GrammarMatcher(compiled)
        bits = torch.empty((b, words(v)), dtype=torch.int32)
        fill1 = best_ms(lambda: matcher.fill_next_token_bitmask(bits, 0), args.repeat)

        def verify_host():
            # the verify pass: walk the drafts, a mask per row, roll back what was walked
            n = 0
            for j, t in enumerate(walk[name]):
                matcher.fill_next_token_bitmask(bits, j)
                if not matcher.accept_token(t):
                    break
                n += 1
            matcher.fill_next_token_bitmask(bits, n)
            matcher.rollback(n)
        verify = best_ms(verify_host, args.repeat)
        logits = torch.randn(b, v)

        def device(rows: int):
            def run():
                forbid = ~unpack(bits[:rows], v)
                logits[:rows].masked_fill(forbid, float("-inf"))
            return run
        dev1, devb = best_ms(device(1), args.repeat), best_ms(device(b), args.repeat)
        walked = len(walk[name])
        rows_out += [
            [name, "ar / diffusion (1 row)", f"{fill1:.3f}", f"{dev1:.3f}", str(4 * words(v))],
            [name, f"linear_spec verify ({b} rows, {walked} drafts walked)", f"{verify:.3f}",
             f"{devb:.3f}", str(4 * words(v) * b)],
        ]
    print_table(["grammar", "pass", "host ms (xgrammar)", "mask apply ms (torch, this device)",
                 "bits host→device B"], rows_out, args.markdown, left=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

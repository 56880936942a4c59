"""Token decisions per pass, before and after the batched decision layer (issue 15 item 1):
bytes moved to the host and host decision time, at NLD-8B's vocabulary on synthetic logits.

    before  the rows each strategy read copied to the host as float32 (the plugin's old
            ``logits.mapped(.float().cpu())``), then decided per request on the host
            (``decide_each``, the per-request twin)
    after   ``decide_batched`` where the logits are: one host read of O(rows) int64

Passes, per request at block B: ar 1 row (PICK); linear_spec draft B-1 rows (DRAFT) and verify B
rows (VERIFY, B-1 drafts); quadratic_spec R row heads + the accepted row's B-1 masks
(QUADRATIC, R = --rows); diffusion's first denoise B-1 masked rows (DENOISE). Logits are random
(a lookup head: the head's cost is not timed here). "bytes/token" divides a pass's bytes by the
tokens that pass emits on the embedded default (its tokens per forward from core's decoders,
measured here unless --no-tpf). On CPU both paths run on the host; on CUDA "after" runs on the
GPU and "before" copies the rows to the host first (timed; on CPU there is no copy to time).

    python benchmarks/decisions.py                       # batch 1 and 16, block 32, vocab 131072
    python benchmarks/decisions.py --batch 1 16 --temperature 0 1 --markdown
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch

from nemotron_sglang.testing.bench import hardware, print_table

from nemotron_sglang.core.decoding import Ask, Kind, decide_batched, decide_each
from nemotron_sglang.core.logits import PassLogits
from nemotron_sglang.core.modes import DECODE_MODES

MASK_ID = 100


def passes(block: int, rows: int) -> dict[str, tuple[int, callable]]:
    """pass name -> (tokens per request, ask builder(temperature, seed))."""
    b, w = block, block + 1
    drafts = tuple(range(200, 200 + b - 1))
    qd = tuple(range(200, 200 + rows - 1))
    return {
        "ar": (1, lambda t, s, q: Ask(Kind.PICK, (0,), t, (s, 0))),
        "linear draft": (b, lambda t, s, q: Ask(Kind.DRAFT, tuple(range(1, b)), t, (s, 0))),
        "linear verify": (b, lambda t, s, q: Ask(Kind.VERIFY, tuple(range(b)), t, (s, 0),
                                                 drafts=drafts, q=q(b - 1))),
        "quadratic": (rows * w, lambda t, s, q: Ask(Kind.QUADRATIC, tuple(range(0, rows * w, w)),
                                                    t, (s, 0), drafts=qd, q=q(rows - 1),
                                                    width=w)),
        "diffusion denoise": (b, lambda t, s, q: Ask(Kind.DENOISE, tuple(range(1, b)), t, (s, 0),
                                                     threshold=0.9)),
    }


def synthetic(tokens: int, vocab: int, device) -> PassLogits:
    """Lazy logits of ``tokens`` rows: the head looks rows up in a random [64, V] table."""
    table = torch.randn(64, vocab, device=device) * 3
    return PassLogits(torch.arange(tokens, device=device)[:, None],
                      lambda h: table[h[:, 0] % 64])


def proposal(vocab: int, device):
    def q(n: int):
        p = torch.softmax(torch.randn(n, vocab, device=device, dtype=torch.float64), -1)
        return p
    return q


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(name, per_req, build, batch, temp, vocab, device, repeat):
    logits = synthetic(per_req * batch, vocab, device)
    q = proposal(vocab, device)
    items = [(i * per_req, (i + 1) * per_req, build(temp, 1000 + i, q)) for i in range(batch)]
    read = sorted({s + r for s, _, a in items for r in a.rows})
    extra = sum(a.width - 2 for _, _, a in items if a.kind == Kind.QUADRATIC)

    host = {}

    def before():
        # the old plugin path: each head output copied to the host as float32, decided there
        h = PassLogits(logits.hidden, lambda x: logits.head(x).float().cpu())
        decide_each(h, items, MASK_ID)
        host["rows"] = h.rows_computed

    def after():
        decide_batched(logits, items, MASK_ID)

    before_ms, after_ms = timed(before, repeat), timed(after, repeat)
    before_bytes = host["rows"] * vocab * 4
    n_rows = len(read)
    quads = sum(1 for _, _, a in items if a.kind == Kind.QUADRATIC)
    after_bytes = (4 * n_rows + quads + extra) * 8
    return dict(pass_=name, batch=batch, temp=temp, rows=n_rows + extra,
                before_bytes=before_bytes, after_bytes=after_bytes,
                before_ms=before_ms, after_ms=after_ms)


def fixture_tpf(block: int) -> dict[str, float]:
    """Tokens per forward of each mode on the embedded default (core's decoders, greedy)."""
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate
    from nemotron_sglang.core.tokenizer import encode, load_tokenizer
    from nemotron_sglang.core.weights import load_model
    from nemotron_sglang.serving.serve import embedded_model
    from nemotron_sglang.testing.corpus import examples

    model = load_model(embedded_model(), dtype=torch.float32)
    tok = load_tokenizer(embedded_model())
    prompts = [encode(tok, e["prompt"]) for e in examples(1_000_000, 16)]
    out = {}
    for mode in DECODE_MODES:
        res = generate(model, [Request(p, mode, DecodeParams(max_new_tokens=64,
                                                             block_length=block))
                               for p in prompts])
        out[mode] = sum(len(r.output_ids) for r in res) / sum(r.forwards for r in res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--rows", type=int, default=8, help="quadratic row heads R")
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-tpf", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    print(f"# {hardware(False)}; vocab {args.vocab}, block {args.block}, quadratic R {args.rows}, "
          f"logits float32 on {device}, best of {args.repeat}")
    print(f"# command: python benchmarks/{os.path.basename(__file__)} "
          f"{shlex.join(sys.argv[1:])}")
    tpf = {} if args.no_tpf else fixture_tpf(args.block)
    mode_of = {"ar": "ar", "linear draft": "linear_spec", "linear verify": "linear_spec",
               "quadratic": "quadratic_spec", "diffusion denoise": "diffusion"}
    rows = []
    for name, (per_req, build) in passes(args.block, args.rows).items():
        for batch in args.batch:
            for temp in args.temperature:
                r = measure(name, per_req, build, batch, temp, args.vocab, device, args.repeat)
                # tokens per request per pass = the mode's tokens per forward on the fixture
                per_tok = batch * tpf[mode_of[name]] if tpf else float("nan")
                rows.append([name, batch, temp, r["rows"], r["before_bytes"] / 2**20,
                             r["after_bytes"] / 2**10, r["before_bytes"] / per_tok / 2**10,
                             r["after_bytes"] / per_tok, r["before_ms"], r["after_ms"]])
    print_table(["pass", "batch", "T", "rows decided", "before MiB/pass", "after KiB/pass",
                 "before KiB/token", "after B/token", "before host ms", "after ms"], rows,
                args.markdown)
    if tpf:
        print("# tokens per forward on the embedded default (core, greedy, block "
              f"{args.block}): " + ", ".join(f"{m} {v:.2f}" for m, v in tpf.items()))


if __name__ == "__main__":
    main()

"""Tokens-per-forward benchmark of core's decoders: one table of TPF, acceptance and speed per mode.

For a batch of seeded random prompts it runs ``ar``, ``diffusion``, ``linear_spec`` (LoRA drafter
on and off) and ``quadratic_spec`` through core's step loop (``make_decoder`` + ``default_cache``,
all prompts of a mode in one batch), at each requested block length, and prints the figures with
the hardware, dtype, checkpoint geometry and exact command line. It also checks that both
self-speculation modes reproduce ``ar``'s greedy output exactly (exit code 1 if not).

    python benchmarks/tpf.py                       # tiny random checkpoint with LoRA, B = 4
    python benchmarks/tpf.py --block-lengths 2,4 --markdown
    python benchmarks/tpf.py --model /path/to/checkpoint --trained --dtype bfloat16
    python benchmarks/tpf.py --trained --markdown   # committed fixture, held-out corpus prompts

Random weights make TPF and acceptance plumbing figures only (drafts rarely agree with the
verifier); pass ``--trained`` only for a checkpoint with trained weights. ``--trained`` without
``--model`` uses the committed rule-corpus fixture (``tests/fixtures/nld-tiny-rules``) and then
defaults to held-out prompts (``--corpus-seed 1000000``) and block lengths 8,16,32.

With ``--corpus-seed S`` the prompts are ``nemotron_sglang.testing.corpus.examples(S, n)``
(evaluation seeds are >= 1000000, never used in training) and the table gains, per mode and
block: ``agree`` (share of output tokens equal to ``ar``'s at the same index, over ``ar``'s
tokens) and ``rule acc`` (share of outputs whose text begins with the rule's continuation; an
output cut by ``max_new_tokens`` before the continuation ends counts when it is a prefix of it).
A second table sweeps the diffusion threshold (``--thresholds``, default 0.5..0.99) per block:
TPF vs agreement with ``ar``; ``--plot PNG`` draws it when matplotlib is installed. A third
sweeps diffusion's step budget (``--max-steps``, default 1,2,3,4,6,8,16: at most k denoise passes
per block, the last committing every slot left) at ``--threshold``: TPF vs agreement against k;
``--plot-steps PNG`` draws it.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nemotron_sglang.core.decoding import (DecodeError, DecodeParams, Request, default_cache,
                                           make_decoder)
from nemotron_sglang.core.modes import SELF_SPEC_MODES
from nemotron_sglang.core.weights import load_model, write_tiny_checkpoint
from nemotron_sglang.data import EMBEDDED as FIXTURE
from nemotron_sglang.testing.bench import hardware, table
from nemotron_sglang.testing.corpus import corpus_prompts

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

# (mode, use_lora) in table order; ar ignores the block length and runs once.
VARIANTS = (("diffusion", False), ("linear_spec", True), ("linear_spec", False),
            ("quadratic_spec", False))
LOSSLESS = SELF_SPEC_MODES


@dataclass
class Row:
    mode: str
    block: str
    lora: str
    requests: int
    tokens: int
    forwards: int
    acceptance: float | None
    model_calls: int
    wall_s: float
    outputs: list[list[int]]
    agree: float | None = None
    rule_acc: float | None = None
    threshold: float | None = None
    max_steps: int | None = None

    @property
    def tpf(self) -> float:
        return self.tokens / self.forwards if self.forwards else float("nan")

    def cells(self) -> list[str]:
        acc = "-" if self.acceptance is None else f"{self.acceptance:.3f}"
        tps = self.tokens / self.wall_s if self.wall_s > 0 else float("inf")
        out = [self.mode, self.block, self.lora, str(self.requests), str(self.tokens),
               str(self.forwards), f"{self.tpf:.3f}", acc, str(self.model_calls),
               f"{self.wall_s:.3f}", f"{tps:.1f}"]
        if self.rule_acc is not None:
            out += ["-" if self.agree is None else f"{self.agree:.3f}", f"{self.rule_acc:.3f}"]
        return out


HEADERS = ["mode", "block", "lora", "requests", "tokens", "forwards", "TPF", "accept len",
           "model calls", "wall s", "tokens/s"]
CORPUS_HEADERS = HEADERS + ["agree", "rule acc"]


def _block_lengths(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, got {text!r}") \
            from None
    if not out:
        raise argparse.ArgumentTypeError("at least one block length is needed")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="checkpoint dir (default: a tiny random checkpoint with LoRA, temp dir)")
    ap.add_argument("--prompts", type=int, default=32, help="number of random prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--block-lengths", type=_block_lengths, default=None,
                    help="comma list, each <= the checkpoint's block_size (default 4; 8,16,32 "
                         "with --trained and no --model)")
    ap.add_argument("--threshold", type=float, default=0.9, help="diffusion unmask threshold")
    ap.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    ap.add_argument("--seed", type=int, default=0, help="prompt (and tiny checkpoint) seed")
    ap.add_argument("--trained", action="store_true",
                    help="the checkpoint has trained weights (drops the random-weights note); "
                         "without --model: the committed rule-corpus fixture")
    ap.add_argument("--corpus-seed", type=int, default=None,
                    help="held-out rule-corpus prompts of this seed (needs tokenizer.json); "
                         "default 1000000 with --trained and no --model")
    ap.add_argument("--thresholds", type=str, default=",".join(map(str, THRESHOLDS)),
                    help="diffusion thresholds of the trade-off sweep (with --corpus-seed)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep")
    ap.add_argument("--max-steps", type=_block_lengths, default=[1, 2, 3, 4, 6, 8, 16],
                    help="diffusion step budgets of the step sweep (with --corpus-seed); each "
                         "below the block length it runs at")
    ap.add_argument("--no-steps", action="store_true", help="skip the step-budget sweep")
    ap.add_argument("--plot-steps", default=None,
                    help="PNG path for the step budget's TPF / agreement (needs matplotlib)")
    ap.add_argument("--plot", default=None,
                    help="PNG path for the TPF / agreement trade-off (needs matplotlib)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args(argv)
    if args.prompts < 1:
        ap.error("--prompts must be >= 1")
    fixture_default = args.trained and args.model is None
    if fixture_default:
        if not (FIXTURE / "config.json").exists():
            ap.error(f"--trained without --model needs the fixture at {FIXTURE}")
        args.model = str(FIXTURE)
        if args.corpus_seed is None:
            args.corpus_seed = 1_000_000
    if args.block_lengths is None:
        args.block_lengths = [8, 16, 32] if fixture_default else [4]
    try:
        args.thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}")
    return args


def random_prompts(n: int, vocab_size: int, seed: int) -> list[list[int]]:
    """n prompts of 4..24 tokens drawn from the non-special ids 128..vocab-1."""
    rng = random.Random(seed)
    return [[rng.randrange(128, vocab_size) for _ in range(rng.randint(4, 24))] for _ in range(n)]


def follows_rule(text: str, continuation: str, cut: bool) -> bool:
    """Output text begins with the continuation (or, if cut by max_new_tokens, is a prefix of it)."""
    if text.startswith(continuation):
        return True
    return cut and len(text) < len(continuation) and continuation.startswith(text)


def agreement(outputs: list[list[int]], ref: list[list[int]]) -> float:
    """Share of ``ref`` tokens matched by ``outputs`` at the same index."""
    same = sum(sum(a == b for a, b in zip(o, r)) for o, r in zip(outputs, ref))
    total = sum(len(r) for r in ref)
    return same / total if total else 1.0


def score(row: Row, tok, continuations: list[str], ar_outputs: list[list[int]] | None,
          max_new_tokens: int) -> Row:
    from nemotron_sglang.core.tokenizer import decode

    ok = sum(follows_rule(decode(tok, o, skip_special=True), c, len(o) >= max_new_tokens)
             for o, c in zip(row.outputs, continuations))
    row.rule_acc = ok / len(continuations)
    row.agree = None if ar_outputs is None else agreement(row.outputs, ar_outputs)
    return row


def run_variant(model, prompts, mode: str, block: int, use_lora: bool, args,
                max_new_tokens: int | None = None, threshold: float | None = None,
                max_steps: int | None = None) -> Row:
    """All ``prompts`` as one batch through a fresh decoder; figures summed over requests."""
    params = DecodeParams(max_new_tokens=max_new_tokens or args.max_new_tokens,
                          block_length=block,
                          threshold=args.threshold if threshold is None else threshold,
                          temperature=0.0, seed=args.seed, use_lora=use_lora,
                          max_steps=max_steps)
    requests = [Request(p, mode, params) for p in prompts]
    decoder = make_decoder(model, default_cache(model, requests))
    t0 = time.perf_counter()
    results = decoder.run(requests)
    wall = time.perf_counter() - t0
    accs = [r.acceptance_length for r in results if r.acceptance_length is not None]
    if mode == "linear_spec":
        lora = ("on" if use_lora else "off") if model.has_lora else "absent"
    else:
        lora = "-"
    return Row(mode=mode, block="-" if mode == "ar" else str(block), lora=lora,
               requests=len(results), tokens=sum(len(r.output_ids) for r in results),
               forwards=sum(r.forwards for r in results),
               acceptance=sum(accs) / len(accs) if accs else None,
               model_calls=decoder.stats.model_calls, wall_s=wall,
               outputs=[r.output_ids for r in results],
               threshold=(args.threshold if threshold is None else threshold)
               if mode == "diffusion" else None, max_steps=max_steps)


def format_table(rows: list[Row], markdown: bool) -> str:
    cells = [r.cells() for r in rows]
    headers = CORPUS_HEADERS if rows and rows[0].rule_acc is not None else HEADERS
    return table(headers, cells, markdown, left=3)


def sweep_table(rows: list[Row], markdown: bool) -> str:
    headers = ["block", "threshold", "forwards", "TPF", "agree", "rule acc"]
    cells = [[r.block, f"{r.threshold:g}", str(r.forwards), f"{r.tpf:.3f}", f"{r.agree:.3f}",
              f"{r.rule_acc:.3f}"] for r in rows]
    return table(headers, cells, markdown)


def steps_table(rows: list[Row], markdown: bool) -> str:
    headers = ["block", "max_steps", "threshold", "forwards", "TPF", "agree", "rule acc"]
    cells = [[r.block, "-" if r.max_steps is None else str(r.max_steps), f"{r.threshold:g}",
              str(r.forwards), f"{r.tpf:.3f}", f"{r.agree:.3f}", f"{r.rule_acc:.3f}"]
             for r in rows]
    return table(headers, cells, markdown)


def plot_sweep(rows: list[Row], path: str, label=lambda r: f"{r.threshold:g}",
               title: str = "Diffusion threshold trade-off (labels: threshold)") -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot: matplotlib is not installed, no PNG written"
    fig, ax = plt.subplots(figsize=(6, 4))
    for block in sorted({r.block for r in rows}, key=int):
        pts = [r for r in rows if r.block == block]
        ax.plot([r.tpf for r in pts], [r.agree for r in pts], marker="o", label=f"block {block}")
        for r in pts:
            ax.annotate(label(r), (r.tpf, r.agree), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("diffusion tokens per forward")
    ax.set_ylabel("token agreement with greedy AR")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot: wrote {path}"


def header(args, model_dir: Path, generated: bool, cfg) -> str:
    lines = [
        f"command:    {shlex.join([sys.executable, *sys.argv])}",
        f"hardware:   {hardware(triton_interpret=False)} ({platform.platform()})",
        f"torch:      {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, device cpu",
        f"dtype:      {args.dtype}",
        f"checkpoint: {model_dir}" + (f" (generated: tiny preset, seed {args.seed}, LoRA)"
                                      if generated else ""),
        f"geometry:   hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, heads "
        f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.head_dim}, "
        f"intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}, context "
        f"{cfg.max_position_embeddings}, block_size {cfg.block_size}",
        f"workload:   {args.prompts} prompts ("
        + (f"held-out rule-corpus examples, corpus seed {args.corpus_seed}"
           if args.corpus_seed is not None else f"4..24 tokens, seed {args.seed}")
        + f"), max_new_tokens "
        f"{args.max_new_tokens}, temperature 0, diffusion threshold {args.threshold}, "
        f"block lengths {','.join(map(str, args.block_lengths))}",
    ]
    if not args.trained:
        lines.append("NOTE: random weights - TPF/acceptance are plumbing figures, not quality")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nld-tpf-") as tmp:
        generated = args.model is None
        model_dir = Path(args.model) if args.model else write_tiny_checkpoint(
            Path(tmp) / "tiny", seed=args.seed, with_lora=True)
        try:
            model = load_model(model_dir, dtype=getattr(torch, args.dtype))
        except (ValueError, FileNotFoundError) as e:
            print(f"tpf: error: {e}", file=sys.stderr)
            return 2
        cfg = model.config
        too_big = [b for b in args.block_lengths if b > cfg.block_size]
        if too_big:
            print(f"tpf: error: block lengths {too_big} exceed the checkpoint's block_size "
                  f"{cfg.block_size}", file=sys.stderr)
            return 2
        tok = continuations = None
        if args.corpus_seed is not None:
            from nemotron_sglang.core.tokenizer import load_tokenizer
            try:
                tok = load_tokenizer(model_dir)
            except FileNotFoundError as e:
                print(f"tpf: error: --corpus-seed needs a tokenizer: {e}", file=sys.stderr)
                return 2
            prompts, continuations = corpus_prompts(tok, args.prompts, args.corpus_seed)
        else:
            prompts = random_prompts(args.prompts, cfg.vocab_size, args.seed)
        print(header(args, model_dir, generated, cfg))
        print()

        variants = [(m, lora) for m, lora in VARIANTS if m != "linear_spec" or lora
                    or model.has_lora]
        try:
            for mode, lora in [("ar", False), *variants]:     # warm-up, not timed
                run_variant(model, prompts[:1], mode, args.block_lengths[0], lora, args,
                            max_new_tokens=4)
            ar = run_variant(model, prompts, "ar", args.block_lengths[0], False, args)
            rows = [ar] + [run_variant(model, prompts, mode, block, lora, args)
                           for block in args.block_lengths for mode, lora in variants]
            sweep, steps = [], []
            if continuations is not None:
                for row in rows:
                    score(row, tok, continuations, None if row is ar else ar.outputs,
                          args.max_new_tokens)
                if not args.no_sweep:
                    for block in args.block_lengths:
                        for th in args.thresholds:
                            sweep.append(score(run_variant(model, prompts, "diffusion", block,
                                                           False, args, threshold=th),
                                               tok, continuations, ar.outputs,
                                               args.max_new_tokens))
                steps = [] if args.no_steps else [
                    score(run_variant(model, prompts, "diffusion", block, False, args,
                                      max_steps=k), tok, continuations, ar.outputs,
                          args.max_new_tokens)
                    for block in args.block_lengths for k in [*args.max_steps, None]
                    if k is None or k < block]
        except DecodeError as e:
            print(f"tpf: error: {e}", file=sys.stderr)
            return 2

    print(format_table(rows, args.markdown))
    print()
    if sweep:
        print("diffusion threshold sweep (TPF vs token agreement with ar):")
        print(sweep_table(sweep, args.markdown))
        print()
        if args.plot:
            print(plot_sweep(sweep, args.plot))
            print()
    if steps:
        print(f"diffusion step budget (max_steps k; '-': none) at threshold {args.threshold:g}:")
        print(steps_table(steps, args.markdown))
        print()
        if args.plot_steps:
            print(plot_sweep(steps, args.plot_steps,
                             label=lambda r: "-" if r.max_steps is None else str(r.max_steps),
                             title="Diffusion step budget (labels: max_steps per block)"))
            print()
    ok = True
    for row in rows:
        if row.mode not in LOSSLESS:
            continue
        same = sum(a == b for a, b in zip(row.outputs, ar.outputs))
        good = same == len(ar.outputs)
        ok &= good
        print(f"lossless check: {row.mode:<14} block {row.block} lora {row.lora:<6} == ar at T=0: "
              f"{'OK' if good else 'MISMATCH'} ({same}/{len(ar.outputs)} requests)")
    print("lossless: PASS" if ok else "lossless: FAIL (self-speculation diverged from ar)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where a canvas round's time goes on the tri-mode server: cProfile inside the scheduler.

    python benchmarks/round_profile.py --modes ar,linear_spec --concurrency 1 --markdown

One ``serve``-like tri-mode server (the embedded default, CPU flags, 4096 KV tokens) whose
scheduler process runs a ``sitecustomize`` written to a temporary folder: cProfile on around
SGLang's ``Scheduler.run_batch`` and ``process_batch_result`` only (the idle polling of the event
loop is not profiled), reset after a warm-up and dumped after the load. Per mode, ``--requests`` held-out corpus prompts of
``--max-tokens`` (ignore_eos, greedy, ``decode_mode`` per request) at ``--concurrency``; then the
cumulative time of the parts of a round, per canvas step and per round:

  round (run_batch)         SGLang's dLLM batch: the plugin's round and SGLang's batch plumbing
  canvas step               one forward of the round (``CanvasRound._step``)
    plan + upload           ``kernels.step.plan_step`` (the step plan, one copy)
    model forward           ``pass_hidden``: SGLang's layers under the step's attention
    decisions               ``decide_batched`` (device stage + its one small read)
  SGLang after the round    ``process_batch_result`` (commit, stream, finish checks)

cProfile's own overhead inflates Python-heavy parts; the shares, not the milliseconds, are the
result. Not a timing of the server (``best_vs_sglang.py`` is)."""

from __future__ import annotations

import argparse
import os
import pstats
import shlex
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.core.tokenizer import encode, load_tokenizer  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402
from nemotron_sglang.testing.bench import hardware, post_generate, print_table  # noqa: E402
from nemotron_sglang.testing.corpus import examples  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402

SITE = textwrap.dedent('''
    import cProfile, os, sys, threading, time
    OUT = os.environ["NLD_ROUND_PROFILE"]
    prof = [cProfile.Profile()]

    def patch(cls):
        for name in ("run_batch", "process_batch_result"):
            orig = cls.__dict__[name]
            def wrap(self, *a, _orig=orig, **k):
                if os.path.exists(OUT + ".reset"):        # the client's marks, between calls
                    os.remove(OUT + ".reset")
                    prof[0] = cProfile.Profile()
                prof[0].enable()
                try:
                    return _orig(self, *a, **k)
                finally:
                    prof[0].disable()
                    if os.path.exists(OUT + ".dump"):
                        prof[0].dump_stats(OUT + ".tmp")
                        os.replace(OUT + ".tmp", OUT)
                        os.remove(OUT + ".dump")
            setattr(cls, name, wrap)

    def poll():
        for _ in range(3000):
            m = sys.modules.get("sglang.srt.managers.scheduler")
            if m is not None and hasattr(m, "Scheduler"):
                return patch(m.Scheduler)
            time.sleep(0.1)
    threading.Thread(target=poll, daemon=True).start()
''')

PARTS = [("round (run_batch)", "scheduler.py", "run_batch"),
         ("canvas step", "canvas_round.py", "_step"),
         ("  plan + upload", "kernels/step.py", "plan_step"),
         ("  model forward", "sglang_plugin/model.py", "pass_hidden"),
         ("  decisions", "decide_batched.py", "decide_batched"),
         ("SGLang after the round", "scheduler.py", "process_batch_result")]


def load(url: str, prompts, concurrency: int, max_tokens: int, mode: str) -> None:
    todo = list(prompts)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                ids = todo.pop()
            post_generate(url, {"input_ids": ids, "sampling_params": {
                "max_new_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "custom_params": {"decode_mode": mode}}}, 1800)
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def parts(path: Path) -> dict[str, tuple[int, float]]:
    """name -> (calls, cumulative seconds) of each of ``PARTS``."""
    stats = pstats.Stats(str(path)).stats
    out = {}
    for name, file, func in PARTS:
        calls = secs = 0
        for (f, _, fn), (_, nc, _, ct, _) in stats.items():
            if fn == func and f.endswith(file):
                calls, secs = calls + nc, secs + ct
        out[name] = (calls, secs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="ar,linear_spec")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="round_profile-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITE)
    tok = load_tokenizer(FIXTURE)
    prompts = [encode(tok, e["prompt"]) for e in examples(1_000_000, a.requests)]
    rows = []
    for mode in a.modes.split(","):
        out = tmp / f"{mode}.prof"
        env = {"NLD_ROUND_PROFILE": str(out),
               "PYTHONPATH": os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", "")])}
        server = CPUServer(FIXTURE, tmp / f"{mode}.log",
                           ["--max-total-tokens", "4096", "--dllm-algorithm", "NemotronTriMode",
                            "--dllm-algorithm-config", str(ROOT / "launch" / "tri_mode.yaml")],
                           env=env)
        try:
            load(server.url, prompts[:2], 2, 8, mode)                       # warm-up
            Path(f"{out}.reset").touch()
            load(server.url, prompts, a.concurrency, a.max_tokens, mode)
            Path(f"{out}.dump").touch()
            load(server.url, prompts[:1], 1, 1, mode)       # one call to take the mark
            for _ in range(100):
                if out.exists() and not Path(f"{out}.dump").exists():
                    break
                time.sleep(0.1)
        finally:
            server.stop()
        got = parts(out)
        steps = max(got["canvas step"][0], 1)
        rounds = max(got["round (run_batch)"][0], 1)
        total = got["round (run_batch)"][1] + got["SGLang after the round"][1]
        for name, (calls, secs) in got.items():
            per = steps if name.startswith(("canvas", "  ")) else rounds
            rows.append([mode, name, calls, 1000 * secs / per, 100 * secs / total])
    print(f"# hardware: {hardware(triton_interpret=False)}")
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# {a.requests} held-out prompts x {a.max_tokens} tokens (ignore_eos), greedy, "
          f"concurrency {a.concurrency}; cProfile in the scheduler (shares are the result)")
    print_table(["mode", "part", "calls", "ms per step (canvas parts) / round", "% of round time"],
                rows, a.markdown, left=2)


if __name__ == "__main__":
    main()

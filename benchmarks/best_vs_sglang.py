"""Each decode mode of the tri-mode server against unmodified SGLang's AR on the same weights,
one client, held-out corpus prompts (issue 36's side-by-side run).

    python benchmarks/best_vs_sglang.py --concurrency 1,8 --markdown

1. Vanilla SGLang serves the trained fixture rewritten as ``Ministral3ForCausalLM``
   (``testing.mistral3.write_ministral3_copy``; the plugin not loaded, only the CPU platform),
   then the tri-mode server serves the fixture (``launch/tri_mode.yaml``); same flags (CPU,
   torch_native, fp32, ``OMP_NUM_THREADS=1``, 4096 KV tokens, ``--max-running-requests 16``).
2. One client for both: ``--requests`` held-out corpus prompts (seed 1,000,000) sent as
   ``/generate`` calls, ``--concurrency`` at a time (threads), greedy, ``--max-tokens`` each
   (``ignore_eos``: every request emits exactly that many), ``decode_mode`` per request on the
   tri-mode server. Output tokens / wall time of the batch, best of ``--repeats``.
3. Lossless modes must return vanilla's tokens (checked on every request; exit 1 otherwise).
Prints tok/s per (mode, concurrency) and the ratio to vanilla's AR.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.core.modes import DECODE_MODES, SELF_SPEC_MODES  # noqa: E402
from nemotron_sglang.core.tokenizer import encode, load_tokenizer  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402
from nemotron_sglang.testing.bench import hardware, post_generate, print_table  # noqa: E402
from nemotron_sglang.testing.corpus import examples  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402
from nemotron_sglang.testing.mistral3 import write_ministral3_copy  # noqa: E402

MODES = DECODE_MODES
LOSSLESS = ("ar", *SELF_SPEC_MODES)               # greedy: vanilla AR's tokens exactly


def load(url: str, prompts, concurrency: int, max_tokens: int, mode: str | None):
    """(outputs in prompt order, seconds): every prompt once, ``concurrency`` at a time."""
    outputs: list = [None] * len(prompts)
    next_i = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(prompts):
                return
            params = {"max_new_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
            if mode is not None:
                params["custom_params"] = {"decode_mode": mode}
            body = {"input_ids": prompts[i], "sampling_params": params}
            outputs[i] = post_generate(url, body, 1800)["output_ids"]

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outputs, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--port", type=int, default=30188)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    conc = [int(c) for c in a.concurrency.split(",")]
    modes = a.modes.split(",")
    tok = load_tokenizer(FIXTURE)
    prompts = [encode(tok, e["prompt"]) for e in examples(1_000_000, a.requests)]
    tmp = Path(tempfile.mkdtemp(prefix="best_vs_sglang-"))
    os.environ["OMP_NUM_THREADS"] = "1"
    flags = ["--max-total-tokens", "4096", "--max-running-requests", "16"]
    runs = {"vanilla": (write_ministral3_copy(FIXTURE, tmp / "ministral3"), [None],
                        {"SGLANG_PLUGINS": "nemotron_cpu"}, []),
            "tri-mode": (FIXTURE, modes, {}, ["--dllm-algorithm", "NemotronTriMode",
                                              "--dllm-algorithm-config",
                                              str(ROOT / "launch" / "tri_mode.yaml")])}
    tps: dict = {}
    outs: dict = {}
    for name, (model, server_modes, env, extra) in runs.items():
        server = CPUServer(model, tmp / f"{name}.log", flags + extra, env=env, port=a.port)
        try:
            load(server.url, prompts[:2], 2, 8, server_modes[0])          # warm-up
            for mode in server_modes:
                for c in conc:
                    best = 0.0
                    for _ in range(a.repeats):
                        got, secs = load(server.url, prompts, c, a.max_tokens, mode)
                        best = max(best, sum(map(len, got)) / secs)
                        outs[(mode or "vanilla", c)] = got
                    tps[(mode or "vanilla", c)] = best
        finally:
            server.stop()
    same = all(outs[(m, c)] == outs[("vanilla", c)] for m in LOSSLESS if m in modes
               for c in conc)
    print(f"# hardware: {hardware(triton_interpret=False)}")
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# {a.requests} held-out corpus prompts, {a.max_tokens} tokens each (ignore_eos), "
          f"greedy, best of {a.repeats}; both servers --max-running-requests 16, 4096 KV tokens; "
          f"lossless modes' tokens equal vanilla's: {same}")
    rows = [["vanilla SGLang AR", *[tps[("vanilla", c)] for c in conc], *[1.0 for _ in conc]]]
    for m in modes:
        rows.append([f"tri-mode {m}", *[tps[(m, c)] for c in conc],
                     *[tps[(m, c)] / tps[("vanilla", c)] for c in conc]])
    print_table(["server / mode", *[f"tok/s c={c}" for c in conc],
                 *[f"× vanilla c={c}" for c in conc]], rows, a.markdown)
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()

"""Serving-round benchmark: what each request costs per cycle on the real server, and how much a
request is slowed by neighbours in other modes.

    python benchmarks/round.py                     # starts a CPU server on the trained fixture
    python benchmarks/round.py --url http://127.0.0.1:30000 --markdown

Table 1 (per mode, held-out corpus prompts of the trained fixture, greedy, ``--max-tokens``):
the server's counters from ``meta_info`` against core's decoders on the same prompts in-process —
forwards per cycle, scheduler rounds per output token, re-prefills, server TPF and core TPF (equal
when the server runs core's passes; DESIGN §6 target: within 5 %).

Table 2 (mixed load): the median latency of one request of each mode alone, and the same request
while ``--neighbours`` diffusion requests (``ignore_eos``, 4 × ``--max-tokens`` tokens) run beside
it, and the ratio (DESIGN §6 target: ≤ 1.5). Each point is ``--repeats`` requests, one at a time.

Started here, the server is ``sglang.launch_server --dllm-algorithm NemotronTriMode`` on the CPU
(torch_native attention, fp32, OMP_NUM_THREADS=1, the plugin's CPU platform), loopback only.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.testing.bench import hardware, post_generate, print_table  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402

from nemotron_sglang.core.modes import DECODE_MODES as MODES  # noqa: E402
from nemotron_sglang.core.modes import SELF_SPEC_MODES  # noqa: E402


def generate(url: str, ids, mode: str, max_new: int, **extra) -> dict:
    return post_generate(url, {"input_ids": ids, "sampling_params": {
        "max_new_tokens": max_new, "temperature": 0, **extra,
        "custom_params": {"decode_mode": mode}}})


def counters_table(url: str, prompts, max_new: int) -> list[list]:
    import torch

    from nemotron_sglang.core.decoding import DecodeParams, Request, generate as core_generate
    from nemotron_sglang.core.weights import load_model

    core = load_model(FIXTURE, dtype=torch.float32)
    rows = []
    for mode in MODES:
        want = core_generate(core, [Request(p, mode, DecodeParams(max_new_tokens=max_new))
                                    for p in prompts])
        tokens = forwards = cycles = rounds = reprefills = same = 0
        for ids, w in zip(prompts, want):
            got = generate(url, ids, mode, max_new)
            meta = got["meta_info"]
            tokens += len(got["output_ids"])
            forwards += meta["nld_forwards"]
            cycles += meta["nld_cycles"]
            rounds += meta["nld_rounds"]
            reprefills += meta["nld_reprefills"]
            same += got["output_ids"] == w.output_ids and meta["nld_forwards"] == w.forwards
        core_tpf = sum(len(w.output_ids) for w in want) / sum(w.forwards for w in want)
        rows.append([mode, len(prompts), tokens, forwards, cycles,
                     forwards / cycles if cycles else float("nan"), rounds / tokens, reprefills,
                     tokens / forwards, core_tpf, f"{same}/{len(prompts)}"])
    return rows


def latency(url: str, ids, mode: str, max_new: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(url, ids, mode, max_new)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mixed_table(url: str, prompts, max_new: int, neighbours: int, repeats: int) -> list[list]:
    rows = []
    for mode in ("ar", *SELF_SPEC_MODES):
        alone = latency(url, prompts[0], mode, max_new, repeats)
        stop = threading.Event()

        def neighbour(k):
            while not stop.is_set():
                generate(url, prompts[1 + k % (len(prompts) - 1)], "diffusion", 4 * max_new,
                         ignore_eos=True)

        threads = [threading.Thread(target=neighbour, args=(k,), daemon=True)
                   for k in range(neighbours)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        beside = latency(url, prompts[0], mode, max_new, repeats)
        stop.set()
        for t in threads:
            t.join(timeout=600)
        rows.append([mode, alone * 1e3, beside * 1e3, beside / alone])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one here)")
    p.add_argument("--port", type=int, default=30123)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--neighbours", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()

    from nemotron_sglang.core.tokenizer import load_tokenizer
    from nemotron_sglang.testing.corpus import corpus_prompts

    prompts, _ = corpus_prompts(load_tokenizer(FIXTURE), a.prompts, 1_000_000)
    server = None
    url = a.url
    if url is None:
        server = CPUServer(FIXTURE, Path("/tmp/nemotron_round_bench.log"),
                           ["--max-total-tokens", "8192", "--dllm-algorithm",
                            "NemotronTriMode", "--max-running-requests", "16"], port=a.port)
        url = server.url
    try:
        generate(url, prompts[0], "linear_spec", 8)            # warm-up
        print(f"# hardware: {hardware(triton_interpret=False)}")
        print(f"# command: python {shlex.join(sys.argv)}")
        print(f"# server: {url} on {FIXTURE.name}, {a.prompts} held-out prompts (corpus seed "
              f"1000000), greedy, max_tokens {a.max_tokens}")
        print("\n## per-request counters, server against core")
        print_table(["mode", "reqs", "tokens", "forwards", "cycles", "fwd/cycle",
                     "rounds/token", "reprefills", "server TPF", "core TPF", "equal core"],
                    counters_table(url, prompts, a.max_tokens), a.markdown)
        print(f"\n## mixed load: one request alone vs beside {a.neighbours} diffusion requests "
              f"(median of {a.repeats}, ms)")
        print_table(["mode", "alone", "beside diffusion", "ratio"],
                    mixed_table(url, prompts, a.max_tokens, a.neighbours, a.repeats), a.markdown)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

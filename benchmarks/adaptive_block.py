"""``auto`` with the adaptive block against every fixed lossless mode and block, by concurrency.

One server (started here on the CPU, or ``--url``) with the cost table of ``--cost-model`` (the
shipped CPU table by default). For each concurrency c in ``--concurrency`` and each config —
``ar``, ``linear_spec`` at every block in ``--blocks``, ``quadratic_spec`` at ``--quadratic-blocks``
(the fused pass is R·(B+1) tokens per request, so large blocks are slow on a CPU) and ``auto``
(no block_length: the server picks per round) — it sends waves of c concurrent greedy requests
(held-out corpus prompts of the embedded default, ``--max-tokens``) until ``--min-requests`` have
run, and reports the median output tokens per second of ``--repeats`` interleaved runs, in a
shuffled order each time (on this CPU two identical runs differ by up to ±10 %). Diffusion is left out: it is not lossless, so its
tokens are not the same work. The last columns: the best fixed config, ``auto`` / best (target
≥ 0.95) and the block auto reported (``usage``-style ``block_length``, most rounds).

    python benchmarks/adaptive_block.py --markdown
    python benchmarks/adaptive_block.py --concurrency 1,4,16 --blocks 8,32 --quadratic-blocks ""
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.testing.bench import hardware, post_generate, print_table  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402

CPU_TABLE = ROOT / "nemotron_sglang" / "serving" / "cost_cpu.json"


def generate(url: str, ids, custom: dict, max_new: int) -> dict:
    return post_generate(url, {"input_ids": ids, "sampling_params": {
        "max_new_tokens": max_new, "temperature": 0, "custom_params": custom}})


def run_point(url: str, prompts, custom: dict, conc: int, max_new: int, min_requests: int):
    """(tokens/s, most reported block) over waves of ``conc`` concurrent requests."""
    waves = max(1, -(-min_requests // conc))
    tokens, blocks, k = 0, collections.Counter(), 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        for _ in range(waves):
            batch = [prompts[(k + i) % len(prompts)] for i in range(conc)]
            k += conc
            for out in pool.map(lambda ids: generate(url, ids, custom, max_new), batch):
                tokens += len(out["output_ids"])
                blocks[out["meta_info"]["nld_block_length"]] += 1
    return tokens / (time.perf_counter() - t0), blocks.most_common(1)[0][0]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=None)
    ap.add_argument("--port", type=int, default=30125)
    ap.add_argument("--cost-model", type=Path, default=CPU_TABLE)
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    ap.add_argument("--blocks", default="4,8,16,32")
    ap.add_argument("--quadratic-blocks", default="4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="median of this many runs per point")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()

    from nemotron_sglang.core.tokenizer import load_tokenizer
    from nemotron_sglang.testing.corpus import corpus_prompts

    prompts, _ = corpus_prompts(load_tokenizer(FIXTURE), 64, 1_000_000)
    table = json.loads(a.cost_model.read_text())
    configs = [("ar", {"decode_mode": "ar"})]
    configs += [(f"linear_spec/{b}", {"decode_mode": "linear_spec", "block_length": b})
                for b in _ints(a.blocks)]
    configs += [(f"quadratic_spec/{b}", {"decode_mode": "quadratic_spec", "block_length": b})
                for b in _ints(a.quadratic_blocks)]
    configs.append(("auto", {"decode_mode": "auto"}))
    server, url = None, a.url
    if url is None:
        cfg = Path(tempfile.mkdtemp()) / "tri_mode.yaml"
        cfg.write_text(f"default_mode: linear_spec\ncost_model: {json.dumps(table)}\n")
        concs = _ints(a.concurrency)
        server = CPUServer(FIXTURE, Path("/tmp/nemotron_adaptive_bench.log"),
                           ["--dllm-algorithm", "NemotronTriMode",
                            "--dllm-algorithm-config", str(cfg),
                            "--max-running-requests", str(max(concs)),
                            "--max-total-tokens", "32768"], port=a.port)
        url = server.url
    try:
        generate(url, prompts[0], {"decode_mode": "linear_spec"}, 8)      # warm-up
        print(f"# hardware: {hardware(triton_interpret=False)}")
        print(f"# command: python benchmarks/adaptive_block.py {shlex.join(sys.argv[1:])}")
        print(f"# cost table: {a.cost_model.name} ({table.get('device', '?')}); greedy, "
              f"max_tokens {a.max_tokens}, >= {a.min_requests} requests per run, median of "
              f"{a.repeats} runs")
        rows = []
        for conc in _ints(a.concurrency):
            samples, auto_block = collections.defaultdict(list), None
            for rep in range(a.repeats):        # interleaved, a new order each time, so drift
                order = list(configs)           # and order effects hit every config alike
                random.Random(1000 * conc + rep).shuffle(order)
                for name, custom in order:
                    rate, block = run_point(url, prompts, custom, conc, a.max_tokens,
                                            a.min_requests)
                    samples[name].append(rate)
                    if name == "auto":
                        auto_block = block
                    print(f"#   c={conc} {name}: {rate:.1f} tok/s (block {block})",
                          file=sys.stderr, flush=True)
            rates = {k: statistics.median(v) for k, v in samples.items()}
            fixed = {k: v for k, v in rates.items() if k != "auto"}
            best = max(fixed, key=fixed.get)
            rows.append([conc] + [rates[n] for n, _ in configs] +
                        [best, rates["auto"] / fixed[best], auto_block])
        print_table(["conc"] + [n for n, _ in configs] + ["best fixed", "auto / best",
                                                          "auto block"], rows, a.markdown)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()

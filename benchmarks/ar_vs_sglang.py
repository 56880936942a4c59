"""``ar`` on the tri-mode server against unmodified SGLang serving the same weights as a plain
Ministral3, with SGLang's own load generator (``python -m sglang.bench_serving``).

    python benchmarks/ar_vs_sglang.py --concurrency 1,4,16,0 --markdown      # 0 = unbounded
    python benchmarks/ar_vs_sglang.py --caps defaults                        # one table only

1. The trained fixture is rewritten as a ``Ministral3ForCausalLM`` checkpoint in a temporary
   folder (``testing.mistral3.write_ministral3_copy``: ``encoder.`` → ``model.``,
   ``diffusion_head`` → ``lm_head``, ``original_max_position_embeddings`` at the top level).
2. One server at a time, same flags (CPU, torch_native, fp32, ``OMP_NUM_THREADS=1``, 4096 KV
   tokens): vanilla SGLang on that copy with the plugin not loaded (``SGLANG_PLUGINS=nemotron_cpu``:
   only the CPU platform, which SGLang needs on a CPU), then ``--dllm-algorithm NemotronTriMode``
   on the fixture with ``default_mode: ar``.
3. ``--caps``, one table each: ``defaults``, neither server gets ``--max-running-requests`` (each
   runs as a user runs it: SGLang's own limit from its KV pool, the tri-mode server's derived by
   the plugin, ``core/limits.py``), and ``N``, both get ``--max-running-requests N`` (equal caps).
   Each table's heading names the cap each server ran at (read from its start-up log).
4. Both get the same greedy check (``/generate`` on held-out prompts: identical tokens or exit 1)
   and the same ``bench_serving`` load per concurrency: ``--backend sglang --dataset-name
   random-ids --tokenize-prompt``, ``--num-prompts``, input / output lengths, ignore_eos, seed 1
   (``testing.bench.BENCH_SERVING``: no ``datasets`` install needed).
5. ``--repeats`` times, the two servers taking turns (vanilla first in even repeats, tri-mode
   first in odd ones), so that a drift of the machine's speed within the run (seen here: ±10 %
   within an hour) falls on both sides of each ratio.
Prints the median output tokens/s per concurrency, the median ratio tri-mode / vanilla over the
repeats (each repeat's ratio from its own pair of runs) and their range (DESIGN §6: ≥ 0.95).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.testing.bench import (bench_serving, hardware, post_generate,  # noqa: E402
                                           print_table)
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402
from nemotron_sglang.testing.mistral3 import write_ministral3_copy  # noqa: E402


def greedy(port: int, prompts, max_new: int) -> list[list[int]]:
    body = {"input_ids": prompts, "sampling_params": {"max_new_tokens": max_new, "temperature": 0}}
    return [o["output_ids"] for o in post_generate(f"http://127.0.0.1:{port}", body, 600)]


def running_cap(log: Path, vanilla: bool) -> str:
    """The cap a server ran at, from its start-up log (SGLang's line; the plugin's for tri-mode)."""
    text = log.read_text()
    m = re.search(r"max_running_requests=(\d+)" if vanilla else
                  r"NemotronTriMode: max_running_requests (\d+)", text)
    return m.group(1) if m else "?"


def parse_caps(text: str) -> list[int | None]:
    """``defaults,16`` → [None, 16] (None: no ``--max-running-requests``)."""
    caps: list[int | None] = []
    for item in text.split(","):
        caps.append(None if item.strip() == "defaults" else int(item))
    return caps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,0", help="comma list; 0 = unbounded")
    p.add_argument("--caps", default="defaults,16",
                   help="comma list, one table each: 'defaults' (no --max-running-requests for "
                        "either server) or N (--max-running-requests N for both)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--port", type=int, default=30177)
    p.add_argument("--repeats", type=int, default=3, help="server pairs, taking turns")
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    conc = [int(c) for c in a.concurrency.split(",")]
    caps = parse_caps(a.caps)

    from nemotron_sglang.core.tokenizer import load_tokenizer
    from nemotron_sglang.testing.corpus import corpus_prompts

    prompts, _ = corpus_prompts(load_tokenizer(FIXTURE), 8, 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="ar_vs_sglang-"))
    plain = write_ministral3_copy(FIXTURE, tmp / "ministral3")
    yaml = tmp / "ar.yaml"
    yaml.write_text("default_mode: ar\n")
    servers = {
        "vanilla SGLang (Ministral3ForCausalLM)": (plain, [], {"SGLANG_PLUGINS": "nemotron_cpu"}),
        "tri-mode server, decode_mode ar": (FIXTURE, ["--dllm-algorithm", "NemotronTriMode",
                                                      "--dllm-algorithm-config", str(yaml)], {}),
    }
    names = list(servers)
    tps: dict = {}
    ran_at: dict = {}                     # (cap, name) -> the cap the server logged
    outputs = []                          # greedy tokens of each server run
    for cap in caps:
        flags = ["--max-total-tokens", "4096"] + \
            ([] if cap is None else ["--max-running-requests", str(cap)])
        for rep in range(a.repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):
                model, extra, env = servers[name]
                log = tmp / f"{name[:7]}-{cap}.log"
                server = CPUServer(model, log, [*flags, *extra], env=env, port=a.port)
                try:
                    ran_at[(cap, name)] = running_cap(log, name == names[0])
                    outputs.append(greedy(a.port, prompts, 48))
                    load = (a.num_prompts, a.input_len, a.output_len)
                    bench_serving(a.port, FIXTURE, conc[0], *load, tmp / "warm.jsonl")
                    for c in conc:
                        r = bench_serving(a.port, FIXTURE, c, *load,
                                          tmp / f"{rep}-{name[:7]}-{cap}-{c}.jsonl")
                        tps.setdefault((cap, name, c), []).append(r["output_throughput"])
                finally:
                    server.stop()
    same = all(out == outputs[0] for out in outputs)
    print(f"# hardware: {hardware(triton_interpret=False)}")
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# bench_serving: random-ids, input {a.input_len}, output {a.output_len} (ignore_eos), "
          f"{a.num_prompts} prompts per point, {a.repeats} repeats (servers taking turns), "
          f"4096 KV tokens each; greedy tokens identical on 8 held-out prompts in every run: "
          f"{same}")
    for cap in caps:
        how = "defaults (no --max-running-requests)" if cap is None else \
            f"equal caps (--max-running-requests {cap} for both)"
        print(f"\n# {how}: vanilla ran at max_running_requests {ran_at[(cap, names[0])]}, "
              f"tri-mode at {ran_at[(cap, names[1])]}")
        rows = []
        for c in conc:
            van, tri = tps[(cap, names[0], c)], tps[(cap, names[1], c)]
            ratios = [t / v for t, v in zip(tri, van)]
            rows.append([c or "unbounded", statistics.median(van), statistics.median(tri),
                         statistics.median(ratios), f"{min(ratios):.3f}-{max(ratios):.3f}"])
        print_table(["concurrency", "vanilla tok/s", "tri-mode ar tok/s", "ratio (median)",
                     "ratio range"], rows, a.markdown)
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()

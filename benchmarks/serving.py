"""Serving benchmark: SGLang's own load generator (``python -m sglang.benchmark.serving``, a.k.a.
``sglang.bench_serving``) against a tri-mode server, once per (decode mode, concurrency) point,
plus the plugin's tokens per forward from ``/metrics``.

    python benchmarks/serving.py --start --modes ar,linear_spec --concurrency 1,4 --markdown
    python benchmarks/serving.py --url http://127.0.0.1:30000 --tokenizer /path/to/checkpoint \\
        --modes ar,diffusion,linear_spec,quadratic_spec,auto --requests 32 --max-tokens 64
    python benchmarks/serving.py --start --modes ar --thresholds 0.5,0.9 --json /tmp/srv.json

``--url``: a running ``nemotron-sglang serve`` (or SGLang with ``--dllm-algorithm
NemotronTriMode``; ``--enable-metrics`` for TPF). ``--start``: this script starts a CPU server of
``--model`` (default: the embedded checkpoint) on a free loopback port with ``launch/tri_mode.yaml``
and stops it at the end. Each point is one bench_serving run: ``--backend sglang-oai`` (streaming
``/v1/completions``), ``--dataset-name random-ids`` (random token ids decoded to text, nothing
downloaded; the server re-tokenizes, so prompt lengths are approximate), ``--random-range-ratio
1``, ``ignore_eos``, ``--seed 1``, one warm-up request, the prefix cache flushed after it, and
``--extra-request-body {"decode_mode": MODE, "temperature": 0}`` (``--thresholds``: diffusion
again with each per-request ``threshold``).

Columns (times in ms, from bench_serving's JSON record; p50 = its median):
- ``ok``: completed requests / sent. ``tok/s``: output tokens / duration of the point.
- ``TTFT``: request start to the first chunk with text.
- ``TPOT``: (latency - TTFT) / (output tokens - 1), per request.
- ``ITL``: gaps between text chunks. Block modes commit several tokens per chunk, so this is per
  chunk, not per token. A request whose whole output comes in one chunk (diffusion, output <=
  one block) has no gap: bench_serving then reports 0 for TPOT and ITL.
- ``TPF``: tokens per forward, delta ``nemotron_sglang_tokens_total`` / delta
  ``nemotron_sglang_forwards_total`` for the point's mode on ``/metrics`` (prefill excluded);
  it includes bench_serving's warm-up request (same mode, <= 32 tokens). ``auto`` is counted
  under ``auto``, whatever it chose.
``--json OUT`` saves every bench_serving record (with per-request details) and counter delta.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nemotron_sglang.core.modes import SERVING_MODES
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.testing.bench import BENCH_SERVING, hardware, print_table
from nemotron_sglang.testing.cpu_server import CPUServer

CONFIG = Path(__file__).resolve().parents[1] / "launch" / "tri_mode.yaml"
SERVER_FLAGS = ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config", str(CONFIG),
                "--enable-metrics", "--max-running-requests", "16", "--max-total-tokens", "16384"]
COUNTERS = {"nemotron_sglang_tokens_total": "tokens", "nemotron_sglang_forwards_total": "forwards"}
COLUMNS = ["mode", "conc", "ok", "tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
           "ITL p50", "ITL p99", "TPF"]


def counters(url: str) -> dict[tuple[str, str], float] | None:
    """{(tokens|forwards, mode): value} from ``/metrics``; None if it does not answer."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {(COUNTERS[s.name], s.labels.get("mode", "")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name in COUNTERS}


def bench(url: str, a, body: dict, conc: int, out: Path) -> tuple[dict | None, str]:
    """One bench_serving run; (its JSON record or None, the tail of its output)."""
    cmd = [*BENCH_SERVING, "--backend", "sglang-oai", "--base-url", url,
           "--tokenizer", str(a.tokenizer), "--dataset-name", "random-ids",
           "--num-prompts", str(a.requests), "--random-input-len", str(a.input_len),
           "--random-output-len", str(a.max_tokens), "--random-range-ratio", "1",
           "--max-concurrency", str(conc), "--seed", "1", "--flush-cache",
           "--extra-request-body", json.dumps(body), "--output-file", str(out),
           "--output-details", "--disable-tqdm"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    tail = "\n".join(line[:300] for line in (p.stdout + p.stderr).strip().splitlines()[-15:])
    if p.returncode != 0 or not out.exists():
        return None, tail
    return json.loads(out.read_text().strip().splitlines()[-1]), tail


def ms(rec: dict | None, key: str) -> str:
    v = None if rec is None else rec.get(key)
    return "-" if v is None else f"{v:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:30000", help="a running server")
    p.add_argument("--start", action="store_true", help="start a CPU server of --model instead")
    p.add_argument("--model", type=Path, default=EMBEDDED, help="checkpoint for --start")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default --model)")
    p.add_argument("--modes", default=",".join(SERVING_MODES),
                   help=f"comma list of {', '.join(SERVING_MODES)}")
    p.add_argument("--concurrency", default="1,4", help="comma list of --max-concurrency values")
    p.add_argument("--requests", type=int, default=16, help="requests per point")
    p.add_argument("--input-len", type=int, default=16, help="prompt tokens")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens (ignore_eos)")
    p.add_argument("--thresholds", default="", help="comma list: diffusion at each threshold too")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="save raw records")
    a = p.parse_args()
    a.tokenizer = a.tokenizer or a.model
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in SERVING_MODES]
    if bad or not modes:
        raise SystemExit(f"--modes: unknown {bad}; choose from {', '.join(SERVING_MODES)}")
    concs = [int(c) for c in a.concurrency.split(",")]
    points = [(m, {"decode_mode": m}) for m in modes]
    points += [(f"diffusion@{t}", {"decode_mode": "diffusion", "threshold": float(t)})
               for t in a.thresholds.split(",") if t.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="serving-"))
    server = CPUServer(a.model, tmp / "server.log", SERVER_FLAGS) if a.start else None
    url = server.url if server else a.url.rstrip("/")
    try:
        urllib.request.urlopen(url + "/v1/models", timeout=30).close()
    except OSError as e:
        if server:
            server.stop()
        raise SystemExit(f"no server at {url}: {e}") from None
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# hardware: {hardware(triton_interpret=False)}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# server: {url}" + (f" (started here: {a.model}, {shlex.join(SERVER_FLAGS)})"
                                 if server else ""))
    print(f"# bench_serving: sglang-oai, random-ids, input {a.input_len}, output {a.max_tokens} "
          f"(ignore_eos), {a.requests} requests per point, temperature 0, seed 1, 1 warm-up, "
          f"tokenizer {a.tokenizer}; outputs in {tmp}", flush=True)
    rows, raw, notes = [], [], []
    try:
        for label, extra in points:
            for conc in concs:
                before = counters(url)
                rec, tail = bench(url, a, {**extra, "temperature": 0}, conc,
                                  tmp / f"{label}-c{conc}.jsonl")
                after = counters(url)
                if rec is None:
                    notes.append(f"{label} c={conc}: bench_serving failed:\n{tail}")
                mode = extra["decode_mode"]
                delta = {k: after.get((k, mode), 0.0) - (before or {}).get((k, mode), 0.0)
                         for k in COUNTERS.values()} if after is not None else None
                if delta is None:
                    tpf = "-"
                    notes.append(f"{label} c={conc}: TPF -: {url}/metrics did not answer "
                                 f"(server without --enable-metrics?)")
                elif not delta["forwards"]:
                    tpf = "-"
                    notes.append(f"{label} c={conc}: TPF -: no nemotron_sglang_forwards_total"
                                 f"{{mode={mode!r}}} change on /metrics (not the NemotronTriMode "
                                 f"plugin, or its metrics not enabled)")
                else:
                    tpf = f"{delta['tokens'] / delta['forwards']:.3f}"
                ok = f"{rec['completed']}/{a.requests}" if rec else f"0/{a.requests}"
                tps = "-" if rec is None else f"{rec['output_throughput']:.1f}"
                rows.append([label, conc, ok, tps, ms(rec, "median_ttft_ms"),
                             ms(rec, "p99_ttft_ms"), ms(rec, "median_tpot_ms"),
                             ms(rec, "p99_tpot_ms"), ms(rec, "median_itl_ms"),
                             ms(rec, "p99_itl_ms"), tpf])
                raw.append({"mode": label, "body": extra, "concurrency": conc,
                            "counters_delta": delta, "bench_serving": rec})
    finally:
        if server:
            server.stop()
    print()
    print_table(COLUMNS, rows, a.markdown)
    print("\n# times in ms; ITL per text chunk, TPOT per token; TPF from /metrics "
          "(includes the warm-up request)")
    for n in notes:
        print(f"# note: {n}")
    if a.json:
        a.json.write_text(json.dumps({"command": sys.argv, "url": url, "points": raw}, indent=1))
        print(f"# raw records: {a.json}")
    return 0 if all(r["bench_serving"] and r["bench_serving"]["completed"] == a.requests
                    for r in raw) else 1


if __name__ == "__main__":
    sys.exit(main())

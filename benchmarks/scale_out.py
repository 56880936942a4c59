"""One tri-mode server against two behind each scale-out route (docs/scale-out.md), with SGLang's
own load generator.

    python benchmarks/scale_out.py --markdown

Routes, each started fresh with ``nemotron-sglang serve`` (the embedded default, its default
mode ``--mode``, CPU defaults):
  1 server          one ``serve``
  smg + 2 workers   two ``serve`` behind ``smg launch --policy round_robin`` (loopback)
  --dp-size 2       one ``serve --dp-size 2`` (SGLang's DP controller)
  Dynamo + 2 workers  Dynamo's frontend and two ``serve --dynamo`` workers (file discovery,
                    loopback; its native /generate route)
Load: ``bench_serving`` (``testing.bench.bench_serving``: /generate, random ids, ignore_eos) at
concurrency ``--concurrency`` (output tokens/s) and at concurrency 1 (median end-to-end latency;
the gateway's added latency is its median minus the single server's). On a 2-core machine two
workers share the cores the one server had, so expect well under 2×: this measures the routes'
overhead and that they work under load, not scaling.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import urllib.request
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402
from nemotron_sglang.testing.bench import bench_serving, hardware, print_table  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer, free_port  # noqa: E402
from nemotron_sglang.testing import dynamo_local  # noqa: E402

SERVE = [sys.executable, "-m", "nemotron_sglang", "serve"]
SMG = Path(sys.executable).parent / "smg"


def serve(log: Path, mode: str, extra: list[str]) -> CPUServer:
    """``serve`` of the embedded default; a worker of several on one host gets its own
    ``--nccl-port`` (a DP server derives its ranks' ports itself)."""
    ports = [] if "--dp-size" in extra else ["--nccl-port", str(free_port())]
    return CPUServer(None, log, ["--default-mode", mode, *ports, *extra], command=SERVE)


def gateway(log: Path, urls: list[str]) -> CPUServer:
    g = CPUServer(None, log, ["--worker-urls", *urls, "--policy", "round_robin",
                              "--prometheus-host", "127.0.0.1", "--prometheus-port",
                              str(free_port())], command=[str(SMG), "launch", "--host", "127.0.0.1"])
    deadline = time.time() + 120
    while True:
        with urllib.request.urlopen(g.url + "/workers", timeout=10) as r:
            if len(json.loads(r.read())["workers"]) == len(urls):
                return g
        if time.time() > deadline:
            g.stop()
            raise RuntimeError(f"smg did not register {urls}")
        time.sleep(0.5)


def dynamo(tmp: Path, mode: str, n: int) -> list[CPUServer]:
    """Dynamo's frontend (last) and ``n`` ``serve --dynamo`` workers, registered."""
    store = tmp / "dynamo-store"
    front = dynamo_local.frontend(tmp / "frontend.log", store)
    started: list[CPUServer] = []
    try:
        for i in range(n):
            started.append(dynamo_local.Worker(tmp / f"dw{i}.log", store,
                                               ["--default-mode", mode]))
        dynamo_local.wait_registered(front, store, n, started[-1].log)
        return [*started, front]
    except BaseException:
        for s in [*started, front]:
            s.stop()
        raise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="linear_spec")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale_out-"))
    rows, base_latency = [], None
    for route in ("1 server", "smg + 2 workers", "--dp-size 2", "Dynamo + 2 workers"):
        started: list[CPUServer] = []
        try:
            if route == "1 server":
                started.append(serve(tmp / "one.log", a.mode, []))
            elif route == "--dp-size 2":
                started.append(serve(tmp / "dp.log", a.mode, ["--dp-size", "2"]))
            elif route.startswith("Dynamo"):
                started += dynamo(tmp, a.mode, 2)
            else:
                started += [serve(tmp / f"w{i}.log", a.mode, []) for i in range(2)]
                started.append(gateway(tmp / "smg.log", [s.url for s in started]))
            port = started[-1].port
            bench_serving(port, FIXTURE, 4, 8, a.input_len, 8, tmp / "warm.jsonl")
            load = bench_serving(port, FIXTURE, a.concurrency, a.num_prompts, a.input_len,
                                 a.output_len, tmp / f"{route[:3]}-load.jsonl")
            one = bench_serving(port, FIXTURE, 1, 8, a.input_len, a.output_len,
                                tmp / f"{route[:3]}-one.jsonl")
        finally:
            for s in reversed(started):
                s.stop()
        latency = one["median_e2e_latency_ms"]
        base_latency = latency if base_latency is None else base_latency
        rows.append([route, load["output_throughput"], None, latency, latency - base_latency])
    for r in rows:
        r[2] = r[1] / rows[0][1]
    print(f"# hardware: {hardware(triton_interpret=False)}")
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# serve --default-mode {a.mode}; bench_serving random-ids, input {a.input_len}, "
          f"output {a.output_len} (ignore_eos); {a.num_prompts} prompts at concurrency "
          f"{a.concurrency}, 8 at concurrency 1")
    print_table(["route", f"output tok/s c={a.concurrency}", "× 1 server",
                 "median e2e ms c=1", "added ms c=1"], rows, a.markdown)


if __name__ == "__main__":
    main()

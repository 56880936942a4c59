"""What the benchmark scripts share: the hardware line, plain-text / markdown tables, a POST to a
server's ``/generate`` and SGLang's serving benchmark (its command, and one run of it: the
server they start is ``cpu_server.CPUServer``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .cpu_server import post

# ``python -m sglang.benchmark.serving`` (SGLang's serving benchmark, a.k.a. bench_serving) as a
# command prefix. Its module imports Hugging Face ``datasets`` at load time for its MMMU loader
# only, and the install does not carry that package (nor pyarrow under it): where it is missing,
# a stand-in lets the module import; ``random-ids`` and every dataset used here need none of it.
BENCH_SERVING = [sys.executable, "-c",
                 "import importlib.util, sys, types\n"
                 "if importlib.util.find_spec('datasets') is None:\n"
                 "    sys.modules['datasets'] = types.SimpleNamespace(load_dataset=None)\n"
                 "from sglang.benchmark.serving import cli_main\n"
                 "cli_main()\n"]


def hardware(triton_interpret: bool = True) -> str:
    """The machine in one line; ``triton_interpret``: a CPU run of Triton kernels (interpreter)."""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()} {cpu} ({ncpu} cores), torch {torch.__version__}"
            + (", TRITON_INTERPRET=1" if triton_interpret else ""))


def fmt(x) -> str:
    if isinstance(x, float):
        return "-" if x != x else (f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}")
    return str(x)


def table(cols, rows, markdown: bool, left: int = 1) -> str:
    """``rows`` under ``cols``, floats by ``fmt``; plain text right-aligns all but the first
    ``left`` columns."""
    cells = [[str(c) for c in cols]] + [[fmt(x) for x in r] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(r) + " |" for r in cells[1:]])
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i])
                               for i, c in enumerate(r)) for r in cells)


def print_table(cols, rows, markdown: bool, left: int = 1) -> None:
    print(table(cols, rows, markdown, left))


def post_generate(url: str, body, timeout: float = 1800):
    """POST ``body`` to ``url``/generate; the decoded answer (an error status raises)."""
    status, text = post(url + "/generate", body, timeout)
    if status != 200:
        raise RuntimeError(f"/generate: HTTP {status}: {text[:2000]}")
    return json.loads(text)


def bench_serving(port: int, tokenizer: Path, concurrency: int, num_prompts: int, input_len: int,
                  output_len: int, out: Path) -> dict:
    """One ``bench_serving`` run against ``127.0.0.1:port`` (``--backend sglang``: ``/generate``):
    ``num_prompts`` random-id prompts of ``input_len`` tokens, ``output_len`` tokens each
    (ignore_eos), at most ``concurrency`` at once (0: unbounded), seed 1; its summary (the last
    line of ``out``: ``output_throughput``, ``median_e2e_latency_ms``, ...)."""
    cmd = [*BENCH_SERVING, "--backend", "sglang",
           "--host", "127.0.0.1", "--port", str(port), "--tokenizer", str(tokenizer),
           "--dataset-name", "random-ids", "--tokenize-prompt", "--random-range-ratio", "1.0",
           "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--num-prompts", str(num_prompts), "--seed", "1", "--output-file", str(out)]
    if concurrency:
        cmd += ["--max-concurrency", str(concurrency)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(out.read_text().strip().splitlines()[-1])

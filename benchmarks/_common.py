"""What the benchmark scripts share: the hardware line, plain-text / markdown tables, a CPU
SGLang server started on loopback, and a POST to its ``/generate``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch


def hardware(triton_interpret: bool = True) -> str:
    """The machine in one line; ``triton_interpret``: a CPU run of Triton kernels (interpreter)."""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return (f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"
            + (", TRITON_INTERPRET=1" if triton_interpret else ""))


def fmt(x) -> str:
    if isinstance(x, float):
        return "-" if x != x else (f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}")
    return str(x)


def print_table(cols, rows, markdown: bool) -> None:
    cells = [cols] + [[fmt(x) for x in r] for r in rows]
    if markdown:
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in cells[1:]:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for r in cells:
        print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))


def post_generate(url: str, body, timeout: float = 1800):
    """POST ``body`` to ``url``/generate and return the decoded JSON answer."""
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def start_cpu_server(model: Path, port: int, log: Path, extra: list[str],
                     env: dict | None = None) -> subprocess.Popen:
    """``sglang.launch_server`` on the CPU (torch_native, fp32, OMP_NUM_THREADS=1, the plugin's
    CPU platform) on 127.0.0.1:``port``, polled until healthy; stop it with ``os.killpg``."""
    env = dict(os.environ, NEMOTRON_SGLANG_CPU_PLATFORM="1", OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
           "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
           "--attention-backend", "torch_native", "--dtype", "float32", *extra]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, 15)
    raise RuntimeError("server did not come up")

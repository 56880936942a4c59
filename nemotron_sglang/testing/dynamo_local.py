"""NVIDIA Dynamo on one machine, for the tests and the benchmarks: its frontend and
``nemotron-sglang serve --dynamo`` workers as ``CPUServer`` processes on loopback, found through
file discovery under one store directory (``dynamo_worker.LOCAL_ENV``; docs/scale-out.md)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from ..serving.dynamo_worker import FRONTEND_ENV, LOCAL_ENV
from .cpu_server import CPUServer, free_port

SERVE = [sys.executable, "-m", "nemotron_sglang", "serve"]


def frontend(log: Path, store: Path) -> CPUServer:
    """Dynamo's OpenAI frontend (``python -m dynamo.frontend``) on a free loopback port."""
    return CPUServer(None, log, ["--http-host", "127.0.0.1"],
                     command=[sys.executable, "-m", "dynamo.frontend"], port_flag="--http-port",
                     env={**LOCAL_ENV, **FRONTEND_ENV, "DYN_FILE_KV": str(store)})


class Worker(CPUServer):
    """A ``serve --dynamo`` worker (``extra``: serve's flags), up when its system server
    (``DYN_SYSTEM_PORT``: health, and SGLang's and Dynamo's metrics) answers; ``nccl`` is its
    torch distributed-store port."""

    def __init__(self, log: Path, store: Path, extra: list[str] = ()):
        port, self.nccl = free_port(), free_port()
        super().__init__(None, log, ["--nccl-port", str(self.nccl), *extra],
                         command=[*SERVE, "--dynamo"], port=port, port_flag=None,
                         env={**LOCAL_ENV, "DYN_FILE_KV": str(store),
                              "DYN_SYSTEM_PORT": str(port)})

    def metric(self, name: str) -> float:
        """A Prometheus sample of this worker's ``/metrics``, summed over its labels."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{"))


def instances(store: Path) -> int:
    """Worker endpoints registered in the discovery store."""
    folder = store / "v1" / "instances"
    return len(list(folder.glob("*"))) if folder.exists() else 0


def models(front: CPUServer) -> list[str]:
    with urllib.request.urlopen(front.url + "/v1/models", timeout=10) as r:
        return [m["id"] for m in json.loads(r.read().decode())["data"]]


def wait_registered(front: CPUServer, store: Path, n: int, log: Path,
                    timeout_s: float = 300, model: str = "nld") -> None:
    """Until ``n`` workers are in the store and the frontend lists ``model``."""
    deadline = time.time() + timeout_s
    while instances(store) < n or model not in models(front):
        if time.time() > deadline:
            raise RuntimeError(f"{n} Dynamo workers did not register:\n"
                               f"{Path(log).read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    time.sleep(2)                 # the frontend's watcher adds the newest instance

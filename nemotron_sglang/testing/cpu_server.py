"""A real SGLang server process on the CPU, for the tests and the benchmarks: ``sglang.launch_server``
(torch_native attention, fp32, ``OMP_NUM_THREADS=1``, the plugin's CPU platform) on a loopback
port, polled until healthy, stopped with its whole process group; plus a JSON POST."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body, timeout: float = 120) -> tuple[int, str]:
    """POST ``body`` as JSON to ``url``; (HTTP status, response text), errors included."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def launch_command(model: Path) -> list[str]:
    """SGLang's server of ``model`` on the CPU (the flags every CPU run needs)."""
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
            "--device", "cpu", "--host", "127.0.0.1", "--attention-backend", "torch_native",
            "--dtype", "float32"]


class CPUServer:
    """``command`` (default: ``launch_command(model)``) + ``--port`` + ``extra``, with ``env``
    added to the environment and the output in ``log``; up (healthy) when the constructor
    returns, which waits up to ``wait_s`` (a loaded 2-core machine needs minutes)."""

    def __init__(self, model: Path | None, log: Path, extra: list[str] = (),
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, wait_s: float = 600):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        env = dict(os.environ, NEMOTRON_SGLANG_CPU_PLATFORM="1", OMP_NUM_THREADS="1", **(env or {}))
        cmd = [*(command or launch_command(model)), "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:                     # URLError, a refused or reset connection
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()[-3000:]}")

    def post(self, path: str, body, timeout: float = 120) -> tuple[int, str]:
        return post(self.url + path, body, timeout)

    def post_json(self, path: str, body, timeout: float = 1800):
        """The decoded answer of a POST that must succeed (an error status raises)."""
        status, text = self.post(path, body, timeout)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {text[:2000]}")
        return json.loads(text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __enter__(self) -> "CPUServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

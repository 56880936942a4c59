"""A real SGLang server process for tests: started on a free loopback port with the plugin's CPU
platform, polled until healthy, stopped with its whole process group; plus small HTTP helpers."""

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

import pytest
import torch

from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.weights import load_model, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 6, 7, 8, 300, 301], [17, 400, 23], [250, 251, 252, 253, 254, 255, 256, 257, 258,
                                                  259, 260, 261, 262, 263, 264, 265, 266, 267,
                                                  268, 269, 270, 271, 272, 273, 274, 275, 276, 277]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path | None, log: Path, extra: list[str],
                 command: list[str] | None = None, env: dict[str, str] | None = None):
        """Start ``sglang.launch_server`` for ``model`` (or ``command`` + ``--port``), with
        ``env`` added to the environment."""
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, NEMOTRON_SGLANG_CPU_PLATFORM="1", OMP_NUM_THREADS="1", **(env or {}))
        if command is None:
            command = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
                       "--device", "cpu", "--host", "127.0.0.1",
                       "--attention-backend", "torch_native", "--dtype", "float32",
                       "--max-total-tokens", "4096"]
        cmd = [*command, "--port", str(self.port), *extra]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + 600      # a loaded 2-core machine needs minutes
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{log.read_text()[-3000:]}")

    def post(self, path: str, body: dict, timeout: float = 120) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def generate_ids(self, ids: list[int], max_new: int, **custom) -> dict:
        status, body = self.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": max_new, "temperature": 0, "custom_params": custom}})
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


TRI_MODE = ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config",
            str(ROOT / "launch" / "tri_mode.yaml")]


def tri_mode_server(model: Path, log: Path, max_running: int = 8) -> Server:
    """The tri-mode dLLM server of ``model`` with the shipped algorithm YAML."""
    return Server(model, log, TRI_MODE + ["--max-running-requests", str(max_running)])


def plain_ar_server(model: Path, log: Path) -> Server:
    """SGLang's plain AR server of ``model``, the reference of the sampling surface: without
    overlap scheduling, whose penalty counts lag one token (README)."""
    return Server(model, log, ["--disable-overlap-schedule"])


def loads(server) -> dict:
    """``GET /v1/loads``: per-DP-rank queue and KV figures (``num_used_tokens``: 0 when idle)."""
    with urllib.request.urlopen(server.url + "/v1/loads", timeout=10) as r:
        return json.loads(r.read().decode())


def used_tokens(server) -> int:
    return sum(int(d["num_used_tokens"]) for d in loads(server)["loads"])


def core_ids(model, mode: str, ids: list[int], max_new: int) -> list[int]:
    (r,) = generate(model, [Request(ids, mode, DecodeParams(max_new_tokens=max_new))])
    return r.output_ids



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny NLD checkpoint with LoRA (import this fixture into a test module to use it)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("srv") / "tiny", seed=0, with_lora=True)


@pytest.fixture(scope="module")
def core32(ckpt):
    return load_model(ckpt, dtype=torch.float32)

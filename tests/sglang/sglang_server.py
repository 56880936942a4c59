"""The tests' real SGLang servers (``nemotron_sglang.testing.cpu_server``: a free loopback port,
the plugin's CPU platform, stopped with its process group), the tri-mode and plain-AR launches,
and small helpers: core's tokens, the server's load."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.weights import load_model, write_tiny_checkpoint
from nemotron_sglang.testing.cpu_server import CPUServer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 6, 7, 8, 300, 301], [17, 400, 23], [250, 251, 252, 253, 254, 255, 256, 257, 258,
                                                  259, 260, 261, 262, 263, 264, 265, 266, 267,
                                                  268, 269, 270, 271, 272, 273, 274, 275, 276, 277]]


# An idle SGLang scheduler polls its sockets without sleeping: one core of this 2-core machine
# per live server (measured: 1.0 CPU-s/s idle, 0.02 with the flag), taken from the test and from
# the module's other server. SGLang's own ``--sleep-on-idle`` blocks a fully idle scheduler in
# ``zmq.Poller.poll`` instead, woken by the next request (scheduler ``on_idle``).
IDLE_SLEEP = ["--sleep-on-idle"]

# ``stop``'s SIGTERM to the group ends the scheduler first, which the main process reads as a
# crashed child: it sleeps 5 s before its crash diagnostics (py-spy, a CUDA coredump; neither
# applies on this CPU). Off for the tests' servers.
QUICK_STOP_ENV = {"SGLANG_PYSPY_DUMP_BEFORE_CRASH": "0", "SGLANG_CUDA_COREDUMP_BEFORE_CRASH": "0"}


class Server(CPUServer):
    """The tests' server: ``CPUServer`` sleeping when idle (``IDLE_SLEEP``) and stopping without
    crash diagnostics (``QUICK_STOP_ENV``), with a 4096-token KV pool unless ``command`` is
    given, and ``generate_ids``."""

    def __init__(self, model: Path | None, log: Path, extra: list[str],
                 command: list[str] | None = None, env: dict[str, str] | None = None):
        pool = [] if command else ["--max-total-tokens", "4096"]
        super().__init__(model, log, IDLE_SLEEP + pool + list(extra), command=command,
                         env={**QUICK_STOP_ENV, **(env or {})})

    def generate_ids(self, ids: list[int], max_new: int, **custom) -> dict:
        status, body = self.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": max_new, "temperature": 0, "custom_params": custom}})
        assert status == 200, body
        return json.loads(body)


TRI_MODE = ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config",
            str(ROOT / "launch" / "tri_mode.yaml")]
# both launches accept custom logit processors (test_server_features.py), as a user would enable
CUSTOM_PROCESSORS = ["--enable-custom-logit-processor"]


def tri_mode_server(model: Path, log: Path, max_running: int = 8) -> Server:
    """The tri-mode dLLM server of ``model`` with the shipped algorithm YAML."""
    return Server(model, log, TRI_MODE + CUSTOM_PROCESSORS +
                  ["--max-running-requests", str(max_running)])


def plain_ar_server(model: Path, log: Path) -> Server:
    """SGLang's plain AR server of ``model``, the reference of the sampling surface: without
    overlap scheduling, whose penalty counts lag one token (README)."""
    return Server(model, log, ["--disable-overlap-schedule"] + CUSTOM_PROCESSORS)


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


def mixed_modes_equal_core(server, core, max_new: int, timeout: float = 300) -> None:
    """Every prompt of ``PROMPTS`` in every mode, all sent at once (one round mixes the modes):
    each greedy answer equals core's (diffusion's own decoder, ar's for the lossless modes)."""
    jobs = [(ids, mode) for ids in PROMPTS
            for mode in ("ar", "diffusion", "linear_spec", "quadratic_spec")]
    results: dict = {}

    def worker(k, ids, mode):
        results[k] = server.generate_ids(ids, max_new, decode_mode=mode)["output_ids"]

    threads = [threading.Thread(target=worker, args=(k, ids, m)) for k, (ids, m) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    for k, (ids, mode) in enumerate(jobs):
        want = core_ids(core, "diffusion" if mode == "diffusion" else "ar", ids, max_new)
        assert results.get(k) == want, (mode, ids)

"""``nemotron-sglang serve`` end to end: with no ``--model`` it serves the embedded default through
SGLang's own server, prints the URL and a curl line, and answers the OpenAI routes in every mode."""

from __future__ import annotations

import json
import sys

import pytest

from sglang_server import Server

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    import os
    os.environ["NEMOTRON_SGLANG_CACHE"] = str(cache)
    try:
        s = Server(None, tmp_path_factory.mktemp("logs") / "serve.log", [],
                   command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    finally:
        del os.environ["NEMOTRON_SGLANG_CACHE"]
    yield s
    s.stop()


def test_serve_banner_and_every_mode(served):
    log = served.log.read_text()
    assert f"http://127.0.0.1:{served.port}" in log and "curl -s" in log
    for mode in ("ar", "diffusion", "linear_spec"):
        status, body = served.post("/v1/completions", {"model": "nld", "prompt": "The number after",
                                                       "max_tokens": 8, "temperature": 0,
                                                       "decode_mode": mode})
        assert status == 200, body
        usage = json.loads(body)["usage"]
        assert usage["decode_mode"] == mode and usage["completion_tokens"] > 0
    status, body = served.post("/v1/chat/completions", {
        "model": "nld", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
        "stream": True, "decode_mode": "diffusion"})
    assert status == 200 and body.rstrip().endswith("data: [DONE]")

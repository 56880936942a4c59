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


# The embedded default is the trained rule-corpus fixture: a user's first request gets the rule's
# answer, the same text in every lossless mode (the banner's curl line uses the first prompt).
RULE_PROMPTS = {"The number after 41 is": " 42. The number after 42 is 43.",
                "Q: What comes after 41? A:": " 42\nQ: What comes after 42? A: 43",
                "Count: 17, 18, 19": ", 20, 21, 22, 23",
                "def add_3(x):\n    return x + 3\n\ndef add_4(x):": "\n    return x + 4\n\ndef add_5"}


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec"])
def test_embedded_default_answers_by_the_rule(served, mode):
    for prompt, expected in RULE_PROMPTS.items():
        status, body = served.post("/v1/completions", {"model": "nld", "prompt": prompt,
                                                       "max_tokens": 24, "temperature": 0,
                                                       "decode_mode": mode})
        assert status == 200, body
        text = json.loads(body)["choices"][0]["text"]
        assert text.startswith(expected), (mode, prompt, text)

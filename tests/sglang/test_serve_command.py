"""``nemotron-sglang serve`` end to end: with no ``--model`` it serves the embedded default through
SGLang's own server, prints the URL and a curl line, and answers the OpenAI routes in every mode.
With no ``--max-running-requests`` the running cap is core's rule on the pools SGLang sized
(logged with its derivation), and more than 16 requests run in one round."""

from __future__ import annotations

import json
import random
import re
import sys

import pytest

from nemotron_sglang.core.limits import running_request_cap
from nemotron_sglang.data import EMBEDDED
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


def sglang_pools(log: str) -> tuple[int, int]:
    """SGLang's own start-up line: (KV pool tokens, request slots) it sized."""
    m = re.search(r"max_total_num_tokens=(\d+),.*?max_running_requests=(\d+),", log)
    assert m, log[-3000:]
    return int(m.group(1)), int(m.group(2))


def running_counts(log: str) -> list[int]:
    """``#running-req`` of every canvas round SGLang logged (a "Decode batch" line per
    ``--decode-log-interval`` rounds: ``metrics.report_canvas_round``)."""
    return [int(n) for n in re.findall(r"Decode batch, #running-req: (\d+),", log)]


def run_together(server, n: int, tokens: int) -> list[int]:
    """``n`` ar requests of ``tokens`` tokens (ignore_eos) sent in one batched ``/generate``;
    the running counts logged meanwhile."""
    start = len(server.log.read_text())
    prompts = [[random.randrange(20, 200) for _ in range(random.randint(4, 12))] for _ in range(n)]
    status, body = server.post("/generate", {"input_ids": prompts, "sampling_params": {
        "max_new_tokens": tokens, "temperature": 0, "ignore_eos": True,
        "custom_params": {"decode_mode": "ar"}}}, timeout=600)
    assert status == 200, body
    assert [len(o["output_ids"]) for o in json.loads(body)] == [tokens] * n
    return running_counts(server.log.read_text()[start:])


def test_running_cap_is_derived_from_memory(served):
    """No flag: the cap SGLang's dLLM server would run at (1) is replaced by core's rule on the
    KV pool and request slots SGLang logged, and the derivation is logged; so is where auto's
    switch point comes from (the shipped CPU table: measured)."""
    log = served.log.read_text()
    kv, slots = sglang_pools(log)
    block = json.loads((EMBEDDED / "config.json").read_text())["block_size"]
    cap, why = running_request_cap(kv, slots, block)
    assert f"NemotronTriMode: {why}" in log, log[-3000:]
    assert cap == min(slots, kv // (block + 1)) > 16
    assert "NemotronTriMode: auto: the block (or ar) of each round from the YAML's cost_model, " \
           "measured on: x86_64 CPU" in log


def test_more_than_16_requests_run_in_one_round(served):
    """24 requests sent at once all run in the same canvas rounds (the old fixed cap was 16)."""
    counts = run_together(served, 24, 120)
    assert counts and max(counts) == 24, counts

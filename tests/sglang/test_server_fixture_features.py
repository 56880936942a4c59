"""Issue 18's features on the trained embedded default through the real tri-mode server (with
strict thinking): a suffix fills the rule's gap, the step budget caps the passes and equals core,
and the thinking budget puts </think> at the budget in every mode, self-spec equal to ar."""

from __future__ import annotations

import json

import pytest

from sglang_server import TRI_MODE, Server

pytest.importorskip("sglang")
pytest.importorskip("xgrammar")

MODES = ("ar", "linear_spec", "quadratic_spec", "diffusion")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    from nemotron_sglang.data import EMBEDDED

    s = Server(EMBEDDED, tmp_path_factory.mktemp("logs") / "fixture.log",
               TRI_MODE + ["--max-running-requests", "4", "--reasoning-parser", "nemotron_3",
                           "--enable-strict-thinking"], env={"SGLANG_MAX_THINK_TOKENS": "1000000"})
    yield s
    s.stop()


def completion(server, **body) -> dict:
    status, text = server.post("/v1/completions", {"model": "nld", "temperature": 0, **body})
    assert status == 200, text
    return json.loads(text)


def test_suffix_fills_the_gap_of_the_rule(fx):
    right = 0
    for n in (17, 41, 58, 73):
        r = completion(fx, prompt=f"The number after {n} is", max_tokens=4,
                       suffix=f". The number after {n + 2} is {n + 3}.", decode_mode="diffusion")
        assert r["choices"][0]["finish_reason"] == "stop"
        right += r["choices"][0]["text"] == f" {n + 1}."
    assert right >= 3, right


def test_step_budget_on_the_fixture_equals_core(fx):
    import torch

    from nemotron_sglang.core.decoding import DecodeParams, Request, generate
    from nemotron_sglang.core.tokenizer import encode, load_tokenizer
    from nemotron_sglang.core.weights import load_model
    from nemotron_sglang.data import EMBEDDED

    model, tok = load_model(EMBEDDED, dtype=torch.float32), load_tokenizer(EMBEDDED)
    ids = encode(tok, "The number after 41 is")
    for k in (1, 2):
        (want,) = generate(model, [Request(ids, "diffusion", DecodeParams(max_new_tokens=32,
                                                                         max_steps=k))])
        got = fx.generate_ids(ids, 32, decode_mode="diffusion", max_steps=k)
        assert got["output_ids"] == want.output_ids
        assert got["meta_info"]["nld_forwards"][-1] == want.forwards


def test_thinking_budget_on_the_fixture_in_every_mode(fx):
    from nemotron_sglang.core.tokenizer import THINK_END_ID

    outs = {}
    for mode in MODES:
        status, text = fx.post("/generate", {
            "text": "The number after 41 is", "require_reasoning": True, "max_thinking_tokens": 5,
            "sampling_params": {"max_new_tokens": 12, "temperature": 0,
                                "custom_params": {"decode_mode": mode}}})
        assert status == 200, text
        out = json.loads(text)
        outs[mode] = out["output_ids"]
        assert out["output_ids"][5] == THINK_END_ID and "</think>" in out["text"], (mode, out)
    assert outs["linear_spec"] == outs["ar"] == outs["quadratic_spec"]

"""Issue 18's features on the trained embedded default through the real tri-mode server (with
strict thinking): a suffix fills the rule's gap, the step budget caps the passes and equals core,
and the thinking budget puts </think> at the budget in every mode, self-spec equal to ar; and
``auto`` follows the shipped YAML's cost table (linear_spec where it says so, ar where it says
ar)."""

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
        assert got["meta_info"]["nld_forwards"] == want.forwards


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


def _core_acceptance(model, ids: list[int], max_new: int) -> float:
    """Core's per-draft acceptance (hits / trials over its cycles) of a linear_spec request."""
    from nemotron_sglang.core.decoding import (DecodeParams, Request, default_cache,
                                               make_decoder)

    req = Request(ids, "linear_spec", DecodeParams(max_new_tokens=max_new))
    seen: list = []

    def keep_state(step, states):
        if not seen:
            seen.extend(states)
        return ()

    make_decoder(model, default_cache(model, [req])).run([req], on_step=keep_state)
    (st,) = seen
    assert st.draft_trials > 0
    return st.draft_hits / st.draft_trials


def test_auto_follows_the_shipped_cost_table(fx):
    """``auto`` with the cost table of the shipped YAML (the one this server loaded), decided by
    core's ``choose_block`` for a lone request: where the table says speculate (the fixture's
    acceptance and the server's prior, many tokens left) the request runs linear_spec (fewer
    forwards than tokens, accepted drafts, only blocks the table can choose); where it says ar
    (one token left after the context pass's seed, at any acceptance) it runs ar. Lossless
    either way: the tokens are core's ar."""
    import numpy as np
    import torch
    import yaml

    from nemotron_sglang.core.block_policy import PRIOR_ALPHA, CostTable, choose_block
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate
    from nemotron_sglang.core.weights import load_model
    from nemotron_sglang.data import EMBEDDED
    from round_checks import fixture_prompts

    yaml_path = TRI_MODE[TRI_MODE.index("--dllm-algorithm-config") + 1]
    with open(yaml_path) as f:
        table = CostTable.from_mapping(yaml.safe_load(f)["cost_model"])
    model = load_model(EMBEDDED, dtype=torch.float32)
    block, n = model.config.block_size, 64
    ids = fixture_prompts(1)[0]
    (ar,) = generate(model, [Request(ids, "ar", DecodeParams(max_new_tokens=n))])
    # the server's prior pools recent linear_spec acceptance: this prompt's, sent first
    assert fx.generate_ids(ids, n, decode_mode="linear_spec")["output_ids"] == ar.output_ids
    alpha = _core_acceptance(model, ids, n)
    alphas = np.linspace(min(alpha, PRIOR_ALPHA), 1.0, 41)
    first = {choose_block([a], table, block, remaining=[n - 1]) for a in alphas}
    assert 1 not in first, (alpha, first)            # the table speculates here
    allowed = {choose_block([a], table, block, remaining=[r]) for a in alphas
               for r in range(1, n)}
    got = fx.generate_ids(ids, n, decode_mode="auto")
    meta, out = got["meta_info"], got["output_ids"]
    assert out == ar.output_ids
    labels = meta["nld_mode"][len("auto("):-1].split(",")
    assert labels[0].startswith("linear_spec/") and meta["nld_block_length"] > 1, meta
    assert {1 if lb == "ar" else int(lb.split("/")[1]) for lb in labels} <= allowed, meta
    assert meta["nld_cycle_tokens"] > meta["nld_cycles"]           # drafts accepted
    assert meta["nld_forwards"] < len(out) - 1, meta                    # ar: len - 1
    # one token left after the seed: ar at every acceptance
    assert {choose_block([a], table, block, remaining=[1]) for a in np.linspace(0, 1, 41)} == {1}
    got = fx.generate_ids(ids, 2, decode_mode="auto")
    assert got["output_ids"] == ar.output_ids[:2]
    meta = got["meta_info"]
    assert meta["nld_mode"] == "auto(ar)" and meta["nld_block_length"] == 1, meta
    assert (meta["nld_forwards"], meta["nld_cycles"]) == (1, 0), meta

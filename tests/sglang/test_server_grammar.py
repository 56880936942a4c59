"""Grammars through the real server (SGLang's xgrammar backend compiles them; core honours them,
``core/decoding/grammar.py``), per grammar × mode, against SGLang's plain AR server of the same
checkpoint: greedy ``ar``, ``linear_spec`` and ``quadratic_spec`` give the plain server's tokens
(and its logprobs); every mode's output matches its regex or parses against its schema, also at
T > 0 and through ``/v1/chat/completions`` ``response_format``. Both servers run with
``--constrained-json-disable-any-whitespace`` (else xgrammar's JSON lets a tiny model emit
whitespace forever)."""

from __future__ import annotations

import json
import re

import pytest

from sglang_server import PROMPTS, TRI_MODE, Server, ckpt  # noqa: F401

pytest.importorskip("sglang")
pytest.importorskip("xgrammar")

NO_WS = ["--constrained-json-disable-any-whitespace"]
SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["answer", "n"], "additionalProperties": False}
GRAMMARS = {
    "regex": {"regex": r"(yes|no)[a-z]{2,5}\.[0-9]{1,3}"},
    "json_schema": {"json_schema": json.dumps(SCHEMA)},
    "regex+penalty": {"regex": r"[a-e ]{4,30}!", "frequency_penalty": 1.2},
}
MODES = ("ar", "linear_spec", "quadratic_spec", "diffusion")
MAX_NEW = 48


def post(server, ids, extra: dict, mode: str | None = None, **sp) -> dict:
    params = {"max_new_tokens": MAX_NEW, "temperature": 0, **extra, **sp}
    if mode is not None:
        params["custom_params"] = {"decode_mode": mode}
    status, body = server.post("/generate", {"input_ids": ids, "sampling_params": params,
                                             "return_logprob": True})
    assert status == 200, body
    return json.loads(body)


def valid(name: str, out: dict) -> bool:
    """The output is a complete sentence of its grammar (finished by it) or, cut by length, a
    prefix the grammar would let it extend (checked by the plain server's equal tokens)."""
    text = out["text"]
    done = out["meta_info"]["finish_reason"]["type"] == "stop"
    if name == "json_schema":
        if not done:
            return False
        obj = json.loads(text)
        return set(obj) == {"answer", "n"} and obj["answer"] in ("yes", "no", "maybe") and \
            0 <= obj["n"] <= 99
    return done and re.fullmatch(GRAMMARS[name]["regex"], text) is not None


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "plain.log",
               ["--disable-overlap-schedule", *NO_WS])
    try:
        return {(g, i): post(s, ids, GRAMMARS[g]) for g in GRAMMARS
                for i, ids in enumerate(PROMPTS)}
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tri(ckpt, tmp_path_factory, reference):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "tri.log",
               TRI_MODE + ["--max-running-requests", "8", *NO_WS])
    yield s
    s.stop()


def test_the_plain_server_obeys_the_grammars(reference):
    """Else the equalities below prove little: SGLang's own outputs are complete sentences."""
    for (g, i), out in reference.items():
        assert valid(g, out), (g, i, out["text"])


@pytest.mark.parametrize("grammar", list(GRAMMARS))
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_obeys_the_grammar(tri, reference, grammar, mode):
    for i, ids in enumerate(PROMPTS):
        out = post(tri, ids, GRAMMARS[grammar], mode)
        assert valid(grammar, out), (mode, grammar, i, out["text"])
        if mode == "diffusion":
            continue
        ref = reference[(grammar, i)]
        assert out["output_ids"] == ref["output_ids"], (mode, grammar, i)
        got = [x[0] for x in out["meta_info"]["output_token_logprobs"]]
        want = [x[0] for x in ref["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4, (mode, grammar, i)


@pytest.mark.parametrize("mode", MODES)
def test_sampled_outputs_obey_the_grammar(tri, mode):
    for seed in range(3):
        for i, ids in enumerate(PROMPTS):
            out = post(tri, ids, GRAMMARS["regex"], mode, temperature=1.0, sampling_seed=seed)
            assert valid("regex", out), (mode, seed, i, out["text"])


@pytest.mark.parametrize("mode", MODES)
def test_response_format_json_schema(tri, mode):
    status, body = tri.post("/v1/chat/completions", {
        "model": "nld", "messages": [{"role": "user", "content": "Answer."}], "max_tokens": 48,
        "temperature": 0, "decode_mode": mode,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "a", "schema": SCHEMA}}})
    assert status == 200, body
    choice = json.loads(body)["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    obj = json.loads(choice["message"]["content"])
    assert obj["answer"] in ("yes", "no", "maybe") and 0 <= obj["n"] <= 99


@pytest.mark.parametrize("mode", MODES)
def test_a_grammar_the_rule_cannot_meet_is_a_400(tri, mode):
    """regex "ab" completes after two tokens, min_new_tokens 5 bans the stop token it then
    needs: no token is allowed (SGLang's plain server answers a 500); the request gets a 400
    naming the conflict and the mode, and its KV is freed (the idle test below)."""
    status, body = tri.post("/generate", {"input_ids": PROMPTS[0], "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "regex": "ab", "min_new_tokens": 5,
        "custom_params": {"decode_mode": mode}}})
    assert status == 400 and "min_new_tokens" in body and mode in body, body


def test_the_server_is_idle_after_grammar_requests(tri):
    """Its own traffic (it holds alone): a finished and a refused grammar request per mode."""
    from round_checks import wait_idle

    for mode in MODES:
        assert valid("regex", post(tri, PROMPTS[1], GRAMMARS["regex"], mode))
        status, body = tri.post("/generate", {"input_ids": PROMPTS[0], "sampling_params": {
            "max_new_tokens": 12, "temperature": 0, "regex": "ab", "min_new_tokens": 5,
            "custom_params": {"decode_mode": mode}}})
        assert status == 400, body
    assert wait_idle(tri) == 0

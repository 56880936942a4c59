"""The thinking budget through the real server, in every mode, against SGLang's plain AR server.

SGLang 0.5.23 enforces it itself: with ``--reasoning-parser nemotron_3 --enable-strict-thinking``
(and its token filter on: ``SGLANG_MAX_THINK_TOKENS`` >= 0) a request's ``max_thinking_tokens``
(``/generate``) or ``custom_params.thinking_budget`` is kept by its reasoning wrapper around the
request's grammar object, which the plugin hands to core like any grammar. A budget of n puts
``</think>`` at output index n of a request that starts in its reasoning section
(``require_reasoning``; a chat with ``enable_thinking``), and the text carries it. ar,
linear_spec and quadratic_spec equal the plain server's tokens; diffusion keeps the budget too.
"""

from __future__ import annotations

import json

import pytest

from sglang_server import PROMPTS, TRI_MODE, Server, ckpt  # noqa: F401
from nemotron_sglang.core.tokenizer import THINK_END_ID

pytest.importorskip("sglang")
pytest.importorskip("xgrammar")

THINK = ["--reasoning-parser", "nemotron_3", "--enable-strict-thinking"]
ENV = {"SGLANG_MAX_THINK_TOKENS": "1000000"}     # filter on, no default budget reached
MAX_NEW = 16
BUDGETS = (0, 3, 7)


def gen(server, ids, budget=None, mode=None, **sp) -> dict:
    params = {"max_new_tokens": MAX_NEW, "temperature": 0, **sp}
    if mode is not None:
        params["custom_params"] = {"decode_mode": mode}
    body = {"input_ids": ids, "sampling_params": params, "require_reasoning": True}
    if budget is not None:
        body["max_thinking_tokens"] = budget
    status, text = server.post("/generate", body)
    assert status == 200, text
    return json.loads(text)


def chat(server, budget, mode=None) -> dict:
    body = {"model": "nld", "messages": [{"role": "user", "content": "The number after 41 is"}],
            "max_tokens": MAX_NEW, "temperature": 0, "thinking_budget": budget,
            "chat_template_kwargs": {"enable_thinking": True}}
    if mode is not None:
        body["decode_mode"] = mode
    status, text = server.post("/v1/chat/completions", body)
    assert status == 200, text
    return json.loads(text)


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "plain.log",
               ["--disable-overlap-schedule", *THINK], env=ENV)
    try:
        out = {(b, i): gen(s, ids, b)["output_ids"] for b in (None, *BUDGETS)
               for i, ids in enumerate(PROMPTS)}
        out["chat"] = chat(s, 3)
        return out
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tri(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "tri.log",
               TRI_MODE + ["--max-running-requests", "4", *THINK], env=ENV)
    yield s
    s.stop()


def test_the_reference_closes_the_reasoning_at_the_budget(reference):
    for i in range(len(PROMPTS)):
        free = reference[(None, i)]
        assert THINK_END_ID not in free          # the tiny model never ends it by itself
        for b in BUDGETS:
            out = reference[(b, i)]
            assert out[b] == THINK_END_ID and THINK_END_ID not in out[:b]
            assert out[:b] == free[:b]


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec"])
def test_each_lossless_mode_equals_the_plain_server_with_the_budget(tri, reference, mode):
    for i, ids in enumerate(PROMPTS):
        assert gen(tri, ids, None, mode)["output_ids"] == reference[(None, i)]
        for b in BUDGETS:
            assert gen(tri, ids, b, mode)["output_ids"] == reference[(b, i)], (b, i)


def test_diffusion_keeps_the_budget(tri):
    for ids in PROMPTS:
        free = gen(tri, ids, None, "diffusion")["output_ids"]
        for b in BUDGETS:
            out = gen(tri, ids, b, "diffusion")
            ids_out = out["output_ids"]
            assert ids_out[b] == THINK_END_ID and THINK_END_ID not in ids_out[:b], (b, ids_out)
            assert out["text"].count("</think>") == 1       # the emitted text carries it
        # a budget the request cannot reach constrains nothing: the unbudgeted decode
        assert gen(tri, ids, MAX_NEW, "diffusion")["output_ids"] == free


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "diffusion"])
def test_chat_reports_the_reasoning_section(tri, reference, mode):
    """/v1/chat/completions with enable_thinking and a top-level thinking_budget: the reasoning
    parser splits the text at the forced </think>; self-spec equals the plain server's."""
    got = chat(tri, 3, mode)["choices"][0]["message"]
    want = reference["chat"]["choices"][0]["message"]
    # the forced </think> splits the text (it decodes as text: an added, non-special token)
    assert got["reasoning_content"] and got["content"], got
    assert want["reasoning_content"] and want["content"], want
    if mode != "diffusion":
        assert (got["reasoning_content"], got["content"]) == \
            (want["reasoning_content"], want["content"])


@pytest.mark.parametrize("body,field", [
    ({"thinking_budget": -1}, "thinking_budget"),
    ({"thinking_budget": "4"}, "thinking_budget"),
    ({"thinking_budget": 4, "decode_mode": "diffusion", "max_steps": 2}, "max_steps"),
])
def test_bad_budgets_get_400_naming_the_field(tri, body, field):
    status, text = tri.post("/v1/completions", {"model": "nld", "prompt": "Hello",
                                                "max_tokens": 4, **body})
    assert status == 400 and field in json.loads(text)["message"], text

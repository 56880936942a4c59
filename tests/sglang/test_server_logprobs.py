"""Output logprobs through the real server: every emitted token's log-probability under the
distribution it was emitted from, as SGLang reports it (``meta_info.output_token_logprobs``,
``output_top_logprobs``; log softmax(z / T) of the processed logits, T = 1 when greedy).

- greedy, per mode (ar, linear_spec, quadratic_spec): tokens and logprobs (top 3 and the
  ``token_ids_logprob`` ids included, duplicates kept) equal SGLang's plain AR server of the same
  checkpoint within 1e-4 (fp32), with and without a penalty; an id outside the vocabulary in
  ``token_ids_logprob`` is a 400 naming the field;
- sampled (T = 0.7), ar and self-spec: each reported logprob equals core's AR law at that
  position (teacher-forced over the emitted text) within 1e-4 — self-spec reports the verifier's,
  i.e. AR's; diffusion reports its committing pass's, a valid log-probability per token.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sglang_server import PROMPTS, ckpt, core32, plain_ar_server, tri_mode_server  # noqa: F401
from nemotron_sglang.core.attention import CAUSAL
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.kv_cache import PagedKVCache

pytest.importorskip("sglang")

MAX_NEW = 12
CASES = {"plain": {}, "penalty": {"frequency_penalty": 1.2}}


CHOSEN = [7, 0, 7, 301]          # token_ids_logprob: in order, a duplicate kept


def run(server, ids, temperature=0.0, feature=None, mode=None, top=3, chosen=None,
        start=None) -> dict:
    params = {"max_new_tokens": MAX_NEW, "temperature": temperature, **(feature or {})}
    if mode:
        params["custom_params"] = {"decode_mode": mode}
    body = {"input_ids": ids, "sampling_params": params, "return_logprob": True,
            "top_logprobs_num": top}
    if start is not None:                 # prompt logprobs from this prompt position on
        body["logprob_start_len"] = start
    if chosen:
        body["token_ids_logprob"] = chosen
    status, body = server.post("/generate", body)
    assert status == 200, body
    out = json.loads(body)
    meta = out["meta_info"]
    lps = [(t, lp) for lp, t, _ in meta["output_token_logprobs"]]
    tops = [[(t, lp) for lp, t, _ in row] for row in meta.get("output_top_logprobs") or []]
    at_ids = [[(t, lp) for lp, t, _ in row] for row in meta.get("output_token_ids_logprobs")
              or []]
    assert [t for t, _ in lps] == out["output_ids"]
    if chosen:
        assert len(at_ids) == len(lps) and all([t for t, _ in r] == chosen for r in at_ids)
    prompt = {key: meta.get(key) for key in ("input_token_logprobs", "input_top_logprobs",
                                             "input_token_ids_logprobs")}
    return {"ids": out["output_ids"], "lps": lps, "tops": tops, "at_ids": at_ids,
            "prompt": prompt}


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    s = plain_ar_server(ckpt, tmp_path_factory.mktemp("logs") / "plain.log")
    try:
        want = {(c, i): run(s, ids, feature=f, chosen=CHOSEN) for c, f in CASES.items()
                for i, ids in enumerate(PROMPTS)}
        want.update({("prompt", i, start): run(s, ids, chosen=CHOSEN, start=start)
                     for i, ids in enumerate(PROMPTS) for start in PROMPT_STARTS})
        want["echo"] = echo(s, None)
        return want
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tri(ckpt, tmp_path_factory, reference):
    s = tri_mode_server(ckpt, tmp_path_factory.mktemp("logs") / "tri.log")
    yield s
    s.stop()


def _close(a, b, where):
    assert [t for t, _ in a] == [t for t, _ in b], where
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4, (where, x, y)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec"])
def test_greedy_logprobs_equal_the_plain_ar_server(tri, reference, mode, case):
    for i, ids in enumerate(PROMPTS):
        got = run(tri, ids, feature=CASES[case], mode=mode, chosen=CHOSEN)
        want = reference[(case, i)]
        assert got["ids"] == want["ids"], (mode, case, i)
        _close(got["lps"], want["lps"], (mode, case, i))
        assert len(got["tops"]) == len(want["tops"])
        for k, (g, w) in enumerate(zip(got["tops"], want["tops"])):
            _close(g, w, (mode, case, i, k))
        assert len(got["at_ids"]) == len(want["at_ids"]) == len(want["ids"])
        for k, (g, w) in enumerate(zip(got["at_ids"], want["at_ids"])):
            _close(g, w, (mode, case, i, "token_ids_logprob", k))


PROMPT_STARTS = (0, 2)


def _close_nested(a, b, where):
    """Equal structure, ids equal, values within 1e-4 (None where SGLang puts None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), (where, a, b)
        for key in a:
            _close_nested(a[key], b[key], (where, key))
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (where, a, b)
        for k, (x, y) in enumerate(zip(a, b)):
            _close_nested(x, y, (where, k))
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) < 1e-4, (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec", "diffusion"])
def test_prompt_logprobs_equal_the_plain_ar_server(tri, reference, mode):
    """``logprob_start_len`` inside the prompt: the prompt's logprobs (each token's, the top 3,
    the ``token_ids_logprob`` ids) are those of SGLang's plain AR server in every mode — the
    context pass is the same causal forward; the output tokens follow the mode."""
    for i, ids in enumerate(PROMPTS):
        for start in PROMPT_STARTS:
            got = run(tri, ids, mode=mode, chosen=CHOSEN, start=start)["prompt"]
            want = reference[("prompt", i, start)]["prompt"]
            assert want["input_token_logprobs"] and \
                len(want["input_token_logprobs"]) == len(ids) - start, want
            _close_nested(got, want, (mode, i, start))


def echo(server, mode) -> dict:
    """OpenAI completions with ``echo`` and ``logprobs``: the prompt's tokens and logprobs, then
    the output's."""
    body = {"model": "nld", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0,
            "echo": True, "logprobs": 2}
    if mode:
        body["decode_mode"] = mode
    status, text = server.post("/v1/completions", body)
    assert status == 200, text
    return json.loads(text)["choices"][0]["logprobs"]


@pytest.mark.parametrize("mode", ["ar", "quadratic_spec"])
def test_openai_echo_with_logprobs_equals_the_plain_ar_server(tri, reference, mode):
    got, want = echo(tri, mode), reference["echo"]
    assert got["tokens"] == want["tokens"] and len(want["tokens"]) > len(PROMPTS[0])
    _close_nested(got["token_logprobs"], want["token_logprobs"], mode)
    assert [sorted(d) if d else d for d in got["top_logprobs"]] == \
        [sorted(d) if d else d for d in want["top_logprobs"]]


@pytest.mark.parametrize("mode", ["ar", "diffusion"])
def test_out_of_vocabulary_chosen_ids_are_a_400_naming_the_field(tri, mode):
    status, body = tri.post("/generate", {
        "input_ids": PROMPTS[0], "return_logprob": True, "token_ids_logprob": [3, 10 ** 7],
        "sampling_params": {"max_new_tokens": 4, "custom_params": {"decode_mode": mode}}})
    assert status == 400 and "token_ids_logprob" in body, (status, body)
    assert run(tri, PROMPTS[0], mode=mode, chosen=[3])["ids"]         # the server goes on


def ar_logprobs(model, prompt, output, temperature) -> list[float]:
    """log softmax(z / T) of each emitted token, core's AR forward over prompt + output."""
    c = model.config
    cache = PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                         head_dim=c.head_dim, num_pages=16, page_size=16, dtype=model.dtype)
    cache.add(0)
    ids = prompt + output[:-1]
    logits = model(ForwardBatch.from_rows([PassRow(0, ids, list(range(len(ids))), 0, CAUSAL)],
                                          write_kv=True), cache).double()
    lp = torch.log_softmax(logits[len(prompt) - 1:] / temperature, -1)
    return [float(lp[j, t]) for j, t in enumerate(output)]


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec", "diffusion"])
def test_sampled_logprobs_are_the_emitting_distribution(tri, core32, mode):
    for ids in PROMPTS:
        got = run(tri, ids, temperature=0.7, mode=mode, top=0)
        assert len(got["lps"]) == len(got["ids"]) > 0
        values = [lp for _, lp in got["lps"]]
        assert all(v <= 1e-6 and math.isfinite(v) for v in values)
        if mode != "diffusion":
            want = ar_logprobs(core32, ids, got["ids"], 0.7)
            assert max(abs(a - b) for a, b in zip(values, want)) < 1e-4, (mode, values, want)

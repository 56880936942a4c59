"""SGLang's sampling features through the real server, per feature × mode, against SGLang's plain
AR server of the same checkpoint (no ``--dllm-algorithm``): greedy tokens of ``ar``,
``linear_spec`` and ``quadratic_spec`` with a penalty, a logit bias, min_new_tokens or
top-k / top-p / min-p equal the plain server's with the same feature; ``diffusion`` equals core's
diffusion decoder under the same rule. The plain server runs first and alone (its outputs are
the reference), then the tri-mode server.

The plain server runs with ``--disable-overlap-schedule``: under SGLang's default overlap
scheduler its penalty counts lag one token (the token just decoded is tallied after the next one
is decided, so a greedy ``frequency_penalty`` request can repeat a token), and its outputs then
depend on a scheduling flag. Without overlap it applies the rule as stated (output token t is
penalised over output tokens 0..t-1), which is what every NLD mode applies.
"""

from __future__ import annotations

import json

import pytest

from sglang_server import PROMPTS, ckpt, core32, plain_ar_server, tri_mode_server  # noqa: F401
from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.sglang_plugin.params import SamplingView, sampling_rule

pytest.importorskip("sglang")

EOS = 11
FEATURES = {
    "frequency": {"frequency_penalty": 1.5},
    "presence": {"presence_penalty": 1.5},
    "repetition>1": {"repetition_penalty": 1.8},
    "repetition<1": {"repetition_penalty": 0.6},
    "freq+presence": {"frequency_penalty": 0.7, "presence_penalty": 0.9},
    "logit_bias": {"logit_bias": {"300": 6.0, "17": -100.0}},
    "min_new_tokens": {"logit_bias": {str(EOS): 9.0}, "min_new_tokens": 6},
    "truncation": {"top_k": 3, "top_p": 0.8, "min_p": 0.1},
}
MAX_NEW = 16


def run(server, ids, feature: dict, **custom) -> list[int]:
    params = {"max_new_tokens": MAX_NEW, "temperature": 0, **feature}
    if custom:
        params["custom_params"] = custom
    status, body = server.post("/generate", {"input_ids": ids, "sampling_params": params})
    assert status == 200, body
    return json.loads(body)["output_ids"]


def banned(reference, i: int) -> list[int]:
    """The tokens the custom processor bans for prompt i: the first two of its plain output."""
    return sorted(set(reference[(None, i)][:2]))


def run_processor(server, ids, ban: list[int], mode: str | None = None) -> list[int]:
    """Greedy with SGLang's DisallowedTokensLogitsProcessor banning ``ban``."""
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    custom = {"token_ids": ban, **({"decode_mode": mode} if mode else {})}
    status, body = server.post("/generate", {
        "input_ids": ids, "custom_logit_processor": DisallowedTokensLogitsProcessor.to_str(),
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0,
                            "custom_params": custom}})
    assert status == 200, body
    return json.loads(body)["output_ids"]


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    """The plain AR server's greedy outputs: (feature, prompt index) -> tokens."""
    s = plain_ar_server(ckpt, tmp_path_factory.mktemp("logs") / "plain.log")
    try:
        out = {(f, i): run(s, ids, FEATURES.get(f, {})) for f in [None, *FEATURES]
               for i, ids in enumerate(PROMPTS)}
        out.update({("processor", i): run_processor(s, ids, banned(out, i))
                    for i, ids in enumerate(PROMPTS)})
    finally:
        s.stop()
    return out


@pytest.fixture(scope="module")
def tri(ckpt, tmp_path_factory, reference):
    s = tri_mode_server(ckpt, tmp_path_factory.mktemp("logs") / "tri.log")
    yield s
    s.stop()


def test_the_features_change_greedy_outputs(reference):
    """Else the equalities below prove nothing: every feature but the truncation (which never
    moves an argmax) changes some greedy output; min_new_tokens stops exactly at its bound."""
    for f in FEATURES:
        changed = any(reference[(f, i)] != reference[(None, i)] for i in range(len(PROMPTS)))
        assert changed == (f != "truncation"), f
    for i in range(len(PROMPTS)):
        out = reference[("min_new_tokens", i)]
        assert EOS not in out[:6] and out[6:7] == [EOS], out


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec"])
def test_each_mode_equals_the_plain_ar_server_with_the_feature(tri, reference, mode, feature):
    for i, ids in enumerate(PROMPTS):
        assert run(tri, ids, FEATURES[feature], decode_mode=mode) == reference[(feature, i)], \
            (mode, feature, i)


@pytest.mark.parametrize("feature", list(FEATURES))
def test_diffusion_with_the_feature_equals_core(tri, core32, feature):
    f = dict(FEATURES[feature])
    bias = tuple(sorted((int(k), v) for k, v in f.pop("logit_bias", {}).items()))
    rule = sampling_rule(SamplingView(logit_bias=bias, **f), stop_ids=(EOS,))
    for ids in PROMPTS:
        want = generate(core32, [Request(ids, "diffusion", DecodeParams(
            max_new_tokens=MAX_NEW, sampling=rule))])[0].output_ids
        assert run(tri, ids, FEATURES[feature], decode_mode="diffusion") == want, feature


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec", "diffusion"])
def test_a_custom_logit_processor_in_every_mode(tri, core32, reference, mode):
    """``custom_logit_processor`` (SGLang's DisallowedTokensLogitsProcessor, serialised): ar and
    self-spec equal the plain AR server with it, diffusion equals core with it as the rule's
    transform; the banned tokens never appear, and the outputs change."""
    import torch

    from nemotron_sglang.core.decoding import SamplingRule

    for i, ids in enumerate(PROMPTS):
        ban = banned(reference, i)
        got = run_processor(tri, ids, ban, mode)
        assert not set(got) & set(ban) and got != reference[(None, i)], (mode, i, got)
        if mode != "diffusion":
            assert got == reference[("processor", i)], (mode, i)
        else:
            def transform(z, ban=ban):
                z[:, torch.tensor(ban)] = float("-inf")
                return z
            want = generate(core32, [Request(ids, "diffusion", DecodeParams(
                max_new_tokens=MAX_NEW, sampling=SamplingRule(transform=transform)))])
            assert got == want[0].output_ids, i


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec", "diffusion"])
def test_n_greedy_choices_each_equal_the_single_request(tri, reference, mode):
    """n > 1 (SGLang's parallel sampling: a prefix pass, then n copies of the request) in every
    mode: at T = 0 each of the n choices is the single request's output (the plain AR server's
    for ar and self-spec), with a feature as without; ``/v1/completions`` gives n choices."""
    for feature in (None, "frequency"):
        f = FEATURES.get(feature, {})
        for i, ids in enumerate(PROMPTS[:2]):
            params = {"max_new_tokens": MAX_NEW, "temperature": 0, "n": 3, **f,
                      "custom_params": {"decode_mode": mode}}
            status, body = tri.post("/generate", {"input_ids": ids, "sampling_params": params})
            assert status == 200, body
            got = [r["output_ids"] for r in json.loads(body)]
            want = reference[(feature, i)] if mode != "diffusion" else \
                run(tri, ids, f, decode_mode=mode)
            assert len(got) == 3 and all(g == want for g in got), (mode, feature, i, got, want)
    status, body = tri.post("/v1/completions", {
        "model": "default", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0, "n": 2,
        "decode_mode": mode})
    assert status == 200, body
    out = json.loads(body)
    choices = out["choices"]
    assert out["usage"]["decode_mode"] == mode, out["usage"]
    assert sorted(c["index"] for c in choices) == [0, 1]
    assert choices[0]["text"] == choices[1]["text"]


def test_a_bad_custom_logit_processor_is_a_400(tri):
    status, body = tri.post("/generate", {
        "input_ids": PROMPTS[0], "custom_logit_processor": '{"callable": "00ff"}',
        "sampling_params": {"max_new_tokens": 4, "custom_params": {"decode_mode": "ar"}}})
    assert status == 400 and "custom_logit_processor" in body, (status, body)
    assert run(tri, PROMPTS[0], {}, decode_mode="ar")          # the server goes on

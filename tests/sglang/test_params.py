"""Per-request parameter parsing (``sglang_plugin.params``) and ``server_config.sampling_view``."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest

from nemotron_sglang.core.modes import SERVING_MODES as MODES
from nemotron_sglang.sglang_plugin.params import (
    ParamError,
    RequestParams,
    SamplingView,
    ServerDefaults,
    check_fields,
    parse,
    sampling_rule,
)

DEF = ServerDefaults()                                  # linear_spec, 0.9, block 32
B16 = ServerDefaults(default_mode="diffusion", threshold=0.5, block_size=16)


def refused(custom, field, sampling=SamplingView(), defaults=DEF):
    with pytest.raises(ParamError) as ei:
        parse(custom, sampling, defaults)
    assert ei.value.field == field, str(ei.value)
    assert isinstance(ei.value, ValueError)             # SGLang maps ValueError to HTTP 400
    assert str(ei.value).startswith(f"{field}: ")
    return ei.value


# ---- defaults --------------------------------------------------------------------------------
@pytest.mark.parametrize("custom", [None, {}])
def test_defaults_apply(custom):
    p = parse(custom, SamplingView(), DEF)
    assert p == RequestParams(mode="linear_spec", threshold=0.9, block_length=32,
                              temperature=0.0, seed=None)


def test_defaults_follow_server_defaults():
    p = parse({}, SamplingView(), B16)
    assert (p.mode, p.threshold, p.block_length) == ("diffusion", 0.5, 16)
    p = parse({}, SamplingView(), ServerDefaults(default_mode="ar", threshold=0.25, block_size=8))
    assert (p.mode, p.threshold, p.block_length) == ("ar", 0.25, 8)


def test_unrelated_custom_keys_ignored():
    # SGLang itself puts private keys into custom_params (reasoning end tokens)
    p = parse({"__sglang_reasoning_end_token_ids": [5], "other": 1}, SamplingView(), DEF)
    assert p.mode == "linear_spec"


# ---- decode_mode -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_served_modes_accepted(mode):
    p = parse({"decode_mode": mode}, SamplingView(), B16)
    assert p.mode == mode
    assert p.block_length == 16 and p.threshold == 0.5


def test_modes():
    assert set(MODES) == {"ar", "diffusion", "linear_spec", "quadratic_spec", "auto"}


@pytest.mark.parametrize("mode", ["AR", "fast", "", "linear-spec", 1, None, ["ar"], {"m": "ar"},
                                  True])
def test_unknown_or_non_string_mode_refused(mode):
    refused({"decode_mode": mode}, "decode_mode")


def test_bad_default_mode_refused():
    with pytest.raises(ParamError) as ei:
        parse({}, SamplingView(), ServerDefaults(default_mode="turbo"))
    assert ei.value.field == "decode_mode"


# ---- threshold -------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0, 0.0, 0.5, 1, 1.0])
def test_threshold_in_range_accepted(t):
    p = parse({"threshold": t}, SamplingView(), DEF)
    assert p.threshold == float(t) and isinstance(p.threshold, float)


@pytest.mark.parametrize("t", [-0.01, 1.01, 2, -1, math.nan, math.inf, -math.inf, True, False,
                               "0.5", None, [0.5]])
def test_threshold_refused(t):
    refused({"threshold": t}, "threshold")


# ---- block_length ----------------------------------------------------------------------------
@pytest.mark.parametrize("b", [3, 6, 12, 0, -4, -1, True, False, 4.0, "4", None, 64])
@pytest.mark.parametrize("mode", MODES)
def test_block_length_refused(b, mode):
    refused({"decode_mode": mode, "block_length": b}, "block_length", defaults=B16)


@pytest.mark.parametrize("b", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("mode", MODES)
def test_smaller_power_of_two_block_accepted_in_every_mode(b, mode):
    p = parse({"decode_mode": mode, "block_length": b}, SamplingView(), B16)
    assert (p.mode, p.block_length) == (mode, b)


@pytest.mark.parametrize("mode", MODES)
def test_server_block_accepted_explicitly(mode):
    assert parse({"decode_mode": mode, "block_length": 16}, SamplingView(), B16).block_length == 16


def test_above_server_block_refused_even_if_power_of_two():
    e = refused({"decode_mode": "ar", "block_length": 32}, "block_length", defaults=B16)
    assert "exceeds" in str(e)


# ---- sampling features: honoured (core's SamplingRule) or refused -----------------------------
SUPPORTED = [
    dict(top_p=0.9), dict(top_k=5), dict(min_p=0.05), dict(frequency_penalty=0.5),
    dict(frequency_penalty=-0.5), dict(presence_penalty=0.3), dict(repetition_penalty=1.1),
    dict(repetition_penalty=0.9), dict(min_new_tokens=4), dict(logit_bias=((5, 1.5),)),
]


@pytest.mark.parametrize("kw", SUPPORTED, ids=[next(iter(k)) for k in SUPPORTED])
@pytest.mark.parametrize("mode", MODES)
def test_sampling_features_become_the_core_rule(kw, mode):
    view = SamplingView(temperature=0.7, **kw)
    assert parse({"decode_mode": mode}, view, DEF).mode == mode
    rule = sampling_rule(view, stop_ids=(11, 3))
    for name, value in kw.items():
        assert getattr(rule, name) == value, name
    assert rule.stop_ids == ((3, 11) if "min_new_tokens" in kw else ())


@pytest.mark.parametrize("field,kw", [("top_p", dict(top_p=0.0)), ("top_k", dict(top_k=-3)),
                                      ("repetition_penalty", dict(repetition_penalty=0.0)),
                                      ("min_p", dict(min_p=1.5))])
def test_out_of_range_sampling_values_are_refused(field, kw):
    refused({}, field, sampling=SamplingView(temperature=0.7, **kw))


@pytest.mark.parametrize("mode", MODES)
def test_negative_top_logprobs_refused(mode):
    e = refused({"decode_mode": mode}, "top_logprobs_num",
                sampling=SamplingView(temperature=0.7, logprobs=True, top_logprobs=-1))
    assert mode in str(e)


def test_default_sampling_view_is_supported():
    # every neutral value of SamplingView passes (else the refusals above prove nothing)
    assert parse({}, SamplingView(temperature=0.7, seed=3), DEF).temperature == 0.7


@pytest.mark.parametrize("temp", [-0.1, -1.0, math.nan, -math.inf, math.inf])
def test_bad_temperature_refused(temp):
    refused({}, "temperature", sampling=SamplingView(temperature=temp))


@pytest.mark.parametrize("temp,seed", [(0.0, None), (0.7, 1234), (1.5, 0), (1, -7)])
def test_temperature_and_seed_passed_through(temp, seed):
    p = parse({"decode_mode": "diffusion"}, SamplingView(temperature=temp, seed=seed), DEF)
    assert p.temperature == float(temp) and isinstance(p.temperature, float)
    assert p.seed == seed


def test_mode_error_comes_before_sampling_error():
    # the first offending field is named, in a fixed order: custom params first
    refused({"decode_mode": "bogus"}, "decode_mode", sampling=SamplingView(top_p=0.5))


# ---- server_config.sampling_view on real SGLang SamplingParams -----------------------------------
needs_sglang = pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                                  reason="sglang not installed")


@pytest.fixture(scope="module")
def sglang_bits():
    from sglang.srt.sampling.sampling_params import SamplingParams

    from nemotron_sglang.sglang_plugin.server_config import sampling_view

    return SamplingParams, sampling_view


def _req(sglang_bits, return_logprob=False, logprob=None, custom_logit_processor=None,
         normalize=True, **sp_kw):
    SamplingParams, sampling_view = sglang_bits
    sp = SamplingParams(**sp_kw)
    if normalize and hasattr(sp, "normalize"):
        sp.normalize(None)
    req = SimpleNamespace(sampling_params=sp, return_logprob=return_logprob,
                          logprob=logprob if logprob is not None else
                          SimpleNamespace(top_logprobs_num=0, token_ids_logprob=None),
                          custom_logit_processor=custom_logit_processor, rid="r0")
    return sampling_view(req)


@needs_sglang
def test_sampling_view_greedy(sglang_bits):
    v = _req(sglang_bits, temperature=0.0)
    assert v.temperature == 0.0 and v.top_k_limited is False
    assert parse({}, v, DEF).temperature == 0.0
    assert v == SamplingView()                       # nothing else set either


@needs_sglang
def test_sampling_view_sampled(sglang_bits):
    v = _req(sglang_bits, temperature=0.7, sampling_seed=11)
    assert v.temperature == pytest.approx(0.7) and v.top_k_limited is False
    assert v.seed == 11
    p = parse({"decode_mode": "diffusion"}, v, DEF)
    assert p.temperature == pytest.approx(0.7) and p.seed == 11


@needs_sglang
def test_sampling_view_top_k_all_is_not_limited(sglang_bits):
    assert _req(sglang_bits, temperature=0.7, top_k=-1).top_k_limited is False


@needs_sglang
def test_sampling_view_top_k_limited(sglang_bits):
    v = _req(sglang_bits, temperature=0.7, top_k=5)
    assert v.top_k_limited is True and v.top_k == 5
    assert sampling_rule(v).top_k == 5


@needs_sglang
def test_grammars_are_accepted_in_every_mode(sglang_bits):
    """A grammar is SGLang's to compile and core's to honour (sglang_plugin/grammar.py): no
    mode refuses one."""
    v = _req(sglang_bits, temperature=0.0, json_schema='{"type": "object"}')
    for mode in MODES:
        assert parse({"decode_mode": mode}, v, ServerDefaults()).mode == mode


@needs_sglang
def test_sampling_view_other_features(sglang_bits):
    # normalize(None) refuses min_new_tokens without a tokenizer; __post_init__ still runs
    v = _req(sglang_bits, normalize=False, temperature=0.7, top_p=0.9, min_p=0.1,
             frequency_penalty=0.2, presence_penalty=0.3, repetition_penalty=1.2,
             min_new_tokens=2,
             logit_bias={"5": 1.0}, regex="a+")
    assert v.temperature == pytest.approx(0.7) and v.top_k_limited is False
    assert v.frequency_penalty == pytest.approx(0.2)
    assert v.presence_penalty == pytest.approx(0.3)
    assert v.top_p == pytest.approx(0.9) and v.min_p == pytest.approx(0.1)
    assert v.repetition_penalty == pytest.approx(1.2) and v.min_new_tokens == 2
    assert v.logit_bias == ((5, 1.0),)


@needs_sglang
def test_sampling_view_logprobs(sglang_bits):
    v = _req(sglang_bits, return_logprob=True)
    assert v.logprobs is True and v.top_logprobs == 0 and not v.token_ids_logprob
    assert parse({}, v, DEF).mode == DEF.default_mode            # output logprobs: honoured
    top = _req(sglang_bits, return_logprob=True,
               logprob=SimpleNamespace(top_logprobs_num=3, token_ids_logprob=None))
    assert top.top_logprobs == 3
    ids = _req(sglang_bits, return_logprob=True,
               logprob=SimpleNamespace(top_logprobs_num=0, token_ids_logprob=[2, 1, 2]))
    assert ids.token_ids_logprob == (2, 1, 2)                     # in order, duplicates kept
    assert parse({}, ids, DEF).mode == DEF.default_mode           # honoured in every mode
    no_lp = _req(sglang_bits, return_logprob=False,
                 logprob=SimpleNamespace(top_logprobs_num=0, token_ids_logprob=[1]))
    assert no_lp.token_ids_logprob == ()                          # only with return_logprob
    assert _req(sglang_bits).logprobs is False


@needs_sglang
def test_custom_logit_processor_is_the_rules_transform():
    """SGLang's serialised processor becomes the rule's transform: applied after the bias, one
    custom_params dict per row; core's shaping then bans what the processor bans."""
    import torch
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    from nemotron_sglang.core.decoding.processors import shape_logits
    from nemotron_sglang.sglang_plugin.server_config import custom_transform

    sp = SimpleNamespace(custom_params={"token_ids": [3, 5]})
    req = SimpleNamespace(sampling_params=sp,
                          custom_logit_processor=DisallowedTokensLogitsProcessor.to_str())
    rule = sampling_rule(SamplingView(logit_bias=((3, 2.0), (4, 1.0))), (),
                         custom_transform(req))
    z = torch.randn(3, 8)
    out = shape_logits(z, rule, None)
    want = z.clone()
    want[:, 4] += 1.0
    want[:, [3, 5]] = float("-inf")
    assert torch.equal(out, want) and not torch.isinf(z).any()     # a copy, z untouched
    assert custom_transform(SimpleNamespace(custom_logit_processor=None)) is None


# ---- diffusion's step budget (max_steps) ---------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 7, 31])
def test_step_budget_is_a_diffusion_parameter(k):
    p = parse({"decode_mode": "diffusion", "max_steps": k}, SamplingView(), DEF)
    assert p.max_steps == k
    assert parse({"decode_mode": "diffusion"}, SamplingView(), DEF).max_steps is None
    assert parse({"decode_mode": "diffusion", "max_steps": None}, SamplingView(), DEF).max_steps \
        is None
    # the server's default mode counts when the request names none
    assert parse({"max_steps": k}, SamplingView(), B16).max_steps == k


@pytest.mark.parametrize("mode", [m for m in MODES if m != "diffusion"])
def test_step_budget_refused_in_the_other_modes(mode):
    e = refused({"decode_mode": mode, "max_steps": 2}, "max_steps")
    assert mode in str(e) and "diffusion" in str(e)
    with pytest.raises(ParamError, match="max_steps"):
        check_fields({"decode_mode": mode, "max_steps": 2})     # main process, early


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "4"])
def test_step_budget_must_be_a_positive_integer(k):
    refused({"decode_mode": "diffusion", "max_steps": k}, "max_steps")
    with pytest.raises(ParamError, match="max_steps"):
        check_fields({"max_steps": k})


def test_step_budget_refused_with_a_grammar():
    e = refused({"decode_mode": "diffusion", "max_steps": 2}, "max_steps",
                sampling=SamplingView(grammar=True))
    assert "grammar" in str(e) and "diffusion" in str(e)
    assert parse({"decode_mode": "diffusion"}, SamplingView(grammar=True), DEF).mode == "diffusion"


# ---- diffusion infill (canvas / suffix) ----------------------------------------------------
def test_infill_fields_are_diffusion_parameters():
    p = parse({"decode_mode": "diffusion", "canvas": [100, 7, 100]}, SamplingView(), DEF)
    assert p.canvas == (100, 7, 100) and p.suffix == ()
    p = parse({"decode_mode": "diffusion", "suffix_ids": [5, 6]}, SamplingView(), DEF)
    assert p.suffix == (5, 6) and p.canvas == ()
    assert parse({"decode_mode": "diffusion"}, SamplingView(), DEF).canvas == ()


@pytest.mark.parametrize("mode", [m for m in MODES if m != "diffusion"])
@pytest.mark.parametrize("key,field", [("canvas", "canvas"), ("suffix_ids", "suffix")])
def test_infill_refused_in_the_other_modes(mode, key, field):
    e = refused({"decode_mode": mode, key: [100, 5]}, field)
    assert mode in str(e)
    with pytest.raises(ParamError, match=field):
        check_fields({"decode_mode": mode, key: [100, 5]})


def test_infill_must_fit_the_block_and_not_meet_a_grammar():
    assert "do not fit the block of 16" in str(
        refused({"decode_mode": "diffusion", "canvas": [100] * 17}, "canvas", defaults=B16))
    parse({"decode_mode": "diffusion", "canvas": [100] * 16}, SamplingView(), B16)
    assert "leave no gap" in str(
        refused({"decode_mode": "diffusion", "suffix_ids": [5] * 16}, "suffix", defaults=B16))
    parse({"decode_mode": "diffusion", "suffix_ids": [5] * 15}, SamplingView(), B16)
    assert "grammar" in str(refused({"decode_mode": "diffusion", "canvas": [100]}, "canvas",
                                    sampling=SamplingView(grammar=True)))
    refused({"decode_mode": "diffusion", "canvas": [100], "suffix_ids": [5]}, "suffix")
    for bad in ([], [1.5], "abc", [True]):
        refused({"decode_mode": "diffusion", "canvas": bad}, "canvas")

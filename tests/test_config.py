"""Tests for nemotron_sglang.core.config (NLDConfig, RopeParameters, presets)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from nemotron_sglang.core.config import (
    ARCHITECTURE,
    MODEL_TYPE,
    PRESETS,
    ConfigError,
    NLDConfig,
    RopeParameters,
    preset,
)

# The literal 8B config.json of model_spec §1.4 (auto_map as in §1.2).
CONFIG_8B = {
    "ar_loss_weight": 1.0,
    "architectures": ["NemotronLabsDiffusionModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_implementation": "sdpa",
    "auto_map": {
        "AutoConfig": "configuration_nemotron_labs_diffusion.NemotronLabsDiffusionConfig",
        "AutoModel": "modeling_nemotron_labs_diffusion.NemotronLabsDiffusionModel",
    },
    "block_size": 32,
    "bos_token_id": 1,
    "dlm_loss_weight": None,
    "dlm_paradigm": "bidirectional",
    "dp_varying_mask_ratio": False,
    "eos_token_id": 11,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "mask_token_id": 100,
    "max_position_embeddings": 262144,
    "mlp_bias": False,
    "model_type": "nemotron_labs_diffusion",
    "num_attention_heads": 32,
    "num_hidden_layers": 34,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 16.0,
        "llama_4_scaling_beta": 0.1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 16384,
        "rope_theta": 1000000.0,
        "rope_type": "yarn",
    },
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "5.0.0",
    "use_cache": False,
    "vocab_size": 131072,
}

ROPE_KEYS = {"rope_type", "rope_theta", "factor", "original_max_position_embeddings",
             "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "llama_4_scaling_beta"}


def cfg8b(**changes):
    d = copy.deepcopy(CONFIG_8B)
    d.update(changes)
    return d


# ---------------------------------------------------------------- round trip / layout
@pytest.mark.parametrize("name", ["3b", "8b", "14b", "tiny"])
def test_preset_round_trip(name):
    cfg = preset(name)
    d = cfg.to_hf_dict()
    # through real JSON text, as a checkpoint would store it
    back = NLDConfig.from_hf_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert back.to_hf_dict() == d


@pytest.mark.parametrize("name", ["3b", "8b", "14b", "tiny"])
def test_to_hf_dict_layout(name):
    cfg = preset(name)
    d = cfg.to_hf_dict()
    assert d["architectures"] == ["NemotronLabsDiffusionModel"]
    assert d["model_type"] == "nemotron_labs_diffusion"
    assert d["auto_map"] == CONFIG_8B["auto_map"]
    rp = d["rope_parameters"]
    assert isinstance(rp, dict)
    assert set(rp) == ROPE_KEYS
    assert rp["rope_theta"] == cfg.rope_parameters.rope_theta
    assert rp["factor"] == cfg.rope_parameters.factor
    assert rp["original_max_position_embeddings"] == cfg.rope_parameters.original_max_position_embeddings
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
                "mask_token_id", "eos_token_id", "bos_token_id", "block_size",
                "tie_word_embeddings"):
        assert d[key] == getattr(cfg, key), key
    json.dumps(d)  # JSON-serialisable


def test_literal_8b_config_parses():
    cfg = NLDConfig.from_hf_dict(copy.deepcopy(CONFIG_8B))
    assert cfg.hidden_size == 4096
    assert cfg.num_hidden_layers == 34
    assert cfg.num_attention_heads == 32
    assert cfg.num_key_value_heads == 8
    assert cfg.head_dim == 128
    assert cfg.intermediate_size == 14336
    assert cfg.vocab_size == 131072
    assert cfg.max_position_embeddings == 262144
    rp = cfg.rope_parameters
    assert rp.rope_type == "yarn"
    assert rp.rope_theta == 1.0e6
    assert rp.factor == 16.0
    assert rp.original_max_position_embeddings == 16384
    assert isinstance(rp.original_max_position_embeddings, int)
    assert rp.beta_fast == 32.0 and rp.beta_slow == 1.0
    assert rp.mscale == 1.0 and rp.mscale_all_dim == 1.0
    assert rp.llama_4_scaling_beta == 0.1
    assert cfg.mask_token_id == 100
    assert cfg.eos_token_id == 11
    assert cfg.bos_token_id == 1
    assert cfg.block_size == 32
    assert cfg.rms_norm_eps == 1e-5
    assert cfg.tie_word_embeddings is False
    assert cfg.dlm_paradigm == "bidirectional"
    assert cfg.dlm_loss_weight is None
    # equals the 8b preset (which has the same geometry and rope)
    assert cfg == preset("8b")


def test_literal_8b_from_pretrained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_8B))
    a = NLDConfig.from_pretrained(tmp_path)
    b = NLDConfig.from_pretrained(tmp_path / "config.json")
    assert a == b == NLDConfig.from_hf_dict(CONFIG_8B)
    assert a.head_dim == 128 and a.rope_parameters.factor == 16.0


@pytest.mark.parametrize("name,expected", [("3b", 3.83e9), ("8b", 8.49e9), ("14b", 13.51e9)])
def test_num_parameters(name, expected):
    n = preset(name).num_parameters
    assert abs(n - expected) / expected < 0.005, n


def test_num_parameters_matches_formula_exactly():
    # independent count for the 8B geometry (q, k, v, o, gate, up, down, 2 norms per layer;
    # embed + head + final norm)
    h, i, v, L = 4096, 14336, 131072, 34
    per_layer = h * 4096 + 2 * h * 1024 + 4096 * h + 3 * h * i + 2 * h
    assert preset("8b").num_parameters == L * per_layer + 2 * v * h + h


def test_14b_head_dim_is_not_hidden_over_heads():
    cfg = preset("14b")
    assert cfg.head_dim == 128
    assert cfg.hidden_size // cfg.num_attention_heads == 160
    assert cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads
    assert cfg.q_size == 4096 and cfg.kv_size == 1024
    assert cfg.rope_parameters.rope_theta == 1.0e9
    d = cfg.to_hf_dict()
    assert NLDConfig.from_hf_dict(d).head_dim == 128


def test_eos_list_gives_first_id():
    cfg = NLDConfig.from_hf_dict(cfg8b(eos_token_id=[11]))
    assert cfg.eos_token_id == 11
    assert isinstance(cfg.eos_token_id, int)


def test_config_is_frozen():
    cfg = preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 64  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rope_parameters.factor = 2.0  # type: ignore[misc]
    assert cfg.hidden_size == 48 and cfg.rope_parameters.factor == 8.0


def test_preset_lookup_case_insensitive_and_identity():
    assert preset("8B") == PRESETS["8b"]
    assert set(PRESETS) == {"3b", "8b", "14b", "tiny"}


# ---------------------------------------------------------------- refusals
def _drop(key):
    d = copy.deepcopy(CONFIG_8B)
    del d[key]
    return d


BAD = [
    ("wrong architectures", cfg8b(architectures=["MistralForCausalLM"]), "architectures"),
    ("wrong model_type", cfg8b(model_type="ministral3"), "model_type"),
    ("block_size 24", cfg8b(block_size=24), "block_size"),
    ("kv heads 6", cfg8b(num_key_value_heads=6), "num_key_value_heads"),
    ("mask >= vocab", cfg8b(mask_token_id=131072), "mask_token_id"),
    ("mask == eos", cfg8b(mask_token_id=11), "mask_token_id"),
    ("tied embeddings", cfg8b(tie_word_embeddings=True), "tie_word_embeddings"),
    ("missing rope_parameters", _drop("rope_parameters"), "rope_parameters"),
    ("block_diff", cfg8b(dlm_paradigm="block_diff"), "dlm_paradigm"),
    ("attention_bias", cfg8b(attention_bias=True), "attention_bias"),
    ("sliding_window", cfg8b(sliding_window=4096), "sliding_window"),
    ("missing hidden_size", _drop("hidden_size"), "hidden_size"),
]


@pytest.mark.parametrize("label,d,word", BAD, ids=[b[0] for b in BAD])
def test_bad_config_refused(label, d, word):
    with pytest.raises(ConfigError) as ei:
        NLDConfig.from_hf_dict(d)
    assert word in str(ei.value), str(ei.value)


def test_bad_values_named_in_message():
    with pytest.raises(ConfigError, match=r"24"):
        NLDConfig.from_hf_dict(cfg8b(block_size=24))
    with pytest.raises(ConfigError, match=r"block_diff"):
        NLDConfig.from_hf_dict(cfg8b(dlm_paradigm="block_diff"))
    with pytest.raises(ConfigError, match=r"MistralForCausalLM"):
        NLDConfig.from_hf_dict(cfg8b(architectures=["MistralForCausalLM"]))


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_validates():
    good = preset("tiny")
    with pytest.raises(ConfigError, match="block_size"):
        good.replace(block_size=6)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        good.replace(num_key_value_heads=3)
    with pytest.raises(ConfigError, match="beta"):
        good.replace(rope_parameters=RopeParameters(beta_fast=1.0, beta_slow=32.0))


def test_unknown_preset():
    with pytest.raises(ConfigError) as ei:
        preset("70b")
    assert "70b" in str(ei.value)
    assert "unknown preset" in str(ei.value)


def test_from_pretrained_missing_dir(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ConfigError) as ei:
        NLDConfig.from_pretrained(missing)
    assert "config.json" in str(ei.value)


def test_from_pretrained_dir_without_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        NLDConfig.from_pretrained(tmp_path)


def test_from_pretrained_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["NemotronLabsDiffusionModel"],')
    with pytest.raises(ConfigError) as ei:
        NLDConfig.from_pretrained(tmp_path)
    assert "JSON" in str(ei.value)


def test_constants():
    assert ARCHITECTURE == "NemotronLabsDiffusionModel"
    assert MODEL_TYPE == "nemotron_labs_diffusion"


def test_top_level_rope_theta_and_rope_scaling_fallback():
    d = cfg8b()
    rp = d.pop("rope_parameters")
    theta = rp.pop("rope_theta")
    d["rope_scaling"] = rp
    d["rope_theta"] = 1.0e9
    cfg = NLDConfig.from_hf_dict(d)
    assert cfg.rope_parameters.rope_theta == 1.0e9 != theta
    assert cfg.rope_parameters.factor == 16.0


def test_missing_head_dim_falls_back_to_hidden_over_heads():
    d = cfg8b()
    del d["head_dim"]
    assert NLDConfig.from_hf_dict(d).head_dim == 4096 // 32


def test_from_pretrained_json_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError):
        NLDConfig.from_pretrained(tmp_path)


def test_string_rope_factor_is_a_config_error():
    d = cfg8b()
    del d["max_position_embeddings"]
    d["rope_parameters"] = dict(d["rope_parameters"], factor="16")
    with pytest.raises(ConfigError):
        NLDConfig.from_hf_dict(d)


def test_zero_heads_without_head_dim():
    d = cfg8b(num_attention_heads=0)
    del d["head_dim"]
    with pytest.raises(ConfigError, match="num_attention_heads"):
        NLDConfig.from_hf_dict(d)

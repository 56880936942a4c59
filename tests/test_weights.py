"""Tests for nemotron_sglang.core.weights: name tables, checkpoint writer/loader, LoRA adapter."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nemotron_sglang.core.attention import BIDIRECTIONAL
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.config import preset
from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.core.model import NLDModel
from nemotron_sglang.core.weights import (
    LORA_DIR,
    WeightsError,
    hf_weight_shapes,
    load_lora,
    load_model,
    random_state_dict,
    read_state_dict,
    write_tiny_checkpoint,
)

LAYER_RE = re.compile(
    r"^encoder\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm|"
    r"self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")
GLOBALS = {"encoder.embed_tokens.weight", "encoder.norm.weight", "diffusion_head.weight"}


def _seed() -> int:
    return random.randrange(1, 2**31)   # seeded per test by conftest


def expected_shape(cfg, name):
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qd = cfg.num_attention_heads * cfg.head_dim
    kvd = cfg.num_key_value_heads * cfg.head_dim
    if name in ("encoder.embed_tokens.weight", "diffusion_head.weight"):
        return (v, h)
    if name == "encoder.norm.weight":
        return (h,)
    m = LAYER_RE.match(name)
    part = m.group(2)
    return {
        "input_layernorm": (h,), "post_attention_layernorm": (h,),
        "self_attn.q_proj": (qd, h), "self_attn.k_proj": (kvd, h), "self_attn.v_proj": (kvd, h),
        "self_attn.o_proj": (h, qd), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }[part]


# ------------------------------------------------------------------ name table
@pytest.mark.parametrize("name,count", [("3b", 237), ("8b", 309), ("14b", 363), ("tiny", 21)])
def test_hf_weight_shapes_count_and_names(name, count):
    cfg = preset(name)
    shapes = hf_weight_shapes(cfg)
    assert len(shapes) == 9 * cfg.num_hidden_layers + 3 == count
    assert GLOBALS <= set(shapes)
    layers_seen: dict[int, int] = {}
    for k, shape in shapes.items():
        if k in GLOBALS:
            pass
        else:
            m = LAYER_RE.match(k)
            assert m, k
            n = int(m.group(1))
            assert 0 <= n < cfg.num_hidden_layers
            layers_seen[n] = layers_seen.get(n, 0) + 1
        assert tuple(shape) == expected_shape(cfg, k), k
    assert layers_seen == {n: 9 for n in range(cfg.num_hidden_layers)}


def test_14b_example_shapes():
    s = hf_weight_shapes(preset("14b"))
    p = "encoder.layers.39."
    assert s[p + "self_attn.q_proj.weight"] == (4096, 5120)
    assert s[p + "self_attn.k_proj.weight"] == (1024, 5120)
    assert s[p + "self_attn.v_proj.weight"] == (1024, 5120)
    assert s[p + "self_attn.o_proj.weight"] == (5120, 4096)
    assert s[p + "mlp.gate_proj.weight"] == (16384, 5120)
    assert s[p + "mlp.up_proj.weight"] == (16384, 5120)
    assert s[p + "mlp.down_proj.weight"] == (5120, 16384)
    assert s["diffusion_head.weight"] == (131072, 5120)
    assert "encoder.layers.40.input_layernorm.weight" not in s


def test_model_state_dict_matches_name_table():
    cfg = preset("tiny")
    sd = NLDModel(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == hf_weight_shapes(cfg)


# ------------------------------------------------------------------ tiny checkpoint writer
def test_write_tiny_checkpoint_deterministic(tmp_path):
    seed = _seed()
    a = write_tiny_checkpoint(tmp_path / "a", seed=seed)
    b = write_tiny_checkpoint(tmp_path / "b", seed=seed)
    c = write_tiny_checkpoint(tmp_path / "c", seed=seed + 1)
    ba = (a / "model.safetensors").read_bytes()
    assert ba == (b / "model.safetensors").read_bytes()
    assert ba != (c / "model.safetensors").read_bytes()
    assert (a / "config.json").read_text() == (c / "config.json").read_text()
    ta, tc = load_file(str(a / "model.safetensors")), load_file(str(c / "model.safetensors"))
    for k in ta:
        assert not torch.equal(ta[k], tc[k]), k


def test_write_tiny_checkpoint_lora_deterministic(tmp_path):
    seed = _seed()
    a = write_tiny_checkpoint(tmp_path / "a", seed=seed, with_lora=True)
    b = write_tiny_checkpoint(tmp_path / "b", seed=seed, with_lora=True)
    c = write_tiny_checkpoint(tmp_path / "c", seed=seed + 1, with_lora=True)
    f = f"{LORA_DIR}/adapter_model.safetensors"
    assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / f).read_bytes() != (c / f).read_bytes()


def test_tiny_checkpoint_files(tmp_path):
    d = write_tiny_checkpoint(tmp_path / "ck", seed=_seed())
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        assert (d / name).is_file(), name
    assert not (d / LORA_DIR).exists()
    assert not (d / "model.safetensors.index.json").exists()
    cfg_json = json.loads((d / "config.json").read_text())
    assert cfg_json["architectures"] == ["NemotronLabsDiffusionModel"]
    assert cfg_json["auto_map"]["AutoModel"] == \
        "modeling_nemotron_labs_diffusion.NemotronLabsDiffusionModel"
    assert cfg_json["auto_map"]["AutoConfig"] == \
        "configuration_nemotron_labs_diffusion.NemotronLabsDiffusionConfig"
    rp = cfg_json["rope_parameters"]
    assert rp["rope_type"] == "yarn"
    assert rp["original_max_position_embeddings"] == preset("tiny").rope_parameters.original_max_position_embeddings
    for key in ("rope_theta", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                "llama_4_scaling_beta"):
        assert key in rp, key
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 11 and gen["bos_token_id"] == 1
    with safe_open(str(d / "model.safetensors"), framework="pt") as sf:
        keys = set(sf.keys())
        assert all(sf.get_slice(k).get_dtype() == "F32" for k in keys)
    assert keys == set(hf_weight_shapes(preset("tiny")))


def test_tiny_checkpoint_block_size(tmp_path):
    d = write_tiny_checkpoint(tmp_path / "ck", seed=_seed(), block_size=8)
    assert json.loads((d / "config.json").read_text())["block_size"] == 8


def test_tiny_checkpoint_lora_files(tmp_path):
    d = write_tiny_checkpoint(tmp_path / "ck", seed=_seed(), with_lora=True, lora_rank=4)
    ac = json.loads((d / LORA_DIR / "adapter_config.json").read_text())
    assert ac["peft_type"] == "LORA"
    assert ac["target_modules"] == ["o_proj"]
    assert ac["r"] == 4
    assert ac["lora_alpha"] == 16
    cfg = preset("tiny")
    t = load_file(str(d / LORA_DIR / "adapter_model.safetensors"))
    want = set()
    for n in range(cfg.num_hidden_layers):
        p = f"base_model.model.encoder.layers.{n}.self_attn.o_proj."
        want |= {p + "lora_A.weight", p + "lora_B.weight"}
        assert tuple(t[p + "lora_A.weight"].shape) == (4, cfg.q_size)
        assert tuple(t[p + "lora_B.weight"].shape) == (cfg.hidden_size, 4)
    assert set(t) == want


# ------------------------------------------------------------------ load_model
@pytest.fixture
def ckpt(tmp_path):
    seed = _seed()
    return write_tiny_checkpoint(tmp_path / "ck", seed=seed), seed


def test_load_model_fp32_round_trip(ckpt):
    d, seed = ckpt
    m = load_model(d)
    assert m.dtype == torch.float32
    assert not m.training
    assert m.has_lora is False
    sd = read_state_dict(d)
    msd = m.state_dict()
    assert set(msd) == set(sd)
    for k, t in sd.items():
        assert t.dtype == torch.float32
        assert torch.equal(msd[k], t), k
    # and they are the writer's weights for that seed
    ref = random_state_dict(preset("tiny"), seed)
    for k, t in ref.items():
        assert torch.equal(msd[k], t), k


def test_load_model_dtype_argument(ckpt):
    d, _ = ckpt
    m = load_model(d, dtype=torch.float64)
    assert m.dtype == torch.float64
    sd = read_state_dict(d)
    for k, t in m.state_dict().items():
        assert t.dtype == torch.float64
        assert torch.equal(t, sd[k].double()), k


def test_bf16_checkpoint(tmp_path):
    seed = _seed()
    d32 = write_tiny_checkpoint(tmp_path / "f32", seed=seed)
    d16 = write_tiny_checkpoint(tmp_path / "bf16", seed=seed, dtype="bfloat16")
    assert json.loads((d16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    sd16 = read_state_dict(d16)
    assert all(t.dtype == torch.bfloat16 for t in sd16.values())
    m16 = load_model(d16)
    m32 = load_model(d32)
    assert m16.dtype == torch.float32
    w32 = m32.state_dict()
    n_rounded = 0
    for k, t in m16.state_dict().items():
        want = w32[k].to(torch.bfloat16).to(torch.float32)
        assert torch.equal(t, want), k
        n_rounded += int((t != w32[k]).sum())
    assert n_rounded > 0  # rounding really happened
    mb = load_model(d16, dtype=torch.bfloat16)
    assert mb.dtype == torch.bfloat16
    for k, t in mb.state_dict().items():
        assert torch.equal(t, sd16[k]), k


def test_sharded_checkpoint(tmp_path):
    seed = _seed()
    d1 = write_tiny_checkpoint(tmp_path / "single", seed=seed)
    d3 = write_tiny_checkpoint(tmp_path / "sharded", seed=seed, shards=3)
    idx = json.loads((d3 / "model.safetensors.index.json").read_text())
    files = sorted(set(idx["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(idx["weight_map"]) == set(hf_weight_shapes(preset("tiny")))
    assert not (d3 / "model.safetensors").exists()
    for f in files:
        assert (d3 / f).is_file()
        with safe_open(str(d3 / f), framework="pt") as sf:
            assert set(sf.keys()) == {k for k, v in idx["weight_map"].items() if v == f}
    total = sum(t.numel() * t.element_size() for t in read_state_dict(d1).values())
    assert idx["metadata"]["total_size"] == total
    a, b = load_model(d1).state_dict(), load_model(d3).state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _rewrite(d, mutate):
    path = d / "model.safetensors"
    t = load_file(str(path))
    mutate(t)
    save_file(t, str(path), metadata={"format": "pt"})


def test_missing_tensor_refused(ckpt):
    d, _ = ckpt
    name = "encoder.layers.1.mlp.up_proj.weight"
    _rewrite(d, lambda t: t.pop(name))
    with pytest.raises(WeightsError) as ei:
        load_model(d)
    assert name in str(ei.value) and "missing" in str(ei.value)


def test_unexpected_tensor_refused(ckpt):
    d, _ = ckpt
    name = "encoder.layers.0.self_attn.q_proj.bias"

    def add(t):
        t[name] = torch.ones(64)
    _rewrite(d, add)
    with pytest.raises(WeightsError) as ei:
        load_model(d)
    assert name in str(ei.value) and "unexpected" in str(ei.value)


def test_extra_layer_refused(ckpt):
    d, _ = ckpt
    name = "encoder.layers.2.input_layernorm.weight"

    def add(t):
        t[name] = torch.ones(48)
    _rewrite(d, add)
    with pytest.raises(WeightsError, match=re.escape(name)):
        load_model(d)


def test_wrong_shape_refused(ckpt):
    d, _ = ckpt
    name = "encoder.layers.0.self_attn.k_proj.weight"

    def bad(t):
        t[name] = t[name][:16].contiguous()
    _rewrite(d, bad)
    with pytest.raises(WeightsError) as ei:
        load_model(d)
    msg = str(ei.value)
    assert name in msg and "shape" in msg
    assert "(16, 48)" in msg and "(32, 48)" in msg


def test_transposed_tensor_refused(ckpt):
    d, _ = ckpt
    name = "encoder.layers.1.self_attn.o_proj.weight"

    def bad(t):
        t[name] = t[name].T.contiguous()
    _rewrite(d, bad)
    with pytest.raises(WeightsError, match=re.escape(name)):
        load_model(d)


def test_rotary_inv_freq_tolerated(ckpt):
    d, seed = ckpt
    name = "encoder.layers.0.self_attn.rotary_emb.inv_freq"

    def add(t):
        t[name] = torch.arange(8, dtype=torch.float32) + 1.0
    _rewrite(d, add)
    m = load_model(d)
    assert name not in read_state_dict(d)
    ref = random_state_dict(preset("tiny"), seed)
    for k, t in m.state_dict().items():
        assert torch.equal(t, ref[k]), k


def test_no_weights_refused(tmp_path):
    d = write_tiny_checkpoint(tmp_path / "ck", seed=_seed())
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_model(d)


# ------------------------------------------------------------------ LoRA
@pytest.fixture
def lora_ckpt(tmp_path):
    seed = _seed()
    return write_tiny_checkpoint(tmp_path / "ck", seed=seed, with_lora=True, lora_rank=4), seed


def test_lora_loaded_by_default_and_skipped_on_false(lora_ckpt):
    d, _ = lora_ckpt
    m = load_model(d)                       # lora=None: load when present
    assert m.has_lora is True
    m2 = load_model(d, lora=True)
    assert m2.has_lora is True
    m3 = load_model(d, lora=False)
    assert m3.has_lora is False
    attn = m.encoder.layers[1].self_attn
    adapter = load_lora(d / LORA_DIR, preset("tiny"))
    assert adapter.rank == 4 and adapter.alpha == 16.0 and adapter.scale == 4.0
    assert attn.lora_scale == 4.0
    assert torch.equal(attn.lora_A, adapter.layers[1][0])
    assert torch.equal(attn.lora_B, adapter.layers[1][1])
    assert m3.encoder.layers[1].self_attn.lora_A is None


def test_lora_true_without_adapter_raises(ckpt):
    d, _ = ckpt
    with pytest.raises(WeightsError, match=LORA_DIR):
        load_model(d, lora=True)
    assert load_model(d, lora=None).has_lora is False


def test_lora_wrong_target_refused(lora_ckpt):
    d, _ = lora_ckpt
    p = d / LORA_DIR / "adapter_config.json"
    ac = json.loads(p.read_text())
    ac["target_modules"] = ["q_proj"]
    p.write_text(json.dumps(ac))
    with pytest.raises(WeightsError) as ei:
        load_model(d)
    assert "target_modules" in str(ei.value) and "q_proj" in str(ei.value)
    assert load_model(d, lora=False).has_lora is False


def test_lora_missing_tensor_refused(lora_ckpt):
    d, _ = lora_ckpt
    path = d / LORA_DIR / "adapter_model.safetensors"
    t = load_file(str(path))
    name = "base_model.model.encoder.layers.1.self_attn.o_proj.lora_B.weight"
    del t[name]
    save_file(t, str(path))
    with pytest.raises(WeightsError, match=re.escape(name)):
        load_model(d)


def _batch(tokens, *, lora):
    row = PassRow(seq_id=0, token_ids=tokens, positions=list(range(len(tokens))), prefix_len=0,
                  mask=BIDIRECTIONAL)
    return ForwardBatch.from_rows([row], lora=lora)


def _cache(cfg, dtype=torch.float64):
    c = PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                     head_dim=cfg.head_dim, num_pages=8, page_size=4, dtype=dtype)
    c.add(0)
    return c


def test_lora_math_equals_merged_o_proj(lora_ckpt):
    d, seed = lora_ckpt
    m = load_model(d, dtype=torch.float64)
    cfg = m.config
    assert m.has_lora
    # read the adapter straight from disk (independent of load_lora)
    ac = json.loads((d / LORA_DIR / "adapter_config.json").read_text())
    scale = ac["lora_alpha"] / ac["r"]
    assert scale == 4.0
    lt = load_file(str(d / LORA_DIR / "adapter_model.safetensors"))

    merged = copy.deepcopy(m)
    merged.set_lora(None, 0.0)
    assert not merged.has_lora
    with torch.no_grad():
        for n, layer in enumerate(merged.encoder.layers):
            p = f"base_model.model.encoder.layers.{n}.self_attn.o_proj."
            a, b = lt[p + "lora_A.weight"].double(), lt[p + "lora_B.weight"].double()
            w = layer.self_attn.o_proj.weight
            w += scale * (b @ a)

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (9,), generator=g).tolist()
    tokens[4] = cfg.mask_token_id
    with_lora = m(_batch(tokens, lora=True), _cache(cfg))
    via_merge = merged(_batch(tokens, lora=False), _cache(cfg))
    assert with_lora.dtype == torch.float64 and with_lora.shape == (9, cfg.vocab_size)
    torch.testing.assert_close(with_lora, via_merge, rtol=1e-10, atol=1e-10)

    without = m(_batch(tokens, lora=False), _cache(cfg))
    assert (without - with_lora).abs().max().item() > 1e-3
    # lora=False on the adapter model is the plain base model
    base = load_model(d, dtype=torch.float64, lora=False)
    torch.testing.assert_close(without, base(_batch(tokens, lora=False), _cache(cfg)),
                               rtol=0, atol=0)


def test_lora_batch_on_model_without_adapter_raises(ckpt):
    d, _ = ckpt
    m = load_model(d, dtype=torch.float64)
    with pytest.raises(ValueError, match="LoRA"):
        m(_batch([1, 2, 3], lora=True), _cache(m.config))
    out = m(_batch([1, 2, 3], lora=False), _cache(m.config))
    assert out.shape == (3, m.config.vocab_size)

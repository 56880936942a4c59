"""NLD checkpoints on disk: HF / PEFT name tables, safetensors loading, the tiny-checkpoint writer.

Layout of a checkpoint directory (model_spec §1.2, §1.6, §1.8)::

    config.json                    NLD config (architectures, auto_map, rope_parameters, ...)
    generation_config.json         bos/eos ids
    model.safetensors              or model-0000i-of-0000n.safetensors + model.safetensors.index.json
        encoder.embed_tokens.weight [V, H]     encoder.norm.weight [H]     diffusion_head.weight [V, H]
        encoder.layers.N.{input_layernorm,post_attention_layernorm}.weight [H]
        encoder.layers.N.self_attn.{q [Hq·d, H], k [Hkv·d, H], v [Hkv·d, H], o [H, Hq·d]}_proj.weight
        encoder.layers.N.mlp.{gate [I, H], up [I, H], down [H, I]}_proj.weight
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja
    linear_spec_lora/              optional PEFT adapter, o_proj only:
        adapter_config.json        r, lora_alpha (scale = alpha / r), target_modules ["o_proj"]
        adapter_model.safetensors  base_model.model.encoder.layers.N.self_attn.o_proj.lora_A.weight [r, Hq·d]
                                   base_model.model.encoder.layers.N.self_attn.o_proj.lora_B.weight [H, r]

Loading refuses missing, unexpected or mis-shaped tensors by name (only ``rotary_emb.inv_freq``
buffers are tolerated and dropped).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import NLDConfig, preset
from .model import NLDModel

LORA_DIR = "linear_spec_lora"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


class WeightsError(ValueError):
    """A checkpoint whose tensors do not match the NLD name table."""


def ministral3_name(name: str) -> str:
    """A checkpoint tensor's name in a plain ``Ministral3ForCausalLM`` (SGLang's and
    transformers' layout): ``encoder.*`` → ``model.*``, ``diffusion_head.*`` → ``lm_head.*``,
    anything else unchanged."""
    if name.startswith("encoder."):
        return "model." + name[len("encoder."):]
    if name.startswith("diffusion_head."):
        return "lm_head." + name[len("diffusion_head."):]
    return name


def hf_weight_shapes(cfg: NLDConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of an NLD checkpoint with its shape (9 per layer + 3 globals)."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.embed_tokens.weight": (v, h),
        "encoder.norm.weight": (h,),
        "diffusion_head.weight": (v, h),
    }
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (cfg.q_size, h),
            p + "self_attn.k_proj.weight": (cfg.kv_size, h),
            p + "self_attn.v_proj.weight": (cfg.kv_size, h),
            p + "self_attn.o_proj.weight": (h, cfg.q_size),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
    return shapes


def lora_weight_shapes(cfg: NLDConfig, rank: int) -> dict[str, tuple[int, ...]]:
    """PEFT tensor names of the ``linear_spec_lora`` adapter with their shapes."""
    out: dict[str, tuple[int, ...]] = {}
    for n in range(cfg.num_hidden_layers):
        p = f"base_model.model.encoder.layers.{n}.self_attn.o_proj."
        out[p + "lora_A.weight"] = (rank, cfg.q_size)
        out[p + "lora_B.weight"] = (cfg.hidden_size, rank)
    return out


def _check_tensors(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                   where: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != expected[k])
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if bad:
            parts.append("wrong shape " + ", ".join(
                f"{k}: {tuple(found[k])} != {expected[k]}" for k in bad[:8]))
        raise WeightsError(f"{where}: " + "; ".join(parts))


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a (single-file or sharded) checkpoint, in their stored dtype."""
    tensors: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(Path(directory)):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                if k.endswith("rotary_emb.inv_freq"):
                    continue
                if k in tensors:
                    raise WeightsError(f"tensor {k} appears in more than one shard")
                tensors[k] = sf.get_tensor(k)
    return tensors


@dataclass(frozen=True)
class LoraAdapter:
    """Per-layer (A [r, Hq·d], B [H, r]) of the drafting adapter and its scale alpha/r."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def load_lora(directory: str | os.PathLike, cfg: NLDConfig) -> LoraAdapter:
    """Load a PEFT ``linear_spec_lora/`` directory (o_proj only)."""
    d = Path(directory)
    try:
        ac = json.loads((d / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise WeightsError(f"no adapter_config.json in {d}") from None
    targets = ac.get("target_modules")
    if sorted(targets or []) != ["o_proj"]:
        raise WeightsError(f"{d}: target_modules must be ['o_proj'], got {targets!r}")
    if ac.get("peft_type", "LORA") != "LORA":
        raise WeightsError(f"{d}: peft_type must be LORA, got {ac.get('peft_type')!r}")
    if ac.get("use_dora") or ac.get("use_rslora"):
        raise WeightsError(f"{d}: DoRA / rsLoRA adapters are not supported")
    rank, alpha = int(ac["r"]), float(ac["lora_alpha"])
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as sf:
        for k in sf.keys():
            tensors[k] = sf.get_tensor(k)
    _check_tensors({k: tuple(t.shape) for k, t in tensors.items()},
                   lora_weight_shapes(cfg, rank), f"LoRA adapter {d}")
    layers = []
    for n in range(cfg.num_hidden_layers):
        p = f"base_model.model.encoder.layers.{n}.self_attn.o_proj."
        layers.append((tensors[p + "lora_A.weight"], tensors[p + "lora_B.weight"]))
    return LoraAdapter(layers, rank, alpha)


def load_model(directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
               lora: bool | None = None, attention_fn=None, step_attention=None) -> NLDModel:
    """Build an :class:`NLDModel` from a checkpoint directory.

    ``lora``: True requires ``linear_spec_lora/``; None loads it when present; False skips it.
    ``attention_fn`` / ``step_attention``: the model's attentions (core's reference by default).
    """
    d = Path(directory)
    cfg = NLDConfig.from_pretrained(d)
    sd = read_state_dict(d)
    _check_tensors({k: tuple(t.shape) for k, t in sd.items()}, hf_weight_shapes(cfg),
                   f"checkpoint {d}")
    model = NLDModel(cfg)
    if attention_fn is not None:
        model.attention_fn = attention_fn
    if step_attention is not None:
        model.step_attention = step_attention
    model.load_state_dict({k: t.to(dtype) for k, t in sd.items()}, strict=True)
    model.to(dtype)
    has_adapter = (d / LORA_DIR / "adapter_config.json").exists()
    if lora and not has_adapter:
        raise WeightsError(f"--lora asked for, but {d / LORA_DIR} does not exist")
    if has_adapter and lora is not False:
        adapter = load_lora(d / LORA_DIR, cfg)
        model.set_lora(adapter.layers, adapter.scale)
    return model.eval()


def random_state_dict(cfg: NLDConfig, seed: int, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Deterministic random NLD weights: matrices N(0, gain²/fan_in), norms 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in hf_weight_shapes(cfg).items():
        if len(shape) == 1:
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name == "encoder.embed_tokens.weight":
            out[name] = torch.randn(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g) * (gain / shape[1] ** 0.5)
    return out


def random_lora(cfg: NLDConfig, seed: int, rank: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 7919)
    return {name: torch.randn(shape, generator=g) * (0.5 / shape[1] ** 0.5)
            for name, shape in lora_weight_shapes(cfg, rank).items()}


def save_lora(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], rank: int,
              alpha: float, base_model: str = "") -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": base_model, "peft_type": "LORA", "task_type": None,
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": ["o_proj"],
        "bias": "none", "inference_mode": True, "fan_in_fan_out": False,
        "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
        "use_dora": False, "layers_to_transform": None, "revision": None}, indent=2) + "\n")


def save_checkpoint(directory: str | os.PathLike, cfg: NLDConfig, tensors: dict[str, torch.Tensor],
                    *, dtype: str = "float32", shards: int = 1) -> None:
    """Write config.json, generation_config.json and the safetensors (``shards`` files)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    _check_tensors({k: tuple(t.shape) for k, t in tensors.items()}, hf_weight_shapes(cfg),
                   "save_checkpoint")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(torch_dtype=dtype)
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    (d / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "transformers_version": cfg.transformers_version}, indent=2) + "\n")
    names = list(tensors)
    t = {k: tensors[k].to(_DTYPES[dtype]).contiguous() for k in names}
    if shards <= 1:
        save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: t[k] for k in names[s::shards]}
        save_file(part, str(d / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(x.numel() * x.element_size() for x in t.values())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2) + "\n")


def write_tiny_checkpoint(directory: str | os.PathLike, *, seed: int = 0, block_size: int | None = None,
                          with_lora: bool = False, lora_rank: int = 8, dtype: str = "float32",
                          shards: int = 1, cfg: NLDConfig | None = None) -> Path:
    """A tiny, deterministic NLD checkpoint in the exact HF layout (weights, tokenizer, LoRA)."""
    from .tokenizer import build_tokenizer, save_tokenizer

    cfg = cfg or preset("tiny")
    if block_size is not None:
        cfg = cfg.replace(block_size=block_size)
    d = Path(directory)
    save_checkpoint(d, cfg, random_state_dict(cfg, seed), dtype=dtype, shards=shards)
    save_tokenizer(build_tokenizer(cfg.vocab_size), d)
    if with_lora:
        save_lora(d / LORA_DIR, random_lora(cfg, seed, lora_rank), lora_rank, 4.0 * lora_rank,
                  base_model=str(d))
    return d

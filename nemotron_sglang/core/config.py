"""NLD model configuration: one frozen dataclass, built once from an HF ``config.json``.

Every key of the released NLD ``config.json`` (model_spec §1.4) has a field here, the
``rope_parameters`` dict included (as the frozen :class:`RopeParameters`). Values are checked
once, in ``__post_init__``; everything downstream trusts the object. Presets give the 3B / 8B /
14B geometry and a ``tiny`` geometry for CPU tests (model_spec §6).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .modes import is_power_of_two

ARCHITECTURE = "NemotronLabsDiffusionModel"
MODEL_TYPE = "nemotron_labs_diffusion"
AUTO_MAP = {
    "AutoConfig": "configuration_nemotron_labs_diffusion.NemotronLabsDiffusionConfig",
    "AutoModel": "modeling_nemotron_labs_diffusion.NemotronLabsDiffusionModel",
}


class ConfigError(ValueError):
    """An NLD config that cannot be served (unknown architecture, inconsistent values)."""


@dataclass(frozen=True)
class RopeParameters:
    """YaRN RoPE + llama-4 query scaling, as in ``config.json["rope_parameters"]``."""

    rope_type: str = "yarn"
    rope_theta: float = 1.0e6
    factor: float = 16.0
    original_max_position_embeddings: int = 16384
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    llama_4_scaling_beta: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NLDConfig:
    """Normalised NLD config. Field names are the HF keys; see model_spec §1.4."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_parameters: RopeParameters = field(default_factory=RopeParameters)
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 100
    eos_token_id: int = 11
    bos_token_id: int = 1
    block_size: int = 32
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    dlm_paradigm: str = "bidirectional"
    initializer_range: float = 0.02
    torch_dtype: str = "bfloat16"
    # training-only / bookkeeping keys, kept so a config round-trips unchanged
    ar_loss_weight: float | None = 1.0
    dlm_loss_weight: float | None = None
    dp_varying_mask_ratio: bool = False
    attn_implementation: str = "sdpa"
    use_cache: bool = False
    transformers_version: str = "5.0.0"

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"invalid NLD config: {msg}")

        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
                     "max_position_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name} must be a positive integer, got {v!r}")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
             f"num_key_value_heads ({self.num_key_value_heads})")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("mask_token_id", "eos_token_id", "bos_token_id"):
            v = getattr(self, name)
            need(isinstance(v, int) and 0 <= v < self.vocab_size,
                 f"{name}={v!r} must be a token id in [0, vocab_size={self.vocab_size})")
        need(self.mask_token_id != self.eos_token_id, "mask_token_id must differ from eos_token_id")
        need(is_power_of_two(self.block_size),
             f"block_size must be a power of two, got {self.block_size}")
        need(self.hidden_act == "silu", f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        need(not self.tie_word_embeddings,
             "tie_word_embeddings must be false: NLD has an untied diffusion_head")
        need(not self.attention_bias and not self.mlp_bias,
             "attention_bias / mlp_bias are not part of NLD and are not supported")
        need(self.sliding_window is None, f"sliding_window must be null, got {self.sliding_window}")
        need(self.dlm_paradigm == "bidirectional",
             f"dlm_paradigm {self.dlm_paradigm!r} is not servable (only 'bidirectional' is released)")
        need(self.rms_norm_eps > 0, "rms_norm_eps must be positive")
        rp = self.rope_parameters
        need(rp.rope_type in ("yarn", "default"),
             f"rope_parameters.rope_type must be 'yarn' or 'default', got {rp.rope_type!r}")
        need(rp.rope_theta > 0, "rope_parameters.rope_theta must be positive")
        need(rp.factor >= 1.0, f"rope_parameters.factor must be >= 1, got {rp.factor}")
        need(rp.original_max_position_embeddings > 0,
             "rope_parameters.original_max_position_embeddings must be positive")
        need(rp.beta_fast > rp.beta_slow > 0,
             f"rope_parameters needs beta_fast > beta_slow > 0, got {rp.beta_fast}, {rp.beta_slow}")
        need(rp.llama_4_scaling_beta >= 0, "rope_parameters.llama_4_scaling_beta must be >= 0")

    # ---- derived geometry -------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def num_parameters(self) -> int:
        """Parameter count of the base model (embeddings + layers + untied head)."""
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        per_layer = attn + 3 * h * i + 2 * h
        return self.num_hidden_layers * per_layer + 2 * self.vocab_size * h + h

    # ---- HF round trip ------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "NLDConfig":
        """Build from a parsed ``config.json``; refuses other architectures and bad values."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"config.json must be a JSON object, got {type(d).__name__}")
        archs = d.get("architectures")
        if archs != [ARCHITECTURE]:
            raise ConfigError(f"unsupported architectures {archs!r}: expected [{ARCHITECTURE!r}]")
        if d.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"unsupported model_type {d.get('model_type')!r}: expected {MODEL_TYPE!r}")
        rp_raw = d.get("rope_parameters")
        if rp_raw is None and isinstance(d.get("rope_scaling"), Mapping):
            rp_raw = d["rope_scaling"]
        if not isinstance(rp_raw, Mapping):
            raise ConfigError("rope_parameters must be a dict (YaRN parameters)")
        rp_fields = {f.name for f in dataclasses.fields(RopeParameters)}
        rp_kwargs = {k: v for k, v in rp_raw.items() if k in rp_fields}
        if "rope_theta" not in rp_kwargs and "rope_theta" in d:
            rp_kwargs["rope_theta"] = d["rope_theta"]
        if "original_max_position_embeddings" in rp_kwargs:
            rp_kwargs["original_max_position_embeddings"] = int(
                rp_kwargs["original_max_position_embeddings"])
        try:
            rope = RopeParameters(**rp_kwargs)
        except TypeError as e:
            raise ConfigError(f"bad rope_parameters: {e}") from None
        fields = {f.name for f in dataclasses.fields(cls)} - {"rope_parameters"}
        kwargs = {k: d[k] for k in fields if k in d}
        eos = kwargs.get("eos_token_id")
        if isinstance(eos, list):
            if not eos:
                raise ConfigError("eos_token_id is an empty list")
            kwargs["eos_token_id"] = eos[0]
        for required in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "intermediate_size", "vocab_size"):
            if required not in kwargs:
                raise ConfigError(f"config.json lacks required key {required!r}")
        if "head_dim" not in kwargs:
            heads = kwargs["num_attention_heads"]
            if not isinstance(heads, int) or heads <= 0:
                raise ConfigError(f"num_attention_heads must be a positive integer, got {heads!r}")
            kwargs["head_dim"] = kwargs["hidden_size"] // heads
        if "max_position_embeddings" not in kwargs:
            try:
                kwargs["max_position_embeddings"] = int(
                    float(rope.factor) * int(rope.original_max_position_embeddings))
            except (TypeError, ValueError):
                raise ConfigError("max_position_embeddings missing and not derivable from "
                                  "rope_parameters") from None
        try:
            return cls(rope_parameters=rope, **kwargs)
        except TypeError as e:        # a value of the wrong type reached a comparison
            raise ConfigError(f"invalid NLD config: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "NLDConfig":
        """Read ``<path>/config.json`` (or ``path`` itself if it is a file)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "config.json")
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {p}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from None
        return cls.from_hf_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content in the released NLD layout."""
        d = dataclasses.asdict(self)
        d["rope_parameters"] = self.rope_parameters.to_dict()
        d["architectures"] = [ARCHITECTURE]
        d["model_type"] = MODEL_TYPE
        d["auto_map"] = dict(AUTO_MAP)
        return dict(sorted(d.items()))

    def replace(self, **changes: Any) -> "NLDConfig":
        return dataclasses.replace(self, **changes)


def _real(hidden: int, layers: int, inter: int, theta: float) -> NLDConfig:
    return NLDConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=inter, vocab_size=131072,
        max_position_embeddings=262144, rope_parameters=RopeParameters(rope_theta=theta))


PRESETS: dict[str, NLDConfig] = {
    "3b": _real(3072, 26, 9216, 1.0e6),
    "8b": _real(4096, 34, 14336, 1.0e6),
    "14b": _real(5120, 40, 16384, 1.0e9),
    # hidden != heads * head_dim (like 14B), GQA group 2, YaRN ramp and llama-4 q-scale active
    # past position 32, vocab large enough for the real special ids and a byte-level tokenizer.
    "tiny": NLDConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, vocab_size=512, max_position_embeddings=256,
        rope_parameters=RopeParameters(rope_theta=10000.0, factor=8.0,
                                       original_max_position_embeddings=32),
        block_size=4, torch_dtype="float32"),
}


def preset(name: str) -> NLDConfig:
    """One of :data:`PRESETS` (``3b``, ``8b``, ``14b``, ``tiny``); unknown names fail loudly."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None

"""NLD checkpoints as plain Mistral-family checkpoints, the independent references that
transformers and unmodified SGLang read without the plugin's code: the same tensors under other
names and a stock config, NLD's untied head as ``lm_head``.

- the VLM as ``Mistral3ForConditionalGeneration`` (``write_mistral3_copy``; the image path's
  reference): text keys as a ``ministral3`` text config::

    encoder.vision_tower.* / encoder.multi_modal_projector.*  → model.vision_tower.* / model.multi_modal_projector.*
    encoder.*                                                 → model.language_model.*
    diffusion_head.weight                                     → lm_head.weight

- a text checkpoint as ``Ministral3ForCausalLM`` (``write_ministral3_copy``; ``ar`` against
  unmodified SGLang, ``benchmarks/ar_vs_sglang.py``): ``encoder.*`` → ``model.*``,
  ``diffusion_head.weight`` → ``lm_head.weight``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.vlm_checkpoint import VISION_KEYS
from ..core.weights import ministral3_name

_VISION = ("encoder.vision_tower.", "encoder.multi_modal_projector.")


def mistral3_name(name: str) -> str:
    """Transformers' Mistral3 name of a VLM checkpoint tensor."""
    if name.startswith(_VISION):
        return "model." + name[len("encoder."):]
    if name.startswith("encoder."):
        return "model.language_model." + name[len("encoder."):]
    if name == "diffusion_head.weight":
        return "lm_head.weight"
    raise KeyError(f"no Mistral3 name for {name!r}")


def _with_original(text: dict[str, Any]) -> dict[str, Any]:
    """A text config with ``original_max_position_embeddings`` also at its top level, where
    SGLang's Ministral3 layers read it (YaRN and the llama-4 query scaling; without it they fall
    back to their default and diverge from transformers past the original context): the same
    normalisation as ``sglang_plugin/model.py``'s."""
    original = (text.get("rope_parameters") or {}).get("original_max_position_embeddings")
    if original is None:
        return text
    return {**text, "original_max_position_embeddings": original}


def mistral3_config(d: dict[str, Any]) -> dict[str, Any]:
    """The ``mistral3`` config of a VLM ``config.json`` dict (text keys: ``_with_original``)."""
    text = _with_original({k: v for k, v in d.items() if k not in VISION_KEYS + (
        "architectures", "model_type", "torch_dtype", "auto_map")})
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {"model_type": "ministral3", **text}, "tie_word_embeddings": False,
            **{k: d[k] for k in VISION_KEYS}}


def ministral3_config(d: dict[str, Any]) -> dict[str, Any]:
    """The ``ministral3`` config of a text ``config.json`` dict (``_with_original``)."""
    return _with_original({**d, "architectures": ["Ministral3ForCausalLM"],
                           "model_type": "ministral3"})


def _write_copy(src: Path, dst: Path, config, name) -> Path:
    """``dst``: ``src``'s other files as they are, ``config`` of its config.json dict, its
    tensors renamed by ``name``."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    d = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(d), indent=2) + "\n")
    sd: dict[str, torch.Tensor] = load_file(str(src / "model.safetensors"))
    save_file({name(k): v for k, v in sd.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


def write_mistral3_copy(src: Path, dst: Path) -> Path:
    """``dst``: the VLM checkpoint ``src`` as a plain Mistral3 checkpoint (same tokenizer and
    processor files)."""
    return _write_copy(src, dst, mistral3_config, mistral3_name)


def write_ministral3_copy(src: Path, dst: Path) -> Path:
    """``dst``: the text checkpoint ``src`` as a plain Ministral3ForCausalLM checkpoint (same
    tokenizer files)."""
    return _write_copy(src, dst, ministral3_config, ministral3_name)

"""The tiny VLM as a plain Mistral3 checkpoint, the independent reference of the image path:
the same tensors under transformers' Mistral3ForConditionalGeneration names and a ``mistral3``
config (text keys as a ``ministral3`` text config, NLD's untied head), read by transformers and
by SGLang's own Mistral3 model class without the plugin's code.

    encoder.vision_tower.* / encoder.multi_modal_projector.*  → model.vision_tower.* / model.multi_modal_projector.*
    encoder.*                                                 → model.language_model.*
    diffusion_head.weight                                     → lm_head.weight
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.vlm_checkpoint import VISION_KEYS

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


def mistral3_config(d: dict[str, Any]) -> dict[str, Any]:
    """The ``mistral3`` config of a VLM ``config.json`` dict. The text config also carries
    ``original_max_position_embeddings`` at its top level, where SGLang's Ministral3 layers read
    it (YaRN and the llama-4 query scaling; without it they fall back to their default and
    diverge from transformers past the original context): the same normalisation as
    ``sglang_plugin/model.py``'s."""
    text = {k: v for k, v in d.items() if k not in VISION_KEYS + (
        "architectures", "model_type", "torch_dtype", "auto_map")}
    original = (text.get("rope_parameters") or {}).get("original_max_position_embeddings")
    if original is not None:
        text.setdefault("original_max_position_embeddings", original)
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {"model_type": "ministral3", **text}, "tie_word_embeddings": False,
            **{k: d[k] for k in VISION_KEYS}}


def write_mistral3_copy(src: Path, dst: Path) -> Path:
    """``dst``: the VLM checkpoint ``src`` as a plain Mistral3 checkpoint (same tokenizer and
    processor files)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    d = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(mistral3_config(d), indent=2) + "\n")
    sd: dict[str, torch.Tensor] = load_file(str(src / "model.safetensors"))
    save_file({mistral3_name(k): v for k, v in sd.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst

"""The vision-language checkpoint: its ``config.json`` (NLD's text keys at the root, as in the
VLM's released config, plus the vision keys), the vision tensor table, the loader and the tiny
VLM writer. The layout is that of ``docs/vlm.md`` §(a): read from third-party ports of the real
checkpoint where they agree, inferred (and marked there) where not.

    config.json      architectures [NemotronLabsDiffusionVLMModel], model_type
                     nemotron_labs_diffusion_vlm, every NLD text key, vision_config {pixtral},
                     spatial_merge_size, projector_hidden_act, multimodal_projector_bias,
                     image_token_index, vision_feature_layer (-1)
    tensors          encoder.* / diffusion_head.* as the text model (core/weights.py), plus
                     encoder.vision_tower.* and encoder.multi_modal_projector.* (core/vision.py
                     names under ``encoder.``)
    processor        preprocessor_config.json (PixtralImageProcessor), processor_config.json
                     (PixtralProcessor), the tokenizer with [IMG] / [IMG_BREAK] / [IMG_END]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from .config import ARCHITECTURE, MODEL_TYPE, NLDConfig, preset
from .images import CLIP_MEAN, CLIP_STD, ImageSpec
from .model import NLDModel
from .vision import VisionConfig, VisionEncoder
from .weights import (WeightsError, _check_tensors, hf_weight_shapes, random_state_dict,
                      read_state_dict)

VLM_ARCHITECTURE = "NemotronLabsDiffusionVLMModel"
VLM_MODEL_TYPE = "nemotron_labs_diffusion_vlm"
VISION_KEYS = ("vision_config", "spatial_merge_size", "projector_hidden_act",
               "multimodal_projector_bias", "image_token_index", "vision_feature_layer")
PREFIX = "encoder."                 # the vision modules sit under the text encoder
SERVED_ARCHITECTURES = (ARCHITECTURE, VLM_ARCHITECTURE)     # the text models and the VLM


def vision_weight_shapes(vc: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name → shape of every vision tensor (built on the meta device: no memory)."""
    with torch.device("meta"):
        enc = VisionEncoder(vc)
    return {PREFIX + k: tuple(v.shape) for k, v in enc.state_dict().items()}


def vlm_config_dict(cfg: NLDConfig, vc: VisionConfig) -> dict[str, Any]:
    """The VLM ``config.json`` of text config ``cfg`` and vision config ``vc``."""
    d = cfg.to_hf_dict()
    d.pop("auto_map", None)          # the VLM's remote code is not the text model's
    d.update(architectures=[VLM_ARCHITECTURE], model_type=VLM_MODEL_TYPE,
             vision_config={"model_type": "pixtral", "hidden_size": vc.hidden_size,
                            "intermediate_size": vc.intermediate_size,
                            "num_hidden_layers": vc.num_hidden_layers,
                            "num_attention_heads": vc.num_attention_heads,
                            "head_dim": vc.head_dim, "patch_size": vc.patch_size,
                            "num_channels": vc.num_channels, "image_size": vc.image_size,
                            "hidden_act": vc.hidden_act,
                            "rope_parameters": {"rope_type": "axial",
                                                "rope_theta": vc.rope_theta}},
             spatial_merge_size=vc.spatial_merge_size,
             projector_hidden_act=vc.projector_hidden_act,
             multimodal_projector_bias=vc.multimodal_projector_bias,
             image_token_index=vc.image_token_id, vision_feature_layer=-1)
    return d


def is_vlm_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory``'s config.json names the VLM architecture."""
    path = Path(directory) / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("architectures") == [
        VLM_ARCHITECTURE]


def text_config_of(directory: str | os.PathLike) -> NLDConfig | None:
    """The (text) NLD config of a local checkpoint of any served architecture, else None."""
    path = Path(directory) / "config.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    archs = d.get("architectures") or []
    if archs[:1] == [ARCHITECTURE]:
        return NLDConfig.from_hf_dict(d)
    if archs[:1] == [VLM_ARCHITECTURE]:
        return parse_vlm_config(d)[0]
    return None


def parse_vlm_config(d: Mapping[str, Any]) -> tuple[NLDConfig, VisionConfig]:
    """(text config, vision config) of a parsed VLM ``config.json``; other architectures and
    unsupported vision settings are refused."""
    if d.get("architectures") != [VLM_ARCHITECTURE] or d.get("model_type") != VLM_MODEL_TYPE:
        raise WeightsError(f"not an NLD VLM config: architectures {d.get('architectures')!r}, "
                           f"model_type {d.get('model_type')!r}")
    if d.get("vision_feature_layer", -1) != -1:
        raise WeightsError(f"vision_feature_layer {d['vision_feature_layer']!r}: only -1 (the "
                           f"tower's output) is supported")
    text = {k: v for k, v in d.items() if k not in VISION_KEYS}
    text.update(architectures=[ARCHITECTURE], model_type=MODEL_TYPE)
    cfg = NLDConfig.from_hf_dict(text)
    vc = VisionConfig.from_hf_dict(d, cfg.hidden_size, cfg.rms_norm_eps)
    if not 0 <= vc.image_token_id < cfg.vocab_size:
        raise WeightsError(f"image_token_index {vc.image_token_id} outside the vocabulary "
                           f"[0, {cfg.vocab_size})")
    return cfg, vc


def load_vlm(directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32
             ) -> tuple[NLDModel, VisionEncoder]:
    """The text model and the vision encoder of a VLM checkpoint; every tensor is checked by
    name and shape (missing, unexpected and mis-shaped ones are refused by name)."""
    d = Path(directory)
    cfg, vc = parse_vlm_config(json.loads((d / "config.json").read_text()))
    sd = read_state_dict(d)
    _check_tensors({k: tuple(t.shape) for k, t in sd.items()},
                   {**hf_weight_shapes(cfg), **vision_weight_shapes(vc)}, f"checkpoint {d}")
    model, enc = NLDModel(cfg), VisionEncoder(vc)
    model.load_state_dict({k: t.to(dtype) for k, t in sd.items()
                           if not k.startswith(("encoder.vision_tower.",
                                                "encoder.multi_modal_projector."))})
    enc.load_state_dict({k[len(PREFIX):]: t.to(dtype) for k, t in sd.items()
                         if k.startswith(("encoder.vision_tower.",
                                          "encoder.multi_modal_projector."))})
    return model.to(dtype).eval(), enc.to(dtype).eval()


def preprocessor_config_dict(vc: VisionConfig) -> dict[str, Any]:
    """``preprocessor_config.json``: transformers' PixtralImageProcessor, images up to
    ``image_size`` on their longest edge."""
    return {"image_processor_type": "PixtralImageProcessor", "processor_class": "PixtralProcessor",
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "resample": 3, "rescale_factor": 1 / 255, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "size": {"longest_edge": vc.image_size},
            "patch_size": {"height": vc.patch_size, "width": vc.patch_size}}


def processor_config_dict(vc: VisionConfig) -> dict[str, Any]:
    """``processor_config.json``: transformers' PixtralProcessor with the image token names."""
    from .tokenizer import IMG, IMG_BREAK, IMG_END

    return {"processor_class": "PixtralProcessor", "patch_size": vc.patch_size,
            "spatial_merge_size": vc.spatial_merge_size, "image_token": IMG,
            "image_break_token": IMG_BREAK, "image_end_token": IMG_END}


def load_image_spec(directory: str | os.PathLike, vc: VisionConfig | None = None,
                    **limits) -> ImageSpec:
    """The checkpoint's image input rules: its preprocessor settings, the cell its vision config
    implies (``vc``, or read from its config.json), the image token ids its tokenizer gives
    (``[IMG]`` must be ``image_token_index``)."""
    from .tokenizer import IMG, IMG_BREAK, IMG_END, load_tokenizer

    d = Path(directory)
    if vc is None:
        _, vc = parse_vlm_config(json.loads((d / "config.json").read_text()))
    tok = load_tokenizer(d)
    image, brk, end = (tok.token_to_id(name) for name in (IMG, IMG_BREAK, IMG_END))
    if image is None or brk is None or end is None or image != vc.image_token_id:
        raise WeightsError(f"tokenizer of {d}: image tokens {IMG} {image}, {IMG_BREAK} {brk}, "
                           f"{IMG_END} {end}; config image_token_index {vc.image_token_id}")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    return ImageSpec.from_files(pre, vc.patch_size * vc.spatial_merge_size, image, brk, end,
                                **limits)


def tiny_vision_config(text: NLDConfig) -> VisionConfig:
    """The tiny VLM's image path: patch 4, 2 layers, hidden 32; the image token is the last id."""
    return VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, head_dim=8, patch_size=4, image_size=64,
                        text_hidden_size=text.hidden_size, text_rms_norm_eps=text.rms_norm_eps,
                        image_token_id=text.vocab_size - 1)


def write_tiny_vlm_checkpoint(directory: str | os.PathLike, *, seed: int = 0) -> Path:
    """A tiny, deterministic VLM checkpoint: the tiny text geometry with one more id (the image
    token, appended as the released VLM's 131073rd), the tiny image path, random weights,
    config.json, generation_config.json, model.safetensors, the tiny tokenizer with the image
    tokens and the processor files."""
    from .tokenizer import (VLM_CHAT_TEMPLATE, build_tokenizer, save_tokenizer,
                            with_image_tokens)

    base = preset("tiny")
    cfg = base.replace(vocab_size=base.vocab_size + 1)
    vc = tiny_vision_config(cfg)
    g = torch.Generator().manual_seed(seed + 104729)
    tensors = random_state_dict(cfg, seed)
    for name, shape in vision_weight_shapes(vc).items():
        if len(shape) == 1:
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            tensors[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(vlm_config_dict(cfg, vc), indent=2) + "\n")
    (d / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    save_tokenizer(with_image_tokens(build_tokenizer(base.vocab_size)), d, VLM_CHAT_TEMPLATE)
    for name, content in (("preprocessor_config.json", preprocessor_config_dict(vc)),
                          ("processor_config.json", processor_config_dict(vc))):
        (d / name).write_text(json.dumps(content, indent=2) + "\n")
    return d

"""The vision-language NLD on SGLang's Mistral3 (LLaVA-style) classes: SGLang's Pixtral tower,
transformers' Mistral3 projector, SGLang's multimodal processor and embedding routine, with
NLD's text model (``model.py``) as the language model. Only what NLD changes is here
(``docs/vlm.md`` §(b)):

- the config: NLD's VLM keeps its text keys at the root; SGLang's LLaVA classes and processor
  want ``text_config`` / ``vision_config``, so the config class builds both (the text part is an
  ordinary ``NemotronLabsDiffusionConfig``);
- the text model is ``NemotronLabsDiffusionForSGLang`` (diffusion passes, untied head, per-pass
  attention), whatever transformers' mapping would pick; the algorithm's model API
  (``pass_hidden``, ``pass_logits``, ``install_lora``, ...) is delegated to it;
- checkpoint names: ``encoder.vision_tower.*`` / ``encoder.multi_modal_projector.*`` go to the
  image path, every other tensor to NLD's strict text loader; core's table
  (``core/vlm_checkpoint.py``) refuses missing or unexpected vision tensors by name.

Images reach only the context pass (the prompt, through SGLang's ``general_mm_embed_routine``);
every canvas pass embeds text tokens, so the decode modes are unchanged after an image prompt.

``check_images`` (around SGLang's per-request tokenization) refuses, as a 400 with the reason,
what SGLang would silently drop or turn into a 500: images for a text model, an image that is not
one (or a missing file), too large or too many (core's ``ImageSpec`` limits), and a prompt whose
``[IMG]`` placeholders do not match its images. Only the image headers are read here (PIL opens
lazily); SGLang decodes and preprocesses as for Mistral3.
"""

from __future__ import annotations

import functools
import io
from typing import Iterable

import torch
from huggingface_hub.dataclasses import strict
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.models.mistral import Mistral3ForConditionalGeneration
from transformers import Mistral3Config

from ..core.config import ARCHITECTURE
from ..core.images import ImageError, ImageSpec, check_count, check_request
from ..core.tokenizer import IMG
from ..core.vision import VisionConfig
from ..core.vlm_checkpoint import (PREFIX, VLM_ARCHITECTURE, VLM_MODEL_TYPE, load_image_spec,
                                   vision_weight_shapes)
from ..core.weights import WeightsError
from .hf_config import NemotronLabsDiffusionConfig
from .model import NemotronLabsDiffusionForSGLang

_VISION = ("vision_tower.", "multi_modal_projector.")


@strict
class NemotronLabsDiffusionVLMConfig(Mistral3Config):
    """Mistral3's config under the VLM's name, its ``text_config`` built from the root keys."""

    model_type = VLM_MODEL_TYPE
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            text = {k: v for k, v in kwargs.items() if k not in ("architectures", "model_type")}
            self.text_config = NemotronLabsDiffusionConfig(**text, architectures=[ARCHITECTURE])
        super().__post_init__(**kwargs)


class NemotronLabsDiffusionVLMModel(Mistral3ForConditionalGeneration):
    """The class SGLang builds for architecture ``NemotronLabsDiffusionVLMModel``."""

    def _get_sgl_model_cls(self, config, auto_model_type=None):
        if isinstance(config, NemotronLabsDiffusionConfig):
            return NemotronLabsDiffusionForSGLang
        return super()._get_sgl_model_cls(config, auto_model_type)

    # ---- the algorithm's model API, served by the text model --------------------------------
    @property
    def nld_config(self):
        return self.language_model.nld_config

    @property
    def has_lora(self) -> bool:
        return self.language_model.has_lora

    def install_lora(self, *args, **kwargs) -> None:
        self.language_model.install_lora(*args, **kwargs)

    def pass_hidden(self, forward_batch) -> torch.Tensor:
        return self.language_model.pass_hidden(forward_batch)

    def pass_logits(self, hidden: torch.Tensor, forward_batch) -> torch.Tensor:
        return self.language_model.pass_logits(hidden, forward_batch)

    # ---- weights ---------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        vc = VisionConfig.from_hf_dict(self.config.to_dict(), self.nld_config.hidden_size,
                                       self.nld_config.rms_norm_eps)
        expected = vision_weight_shapes(vc)
        seen: set[str] = set()
        tower, projector = [], []

        def text():
            for name, tensor in weights:
                if not name.startswith(tuple(PREFIX + v for v in _VISION)):
                    yield name, tensor
                    continue
                if name not in expected:
                    raise WeightsError(f"unexpected tensor {name!r} in the NLD VLM checkpoint")
                seen.add(name)
                short = name[len(PREFIX):]
                (tower if short.startswith(_VISION[0]) else projector).append((short, tensor))

        self.language_model.load_weights(text())
        missing = sorted(set(expected) - seen)
        if missing:
            raise WeightsError(f"NLD VLM checkpoint lacks tensors {missing[:8]}"
                               f"{' ...' if len(missing) > 8 else ''}")
        self.vision_tower.load_weights((n[len(_VISION[0]):], t) for n, t in tower)
        params = dict(self.named_parameters())
        for name, tensor in projector:
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)


TOKENIZE_ONE_TARGET = ("sglang.srt.managers.tokenizer_manager.TokenizerManager."
                       "_tokenize_one_request")


@functools.lru_cache(maxsize=4)
def _image_spec(model_path: str) -> ImageSpec:
    return load_image_spec(model_path)             # read once per server


def _image_size(item, i: int) -> tuple[int, int] | None:
    """(H, W) from the header of ``image_data[i]`` (bytes, a data URL, base64, a path; a decoded
    PIL image as the offline engine passes it); None for a remote URL, which SGLang fetches
    itself, and for precomputed features (a dict)."""
    from PIL import Image
    from sglang.srt.utils.common import get_image_bytes

    item = getattr(item, "url", item)
    if isinstance(item, Image.Image):
        return item.height, item.width
    if isinstance(item, dict) or (isinstance(item, str) and
                                  item.startswith(("http://", "https://"))):
        return None
    try:
        data = get_image_bytes(item)
    except FileNotFoundError:
        raise ImageError(f"image_data[{i}]: no such file {item!r}") from None
    except Exception as e:                  # bad base64, unreadable file, unknown type
        raise ImageError(f"image_data[{i}] is not an image ({type(e).__name__}: {e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ImageError(f"image_data[{i}] is too large: {e}") from None
    except Exception as e:
        raise ImageError(f"image_data[{i}] is not an image ({e})") from None
    return h, w


def check_request_images(obj, archs, model_path: str) -> None:
    """The image rule of one tokenization request (``GenerateReqInput``), raising ImageError."""
    images = obj.image_data
    if images is None:
        images = []
    elif not isinstance(images, list):
        images = [images]
    if ARCHITECTURE in archs:
        if images:
            raise ImageError("image_data: this is a text-only NLD model; images need the "
                             "vision-language checkpoint")
        return
    if VLM_ARCHITECTURE not in archs:
        return
    spec = _image_spec(model_path)
    for i, item in enumerate(images):           # file:// as the path (SGLang would open it as is)
        url = getattr(item, "url", item)
        if isinstance(url, str) and url.startswith("file://"):
            if hasattr(item, "url"):
                item.url = url[len("file://"):]
            else:
                images[i] = url[len("file://"):]
    if obj.image_data is not None:
        obj.image_data = images
    check_count(len(images), spec)              # before reading any header
    sizes = [_image_size(item, i) for i, item in enumerate(images)]
    if obj.text is not None:
        markers = obj.text.count(IMG)
    else:
        markers = sum(1 for t in (obj.input_ids or []) if t == spec.image_token_id)
    check_request(sizes, markers, spec)


async def check_images(original, self, obj, *args, **kwargs):
    """AROUND ``TokenizerManager._tokenize_one_request``: the image rule first (a ValueError:
    SGLang answers 400 with its message)."""
    archs = getattr(self.model_config.hf_config, "architectures", None) or []
    try:
        check_request_images(obj, archs, str(self.server_args.model_path))
    except ImageError as e:
        raise ValueError(f"nemotron-sglang: {e}") from None
    return await original(self, obj, *args, **kwargs)

"""The HF config class for ``model_type = nemotron_labs_diffusion``, so SGLang (transformers)
loads NLD checkpoints without their remote code. It is Ministral3's config under NLD's name;
NLD's extra keys (mask_token_id, block_size, ...) ride along as attributes."""

from __future__ import annotations

from transformers import Ministral3Config

from ..core.config import MODEL_TYPE


class NemotronLabsDiffusionConfig(Ministral3Config):
    model_type = MODEL_TYPE

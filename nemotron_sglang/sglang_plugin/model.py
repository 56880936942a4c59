"""NLD on SGLang's layers: ``Ministral3ForCausalLM`` plus what NLD adds, and nothing of its own.

SGLang 0.5.23 already ships NLD's backbone (fused qkv / gate_up, RadixAttention, YaRN rotary,
llama-4 query scaling). This subclass only
- normalises the HF config (SGLang's Ministral3 layer reads ``original_max_position_embeddings``
  at the top level; NLD keeps it inside ``rope_parameters``);
- runs a custom pass in two halves, the final hidden states (``pass_hidden``) and the head for
  the rows a strategy reads (``pass_logits``, SGLang's logits processor: TP gather included);
- maps checkpoint names with core's name table (``encoder.`` → ``model.``, ``diffusion_head`` →
  ``lm_head``) and refuses missing or unexpected tensors by name (shapes: SGLang's loaders);
- adds the drafting LoRA on ``o_proj`` as a low-rank branch, scaled per token by the running
  canvas step (``custom_pass.step_lora``: [T] 0/1, from the step's plan through SGLang's forward
  context; off for SGLang's own passes), installed with ``install_lora``, sharded along
  o_proj's input like the layer itself.
A canvas step brings its own attention through SGLang's forward context (``custom_pass``'s
``StepBackend``); nothing here overrides a layer's ``forward``.
Without ``--dllm-algorithm`` it is an ordinary causal model on SGLang's AR path.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch

from sglang.srt.layers.logits_processor import LogitsMetadata, LogitsProcessor
from sglang.srt.models.ministral3 import Ministral3ForCausalLM

from ..core.config import ARCHITECTURE, NLDConfig
from ..core.lora import lora_delta
from ..core.weights import WeightsError, hf_weight_shapes, ministral3_name
from .custom_pass import step_lora

logger = logging.getLogger(__name__)


def normalise_hf_config(config) -> NLDConfig:
    """Core's validated config of ``config``, whose RoPE attributes are then set to core's
    reading of them (``rope_parameters`` or ``rope_scaling``, ``rope_theta`` fallback:
    ``NLDConfig.from_hf_dict``) in the form SGLang's Ministral3 layers read: the whole
    ``rope_parameters`` dict and a top-level ``original_max_position_embeddings``."""
    nld = nld_config_of(config)
    config.rope_parameters = nld.rope_parameters.to_dict()
    config.original_max_position_embeddings = nld.rope_parameters.original_max_position_embeddings
    return nld


def nld_config_of(config) -> NLDConfig:
    """Core's validated config from an HF config object (whichever class loaded it)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    d.setdefault("architectures", [ARCHITECTURE])
    return NLDConfig.from_hf_dict(d)


class NemotronLabsDiffusionForSGLang(Ministral3ForCausalLM):
    def __init__(self, config, quant_config=None, prefix: str = ""):
        self.nld_config = normalise_hf_config(config)
        super().__init__(config, quant_config=quant_config, prefix=prefix)
        self.logits_processor = LogitsProcessor(config, return_full_logits=True)
        self._lora: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._lora_scale = 0.0
        self._o_projs = [layer.self_attn.o_proj for layer in self.model.layers
                         if hasattr(layer, "self_attn")]
        for i, o_proj in enumerate(self._o_projs):
            o_proj.register_forward_hook(self._lora_hook(i))

    # ---- a custom pass: hidden states, then logits for the rows read -----------------------
    def pass_hidden(self, forward_batch) -> torch.Tensor:
        """Final hidden states [T, H] of ``forward_batch``'s tokens (normed, before the head)."""
        return self.model(forward_batch.input_ids, forward_batch.positions, forward_batch)

    def pass_logits(self, hidden: torch.Tensor, forward_batch) -> torch.Tensor:
        """Logits [n, V] of hidden rows [n, H] (all-gathered over TP ranks)."""
        return self.logits_processor._get_logits(
            hidden, self.lm_head, LogitsMetadata.from_forward_batch(forward_batch),
            use_logits_buffer=False)

    # ---- drafting LoRA ---------------------------------------------------------------------
    def install_lora(self, layers: list[tuple[torch.Tensor, torch.Tensor]], scale: float,
                     tp_rank: int = 0, tp_size: int = 1) -> None:
        """Per-layer PEFT (A [r, q_size], B [hidden, r]); A is cut to this rank's o_proj input."""
        if len(layers) != len(self._o_projs):
            raise WeightsError(f"LoRA has {len(layers)} layers, model has {len(self._o_projs)}")
        w = self._o_projs[0].weight
        shard = self.nld_config.q_size // tp_size
        self._lora = [(a[:, tp_rank * shard:(tp_rank + 1) * shard].to(w.device, w.dtype).contiguous(),
                       b.to(w.device, w.dtype).contiguous()) for a, b in layers]
        self._lora_scale = float(scale)

    @property
    def has_lora(self) -> bool:
        return self._lora is not None

    def _lora_hook(self, index: int):
        def hook(module, args, output):
            scale = step_lora()                # [T] 0/1 per token of a canvas step, or None
            if scale is None:
                return output
            if self._lora is None:
                raise RuntimeError("a drafting pass asked for the LoRA but none is installed")
            a, b = self._lora[index]
            # o_proj's output is the pre-all-reduce partial sum under TP, so the partial delta
            # of this rank's input shard adds up to the full delta.
            delta = lora_delta(args[0], a, b, self._lora_scale, scale)
            if isinstance(output, tuple):
                return (output[0] + delta,) + tuple(output[1:])
            return output + delta
        return hook

    # ---- weights ---------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        expected = hf_weight_shapes(self.nld_config)
        seen: set[str] = set()

        def renamed():
            for name, tensor in weights:
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if name not in expected:
                    raise WeightsError(f"unexpected tensor {name!r} in the NLD checkpoint")
                # shapes are checked by SGLang's sharded weight loaders: under TP it may pad
                # the config (e.g. intermediate_size) that core's table would be built from
                seen.add(name)
                yield ministral3_name(name), tensor

        result = super().load_weights(renamed())
        missing = sorted(set(expected) - seen)
        if missing:
            raise WeightsError(f"NLD checkpoint lacks tensors {missing[:8]}"
                               f"{' ...' if len(missing) > 8 else ''}")
        return result


EntryClass = [NemotronLabsDiffusionForSGLang]

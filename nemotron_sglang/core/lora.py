"""The drafting LoRA's one rule (``linear_spec_lora``, model_spec §3): a low-rank delta added to
each layer's ``o_proj`` output, on the tokens of the passes that draft with it.

    y = o_proj(x) + gate · scale · (x Aᵀ) Bᵀ        x [..., q_size], A [r, q_size], B [hidden, r]

``gate`` is a 0/1 scale per token (a step's ``StepPlan.lora``: the drafting rows' tokens 1,
every other token 0), so rows that draft and rows that do not share one forward. Core's model,
the SGLang model's ``o_proj`` hook and the tiny fixture's training all add it through
:func:`lora_delta`.
"""

from __future__ import annotations

import torch


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float,
               gate: torch.Tensor | None = None) -> torch.Tensor:
    """``gate · scale · (x Aᵀ) Bᵀ``: x [..., q], A [r, q], B [h, r] -> [..., h]. ``gate``: None
    (every token) or 0/1 over the leading axes of x (e.g. [T] for x [T, q], [1, T] for
    x [N, T, q]), broadcast over the hidden axis."""
    delta = scale * ((x @ a.T) @ b.T)
    if gate is None:
        return delta
    return delta * gate.to(delta.dtype).reshape(*gate.shape, *([1] * (delta.dim() - gate.dim())))

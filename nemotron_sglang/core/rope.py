"""Rotary position embedding of NLD: YaRN inverse frequencies and the llama-4 query scale.

Formulas (model_spec §1.5), for head_dim ``d``, base ``θ``, factor ``s``, original length ``L0``:

    corr(r)   = d · ln(L0 / (2π r)) / (2 ln θ)
    low, high = floor(corr(beta_fast)), ceil(corr(beta_slow)), clamped to [0, d-1]
    ramp_i    = clip((i - low) / (high - low), 0, 1)            i = 0 .. d/2-1
    inv_freq  = θ^(-2i/d) / s · ramp_i + θ^(-2i/d) · (1 - ramp_i)
    attention_factor = m(s, mscale) / m(s, mscale_all_dim),  m(s, x) = 0.1·x·ln(s) + 1

cos and sin are multiplied by ``attention_factor`` (exactly 1.0 for the released checkpoints).
RoPE is NeoX "rotate-half": dim ``i`` pairs with dim ``i + d/2``. Queries only, after RoPE, are
multiplied by ``1 + β · ln(1 + floor(pos / L0))``.
"""

from __future__ import annotations

import math

import torch

from .config import NLDConfig, RopeParameters


def _mscale(scale: float, m: float) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * m * math.log(scale) + 1.0


def yarn_parameters(rp: RopeParameters, head_dim: int) -> tuple[torch.Tensor, float]:
    """Return ``(inv_freq [head_dim/2] float64, attention_factor)``."""
    d = head_dim
    base = rp.rope_theta
    exponents = torch.arange(0, d, 2, dtype=torch.float64) / d
    f_extra = base ** (-exponents)
    if rp.rope_type == "default" or rp.factor == 1.0:
        return f_extra, 1.0
    s, l0 = rp.factor, rp.original_max_position_embeddings

    def corr(r: float) -> float:
        return d * math.log(l0 / (r * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(rp.beta_fast)), 0)
    high = min(math.ceil(corr(rp.beta_slow)), d - 1)
    if high == low:
        high += 0.001
    i = torch.arange(d // 2, dtype=torch.float64)
    ramp = ((i - low) / (high - low)).clamp(0.0, 1.0)
    inv_freq = (f_extra / s) * ramp + f_extra * (1.0 - ramp)
    attention_factor = _mscale(s, rp.mscale) / _mscale(s, rp.mscale_all_dim)
    return inv_freq, attention_factor


def llama4_query_scale(positions: torch.Tensor, rp: RopeParameters) -> torch.Tensor:
    """``1 + β·ln(1 + floor(pos / L0))`` per position; shape of ``positions``, float64."""
    p = positions.to(torch.float64)
    return 1.0 + rp.llama_4_scaling_beta * torch.log1p(
        torch.floor(p / rp.original_max_position_embeddings))


class Rotary:
    """Precomputed YaRN inverse frequencies for one config; applies RoPE + query scaling."""

    def __init__(self, cfg: NLDConfig):
        self.rp = cfg.rope_parameters
        inv_freq, self.attention_factor = yarn_parameters(self.rp, cfg.head_dim)
        self.inv_freq = inv_freq
        self._on: dict[torch.device, torch.Tensor] = {}   # inv_freq per device, copied once

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, head_dim] (angles computed in float64)."""
        dev = positions.device
        if dev not in self._on:        # once per device, never inside a step (or a graph)
            self._on[dev] = self.inv_freq.to(dev)
        ang = positions.to(torch.float64)[:, None] * self._on[dev][None, :]
        ang = torch.cat([ang, ang], dim=-1)
        return ((ang.cos() * self.attention_factor).to(dtype),
                (ang.sin() * self.attention_factor).to(dtype))

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, heads, d] rotated NeoX-style by cos/sin [T, d]."""
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    def apply(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, d], k [T, Hkv, d] -> RoPE'd q (then llama-4 scaled) and RoPE'd k."""
        cos, sin = self.cos_sin(positions, q.dtype)
        q = self.rotate(q, cos, sin)
        k = self.rotate(k, cos, sin)
        q = q * llama4_query_scale(positions, self.rp).to(q.dtype)[:, None, None]
        return q, k

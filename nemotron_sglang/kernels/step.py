"""A step's plan for an attention implementation: ``plan_step`` builds the one-upload
``core.step_plan.StepPlan`` with the kernel's query tiles when the implementation is Triton
(its launch configuration chosen first, from the rows or from the step's bucket), so the plugin,
the benchmarks and the GPU machine (which has no SGLang) plan a step the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.step_plan import Bucket, PlanRow, StepPlan
from ..core.host_pack import HostPack


@dataclass(frozen=True)
class HeadShape:
    """A layer's attention heads on this rank: query heads, K/V heads, head dim."""

    q_heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def plan_step(rows: Sequence[PlanRow], impl: str, device, heads: HeadShape,
              bucket: Bucket | None = None, pack: HostPack | None = None):
    """(plan, launch config or None): ``rows`` planned and copied up once for ``impl``."""
    config = None
    if impl == "triton":
        from .triton_attention import plan_config
        config = plan_config(rows, heads.group, heads.kv_heads, heads.head_dim,
                             torch.device(device), bucket)
    tile = config.block_m // heads.group if config is not None else None
    return StepPlan.build(rows, device, tile_tokens=tile, bucket=bucket, pack=pack), config

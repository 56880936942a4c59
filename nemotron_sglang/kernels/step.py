"""A step's plan for an attention implementation, and that attention over core's paged cache.

``plan_step`` builds the one-upload ``core.step_plan.StepPlan`` with the kernel's query tiles
(its launch configuration chosen first, from the rows or from the step's bucket), so the
plugin, the benchmarks, the graph runner and the GPU machine (which has no SGLang) plan a step
the same way. ``PlanAttention`` is a planned step's attention over core's ``PagedKVCache``
(``core.model.NLDModel.step_hidden``'s ``attend``): the Triton kernel or its PyTorch twin
(``plan_attention``) over the plan's metadata, then the plan's K/V writes — device ops only, so
it runs eagerly and inside a captured graph alike; ``triton_step`` binds it as core's decoder
loop's step attention (``core.step_attention.StepAttention``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.host_pack import HostPack
from ..core.step_attention import store_writes
from ..core.step_plan import Bucket, HeadShape, PlanRow, StepPlan

PLAN_IMPLS = ("triton", "reference")      # reference: kernels.plan_attention's PyTorch twin


def step_config(rows: Sequence[PlanRow], heads: HeadShape, device, bucket: Bucket | None = None):
    """The Triton launch of a step (``triton_attention.plan_config``; host ints only)."""
    from .triton_attention import plan_config
    return plan_config(rows, heads.group, heads.kv_heads, heads.head_dim, torch.device(device),
                       bucket)


def plan_step(rows: Sequence[PlanRow], impl: str, device, heads: HeadShape,
              bucket: Bucket | None = None, pack: HostPack | None = None,
              into: torch.Tensor | None = None, tiled: bool | None = None):
    """(plan, launch config or None): ``rows`` planned and copied up once for ``impl``
    (``tiled``: with the kernel's tiles and launch; by default for ``triton`` only)."""
    config = None
    if impl == "triton" if tiled is None else tiled:
        config = step_config(rows, heads, device, bucket)
    tile = config.block_m // heads.group if config is not None else None
    plan = StepPlan.build(rows, device, tile_tokens=tile, bucket=bucket, pack=pack, into=into)
    return plan, config


class PlanAttention:
    """``attend(q, k, v, layer, scale)`` of a planned step over core's paged cache: q [T, Hq, D],
    k / v [T, Hkv, D] -> [T, Hq, D]; then k, v of the plan's writes stored at ``slots`` [Wp]
    (``plan.write_slots``). ``page_table`` [N, P] on the device: row ``table_row`` lists a
    sequence's pages (``PagedKVCache.page_tables``)."""

    def __init__(self, plan: StepPlan, config, cache, page_table: torch.Tensor,
                 slots: torch.Tensor, impl: str = "triton"):
        from .triton_attention import metadata_from_plan

        if impl not in PLAN_IMPLS:
            raise ValueError(f"unknown planned attention {impl!r}: {' | '.join(PLAN_IMPLS)}")
        self.plan, self.cache, self.slots, self.impl = plan, cache, slots.long(), impl
        self.meta = metadata_from_plan(plan, page_table, cache.page_size, config)

    def __call__(self, q, k, v, layer: int, scale: float) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        if self.impl == "triton":
            from .triton_attention import paged_attention_with_metadata as run
        else:
            from .plan_attention import paged_attention_with_metadata_torch as run
        out = run(q, k, v, kc.to(k.dtype), vc.to(k.dtype), self.meta, scale)
        store_writes(self.plan, kc, vc, self.slots, k, v)
        return out


def triton_step(rows: Sequence[PlanRow], cache, seq_ids: Sequence[int], dest: torch.Tensor,
                heads: HeadShape, pack: HostPack | None = None):
    """Core's decoder loop's step attention (``core.step_attention.StepAttention``) on the
    Triton kernel: ``rows`` planned with the kernel's tiles (one upload, with ``pack``),
    attended over ``cache`` (row i's pages are ``seq_ids[i]``'s), the writes stored at
    ``dest``."""
    plan, config = plan_step(rows, "triton", cache.device, heads, pack=pack)
    table, _ = cache.page_tables(list(seq_ids))
    return plan, PlanAttention(plan, config, cache, table, plan.write_slots(dest))

"""A planned step's reference attention (PyTorch), over any flat K/V store, and core's step
attention over its own paged cache.

A store is one layer's K/V buffers [S, Hkv, D] indexed by slot, plus a token→slot table [N, W]:
row ``table_row`` of it lists the slots of a sequence's positions ``0, 1, …`` (SGLang: its
``req_to_token`` and KV pool; core: ``PagedKVCache.slot_table`` and ``cache.k[layer]``). Row r
of a plan (``core.step_plan.StepPlan``) attends to the first ``prefix_len`` slots of its table
row plus its own new k, v, under its mask (``core.attention``)::

    table row 3:  s7 s2 s9 s4 ...        prefix_len 3: keys = K[s7], K[s2], K[s9] | own k0 k1

:class:`PlanReference` runs the plan's groups (rows of one CAUSAL / BIDIRECTIONAL mask and one
query length: one padded call each) and its quadratic rows one by one; ``rows`` (row by row,
``masked_attention``) is its readable twin. Both the plugin's ``reference`` attention and core's
decoder loop (:func:`reference_step`) use it, so the server and core attend alike.

A step attention (:data:`StepAttention`, core's decoder loop's seam) plans a step's rows and
binds the plan to core's cache: ``(plan, attend)``, where ``attend(q, k, v, layer, scale)``
(q [T, Hq, D], k / v [T, Hkv, D]) attends and then stores the plan's K/V writes. Core's is
:func:`reference_step`; ``nemotron_sglang.kernels.step.triton_step`` is the Triton kernel's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .attention import masked_attention, padded_attention, padded_mask
from .host_pack import HostPack
from .step_plan import HeadShape, PlanRow, StepPlan

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]
# (rows, cache, seq ids (row i's table row is i), destination slots [n], heads, pack: what
# else the step uploads, in the plan's one copy) -> (plan, attend)
StepAttention = Callable[[Sequence[PlanRow], object, Sequence[int], torch.Tensor, HeadShape,
                          HostPack | None], tuple[StepPlan, Attend]]


class PlanReference:
    """The reference attention of ``plan`` over a store located by ``table`` [N, W] (device):
    ``(q, k, v, k_buf, v_buf, scale)`` -> [T(p), Hq, Dv]; the gather plan is built at the first
    call and shared by every layer."""

    def __init__(self, plan: StepPlan, table: torch.Tensor):
        self.plan, self.table = plan, table
        self._groups = None

    def __call__(self, q, k, v, k_buf, v_buf, scale: float) -> torch.Tensor:
        plan = self.plan
        if self._groups is None:
            self._groups = [_group_tensors(plan, g, self.table) for g in plan.groups]
        if len(plan.groups) == 1 and not plan.singles and plan.bucket is None:
            # one group that is the whole pass, in order
            g, (slots, lens, mask) = plan.groups[0], self._groups[0]
            return _attend_group(g, slots, lens, mask, q, k, v, k_buf, v_buf, scale).flatten(0, 1)
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
        for g, (slots, lens, mask) in zip(plan.groups, self._groups):
            tok = plan.order_tokens[g.tokens]
            part = _attend_group(g, slots, lens, mask, q.index_select(0, tok),
                                 k.index_select(0, tok), v.index_select(0, tok), k_buf, v_buf,
                                 scale)
            out.index_copy_(0, tok, part.flatten(0, 1))
        self._fill(out, q, k, v, k_buf, v_buf, scale, plan.singles)
        return out

    def rows(self, q, k, v, k_buf, v_buf, scale: float) -> torch.Tensor:
        """The twin: core's ``masked_attention`` row by row."""
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
        self._fill(out, q, k, v, k_buf, v_buf, scale, range(len(self.plan.rows)))
        return out

    def _fill(self, out, q, k, v, k_buf, v_buf, scale, which) -> None:
        for i in which:
            row, start = self.plan.rows[i], self.plan.q_starts[i]
            end = start + row.q_len
            slots = self.table[row.table_row, :row.prefix_len].long()
            keys = torch.cat([k_buf[slots].to(k.dtype), k[start:end]])
            values = torch.cat([v_buf[slots].to(v.dtype), v[start:end]])
            out[start:end] = masked_attention(q[start:end], keys, values, row.mask,
                                              row.prefix_len, scale)


def _group_tensors(plan: StepPlan, g, table: torch.Tensor):
    """A group's prefix slots [N, W] (slot 0 past a row's own prefix, never attended), its prefix
    lengths [N] and ``padded_mask`` [N, 1, L, W + L]: device ops on the plan's row table and
    ``table``, built once per step."""
    rows = plan.order_rows[g.rows]
    lens = plan.field("prefix_len").index_select(0, rows)
    table_rows = plan.field("table_row").index_select(0, rows)
    slots = table[:, :g.width].index_select(0, table_rows).long()   # only the prefix columns
    slots = slots.masked_fill(torch.arange(g.width, device=slots.device)[None, :] >= lens[:, None],
                              0)
    return slots, lens, padded_mask(lens, g.width, g.mask, g.q_len)


def _attend_group(g, slots, lens, mask, q, k, v, k_buf, v_buf, scale) -> torch.Tensor:
    """One group's padded call: q [N·L, Hq, d], k / v [N·L, Hkv, d] its new tokens'."""
    n, hq, hkv = lens.shape[0], q.shape[1], k.shape[1]
    keys = torch.cat([k_buf[slots].to(k.dtype), k.view(n, g.q_len, hkv, -1)], 1)
    values = torch.cat([v_buf[slots].to(v.dtype), v.view(n, g.q_len, hkv, -1)], 1)
    return padded_attention(q.view(n, g.q_len, hq, -1), keys, values, lens, g.mask, scale,
                            mask=mask)


def store_writes(plan: StepPlan, k_buf, v_buf, slots: torch.Tensor, k, v) -> None:
    """The plan's K/V writes: its writing tokens' k, v [T, Hkv, D] into ``slots`` [Wp] of one
    layer's buffers (device ops)."""
    index = plan.write_token
    k_buf.index_copy_(0, slots, k.index_select(0, index).to(k_buf.dtype))
    v_buf.index_copy_(0, slots, v.index_select(0, index).to(v_buf.dtype))


def reference_step(rows: Sequence[PlanRow], cache, seq_ids: Sequence[int], dest: torch.Tensor,
                   heads: HeadShape, pack: HostPack | None = None) -> tuple[StepPlan, Attend]:
    """Core's step attention: ``rows`` planned (one upload, with what ``pack`` holds),
    attended by :class:`PlanReference` over ``cache`` (a ``PagedKVCache``; row i's table row is
    ``seq_ids[i]``'s), the writes stored at ``dest`` [n] (the slots the cache staged, in write
    order)."""
    plan = StepPlan.build(rows, cache.device, pack=pack)
    table = cache.slot_table(seq_ids, max(r.prefix_len for r in rows))
    attention = PlanReference(plan, table)
    slots = plan.write_slots(dest)

    def attend(q, k, v, layer: int, scale: float) -> torch.Tensor:
        kc, vc = cache.k[layer], cache.v[layer]
        out = attention(q, k, v, kc, vc, scale)
        store_writes(plan, kc, vc, slots, k, v)
        return out

    return plan, attend

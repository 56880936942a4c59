"""Forwards SGLang's attention backends cannot express: every canvas step of NemotronTriMode.

A step carries each row's own pass: a causal AR token, a bidirectional block, a quadratic pass
of R·(B+1) tokens (rows ``[d_i, mask × B]``, model_spec §2.5) — ragged lengths and per-row masks
that no SGLang backend and no B-slot canvas can hold. The step arrives planned
(``core.step_plan.StepPlan``: its rows, tokens, LoRA per token, K/V writes and kernel tiles,
already on the device in one copy). This module runs its forward through the model itself
(SGLang's layers, weights and LoRA branch) on a copy of the canvas ``ForwardBatch`` whose ids
and positions are the plan's, under a per-step attention backend (``StepBackend``, SGLang's own
seam: the forward context's ``attn_backend``, which every ``RadixAttention`` call reaches) that
routes each layer to ``RowAttention``: each row's queries attend to its request's committed KV
in SGLang's paged pool (located on the device through ``req_to_token``, never read back) plus
the pass's own K/V under the row's mask (core's reference attention, or the Triton / FlashInfer
paths of ``nemotron_sglang.kernels`` with the same contract). Only the plan's writes (causal
rows, quadratic row heads) store K/V, into the rows' canvas slots; the round keeps the accepted
ones. ``RowAttention`` is also the attention of the ``nemotron`` backend (``attention_backend.py``)
for every other pass.

Host work per step: the plan (ints) and Python over the layers; no device→host read (the
FlashInfer path excepted: it lists pages on the host, ``_SlotTable``; unrun, no GPU yet).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..core.batch import ForwardBatch
from ..core.logits import PassLogits
from ..core.step_attention import PlanReference
from ..core.step_plan import PlanRow, StepPlan
from ..kernels import ATTENTION_IMPLS
from ..kernels.step import HeadShape, plan_step


class _SlotTable:
    """SGLang's token→slot table seen as core's paged cache with page size 1, for the FlashInfer
    path only: the rows' prefixes read back in one device→host copy."""

    page_size = 1

    def __init__(self, table: torch.Tensor, num_kv_heads: int, plan: StepPlan):
        self.num_kv_heads = num_kv_heads
        longest: dict[int, int] = {}
        for r in plan.rows:
            longest[r.table_row] = max(longest.get(r.table_row, 0), r.prefix_len)
        index = list(longest)
        width = max(longest.values(), default=0)
        host = table[torch.tensor(index, dtype=torch.long, device=table.device), :width].cpu()
        self._slots = {i: host[n, :longest[i]].tolist() for n, i in enumerate(index)}

    def page_table(self, table_row: int) -> list[int]:
        return self._slots[table_row]


class _PoolView:
    """One layer of SGLang's pool as the paged cache ``paged_attention_flashinfer`` reads: pages
    of one token (``k[0]`` = the layer's ``[slots, Hkv, D]`` buffer) and the rows' slot lists."""

    page_size = 1

    def __init__(self, slots: _SlotTable, k_buf: torch.Tensor, v_buf: torch.Tensor):
        self._slots = slots
        self.k, self.v = k_buf.unsqueeze(0), v_buf.unsqueeze(0)
        self.num_pages, self.num_kv_heads = k_buf.shape[0], k_buf.shape[1]

    def page_table(self, table_row: int) -> list[int]:
        return self._slots.page_table(table_row)


class RowAttention:
    """Attention for one planned pass; called by the per-step backend (``StepBackend``) and by
    the ``nemotron`` backend.

    ``impl``: ``"reference"`` (core's PyTorch attention: the plan's groups of one mask and query
    length in one padded call each, quadratic rows one by one; ``_reference_rows``, row by row,
    is its twin), ``"triton"`` (the plugin's kernel, one launch per layer, reading the plan's
    row table and tiles and SGLang's ``req_to_token`` as they are on the device) or
    ``"flashinfer"`` (``kernels.flashinfer_attention`` over the pool viewed as pages of one token;
    CUDA only, not yet run on a GPU). ``kv_slots`` [Wp]: the pool slots of the plan's K/V writes.
    ``graph_safe`` (a captured step, ``step_graphs.py``): whatever ``impl``, only the plan's device
    views are read — the Triton kernel on CUDA, its PyTorch twin (``kernels.plan_attention``)
    elsewhere.
    """

    IMPLS = tuple(ATTENTION_IMPLS)

    def __init__(self, plan: StepPlan, impl: str = "reference", config=None,
                 kv_slots: torch.Tensor | None = None, graph_safe: bool = False):
        if impl not in self.IMPLS:
            raise ValueError(f"unknown row attention {impl!r}: {' | '.join(self.IMPLS)}")
        if (impl == "triton" or graph_safe) and (config is None or plan.tiles is None):
            raise ValueError("triton row attention needs the launch config its plan was tiled for "
                             "(RowAttention.planned)")
        self.plan, self.impl, self.config, self.kv_slots = plan, impl, config, kv_slots
        # graph_safe: only the plan's device views (a captured step): the Triton kernel on CUDA,
        # its PyTorch twin elsewhere (kernels.plan_attention), never the host-planned groups
        self.graph_safe = graph_safe
        self._meta = None
        self._slots = None
        self._reference_plan = None

    @classmethod
    def planned(cls, rows: Sequence[PlanRow], impl: str, device, heads: HeadShape,
                bucket=None, pack=None) -> "RowAttention":
        """Plan ``rows`` for ``impl`` (``kernels.step.plan_step``: the Triton kernel's tiles
        included) in one upload, with what ``pack`` holds beside it."""
        plan, config = plan_step(rows, impl, device, heads, bucket, pack)
        return cls(plan, impl, config)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer) -> torch.Tensor:
        from sglang.srt.model_executor.forward_context import (get_req_to_token_pool,
                                                               get_token_to_kv_pool)

        return self.attend(q, k, v, layer, get_token_to_kv_pool(),
                           get_req_to_token_pool().req_to_token)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer, pool,
               table: torch.Tensor) -> torch.Tensor:
        """Attention of the pass's q [T, Hq·D] over ``pool`` (SGLang's KV pool, the rows'
        committed prefixes located by ``table`` = req_to_token) plus its own k, v [T, Hkv·D];
        returns [T, Hq·Dv]. The pass's own K/V are taken from ``k, v``, never from the pool."""
        hq, hkv = layer.tp_q_head_num, layer.tp_k_head_num
        d, dv = layer.qk_head_dim, layer.v_head_dim
        q = q.reshape(-1, hq, d)
        k = k.reshape(-1, hkv, d)
        v = v.reshape(-1, hkv, dv)
        k_buf, v_buf = pool.get_key_buffer(layer.layer_id), pool.get_value_buffer(layer.layer_id)
        if self.graph_safe:
            out = self._planned(q, k, v, k_buf, v_buf, table, layer)
        elif self.impl == "triton":
            out = self._triton(q, k, v, k_buf, v_buf, table, layer)
        elif self.impl == "flashinfer":
            out = self._flashinfer(q, k, v, k_buf, v_buf, table, layer)
        else:
            out = self._reference(q, k, v, k_buf, v_buf, table, layer)
        if self.kv_slots is not None:    # after attention: the pass reads its own K/V from k, v
            index = self.plan.write_token
            pool.set_kv_buffer(layer, self.kv_slots, k.index_select(0, index),
                               v.index_select(0, index))
        return out.reshape(q.shape[0], hq * dv)

    def _reference(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        if self._reference_plan is None:      # one gather plan per pass, shared by every layer
            self._reference_plan = PlanReference(self.plan, table)
        return self._reference_plan(q, k, v, k_buf, v_buf, layer.scaling)

    def _reference_rows(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        """The twin of ``_reference``: core's attention row by row."""
        return PlanReference(self.plan, table).rows(q, k, v, k_buf, v_buf, layer.scaling)

    def _slot_table(self, table: torch.Tensor, num_kv_heads: int) -> _SlotTable:
        if self._slots is None:      # one slot read per pass, shared by every layer
            self._slots = _SlotTable(table, num_kv_heads, self.plan)
        return self._slots

    def _flashinfer(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        from ..kernels import flashinfer_attention

        rows = self.plan.rows
        batch = ForwardBatch(self.plan.ids[:self.plan.num_tokens],
                             self.plan.positions[:self.plan.num_tokens],
                             tuple(r.table_row for r in rows), tuple(r.q_len for r in rows),
                             tuple(r.prefix_len for r in rows), tuple(r.mask for r in rows))
        view = _PoolView(self._slot_table(table, k.shape[1]), k_buf.to(k.dtype), v_buf.to(k.dtype))
        return flashinfer_attention.paged_attention_flashinfer(
            q[:self.plan.num_tokens], k[:self.plan.num_tokens],
            v[:self.plan.num_tokens].to(k.dtype), view, 0, batch, layer.scaling)

    def _planned(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        from ..kernels.triton_attention import metadata_from_plan

        if q.device.type == "cuda":
            from ..kernels.triton_attention import paged_attention_with_metadata as run
        else:
            from ..kernels.plan_attention import paged_attention_with_metadata_torch as run
        if self._meta is None:
            self._meta = metadata_from_plan(self.plan, table, 1, self.config)
        return run(q, k, v.to(k.dtype), k_buf.to(k.dtype), v_buf.to(k.dtype), self._meta,
                   layer.scaling)

    def _triton(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        from ..kernels.triton_attention import metadata_from_plan, paged_attention_with_metadata

        if self._meta is None:       # one metadata per pass, shared by every layer
            self._meta = metadata_from_plan(self.plan, table, 1, self.config)
        return paged_attention_with_metadata(q, k, v.to(k.dtype), k_buf.to(k.dtype),
                                             v_buf.to(k.dtype), self._meta, layer.scaling)


class StepBackend:
    """The attention backend of one canvas step: SGLang's forward context holds it while the
    step's forward runs, so every ``RadixAttention`` reaches ``forward`` (SGLang's seam; no
    model method is overridden) and attends under the step's plan. It also carries the step's
    LoRA scale per token (``lora``: [T] in the model's dtype, None when no row drafts), which
    the model's LoRA branch reads from it. The pools are the server backend's."""

    def __init__(self, base, attention: RowAttention, lora: torch.Tensor | None):
        self.token_to_kv_pool = base.token_to_kv_pool
        self.req_to_token_pool = base.req_to_token_pool
        self.attention, self.lora = attention, lora

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        return self.attention.attend(q, k, v, layer, self.token_to_kv_pool,
                                     self.req_to_token_pool.req_to_token)


def step_lora() -> torch.Tensor | None:
    """The LoRA scale per token [T] of the canvas step whose forward is running, else None
    (SGLang's own passes never draft)."""
    from sglang.srt.model_executor.forward_context import get_attn_backend, has_forward_context

    if not has_forward_context():
        return None
    backend = get_attn_backend()
    return backend.lora if isinstance(backend, StepBackend) else None


def head_shape(model_runner) -> HeadShape:
    """The model's attention heads on this TP rank."""
    c = model_runner.model.nld_config
    tp = getattr(model_runner, "tp_size", 1) or 1
    return HeadShape(max(1, c.num_attention_heads // tp), max(1, c.num_key_value_heads // tp),
                     c.head_dim)


def step_view(forward_batch, plan: StepPlan):
    """A shallow copy of the canvas ``ForwardBatch`` whose ids and positions are the plan's
    (``dataclasses.replace`` would rerun the ~100-field ``__init__`` every step and drop the
    attributes SGLang set on the batch after it)."""
    view = copy.copy(forward_batch)
    view.input_ids = plan.ids.to(forward_batch.input_ids.dtype)
    view.positions = plan.positions.to(forward_batch.positions.dtype)
    view.global_num_token_non_padded_cpu = None     # no MLP-sync padding: every row is real
    return view


def run_custom_pass(model_runner, forward_batch, rows: Sequence[PlanRow], impl: str = "reference",
                    bucket=None, pack=None) -> PassLogits:
    """One forward of a step's ``rows`` (``core.step_plan``: tokens, positions, masks, LoRA per
    row, K/V writes into ``forward_batch.out_cache_loc``), planned and copied up once together
    with what ``pack`` (``core.host_pack.HostPack``) holds; its logits [T, V] as a
    :class:`~nemotron_sglang.core.logits.PassLogits` (the head runs only for the rows read)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    model = model_runner.model
    dev = forward_batch.input_ids.device
    attention = RowAttention.planned(rows, impl, dev, head_shape(model_runner), bucket, pack)
    plan = attention.plan
    if plan.num_writes or plan.bucket is not None:
        attention.kv_slots = plan.write_slots(forward_batch.out_cache_loc).to(
            forward_batch.out_cache_loc.dtype)
    lora = plan.lora if plan.uses_lora else None
    view = step_view(forward_batch, plan)
    backend = StepBackend(model_runner.attn_backend, attention, lora)

    def context():
        return forward_context(ForwardContext(attn_backend=backend), forward_batch=view)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        with context():
            return model.pass_logits(hidden, view)

    with context():
        hidden = model.pass_hidden(view)
    return PassLogits(hidden, head)

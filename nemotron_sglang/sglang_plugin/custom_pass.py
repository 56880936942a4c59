"""Forwards SGLang's attention backends cannot express: every canvas step of NemotronTriMode.

A step carries each row's own pass: a causal AR token, a bidirectional block, a quadratic pass
of R·(B+1) tokens (rows ``[d_i, mask × B]``, model_spec §2.5) — ragged lengths and per-row masks
that no SGLang backend and no B-slot canvas can hold. This module runs such a forward through
the model itself (SGLang's layers, weights and LoRA branch) on a copy of the canvas
``ForwardBatch`` with the step's tokens and positions, and routes every attention call to
``RowAttention``: each row's queries attend to that request's committed KV in SGLang's paged
pool plus the pass's own K/V under the row's core ``MaskSpec`` (core's reference attention, or
the Triton / FlashInfer paths of ``nemotron_sglang.kernels`` with the same contract). Only the
tokens named in ``kv_writes`` (causal rows, quadratic row heads) write their K/V to the pool,
into the request's canvas slots; the round keeps the accepted ones. ``RowAttention`` is also the
attention of the ``nemotron`` backend (``attention_backend.py``) for every other pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..core.attention import (MaskKind, MaskSpec, masked_attention, padded_attention,
                              padded_mask)
from ..core.logits import PassLogits
from ..kernels import ATTENTION_IMPLS


@dataclass(frozen=True)
class RowSpec:
    req_pool_index: int             # the request's row in SGLang's req_to_token table
    prefix_len: int                 # committed tokens it attends to
    q_len: int
    mask: MaskSpec


class _SlotTable:
    """SGLang's token→slot table seen as core's paged cache with page size 1 (kernel metadata).

    Only the rows' prefixes are read, in one device→host copy of ``table[rows, :max_prefix]``
    (a row of ``req_to_token`` spans the whole context length)."""

    page_size = 1

    def __init__(self, table: torch.Tensor, num_kv_heads: int, rows: list[RowSpec]):
        self.num_kv_heads = num_kv_heads
        longest: dict[int, int] = {}
        for r in rows:
            longest[r.req_pool_index] = max(longest.get(r.req_pool_index, 0), r.prefix_len)
        index = list(longest)
        width = max(longest.values(), default=0)
        host = table[torch.tensor(index, dtype=torch.long, device=table.device), :width].cpu()
        self._slots = {i: host[n, :longest[i]].tolist() for n, i in enumerate(index)}

    def page_table(self, req_pool_index: int) -> list[int]:
        return self._slots[req_pool_index]


class _PoolView:
    """One layer of SGLang's pool as the paged cache ``paged_attention_flashinfer`` reads: pages
    of one token (``k[0]`` = the layer's ``[slots, Hkv, D]`` buffer) and the rows' slot lists."""

    page_size = 1

    def __init__(self, slots: _SlotTable, k_buf: torch.Tensor, v_buf: torch.Tensor):
        self._slots = slots
        self.k, self.v = k_buf.unsqueeze(0), v_buf.unsqueeze(0)
        self.num_pages, self.num_kv_heads = k_buf.shape[0], k_buf.shape[1]

    def page_table(self, req_pool_index: int) -> list[int]:
        return self._slots.page_table(req_pool_index)


@dataclass(frozen=True)
class _RowGroup:
    """Rows of one pass that share a (CAUSAL | BIDIRECTIONAL) mask and a query length L: their
    queries' indices in the pass [N·L] (None: the whole pass, in order), their prefixes' pool
    slots [N, W] (W = the longest prefix; 0, SGLang's padding slot, past a row's own), prefix
    lengths [N] and ``core.attention.padded_mask`` [N, 1, L, W + L], built once per pass."""

    spec: MaskSpec
    q_len: int
    tokens: torch.Tensor | None
    slots: torch.Tensor
    prefix_lens: torch.Tensor
    mask: torch.Tensor


def _row_groups(rows: list[RowSpec], table: torch.Tensor) -> tuple[list[_RowGroup], list[int]]:
    """The groups of ``rows`` that one padded call can take, and the indices of the rest
    (QUADRATIC rows, attended one by one)."""
    starts, start = [], 0
    for r in rows:
        starts.append(start)
        start += r.q_len
    members: dict[tuple[MaskSpec, int], list[int]] = {}
    single = []
    for i, r in enumerate(rows):
        if r.mask.kind == MaskKind.QUADRATIC:
            single.append(i)
        else:
            members.setdefault((r.mask, r.q_len), []).append(i)
    dev = table.device
    groups = []
    for (spec, q_len), idx in members.items():
        lens = torch.tensor([rows[i].prefix_len for i in idx], dtype=torch.long, device=dev)
        width = max(rows[i].prefix_len for i in idx)
        pool_rows = torch.tensor([rows[i].req_pool_index for i in idx], dtype=torch.long,
                                 device=dev)
        slots = table[pool_rows, :width].long()
        slots = slots.masked_fill(torch.arange(width, device=dev)[None, :] >= lens[:, None], 0)
        tokens = None
        if len(idx) < len(rows):         # a group that is not the whole pass gathers its queries
            tokens = torch.tensor([starts[i] + j for i in idx for j in range(q_len)],
                                  dtype=torch.long, device=dev)
        groups.append(_RowGroup(spec, q_len, tokens, slots, lens,
                                padded_mask(lens, width, spec, q_len)))
    return groups, single


@dataclass(frozen=True)
class _KernelBatch:
    seq_ids: tuple[int, ...]
    q_lens: tuple[int, ...]
    prefix_lens: tuple[int, ...]
    masks: tuple[MaskSpec, ...]


class RowAttention:
    """Attention for one custom pass; called by the model's RadixAttention wrappers.

    ``impl``: ``"reference"`` (core's PyTorch attention: the rows of one mask and query length
    in one padded call, quadratic rows one by one; ``_reference_rows``, row by row, is its
    twin), ``"triton"`` (the plugin's kernel,
    one launch per layer over SGLang's pool viewed as pages of one token) or ``"flashinfer"``
    (``kernels.flashinfer_attention`` over the same view; CUDA only, not yet run on a GPU).
    """

    IMPLS = tuple(ATTENTION_IMPLS)

    def __init__(self, rows: list[RowSpec], impl: str = "reference",
                 kv_writes: tuple[torch.Tensor, torch.Tensor] | None = None):
        if impl not in self.IMPLS:
            raise ValueError(f"unknown row attention {impl!r}: {' | '.join(self.IMPLS)}")
        self.rows, self.impl, self.kv_writes = rows, impl, kv_writes
        self._meta = None
        self._slots = None
        self._groups = None

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
        q = q.view(-1, hq, d)
        k = k.view(-1, hkv, d)
        v = v.view(-1, hkv, dv)
        k_buf, v_buf = pool.get_key_buffer(layer.layer_id), pool.get_value_buffer(layer.layer_id)
        if self.impl == "triton":
            out = self._triton(q, k, v, k_buf, v_buf, table, layer).view(q.shape[0], hq * dv)
        elif self.impl == "flashinfer":
            out = self._flashinfer(q, k, v, k_buf, v_buf, table, layer).view(q.shape[0], hq * dv)
        else:
            out = self._reference(q, k, v, k_buf, v_buf, table, layer).view(q.shape[0], hq * dv)
        if self.kv_writes is not None:   # after attention: the pass reads its own K/V from k, v
            index, slots = self.kv_writes
            pool.set_kv_buffer(layer, slots, k[index], v[index])
        return out

    def _reference(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        if self._groups is None:     # one gather plan per pass, shared by every layer
            self._groups = _row_groups(self.rows, table)
        groups, single = self._groups
        if len(groups) == 1 and groups[0].tokens is None:      # one group: the whole pass
            g = groups[0]
            return self._attend_group(g, q, k, v, k_buf, v_buf, layer).flatten(0, 1)
        out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
        for g in groups:
            out[g.tokens] = self._attend_group(g, q[g.tokens], k[g.tokens], v[g.tokens], k_buf,
                                               v_buf, layer).flatten(0, 1)
        self._fill_rows(out, q, k, v, k_buf, v_buf, table, layer, single)
        return out

    @staticmethod
    def _attend_group(g: _RowGroup, q, k, v, k_buf, v_buf, layer) -> torch.Tensor:
        """One group's padded call: q [N·L, Hq, d], k / v [N·L, Hkv, d] its new tokens'."""
        n, hq, hkv = g.prefix_lens.shape[0], q.shape[1], k.shape[1]
        keys = torch.cat([k_buf[g.slots].to(k.dtype), k.view(n, g.q_len, hkv, -1)], 1)
        values = torch.cat([v_buf[g.slots].to(v.dtype), v.view(n, g.q_len, hkv, -1)], 1)
        return padded_attention(q.view(n, g.q_len, hq, -1), keys, values, g.prefix_lens,
                                g.spec, layer.scaling, mask=g.mask)

    def _reference_rows(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        """The twin of ``_reference``: core's attention row by row."""
        out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
        self._fill_rows(out, q, k, v, k_buf, v_buf, table, layer, range(len(self.rows)))
        return out

    def _fill_rows(self, out, q, k, v, k_buf, v_buf, table, layer, which) -> None:
        starts = [0]
        for row in self.rows:
            starts.append(starts[-1] + row.q_len)
        for i in which:
            row, start, end = self.rows[i], starts[i], starts[i + 1]
            slots = table[row.req_pool_index, :row.prefix_len].long()
            keys = torch.cat([k_buf[slots].to(k.dtype), k[start:end]])
            values = torch.cat([v_buf[slots].to(v.dtype), v[start:end]])
            out[start:end] = masked_attention(q[start:end], keys, values, row.mask,
                                              row.prefix_len, layer.scaling)

    def _kernel_batch(self) -> _KernelBatch:
        return _KernelBatch(tuple(r.req_pool_index for r in self.rows),
                            tuple(r.q_len for r in self.rows),
                            tuple(r.prefix_len for r in self.rows),
                            tuple(r.mask for r in self.rows))

    def _slot_table(self, table: torch.Tensor, num_kv_heads: int) -> _SlotTable:
        if self._slots is None:      # one slot read per pass, shared by every layer
            self._slots = _SlotTable(table, num_kv_heads, self.rows)
        return self._slots

    def _flashinfer(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        from ..kernels import flashinfer_attention

        view = _PoolView(self._slot_table(table, k.shape[1]), k_buf.to(k.dtype), v_buf.to(k.dtype))
        return flashinfer_attention.paged_attention_flashinfer(
            q, k, v.to(k.dtype), view, 0, self._kernel_batch(), layer.scaling)

    def _triton(self, q, k, v, k_buf, v_buf, table, layer) -> torch.Tensor:
        from ..kernels.triton_attention import build_metadata, paged_attention_with_metadata

        if self._meta is None:       # one metadata build per pass, shared by every layer
            slots = self._slot_table(table, k.shape[1])
            self._meta = build_metadata(self._kernel_batch(), slots,
                                        q.shape[1] // k.shape[1], q.shape[2], q.device)
        return paged_attention_with_metadata(q, k, v.to(k.dtype), k_buf.to(k.dtype),
                                             v_buf.to(k.dtype), self._meta, layer.scaling)


def run_custom_pass(model_runner, forward_batch, token_ids: list[int], positions: list[int],
                    rows: list[RowSpec], impl: str = "reference",
                    kv_writes: tuple[list[int], torch.Tensor] | None = None) -> PassLogits:
    """One forward of ``token_ids`` at ``positions`` with per-row masks; its logits [T, V] as a
    :class:`~nemotron_sglang.core.logits.PassLogits` (the head runs only for the rows read).

    ``kv_writes`` = (token indices of the pass, pool slots [W]): those tokens' K/V are written to
    SGLang's pool in every layer (causal rows, quadratic row heads)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    dev = forward_batch.input_ids.device
    # a shallow copy with the step's tokens (dataclasses.replace would rerun the ~100-field
    # __init__ every step and drop the attributes SGLang set on the batch after it)
    view = copy.copy(forward_batch)
    view.input_ids = torch.tensor(token_ids, dtype=forward_batch.input_ids.dtype, device=dev)
    view.positions = torch.tensor(positions, dtype=forward_batch.positions.dtype, device=dev)
    writes = None
    if kv_writes is not None and kv_writes[0]:
        writes = (torch.tensor(kv_writes[0], dtype=torch.long, device=dev),
                  torch.as_tensor(kv_writes[1]).to(device=dev,
                                                   dtype=forward_batch.out_cache_loc.dtype))
    view.nld_attention = RowAttention(rows, impl, writes)
    model = model_runner.model

    def context():
        # the context SGLang's ModelRunner.forward would open; RowAttention reads its pools
        return forward_context(ForwardContext(attn_backend=model_runner.attn_backend),
                               forward_batch=view)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        with context():
            return model.pass_logits(hidden, view)

    with context():
        hidden = model.pass_hidden(view)
    return PassLogits(hidden, head)

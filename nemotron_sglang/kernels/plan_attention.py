"""The readable PyTorch twin of the Triton launch over prepared metadata
(``triton_attention.paged_attention_with_metadata``): same signature, same semantics, device
ops only (no host read, shapes fixed by the metadata), so it also runs inside a captured graph
and stands in for the kernel where Triton cannot run.

Every query token t finds its row r (``q_start[r] <= t < q_start[r] + q_len[r]``; a token of no
row, padding, gets zeros) and attends to P = ``chunk × splits`` prefix keys (the first
``prefix_len[r]`` of them visible, located through row ``table_row[r]`` of the page table) and to
the pass's own keys under its row's mask, drawn for a quadratic row of width W = B + 1
(``slot`` = position in its sub-row, ``sub`` = which sub-row; ``d`` = row heads)::

    new keys visible to query i (same row r only):
      causal          j <= i
      bidirectional   all of the row
      quadratic       (sub_j == sub_i and slot_i > 0 and slot_j > 0) or (slot_j == 0 and sub_j <= sub_i)

Scores in float32 (float64 for float64 input), softmax over the visible keys.
"""

from __future__ import annotations

import torch

from ..core.attention import MaskKind


def paged_attention_with_metadata_torch(q: torch.Tensor, k_new: torch.Tensor,
                                        v_new: torch.Tensor, k_cache: torch.Tensor,
                                        v_cache: torch.Tensor, meta, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k_new / v_new [T, Hkv, D], one layer's cache [S, Hkv, D] -> [T, Hq, D]."""
    t, hq, d = q.shape
    hkv = k_new.shape[1]
    dev = q.device
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_start, q_len, prefix, code, width, table_row = meta.rows.long()
    tok = torch.arange(t, device=dev)
    member = (tok[:, None] >= q_start[None]) & (tok[:, None] < (q_start + q_len)[None])  # [T, R]
    valid = member.any(1)
    row = member.to(torch.int8).argmax(1)                                                 # [T]
    local = tok - q_start[row]
    # prefix keys: P positions through the row's page table
    p = meta.chunk * meta.config.num_splits
    pos = torch.arange(p, device=dev)
    pages = meta.page_table.long()[table_row[row]]                                       # [T, pages]
    page_idx = (pos // meta.page_size).clamp(max=pages.shape[1] - 1)
    slots = pages.gather(1, page_idx[None].expand(t, p)) * meta.page_size + pos % meta.page_size
    see_prefix = pos[None] < prefix[row][:, None]                                         # [T, P]
    slots = torch.where(see_prefix, slots, torch.zeros_like(slots))
    # new keys: the same row, under its mask
    w = width[row]
    sub, slot = local // w, local % w
    same = (row[:, None] == row[None]) & valid[:, None] & valid[None]
    kind = code[row][:, None]
    causal = local[None] <= local[:, None]
    quad = (((sub[:, None] == sub[None]) & (slot[:, None] > 0) & (slot[None] > 0))
            | ((slot[None] == 0) & (sub[None] <= sub[:, None])))
    see_new = same & (((kind == MaskKind.CAUSAL.code) & causal)
                      | (kind == MaskKind.BIDIRECTIONAL.code)
                      | ((kind == MaskKind.QUADRATIC.code) & quad))                       # [T, T]
    keys = torch.cat([k_cache[slots].to(acc), k_new[None].expand(t, t, hkv, d).to(acc)], 1)
    vals = torch.cat([v_cache[slots].to(acc), v_new[None].expand(t, t, hkv, d).to(acc)], 1)
    mask = torch.cat([see_prefix, see_new], 1)                                            # [T, P+T]
    g = hq // hkv
    keys = keys.repeat_interleave(g, dim=2, output_size=hq)                               # [T, K, Hq, D]
    vals = vals.repeat_interleave(g, dim=2, output_size=hq)
    s = torch.einsum("thd,tkhd->thk", q.to(acc), keys) * scale
    s = s.masked_fill(~mask[:, None, :], float("-inf"))
    prob = torch.softmax(s, dim=-1).nan_to_num(0.0)                # a padding token sees nothing
    out = torch.einsum("thk,tkhd->thd", prob, vals)
    return torch.where(valid[:, None, None], out, torch.zeros_like(out)).to(q.dtype)

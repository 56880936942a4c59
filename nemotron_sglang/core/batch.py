"""The input of one model forward: a packed (ragged) batch of new tokens over the paged cache.

Rows are requests. Row ``r`` contributes ``q_lens[r]`` new tokens at absolute ``positions``
and attends to the first ``prefix_lens[r]`` cached tokens of sequence ``seq_ids[r]`` plus its
own new tokens under ``masks[r]``. Tensors are packed along one token axis of length
``T = sum(q_lens)``. ``write_kv`` says whether the pass stages K/V into the cache (causal and
quadratic rows only); ``lora`` switches the drafting adapter on for this pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .attention import MaskKind, MaskSpec


@dataclass(frozen=True)
class PassRow:
    """One request's part of a pass: new tokens [L], their positions [L], prefix length, mask."""

    seq_id: int
    token_ids: Sequence[int]
    positions: Sequence[int]
    prefix_len: int
    mask: MaskSpec


@dataclass(frozen=True)
class ForwardBatch:
    input_ids: torch.Tensor        # [T] int64
    positions: torch.Tensor        # [T] int64
    seq_ids: tuple[int, ...]       # [R]
    q_lens: tuple[int, ...]        # [R]
    prefix_lens: tuple[int, ...]   # [R]
    masks: tuple[MaskSpec, ...]    # [R]
    write_kv: bool = False
    lora: bool = False

    def __post_init__(self) -> None:
        r = len(self.seq_ids)
        if not (len(self.q_lens) == len(self.prefix_lens) == len(self.masks) == r):
            raise ValueError("ForwardBatch: per-row fields must have one entry per row")
        t = sum(self.q_lens)
        if self.input_ids.shape != (t,) or self.positions.shape != (t,):
            raise ValueError(f"ForwardBatch: input_ids/positions must be [{t}]")
        if any(n <= 0 for n in self.q_lens):
            raise ValueError("ForwardBatch: every row needs at least one new token")
        if self.write_kv and any(m.kind == MaskKind.BIDIRECTIONAL for m in self.masks):
            raise ValueError("ForwardBatch: a bidirectional pass cannot write KV")

    @classmethod
    def from_rows(cls, rows: Sequence[PassRow], *, write_kv: bool = False, lora: bool = False,
                  device=None) -> "ForwardBatch":
        ids = [t for row in rows for t in row.token_ids]
        pos = [p for row in rows for p in row.positions]
        for row in rows:
            if len(row.token_ids) != len(row.positions):
                raise ValueError(f"row {row.seq_id}: token_ids and positions differ in length")
        return cls(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            positions=torch.tensor(pos, dtype=torch.long, device=device),
            seq_ids=tuple(r.seq_id for r in rows),
            q_lens=tuple(len(r.token_ids) for r in rows),
            prefix_lens=tuple(r.prefix_len for r in rows),
            masks=tuple(r.mask for r in rows),
            write_kv=write_kv, lora=lora)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def spans(self) -> list[tuple[int, int]]:
        """[start, end) of each row in the packed token axis."""
        out, s = [], 0
        for n in self.q_lens:
            out.append((s, s + n))
            s += n
        return out

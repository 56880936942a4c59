"""One step planned once: every row's pass in one frozen description, packed on the host into ONE
buffer, copied to the device in ONE copy; what the attention, the K/V writes and the LoRA read
are views of that copy, so nothing inside the step goes back to the host.

A step carries R rows (each a request's pass) and T tokens. Row r's ``q_len`` new tokens start
at ``q_start`` in the packed token axis and attend to the first ``prefix_len`` entries of row
``table_row`` of a page table (SGLang: the request's row of ``req_to_token``, read on the
device; core: the sequence's row of the cache's table) plus the row's own new tokens, under its
mask (``attention.MaskKind``, sent as its kernel code)::

    rows [6, R]:  q_start | q_len | prefix_len | mask code | width | table_row
                  (width = B + 1 for a quadratic row, else 1)

    a step of three rows, B = 2 (``M`` = mask token), tiles of 2 tokens:
      ids      t | x M M | d0 M M d1 M M           T = 10
      lora     0 | 1 1 1 | 0  0 0 0  0 0           the draft row drafts with the LoRA
      rows     ar causal, linear draft bidirectional, quadratic (width 3)
      writes   token 0 -> dest 0; tokens 4, 7 -> dests 4, 5     (dest = canvas row · B + i)
      tiles    (0,0) (1,0) (1,2) (2,0) (2,2) (2,4)  (row, first token) of each query tile

Sections (``host_pack``, named ``plan.*``), all int64: ids [T], positions [T], lora [T], rows [6, R],
write_token [W], write_dest [W] (an index into the caller's destination slots: SGLang's
``out_cache_loc``; -1 = the padding entry the caller puts first, SGLang's slot 0), tiles [2, G]
(only when a kernel's ``tile_tokens`` is given), order_rows [R] and order_tokens [T] (the rows
regrouped by (mask, q_len) for the reference attention's padded calls, and their tokens).

Static shapes (``Bucket``): a step padded to (tokens, rows, writes, tiles) runs the same kernels
on the same shapes whatever its mix of modes. Padding rows have ``q_len`` 0 (a kernel stores
nothing for them), padding tokens belong to no row (id 0, position 0, LoRA off, never attended
by a real row), padding writes go to the padding entry, padding tiles to the last row with a
first token past any row. No real row's logits or K/V change (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .attention import MaskKind, MaskSpec
from .host_pack import DevicePack, HostPack

ROW_FIELDS = ("q_start", "q_len", "prefix_len", "code", "width", "table_row")
NOWHERE = -1                     # write_dest of a padding write: the caller's padding entry
PAD_TILE_TOKEN = 1 << 30         # a padding tile's first token: past every row's tokens


@dataclass(frozen=True)
class HeadShape:
    """A layer's attention heads on this rank: query heads, K/V heads, head dim."""

    q_heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


@dataclass(frozen=True)
class PlanRow:
    """One row of a step (host values): its page-table row and prefix, ``q_len`` new tokens
    (their ids and positions, or none for an attention-only plan), mask, whether it drafts with
    the LoRA, and how many of its tokens write K/V (the first ``writes`` of
    ``mask.kv_write_offsets``) to destinations ``write_base + i``."""

    table_row: int
    prefix_len: int
    q_len: int
    mask: MaskSpec
    token_ids: Sequence[int] = ()
    positions: Sequence[int] = ()
    lora: bool = False
    writes: int = 0
    write_base: int = 0

    def __post_init__(self) -> None:
        if self.q_len < 1:
            raise ValueError(f"row {self.table_row}: a row needs at least one new token")
        if self.token_ids and not len(self.token_ids) == len(self.positions) == self.q_len:
            raise ValueError(f"row {self.table_row}: {len(self.token_ids)} tokens, "
                             f"{len(self.positions)} positions, q_len {self.q_len}")
        if self.writes and len(self.mask.kv_write_offsets(self.q_len)) < self.writes:
            raise ValueError(f"row {self.table_row}: {self.writes} writes, its mask allows "
                             f"{len(self.mask.kv_write_offsets(self.q_len))}")


@dataclass(frozen=True)
class Bucket:
    """A static step shape: tokens, rows, K/V writes and kernel tiles it is padded to, and what
    a kernel launch must not take from the rows (so that any row mix replays one capture): the
    query tile (``tile_tokens``), the prefix split count (``splits``) and the longest prefix
    it serves (``max_prefix``, which sets each split's share)."""

    tokens: int
    rows: int
    writes: int
    tiles: int = 0
    tile_tokens: int = 0
    splits: int = 1
    max_prefix: int = 0


@dataclass(frozen=True)
class Group:
    """Rows sharing a CAUSAL or BIDIRECTIONAL mask and a query length: positions ``rows`` of
    ``order_rows`` and ``tokens`` of ``order_tokens``; ``width`` = their longest prefix."""

    mask: MaskSpec
    q_len: int
    rows: slice
    tokens: slice
    width: int


@dataclass(frozen=True)
class StepPlan:
    rows: tuple[PlanRow, ...]          # the real rows (host)
    q_starts: tuple[int, ...]
    num_tokens: int                    # T of the real rows
    groups: tuple[Group, ...]          # reference attention: rows by (mask, q_len)
    singles: tuple[int, ...]           # quadratic rows (attended one by one by the reference)
    uses_lora: bool
    bucket: Bucket | None
    tile_tokens: int | None
    # device views of the one copy
    ids: torch.Tensor                  # [Tp]
    positions: torch.Tensor            # [Tp]
    lora: torch.Tensor                 # [Tp] 0/1
    table: torch.Tensor                # [6, Rp] (ROW_FIELDS)
    write_token: torch.Tensor          # [Wp]
    write_dest: torch.Tensor           # [Wp]
    tiles: torch.Tensor | None         # [2, Gp]
    order_rows: torch.Tensor           # [R] ([Rp] in a bucket, padded with 0)
    order_tokens: torch.Tensor         # [T] ([Tp] in a bucket, padded with 0)
    uploaded: DevicePack               # the one copy (with what others packed beside the plan)

    @property
    def num_writes(self) -> int:
        return sum(r.writes for r in self.rows)

    @property
    def max_prefix(self) -> int:
        return max(r.prefix_len for r in self.rows)

    def field(self, name: str) -> torch.Tensor:
        """One row field [Rp] (``ROW_FIELDS``) on the device."""
        return self.table[ROW_FIELDS.index(name)]

    def write_slots(self, dest: torch.Tensor, pad_slot: int = 0) -> torch.Tensor:
        """Pool slots [Wp] of the writes: ``dest`` [n] the step's destination slots (SGLang's
        ``out_cache_loc``); a padding write goes to ``pad_slot`` (SGLang's padding slot 0).
        Device ops only."""
        padded = torch.cat([dest.new_full((1,), pad_slot), dest])
        return padded.index_select(0, self.write_dest + 1)

    @classmethod
    def build(cls, rows: Sequence[PlanRow], device, tile_tokens: int | None = None,
              bucket: Bucket | None = None, pack: HostPack | None = None,
              into: torch.Tensor | None = None) -> "StepPlan":
        """Plan ``rows`` on the host and copy the plan to ``device`` once (pinned, non-blocking on
        CUDA). ``tile_tokens``: a kernel's query tile (tokens), for the tile list; ``bucket``:
        pad to that static shape (refused when the rows do not fit); ``pack``: what else the
        step sends up (the decisions' tables), copied in the same upload (``uploaded``); ``into``:
        a persistent device buffer to upload into (a captured graph's input: with a bucket the
        plan's sections come first, at offsets fixed by the bucket)."""
        rows = tuple(rows)
        if not rows:
            raise ValueError("a step needs at least one row")
        starts, t = [], 0
        for r in rows:
            starts.append(t)
            t += r.q_len
        with_ids = all(r.token_ids for r in rows)
        ids = [x for r in rows for x in r.token_ids] if with_ids else [0] * t
        pos = [x for r in rows for x in r.positions] if with_ids else [0] * t
        lora = [int(r.lora) for r in rows for _ in range(r.q_len)]
        write_token, write_dest = [], []
        for r, s in zip(rows, starts):
            offsets = r.mask.kv_write_offsets(r.q_len) if r.writes else range(0)
            write_token += [s + o for o in offsets[:r.writes]]
            write_dest += [r.write_base + i for i in range(r.writes)]
        fields = [starts, [r.q_len for r in rows], [r.prefix_len for r in rows],
                  [r.mask.kind.code for r in rows],
                  [r.mask.block + 1 if r.mask.kind == MaskKind.QUADRATIC else 1 for r in rows],
                  [r.table_row for r in rows]]
        for r in rows:
            if r.mask.kind == MaskKind.QUADRATIC:
                r.mask.rows(r.q_len)          # validates q_len = rows·(B+1)
        tiles = None
        if tile_tokens is not None:
            tiles = [[i for i, r in enumerate(rows) for _ in range(0, r.q_len, tile_tokens)],
                     [t0 for r in rows for t0 in range(0, r.q_len, tile_tokens)]]
        groups, singles, order_rows, order_tokens = _groups(rows, starts)
        if bucket is not None:
            n_tiles = len(tiles[0]) if tiles else 0
            if (t > bucket.tokens or len(rows) > bucket.rows or len(write_token) > bucket.writes
                    or n_tiles > bucket.tiles
                    or (bucket.max_prefix and max(fields[2]) > bucket.max_prefix)):
                raise ValueError(f"step ({t} tokens, {len(rows)} rows, {len(write_token)} writes, "
                                 f"{n_tiles} tiles, prefix {max(fields[2])}) does not fit "
                                 f"{bucket}")
            ids += [0] * (bucket.tokens - t)
            pos += [0] * (bucket.tokens - t)
            lora += [0] * (bucket.tokens - t)
            pad_rows = bucket.rows - len(rows)
            for f, v in zip(fields, (t, 0, 0, MaskKind.CAUSAL.code, 1, 0)):
                f += [v] * pad_rows
            pad_w = bucket.writes - len(write_token)
            write_token += [0] * pad_w
            write_dest += [NOWHERE] * pad_w
            if tiles is not None:
                tiles[0] += [bucket.rows - 1] * (bucket.tiles - n_tiles)
                tiles[1] += [PAD_TILE_TOKEN] * (bucket.tiles - n_tiles)
        named = {"ids": ids, "positions": pos, "lora": lora, "table": [x for f in fields for x in f],
                 "write_token": write_token, "write_dest": write_dest,
                 "tiles": [x for half in tiles for x in half] if tiles is not None else [],
                 "order_rows": order_rows, "order_tokens": order_tokens}
        if bucket is not None:             # every section's size fixed by the bucket
            named["order_rows"] = order_rows + [0] * (bucket.rows - len(order_rows))
            named["order_tokens"] = order_tokens + [0] * (bucket.tokens - len(order_tokens))
        pack = HostPack() if pack is None else pack
        for name, values in named.items():
            pack.add(f"plan.{name}", values, leading=True)
        dev = pack.upload(device, into)
        views = {name: dev[f"plan.{name}"] for name in named}
        table = views["table"].view(6, len(fields[0]))
        dev_tiles = views["tiles"].view(2, -1) if tiles is not None else None
        return cls(rows=rows, q_starts=tuple(starts), num_tokens=t, groups=groups,
                   singles=singles, uses_lora=any(lora), bucket=bucket, tile_tokens=tile_tokens,
                   ids=views["ids"], positions=views["positions"], lora=views["lora"],
                   table=table, write_token=views["write_token"], write_dest=views["write_dest"],
                   tiles=dev_tiles, order_rows=views["order_rows"],
                   order_tokens=views["order_tokens"], uploaded=dev)


def _groups(rows: tuple[PlanRow, ...], starts: list[int]):
    """Rows by (mask, q_len) for one padded attention call each (CAUSAL / BIDIRECTIONAL), the
    quadratic rows apart; the order of rows and tokens that lists each group contiguously."""
    members: dict[tuple[MaskSpec, int], list[int]] = {}
    singles = []
    for i, r in enumerate(rows):
        if r.mask.kind == MaskKind.QUADRATIC:
            singles.append(i)
        else:
            members.setdefault((r.mask, r.q_len), []).append(i)
    groups, order_rows, order_tokens = [], [], []
    for (mask, q_len), idx in members.items():
        a, b = len(order_rows), len(order_tokens)
        order_rows += idx
        order_tokens += [starts[i] + j for i in idx for j in range(q_len)]
        groups.append(Group(mask, q_len, slice(a, len(order_rows)),
                            slice(b, len(order_tokens)), max(rows[i].prefix_len for i in idx)))
    return tuple(groups), tuple(singles), order_rows, order_tokens

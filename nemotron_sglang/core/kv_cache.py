"""Paged K/V cache: a fixed pool of pages plus a page table per request.

Responsibility: own the K/V memory of all running sequences and map each
sequence's token positions to slots in that memory. Nothing here computes
attention; kernels and the reference attention consume ``slots``/``gather``/
``page_tables``.

Shapes
------
* ``k``, ``v`` pools: ``[num_layers, num_pages * page_size, num_kv_heads, head_dim]``.
  A *flat slot* is ``page * page_size + offset``; token position ``p`` of a
  sequence lives at slot ``page_table[p // page_size] * page_size + p % page_size``.
* ``write`` takes ``k``, ``v`` of shape ``[n, num_kv_heads, head_dim]`` and slots ``[n]``.
* ``gather`` returns contiguous ``[length, num_kv_heads, head_dim]`` copies.
* ``page_tables`` returns ``[R, max_pages]`` (padded with -1) and ``[R]`` lengths.

Life cycle of a sequence: ``add`` -> (``append`` n staging slots -> write K/V
-> ``commit`` the accepted prefix)* -> optional ``rollback`` -> ``free``.
A sequence always holds exactly ``ceil((length + staged) / page_size)`` pages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

__all__ = ["KVCacheError", "KVCacheFull", "PagedKVCache"]


class KVCacheError(RuntimeError):
    """Misuse of the cache: unknown sequence id, bad lengths or shapes, corruption."""


class KVCacheFull(KVCacheError):
    """Not enough free pages for a request; nothing was allocated."""


@dataclass
class _Seq:
    pages: list[int] = field(default_factory=list)
    length: int = 0  # committed tokens
    staged: int = 0  # tokens reserved by append() and not yet committed


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class PagedKVCache:
    """Paged K/V pool with per-sequence page tables (reference, CPU-friendly)."""

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, num_pages: int,
                 page_size: int, dtype: torch.dtype = torch.float32, device="cpu",
                 shuffle_seed: int | None = None) -> None:
        for name, val in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                          ("head_dim", head_dim), ("num_pages", num_pages), ("page_size", page_size)):
            if not isinstance(val, int) or val <= 0:
                raise KVCacheError(f"{name} must be a positive int, got {val!r}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.num_pages = num_pages
        self.page_size = page_size
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_layers, num_pages * page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self._free: list[int] = list(range(num_pages))  # allocation takes from the front
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self._free)
        self._seqs: dict[int, _Seq] = {}

    # ------------------------------------------------------------------ queries
    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def seq_ids(self) -> list[int]:
        """Live sequence ids in insertion order."""
        return list(self._seqs)

    def length(self, seq_id: int) -> int:
        """Committed tokens of ``seq_id``."""
        return self._get(seq_id).length

    def staged(self, seq_id: int) -> int:
        """Tokens staged by ``append`` and not yet committed."""
        return self._get(seq_id).staged

    def page_table(self, seq_id: int) -> list[int]:
        """Pages owned by ``seq_id`` (committed and staged), in token order."""
        return list(self._get(seq_id).pages)

    # --------------------------------------------------------------- life cycle
    def add(self, seq_id: int) -> None:
        """Register a new empty sequence (holds zero pages)."""
        if seq_id in self._seqs:
            raise KVCacheError(f"sequence {seq_id!r} already exists")
        self._seqs[seq_id] = _Seq()

    def append(self, seq_id: int, n: int) -> torch.Tensor:
        """Stage ``n`` slots at positions ``length .. length+n-1``; returns LongTensor ``[n]``.

        Replaces any previous uncommitted staging. Pages are allocated
        all-or-nothing: on ``KVCacheFull`` the state (staging included) is unchanged.
        """
        seq = self._get(seq_id)
        self._check_count("n", n)
        need = _ceil_div(seq.length + n, self.page_size)
        extra = need - len(seq.pages)
        if extra > len(self._free):
            raise KVCacheFull(f"sequence {seq_id!r} needs {extra} more page(s) for "
                              f"{seq.length}+{n} tokens, only {len(self._free)} free")
        if extra > 0:
            seq.pages.extend(self._free[:extra])
            del self._free[:extra]
        seq.staged = n
        self._trim(seq)
        return self.slots(seq_id, seq.length, seq.length + n)

    def commit(self, seq_id: int, n: int) -> None:
        """Commit the first ``n`` staged tokens (``0 <= n <= staged``); drop the rest."""
        seq = self._get(seq_id)
        self._check_count("n", n)
        if n > seq.staged:
            raise KVCacheError(f"cannot commit {n} tokens of sequence {seq_id!r}: only {seq.staged} staged")
        seq.length += n
        seq.staged = 0
        self._trim(seq)

    def rollback(self, seq_id: int, length: int) -> None:
        """Truncate the committed length to ``length`` (``0 <= length <= length()``), drop staging."""
        seq = self._get(seq_id)
        self._check_count("length", length)
        if length > seq.length:
            raise KVCacheError(f"cannot roll sequence {seq_id!r} back to {length}: "
                               f"committed length is {seq.length}")
        seq.length = length
        seq.staged = 0
        self._trim(seq)

    def free(self, seq_id: int) -> None:
        """Release every page of ``seq_id`` (finish or abort, staged pages included)."""
        seq = self._get(seq_id)
        self._free.extend(seq.pages)
        del self._seqs[seq_id]

    # ------------------------------------------------------------ slots and data
    def slots(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        """Flat slots (LongTensor ``[end-start]``) of positions ``start .. end-1``."""
        seq = self._get(seq_id)
        cap = seq.length + seq.staged
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= cap):
            raise KVCacheError(f"bad range [{start}, {end}) for sequence {seq_id!r} "
                               f"(length {seq.length} + staged {seq.staged} = {cap})")
        pos = torch.arange(start, end, dtype=torch.long)
        pages = torch.tensor(seq.pages, dtype=torch.long)
        if end == start:
            return pos.to(self.device)
        out = pages[pos // self.page_size] * self.page_size + pos % self.page_size
        return out.to(self.device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter ``k``, ``v`` ``[n, num_kv_heads, head_dim]`` into layer ``layer`` at ``slots`` ``[n]``."""
        self._check_layer(layer)
        if slots.dim() != 1:
            raise KVCacheError(f"slots must be 1-D, got shape {tuple(slots.shape)}")
        want = (slots.shape[0], self.num_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if tuple(t.shape) != want:
                raise KVCacheError(f"{name} must have shape {want}, got {tuple(t.shape)}")
        if slots.numel() == 0:
            return
        idx = slots.to(device=self.device, dtype=torch.long)
        total = self.num_pages * self.page_size
        if int(idx.min()) < 0 or int(idx.max()) >= total:
            raise KVCacheError(f"slot index out of range [0, {total})")
        self.k[layer, idx] = k.to(device=self.device, dtype=self.dtype)
        self.v[layer, idx] = v.to(device=self.device, dtype=self.dtype)

    def gather(self, layer: int, seq_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous K, V copies ``[length, num_kv_heads, head_dim]`` of positions ``0 .. length-1``.

        ``length`` defaults to the committed length; it may reach into staged tokens.
        """
        self._check_layer(layer)
        if length is None:
            length = self._get(seq_id).length
        idx = self.slots(seq_id, 0, length)
        return self.k[layer, idx].contiguous(), self.v[layer, idx].contiguous()

    def page_tables(self, seq_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(LongTensor ``[R, max_pages]`` padded with -1, LongTensor ``[R]`` committed lengths)."""
        seqs = [self._get(s) for s in seq_ids]
        max_pages = max((len(s.pages) for s in seqs), default=0)
        table = torch.full((len(seqs), max_pages), -1, dtype=torch.long)
        for i, s in enumerate(seqs):
            if s.pages:
                table[i, : len(s.pages)] = torch.tensor(s.pages, dtype=torch.long)
        lengths = torch.tensor([s.length for s in seqs], dtype=torch.long)
        return table.to(self.device), lengths.to(self.device)

    def slot_table(self, seq_ids: list[int], width: int) -> torch.Tensor:
        """Token→slot table LongTensor ``[R, width]`` on the device: entry (i, j) is the flat slot
        of position j of ``seq_ids[i]`` (SGLang's ``req_to_token`` layout); 0 past a sequence's
        pages (never attended: a row reads only its prefix)."""
        table, _ = self.page_tables(seq_ids)
        pos = torch.arange(width, device=self.device)
        page = pos // self.page_size
        if table.shape[1] == 0 or width == 0:
            return torch.zeros(len(seq_ids), width, dtype=torch.long, device=self.device)
        pages = table.index_select(1, page.clamp(max=table.shape[1] - 1))
        slots = pages * self.page_size + pos % self.page_size
        return slots.masked_fill((pages < 0) | (page >= table.shape[1])[None, :], 0)

    # ---------------------------------------------------------------- integrity
    def check_integrity(self) -> None:
        """Raise ``KVCacheError`` if page ownership or lengths are inconsistent."""
        owner: dict[int, object] = {}
        for sid, seq in self._seqs.items():
            if seq.length < 0 or seq.staged < 0:
                raise KVCacheError(f"sequence {sid!r} has negative length {seq.length} or staged {seq.staged}")
            want = _ceil_div(seq.length + seq.staged, self.page_size)
            if len(seq.pages) != want:
                raise KVCacheError(f"sequence {sid!r} holds {len(seq.pages)} page(s), expected {want} "
                                   f"for {seq.length}+{seq.staged} tokens at page_size {self.page_size}")
            for p in seq.pages:
                if not (isinstance(p, int) and 0 <= p < self.num_pages):
                    raise KVCacheError(f"sequence {sid!r} holds out-of-range page {p!r}")
                if p in owner:
                    raise KVCacheError(f"page {p} is owned by both sequence {owner[p]!r} and {sid!r}")
                owner[p] = sid
        free_seen: set[int] = set()
        for p in self._free:
            if not (isinstance(p, int) and 0 <= p < self.num_pages):
                raise KVCacheError(f"free list holds out-of-range page {p!r}")
            if p in free_seen:
                raise KVCacheError(f"page {p} appears twice in the free list")
            if p in owner:
                raise KVCacheError(f"page {p} is both free and owned by sequence {owner[p]!r}")
            free_seen.add(p)
        leaked = [p for p in range(self.num_pages) if p not in owner and p not in free_seen]
        if leaked:
            raise KVCacheError(f"page(s) {leaked[:10]} are neither owned nor free (leak)")

    # ------------------------------------------------------------------ helpers
    def _get(self, seq_id: int) -> _Seq:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise KVCacheError(f"unknown sequence {seq_id!r}") from None

    def _trim(self, seq: _Seq) -> None:
        """Return pages beyond ``ceil((length + staged) / page_size)`` to the free list."""
        keep = _ceil_div(seq.length + seq.staged, self.page_size)
        if len(seq.pages) > keep:
            self._free.extend(seq.pages[keep:])
            del seq.pages[keep:]

    def _check_layer(self, layer: int) -> None:
        if not (isinstance(layer, int) and 0 <= layer < self.num_layers):
            raise KVCacheError(f"layer {layer!r} out of range [0, {self.num_layers})")

    @staticmethod
    def _check_count(name: str, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise KVCacheError(f"{name} must be a non-negative int, got {n!r}")

"""Logits of one forward, computed only for the rows a strategy reads (:class:`PassLogits`).

A forward ends at the final hidden states [T, H]; the head (hidden -> vocab) is the largest
single matmul per row and its output the largest tensor of the pass ([T, V]; for NLD-8B a
quadratic pass at B = 32 is 1056 × 131072). A strategy reads few of those rows: an AR or refresh
pass its last, a draft its masks, a quadratic pass its R row heads and then the B - 1 masks of
the one row its verifier accepted. ``PassLogits`` holds the hidden states and computes head rows
on first read, in one head call per read (the caller may :meth:`prefetch` every row's declared
reads in one call), and counts the rows it computed.

    x = PassLogits(hidden, head)      # hidden [T, H]; head: [n, H] -> [n, V]
    x[3]        -> [V]                x[2:5], x[[0, 4]], x[0::5]  -> [n, V]
    x.span(a, b)                      # a lazy view of rows a..b-1 (one request's pass)
    x.rows_at(index)                  # rows at a device index tensor, no host read

Indexing returns what indexing the full logits tensor would; a plain tensor therefore serves
wherever a strategy takes logits (core's tests pass tensors).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


class PassLogits:
    def __init__(self, hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]):
        self.hidden, self.head = hidden, head
        self._rows: dict[int, torch.Tensor] = {}
        self.rows_computed = 0

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def prefetch(self, index: Sequence[int]) -> None:
        """Compute the rows ``index`` (absolute) in one head call, those not computed yet."""
        missing = sorted({int(i) for i in index} - self._rows.keys())
        if not missing:
            return
        with torch.no_grad():
            out = self.head(self.hidden[torch.tensor(missing, device=self.hidden.device)])
        self.rows_computed += len(missing)
        for i, row in zip(missing, out):
            self._rows[i] = row

    def rows(self, index: Sequence[int]) -> torch.Tensor:
        """Logits [n, V] of absolute rows ``index``."""
        if len(index) == 0:
            with torch.no_grad():
                return self.head(self.hidden[:0])
        self.prefetch(index)
        return torch.stack([self._rows[int(i)] for i in index])

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] of the rows at a device ``index`` [n], computed now and not cached; the
        index is never read on the host (the quadratic pass's accepted row is chosen on the
        device, ``core/decoding/decide_batched.py``)."""
        with torch.no_grad():
            out = self.head(self.hidden.index_select(0, index))
        self.rows_computed += int(index.numel())
        return out

    def span(self, start: int, end: int) -> "PassLogitsView":
        return PassLogitsView(self, start, end)

    def __getitem__(self, index):
        return _select(self, 0, len(self), index)


class PassLogitsView:
    """Rows ``start..end-1`` of a :class:`PassLogits`, indexed like a tensor of those rows."""

    def __init__(self, base: PassLogits, start: int, end: int):
        self.base, self.start, self.end = base, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index):
        return _select(self.base, self.start, self.end, index)


def _select(base: PassLogits, start: int, end: int, index):
    n = end - start
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        return base.rows([start + index % n])[0]
    offsets = torch.arange(n)[index]
    if offsets.dim() != 1:
        raise TypeError(f"unsupported logits index {index!r}")
    return base.rows([start + int(o) for o in offsets])

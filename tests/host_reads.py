"""Counting device→host reads: a ``TorchFunctionMode`` that records every tensor call that moves
data to the host or blocks on the device (``.cpu()``, ``.item()``, ``.tolist()``, ``.numpy()``,
``.to("cpu")``, and ``bool`` / ``int`` / ``float`` / index conversions of a tensor), with the
number of elements each moved. On a CPU run nothing actually moves, but the same calls would on a
GPU, so the count is what a GPU run would sync on."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

READS = {"cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """``with HostReads() as r: ...`` then ``r.calls``; ``r.paused()`` excludes a region (a
    model forward, whose reads are the attention's own)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []      # (call, elements moved)
        self._paused = 0

    @contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if not self._paused and args and isinstance(args[0], torch.Tensor):
            if name in READS or (name == "to" and _to_host(args[1:], kwargs)):
                self.calls.append((name, int(args[0].numel())))
        return func(*args, **kwargs)

    @property
    def elements(self) -> int:
        return sum(n for _, n in self.calls)


def _to_host(args, kwargs) -> bool:
    dev = kwargs.get("device", args[0] if args else None)
    return dev is not None and not isinstance(dev, torch.dtype) and torch.device(dev).type == "cpu"

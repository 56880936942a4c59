"""Counting device→host reads: a ``TorchFunctionMode`` that records every tensor call that moves
data to the host or makes the host wait on the device, by op, with the elements that reach the
host and the call site; blocking host→device copies are recorded apart (``uploads``).

Counted (``classify``; each is a sync on CUDA: the host waits for the device's queue):

    op                       when                                   elements recorded
    item, __bool__, __int__, always (``if t:``, ``int(t)``, ``any()``   1
    __float__, __index__,    converted to Python, ``x in t``)
    __complex__, __contains__
    cpu, tolist, numpy,      always (a copy of the whole tensor)    numel
    __repr__, __format__
    to                       the target device is the CPU           numel
    copy_                    into a CPU tensor from a non-CPU one   numel of the source
    nonzero, argwhere,       always (the output size is data)       1 (the size)
    masked_select, unique,
    unique_consecutive,
    bincount, equal, allclose
    where                    one argument (``torch.where(c)``)      1
    repeat_interleave        tensor repeats, no ``output_size``     1
    __getitem__,             a bool / uint8 tensor in the index     1
    __setitem__, index_put(_)  (a mask: its nonzero count is read)

Not counted as reads (no sync): arithmetic, reductions kept on the device, ``cumsum``,
``where(c, a, b)``, indexing with an integer tensor, ``nonzero_static``, ``repeat_interleave``
with an int or with ``output_size``, any of the above on a tensor that lives on the host, and
calls that are not tensor ops (``torch.cuda.synchronize``, stream / event waits: none in the
plugin). Recorded apart, as ``uploads`` (``classify_upload``): blocking host→device copies —
``torch.tensor`` / ``as_tensor`` of host data onto a device, ``.to`` / ``.cuda`` / ``copy_``
from the host — which also make the host wait for the stream (PyTorch copies pageable memory
and synchronises), ``non_blocking=True`` excepted. Calls made by the Triton *interpreter*
(``TRITON_INTERPRET=1``, a CPU stand-in for a kernel launch) are skipped: a GPU launch reads
nothing.

A CPU run stands in for a GPU one (``simulate``, the default without CUDA): every tensor is on
the CPU, so where it would live is told by its origin. Born on the host: a tensor made inside
the counter by a factory without a device (``torch.tensor(list)``), by a copy to the host, or
by any op on host tensors only; every other tensor (made with a device, or before the counter
started: the model, the KV pool, the batch) is taken to be on the device. A ``device`` given
as a ``torch.device`` object is taken to be the run's device; only the string ``"cpu"`` (or a
host tensor) names the host. So the count is what a GPU run syncs on, up to this rule (a CPU
tensor SGLang made before the step, e.g. ``seq_lens_cpu``, would be taken for a device one:
an over-count, never a miss); with CUDA, real devices decide.

Verified: tests/test_host_reads.py calls each op of the table and each non-syncing op and checks
what is recorded (every listed op must register: the negative control); on CUDA it also runs each
under ``torch.cuda.set_sync_debug_mode("error")``, which raises at a synchronising call, so the
table is checked against the device itself (the list follows PyTorch's notes on ops that
synchronise: CUDA semantics, "Avoiding synchronisations", and the ops documented to need an
``output_size`` / ``size`` to avoid one); that CUDA check has not yet run on a GPU (2026-12-06).

The server's canvas steps are counted with it by ``host_sync_probe``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

SCALAR = {"item", "__bool__", "__int__", "__float__", "__index__", "__complex__", "__contains__"}
COPY = {"cpu", "tolist", "numpy", "__repr__", "__format__"}
SIZED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount",
         "equal", "allclose"}
WHEN = {"to", "copy_", "where", "repeat_interleave", "__getitem__", "__setitem__", "index_put",
        "index_put_"}                                  # counted on a condition (``classify``)
COUNTED = SCALAR | COPY | SIZED | WHEN
UPLOADS = {"tensor", "as_tensor", "to", "cuda", "copy_"}
FACTORIES = {"tensor", "as_tensor", "arange", "empty", "zeros", "ones", "full", "rand", "randn",
             "randint", "randperm", "linspace", "eye", "from_numpy", "scalar_tensor"}
_HOST = "_host_reads_on_host"           # attribute of a tensor born on the host (simulated run)
_SKIP = (os.sep + os.path.join("triton", "runtime", "interpreter"),   # the interpreter's copies
         os.sep + os.path.join("triton", "language") + os.sep)
_INSIDE = (os.path.dirname(torch.__file__) + os.sep, __file__)       # not a call site


class Read(NamedTuple):
    op: str
    elements: int
    site: str               # "file.py:Qualified.name" of the first caller outside torch


def _is_mask(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dtype in (torch.bool, torch.uint8)
    if isinstance(x, (tuple, list)):
        return any(_is_mask(y) for y in x)
    return False


def on_host(t: torch.Tensor, simulate: bool) -> bool:
    """Where ``t`` lives on a GPU run: its device, or (``simulate``: a CPU run standing in for
    one) the host only if it was born there (``_HOST``, set by ``HostReads``)."""
    return t.device.type == "cpu" and (not simulate or getattr(t, _HOST, False))


def _host_target(dev, simulate: bool) -> bool | None:
    """Whether a ``.to`` / factory ``device`` names the host (None: no device named). Simulated,
    only the string "cpu" (or a host tensor) does: a ``torch.device`` object is taken to be the
    run's device (code derives it from a tensor; code meaning the host writes "cpu")."""
    if dev is None or isinstance(dev, torch.dtype):
        return None
    if isinstance(dev, torch.Tensor):
        return on_host(dev, simulate)
    if simulate:
        return isinstance(dev, str) and dev.split(":")[0] == "cpu"
    return torch.device(dev).type == "cpu"


def _to_device(args: tuple, kwargs: dict):
    dev = kwargs.get("device", args[1] if len(args) > 1 else None)
    return kwargs.get("other", dev)


def classify(name: str, args: tuple, kwargs: dict, simulate: bool = False) -> int | None:
    """Elements a call of ``name`` reads to the host, or None when it does not sync (a call on
    a tensor that lives on the host never does)."""
    first = args[0] if args else None
    if name not in COUNTED or not isinstance(first, torch.Tensor):
        return None
    if name == "copy_":
        src = args[1] if len(args) > 1 else kwargs.get("src")
        cross = isinstance(src, torch.Tensor) and not on_host(src, simulate)
        return int(src.numel()) if cross and on_host(first, simulate) else None
    if on_host(first, simulate) and not (name == "repeat_interleave" and len(args) > 1):
        return None
    if name in SCALAR or name in SIZED:
        return 1
    if name in COPY:
        return int(first.numel())
    if name == "to":
        return int(first.numel()) if _host_target(_to_device(args, kwargs), simulate) else None
    if name == "where":
        return 1 if len(args) == 1 and not kwargs else None
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", first)
        device_repeats = isinstance(repeats, torch.Tensor) and not on_host(repeats, simulate)
        return 1 if device_repeats and kwargs.get("output_size") is None else None
    index = args[1] if len(args) > 1 else kwargs.get("indices")
    return 1 if _is_mask(index) else None              # __getitem__, __setitem__, index_put(_)


def classify_upload(name: str, args: tuple, kwargs: dict, simulate: bool = False) -> int | None:
    """Elements a blocking host→device copy of ``name`` moves, or None: ``torch.tensor`` /
    ``as_tensor`` of host data onto a device, ``.to`` / ``.cuda`` / ``copy_`` from the host to a
    device (``non_blocking=True`` excepted)."""
    if kwargs.get("non_blocking") or name not in UPLOADS:
        return None
    first = args[0] if args else kwargs.get("data")
    if name in ("tensor", "as_tensor"):
        dev = kwargs.get("device")
        data_on_device = isinstance(first, torch.Tensor) and not on_host(first, simulate)
        if dev is None or _host_target(dev, simulate) or data_on_device:
            return None
        return 1 if not isinstance(first, (list, tuple, torch.Tensor)) else len(_flat(first))
    if not isinstance(first, torch.Tensor):
        return None
    if name == "copy_":
        src = args[1] if len(args) > 1 else kwargs.get("src")
        up = isinstance(src, torch.Tensor) and on_host(src, simulate) and not on_host(first,
                                                                                   simulate)
        return int(src.numel()) if up else None
    if not on_host(first, simulate):
        return None
    if name == "cuda":
        return int(first.numel())
    return int(first.numel()) if _host_target(_to_device(args, kwargs), simulate) is False \
        else None


def _flat(x) -> list:
    if isinstance(x, torch.Tensor):
        return [None] * x.numel()
    if isinstance(x, (list, tuple)):
        return [y for z in x for y in _flat(z)]
    return [x]


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out += [b for b in a if isinstance(b, torch.Tensor)]
    return out


def _born_on_host(name: str, args: tuple, kwargs: dict, read: bool) -> bool:
    """Whether a simulated call's result lives on the host: a copy to the host, a factory's
    without a device (of a tensor: where that is), any other call's on host tensors only."""
    if read and name in ("cpu", "to", "copy_"):         # a copy to the host
        return True
    if name == "cuda":
        return False
    if name == "to":
        target = _host_target(_to_device(args, kwargs), True)
        return target if target is not None else on_host(args[0], True)
    if "device" in kwargs and kwargs["device"] is not None:
        return bool(_host_target(kwargs["device"], True))
    inputs = _tensors(args, kwargs)
    if name in FACTORIES:
        return all(on_host(t, True) for t in inputs)
    return bool(inputs) and all(on_host(t, True) for t in inputs)


def _mark(out) -> None:
    if isinstance(out, torch.Tensor):
        setattr(out, _HOST, True)
    elif isinstance(out, (tuple, list)):
        for o in out:
            _mark(o)


def _site() -> str | None:
    """The caller outside torch and this module; None inside the Triton interpreter."""
    f = sys._getframe(2)
    site = None
    while f is not None:
        path = f.f_code.co_filename
        if any(s in path for s in _SKIP):
            return None
        if site is None and not path.startswith(_INSIDE):
            site = f"{os.path.basename(path)}:{f.f_code.co_qualname}"
        f = f.f_back
    return site or "?"


class HostReads(TorchFunctionMode):
    """``with HostReads() as r: ...`` then ``r.reads`` (``Read``s), ``r.calls`` ((op, elements)
    pairs), ``r.by_op()``, ``r.summary()``; ``r.paused()`` excludes a region."""

    def __init__(self, simulate: bool | None = None):
        super().__init__()
        # a CPU run stands in for a GPU one: tensors born on the host are told apart by origin
        self.simulate = not torch.cuda.is_available() if simulate is None else simulate
        self.reads: list[Read] = []
        self.uploads: list[Read] = []        # blocking host→device copies (``classify_upload``)
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
        n = classify(name, args, kwargs, self.simulate)
        up = None if n is not None else classify_upload(name, args, kwargs, self.simulate)
        if (n is not None or up is not None) and not self._paused:
            site = _site()
            if site is not None:
                (self.reads if n is not None else self.uploads).append(
                    Read(name, n if n is not None else up, site))
        out = func(*args, **kwargs)
        if self.simulate and _born_on_host(name, args, kwargs, n is not None):
            _mark(out)
        return out

    @property
    def calls(self) -> list[tuple[str, int]]:
        return [(r.op, r.elements) for r in self.reads]

    @property
    def elements(self) -> int:
        return sum(r.elements for r in self.reads)

    def by_op(self) -> Counter:
        return Counter(r.op for r in self.reads)

    def summary(self) -> str:
        return summary(self.reads)


def summary(reads) -> str:
    """``"5 reads, 12 elements: 3 item, 2 nonzero"``."""
    ops = Counter(r[0] for r in reads)
    parts = ", ".join(f"{n} {op}" for op, n in ops.most_common())
    return f"{len(reads)} reads, {sum(r[1] for r in reads)} elements" + (f": {parts}" if parts else "")

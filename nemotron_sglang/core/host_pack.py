"""Host values bound for the device, gathered by name and sent in ONE copy.

A step's host side knows, before its forward, everything the device will need from it (the step
plan's rows and tokens, the decisions' row indices, temperatures, uniforms' streams). Each part
adds its named sections; one ``upload`` packs them into one byte buffer (each section aligned
to 8 bytes), copies it (pinned and non-blocking on CUDA) and hands back typed views::

    pack = HostPack()
    pack.add("ids", [5, 9, 9], torch.long)
    pack.add("temperature", [0.7, 1.0], torch.float64)
    dev = pack.upload(device)             # one host→device copy
    dev["ids"]          -> [3] int64 view      dev["temperature"] -> [2] float64 view

A name may be added once; reading a name never added is an error (``KeyError`` naming it). A
pack is sent once (``uploaded``: its device side), so whoever filled part of it reads its views
there after another part of the step sent it. ``leading`` sections (what a captured graph reads)
are laid out first, in the order added, so their offsets depend only on their sizes; ``into``
uploads into a persistent device buffer (a graph's static input) instead of a fresh one.
"""

from __future__ import annotations

from typing import Sequence

import torch

ALIGN = 8


class HostPack:
    def __init__(self) -> None:
        self._sections: dict[str, torch.Tensor] = {}
        self._leading: list[str] = []
        self.uploaded: DevicePack | None = None

    def add(self, name: str, values: Sequence | torch.Tensor, dtype: torch.dtype = torch.long,
            leading: bool = False) -> None:
        """Add section ``name``: ``values`` (a list, or a host tensor) as a 1-D ``dtype`` array;
        ``leading``: laid out before every other section."""
        if name in self._sections:
            raise ValueError(f"host pack: section {name!r} added twice")
        if self.uploaded is not None:
            raise ValueError(f"host pack: section {name!r} added after the upload")
        t = torch.as_tensor(values, dtype=dtype).reshape(-1)
        if t.device.type != "cpu":
            raise ValueError(f"host pack: section {name!r} is on {t.device}, not the host")
        self._sections[name] = t
        if leading:
            self._leading.append(name)

    def __contains__(self, name: str) -> bool:
        return name in self._sections

    def upload(self, device, into: torch.Tensor | None = None) -> "DevicePack":
        """Every section in one host→device copy; their device views by name. ``into``: a
        persistent uint8 device buffer to copy into (refused when too small)."""
        if self.uploaded is not None:
            raise ValueError("host pack: uploaded twice")
        order = self._leading + [n for n in self._sections if n not in self._leading]
        self._sections = {n: self._sections[n] for n in order}
        offsets, at = {}, 0
        for name, t in self._sections.items():
            offsets[name] = at
            at += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        host = torch.zeros(max(at, ALIGN), dtype=torch.uint8)
        for name, t in self._sections.items():
            n = t.numel() * t.element_size()
            host[offsets[name]:offsets[name] + n] = t.contiguous().view(torch.uint8)
        device = torch.device(device)
        if into is not None:
            if into.dtype != torch.uint8 or into.numel() < host.numel():
                raise ValueError(f"host pack: {host.numel()} bytes do not fit the {into.dtype} "
                                 f"buffer of {into.numel()}")
            buf = into
            src = host.pin_memory() if buf.device.type == "cuda" else host
            buf[:host.numel()].copy_(src, non_blocking=buf.device.type == "cuda")
        elif device.type == "cuda":               # the caching host allocator keeps the pinned
            buf = host.pin_memory().to(device, non_blocking=True)    # buffer alive till copied
        else:
            buf = host.to(device)
        views = {}
        for name, t in self._sections.items():
            a = offsets[name]
            views[name] = buf[a:a + t.numel() * t.element_size()].view(t.dtype)
        self.uploaded = DevicePack(views, at)
        return self.uploaded


class DevicePack:
    """The device views of one upload, by section name; ``nbytes``: the copy's size."""

    def __init__(self, views: dict[str, torch.Tensor], nbytes: int):
        self._views, self.nbytes = views, nbytes

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._views[name]
        except KeyError:
            raise KeyError(f"device pack: no section {name!r} "
                           f"(has {', '.join(self._views) or 'none'})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._views

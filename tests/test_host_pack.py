"""One host→device copy for many named sections (``core/host_pack.py``): typed views hold what
was added (fresh random values of every dtype, empty sections too), each section starts on an
8-byte boundary and none overlaps the next, a name is added once, an unknown name is a KeyError
naming it, a tensor not on the host is refused, a pack is sent once, and an upload is exactly
one blocking copy under the host-read counter (which does count one copy per section when they
go one by one: the negative control)."""

from __future__ import annotations

import random

import pytest
import torch

from nemotron_sglang.core.host_pack import ALIGN, HostPack
from nemotron_sglang.testing.host_reads import HostReads

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _sections(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random host sections: odd lengths (padding between them), every dtype, two empty."""
    n = lambda: int(torch.randint(1, 12, (1,), generator=g)) | 1      # noqa: E731
    return {
        "ids": torch.randint(-(1 << 62), 1 << 62, (n(),), generator=g, dtype=torch.int64),
        "temperature": torch.randn(n(), generator=g, dtype=torch.float64),
        "empty_long": torch.zeros(0, dtype=torch.int64),
        "bits": torch.randint(-(1 << 31), (1 << 31) - 1, (n(),), generator=g,
                              dtype=torch.int32),
        "flags": torch.rand(n(), generator=g) < 0.5,
        "empty_f64": torch.zeros(0, dtype=torch.float64),
        "tail": torch.randint(0, 1 << 40, (n(),), generator=g, dtype=torch.int64),
    }


def _offset(view: torch.Tensor) -> int:
    return view.storage_offset() * view.element_size()


@pytest.mark.parametrize("as_list", [False, True])
def test_sections_round_trip_aligned(as_list):
    g = torch.Generator().manual_seed(random.randrange(1 << 30))
    sections = _sections(g)
    pack = HostPack()
    for name, t in sections.items():
        pack.add(name, t.tolist() if as_list else t, t.dtype)
        assert name in pack
    dev = pack.upload(DEV)
    assert dev.nbytes % ALIGN == 0
    ends = []
    for name, t in sections.items():
        view = dev[name]
        assert name in dev
        assert view.dtype == t.dtype and view.shape == t.shape, name
        assert view.device.type == torch.device(DEV).type, name
        assert torch.equal(view.cpu(), t), name
        assert _offset(view) % ALIGN == 0, (name, _offset(view))
        ends.append((_offset(view), _offset(view) + t.numel() * t.element_size()))
    for (_, end), (start, _) in zip(ends, ends[1:]):          # in order, never overlapping
        assert end <= start
    assert ends[-1][1] <= dev.nbytes


def test_a_list_of_floats_takes_the_section_dtype():
    pack = HostPack()
    pack.add("t", [0.1, 2], torch.float64)
    pack.add("r", [[1, 2], [3, 4]])                         # flattened, int64 by default
    dev = pack.upload("cpu")
    assert dev["t"].tolist() == [0.1, 2.0] and dev["t"].dtype == torch.float64
    assert dev["r"].tolist() == [1, 2, 3, 4] and dev["r"].dtype == torch.int64


def test_refusals():
    pack = HostPack()
    pack.add("rows", [1, 2])
    with pytest.raises(ValueError, match="'rows' added twice"):
        pack.add("rows", [3])
    with pytest.raises(ValueError, match="meta"):
        pack.add("far", torch.zeros(3, device="meta"))
    assert "far" not in pack
    dev = pack.upload("cpu")
    with pytest.raises(KeyError, match="'decide.nowhere'"):
        dev["decide.nowhere"]
    assert "decide.nowhere" not in dev
    assert pack.uploaded is dev                              # sent once, then read there
    with pytest.raises(ValueError, match="uploaded twice"):
        pack.upload("cpu")
    with pytest.raises(ValueError, match="'late' added after the upload"):
        pack.add("late", [1])


def test_one_upload_is_one_blocking_copy():
    """Simulated GPU run (the counter's CPU stand-in): the pack's upload is the one blocking
    copy, of all its bytes; sending the sections one by one is counted once per section."""
    g = torch.Generator().manual_seed(random.randrange(1 << 30))
    sections = {name: (t.tolist(), t.dtype) for name, t in _sections(g).items()}  # host lists
    with HostReads(simulate=True) as reads:
        pack = HostPack()
        for name, (values, dtype) in sections.items():
            pack.add(name, values, dtype)
        dev = pack.upload(torch.device("cpu"))
        dev["ids"] + 1                                       # device work reads nothing back
    assert [(u.op, u.elements) for u in reads.uploads] == [("to", dev.nbytes)], reads.uploads
    assert reads.uploads[0].site == "host_pack.py:HostPack.upload"
    assert reads.reads == []
    with HostReads(simulate=True) as one_by_one:             # the negative control
        for values, dtype in sections.values():
            torch.tensor(values, dtype=dtype, device=torch.device("cpu"))
    assert len(one_by_one.uploads) == len(sections)

"""The host-read counter itself (``nemotron_sglang.testing.host_reads``): every syncing op of its
table is recorded once, with its op name, elements and call site, and every non-syncing op is
not; every op the counter lists has a row here (the built-in negative control: an op dropped
from the counter fails its row, an op added without a row fails the coverage check). On CUDA the
table is also checked against the device: each syncing row raises under
``torch.cuda.set_sync_debug_mode("error")`` and no other row does. Blocking host→device copies
(also syncs: the copy waits on the stream) are recorded apart, as uploads."""

from __future__ import annotations

import pytest
import torch

from nemotron_sglang.testing import host_reads as hr
from nemotron_sglang.testing.host_reads import HostReads

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _setitem(x, m):
    x[m] = 0.0


def _setitem_int(x, i):
    x[i] = 0.0


def _if_any(x):
    if (x > 1).any():               # a device flag used as a Python bool
        return 1


# (label, op recorded, elements recorded (n = x.numel()), call); x [6] float, m [6] bool mask,
# i [3] long indices, all on DEV (on a CPU run: device tensors, being born outside the counter;
# a tensor born inside it without a device is the host's: reading it is no sync)
SYNCING = [
    ("item", "item", 1, lambda x, m, i: x.sum().item()),
    ("bool", "__bool__", 1, lambda x, m, i: bool(x.sum() > 0)),
    ("if any()", "__bool__", 1, lambda x, m, i: _if_any(x)),
    ("int", "__int__", 1, lambda x, m, i: int(x[0])),
    ("float", "__float__", 1, lambda x, m, i: float(x[0])),
    ("index", "__index__", 1, lambda x, m, i: [0, 1, 2][i[0]]),
    ("complex", "__complex__", 1, lambda x, m, i: complex(x[0])),
    ("x in t", "__contains__", 1, lambda x, m, i: 2.0 in x),
    ("cpu", "cpu", "n", lambda x, m, i: x.cpu()),
    ("tolist", "tolist", "n", lambda x, m, i: x.tolist()),
    ("numpy", "numpy", "n", lambda x, m, i: x.numpy(force=True)),
    ("repr", "__repr__", "n", lambda x, m, i: repr(x)),
    ("str", "__repr__", "n", lambda x, m, i: str(x)),
    ("format", "__format__", 1, lambda x, m, i: f"{x[0]:.2f}"),
    ("to('cpu')", "to", "n", lambda x, m, i: x.to("cpu")),
    ("to(device='cpu')", "to", "n", lambda x, m, i: x.to(device="cpu")),
    ("to(cpu, dtype)", "to", "n", lambda x, m, i: x.to("cpu", torch.float64)),
    ("copy_ to host", "copy_", "n", lambda x, m, i: torch.empty(x.shape).copy_(x)),
    ("cpu() then host ops", "cpu", "n", lambda x, m, i: x.cpu()[x.cpu() > 0].tolist()),
    ("nonzero", "nonzero", 1, lambda x, m, i: x.nonzero()),
    ("nonzero as_tuple", "nonzero", 1, lambda x, m, i: torch.nonzero(m, as_tuple=True)),
    ("argwhere", "argwhere", 1, lambda x, m, i: torch.argwhere(x)),
    ("masked_select", "masked_select", 1, lambda x, m, i: torch.masked_select(x, m)),
    ("where(c)", "where", 1, lambda x, m, i: torch.where(m)),
    ("unique", "unique", 1, lambda x, m, i: torch.unique(i)),
    ("Tensor.unique", "unique", 1, lambda x, m, i: i.unique(return_counts=True)),
    ("unique_consecutive", "unique_consecutive", 1, lambda x, m, i: torch.unique_consecutive(i)),
    ("bincount", "bincount", 1, lambda x, m, i: torch.bincount(i)),
    ("equal", "equal", 1, lambda x, m, i: torch.equal(x, x)),
    ("Tensor.equal", "equal", 1, lambda x, m, i: x.equal(x)),
    ("allclose", "allclose", 1, lambda x, m, i: torch.allclose(x, x)),
    ("repeat_interleave(t, reps)", "repeat_interleave", 1,
     lambda x, m, i: x.repeat_interleave(torch.ones_like(x, dtype=torch.long))),
    ("repeat_interleave(reps)", "repeat_interleave", 1, lambda x, m, i: torch.repeat_interleave(i)),
    ("t[mask]", "__getitem__", 1, lambda x, m, i: x[m]),
    ("t[:, mask]", "__getitem__", 1, lambda x, m, i: x[None][:, m]),
    ("t[mask] = v", "__setitem__", 1, lambda x, m, i: _setitem(x, m)),
    ("index_put_ mask", "index_put_", 1,
     lambda x, m, i: x.index_put_((m,), torch.tensor(0.0, device=x.device))),
    ("index_put mask", "index_put", 1,
     lambda x, m, i: x.index_put((m,), torch.tensor(0.0, device=x.device))),
]

NOT_SYNCING = [
    ("arithmetic", lambda x, m, i: (x + 1) * x - x / 2),
    ("reduction on device", lambda x, m, i: (x.sum(), x.max(), m.any(), m.all())),
    ("cumsum", lambda x, m, i: x.cumsum(0)),
    ("t[int tensor]", lambda x, m, i: x[i]),
    ("t[int tensor] = v", lambda x, m, i: _setitem_int(x, i)),
    ("slices", lambda x, m, i: x[1:3]),
    ("where(c, a, b)", lambda x, m, i: torch.where(m, x, 0.0)),
    ("masked_fill", lambda x, m, i: x.masked_fill(m, 0.0)),
    ("nonzero_static", lambda x, m, i: torch.nonzero_static(m, size=3)),
    ("repeat_interleave(int)", lambda x, m, i: x.repeat_interleave(2)),
    ("repeat_interleave output_size", lambda x, m, i: x.repeat_interleave(
        torch.ones_like(x, dtype=torch.long), output_size=6)),
    ("to(dtype)", lambda x, m, i: x.to(torch.float64)),
    ("to(its own device)", lambda x, m, i: x.to(device=x.device)),
    ("host-born tensors", lambda x, m, i: (torch.tensor([1.0, 2.0]).tolist(),
                                           torch.arange(3).sum().item(),
                                           torch.zeros(3)[torch.ones(3, dtype=torch.bool)])),
    ("sort / topk / gather", lambda x, m, i: (x.sort(), x.topk(2), x.gather(0, i))),
    ("shape / len / clone", lambda x, m, i: (x.shape, len(x), x.clone())),
]


# blocking host→device copies: recorded as uploads, not reads (label, op, elements, call)
UPLOADS = [
    ("tensor(list, device)", "tensor", 2, lambda x, m, i: torch.tensor([1, 2], device=x.device)),
    ("as_tensor(list, device)", "as_tensor", 3,
     lambda x, m, i: torch.as_tensor([[1], [2], [3]], device=x.device)),
    ("host tensor .to(device tensor)", "to", 1, lambda x, m, i: torch.tensor([1.0]).to(x)),
    ("host tensor .to(device=x.device)", "to", 4,
     lambda x, m, i: torch.zeros(4).to(device=x.device)),
    ("device.copy_(host)", "copy_", 6, lambda x, m, i: x.copy_(torch.zeros(6))),
]


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=g).to(DEV)
    return x, x > 0, torch.tensor([0, 2, 2], device=DEV)


@pytest.mark.parametrize("label,op,elements,call", SYNCING, ids=[c[0] for c in SYNCING])
def test_each_syncing_op_is_counted_once(label, op, elements, call):
    x, m, i = _inputs()
    with HostReads() as reads:
        call(x, m, i)
    want = x.numel() if elements == "n" else elements
    assert reads.calls == [(op, want)], (label, reads.reads)
    assert reads.reads[0].site.startswith("test_host_reads.py:"), reads.reads


@pytest.mark.parametrize("label,call", NOT_SYNCING, ids=[c[0] for c in NOT_SYNCING])
def test_non_syncing_ops_are_not_counted(label, call):
    x, m, i = _inputs()
    with HostReads() as reads:
        call(x, m, i)
    assert reads.reads == [], (label, reads.reads)


@pytest.mark.parametrize("label,op,elements,call", UPLOADS, ids=[c[0] for c in UPLOADS])
def test_uploads_are_told_apart(label, op, elements, call):
    x, m, i = _inputs()
    with HostReads() as reads:
        call(x, m, i)
    assert reads.reads == [] and reads.calls == [], (label, reads.reads)
    assert [(u.op, u.elements) for u in reads.uploads] == [(op, elements)], (label, reads.uploads)


def test_every_listed_op_has_a_row():
    assert {op for _, op, _, _ in SYNCING} == hr.COUNTED
    assert {op for _, op, _, _ in UPLOADS} | {"cuda"} == hr.UPLOADS


def _reads_it(x):
    return x.tolist()


def test_sites_summary_pause_and_the_interpreter():
    x, m, i = _inputs()
    with HostReads() as reads:
        _reads_it(x)
        x.sum().item()
        with reads.paused():
            x.tolist()
        torch.nonzero(m)
        x.sum().item()
        # what the Triton interpreter copies to launch a kernel on the CPU is no device read
        exec(compile("x.tolist()", "/lib/triton/runtime/interpreter.py", "exec"), {"x": x})
    assert reads.reads[0].site == "test_host_reads.py:_reads_it"
    assert reads.summary() == "4 reads, 9 elements: 2 item, 1 tolist, 1 nonzero"
    assert reads.by_op() == {"item": 2, "tolist": 1, "nonzero": 1}
    assert reads.elements == 9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_table_agrees_with_cuda_sync_debug_mode():
    """Each syncing row (reads and blocking uploads) raises under the sync debug mode, and no
    other row does."""
    x, m, i = _inputs()
    torch.cuda.synchronize()
    for _label, _, _, call in SYNCING + UPLOADS:
        torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.raises(RuntimeError, match="synchroniz"):
                call(x.clone(), m, i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for _label, call in NOT_SYNCING:
        torch.cuda.set_sync_debug_mode("error")
        try:
            call(x.clone(), m, i)
        finally:
            torch.cuda.set_sync_debug_mode("default")

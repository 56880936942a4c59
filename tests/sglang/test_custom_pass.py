"""The plugin's row attention for passes SGLang cannot express (the quadratic mask) over an
SGLang-shaped pool (token→slot table, per-layer K/V buffers): the Triton kernel (interpreted on
CPU) equals the reference path (rows of one mask and length in one padded call), which equals
its row-by-row twin and, in float64, core's attention row by row."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"      # before the kernel module is first loaded
pytest.importorskip("sglang")
pytest.importorskip("triton")

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, quadratic  # noqa: E402
from nemotron_sglang.core.step_plan import PlanRow  # noqa: E402
from nemotron_sglang.sglang_plugin.custom_pass import HeadShape, RowAttention  # noqa: E402


def planned(rows, impl, heads):
    """The attention of a pass of ``rows`` (prefix, q_len, mask), row i on table row i."""
    return RowAttention.planned([PlanRow(i, p, n, m) for i, (p, n, m) in enumerate(rows)], impl,
                                "cpu", HeadShape(*heads))


pytestmark = pytest.mark.usefixtures("restore_triton_interpret")


PASSES = {
    # quadratic rows (one by one), and groups of one mask and length (one padded call each)
    "mixed": [(5, 3 * (4 + 1), quadratic(4)), (0, 2 * (2 + 1), quadratic(2)), (9, 4, CAUSAL),
              (1, 4, BIDIRECTIONAL), (0, 1, CAUSAL), (12, 1, CAUSAL), (7, 1, CAUSAL),
              (3, 4, CAUSAL), (14, 4, BIDIRECTIONAL)],
    # one group that is the whole pass (no gather of its queries): an ar step, a step of drafts
    "ar_step": [(9, 1, CAUSAL), (0, 1, CAUSAL), (13, 1, CAUSAL), (5, 1, CAUSAL)],
    "drafts": [(3, 4, BIDIRECTIONAL), (14, 4, BIDIRECTIONAL), (8, 4, BIDIRECTIONAL)],
}


@pytest.mark.parametrize("seed", [21, 22])
@pytest.mark.parametrize("name", list(PASSES))
def test_row_attention_reference_and_triton_agree_with_core(monkeypatch, seed, name):
    """Both paths against float64 (the reference path on float64 copies): the Triton kernel's
    float32 error is at most 2x plain PyTorch's in float32 plus a floor; the float64 reference
    is core's dense-mask attention row by row. q, k, v are column slices of one qkv tensor, as
    the model hands them over."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d, slots = 4, 2, 16, 160
    rows = PASSES[name]
    # SGLang side: per-layer buffers [slots, hkv, d] and a req_to_token table of scattered slots
    k_buf = torch.randn(slots, hkv, d, generator=g)
    v_buf = torch.randn(slots, hkv, d, generator=g)
    table = torch.randperm(slots, generator=g)[: len(rows) * 16].view(len(rows), 16).to(torch.int32)
    import sglang.srt.model_executor.forward_context as fc
    buffers = {"k": k_buf, "v": v_buf}
    pool = SimpleNamespace(get_key_buffer=lambda layer: buffers["k"],
                           get_value_buffer=lambda layer: buffers["v"])
    monkeypatch.setattr(fc, "get_token_to_kv_pool", lambda: pool)
    monkeypatch.setattr(fc, "get_req_to_token_pool", lambda: SimpleNamespace(req_to_token=table))
    t = sum(n for _, n, _ in rows)
    q, k, v = torch.randn(t, (hq + 2 * hkv) * d, generator=g).split([hq * d, hkv * d, hkv * d], 1)
    layer = SimpleNamespace(tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                            layer_id=0, scaling=d ** -0.5)
    heads = (hq, hkv, d)
    ref = planned(rows, "reference", heads)(q, k, v, layer)
    tri = planned(rows, "triton", heads)(q, k, v, layer)
    buffers.update(k=k_buf.double(), v=v_buf.double())
    ref64 = planned(rows, "reference", heads)(q.double(), k.double(), v.double(), layer)
    e_tri = (tri.double() - ref64).abs().max().item()
    e_torch = (ref.double() - ref64).abs().max().item()
    assert e_tri <= 2 * e_torch + 1e-6, f"seed {seed}: triton {e_tri:.3g}, torch {e_torch:.3g}"
    # the grouped reference against its row-by-row twin, both in float32 against float64
    twin = planned(rows, "reference", heads)
    views = (q.view(t, hq, d), k.view(t, hkv, d), v.view(t, hkv, d))
    rows32 = twin._reference_rows(*views, k_buf, v_buf, table, layer).view(t, hq * d)
    e_rows = (rows32.double() - ref64).abs().max().item()
    assert e_torch <= 2 * e_rows + 1e-6, f"seed {seed}: grouped {e_torch:.3g}, rows {e_rows:.3g}"
    # row by row the float64 reference is core's attention over [prefix ; new] under core's mask
    from nemotron_sglang.core.attention import build_mask, reference_attention
    start = 0
    for i, (p, n, m) in enumerate(rows):
        keys = torch.cat([k_buf[table[i, :p].long()], k[start:start + n].view(n, hkv, d)]).double()
        vals = torch.cat([v_buf[table[i, :p].long()], v[start:start + n].view(n, hkv, d)]).double()
        want = reference_attention(q[start:start + n].view(n, hq, d).double(), keys, vals,
                                   build_mask(m, p, n), d ** -0.5)
        torch.testing.assert_close(ref64[start:start + n].view(n, hq, d), want, rtol=1e-12,
                                   atol=1e-12, msg=lambda msg: f"seed {seed} row {i}: {msg}")
        start += n


def _flashinfer_twin(q, k_new, v_new, cache, layer, batch, scale):
    """``paged_attention_flashinfer``'s contract in plain torch: it reads the cache the same way
    (``page_table(seq)[:pages]`` and ``k[layer].view(num_pages, page_size, Hkv, D)``)."""
    from nemotron_sglang.core.attention import build_mask, reference_attention

    ps, hkv, d = cache.page_size, k_new.shape[1], k_new.shape[2]
    kp = cache.k[layer].view(cache.num_pages, ps, hkv, d)
    vp = cache.v[layer].view(cache.num_pages, ps, hkv, d)
    out, start = [], 0
    for sid, n, p, m in zip(batch.seq_ids, batch.q_lens, batch.prefix_lens, batch.masks):
        pages = torch.tensor(cache.page_table(sid)[: -(-p // ps)], dtype=torch.long)
        keys = torch.cat([kp[pages].reshape(-1, hkv, d)[:p], k_new[start:start + n]])
        vals = torch.cat([vp[pages].reshape(-1, hkv, d)[:p], v_new[start:start + n]])
        out.append(reference_attention(q[start:start + n], keys, vals, build_mask(m, p, n), scale))
        start += n
    return torch.cat(out)


def test_flashinfer_route_hands_the_pool_over_as_a_paged_cache(monkeypatch):
    """No FlashInfer here: the call it would get is checked by a twin reading the same view."""
    from nemotron_sglang.kernels import flashinfer_attention

    calls = []

    def twin(*args):
        calls.append(args)
        return _flashinfer_twin(*args)

    monkeypatch.setattr(flashinfer_attention, "paged_attention_flashinfer", twin)
    g = torch.Generator().manual_seed(31)
    hq, hkv, d, slots = 4, 2, 16, 64
    rows = [(5, 3 * (4 + 1), quadratic(4)), (0, 4, CAUSAL), (7, 1, CAUSAL), (3, 4, BIDIRECTIONAL)]
    k_buf, v_buf = torch.randn(slots, hkv, d, generator=g), torch.randn(slots, hkv, d, generator=g)
    table = torch.randperm(slots, generator=g)[: len(rows) * 16].view(len(rows), 16).to(torch.int32)
    pool = SimpleNamespace(get_key_buffer=lambda layer: k_buf, get_value_buffer=lambda layer: v_buf)
    t = sum(n for _, n, _ in rows)
    q, k, v = (torch.randn(t, h * d, generator=g) for h in (hq, hkv, hkv))
    layer = SimpleNamespace(tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                            layer_id=0, scaling=d ** -0.5)
    heads = (hq, hkv, d)
    ref = planned(rows, "reference", heads).attend(q, k, v, layer, pool, table)
    fi = planned(rows, "flashinfer", heads).attend(q, k, v, layer, pool, table)
    assert len(calls) == 1
    torch.testing.assert_close(fi, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="flashinfer"):
        planned(rows, "flash", heads)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_a_padded_step_gives_the_same_outputs_and_kv(impl):
    """A step padded to a bucket (``core.step_plan.Bucket``) against the same step unpadded: every
    real token's attention output and every K/V write equal; padding writes land only on
    SGLang's padding slot 0."""
    from nemotron_sglang.core.step_plan import Bucket, StepPlan

    g = torch.Generator().manual_seed(41)
    hq, hkv, d, slots = 4, 2, 16, 200
    rows = [(1, 4, BIDIRECTIONAL)] + PASSES["mixed"]     # token 0 writes nothing
    table = (1 + torch.randperm(slots - 1, generator=g))[: len(rows) * 16].view(len(rows), 16)
    table = table.to(torch.int32)
    k_buf, v_buf = torch.randn(slots, hkv, d, generator=g), torch.randn(slots, hkv, d, generator=g)
    layer = SimpleNamespace(tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                            layer_id=0, scaling=d ** -0.5)
    plan_rows = []
    dest_base = 0
    for i, (p, n, m) in enumerate(rows):
        writes = 0 if m == BIDIRECTIONAL else len(m.kv_write_offsets(n))
        plan_rows.append(PlanRow(i, p, n, m, writes=writes, write_base=dest_base))
        dest_base += writes
    dest = 150 + torch.arange(dest_base)               # the step's canvas slots (out_cache_loc)

    def run(bucket):
        pools = {"k": k_buf.clone(), "v": v_buf.clone()}

        def set_kv(layer, loc, k, v):
            pools["k"][loc.long()] = k
            pools["v"][loc.long()] = v
        pool = SimpleNamespace(get_key_buffer=lambda layer: pools["k"],
                               get_value_buffer=lambda layer: pools["v"], set_kv_buffer=set_kv)
        att = RowAttention.planned(plan_rows, impl, "cpu", HeadShape(hq, hkv, d), bucket)
        att.kv_slots = att.plan.write_slots(dest)
        tp = att.plan.ids.shape[0]
        gq = torch.Generator().manual_seed(42)        # the same real tokens, then padding
        t = att.plan.num_tokens
        real = [torch.randn(t, h * d, generator=gq) for h in (hq, hkv, hkv)]
        q, k, v = (torch.cat([x, torch.randn(tp - t, x.shape[1])]) for x in real)
        return att.attend(q, k, v, layer, pool, table)[:t], pools

    plain, plain_pools = run(None)
    t = plain.shape[0]
    tiles = StepPlan.build(plan_rows, "cpu", tile_tokens=4).tiles.shape[1]
    padded, padded_pools = run(Bucket(tokens=t + 9, rows=len(rows) + 2, writes=dest_base + 3,
                                      tiles=tiles * 4 + 6))
    torch.testing.assert_close(padded, plain, rtol=0, atol=0)
    for name in ("k", "v"):
        real = torch.ones(slots, dtype=torch.bool)
        real[0] = False
        assert torch.equal(padded_pools[name][real], plain_pools[name][real]), name
        assert not torch.equal(plain_pools[name][150:150 + dest_base],
                               (k_buf if name == "k" else v_buf)[150:150 + dest_base])


def _trace(monkeypatch, rows, bucket):
    """The ops (name, shapes, dtypes) and kernel launches (grid, arguments: tensors by shape and
    dtype, scalars by value) of one layer's attention of a step of ``rows``; launches are
    recorded, not run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from nemotron_sglang.kernels import triton_attention

    jit = triton_attention._jit()
    trace = []

    def describe(x):
        if isinstance(x, torch.Tensor):
            return ("tensor", tuple(x.shape), x.dtype)
        return ("value", x)

    class Launch:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                trace.append((self.name, tuple(grid), tuple(describe(a) for a in args),
                              tuple(sorted((k, describe(v)) for k, v in kwargs.items()))))
            return launch

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            trace.append((str(func), tuple(describe(a) for a in args
                                           if isinstance(a, torch.Tensor))))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(jit, "paged_attention_kernel", Launch("attention"))
    monkeypatch.setattr(jit, "merge_splits_kernel", Launch("merge"))
    monkeypatch.setattr(triton_attention, "_check_interpreter", lambda kernel, device: None)
    hq, hkv, d, slots = 4, 2, 16, 200
    k_buf, v_buf = torch.randn(slots, hkv, d), torch.randn(slots, hkv, d)
    pool = SimpleNamespace(get_key_buffer=lambda layer: k_buf, get_value_buffer=lambda layer: v_buf,
                           set_kv_buffer=lambda layer, loc, k, v: k_buf.index_put_((loc.long(),), k))
    table = torch.randint(1, slots, (8, 64), dtype=torch.int32)
    layer = SimpleNamespace(tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                            layer_id=0, scaling=d ** -0.5)
    att = RowAttention.planned(rows, "triton", "cpu", HeadShape(hq, hkv, d), bucket)
    att.kv_slots = att.plan.write_slots(150 + torch.arange(16))
    tp = att.plan.ids.shape[0]
    q, k, v = (torch.randn(tp, h * d) for h in (hq, hkv, hkv))
    with Ops():
        att.attend(q, k, v, layer, pool, table)
    return trace


def test_two_row_mixes_in_one_bucket_run_the_same_trace(monkeypatch):
    """What a captured graph replays: two different mixes of modes padded to one bucket run the
    same ops on the same shapes and the same kernel launches (grid, shapes, constants); without
    the bucket they differ (the control)."""
    from nemotron_sglang.core.step_plan import Bucket

    mix_a = [PlanRow(0, 30, 1, CAUSAL, writes=1, write_base=0),
             PlanRow(1, 12, 1, CAUSAL, writes=1, write_base=4),
             PlanRow(2, 41, 4, BIDIRECTIONAL, lora=True),
             PlanRow(3, 7, 4, CAUSAL, writes=3, write_base=12)]
    mix_b = [PlanRow(5, 20, 3 * (4 + 1), quadratic(4), writes=3, write_base=0),
             PlanRow(6, 48, 1, CAUSAL, writes=1, write_base=8)]
    bucket = Bucket(tokens=32, rows=6, writes=8, tiles=12, tile_tokens=8, splits=2, max_prefix=48)
    assert _trace(monkeypatch, mix_a, bucket) == _trace(monkeypatch, mix_b, bucket)
    assert _trace(monkeypatch, mix_a, None) != _trace(monkeypatch, mix_b, None)

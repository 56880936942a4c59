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
from conftest import TRITON_INTERPRET_AT_START as _INTERPRET_BEFORE  # noqa: E402
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"      # before the kernel module is first loaded
pytest.importorskip("sglang")
pytest.importorskip("triton")

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, quadratic  # noqa: E402
from nemotron_sglang.sglang_plugin.custom_pass import RowAttention, RowSpec  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _restore_interpret_env():
    yield
    if _INTERPRET_BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


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
    specs = [RowSpec(i, p, n, m) for i, (p, n, m) in enumerate(rows)]
    ref = RowAttention(specs, "reference")(q, k, v, layer)
    tri = RowAttention(specs, "triton")(q, k, v, layer)
    buffers.update(k=k_buf.double(), v=v_buf.double())
    ref64 = RowAttention(specs, "reference")(q.double(), k.double(), v.double(), layer)
    e_tri = (tri.double() - ref64).abs().max().item()
    e_torch = (ref.double() - ref64).abs().max().item()
    assert e_tri <= 2 * e_torch + 1e-6, f"seed {seed}: triton {e_tri:.3g}, torch {e_torch:.3g}"
    # the grouped reference against its row-by-row twin, both in float32 against float64
    twin = RowAttention(specs, "reference")
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
    specs = [RowSpec(i, p, n, m) for i, (p, n, m) in enumerate(rows)]
    ref = RowAttention(specs, "reference").attend(q, k, v, layer, pool, table)
    fi = RowAttention(specs, "flashinfer").attend(q, k, v, layer, pool, table)
    assert len(calls) == 1
    torch.testing.assert_close(fi, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="flashinfer"):
        RowAttention(specs, "flash")

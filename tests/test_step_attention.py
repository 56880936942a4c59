"""A planned step's reference attention (``core.step_attention``) and core's decoder loop on
planned steps: the grouped attention equals its row-by-row twin and core's per-row oracle over
the paged cache; the token→slot table is the page table's; a step is ONE forward whatever its
mix of modes, and mixing changes no request's tokens."""

from __future__ import annotations

import random

import pytest
import torch

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, paged_attention, quadratic
from nemotron_sglang.core.batch import ForwardBatch
from nemotron_sglang.core.decoding import DecodeParams, Request, default_cache, make_decoder
from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.core.step_attention import PlanReference, reference_step
from nemotron_sglang.core.step_plan import HeadShape, PlanRow
from nemotron_sglang.core.weights import load_model, write_tiny_checkpoint

SEED = random.randrange(1 << 30)


def _cache_with(rng: random.Random, lengths: list[int], page: int, heads: HeadShape,
                dtype=torch.float64) -> PagedKVCache:
    cache = PagedKVCache(num_layers=1, num_kv_heads=heads.kv_heads, head_dim=heads.head_dim,
                         num_pages=sum(-(-(n + 40) // page) for n in lengths) + 4,
                         page_size=page, dtype=dtype, shuffle_seed=rng.randrange(1 << 20))
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    cache.k.copy_(torch.randn(cache.k.shape, generator=g, dtype=dtype))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g, dtype=dtype))
    for sid, n in enumerate(lengths):
        cache.add(sid)
        if n:
            cache.append(sid, n)
            cache.commit(sid, n)
    return cache


@pytest.mark.parametrize("page", [1, 3, 16])
def test_slot_table_is_the_page_table(page):
    rng = random.Random(SEED + page)
    lengths = [rng.randrange(0, 50) for _ in range(5)]
    cache = _cache_with(rng, lengths, page, HeadShape(2, 1, 4))
    width = max(lengths) + 3
    table = cache.slot_table(list(range(5)), width)
    assert table.shape == (5, width)
    for sid, n in enumerate(lengths):
        assert table[sid, :n].tolist() == cache.slots(sid, 0, n).tolist(), (sid, SEED)


@pytest.mark.parametrize("trial", range(4))
def test_grouped_equals_row_twin_and_the_paged_oracle(trial):
    rng = random.Random(SEED * 7 + trial)
    heads = HeadShape(4, 2, 8)
    block = rng.choice([2, 4])
    kinds = [rng.choice(["ar", "draft", "verify", "quadratic"]) for _ in range(rng.randrange(1, 8))]
    lengths = [rng.randrange(0, 30) for _ in kinds]
    cache = _cache_with(rng, lengths, rng.choice([1, 4]), heads)
    rows = []
    for sid, (kind, n) in enumerate(zip(kinds, lengths)):
        mask, q = {"ar": (CAUSAL, 1), "draft": (BIDIRECTIONAL, block),
                   "verify": (CAUSAL, block + 1)}.get(kind, (quadratic(block), 0))
        if kind == "quadratic":
            q = rng.randrange(1, block + 1) * (block + 1)
        rows.append(PlanRow(sid, n, q, mask, [0] * q, list(range(n, n + q))))
    plan, _ = reference_step(rows, cache, list(range(len(rows))),
                             torch.zeros(0, dtype=torch.long), heads)
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    t = plan.num_tokens
    q = torch.randn(t, heads.q_heads, heads.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(t, heads.kv_heads, heads.head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(t, heads.kv_heads, heads.head_dim, generator=g, dtype=torch.float64)
    attention = PlanReference(plan, cache.slot_table(list(range(len(rows))), plan.max_prefix))
    grouped = attention(q, k, v, cache.k[0], cache.v[0], 0.3)
    twin = attention.rows(q, k, v, cache.k[0], cache.v[0], 0.3)
    batch = ForwardBatch(torch.zeros(t, dtype=torch.long), torch.zeros(t, dtype=torch.long),
                         tuple(range(len(rows))), tuple(r.q_len for r in rows),
                         tuple(r.prefix_len for r in rows), tuple(r.mask for r in rows))
    oracle = paged_attention(q, k, v, cache, 0, batch, 0.3)
    torch.testing.assert_close(twin, oracle, rtol=1e-12, atol=1e-12, msg=f"seed {SEED}")
    torch.testing.assert_close(grouped, oracle, rtol=1e-10, atol=1e-10, msg=f"seed {SEED}")


@pytest.fixture(scope="module")
def model():
    import tempfile
    d = write_tiny_checkpoint(tempfile.mkdtemp() + "/ckpt", seed=5, with_lora=True)
    return load_model(d, dtype=torch.float64)


def test_a_step_is_one_forward_and_mixing_changes_no_tokens(model):
    rng = random.Random(SEED)
    modes = ["ar", "diffusion", "linear_spec", "quadratic_spec"]
    reqs = [Request([rng.randrange(101, 500) for _ in range(rng.randrange(1, 9))], m,
                    DecodeParams(max_new_tokens=rng.randrange(4, 14)))
            for m in modes for _ in range(2)]
    cache = default_cache(model, reqs)
    dec = make_decoder(model, cache)
    mixed = dec.run(reqs)
    assert dec.stats.model_calls == dec.stats.steps, "one forward per step"
    assert cache.num_free_pages == cache.num_pages
    for r, m in zip(reqs, mixed):
        alone = make_decoder(model, default_cache(model, [r])).run([r])[0]
        assert (m.output_ids, m.forwards, m.finish_reason) == \
            (alone.output_ids, alone.forwards, alone.finish_reason), (r.mode, SEED)


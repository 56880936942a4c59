"""The Triton paged block attention and KV-write kernels against core's reference attention.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` (set below, before any
Triton kernel is decorated; triton 3.x reads it at decoration time) in fp32 and fp16 — the
interpreter gets bf16 wrong. Accuracy rule: relative error (Frobenius) against an fp64
reference (core's ``paged_attention`` on float64 copies of the same inputs) must be at most
2× the error plain PyTorch ``reference_attention`` gets in the same dtype, plus a tiny floor,
in each case; and over a sweep of every scenario, the median ratio per dtype is at most
``MEDIAN_RATIO_MAX`` (a systematically worse kernel fails there even when each case is within 2×).
Seeds are fresh per session (``NLD_TEST_SEED`` pins one); every message names its seed.
``@pytest.mark.gpu`` tests run real shapes (32/8 heads, head_dim 128, bf16) on CUDA only.
Run the sweep with ``-s`` to see its table of measured error ratios.
"""

from __future__ import annotations

import copy
import os
import random
import statistics

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from nemotron_sglang.core.attention import (BIDIRECTIONAL, CAUSAL, paged_attention,  # noqa: E402
                                            quadratic)
from nemotron_sglang.core.batch import ForwardBatch, PassRow  # noqa: E402
from nemotron_sglang.core.decoding import DecodeParams, Request, generate  # noqa: E402
from nemotron_sglang.core.kv_cache import PagedKVCache  # noqa: E402
from nemotron_sglang.core.weights import load_model  # noqa: E402
from nemotron_sglang.kernels import (attention_for_forward, commit_lengths_, kv_write,  # noqa: E402
                                     kv_write_torch, kv_write_triton, paged_attention_triton,
                                     staging_slots)

DEV = torch.device("cuda" if CUDA else "cpu")
from nemotron_sglang.kernels.step import triton_step  # noqa: E402
from conftest import SEED  # noqa: E402  (the session seed; NLD_TEST_SEED pins it)
FLOOR = {torch.float32: 1e-7, torch.float16: 1e-5, torch.bfloat16: 1e-4}
# the sweep's bound on the median (per dtype) of kernel err / torch err. Measured on 15 seeds:
# fp32 0.95-1.03, fp16 1.09-1.15; a kernel keeping its running output in fp16 gets 1.51-1.65
# there while each of its cases stays within the 2x bound
MEDIAN_RATIO_MAX = 1.3


pytestmark = pytest.mark.usefixtures("restore_triton_interpret")


# ---- building random paged work -----------------------------------------------------------

def make_case(seed: int, dtype, page_size: int, rows, hq: int, hkv: int, d: int,
              layer: int = 1, device=DEV):
    """rows: (prefix_len, q_len, MaskSpec). Prefix K/V random in scattered pages of ``layer``."""
    g = torch.Generator().manual_seed(seed)
    need = sum(-(-(p + n) // page_size) + 1 for p, n, _ in rows)
    cache = PagedKVCache(num_layers=2, num_kv_heads=hkv, head_dim=d, num_pages=need + 7,
                         page_size=page_size, dtype=dtype, device=device, shuffle_seed=seed)
    prs = []
    for i, (p, n, mask) in enumerate(rows):
        sid = 10 + 3 * i
        cache.add(sid)
        cache.append(sid, p + n)                       # a staged tail beyond the prefix too
        if p:
            slots = cache.slots(sid, 0, p)
            kv = torch.randn(2, p, hkv, d, generator=g)
            cache.write(layer, slots, kv[0].to(dtype), kv[1].to(dtype))
        cache.commit(sid, p)
        cache.append(sid, n)
        prs.append(PassRow(sid, [0] * n, list(range(p, p + n)), p, mask))
    batch = ForwardBatch.from_rows(prs, device=device)
    t = batch.num_tokens
    # junk in every other pool slot: a kernel reading outside the prefix would pick it up
    junk = ~torch.zeros(cache.k.shape[1], dtype=torch.bool, device=device)
    for sid, p in zip(batch.seq_ids, batch.prefix_lens):
        junk[cache.slots(sid, 0, p)] = False
    cache.k[:, junk] = 1e4
    cache.v[:, junk] = 1e4
    q = torch.randn(t, hq, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(t, hkv, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(t, hkv, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v, cache, batch


def as_float64(cache: PagedKVCache) -> PagedKVCache:
    c = copy.copy(cache)
    c.k, c.v = cache.k.double(), cache.v.double()
    return c


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm())


def errors_against_oracle(name, q, k, v, cache, batch, layer=1, **overrides):
    """(kernel rel err, plain torch rel err in q's dtype), both against the fp64 reference."""
    scale = q.shape[-1] ** -0.5
    ref64 = paged_attention(q.double(), k.double(), v.double(), as_float64(cache), layer, batch,
                            scale)
    torch_out = paged_attention(q, k, v, cache, layer, batch, scale)
    out = paged_attention_triton(q, k, v, cache, layer, batch, scale, **overrides)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), f"{name} seed {SEED}: non-finite output"
    return rel_err(out, ref64), rel_err(torch_out, ref64)


def check_against_oracle(name, q, k, v, cache, batch, layer=1, **overrides):
    e_k, e_t = errors_against_oracle(name, q, k, v, cache, batch, layer, **overrides)
    assert e_k <= 2 * e_t + FLOOR[q.dtype], \
        f"{name} seed {SEED}: kernel rel err {e_k:.3e} > 2 × torch {e_t:.3e} + floor"
    return e_k, e_t


# ---- scenarios ------------------------------------------------------------------------------

def _scenario(name: str, rng: random.Random):
    """(rows, (hq, hkv, d)). Prefix lengths include 0 and 1; lengths avoid block multiples."""
    pre = lambda: rng.choice([0, 1, rng.randint(2, 70)])   # noqa: E731
    if name == "mixed":            # every mask kind in one launch
        return ([(0, 5, CAUSAL), (1, 7, BIDIRECTIONAL), (pre(), 12, quadratic(3)),
                 (37, 1, CAUSAL), (pre(), 15, quadratic(2))], (4, 2, 16))
    if name == "causal":
        return ([(p, rng.randint(1, 40), CAUSAL) for p in (0, 1, pre(), pre())], (4, 2, 32))
    if name == "bidirectional":    # group 3 and head_dim 24: non-power-of-two paths
        return ([(p, rng.randint(1, 33), BIDIRECTIONAL) for p in (1, 0, pre())], (6, 2, 24))
    if name == "quadratic":        # several rows, B = 1, 2, 4
        rows = []
        for p, b in ((0, rng.choice([1, 2])), (1, 4), (pre(), rng.choice([2, 4]))):
            rows.append((p, rng.randint(1, 5) * (b + 1), quadratic(b)))
        return rows, (4, 2, 16)
    if name == "decode":           # q_len 1, group 4
        return ([(p, 1, CAUSAL) for p in (0, 1, 2, pre(), pre(), 66)], (8, 2, 32))
    raise ValueError(name)


SCENARIOS = ("mixed", "causal", "bidirectional", "quadratic", "decode")
# page size decides the launch shape too: small tiles / forced kv split / default heuristics
PAGE_CONFIGS = {1: dict(block_m=16, block_n=16), 3: dict(block_m=16, block_n=16, num_splits=3),
                16: {}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("page_size", sorted(PAGE_CONFIGS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kernel_matches_reference(scenario, page_size, dtype):
    seed = SEED + 7919 * SCENARIOS.index(scenario) + 31 * page_size + (dtype == torch.float16)
    rows, (hq, hkv, d) = _scenario(scenario, random.Random(seed))
    q, k, v, cache, batch = make_case(seed, dtype, page_size, rows, hq, hkv, d)
    check_against_oracle(f"{scenario}/p{page_size}/{str(dtype)[6:]}", q, k, v, cache, batch,
                         **PAGE_CONFIGS[page_size])


def test_kv_split_equals_single_pass():
    seed = SEED + 5
    rows = [(70, 3, CAUSAL), (0, 2, BIDIRECTIONAL), (45, 8, quadratic(3))]
    q, k, v, cache, batch = make_case(seed, torch.float32, 5, rows, 4, 2, 16)
    one = paged_attention_triton(q, k, v, cache, 1, batch, 0.3, block_n=16, num_splits=1)
    four = paged_attention_triton(q, k, v, cache, 1, batch, 0.3, block_n=16, num_splits=4)
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-6, msg=f"seed {SEED}")


def test_attention_bound_to_one_forward():
    rows = [(23, 6, quadratic(2)), (0, 3, CAUSAL)]
    q, k, v, cache, batch = make_case(SEED + 13, torch.float32, 2, rows, 4, 2, 16)
    fn = attention_for_forward(batch, cache, num_heads=4, head_dim=16)
    want = paged_attention_triton(q, k, v, cache, 1, batch, 0.25)
    torch.testing.assert_close(fn(q, k, v, cache, 1, batch, 0.25), want, rtol=0, atol=0)
    other = ForwardBatch.from_rows([PassRow(10, [0], [23], 23, CAUSAL)], device=DEV)
    with pytest.raises(ValueError, match="another batch"):
        fn(q[:1], k[:1], v[:1], cache, 1, other, 0.25)


def test_layer_zero_and_reuse_of_metadata():
    """Layer 0 of the pool, then a second call on the same batch (memoised metadata)."""
    rows = [(9, 4, CAUSAL), (2, 3, BIDIRECTIONAL)]
    q, k, v, cache, batch = make_case(SEED + 11, torch.float32, 4, rows, 4, 2, 16, layer=0)
    check_against_oracle("layer0", q, k, v, cache, batch, layer=0)
    check_against_oracle("layer0-again", q, k, v, cache, batch, layer=0)


# ---- the whole model through the kernel -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from nemotron_sglang.core.weights import write_tiny_checkpoint
    d = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3, with_lora=True)
    ref = load_model(d, dtype=torch.float32)
    # the decoder's prefill and steps run the model's step attention: the kernel's (triton_step)
    tri = load_model(d, dtype=torch.float32, attention_fn=paged_attention_triton,
                     step_attention=triton_step)
    return ref, tri


def test_model_greedy_tokens_equal_reference_in_all_modes(tiny_models):
    ref, tri = tiny_models
    rng = random.Random(SEED)
    prompts = [[rng.randrange(101, 512) for _ in range(n)] for n in (1, 7, 13)]
    reqs = [Request(p, mode, DecodeParams(max_new_tokens=8))
            for mode in ("ar", "diffusion", "linear_spec", "quadratic_spec") for p in prompts]

    def run(model):
        cfg = model.config
        cache = PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                             head_dim=cfg.head_dim, num_pages=400, page_size=3,
                             dtype=model.dtype, shuffle_seed=SEED)
        return generate(model, reqs, cache)

    want, got = run(ref), run(tri)
    for r, w, g in zip(reqs, want, got):
        assert g.output_ids == w.output_ids, (r.mode, r.prompt_ids, SEED)
        assert g.finish_reason == w.finish_reason


# ---- KV write ---------------------------------------------------------------------------------

@pytest.mark.parametrize("src_dtype,pool_dtype", [(torch.float32, torch.float32),
                                                  (torch.float16, torch.float16),
                                                  (torch.float32, torch.float16)])
def test_kv_write_kernel_equals_torch_twin(src_dtype, pool_dtype):
    g = torch.Generator().manual_seed(SEED + 3)
    t, hkv, d, slots_total = 11, 3, 24, 40
    k_src = torch.randn(t, hkv, d, generator=g).to(DEV, src_dtype)
    v_src = torch.randn(t, hkv, d, generator=g).to(DEV, src_dtype)
    src = torch.randperm(t, generator=g)[:7].to(DEV)
    slots = torch.randperm(slots_total, generator=g)[:7].to(DEV)
    slots[2] = -1                                             # padding entry: skipped
    pools = [torch.randn(2, slots_total, hkv, d, generator=g).to(DEV, pool_dtype) for _ in range(2)]
    a = [p.clone() for p in pools]
    b = [p.clone() for p in pools]
    kv_write_triton(a[0][1], a[1][1], k_src, v_src, src, slots)
    kv_write_torch(b[0][1], b[1][1], k_src, v_src, src, slots)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][0], pools[0][0])                  # the other layer untouched
    changed = (a[0][1] != pools[0][1]).any(-1).any(-1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(s for s in slots.tolist() if s >= 0)


def test_kv_write_into_cache_matches_cache_write():
    g = torch.Generator().manual_seed(SEED + 4)
    cache = PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=16, num_pages=20, page_size=3,
                         device=DEV, shuffle_seed=SEED)
    twin = copy.deepcopy(cache)
    cache.add(0), twin.add(0)
    slots = cache.append(0, 8)
    twin.append(0, 8)
    k_new = torch.randn(12, 2, 16, generator=g).to(DEV)
    v_new = torch.randn(12, 2, 16, generator=g).to(DEV)
    idx = torch.tensor([1, 5, 0, 2, 6, 7, 9, 10], device=DEV)  # packed tokens whose KV is kept
    kv_write(cache, 1, k_new, v_new, idx, slots)
    twin.write(1, slots, k_new[idx], v_new[idx])
    assert torch.equal(cache.k, twin.k) and torch.equal(cache.v, twin.v)


def test_device_rollback_bookkeeping():
    cache = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=16, num_pages=30, page_size=4,
                         shuffle_seed=SEED)
    for sid, (length, staged) in enumerate([(5, 6), (0, 3), (11, 9)]):
        cache.add(sid)
        cache.append(sid, length)
        cache.commit(sid, length)
        cache.append(sid, staged)
    table, lengths = cache.page_tables([0, 1, 2])
    table = table.clamp(min=0)
    got = staging_slots(table, lengths, 3, cache.page_size)
    for sid in range(3):
        n = cache.length(sid)
        assert got[sid].tolist() == cache.slots(sid, n, n + 3).tolist()
    accepted = torch.tensor([2, 0, 4])
    commit_lengths_(lengths, accepted)
    assert lengths.tolist() == [5 + 3, 0 + 1, 11 + 5]


# ---- the sweep: error ratios in aggregate -------------------------------------------------------

def test_median_error_ratio_over_a_sweep():
    """Every scenario in fp32 and fp16 (page size 16, the default launch heuristics), fresh
    seeds: per dtype, the median of (kernel err / torch err), both against the fp64 reference, is
    at most ``MEDIAN_RATIO_MAX``, and each case is within the per-case bound. Prints the table."""
    ratios: dict[torch.dtype, list[float]] = {torch.float32: [], torch.float16: []}
    failures = []
    print(f"\n[kernel accuracy, seed {SEED}]")
    for i, scenario in enumerate(SCENARIOS):
        for dtype in ratios:
            seed = SEED + 104729 + 7919 * i + (dtype == torch.float16)
            rows, (hq, hkv, d) = _scenario(scenario, random.Random(seed))
            q, k, v, cache, batch = make_case(seed, dtype, 16, rows, hq, hkv, d)
            name = f"{scenario}/{str(dtype)[6:]}"
            e_k, e_t = errors_against_oracle(name, q, k, v, cache, batch)
            ratios[dtype].append(e_k / e_t if e_t else float("inf"))
            print(f"  {name:24s} kernel {e_k:.2e}  torch {e_t:.2e}  ratio {ratios[dtype][-1]:.2f}")
            if e_k > 2 * e_t + FLOOR[dtype]:
                failures.append(f"{name}: kernel {e_k:.3e} > 2 × torch {e_t:.3e} + floor")
    medians = {str(dt)[6:]: round(statistics.median(r), 3) for dt, r in ratios.items()}
    print(f"  median ratio per dtype: {medians}")
    assert all(m <= MEDIAN_RATIO_MAX for m in medians.values()), \
        f"seed {SEED}: median kernel/torch error ratio {medians} > {MEDIAN_RATIO_MAX}"
    assert not failures, f"seed {SEED}: {failures}"


# ---- GPU: real shapes -------------------------------------------------------------------------

gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("scenario", ["decode", "block32", "quadratic32", "mixed"])
def test_real_shapes_bf16_on_gpu(scenario):
    rng = random.Random(SEED)
    ctx = lambda: rng.randint(1, 3000)              # noqa: E731
    rows = {
        "decode": [(ctx(), 1, CAUSAL) for _ in range(16)] + [(0, 1, CAUSAL), (1, 1, CAUSAL)],
        "block32": [(ctx(), 32, BIDIRECTIONAL) for _ in range(4)] + [(ctx(), 32, CAUSAL)],
        "quadratic32": [(ctx(), 32 * 33, quadratic(32)), (0, 5 * 33, quadratic(32))],
        "mixed": [(ctx(), 1, CAUSAL), (ctx(), 32, BIDIRECTIONAL), (ctx(), 3 * 33, quadratic(32)),
                  (0, 300, CAUSAL)],
    }[scenario]
    q, k, v, cache, batch = make_case(SEED, torch.bfloat16, 16, rows, 32, 8, 128)
    check_against_oracle(f"gpu/{scenario}", q, k, v, cache, batch)


@pytest.mark.gpu
@gpu
def test_kv_write_real_shape_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(SEED)
    k_src = torch.randn(1056, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    v_src = torch.randn_like(k_src)
    slots = torch.randperm(65536, device="cuda", generator=g)[:33]
    src = torch.arange(33, device="cuda") * 33
    a = [torch.zeros(65536, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    b = [x.clone() for x in a]
    kv_write_triton(a[0], a[1], k_src, v_src, src, slots)
    kv_write_torch(b[0], b[1], k_src, v_src, src, slots)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

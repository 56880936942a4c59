"""Planned steps of core's model and their captured graphs (``kernels.step_graphs``).

- The planned step (``NLDModel.step_hidden`` + ``kernels.step.PlanAttention``) equals core's own
  forward of the same rows; the attention's PyTorch twin (``kernels.plan_attention``) equals the
  Triton kernel (interpreted on CPU) and core's reference, padded or not.
- Graph replay == eager for mixes of every mode (ar, draft with the LoRA, verify, quadratic),
  a different mix replayed after the capture, hidden states and the K/V written; on CPU the
  graphs are emulated (the capture-time call replayed: what a graph freezes is frozen here too),
  and a forward that reads a per-step value from Python is caught (the negative control).
- On CUDA (``gpu``): the same with real CUDA graphs and the Triton kernel.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from nemotron_sglang.core.attention import (BIDIRECTIONAL, CAUSAL, paged_attention,  # noqa: E402
                                            quadratic)
from nemotron_sglang.core.batch import ForwardBatch, PassRow  # noqa: E402
from nemotron_sglang.core.config import preset  # noqa: E402
from nemotron_sglang.core.kv_cache import PagedKVCache  # noqa: E402
from nemotron_sglang.core.model import NLDModel  # noqa: E402
from nemotron_sglang.core.step_plan import Bucket, PlanRow  # noqa: E402
from nemotron_sglang.kernels.step import (HeadShape, PlanAttention, plan_step,  # noqa: E402
                                          step_config)
from nemotron_sglang.kernels.step_graphs import StepGraphs  # noqa: E402
from conftest import SEED  # noqa: E402

B = 4                                   # the tiny preset's block
PAD_SEQ = 99


pytestmark = pytest.mark.usefixtures("restore_triton_interpret")


class World:
    """A tiny NLD model with a LoRA, a paged cache holding random committed prefixes for
    sequences 0..7 (and a padding sequence whose one slot takes padding writes), and the device
    page table."""

    def __init__(self, seed: int, device, dtype=torch.float32):
        torch.manual_seed(seed)
        cfg = preset("tiny")
        self.cfg = cfg
        self.model = NLDModel(cfg).to(device=device, dtype=dtype).eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        lora = [(torch.randn(8, cfg.q_size, generator=g) * 0.2,
                 torch.randn(cfg.hidden_size, 8, generator=g) * 0.2)
                for _ in range(cfg.num_hidden_layers)]
        self.model.set_lora([(a.to(device), b.to(device)) for a, b in lora], 1.0)
        self.cache = PagedKVCache(num_layers=cfg.num_hidden_layers,
                                  num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                                  num_pages=128, page_size=4, dtype=dtype, device=device,
                                  shuffle_seed=seed)
        rng = random.Random(seed)
        self.prefix = {}
        for sid in range(8):
            self.cache.add(sid)
            n = rng.randrange(1, 40)
            self.cache.append(sid, n)
            self.cache.commit(sid, n)
            self.prefix[sid] = n
        self.cache.add(PAD_SEQ)
        self.pad_slot = int(self.cache.append(PAD_SEQ, 1)[0])
        self.cache.k.copy_(torch.randn(self.cache.k.shape, generator=g).to(dtype))
        self.cache.v.copy_(torch.randn(self.cache.v.shape, generator=g).to(dtype))
        table, _ = self.cache.page_tables(list(range(8)))
        self.page_table = table.clamp(min=0).to(torch.int32)
        self.heads = HeadShape(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.device = device

    def mix(self, rng: random.Random, kinds: list[str]) -> tuple[list[PlanRow], torch.Tensor]:
        """Rows of the given kinds on distinct sequences, and their K/V destination slots (the
        next positions of each writing sequence, staged)."""
        rows, dest = [], []
        for sid, kind in zip(rng.sample(range(8), len(kinds)), kinds):
            p = self.prefix[sid]
            if kind == "ar":
                mask, n, writes, lora = CAUSAL, 1, 1, False
            elif kind == "draft":
                mask, n, writes, lora = BIDIRECTIONAL, B, 0, True
            elif kind == "verify":
                mask, n, writes, lora = CAUSAL, B, B, False
            else:
                mask, n, writes, lora = quadratic(B), 2 * (B + 1), 2, False
            pos = ([p + o for o in range(n)] if mask != quadratic(B)
                   else [p + r + s for r in range(2) for s in range(B + 1)])
            ids = [rng.randrange(0, self.cfg.vocab_size) for _ in range(n)]
            rows.append(PlanRow(sid, p, n, mask, ids, pos, lora, writes, len(dest)))
            dest += self.cache.append(sid, writes).tolist() if writes else []
        return rows, torch.tensor(dest, dtype=torch.long, device=self.device)

    def forward(self, impl: str, cache=None):
        """The model's planned step over ``cache``: ``forward(plan, dest) -> hidden [Tp, H]``."""
        def run(plan, dest):
            config = step_config(plan.rows, self.heads, self.device, plan.bucket)
            attend = PlanAttention(plan, config, cache or self.cache, self.page_table,
                                   plan.write_slots(dest, self.pad_slot), impl)
            return self.model.step_hidden(plan, attend)
        return run


def forked(world: World) -> PagedKVCache:
    c = copy.copy(world.cache)
    c.k, c.v = world.cache.k.clone(), world.cache.v.clone()
    return c


def eager(world: World, rows, dest, impl: str):
    cache = forked(world)
    plan, _ = plan_step(rows, "triton", world.device, world.heads, tiled=True)
    return world.forward(impl, cache)(plan, dest)[:plan.num_tokens], cache


def test_the_planned_step_equals_cores_forward():
    """No LoRA, no writes: core's ``forward`` of the same rows (per-row masks, reference
    attention) against ``step_hidden`` with the twin and with the (interpreted) kernel."""
    world = World(SEED, torch.device("cpu"), torch.float64)
    rows, dest = world.mix(random.Random(SEED), ["ar", "draft", "quadratic", "verify"])
    rows = [PlanRow(r.table_row, r.prefix_len, r.q_len, r.mask, r.token_ids, r.positions)
            for r in rows]
    batch = ForwardBatch.from_rows([PassRow(r.table_row, r.token_ids, r.positions, r.prefix_len,
                                            r.mask) for r in rows])
    world.model.attention_fn = paged_attention
    want = world.model(batch, world.cache, lazy=True).hidden
    for impl in ("reference", "triton"):
        got, _ = eager(world, rows, dest[:0], impl)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m: f"{impl}: {m}")


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_the_twin_equals_the_kernel_padded_or_not(seed):
    world = World(seed, torch.device("cpu"))
    rows, dest = world.mix(random.Random(seed), ["quadratic", "ar", "draft", "verify", "ar"])
    bucket = Bucket(tokens=40, rows=8, writes=12, tiles=24, tile_tokens=8, splits=2,
                    max_prefix=48)
    for b in (None, bucket):
        outs = {}
        for impl in ("reference", "triton"):
            cache = forked(world)
            plan, _ = plan_step(rows, "triton", world.device, world.heads, b, tiled=True)
            outs[impl] = (world.forward(impl, cache)(plan, dest)[:plan.num_tokens], cache)
        (h_ref, c_ref), (h_tri, c_tri) = outs["reference"], outs["triton"]
        torch.testing.assert_close(h_tri, h_ref, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(c_tri.k, c_ref.k, rtol=2e-5, atol=2e-5)


MIXES = [["ar", "ar", "draft"], ["quadratic", "verify"], ["draft", "draft", "ar", "quadratic"]]


def replay_equals_eager(world: World, mode: str, impl: str, tol: float, forward=None):
    buckets = [Bucket(tokens=16, rows=4, writes=8, tiles=8, tile_tokens=8, splits=1,
                      max_prefix=40),
               Bucket(tokens=48, rows=6, writes=16, tiles=16, tile_tokens=8, splits=2,
                      max_prefix=40)]
    cache = forked(world)
    graphs = StepGraphs(forward or world.forward(impl, cache), buckets, world.device,
                        world.heads, dest_size=32, mode=mode, pad_slot=world.pad_slot)
    assert graphs.capture() == buckets
    rng = random.Random(SEED)
    for kinds in MIXES:                       # different mixes, replayed after one capture
        rows, dest = world.mix(rng, kinds)
        want, want_cache = eager(world, rows, dest, impl)
        got, plan = graphs.run(rows, dest)
        assert plan.bucket is not None, kinds
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{kinds}: {m}")
        real = torch.ones(cache.k.shape[1], dtype=torch.bool, device=world.device)
        real[world.pad_slot] = False
        for name in ("k", "v"):
            torch.testing.assert_close(getattr(cache, name)[:, dest], getattr(want_cache, name)[:, dest],
                                       rtol=tol, atol=tol)
        cache.k.copy_(world.cache.k), cache.v.copy_(world.cache.v)    # back to the prefixes
    assert graphs.replays == len(MIXES) and graphs.eager == 0
    big, dest = world.mix(rng, ["quadratic"] * 3 + ["verify"] * 3)   # fits no bucket: eager
    graphs.run(big, dest)
    assert graphs.eager == 1


def test_emulated_graphs_replay_equals_eager():
    replay_equals_eager(World(SEED, torch.device("cpu")), "emulate", "reference", 1e-5)


def test_a_forward_reading_python_per_step_is_caught():
    """The negative control: a forward that decides the LoRA from a Python flag of the plan
    (``uses_lora``, False for the capture's one-token step) replays without the LoRA."""
    world = World(SEED, torch.device("cpu"))
    cache = forked(world)
    good = world.forward("reference", cache)

    class FrozenFlag:
        def __init__(self, plan):
            self._plan = plan

        def __getattr__(self, name):
            if name == "lora":
                lora = self._plan.lora
                return lora if self._plan.uses_lora else torch.zeros_like(lora)
            return getattr(self._plan, name)

    def bad(plan, dest):
        return good(FrozenFlag(plan), dest)

    with pytest.raises(AssertionError):
        replay_equals_eager(world, "emulate", "reference", 1e-5, forward=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_replay_equals_eager(dtype):
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    replay_equals_eager(World(SEED, torch.device("cuda"), dtype), "cuda", "triton", tol)


def test_dynamo_traces_the_planned_step_without_a_break():
    """``torch._dynamo.explain`` of a planned step of every kind of row (the twin attention, the
    K/V writes, the per-token LoRA): one graph, no break."""
    import torch._dynamo as dynamo

    world = World(SEED, torch.device("cpu"))
    rows, dest = world.mix(random.Random(SEED), ["ar", "draft", "quadratic", "verify"])
    plan, _ = plan_step(rows, "triton", world.device, world.heads, tiled=True)
    explained = dynamo.explain(world.forward("reference", forked(world)))(plan, dest)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1

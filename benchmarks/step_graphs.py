"""Canvas-step time eager against a captured-graph replay (``kernels.step_graphs``), through
core's model at NLD-8B shapes (random bf16 weights, 34 layers, the drafting LoRA installed).

A step is every row's pass planned once (``core.step_plan``) and run by ``NLDModel.step_hidden``
with the Triton kernel (``kernels.step.PlanAttention``, K/V written): rows of ar (1 token,
causal) or linear_spec drafts (32 tokens, bidirectional, LoRA) over a ``--context``-token
prefix each. "eager" plans the unpadded step and runs it; "graph" plans it into its bucket's
buffer and replays that bucket's graph (captured once, before timing). Wall time per step,
CUDA-synchronised, median of ``--reps``; "equal" checks the replay's hidden states against
eager ones (max |diff|, bf16).

    python benchmarks/step_graphs.py                 # GPU: 8B, rows 1 / 4 / 16
    python benchmarks/step_graphs.py --smoke         # CPU: tiny preset, emulated graphs
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import time

import torch

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL
from nemotron_sglang.core.config import preset
from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.core.model import NLDModel
from nemotron_sglang.core.step_plan import Bucket, PlanRow
from nemotron_sglang.kernels.step import HeadShape, PlanAttention, plan_step, step_config
from nemotron_sglang.kernels.step_graphs import StepGraphs
from nemotron_sglang.testing.bench import hardware, print_table


def build(cfg, dtype, device, rows: int, context: int, block: int):
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = NLDModel(cfg).eval()
        lora = [(torch.randn(16, cfg.q_size) * 0.01, torch.randn(cfg.hidden_size, 16) * 0.01)
                for _ in range(cfg.num_hidden_layers)]
    torch.set_default_dtype(prev)
    model.set_lora(lora, 1.0)
    cache = PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                         head_dim=cfg.head_dim, num_pages=rows * (context + 2 * block) // 16 + 8,
                         page_size=16, dtype=dtype, device=device, shuffle_seed=0)
    for sid in range(rows):
        cache.add(sid)
        cache.append(sid, context)
        cache.commit(sid, context)
    cache.add(rows)                                       # the padding writes' slot
    pad_slot = int(cache.append(rows, 1)[0])
    table = cache.page_tables(list(range(rows)))[0].clamp(min=0).to(torch.int32)
    return model, cache, table, pad_slot


def step_rows(kind: str, n: int, context: int, block: int, cache) -> tuple[list, torch.Tensor]:
    rows, dest = [], []
    for sid in range(n):
        q, mask, lora, writes = ((1, CAUSAL, False, 1) if kind == "ar"
                                 else (block, BIDIRECTIONAL, True, 0))
        rows.append(PlanRow(sid, context, q, mask, [7] * q, list(range(context, context + q)),
                            lora, writes, len(dest)))
        if writes:
            dest += cache.append(sid, writes).tolist()
    return rows, torch.tensor(dest, dtype=torch.long, device=cache.k.device)


def timed(fn, reps: int, cuda: bool) -> float:
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny preset, emulated graphs")
    ap.add_argument("--rows", type=int, nargs="+", default=None)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        print("no CUDA device: run with --smoke for the CPU check (emulated graphs)")
        return
    cfg = preset("tiny" if a.smoke else "8b")
    dtype = torch.float32 if a.smoke else torch.bfloat16
    device = torch.device("cuda" if cuda else "cpu")
    rows_list = a.rows or ([1, 2] if a.smoke else [1, 4, 16])
    context = a.context or (24 if a.smoke else 2048)
    reps = a.reps or (2 if a.smoke else 20)
    block = 4 if a.smoke else 32
    heads = HeadShape(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    print(f"# {hardware(triton_interpret=False)}")
    print(f"# python {shlex.join(['benchmarks/step_graphs.py', *sys.argv[1:]])}")
    print(f"# preset {'tiny' if a.smoke else '8b'}, {dtype}, context {context}, block {block}, "
          f"median of {reps}, ms per step (planning included)")
    n_max = max(rows_list)
    model, cache, table, pad_slot = build(cfg, dtype, device, n_max, context, block)
    impl = "triton" if cuda else "reference"

    def forward(plan, dest):
        config = step_config(plan.rows, heads, device, plan.bucket)
        attend = PlanAttention(plan, config, cache, table, plan.write_slots(dest, pad_slot), impl)
        return model.step_hidden(plan, attend)

    tile = step_config([PlanRow(0, context, block, BIDIRECTIONAL)], heads, device).block_m
    tile //= heads.group
    buckets = [Bucket(tokens=r * block, rows=r, writes=r * block, tiles=r * -(-block // tile),
                      tile_tokens=tile, splits=1, max_prefix=context) for r in rows_list]
    graphs = StepGraphs(forward, buckets, device, heads, dest_size=n_max * block,
                        mode="cuda" if cuda else "emulate", pad_slot=pad_slot)
    t0 = time.perf_counter()
    graphs.capture()
    print(f"# captured {len(buckets)} buckets in {time.perf_counter() - t0:.1f} s")
    out = []
    random.seed(0)
    for kind in ("ar", "draft"):
        for n in rows_list:
            rows, dest = step_rows(kind, n, context, block, cache)

            def eager():
                plan, _ = plan_step(rows, "triton", device, heads, tiled=True)
                return forward(plan, dest)[:plan.num_tokens]

            def graph():
                return graphs.run(rows, dest)[0]

            diff = (graph().float() - eager().float()).abs().max().item()
            te, tg = timed(eager, reps, cuda), timed(graph, reps, cuda)
            out.append([kind, n, sum(r.q_len for r in rows), te, tg, te / tg, f"{diff:.2g}"])
    print_table(["rows", "batch", "tokens", "eager ms", "graph ms", "eager/graph", "max |diff|"],
                out, a.markdown)
    # what a graph launches: aten ops of one step (dispatch count), eager against the step
    # padded to the largest bucket; flat within the bucket whatever the batch and mix
    big = max(buckets, key=lambda b: b.rows)
    ops = []
    for kind in ("ar", "draft"):
        for n in rows_list:
            rows, dest = step_rows(kind, n, context, block, cache)
            plain, _ = plan_step(rows, "triton", device, heads, tiled=True)
            padded, _ = plan_step(rows, "triton", device, heads, big, tiled=True)
            ops.append([kind, n, count_ops(lambda: forward(plain, dest)),
                        count_ops(lambda: forward(padded, dest))])
    print(f"# aten ops per step, eager (unpadded) and padded to the ({big.rows} rows, "
          f"{big.tokens} tokens) bucket")
    print_table(["rows", "batch", "ops eager", "ops in bucket"], ops, a.markdown)


def count_ops(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


if __name__ == "__main__":
    main()

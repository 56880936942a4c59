"""Host time to plan one canvas step's attention, before and after the step plan (issue 36).

    before  the plugin's path up to main 0b2bffe: ``req_to_token[rows, :longest prefix]`` read
            back to the host (``.cpu()``), each row's slots turned into a Python list
            (``_SlotTable``), then ``kernels.triton_attention.build_metadata`` packs rows, page
            table and tiles on the host (O(rows × prefix) Python) and copies them up
    after   ``core.step_plan.StepPlan`` through ``kernels.step.plan_step`` (the step's ids,
            positions, LoRA, rows, K/V writes and tiles in one upload, O(tokens) Python) and
            ``metadata_from_plan`` (no host work: the kernel reads ``req_to_token`` on the device)

Steps at NLD-8B's attention shape (32 query / 8 K/V heads, head dim 128), block 32, every row a
linear_spec draft (32 tokens, bidirectional, LoRA on) or an ar row (1 token), prefix = context;
``req_to_token`` is a [512, 32768] int32 table of random slots (on the GPU when there is one).
Host time: on a GPU "before" also waits for the device at its read back; "after" never does.

    python benchmarks/step_plan.py                      # batch 1 / 4 / 16, context 2k / 8k
    python benchmarks/step_plan.py --markdown --repeats 50
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL
from nemotron_sglang.core.batch import ForwardBatch
from nemotron_sglang.core.step_plan import PlanRow
from nemotron_sglang.kernels.triton_attention import build_metadata, metadata_from_plan
from nemotron_sglang.kernels.step import HeadShape, plan_step
from nemotron_sglang.testing.bench import hardware, print_table

HEADS = HeadShape(32, 8, 128)
BLOCK = 32


def step_rows(batch: int, context: int, kind: str) -> list[PlanRow]:
    q, mask, lora, writes = ((BLOCK, BIDIRECTIONAL, True, 0) if kind == "draft"
                             else (1, CAUSAL, False, 1))
    return [PlanRow(7 * i, context, q, mask, list(range(100, 100 + q)),
                    list(range(context, context + q)), lora, writes, i * BLOCK)
            for i in range(batch)]


class _SlotLists:
    """The old ``_SlotTable``: the rows' prefixes read back and listed per row."""

    page_size = 1

    def __init__(self, table: torch.Tensor, rows: list[PlanRow]):
        self.num_kv_heads = HEADS.kv_heads
        index = [r.table_row for r in rows]
        width = max(r.prefix_len for r in rows)
        host = table[torch.tensor(index, dtype=torch.long), :width].cpu()
        self._slots = {i: host[n, :rows[n].prefix_len].tolist() for n, i in enumerate(index)}

    def page_table(self, row: int) -> list[int]:
        return self._slots[row]


def before(rows: list[PlanRow], table: torch.Tensor):
    ids = [t for r in rows for t in r.token_ids]
    pos = [p for r in rows for p in r.positions]
    batch = ForwardBatch(torch.tensor(ids), torch.tensor(pos), tuple(r.table_row for r in rows),
                         tuple(r.q_len for r in rows), tuple(r.prefix_len for r in rows),
                         tuple(r.mask for r in rows))
    if any(r.lora for r in rows):
        torch.tensor([float(r.lora) for r in rows for _ in range(r.q_len)])
    return build_metadata(batch, _SlotLists(table, rows), HEADS.group, HEADS.head_dim,
                          table.device)


def after(rows: list[PlanRow], table: torch.Tensor):
    plan, config = plan_step(rows, "triton", table.device, HEADS)
    return metadata_from_plan(plan, table, 1, config)


def timed(fn, rows, table, repeats: int) -> float:
    fn(rows, table)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(rows, table)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--context", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    table = torch.randint(1, 1 << 20, (512, 32768), generator=g, dtype=torch.int32)
    if torch.cuda.is_available():       # the table where a server keeps it; "before" reads it back
        table = table.cuda()
    print(f"# {hardware(triton_interpret=False)}")
    print(f"# python {shlex.join(['benchmarks/step_plan.py', *sys.argv[1:]])}")
    print(f"# NLD-8B attention heads {HEADS}, block {BLOCK}; best of {a.repeats}, host ms")
    out = []
    for kind in ("draft", "ar"):
        for ctx in a.context:
            for bs in a.batch:
                rows = step_rows(bs, ctx, kind)
                b, f = timed(before, rows, table, a.repeats), timed(after, rows, table, a.repeats)
                out.append([kind, ctx, bs, b, f, b / f])
    print_table(["rows", "context", "batch", "before ms", "after ms", "before/after"], out,
                a.markdown)


if __name__ == "__main__":
    main()

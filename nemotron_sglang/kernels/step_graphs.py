"""Captured CUDA graphs of planned steps: one graph per step shape (``core.step_plan.Bucket``),
replayed for any mix of modes that fits it; a step outside every bucket runs eagerly.

    graphs = StepGraphs(forward, buckets, device, heads, dest_size)   # mode "cuda" | "emulate"
    graphs.capture()                         # once, at start-up: one graph per bucket
    hidden, plan = graphs.run(rows, dest)    # [T, H] of the real tokens, and the step's plan

``forward(plan, dest) -> hidden [Tp, H]`` is the model's planned step (core:
``NLDModel.step_hidden`` with ``kernels.step.PlanAttention``; the plugin: its custom pass). It
must take every per-step value from the plan's device views and ``dest`` (the step's K/V
destination slots): those live in persistent buffers that ``run`` updates in place before a
replay (the plan is uploaded *into* the bucket's buffer; ``dest`` is copied into the bucket's
slot buffer, device to device). Anything the forward reads from Python (a row count, a flag,
a fresh tensor) is frozen at capture — vLLM's NLD port replayed a capture-time causal flag that
way (vllm #51994). ``emulate`` (a CPU, or a GPU under test) keeps that contract checkable: its
"capture" keeps the call with the capture-time plan object and its "replay" calls it again, so
a forward that reads a per-step value from Python gives wrong outputs on replay, as a graph
would. The launch of a bucket (tiles, splits, the prefix chunk) is fixed by the bucket
(``triton_attention.plan_config``), so kernels compile at capture, not on a request.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..core.attention import CAUSAL
from ..core.host_pack import HostPack
from ..core.step_plan import Bucket, PlanRow, StepPlan
from .step import HeadShape, plan_step, step_config

MODES = ("cuda", "emulate")
EXTRA_BYTES = 16 << 20          # room after the plan in a bucket's buffer (the decisions' tables)


class StepGraphs:
    def __init__(self, forward: Callable[[StepPlan, torch.Tensor], torch.Tensor],
                 buckets: Sequence[Bucket], device, heads: HeadShape, dest_size: int,
                 mode: str = "cuda", pad_row: int = 0, pad_slot: int = 0):
        if mode not in MODES:
            raise ValueError(f"unknown graph mode {mode!r}: {' | '.join(MODES)}")
        if mode == "cuda" and torch.device(device).type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device (mode 'emulate' runs anywhere)")
        for b in buckets:
            if not (b.tile_tokens and b.max_prefix and b.tiles):
                raise ValueError(f"{b}: a captured bucket fixes its tiles, tile and longest prefix")
        self.forward, self.device, self.heads, self.mode = forward, torch.device(device), heads, mode
        self.buckets = sorted(buckets, key=lambda b: (b.tokens, b.rows))
        self.dest_size, self.pad_row, self.pad_slot = dest_size, pad_row, pad_slot
        self._tile = {b: step_config([], heads, device, b).block_m // heads.group
                      for b in self.buckets}
        self._captured: dict[Bucket, tuple] = {}
        self.replays = self.eager = 0

    # ---- which bucket ---------------------------------------------------------------------
    def bucket_for(self, rows: Sequence[PlanRow]) -> Bucket | None:
        """The smallest captured bucket the step fits, else None (eager)."""
        tokens = sum(r.q_len for r in rows)
        writes = sum(r.writes for r in rows)
        prefix = max(r.prefix_len for r in rows)
        for b in self.buckets:
            tiles = sum(-(-r.q_len // self._tile[b]) for r in rows)
            if (tokens <= b.tokens and len(rows) <= b.rows and writes <= b.writes
                    and tiles <= b.tiles and prefix <= b.max_prefix and b in self._captured):
                return b
        return None

    # ---- capture --------------------------------------------------------------------------
    def capture(self) -> list[Bucket]:
        """One graph per bucket (a one-token causal step as the capture's plan, every entry of
        the bucket padding); returns the buckets captured."""
        for b in self.buckets:
            plan_bytes = 8 * (4 * b.tokens + 7 * b.rows + 2 * b.writes + 2 * b.tiles)
            buf = torch.zeros(plan_bytes + EXTRA_BYTES, dtype=torch.uint8, device=self.device)
            dest = torch.full((self.dest_size,), self.pad_slot, dtype=torch.long,
                              device=self.device)
            dummy = [PlanRow(self.pad_row, 0, 1, CAUSAL)]
            plan, _ = plan_step(dummy, "triton", self.device, self.heads, b, into=buf, tiled=True)
            if self.mode == "cuda":
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):          # warm-up: compile, allocate
                    for _ in range(2):
                        self.forward(plan, dest)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self.forward(plan, dest)
                self._captured[b] = (buf, dest, graph, out)
            else:
                self._captured[b] = (buf, dest, (plan, dest), self.forward(plan, dest))
        return list(self._captured)

    # ---- a step ---------------------------------------------------------------------------
    def run(self, rows: Sequence[PlanRow], dest: torch.Tensor, pack: HostPack | None = None
            ) -> tuple[torch.Tensor, StepPlan]:
        """Hidden states [T, H] of the step's real tokens and its plan: a replay of the smallest
        bucket it fits (its plan uploaded into the bucket's buffer, ``dest`` [n] copied into
        the bucket's slots), else an eager forward of the unpadded step."""
        b = self.bucket_for(rows)
        if b is None:
            self.eager += 1
            plan, _ = plan_step(rows, "triton", self.device, self.heads, pack=pack, tiled=True)
            return self.forward(plan, dest)[:plan.num_tokens], plan
        buf, slots, graph, out = self._captured[b]
        plan, _ = plan_step(rows, "triton", self.device, self.heads, b, pack, into=buf,
                            tiled=True)
        if dest.numel() > self.dest_size:
            raise ValueError(f"{dest.numel()} destination slots, the graphs hold {self.dest_size}")
        slots[:dest.numel()].copy_(dest)
        self.replays += 1
        if self.mode == "cuda":
            graph.replay()
        else:
            out = self.forward(*graph)                  # the capture-time plan object, again
        return out[:plan.num_tokens], plan

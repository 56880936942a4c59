"""One canvas round (SGLang DLLM_EXTEND): every request advances by its own mode's passes.

SGLang gives each request B fresh canvas slots right after its committed tokens. Each request's
core strategy continues from its persistent state (``request.NLDRequest``) and names its passes;
the round runs them in cycles of three phases, each phase at most one forward, a row taking part
only when its next pass is of that phase's kind:

    phase  kind                                   rows                              forward
    A      bidirectional, no KV kept              diffusion denoise, spec drafts    canvas (+ custom
                                                  (LoRA on per row)                 for block < B)
    B      causal, writes KV                      ar, linear verify, diffusion      canvas
                                                  refresh
    C      quadratic fused pass, writes the       quadratic_spec                    custom
           KV of its row heads

A row is done for the round once it has written KV (B or C) or finished. Cycles repeat until some
row is done, so an ar / spec row is never held back by diffusion rows (their blocks carry over;
the round returns 0 tokens for them). Every canvas forward writes KV into every row's slots, so a
row's kept KV must come from the last canvas forward of the round: B is the last canvas forward
of its cycle, C writes only its own rows' slots, and the round ends with the cycle in which a row
wrote KV.

Per request and cycle this is core's loop exactly: ``ar`` 1 forward and 1 round per token,
``linear_spec`` draft + verify, ``quadratic_spec`` one fused pass, ``diffusion`` k denoise passes
+ 1 refresh per block. Each request returns the emitted tokens whose KV is written (``keep``);
the last emitted token of ar / self-spec (the next seed) is held until the next pass writes its
KV, or returned at once when the request is finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.attention import MaskKind
from ..core.decoding import Pass
from .custom_pass import RowSpec


@dataclass
class Row:
    index: int                       # row in the canvas batch
    req: Any                         # SGLang's Req
    nld: Any                         # request.NLDRequest
    start: int                       # committed length = first canvas position
    done: bool = False

    @property
    def state(self):
        return self.nld.state


PHASES = ("A", "B", "C")
RESEED = -1                          # ``keep`` that asks the KV hook for a context pass


def phase_of(p: Pass) -> str:
    if p.mask.kind == MaskKind.QUADRATIC:
        return "C"
    return "B" if p.mask.kind == MaskKind.CAUSAL else "A"


class CanvasRound:
    """Runs one round over ``rows``; ``algo`` supplies the forwards (canvas and custom)."""

    def __init__(self, algo, model_runner, forward_batch, rows: list[Row], block: int):
        self.algo, self.runner, self.fb, self.rows, self.b = algo, model_runner, forward_batch, rows, block
        self.logits_output = None

    def run(self) -> list[torch.Tensor]:
        for row in self.rows:
            st = row.state
            if st.kv_len != row.start:
                raise RuntimeError(f"request {row.req.rid}: KV holds {st.kv_len} tokens, SGLang's "
                                   f"canvas starts at {row.start}")
            row.done = st.finished    # a finished request only returns what it still holds
        self.completed = False
        while True:
            progressed = False
            for phase in PHASES:
                members = []
                for row in self.rows:
                    if row.done:
                        continue
                    p = row.nld.strategy.next_pass(row.state)
                    if phase_of(p) == phase:
                        members.append((row, p))
                if members:
                    progressed = True
                    self._phase(phase, members)
            if self.completed or not progressed:
                break
        return [self._finish(row) for row in self.rows]

    # ---- the forwards of one phase ------------------------------------------------------------
    def _phase(self, phase: str, members: list[tuple[Row, Pass]]) -> None:
        if phase == "C":
            self._custom(members, kv=True)
            return
        canvas, custom = [], []
        for m in members:
            fits = phase == "B" or len(m[1].token_ids) == self.b
            (canvas if fits else custom).append(m)
        if custom:                    # bidirectional block below the canvas: exactly its slots
            self._custom(custom, kv=False)
        if canvas:
            self._canvas(canvas, causal=phase == "B")

    def _canvas(self, members: list[tuple[Row, Pass]], causal: bool) -> None:
        b, bs = self.b, self.fb.batch_size
        ids = self.fb.input_ids.view(bs, b)
        lora = torch.zeros(bs, b)
        for row, p in members:
            n = len(p.token_ids)
            if n > b or p.positions[0] != row.start:
                raise RuntimeError(f"{row.nld.strategy.name}: pass does not fit the {b}-slot "
                                   f"canvas at position {row.start}")
            ids[row.index, :n] = torch.tensor(p.token_ids, dtype=ids.dtype)
            ids[row.index, n:] = self.algo.mask_id
            lora[row.index] = float(p.lora)
        out = self.algo.canvas_forward(self.runner, self.fb, causal,
                                       lora.view(-1) if lora.any() else False)
        self.logits_output = out.logits_output
        full = out.logits_output.full_logits.view(bs, b, -1)
        for row, p in members:
            self._consume(row, p, full[row.index, :len(p.token_ids)])

    def _custom(self, members: list[tuple[Row, Pass]], kv: bool) -> None:
        specs, ids, pos, lora, writes, slots = [], [], [], [], [], []
        loc = self.fb.out_cache_loc.view(self.fb.batch_size, self.b) if kv else None
        for row, p in members:
            if kv:                    # quadratic row heads d_i sit every B+1 tokens
                heads = range(0, len(p.token_ids), p.mask.block + 1)
                writes += [len(ids) + h for h in heads]
                slots += loc[row.index, :len(heads)].tolist()
            specs.append(RowSpec(int(self.fb.req_pool_indices[row.index]), row.start,
                                 len(p.token_ids), p.mask))
            ids += p.token_ids
            pos += p.positions
            lora += [float(p.lora)] * len(p.token_ids)
        lora_t = torch.tensor(lora) if any(lora) else False
        logits = self.algo.custom_forward(self.runner, self.fb, ids, pos, specs, lora_t,
                                          (writes, slots) if kv else None)
        start = 0
        for row, p in members:
            n = len(p.token_ids)
            self._consume(row, p, logits[start:start + n])
            start += n

    def _consume(self, row: Row, p: Pass, logits: torch.Tensor) -> None:
        st = row.state
        keep = row.nld.strategy.on_logits(st, p, logits.detach().float().cpu())
        row.nld.stats.forwards += 1
        st.forwards += 1
        if p.write_kv:
            st.kv_len += keep
        if p.write_kv or st.finished:
            row.done = self.completed = True

    # ---- what the round hands back --------------------------------------------------------------
    def _finish(self, row: Row) -> torch.Tensor:
        """The tokens SGLang commits for ``row``; sets ``keep`` for the KV hook."""
        nld, st = row.nld, row.state
        with_kv = st.kv_len - row.start
        pending = nld.pending
        n = min(len(pending) if st.finished else with_kv, self.b)
        nld.returned += n
        nld.keep = min(with_kv, n)
        if st.finished and not pending:
            # core finished the request but SGLang goes on (a stop rule only one side knows):
            # drop the last token's KV so that SGLang re-encodes it and a fresh state starts
            nld.keep = RESEED
            nld.reseeds += 1
        nld.stats.rounds += 1
        nld.sync_stats()
        return torch.tensor(pending[:n], dtype=torch.long)

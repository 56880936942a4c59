"""One canvas round (SGLang DLLM_EXTEND): every request advances by its own mode's passes.

SGLang gives each request B fresh canvas slots right after its committed tokens. Each request's
core strategy continues from its persistent state (``request.NLDRequest``) and names its next
pass. A round runs in steps; each step is ONE forward carrying exactly every active row's next
pass — its own tokens, positions and mask (causal, bidirectional or quadratic), the LoRA on for
the rows that draft with it — through ``run_custom_pass`` over SGLang's paged KV:

    step forward, rows of four modes (B = 4; ``|`` = row boundary):
      ar          [t]                     causal         K/V written: t
      linear      [s  M  M  M]            bidirectional  (draft, LoRA on)       none
      diffusion   [x  M  y  M]            bidirectional                         none
      quadratic   [d0 M M M M | d1 M M M M]  quadratic   K/V written: d0, d1 (row heads)

Logits are computed only for the rows a strategy reads (its pass's ``Ask``, ``core/logits.py``):
an ar row's token, a draft's masks, the row heads and then the accepted row's masks of a
quadratic pass; every row's decision is taken there, on the device, and only tokens and flags
reach the host (``core.decoding.decide_batched``: one small transfer per step). Only the tokens whose KV a pass may keep write K/V (causal rows, quadratic row
heads), into the row's own canvas slots; draft and denoise passes write nothing. A row is done
for the round once it has written KV or finished; steps repeat until some row is done, so no request waits for
another's passes: an ar row advances one token per step whatever its neighbours, a diffusion
block or a linear draft carries to the next round when the round ends first.

Per request this is core's loop exactly: ``ar`` 1 forward per token, ``linear_spec`` draft +
verify, ``quadratic_spec`` one fused pass, ``diffusion`` k denoise passes + 1 refresh per block.
Each request returns the emitted tokens whose KV is written (``keep``); the last emitted token of
ar / self-spec (the next seed) is held until the next pass writes its KV, or returned at once
when the request is finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sglang.srt.managers.schedule_batch import BaseFinishReason

from ..core.decoding import Pass
from ..core.decoding.decide_stage import stage_decisions
from ..core.host_pack import HostPack
from ..core.step_plan import PlanRow

RESEED = -1                          # ``keep`` that asks the KV hook for a context pass


@dataclass
class Row:
    index: int                       # row in the canvas batch
    req: Any                         # SGLang's Req
    nld: Any                         # request.NLDRequest
    start: int                       # committed length = first canvas position
    pool: int                        # the request's row in SGLang's req_to_token table
    done: bool = False

    @property
    def state(self):
        return self.nld.state


class CanvasRound:
    """Runs one round over ``rows``; ``algo.step_forward`` runs each step's forward."""

    def __init__(self, algo, model_runner, forward_batch, rows: list[Row], block: int):
        self.algo, self.runner, self.fb, self.rows, self.b = algo, model_runner, forward_batch, rows, block
        self.steps = 0

    def run(self) -> list[torch.Tensor]:
        for row in self.rows:
            st = row.state
            if st.kv_len != row.start:
                raise RuntimeError(f"request {row.req.rid}: KV holds {st.kv_len} tokens, SGLang's "
                                   f"canvas starts at {row.start}")
            row.done = st.finished    # a finished request only returns what it still holds
        completed = False
        while not completed:
            members = [(r, r.nld.strategy.next_pass(r.state)) for r in self.rows if not r.done]
            if not members:
                break
            completed = self._step(members)
        return [self._finish(row) for row in self.rows]

    def _step(self, members: list[tuple[Row, Pass]]) -> bool:
        plan, items = [], []
        for row, p in members:
            writes = len(p.kv_offsets())
            if p.positions[0] != row.start or writes > self.b:
                raise RuntimeError(f"{row.nld.strategy.name}: pass does not fit the {self.b}-slot "
                                   f"canvas at position {row.start}")
            plan.append(PlanRow(row.pool, row.start, len(p.token_ids), p.mask, p.token_ids,
                                p.positions, bool(p.lora), writes, row.index * self.b))
            start = items[-1][1] if items else 0
            items.append((start, start + len(p.token_ids), p.ask))
        # the step planned once (core.step_plan), the decisions' tables beside it: one upload
        pack = HostPack()
        staged = stage_decisions(items, self.algo.mask_id, pack)
        logits = self.algo.step_forward(self.runner, self.fb, plan, pack)
        # every row's decision on the device, one small host read (core.decoding.decide_batched)
        decisions = self.algo.decide(logits, items, self.algo.mask_id, staged=pack.uploaded,
                                     plan=staged)
        self.steps += 1
        completed = False
        for (row, p), d in zip(members, decisions):
            st = row.state
            keep = row.nld.strategy.on_decision(st, p, d)
            row.nld.stats.forwards += 1
            row.nld.stats.pass_tokens += len(p.token_ids)
            st.forwards += 1
            if p.write_kv:
                st.kv_len += keep
            if p.write_kv or st.finished:
                row.done = completed = True
        return completed

    def _fail(self, row: Row, tokens: list[int]) -> torch.Tensor:
        """The request cannot go on (core's ``error``): SGLang aborts it with a 400 once this
        round's tokens are committed; a round must return a token for SGLang to finish it."""
        from http import HTTPStatus

        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        row.req.to_finish = FINISH_ABORT(
            f"nemotron-sglang: {row.state.error} (decode_mode {row.nld.stats.mode})",
            HTTPStatus.BAD_REQUEST, "BadRequestError")
        row.nld.sync_stats()
        return torch.tensor(tokens or [self.algo.eos_id], dtype=torch.long)

    def _finish(self, row: Row) -> torch.Tensor:
        """The tokens SGLang commits for ``row``; sets ``keep`` for the KV hook."""
        nld, st = row.nld, row.state
        with_kv = st.kv_len - row.start
        pending = nld.pending
        n = min(len(pending) if st.finished else with_kv, self.b)
        if nld.logprobs is not None:       # surface.export_stats hands them to SGLang
            nld.round_logprobs = st.logprobs[nld.returned:nld.returned + n]
        nld.returned += n
        nld.round_tokens = n
        nld.keep = min(with_kv, n)
        if st.finish_reason == "error":
            return self._fail(row, pending[:n])
        if st.grammar is not None and n < len(pending) and st.grammar.grammar.is_terminated():
            # the stop token that completed the grammar waits for the next round: SGLang would
            # read the grammar as complete now, finish on this round's last token and trim it
            st.grammar.seek(list(row.req.output_ids) + pending[:n])
        if st.complete and n == len(pending):
            # core ended the output (an infill region): SGLang's stop rules would go on
            row.req.to_finish = InfillDone()
        if st.finished and not pending:
            # core finished the request but SGLang goes on (a stop rule only one side knows):
            # drop the last token's KV so that SGLang re-encodes it and a fresh state starts
            nld.keep = RESEED
            nld.reseeds += 1
        nld.stats.rounds += 1
        nld.stats.blocks[nld.block] = nld.stats.blocks.get(nld.block, 0) + 1
        nld.sync_stats()
        return torch.tensor(pending[:n], dtype=torch.long)


class InfillDone(BaseFinishReason):
    """SGLang's finish reason for an output core completed (an infill region): type "stop"."""

    def to_json(self):
        return {"type": "stop", "matched": None}

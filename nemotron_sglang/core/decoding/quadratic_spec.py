"""``quadratic_spec``: one fused pass per cycle that verifies the drafts and pre-drafts the next
block for every acceptance point (model_spec §2.5, §3.5).

With R known tokens ``d_0..d_{R-1}`` (``d_0`` = the last emitted token, not yet cached), the
pass holds R rows ``[d_i, mask × B]``; ``d_i`` sits at position ``kv_len + i`` and row i's masks
at ``kv_len + i + 1 .. kv_len + i + B`` (the QUADRATIC mask of ``attention.py``). ``d_i``'s logit
is the causal next-token prediction after ``d_0..d_i``, so the drafts ``d_1..`` are verified as in
``linear_spec``; if the verifier accepts c drafts, KV is kept for ``d_0..d_c`` and the next drafts
are row c's mask predictions at slots 2..B (slot 1 is where the verifier's own token goes).
The first cycle has only ``d_0`` (R = 1): it emits one token and drafts the first block.

Of the pass's R·(B+1) logits only R + B - 1 are computed: the row heads (the ask's rows), then
the masks of the accepted row (a QUADRATIC ask: the accepted row is found where the logits are).

Row budget (:func:`row_budget`): a row past the accepted one is computed and thrown away, so
the pass carries ``R = min(1 + drafts, ⌈1.5·ā⌉ + 2)`` rows, ā the moving average (weight 1/2)
of accepted drafts per cycle; every row until a cycle has been seen. Dropping drafts never
changes what is emitted (each kept draft is still verified causally; at T > 0 the dropped
drafts' proposals are dropped with them), only how many tokens a cycle can emit (at most R).
"""

from __future__ import annotations

import math

from ..attention import quadratic
from .base import Pass, RequestState, Strategy
from .decisions import Decision, Kind


def quadratic_layout(heads: list[int], block: int, kv_len: int, mask_id: int
                     ) -> tuple[list[int], list[int]]:
    """Tokens and positions [R·(B+1)] of the fused pass for row heads ``d_0..d_{R-1}``."""
    ids, pos = [], []
    for i, d in enumerate(heads):
        ids += [d] + [mask_id] * block
        pos += list(range(kv_len + i, kv_len + i + block + 1))
    return ids, pos


def row_budget(accepted_avg: float | None, drafts: int) -> int:
    """Rows of the next fused pass for ``drafts`` drafts in hand (see the module docstring)."""
    if accepted_avg is None:
        return 1 + drafts
    return min(1 + drafts, math.ceil(1.5 * accepted_avg) + 2)


class QuadraticSpecStrategy(Strategy):
    name = "quadratic_spec"

    def start(self, req: RequestState, seed: int, logprob=None) -> None:
        req.emit([seed], [logprob])
        req.scratch.update(drafts=[], q=None, accepted_avg=None)

    def idle(self, req: RequestState) -> bool:
        return not req.scratch.get("drafts")

    def adopt(self, req: RequestState) -> None:
        req.scratch.update(drafts=[], q=None, accepted_avg=req.scratch.get("accepted_avg"))

    def next_pass(self, req: RequestState) -> Pass:
        rows = row_budget(req.scratch["accepted_avg"], len(req.scratch["drafts"]))
        if rows - 1 < len(req.scratch["drafts"]):           # trim: drop the drafts past the budget
            q = req.scratch["q"]
            req.scratch.update(drafts=req.scratch["drafts"][:rows - 1],
                               q=None if q is None else q[:rows - 1])
        drafts = req.scratch["drafts"]
        heads = [req.output[-1]] + drafts
        ids, pos = quadratic_layout(heads, req.block, req.kv_len, req.mask_id)
        w = req.block + 1
        ask = req.ask(Kind.QUADRATIC, range(0, len(ids), w), drafts=tuple(drafts),
                      q=req.scratch["q"], width=w)
        return Pass(ids, pos, quadratic(req.block), ask, write_kv=True)

    def on_decision(self, req: RequestState, p: Pass, d: Decision) -> int:
        c = d.accepted
        drafted = bool(p.ask.drafts)
        avg = req.scratch["accepted_avg"]
        if drafted:
            avg = c if avg is None else 0.5 * avg + 0.5 * c
        req.scratch.update(drafts=d.drafts, q=d.q, accepted_avg=avg)
        if drafted:
            req.note_verify(len(p.ask.drafts), c)
            req.cycles += 1
            req.cycle_tokens += req.emit(d.tokens, d.logprobs)
        else:
            req.emit(d.tokens, d.logprobs)
        return c + 1

    def overshoot(self, block: int) -> int:
        return 2 * block

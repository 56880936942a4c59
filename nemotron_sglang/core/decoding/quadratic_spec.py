"""``quadratic_spec``: one fused pass per cycle that verifies the drafts and pre-drafts the next
block for every acceptance point (model_spec §2.5, §3.5).

With R known tokens ``d_0..d_{R-1}`` (``d_0`` = the last emitted token, not yet cached), the
pass holds R rows ``[d_i, mask × B]``; ``d_i`` sits at position ``kv_len + i`` and row i's masks
at ``kv_len + i + 1 .. kv_len + i + B`` (the QUADRATIC mask of ``attention.py``). ``d_i``'s logit
is the causal next-token prediction after ``d_0..d_i``, so the drafts ``d_1..`` are verified as in
``linear_spec``; if the verifier accepts c drafts, KV is kept for ``d_0..d_c`` and the next drafts
are row c's mask predictions at slots 2..B (slot 1 is where the verifier's own token goes).
The first cycle has only ``d_0`` (R = 1): it emits one token and drafts the first block.
A server that re-encodes committed tokens between passes (SGLang) hands the last drafts back
as ``scratch["carry"]``; ``start`` then verifies the first of them against the new seed logit.
"""

from __future__ import annotations

import torch

from ..attention import quadratic
from .base import Pass, RequestState, Strategy
from .sampling import draft_tokens, pick, speculative_accept, verify_one


def quadratic_layout(heads: list[int], block: int, kv_len: int, mask_id: int
                     ) -> tuple[list[int], list[int]]:
    """Tokens and positions [R·(B+1)] of the fused pass for row heads ``d_0..d_{R-1}``."""
    ids, pos = [], []
    for i, d in enumerate(heads):
        ids += [d] + [mask_id] * block
        pos += list(range(kv_len + i, kv_len + i + block + 1))
    return ids, pos


class QuadraticSpecStrategy(Strategy):
    name = "quadratic_spec"

    def start(self, req: RequestState, last_logits: torch.Tensor) -> None:
        carry = req.scratch.get("carry")
        if carry and carry[0]:
            # resumed by a server that re-encoded the committed tokens (the SGLang adapter): the
            # drafts of the last pass continue after them, and ``last_logits`` verifies the first
            drafts, q = carry
            tok, ok = verify_one(drafts[0], None if q is None else q[0], last_logits,
                                 req.params.temperature, req.mask_id, req.generator)
            req.emit([tok])
            req.scratch.update(drafts=drafts[1:] if ok else [],
                               q=None if q is None or not ok else q[1:])
            return
        seed = int(pick(last_logits[None], req.params.temperature, req.mask_id, req.generator)[0])
        req.emit([seed])
        req.scratch.update(drafts=[], q=None)

    def next_pass(self, req: RequestState) -> Pass:
        heads = [req.output[-1]] + req.scratch["drafts"]
        ids, pos = quadratic_layout(heads, req.block, req.kv_len, req.mask_id)
        return Pass(ids, pos, quadratic(req.block), write_kv=True)

    def on_logits(self, req: RequestState, p: Pass, logits: torch.Tensor) -> int:
        prm, b = req.params, req.block
        rows = logits.view(-1, b + 1, logits.shape[-1])           # [R, B+1, V]
        drafts, q = req.scratch["drafts"], req.scratch["q"]
        out = speculative_accept(drafts, q, rows[:, 0], prm.temperature, req.mask_id,
                                 req.generator)
        c = len(out) - 1                                          # accepted drafts
        new_drafts, new_q = draft_tokens(rows[c, 2:], prm.temperature, req.mask_id,
                                         req.generator)
        req.scratch.update(drafts=new_drafts, q=new_q)
        if drafts:
            req.cycles += 1
            req.cycle_tokens += req.emit(out)
        else:
            req.emit(out)
        return c + 1

    def overshoot(self, block: int) -> int:
        return 2 * block

"""``linear_spec``: linear self-speculation, draft pass + verify pass per cycle (model_spec §3.3).

The prefill's pick is the seed and is emitted. Each cycle drafts ``[seed, mask × (B-1)]`` with
bidirectional attention (LoRA on when loaded and wanted), fills every mask, then verifies the
block causally (LoRA off), staging B KV entries (B = 1 skips the draft pass: plain AR). The longest agreeing prefix of c drafts plus
the verifier's next token are emitted; KV is kept for the seed and the c accepted drafts; the
last emitted token is the next seed. At T = 0 the output equals greedy ``ar`` exactly; at T > 0
:func:`speculative_accept` keeps AR's distribution.
"""

from __future__ import annotations

import torch

from ..attention import BIDIRECTIONAL, CAUSAL
from .base import Pass, RequestState, Strategy
from .sampling import draft_tokens, pick, speculative_accept


class LinearSpecStrategy(Strategy):
    name = "linear_spec"
    uses_lora = True

    def start(self, req: RequestState, last_logits: torch.Tensor) -> None:
        seed = int(pick(last_logits[None], req.params.temperature, req.mask_id, req.generator)[0])
        req.emit([seed])
        req.scratch.update(drafts=None, q=None)

    def idle(self, req: RequestState) -> bool:
        return req.scratch.get("drafts") is None

    def adopt(self, req: RequestState) -> None:
        req.scratch.update(drafts=None, q=None)

    def next_pass(self, req: RequestState) -> Pass:
        b = req.block
        pos = list(range(req.kv_len, req.kv_len + b))
        seed = req.output[-1]
        drafts = req.scratch["drafts"]
        if drafts is None and b > 1:
            return Pass([seed] + [req.mask_id] * (b - 1), pos, BIDIRECTIONAL,
                        lora=req.lora, reads=tuple(range(1, b)))
        return Pass([seed] + (drafts or []), pos, CAUSAL, write_kv=True)

    def on_logits(self, req: RequestState, p: Pass, logits: torch.Tensor) -> int:
        prm = req.params
        if not p.write_kv:        # draft pass: fill every mask
            drafts, q = draft_tokens(logits[1:], prm.temperature, req.mask_id, req.generator)
            req.scratch.update(drafts=drafts, q=q)
            return 0
        drafts, q = req.scratch["drafts"] or [], req.scratch["q"]
        req.scratch.update(drafts=None, q=None)
        out = speculative_accept(drafts, q, logits[:], prm.temperature, req.mask_id,
                                 req.generator)
        req.note_verify(len(drafts), len(out) - 1)
        req.cycles += 1
        req.cycle_tokens += req.emit(out)
        return len(out)           # seed + accepted drafts (the new seed is not cached)

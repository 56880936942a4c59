"""``linear_spec``: linear self-speculation, draft pass + verify pass per cycle (model_spec §3.3).

The prefill's pick is the seed and is emitted. Each cycle drafts ``[seed, mask × (B-1)]`` with
bidirectional attention (LoRA on when loaded and wanted), fills every mask, then verifies the
block causally (LoRA off), staging B KV entries (B = 1 skips the draft pass: plain AR). The longest agreeing prefix of c drafts plus
the verifier's next token are emitted; KV is kept for the seed and the c accepted drafts; the
last emitted token is the next seed. At T = 0 the output equals greedy ``ar`` exactly; at T > 0
:func:`~.sampling.speculative_accept` keeps AR's distribution.
"""

from __future__ import annotations

from ..attention import BIDIRECTIONAL, CAUSAL
from .base import Pass, RequestState, Strategy
from .decisions import Decision, Kind


class LinearSpecStrategy(Strategy):
    name = "linear_spec"
    uses_lora = True

    def start(self, req: RequestState, seed: int, logprob=None) -> None:
        req.emit([seed], [logprob])
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
                        req.ask(Kind.DRAFT, range(1, b)), lora=req.lora)
        drafts = drafts or []
        ask = req.ask(Kind.VERIFY, range(len(drafts) + 1), drafts=tuple(drafts),
                      q=req.scratch["q"])
        return Pass([seed] + drafts, pos, CAUSAL, ask, write_kv=True)

    def on_decision(self, req: RequestState, p: Pass, d: Decision) -> int:
        if not p.write_kv:        # draft pass: every mask filled
            req.scratch.update(drafts=d.tokens, q=d.q)
            return 0
        req.scratch.update(drafts=None, q=None)
        req.note_verify(len(p.ask.drafts), d.accepted)
        req.cycles += 1
        req.cycle_tokens += req.emit(d.tokens, d.logprobs)
        return len(d.tokens)      # seed + accepted drafts (the new seed is not cached)

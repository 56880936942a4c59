"""``ar``: causal decoding, one token per forward (model_spec §3.1).

After the prefill the first token is picked from the last prompt logit; each pass feeds the
last emitted token causally, stages and keeps its KV, and picks the next token.
"""

from __future__ import annotations

from ..attention import CAUSAL
from .base import Pass, RequestState, Strategy
from .decisions import Decision, Kind


class ARStrategy(Strategy):
    name = "ar"

    def start(self, req: RequestState, seed: int, logprob=None) -> None:
        req.emit([seed], [logprob])

    def next_pass(self, req: RequestState) -> Pass:
        return Pass([req.output[-1]], [req.kv_len], CAUSAL, req.ask(Kind.PICK, (0,)),
                    write_kv=True, refresh=True)

    def on_decision(self, req: RequestState, p: Pass, d: Decision) -> int:
        req.emit(d.tokens, d.logprobs)
        return 1

    def overshoot(self, block: int) -> int:
        return 0

    def adopt(self, req: RequestState) -> None:
        pass                      # the seed is all ar needs

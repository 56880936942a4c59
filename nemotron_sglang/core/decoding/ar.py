"""``ar``: causal decoding, one token per forward (model_spec §3.1).

After the prefill the first token is picked from the last prompt logit; each pass feeds the
last emitted token causally, stages and keeps its KV, and picks the next token.
"""

from __future__ import annotations

import torch

from ..attention import CAUSAL
from .base import Pass, RequestState, Strategy
from .sampling import pick


class ARStrategy(Strategy):
    name = "ar"

    def _take(self, req: RequestState, logits: torch.Tensor) -> None:
        tok = pick(logits[None], req.params.temperature, req.mask_id, req.generator)
        req.emit([int(tok[0])])

    def start(self, req: RequestState, last_logits: torch.Tensor) -> None:
        self._take(req, last_logits)

    def next_pass(self, req: RequestState) -> Pass:
        return Pass([req.output[-1]], [req.kv_len], CAUSAL, write_kv=True, refresh=True)

    def on_logits(self, req: RequestState, p: Pass, logits: torch.Tensor) -> int:
        self._take(req, logits[-1])
        return 1

    def overshoot(self, block: int) -> int:
        return 0

    def adopt(self, req: RequestState) -> None:
        pass                      # the seed is all ar needs

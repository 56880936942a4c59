"""``diffusion`` (FastDiffuser): block denoising with a confidence threshold (model_spec §3.2).

Each block is ``[seed, mask × (B-1)]`` at the positions right after the committed KV. A denoise
pass (bidirectional, no KV write) gives every masked slot a candidate and a confidence; the
most confident masked slot and every masked slot with confidence >= threshold are committed.
When no mask is left the block's tokens are emitted, and one causal pass over the block (a
``refresh`` pass) writes its KV and picks the next seed from its last logit. A request stops
early, without the refresh pass, once its output is decided: an EOS with no mask before it, or
the first ``max_new_tokens - emitted`` slots all committed (later slots cannot change them).
"""

from __future__ import annotations

import torch

from ..attention import BIDIRECTIONAL, CAUSAL
from .base import Pass, RequestState, Strategy
from .sampling import diffusion_candidates, pick


def masked_slots(block: list[int], mask_id: int) -> tuple[int, ...]:
    return tuple(i for i, t in enumerate(block) if t == mask_id)


def commit_step(block: list[int], logits, mask_id: int, threshold: float,
                temperature: float, generator: torch.Generator | None) -> list[int]:
    """One denoise step on ``block`` [B] with its bidirectional logits [B, V] (only the masked
    slots' rows are read); returns the new block. Commits the most confident masked slot plus
    every masked slot with confidence >= threshold (threshold 0 commits all, > 1 exactly one)."""
    slots = masked_slots(block, mask_id)
    if not slots:
        return list(block)
    cand, conf = diffusion_candidates(logits[list(slots)], temperature, mask_id, generator)
    commit = conf >= threshold
    commit[int(conf.argmax())] = True
    out = list(block)
    for slot, c, m in zip(slots, cand.tolist(), commit.tolist()):
        if m:
            out[slot] = int(c)
    return out


def decided_length(block: list[int], mask_id: int, eos_id: int, need: int) -> int | None:
    """How many of the block's tokens finish the request, once that is decided: up to an EOS
    with no mask before it, or the first ``need`` slots all unmasked. None while undecided or
    when the whole block is committed and the request goes on (then the refresh pass runs)."""
    for i, t in enumerate(block):
        if t == mask_id:
            return None
        if t == eos_id or i + 1 >= need:
            return i + 1
    return None


class DiffusionStrategy(Strategy):
    name = "diffusion"

    def start(self, req: RequestState, last_logits: torch.Tensor) -> None:
        seed = int(pick(last_logits[None], req.params.temperature, req.mask_id, req.generator)[0])
        req.scratch["block"] = [seed] + [req.mask_id] * (req.block - 1)
        self._finish_if_decided(req)

    def _finish_if_decided(self, req: RequestState) -> None:
        """Emit once the block is settled: all of it (the refresh pass follows), or the decided
        prefix that finishes the request."""
        block = req.scratch["block"]
        n = decided_length(block, req.mask_id, req.eos_id, req.remaining)
        if n is None and req.mask_id not in block:
            n = len(block)
        if n is not None:
            req.cycles += 1
            req.cycle_tokens += req.emit(block[:n])

    def idle(self, req: RequestState) -> bool:
        block = req.scratch.get("block")
        return block is None or all(t == req.mask_id for t in block[1:])

    def next_pass(self, req: RequestState) -> Pass:
        block = req.scratch["block"]
        pos = list(range(req.kv_len, req.kv_len + len(block)))
        if req.mask_id in block:
            return Pass(list(block), pos, BIDIRECTIONAL, reads=masked_slots(block, req.mask_id))
        return Pass(list(block), pos, CAUSAL, write_kv=True, refresh=True,
                    reads=(len(block) - 1,))

    def on_logits(self, req: RequestState, p: Pass, logits: torch.Tensor) -> int:
        block = req.scratch["block"]
        if p.write_kv:        # refresh pass: KV of the emitted block, next seed
            self.start(req, logits[-1])
            return len(block)
        prm = req.params
        req.scratch["block"] = commit_step(block, logits, req.mask_id, prm.threshold,
                                           prm.temperature, req.generator)
        self._finish_if_decided(req)
        return 0

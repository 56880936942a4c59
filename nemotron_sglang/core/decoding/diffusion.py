"""``diffusion`` (FastDiffuser): block denoising with a confidence threshold (model_spec §3.2).

Each block is ``[seed, mask × (B-1)]`` at the positions right after the committed KV. A denoise
pass (bidirectional, no KV write) gives every masked slot a candidate and a confidence; the
most confident masked slot and every masked slot with confidence >= threshold are committed.
When no mask is left the block's tokens are emitted, and one causal pass over the block (a
``refresh`` pass) writes its KV and picks the next seed from its last logit. A request stops
early, without the refresh pass, once its output is decided: an EOS with no mask before it, or
the first ``max_new_tokens - emitted`` slots all committed (later slots cannot change them).

Under a grammar (``grammar.py``) a slot commits only once every slot to its left has: the
leftmost masked slot's candidate is drawn under the grammar's mask and always commits, the
slots after it commit while they reach the threshold and the grammar accepts them in order
(their candidates are drawn unmasked, so a refused one waits for its own turn as the leftmost);
the token that completes the grammar ends the output.

A step budget (``DecodeParams.max_steps`` = k) caps the denoise passes of a block at k: the k-th
runs at threshold 0, so it commits every slot still masked. A budget cannot be kept under a
grammar (a slot the grammar refuses must wait for a later pass), so the two are refused together.

Infill (``DecodeParams.canvas``): the first block is the request's canvas instead of
``[seed, mask × (B-1)]``: given tokens stay as they are and are seen bidirectionally, masks are
denoised as above (slot 0, when masked, takes the seed). Once no mask is left the first
``canvas_emit`` tokens are the output (a ``suffix`` request: the gap before the suffix) and the
request ends (finish "stop", or "length"/"stop" at max_new_tokens / an EOS in the region)::

    canvas   [ m  m  m  m  s1 s2 ]      m: mask, s: given (a suffix)
    pass 1   [ a  m  c  m  s1 s2 ]      committed: a, c
    pass 2   [ a  b  c  d  s1 s2 ]      -> output a b c d
"""

from __future__ import annotations

from ..attention import BIDIRECTIONAL, CAUSAL
from .base import GRAMMAR_CONFLICT, Pass, RequestState, Strategy
from .decisions import Decision, Kind


def masked_slots(block: list[int], mask_id: int) -> tuple[int, ...]:
    return tuple(i for i, t in enumerate(block) if t == mask_id)


def commit_step(block: list[int], slots: tuple[int, ...], d: Decision,
                logprobs: list | None = None) -> list[int]:
    """Apply a DENOISE decision on the masked ``slots`` of ``block`` [B]: each slot whose
    ``commit`` is set takes its candidate (the rule, ``sampling.commit_mask``: the most
    confident masked slot plus every one with confidence >= threshold; threshold 0 commits all,
    1 one, bar exact ties at confidence 1; its range is ``core/modes.check_threshold``).
    Returns the new block; ``logprobs`` (per slot) takes the committing pass's entries when the
    decision carries them."""
    out = list(block)
    for j, (slot, c, m) in enumerate(zip(slots, d.tokens, d.commit)):
        if m:
            out[slot] = int(c)
            if logprobs is not None and d.logprobs is not None:
                logprobs[slot] = d.logprobs[j]
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

    def start(self, req: RequestState, seed: int, logprob=None) -> None:
        canvas = req.params.canvas
        if canvas and not req.prior and not req.output:       # the infill block
            block, lp = list(canvas), [None] * len(canvas)
            if block[0] == req.mask_id:
                block[0], lp[0] = seed, logprob
            req.scratch["emit"] = req.params.canvas_emit or len(block)
        else:
            block = [seed] + [req.mask_id] * (req.block - 1)
            lp = [logprob] + [None] * (req.block - 1)
            req.scratch["emit"] = None
        req.scratch["block"], req.scratch["lp"] = block, lp
        req.scratch["steps"] = 0          # denoise passes of this block so far
        self._finish_if_decided(req)

    def _finish_if_decided(self, req: RequestState) -> None:
        """Emit once the block is settled: all of it (the refresh pass follows), or the decided
        prefix that finishes the request; an infill block emits its region and ends."""
        block = req.scratch["block"]
        region = req.scratch["emit"]
        if region is not None:
            if req.mask_id not in block:
                req.cycles += 1
                req.cycle_tokens += req.emit(block[:region], req.scratch["lp"][:region])
                req.complete = True
                if not req.finished:
                    req.finish_reason = "stop"
            return
        n = decided_length(block, req.mask_id, req.eos_id, req.remaining)
        if n is None and req.mask_id not in block:
            n = len(block)
        if n is not None:
            req.cycles += 1
            req.cycle_tokens += req.emit(block[:n], req.scratch["lp"][:n])

    def idle(self, req: RequestState) -> bool:
        block = req.scratch.get("block")
        return block is None or all(t == req.mask_id for t in block[1:])

    def next_pass(self, req: RequestState) -> Pass:
        block = req.scratch["block"]
        pos = list(range(req.kv_len, req.kv_len + len(block)))
        if req.mask_id in block:
            slots = masked_slots(block, req.mask_id)
            ask = req.ask(Kind.DENOISE, slots, threshold=self.threshold(req),
                          pending=tuple(block[:slots[0]]) if req.grammar is not None else ())
            return Pass(list(block), pos, BIDIRECTIONAL, ask)
        return Pass(list(block), pos, CAUSAL, req.ask(Kind.PICK, (len(block) - 1,)),
                    write_kv=True, refresh=True)

    @staticmethod
    def threshold(req: RequestState) -> float:
        """The next denoise pass's threshold: the request's, or 0 (commit all) on the last pass
        its step budget allows."""
        k = req.params.max_steps
        return 0.0 if k is not None and req.scratch["steps"] + 1 >= k else req.params.threshold

    def on_decision(self, req: RequestState, p: Pass, d: Decision) -> int:
        block = req.scratch["block"]
        if p.write_kv:        # refresh pass: KV of the emitted block, next seed
            self.start(req, d.tokens[0], d.logprobs[0] if d.logprobs else None)
            return len(block)
        req.scratch["steps"] += 1
        if req.grammar is not None:
            d = self._grammar_cut(req, p, d, block)
        req.scratch["block"] = commit_step(block, p.ask.rows, d, req.scratch["lp"])
        self._finish_if_decided(req)
        return 0

    @staticmethod
    def _grammar_cut(req: RequestState, p: Pass, d: Decision, block: list[int]) -> Decision:
        """Under a grammar the commits are a prefix of the masked slots (an ``ordered`` ask);
        keep them while the grammar accepts them in order, and none past the one that
        completes it (its tokens end the output: the block is cut there)."""
        s0 = p.ask.rows[0]
        n = sum(d.commit)
        keep, done = req.grammar.prefix(block[:s0], d.tokens[:n])
        commit = [j < keep for j in range(len(d.commit))]
        if keep == 0 and not done:     # even the masked leftmost candidate is refused
            req.fail(GRAMMAR_CONFLICT)
        if done:       # the output ends at the completing token: drop the block's tail
            del block[s0 + keep:]
            del req.scratch["lp"][s0 + keep:]
            return Decision(d.tokens[:keep], commit=commit[:keep],
                            logprobs=d.logprobs[:keep] if d.logprobs else None)
        return Decision(d.tokens, commit=commit, logprobs=d.logprobs)

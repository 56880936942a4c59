"""The shared step loop: prefill, then one pass per unfinished request per step, any modes mixed.

Lifecycle of a request: ``add`` a sequence to the paged cache → one causal prefill pass for all
new prompts (KV written and committed; not counted as a forward) → its strategy's ``start`` →
steps. In each step every unfinished request asks its strategy for a :class:`Pass`; passes of
the same kind (mask kind, KV write, LoRA) share one model forward — the same constraint SGLang
has — whose asks are decided in one call (``decide_batched``, where the logits are: logits are
computed only for the rows read, ``core/logits.py``, and one small result reaches the host); each
request's decision goes back to its strategy, which says how many staged KV entries to commit. A finished request's KV is rolled back to at most ``prompt + output[:-1]`` (what AR
would hold) and freed; an aborted one is freed at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..attention import CAUSAL
from ..batch import ForwardBatch, PassRow
from ..kv_cache import KVCacheFull, PagedKVCache
from ..logits import PassLogits
from ..modes import RuleError, check_canvas, check_mode_fields
from .base import DecodeError, DecodeParams, Pass, RequestState, Strategy, seed_ask
from .decide_batched import decide_batched
from .grammar import Grammar, GrammarCursor


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    mode: str = "ar"
    params: DecodeParams = field(default_factory=DecodeParams)
    grammar: Grammar | None = None        # constrained decoding (grammar.py); stateful, own
    # the prompt's input embeddings [len(prompt_ids), hidden] in place of its tokens' (a prompt
    # with images: core.vision.splice_images); only the prefill reads them
    prompt_embeds: torch.Tensor | None = None


@dataclass(frozen=True)
class Result:
    output_ids: list[int]
    finish_reason: str            # "stop" | "length" | "abort" | "error" (``error`` says why)
    forwards: int                 # model forwards this request took part in, prefill excluded
    mode: str
    cycles: int
    acceptance_length: float | None
    seq_id: int
    error: str | None = None

    @property
    def tokens_per_forward(self) -> float:
        return len(self.output_ids) / self.forwards if self.forwards else float(len(self.output_ids))


@dataclass
class LoopStats:
    model_calls: int = 0          # forwards run, prefill excluded
    pass_tokens: int = 0          # tokens those forwards carried
    head_rows: int = 0            # of them, rows whose logits were computed (read)
    steps: int = 0
    tokens: int = 0


class Decoder:
    """Drives requests of any registered modes over one model and one paged cache."""

    def __init__(self, model, cache: PagedKVCache, strategies: dict[str, Strategy],
                 decide: Callable = decide_batched):
        """``decide``: the decision layer, ``decide_batched`` or its twin ``decide_each``."""
        self.model, self.cache, self.strategies = model, cache, strategies
        self.decide = decide
        self.cfg = model.config
        self.stats = LoopStats()
        self._seq_ids = itertools.count()

    # ---- admission ---------------------------------------------------------------------
    def _state(self, rid: int, req: Request) -> RequestState:
        cfg = self.cfg
        if req.mode not in self.strategies:
            raise DecodeError(f"unknown decode mode {req.mode!r}; known: {sorted(self.strategies)}")
        if not req.prompt_ids:
            raise DecodeError("empty prompt")
        if req.prompt_embeds is not None and \
                tuple(req.prompt_embeds.shape) != (len(req.prompt_ids), cfg.hidden_size):
            raise DecodeError(f"prompt_embeds {tuple(req.prompt_embeds.shape)}: expected "
                              f"({len(req.prompt_ids)}, {cfg.hidden_size})")
        bad = [t for t in req.prompt_ids if not 0 <= t < cfg.vocab_size]
        if bad:
            raise DecodeError(f"prompt token ids out of range [0, {cfg.vocab_size}): {bad[:5]}")
        block = req.params.block_length or cfg.block_size
        if block > cfg.block_size:
            raise DecodeError(f"block_length {block} exceeds the model's block size {cfg.block_size}")
        strategy = self.strategies[req.mode]
        try:
            given = {"max_steps": req.params.max_steps, "canvas": req.params.canvas or None}
            check_mode_fields(req.mode, [f for f, v in given.items() if v is not None],
                              grammar=req.grammar is not None)
            if req.params.canvas:
                check_canvas(req.params.canvas, block, cfg.vocab_size)
        except RuleError as e:
            raise DecodeError(str(e)) from None
        need = len(req.prompt_ids) + req.params.max_new_tokens + strategy.overshoot(block)
        if need > cfg.max_position_embeddings:
            raise DecodeError(
                f"prompt ({len(req.prompt_ids)}) + max_new_tokens ({req.params.max_new_tokens}) "
                f"+ {strategy.overshoot(block)} lookahead positions exceed the context "
                f"({cfg.max_position_embeddings})")
        st = RequestState(rid=next(self._seq_ids), prompt=list(req.prompt_ids), params=req.params,
                          block=block, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id,
                          seed=req.params.seed)
        if req.grammar is not None:
            st.grammar = GrammarCursor(req.grammar, cfg.vocab_size)
        st.lora = strategy.uses_lora and req.params.use_lora and self.model.has_lora
        return st

    # ---- the loop ----------------------------------------------------------------------
    def run(self, requests: list[Request], *, free: bool = True,
            on_step: Callable[[int, list[RequestState]], Iterable[int]] | None = None
            ) -> list[Result]:
        """Decode ``requests`` to completion; results in input order.

        ``free=False`` keeps each finished sequence's KV (seq id in the result) for inspection.
        ``on_step(step, states)`` may return seq ids to abort before that step runs.
        """
        states = [self._state(i, r) for i, r in enumerate(requests)]
        modes = [r.mode for r in requests]
        try:
            self._prefill(states, modes, [r.prompt_embeds for r in requests])
            step = 0
            while True:
                active = [s for s in states if not s.finished]
                if on_step is not None:
                    doomed = set(on_step(step, active))
                    for st in active:
                        if st.rid in doomed:
                            st.finish_reason = "abort"
                            self.cache.free(st.rid)
                    active = [s for s in active if not s.finished]
                if not active:
                    break
                self._step(active, states, modes)
                step += 1
            self.stats.steps += step
        except BaseException:
            for s in states:
                if self.cache.has(s.rid):
                    self.cache.free(s.rid)
            raise
        results = []
        for s, mode in zip(states, modes):
            if s.finish_reason != "abort":
                keep = min(s.kv_len, len(s.prompt) + len(s.output) - 1)
                self.cache.rollback(s.rid, keep)
                s.kv_len = keep
                if free:
                    self.cache.free(s.rid)
            self.stats.tokens += len(s.output)
            results.append(Result(s.output, s.finish_reason, s.forwards, mode, s.cycles,
                                  s.acceptance_length, s.rid, s.error))
        return results

    def _prefill(self, states: list[RequestState], modes: list[str],
                 embeds: list[torch.Tensor | None]) -> None:
        rows = []
        for s in states:
            self.cache.add(s.rid)
            rows.append(PassRow(s.rid, s.prompt, list(range(len(s.prompt))), 0, CAUSAL))
        batch = ForwardBatch.from_rows(rows, write_kv=True)
        joined = None
        if any(e is not None for e in embeds):     # a request's own embeddings, else its tokens'
            table = self.model.encoder.embed_tokens
            joined = torch.cat([table(batch.input_ids.new_tensor(s.prompt)) if e is None
                                else e.to(batch.input_ids.device) for s, e in zip(states, embeds)])
        logits = self._forward(batch) if joined is None else self._forward(batch, joined)
        spans = ForwardBatch.from_rows(rows).spans()
        seeds = self.decide(logits, [(end - 1, end, seed_ask(s)) for s, (_, end) in
                                     zip(states, spans)], self.cfg.mask_token_id)
        for s, mode, d in zip(states, modes, seeds):
            self.cache.commit(s.rid, len(s.prompt))
            s.kv_len = len(s.prompt)
            self.strategies[mode].start(s, d.tokens[0], d.logprobs[0] if d.logprobs else None)

    def _step(self, active: list[RequestState], states: list[RequestState], modes: list[str]) -> None:
        mode_of = {s.rid: m for s, m in zip(states, modes)}
        plans: dict[tuple, list[tuple[RequestState, Pass]]] = {}
        for s in active:
            p = self.strategies[mode_of[s.rid]].next_pass(s)
            plans.setdefault(p.group, []).append((s, p))
        for group in sorted(plans, key=repr):
            members = plans[group]
            _, write_kv, lora = group
            rows = [PassRow(s.rid, p.token_ids, p.positions, s.kv_len, p.mask) for s, p in members]
            batch = ForwardBatch.from_rows(rows, write_kv=write_kv, lora=lora)
            logits = self._forward(batch)
            self.stats.model_calls += 1
            spans = batch.spans()
            decisions = self.decide(logits, [(a, b, p.ask) for (_, p), (a, b) in
                                             zip(members, spans)], self.cfg.mask_token_id)
            for (s, p), d in zip(members, decisions):
                s.forwards += 1
                keep = self.strategies[mode_of[s.rid]].on_decision(s, p, d)
                if write_kv:
                    self.cache.commit(s.rid, keep)
                    s.kv_len += keep
                elif keep:
                    raise RuntimeError(f"{mode_of[s.rid]}: a pass without KV write kept {keep}")
            self.stats.pass_tokens += batch.num_tokens
            self.stats.head_rows += logits.rows_computed

    def _forward(self, batch: ForwardBatch, embeds: torch.Tensor | None = None) -> PassLogits:
        try:
            return self.model(batch, self.cache, lazy=True, embeds=embeds)
        except KVCacheFull as e:
            raise DecodeError(f"KV cache full: {e}") from e

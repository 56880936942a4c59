"""The shared step loop: prefill, then one forward per step carrying every unfinished
request's pass, any modes mixed.

Lifecycle of a request: ``add`` a sequence to the paged cache → one causal prefill forward for
all new prompts (KV written and committed; not counted as a forward) → its strategy's ``start``
→ steps. In each step every unfinished request asks its strategy for a :class:`Pass`; all of
them ride ONE forward, planned as the server plans a canvas step (``core.step_plan``: a row per
request with its own mask, LoRA on or off per token, the K/V writes of its causal tokens or
quadratic row heads; the decisions' tables in the same upload), run by the model's step
attention (``core.step_attention``; the Triton kernel's is ``kernels.step.triton_step``). Its
asks are decided in one call (``decide_batched``, where the logits are: logits are computed
only for the rows read, ``core/logits.py``, and one small result reaches the host); each
request's decision goes back to its strategy, which says how many staged KV entries to commit.
A finished request's KV is rolled back to at most ``prompt + output[:-1]`` (what AR would hold)
and freed; an aborted one is freed at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..attention import CAUSAL
from ..host_pack import HostPack
from ..kv_cache import KVCacheFull, PagedKVCache
from ..logits import PassLogits
from ..modes import RuleError, check_canvas, check_mode_fields
from ..step_plan import PlanRow
from .base import DecodeError, DecodeParams, Pass, RequestState, Strategy, seed_ask
from .decide_batched import decide_batched
from .decide_stage import stage_decisions
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
        passes = []
        for s in states:
            self.cache.add(s.rid)
            passes.append(Pass(list(s.prompt), list(range(len(s.prompt))), CAUSAL,
                               seed_ask(s, len(s.prompt) - 1), write_kv=True))
        joined = None
        if any(e is not None for e in embeds):     # a request's own embeddings, else its tokens'
            table = self.model.encoder.embed_tokens
            dev = table.weight.device
            joined = torch.cat([table(torch.tensor(s.prompt, device=dev)) if e is None
                                else e.to(dev) for s, e in zip(states, embeds)])
        seeds, _ = self._forward(states, passes, joined)
        for s, mode, d in zip(states, modes, seeds):
            self.cache.commit(s.rid, len(s.prompt))
            s.kv_len = len(s.prompt)
            self.strategies[mode].start(s, d.tokens[0], d.logprobs[0] if d.logprobs else None)

    def _step(self, active: list[RequestState], states: list[RequestState], modes: list[str]) -> None:
        mode_of = {s.rid: m for s, m in zip(states, modes)}
        passes = [self.strategies[mode_of[s.rid]].next_pass(s) for s in active]
        decisions, logits = self._forward(active, passes)
        self.stats.model_calls += 1
        self.stats.pass_tokens += len(logits)
        self.stats.head_rows += logits.rows_computed
        for s, p, d in zip(active, passes, decisions):
            s.forwards += 1
            keep = self.strategies[mode_of[s.rid]].on_decision(s, p, d)
            if p.write_kv:
                self.cache.commit(s.rid, keep)
                s.kv_len += keep
            elif keep:
                raise RuntimeError(f"{mode_of[s.rid]}: a pass without KV write kept {keep}")

    def _forward(self, states: list[RequestState], passes: list[Pass],
                 embeds: torch.Tensor | None = None) -> tuple[list, PassLogits]:
        """ONE forward of a step (``core.step_plan``): every request's pass, any mix of masks,
        K/V writes and LoRA, planned and copied up once with the decisions' tables; the K/V
        its writing passes stage. Returns every request's decision (``self.decide``) and the
        step's logits (their head rows counted as they were read)."""
        rows, dest, items, written, start = [], [], [], 0, 0
        for i, (s, p) in enumerate(zip(states, passes)):
            if p.lora and not self.model.has_lora:
                raise ValueError("this pass asks for the drafting LoRA but no adapter is loaded")
            writes = len(p.kv_offsets())
            if writes:
                if self.cache.length(s.rid) != s.kv_len:
                    raise ValueError(f"seq {s.rid}: a KV-writing pass must start at the committed "
                                     f"length {self.cache.length(s.rid)}, not {s.kv_len}")
                try:
                    dest.append(self.cache.append(s.rid, writes))
                except KVCacheFull as e:
                    raise DecodeError(f"KV cache full: {e}") from e
            n = len(p.token_ids)
            rows.append(PlanRow(i, s.kv_len, n, p.mask, p.token_ids, p.positions, bool(p.lora),
                                writes, written))
            items.append((start, start + n, p.ask))
            written += writes
            start += n
        pack = HostPack()
        staged = stage_decisions(items, self.cfg.mask_token_id, pack)
        dest = torch.cat(dest) if dest else torch.zeros(0, dtype=torch.long,
                                                         device=self.cache.device)
        plan, attend = self.model.step_attention(rows, self.cache, [s.rid for s in states], dest,
                                                 self.model.heads, pack)
        hidden = self.model.step_hidden(plan, attend, embeds)
        logits = PassLogits(hidden[:plan.num_tokens], self.model.head)
        decisions = self.decide(logits, items, self.cfg.mask_token_id, staged=pack.uploaded,
                                plan=staged)
        return decisions, logits

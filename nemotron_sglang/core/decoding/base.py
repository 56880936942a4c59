"""What every decoder shares: per-request parameters and state, the pass a strategy asks for,
and the :class:`Strategy` interface the step loop drives.

A strategy never touches the model, the KV cache or the logits. It looks at a request's state,
says which pass it needs next (:class:`Pass`: tokens, positions, mask, whether the pass stages KV
and uses the LoRA, and the :class:`~.decisions.Ask` to decide from its logits), and turns the
small host :class:`~.decisions.Decision` into emitted tokens and a number of staged KV entries to
keep. The loop (``loop.py``) or the SGLang adapter does the forwards, the decisions
(``decide_batched``, where the logits are) and the cache work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from ..attention import MaskSpec
from ..modes import (DEFAULT_THRESHOLD, RuleError, check_block_length, check_canvas,
                     check_max_steps, check_threshold)
from .decisions import Ask, Decision, Kind
from .grammar import GrammarCursor
from .processors import SamplingRule


GRAMMAR_CONFLICT = ("the grammar allows only tokens that the sampling rule forbids here "
                    "(min_new_tokens bans the stop tokens the grammar needs, or logit_bias)")


class DecodeError(ValueError):
    """A request that cannot be decoded as asked (bad parameter, too long, ...)."""


@dataclass(frozen=True)
class DecodeParams:
    """Per-request knobs. ``block_length`` None = the checkpoint's block size. ``sampling``: the
    whole sampling rule (penalties, top-k / top-p / min-p, logit bias, min_new_tokens;
    ``processors.py``); without it the rule is plain ``temperature``."""

    max_new_tokens: int = 64
    block_length: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 0.0
    seed: int = 0
    use_lora: bool = True
    sampling: SamplingRule | None = None
    logprobs: int | None = None     # each emitted token's logprob (and its top k); None: none
    logprob_ids: tuple[int, ...] = ()   # with logprobs: these ids' logprobs at each token
    max_steps: int | None = None    # diffusion: at most this many denoise passes per block
    # diffusion infill: the first block is this canvas (the mask id where the model fills, other
    # ids kept); its first ``canvas_emit`` tokens (None: all) are the output, then it ends
    canvas: tuple[int, ...] = ()
    canvas_emit: int | None = None

    @property
    def rule(self) -> SamplingRule:
        return self.sampling if self.sampling is not None else SamplingRule(self.temperature)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise DecodeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        try:
            if self.block_length is not None:
                check_block_length(self.block_length)
            check_threshold(self.threshold)
            if self.max_steps is not None:
                check_max_steps(self.max_steps)
            if self.canvas:
                check_canvas(self.canvas)
                if self.canvas_emit is not None and not 1 <= self.canvas_emit <= len(self.canvas):
                    raise RuleError("canvas", f"canvas_emit {self.canvas_emit} outside "
                                              f"[1, {len(self.canvas)}]")
        except RuleError as e:
            raise DecodeError(str(e)) from None
        if not self.temperature >= 0.0:
            raise DecodeError(f"temperature must be >= 0, got {self.temperature}")
        if self.sampling is not None and self.temperature not in (0.0,
                                                                  self.sampling.temperature):
            raise DecodeError("temperature and sampling.temperature disagree")


@dataclass(frozen=True)
class Pass:
    """One request's share of a forward: new tokens at positions starting at the KV length.

    ``refresh`` marks a causal pass whose only jobs are writing the KV of tokens already emitted
    and yielding the next seed from its last logit (AR decode, diffusion KV refresh). A server
    that re-encodes committed tokens itself (SGLang's separate context pass) skips such a pass
    and calls ``start`` with the re-encode's last logit instead; nothing else changes.

    ``ask`` says what is decided from the pass's logits; a forward computes the head only for
    its rows (``core/logits.py``), plus, for a quadratic pass, the accepted row's masks.
    """

    token_ids: list[int]
    positions: list[int]
    mask: MaskSpec
    ask: Ask
    write_kv: bool = False
    lora: bool = False
    refresh: bool = False

    def read_offsets(self) -> tuple[int, ...]:
        return self.ask.rows

    def kv_offsets(self) -> range:
        """Offsets of the new tokens whose K/V this pass writes (the mask's one rule,
        ``MaskSpec.kv_write_offsets``); none for a pass that writes nothing."""
        return self.mask.kv_write_offsets(len(self.token_ids)) if self.write_kv else range(0)


@dataclass
class RequestState:
    """A request in flight. ``kv_len`` = committed KV tokens; ``scratch`` is the strategy's."""

    rid: int
    prompt: list[int]
    params: DecodeParams
    block: int                     # resolved block length
    mask_id: int
    eos_id: int
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    kv_len: int = 0
    lora: bool = False             # drafting passes use the LoRA adapter
    forwards: int = 0
    cycles: int = 0                # draft-verify cycles (self-spec) or blocks (diffusion)
    cycle_tokens: int = 0          # tokens emitted by those cycles
    draft_hits: int = 0            # drafts accepted by verification (self-spec)
    draft_trials: int = 0          # drafts tried until each cycle's first rejection
    seed: int = 0                  # the uniforms of its sampled decisions (``uniforms.py``)
    draws: int = 0                 # uniform pairs drawn so far
    prior: list[int] = field(default_factory=list)  # output before this state (a re-prefill)
    logprobs: list = field(default_factory=list)     # per output token (params.logprobs set)
    grammar: GrammarCursor | None = None   # constrained decoding; consumed = prior + output
    error: str | None = None       # finish_reason "error": why the request cannot go on
    complete: bool = False         # the strategy ended the output (an infill region is filled):
                                   # no token may follow, whatever a server's stop rules say
    scratch: dict[str, Any] = field(default_factory=dict)

    def ask(self, kind: Kind, rows, pending: tuple[int, ...] = (), **kw) -> Ask:
        """An :class:`Ask` under this request's sampling rule on its next draws (advances
        them), with the output so far when the rule needs it (penalties, min_new_tokens) and
        the grammar's row masks when there is one (``grammar.py``; ``pending``: committed
        tokens after the output before row 0, a diffusion block's prefix)."""
        rule = self.params.rule
        history = tuple(self.prior + self.output) if rule.needs_history else ()
        if self.grammar is not None:
            drafts = kw.get("drafts", ())
            n = len(drafts) + 1 if kind in (Kind.VERIFY, Kind.QUADRATIC) else 1
            kw.update(allowed=self.grammar.rows(pending, drafts, n),
                      ordered=kind == Kind.DENOISE)
        a = Ask(kind, tuple(rows), rule, (self.seed, self.draws), history=history,
                logprobs=self.params.logprobs, logprob_ids=self.params.logprob_ids, **kw)
        self.draws += a.draws
        return a

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.output)

    def emit(self, tokens: list[int], logprobs: list | None = None) -> int:
        """Append tokens (with their logprob entries when requested), cutting after the first
        EOS, the token that completes the grammar, or at max_new_tokens; returns how many."""
        n = 0
        for i, t in enumerate(tokens):
            if self.finished:
                break
            complete = False
            if self.grammar is not None:
                try:
                    complete = self.grammar.advance([int(t)])
                except ValueError:
                    self.fail(GRAMMAR_CONFLICT)
                    break
            self.output.append(int(t))
            if self.params.logprobs is not None:
                self.logprobs.append(logprobs[i] if logprobs else None)
            n += 1
            if complete:
                self.finish_reason = "stop"          # a stop token completed the grammar
            elif t == self.eos_id:
                self.finish_reason = "stop"
            elif len(self.output) >= self.params.max_new_tokens:
                self.finish_reason = "length"
        return n

    def fail(self, message: str) -> None:
        """End the request with finish reason "error" (its KV is rolled back as for any end)."""
        self.finish_reason, self.error = "error", message

    def note_verify(self, drafts: int, accepted: int) -> None:
        """Count one verification: ``accepted`` of ``drafts`` drafts kept (block policy's α)."""
        self.draft_hits += accepted
        self.draft_trials += accepted + (1 if accepted < drafts else 0)

    @property
    def acceptance_length(self) -> float | None:
        return self.cycle_tokens / self.cycles if self.cycles else None


def seed_ask(req: RequestState, row: int = 0) -> Ask:
    """The pick of a prefill's last logit: row ``row`` of the view decided (0 of a one-row view
    of it; ``len(prompt) - 1`` of the whole prefill)."""
    return req.ask(Kind.PICK, (row,))


class Strategy:
    """A decode mode. Subclasses implement the three hooks; the loop calls them per request."""

    name: str = ""
    uses_lora: bool = False

    def start(self, req: RequestState, seed: int, logprob=None) -> None:
        """After a causal prefill: ``seed`` is the token its last logit picked (the caller
        decides ``seed_ask(req)`` on that logit), ``logprob`` its entry when requested."""
        raise NotImplementedError

    def next_pass(self, req: RequestState) -> Pass:
        """The pass this unfinished request needs next."""
        raise NotImplementedError

    def on_decision(self, req: RequestState, p: Pass, d: Decision) -> int:
        """Consume the decision of the pass's ask; return how many staged KV entries to commit
        (0 for passes that do not write KV)."""
        raise NotImplementedError

    def overshoot(self, block: int) -> int:
        """Positions past the last emitted token a pass may touch (for the length check)."""
        return block

    def idle(self, req: RequestState) -> bool:
        """No cycle in flight (nothing drafted awaits its verify pass): the request may switch
        strategy or block here (the adaptive block of ``core/block_policy.py``)."""
        return True

    def adopt(self, req: RequestState) -> None:
        """Take over an idle state an ar / self-spec strategy ran: the last emitted token is the
        seed, without KV. Strategies that cannot continue such a state refuse."""
        raise DecodeError(f"{self.name} cannot take over another mode's request")

"""What every decoder shares: per-request parameters and state, the pass a strategy asks for,
and the :class:`Strategy` interface the step loop drives.

A strategy never touches the model or the KV cache. It looks at a request's state, says which
pass it needs next (:class:`Pass`: tokens, positions, mask, whether the pass stages KV and uses
the LoRA), and turns that pass's logits into emitted tokens and a number of staged KV entries
to keep. The loop (``loop.py``) or the SGLang adapter does the forwards and the cache work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..attention import MaskSpec


class DecodeError(ValueError):
    """A request that cannot be decoded as asked (bad parameter, too long, ...)."""


@dataclass(frozen=True)
class DecodeParams:
    """Per-request knobs. ``block_length`` None = the checkpoint's block size."""

    max_new_tokens: int = 64
    block_length: int | None = None
    threshold: float = 0.9
    temperature: float = 0.0
    seed: int = 0
    use_lora: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise DecodeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        b = self.block_length
        if b is not None and (b < 1 or b & (b - 1)):
            raise DecodeError(f"block_length must be a power of two, got {b}")
        if not self.threshold >= 0.0:  # also refuses NaN
            raise DecodeError(f"threshold must be >= 0, got {self.threshold}")
        if not self.temperature >= 0.0:
            raise DecodeError(f"temperature must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class Pass:
    """One request's share of a forward: new tokens at positions starting at the KV length.

    ``refresh`` marks a causal pass whose only jobs are writing the KV of tokens already emitted
    and yielding the next seed from its last logit (AR decode, diffusion KV refresh). A server
    that re-encodes committed tokens itself (SGLang's separate context pass) skips such a pass
    and calls ``start`` with the re-encode's last logit instead; nothing else changes.

    ``reads`` names the token offsets whose logits the strategy reads first (None: all), so a
    forward computes the head for those rows only (``core/logits.py``); a strategy may read more
    rows afterwards (quadratic_spec: the accepted row's masks), computed on demand.
    """

    token_ids: list[int]
    positions: list[int]
    mask: MaskSpec
    write_kv: bool = False
    lora: bool = False
    refresh: bool = False
    reads: tuple[int, ...] | None = None

    def read_offsets(self) -> tuple[int, ...] | range:
        return range(len(self.token_ids)) if self.reads is None else self.reads

    @property
    def group(self) -> tuple:
        """Rows with equal groups may share one forward (SGLang: one causality per forward)."""
        return (self.mask.kind, self.write_kv, self.lora)


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
    generator: torch.Generator = field(default_factory=torch.Generator)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.output)

    def emit(self, tokens: list[int]) -> int:
        """Append tokens, cutting after the first EOS or at max_new_tokens; returns how many."""
        n = 0
        for t in tokens:
            if self.finished:
                break
            self.output.append(int(t))
            n += 1
            if t == self.eos_id:
                self.finish_reason = "stop"
            elif len(self.output) >= self.params.max_new_tokens:
                self.finish_reason = "length"
        return n

    def note_verify(self, drafts: int, accepted: int) -> None:
        """Count one verification: ``accepted`` of ``drafts`` drafts kept (block policy's α)."""
        self.draft_hits += accepted
        self.draft_trials += accepted + (1 if accepted < drafts else 0)

    @property
    def acceptance_length(self) -> float | None:
        return self.cycle_tokens / self.cycles if self.cycles else None


class Strategy:
    """A decode mode. Subclasses implement the three hooks; the loop calls them per request."""

    name: str = ""
    uses_lora: bool = False

    def start(self, req: RequestState, last_logits: torch.Tensor) -> None:
        """After the causal prefill: ``last_logits`` [V] predicts the first new token."""
        raise NotImplementedError

    def next_pass(self, req: RequestState) -> Pass:
        """The pass this unfinished request needs next."""
        raise NotImplementedError

    def on_logits(self, req: RequestState, p: Pass, logits) -> int:
        """Consume the pass's logits [len(p.token_ids), V] (a tensor or a lazy
        ``core.logits.PassLogitsView``, indexed alike); return how many staged KV entries to
        commit (0 for passes that do not write KV)."""
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

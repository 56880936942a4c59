"""What a strategy asks of a pass's logits (:class:`Ask`), what it gets back (:class:`Decision`),
and ``decide_each``: the per-request path, the readable twin of ``decide_batched``.

A strategy never reads logits itself. Its :class:`~.base.Pass` carries an ``Ask``; the loop (or
the SGLang round) runs the forward, decides every member's ask in one call — ``decide_batched``
on the device where the logits are, or this module's ``decide_each`` — and hands each strategy
its small host :class:`Decision`. Kinds (offsets are the pass's token offsets):

    PICK       rows (r,)           -> tokens [t]                       ar, every seed, refresh
    DRAFT      rows (1..B-1)       -> tokens = drafts, q (T > 0)       linear_spec draft
    VERIFY     rows (0..n)         -> tokens = emitted (1..n+1)        linear_spec verify
               drafts d_1..d_n judged by rows 0..n-1, bonus from row n
    DENOISE    rows = masked slots -> tokens = candidates, commit      diffusion
    QUADRATIC  rows = row heads    -> tokens = emitted, then DRAFT on the accepted row c's masks
               (offsets c·w + 2 .. c·w + w - 1, w = B + 1)          -> drafts, q

Every decided row j draws the uniform pair ``u(seed, start + j)`` (``uniforms.py``); a
QUADRATIC ask's draft rows draw ``start + len(rows) + j``. Rows follow the request's grammar
(``allowed``, ``grammar.py``: forbidden tokens at -inf before anything else) and its
``SamplingRule`` (``processors.py``); a rule with penalties or min_new_tokens needs the output
before the ask (``history``): a verifier row i also counts the drafts before it, a diffusion
slot s sits at output index len(history) + s, draft rows count the history alone. ``q`` (the proposals of sampled
drafts, [n, V] float64) stays where the logits are; only tokens and flags reach the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

import torch

from .grammar import constrain
from .processors import RowContext, SamplingRule
from .processors import shape_logits
from .sampling import commit_mask, diffusion_candidates, draft_tokens, pick, speculative_accept
from .uniforms import stream_uniforms


class Kind(Enum):
    PICK = "pick"
    DRAFT = "draft"
    VERIFY = "verify"
    DENOISE = "denoise"
    QUADRATIC = "quadratic"


@dataclass(frozen=True, eq=False)
class Ask:
    kind: Kind
    rows: tuple[int, ...]
    rule: SamplingRule                     # a float T is shorthand for SamplingRule(T)
    stream: tuple[int, int]                # (seed, first draw index)
    drafts: tuple[int, ...] = ()           # VERIFY / QUADRATIC: judged by rows[:-1]
    q: torch.Tensor | None = None          # their proposals [len(drafts), V] when sampled
    threshold: float = 0.0                 # DENOISE
    width: int = 0                         # QUADRATIC: B + 1
    history: tuple[int, ...] = ()          # output before the ask (rules that need it)
    logprobs: int | None = None            # None: none; k >= 0: each emitted token's, top k
    logprob_ids: tuple[int, ...] = ()      # with logprobs: these ids' logprobs at each token
    allowed: torch.Tensor | None = None    # grammar: bits [m, W] of rows[:m] (grammar.py)
    ordered: bool = False                  # DENOISE under a grammar: commit left to right

    def __post_init__(self) -> None:
        if not isinstance(self.rule, SamplingRule):
            object.__setattr__(self, "rule", SamplingRule(temperature=float(self.rule)))
        if self.kind in (Kind.VERIFY, Kind.QUADRATIC) and len(self.rows) != len(self.drafts) + 1:
            raise ValueError(f"{self.kind.value}: {len(self.drafts)} drafts need "
                             f"{len(self.drafts) + 1} rows, got {len(self.rows)}")
        if self.kind == Kind.QUADRATIC and self.width < 2:
            raise ValueError("quadratic: width = block + 1 >= 2")

    @property
    def draws(self) -> int:
        """Uniform pairs this ask consumes (its rows, plus a quadratic ask's draft rows)."""
        return len(self.rows) + (self.width - 2 if self.kind == Kind.QUADRATIC else 0)

    @property
    def temperature(self) -> float:
        return self.rule.temperature

    @property
    def sampled(self) -> bool:
        return self.rule.sampled

    def context(self) -> RowContext | None:
        """Each row's preceding output (None when the rule needs none)."""
        if not self.rule.needs_history:
            return None
        if self.kind in (Kind.VERIFY, Kind.QUADRATIC):
            return RowContext(self.history, self.drafts, tuple(range(len(self.rows))))
        if self.kind == Kind.DENOISE:
            return RowContext(self.history, (), self.rows)
        return RowContext(self.history, (), (0,) * len(self.rows))

    def draft_context(self) -> RowContext | None:
        """A QUADRATIC ask's draft rows: the history alone, output index len + 1 + j."""
        if not self.rule.needs_history:
            return None
        return RowContext(self.history, (), tuple(range(1, self.width - 1)))


@dataclass
class Decision:
    tokens: list[int]                      # see the kinds in the module docstring
    commit: list[bool] | None = None       # DENOISE: which rows commit their candidate
    drafts: list[int] | None = None        # QUADRATIC: the next drafts
    q: torch.Tensor | None = None          # DRAFT / QUADRATIC at T > 0: proposals [n, V]
    accepted: int = field(default=0)       # VERIFY / QUADRATIC: drafts kept
    logprobs: list[tuple] | None = None    # per token: (logprob, [(token, logprob)] top k,
                                           #             [logprob of each ask.logprob_ids])


def logprob_temperature(rule: SamplingRule) -> float:
    return rule.temperature if rule.sampled else 1.0


def logprob_rows(z: torch.Tensor, temperature) -> torch.Tensor:
    """What a token's logprob is read from, as SGLang reports it: log softmax(z / T) of the
    processed logits [n, V] (``logprob_temperature``: T = 1 when greedy; the mask id stays in
    the normaliser), float32 or float64; ``temperature`` a float or a tensor [n, 1]."""
    lf = z if z.dtype == torch.float64 else z.float()
    return torch.log_softmax(lf / temperature, dim=-1)


def _entries(lp: torch.Tensor, tokens: list[int], k: int, ids: tuple[int, ...]) -> list[tuple]:
    """(logprob of tokens[j] under row j, its top k, the logprobs of ``ids``) per row of
    lp [n, V]."""
    out = []
    for j, t in enumerate(tokens):
        top = []
        if k:
            vals, top_ids = lp[j].topk(k)
            top = list(zip(top_ids.tolist(), vals.tolist()))
        out.append((float(lp[j, t]), top, [float(lp[j, i]) for i in ids]))
    return out


def _u(ask: Ask, first: int, n: int, device) -> torch.Tensor:
    seed, start = ask.stream
    return stream_uniforms(seed, start + first, n, device)


def decide_one(logits, ask: Ask, mask_id: int) -> Decision:
    """One ask on its pass's logits (a tensor [n, V] or a lazy ``PassLogitsView``)."""
    rows = constrain(logits[list(ask.rows)], ask.allowed)
    u = _u(ask, 0, len(ask.rows), rows.device)
    rule, ctx = ask.rule, ask.context()
    k = ask.logprobs

    def entries(tokens):
        if k is None:
            return None
        lp = logprob_rows(shape_logits(rows[:len(tokens)], rule,
                                       _first(ctx, len(tokens))), logprob_temperature(rule))
        return _entries(lp, tokens, k, ask.logprob_ids)

    if ask.kind == Kind.PICK:
        tokens = pick(rows, rule, mask_id, u, ctx).tolist()
        return Decision(tokens, logprobs=entries(tokens))
    if ask.kind == Kind.DRAFT:
        drafts, q = draft_tokens(rows, rule, mask_id, u, ctx)
        return Decision(drafts, q=q)
    if ask.kind == Kind.DENOISE:
        cand, conf = diffusion_candidates(rows, rule, mask_id, u, ctx)
        tokens = cand.tolist()
        return Decision(tokens, commit=commit_mask(conf, ask.threshold, ask.ordered).tolist(),
                        logprobs=entries(tokens))
    out = speculative_accept(list(ask.drafts), ask.q, rows, rule, mask_id, u, ctx)
    c = len(out) - 1
    if ask.kind == Kind.VERIFY:
        return Decision(out, accepted=c, logprobs=entries(out))
    w = ask.width                                    # QUADRATIC: draft from row c's masks
    masks = logits[c * w + 2:(c + 1) * w]
    drafts, q = draft_tokens(masks, rule, mask_id, _u(ask, len(ask.rows), w - 2, rows.device),
                             ask.draft_context())
    return Decision(out, drafts=drafts, q=q if drafts else None, accepted=c,
                    logprobs=entries(out))


def _first(ctx: RowContext | None, n: int) -> RowContext | None:
    return None if ctx is None else RowContext(ctx.history, ctx.tail, ctx.extra[:n])


def decide_each(logits, items: Sequence[tuple[int, int, Ask]], mask_id: int,
                staged=None, plan=None) -> list[Decision]:
    """Every ask of a forward, one at a time. ``items``: (start, end, ask) per pass, the pass's
    rows of ``logits`` (a tensor [T, V] or ``PassLogits``). ``staged`` and ``plan`` (what
    ``stage_decisions`` uploaded and returned for ``decide_batched``) are accepted and ignored, so a caller
    can swap the two: this host path makes its own small tensors as it goes."""
    out = []
    for start, end, ask in items:
        view = logits.span(start, end) if hasattr(logits, "span") else logits[start:end]
        out.append(decide_one(view, ask, mask_id))
    return out

"""A request's sampling rule (:class:`SamplingRule`) and the logits processors, applied to every
decided row as SGLang applies them to an AR decode step (``sglang/srt/sampling``,
``layers/sampler.py``), so that a row's law is AR's as of its position.

For a row predicting output token t, with ``count[v]`` = occurrences of v in output tokens
0..t-1 (the prompt never counts) and z the raw logits [V]:

    z -= frequency_penalty · count + presence_penalty · 1[count > 0]
    z[v] = z[v] / r if z[v] >= 0 else z[v] · r      for count[v] > 0 (repetition_penalty r)
    z[stop ids] = -inf                               while t < min_new_tokens
    z += logit_bias
    z = transform(z)                                 # the request's own processor, if any
    (then the mask id is banned by the decision rules, sampling.ban)
    greedy: argmax z         sampled: p = softmax(z / T), then top-k / top-p / min-p
                             (``truncate``), renormalised; draw from p

``truncate`` follows SGLang's torch path: sort p descending (s, cumulative c); drop rank j >= k,
drop j where c[j] - s[j] > top_p (the token that crosses top_p stays), drop s[j] < s[0] · min_p.

Row context (``RowContext``): which output tokens precede each row. It is exact for every row
whose token can be emitted from it (a pick, a verifier row, a diffusion slot); a draft row is
conditioned on the output before its pass, which only changes its proposal q — any proposal
keeps speculative sampling exact, and greedy verification decides every emitted token.
Tensors in, tensors out; no host reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..modes import RuleError

TOP_K_OFF = 0                        # top_k 0: the whole vocabulary



@dataclass(frozen=True)
class SamplingValues:
    """A request's sampling parameters as given, unchecked: what :class:`SamplingRule` checks
    and applies, and what a server's view of a request carries (``SamplingView``)."""

    temperature: float = 0.0         # 0 = greedy
    top_k: int = TOP_K_OFF
    top_p: float = 1.0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_new_tokens: int = 0


@dataclass(frozen=True)
class SamplingRule(SamplingValues):
    stop_ids: tuple[int, ...] = ()   # banned while the output is shorter than min_new_tokens
    # a request's own logits processor (rows [n, V] -> [n, V]), applied last: after the
    # penalties and the bias, before the temperature, as SGLang applies a custom logit processor
    transform: Callable[[torch.Tensor], torch.Tensor] | None = field(
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        checks = [("temperature", self.temperature >= 0), ("top_k", self.top_k >= 0),
                  ("top_p", 0 < self.top_p <= 1), ("min_p", 0 <= self.min_p <= 1),
                  ("repetition_penalty", self.repetition_penalty > 0),
                  ("min_new_tokens", self.min_new_tokens >= 0)]
        for name, ok in checks:
            if not ok:      # NaN fails every comparison
                raise RuleError(name, f"out of range ({getattr(self, name)!r})")

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    @property
    def penalized(self) -> bool:
        return (self.frequency_penalty != 0 or self.presence_penalty != 0
                or self.repetition_penalty != 1)

    @property
    def needs_history(self) -> bool:
        """Rows need the preceding output (penalty counts, min_new_tokens)."""
        return self.penalized or (self.min_new_tokens > 0 and bool(self.stop_ids))

    @property
    def shapes_logits(self) -> bool:
        return self.needs_history or bool(self.logit_bias) or self.transform is not None

    @property
    def truncated(self) -> bool:
        return self.sampled and (self.top_k != TOP_K_OFF or self.top_p < 1 or self.min_p > 0)


@dataclass(frozen=True)
class RowContext:
    """Per decided row: the output tokens before it, as a shared ``history`` plus the first
    ``extra[j]`` of ``tail`` (a verifier row's preceding drafts)."""

    history: tuple[int, ...]
    tail: tuple[int, ...]
    extra: tuple[int, ...]           # [n] how many of ``tail`` precede row j

    def lengths(self) -> list[int]:
        return [len(self.history) + e for e in self.extra]


def shape_tables(rule: SamplingRule, ctx: RowContext | None) -> dict[str, tuple[list, torch.dtype]]:
    """The host tables ``shape_logits`` reads for rows under ``rule`` and ``ctx``, by role:
    ``hist`` (output before the rows), ``tail`` / ``extra`` (each row's own preceding tokens:
    row n has seen ``tail[:extra[n]]``), ``short`` / ``stop`` (rows below min_new_tokens, the
    stop ids they may not emit), ``bias_ids`` / ``bias_vals``. A caller may stage them with
    other tables (``decide_stage``) and hand ``shape_logits`` their device copies."""
    t: dict[str, tuple[list, torch.dtype]] = {}
    if rule.needs_history:
        if ctx is None:
            raise ValueError("this sampling rule needs each row's preceding output")
        if rule.penalized:
            if ctx.history:
                t["hist"] = (list(ctx.history), torch.long)
            if ctx.tail and max(ctx.extra) > 0:
                t["tail"] = (list(ctx.tail), torch.long)
                t["extra"] = (list(ctx.extra), torch.long)
        if rule.min_new_tokens > 0 and rule.stop_ids:
            t["short"] = ([n < rule.min_new_tokens for n in ctx.lengths()], torch.bool)
            t["stop"] = (list(rule.stop_ids), torch.long)
    if rule.logit_bias:
        t["bias_ids"] = ([tok for tok, _ in rule.logit_bias], torch.long)
        t["bias_vals"] = ([b for _, b in rule.logit_bias], torch.float64)
    return t


def counts(tables: dict[str, torch.Tensor], n: int, vocab: int, device) -> torch.Tensor:
    """Occurrence counts [n, V] float32 of each row's preceding output tokens (``hist``, and
    ``tail`` / ``extra`` of ``shape_tables`` on the device)."""
    base = torch.zeros(vocab, device=device)
    if "hist" in tables:
        hist = tables["hist"]
        base.index_add_(0, hist, torch.ones(hist.numel(), device=device))
    out = base.expand(n, vocab).clone()
    if "tail" in tables:
        tail = tables["tail"]
        onehot = torch.zeros(tail.numel() + 1, vocab, device=device)
        onehot[torch.arange(1, tail.numel() + 1, device=device), tail] = 1.0
        out += onehot.cumsum(0)[tables["extra"]]      # cumsum[e] = counts of tail[:e]
    return out


def shape_logits(z: torch.Tensor, rule: SamplingRule, ctx: RowContext | None,
                 tables: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The penalties, the min_new_tokens ban, the logit bias and the rule's own transform on
    rows z [n, V] of one request (a copy). ``tables``: ``shape_tables(rule, ctx)`` already on
    z's device (staged by the caller); else they are copied up here."""
    if not rule.shapes_logits:
        return z
    if tables is None:
        tables = {role: torch.tensor(v, dtype=d, device=z.device)
                  for role, (v, d) in shape_tables(rule, ctx).items()}
    z = z.to(torch.float32, copy=True) if z.dtype != torch.float64 else z.clone()
    if rule.penalized:
        c = counts(tables, z.shape[0], z.shape[-1], z.device).to(z.dtype)
        z = z - rule.frequency_penalty * c - rule.presence_penalty * (c > 0).to(z.dtype)
        if rule.repetition_penalty != 1:
            r = rule.repetition_penalty
            z = torch.where(c > 0, torch.where(z >= 0, z / r, z * r), z)
    if "short" in tables:
        stop = tables["stop"]
        z[:, stop] = torch.where(tables["short"][:, None], float("-inf"), z[:, stop])
    if "bias_ids" in tables:
        z[:, tables["bias_ids"]] += tables["bias_vals"].to(z.dtype)
    if rule.transform is not None:
        z = rule.transform(z)
    return z


def truncate(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
             min_p: torch.Tensor) -> torch.Tensor:
    """Top-k / top-p / min-p on probabilities [n, V] with per-row limits [n] (top_k 0: all);
    the kept mass, unnormalised (SGLang's torch-path rule, module docstring)."""
    s, idx = probs.sort(dim=-1, descending=True, stable=True)
    c = s.cumsum(-1)
    rank = torch.arange(s.shape[-1], device=s.device)
    k = torch.where(top_k > 0, top_k, s.shape[-1])
    drop = (rank[None, :] >= k[:, None]) | ((c - s) > top_p[:, None]) | \
        (s < s[:, :1] * min_p[:, None])
    s = s.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, idx, s)

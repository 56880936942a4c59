"""The host stage of the batched decision layer: every table ``decide_batched`` reads on the
device, built from the asks alone (rows, rules, drafts, streams, histories, grammar bits; never
the logits) and named ``decide.*`` in a :class:`~nemotron_sglang.core.host_pack.HostPack`, so
that all of them cross in ONE host→device copy: the step's own upload when the caller stages
them before its forward (``stage_decisions``), else the one upload ``decide_batched`` makes.

    plan = DecidePlan(items)        # host lists, and what the device stage branches on
    plan.stage(pack)                # its tables (n decided rows, a = an ask's index):

    decide.abs [n]                  the absolute row of each decided row (head rows read)
    decide.heads, decide.inv        when abs is not increasing: its distinct rows sorted, and
                                    each row's place among them (each row computed once)
    decide.grammar.rows, .bits      grammar asks' rows [g] and bits [g·W] (their dtype)
    decide.shape.{a}.*              ask a's processors: hist, tail, extra (penalty counts),
                                    short bool, stop (min_new_tokens), bias_ids, bias_vals
    decide.draw.*                   hot [s] (rows that sample), temp [s], cut [c] (of hot: rows
                                    truncated), top_k, top_p, min_p [c]; seeds, draws [n]
    decide.verify.rows, .x          drafts judged (greedy ones first), the drafts; s_hot:
                                    the sampled ones' rows of the sampled laws
    decide.denoise.*                rows, ask, local, head, thr, ordered bool
    decide.lp.*                     temp [n] (logprob temperatures), ids [n·m]
    decide.quad.judge               [q·(widest+1)] the rows whose accepts a quadratic ask
                                    counts (n: a zero)
    decide.q2.*                     the quadratic second stage: base, width, ask, and its own
                                    draw.* and shape.{a}.* (sharing ask a's hist, stop, bias)

Integers are int64; floats float64, cast on the device to the logits' dtype where the
decision computes in it (the rounding a tensor made in that dtype gets). A section is added
only when some ask needs it; the device stage (``decide_batched``) branches on this plan,
never on the tables, so it reads nothing back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..host_pack import HostPack
from .decisions import Ask, Kind, logprob_temperature
from .processors import RowContext, SamplingRule, shape_tables
from .uniforms import reduce_seed


@dataclass(frozen=True)
class ShapePart:
    """Rows ``lo..hi-1`` of a stage, shaped by one ask's ``rule``; ``names``: role (hist, tail,
    extra, short, stop, bias_ids, bias_vals) -> the section holding that table."""

    lo: int
    hi: int
    rule: SamplingRule
    names: dict[str, str]


class DrawPlan:
    """A stage's sampled rows (``hot``) and, among them, the truncated ones (``cut``)."""

    def __init__(self, rules: list[SamplingRule], seeds: list[int], draws: list[int]):
        self.hot = [i for i, r in enumerate(rules) if r.sampled]
        self.cut = [k for k, i in enumerate(self.hot) if rules[i].truncated]
        self.pos = {r: k for k, r in enumerate(self.hot)}      # row -> row of the laws
        self._tables = (rules, seeds, draws)

    def tables(self, key: str) -> dict:
        """``key``.hot, .temp, .seeds and .draws (every row's stream: the uniforms), and when
        some row truncates .cut, .top_k, .top_p, .min_p; nothing when no row samples."""
        if not self.hot:
            return {}
        rules, seeds, draws = self._tables
        lim = [rules[self.hot[k]] for k in self.cut]
        out = {f"{key}.hot": (self.hot, torch.long),
               f"{key}.temp": ([rules[i].temperature for i in self.hot], torch.float64),
               f"{key}.seeds": (seeds, torch.long), f"{key}.draws": (draws, torch.long)}
        if self.cut:
            out.update({f"{key}.cut": (self.cut, torch.long),
                        f"{key}.top_k": ([r.top_k for r in lim], torch.long),
                        f"{key}.top_p": ([r.top_p for r in lim], torch.float64),
                        f"{key}.min_p": ([r.min_p for r in lim], torch.float64)})
        return out


class DecidePlan:
    """The host side of one ``decide_batched`` call on ``items`` ((start, end, ask) per pass)."""

    def __init__(self, items: Sequence[tuple[int, int, Ask]]):
        self.items = items
        self.tables: dict[str, tuple] = {}                 # name -> (values, dtype)
        self.first: list[int] = []                         # first row number of each ask
        absolute, rules, seeds, draws = [], [], [], []
        for start, _, ask in items:
            self.first.append(len(absolute))
            seed, d0 = ask.stream
            for j, r in enumerate(ask.rows):
                absolute.append(start + r), rules.append(ask.rule)
                seeds.append(reduce_seed(seed)), draws.append(d0 + j)
        self.n, self.rules = len(absolute), rules
        self._add("decide.abs", absolute)
        self.deduped = any(b <= a for a, b in zip(absolute, absolute[1:]))
        if self.deduped:
            heads = sorted(set(absolute))
            at = {r: i for i, r in enumerate(heads)}
            self._add("decide.heads", heads)
            self._add("decide.inv", [at[r] for r in absolute])
        self._grammar()
        self._shape_of = {a: self._part(f"decide.shape.{a}", self.first[a], len(ask.rows),
                                        ask.rule, ask.context())
                          for a, (_, _, ask) in enumerate(items)
                          if ask.rule.shapes_logits and ask.rows}
        self.shape = list(self._shape_of.values())
        self.draw = DrawPlan(rules, seeds, draws)
        self.tables.update(self.draw.tables("decide.draw"))
        self._verify()
        self._denoise()
        self._logprobs()
        self.quad = [a for a, (_, _, ask) in enumerate(items) if ask.kind == Kind.QUADRATIC]
        if self.quad:
            self._quadratic()

    def stage(self, pack: HostPack) -> None:
        """Add every table to ``pack`` (one upload carries them with the step's own)."""
        for name, (values, dtype) in self.tables.items():
            pack.add(name, values, dtype)

    def _add(self, name: str, values, dtype: torch.dtype = torch.long) -> None:
        self.tables[name] = (values, dtype)

    def _grammar(self) -> None:
        parts = [(self.first[a], ask.allowed) for a, (_, _, ask) in enumerate(self.items)
                 if ask.allowed is not None and len(ask.allowed)]
        self.grammar_rows = [f + j for f, bits in parts for j in range(len(bits))]
        self.grammar_bits = [bits for _, bits in parts]
        self.bits_staged = bool(parts) and all(b.device.type == "cpu" for _, b in parts)
        if parts:
            self._add("decide.grammar.rows", self.grammar_rows)
        if self.bits_staged:              # filled from the grammar state before the forward
            bits = torch.cat(self.grammar_bits)
            self.bits_words = int(bits.shape[1])
            self._add("decide.grammar.bits", bits, bits.dtype)

    def _part(self, key: str, lo: int, n: int, rule: SamplingRule, ctx: RowContext | None,
              shared: dict[str, str] | None = None) -> ShapePart:
        """``processors.shape_logits``'s tables for ``n`` rows under ``rule`` and ``ctx``
        (``shared``: sections of the same ask's first stage, reused)."""
        names = dict(shared or {})
        for role, (values, dtype) in shape_tables(rule, ctx).items():
            if role not in names:
                names[role] = f"{key}.{role}"
                self._add(names[role], values, dtype)
        return ShapePart(lo, lo + n, rule, names)

    def _verify(self) -> None:
        greedy, sampled, self.proposals = [], [], []
        for a, (_, _, ask) in enumerate(self.items):
            if ask.kind in (Kind.VERIFY, Kind.QUADRATIC) and ask.drafts:
                rows = [(self.first[a] + j, x) for j, x in enumerate(ask.drafts)]
                if ask.sampled:
                    sampled += rows
                    self.proposals.append(ask.q[:len(ask.drafts)])   # on the device
                else:
                    greedy += rows
        self.greedy, self.sampled = len(greedy), len(sampled)
        if greedy or sampled:
            self._add("decide.verify.rows", [r for r, _ in greedy + sampled])
            self._add("decide.verify.x", [x for _, x in greedy + sampled])
        if sampled:
            self._add("decide.verify.s_hot", [self.draw.pos[r] for r, _ in sampled])

    def _denoise(self) -> None:
        rows, ask_of, local, head, thr, ordered = [], [], [], [], [], []
        for a, (_, _, ask) in enumerate(self.items):
            if ask.kind == Kind.DENOISE:
                h = len(rows)
                for j in range(len(ask.rows)):
                    rows.append(self.first[a] + j), ask_of.append(a), local.append(j)
                    head.append(h), thr.append(ask.threshold), ordered.append(ask.ordered)
        self.denoise, self.ordered = bool(rows), any(ordered)
        if rows:
            for name, values in (("rows", rows), ("ask", ask_of), ("local", local),
                                 ("head", head)):
                self._add(f"decide.denoise.{name}", values)
            self._add("decide.denoise.thr", thr, torch.float64)
        if self.ordered:
            self._add("decide.denoise.ordered", ordered, torch.bool)

    def _logprobs(self) -> None:
        want = [ask for _, _, ask in self.items if ask.logprobs is not None]
        self.k = max((ask.logprobs for ask in want), default=None)
        self.m = max((len(ask.logprob_ids) for ask in want), default=0)
        if self.k is not None:
            self._add("decide.lp.temp", [logprob_temperature(r) for r in self.rules],
                      torch.float64)
        if self.m:             # each row's ask's logprob_ids, padded with id 0: [n, m]
            table = [[0] * self.m for _ in range(self.n)]
            for a, (_, _, ask) in enumerate(self.items):
                if ask.logprobs is not None and ask.logprob_ids:
                    for r in range(self.first[a], self.first[a] + len(ask.rows)):
                        table[r][:len(ask.logprob_ids)] = ask.logprob_ids
            self._add("decide.lp.ids", [i for row in table for i in row])

    def _quadratic(self) -> None:
        """Which rows' accepts each quadratic ask counts; its draft rows' base offsets (row c's
        masks are base + c·width), rules, streams and processors."""
        asks = [self.items[a][2] for a in self.quad]
        self.widest = max(len(ask.drafts) for ask in asks)
        judge = [[self.n] * (self.widest + 1) for _ in asks]
        for k, a in enumerate(self.quad):
            judge[k][:len(asks[k].drafts)] = range(self.first[a],
                                                   self.first[a] + len(asks[k].drafts))
        self._add("decide.quad.judge", [r for row in judge for r in row])
        base, width, ask_k, seeds, draws, rules = [], [], [], [], [], []
        self.q2_shape, self.q2_rows = [], []
        for k, a in enumerate(self.quad):
            start, _, ask = self.items[a]
            seed, d0 = ask.stream
            self.q2_rows.append(range(len(base), len(base) + ask.width - 2))
            if ask.rule.shapes_logits and ask.width > 2:
                own = self._shape_of[a].names
                self.q2_shape.append(self._part(
                    f"decide.q2.shape.{a}", len(base), ask.width - 2, ask.rule,
                    ask.draft_context(), {r: own[r] for r in ("hist", "stop", "bias_ids",
                                                              "bias_vals") if r in own}))
            for j in range(ask.width - 2):
                base.append(start + 2 + j), width.append(ask.width), ask_k.append(k)
                seeds.append(reduce_seed(seed)), draws.append(d0 + len(ask.rows) + j)
                rules.append(ask.rule)
        for name, values in (("base", base), ("width", width), ("ask", ask_k)):
            self._add(f"decide.q2.{name}", values)
        self.q2_draw = DrawPlan(rules, seeds, draws)
        self.tables.update(self.q2_draw.tables("decide.q2.draw"))


def stage_decisions(items: Sequence[tuple[int, int, Ask]], mask_id: int, pack: HostPack
                    ) -> "DecidePlan":
    """Add to ``pack`` every host table a later ``decide_batched(logits, items, mask_id,
    staged=pack.upload(device), plan=<this>)`` reads (``mask_id`` needs none: a device
    constant); returns the plan, so that the call does not build it again."""
    plan = DecidePlan(items)
    plan.stage(pack)
    return plan

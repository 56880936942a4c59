"""The batched decision layer: every ask of one forward decided on the device that holds the
logits, with ONE device→host transfer of O(rows) integers (never O(vocab)).

Same contract as ``decisions.decide_each`` (its readable twin; tests run both on the same
logits and uniforms): ``decide_batched(logits, items, mask_id) -> list[Decision]``.

Per forward, with N the rows all asks read (their logits computed in one head call):

    L [N, V] -> grammar asks' forbidden tokens at -inf (their bits, one host→device copy)
             -> each ask's processors (penalties, bias, min_new_tokens; processors.py) -> Z
    Z -> ban mask id -> greedy argmax [N]
    sampled rows: P = softmax(Z / T) float64 -> top-k / top-p / min-p -> inverse-CDF draw
                  with u[:, 0]                                                       [N]
    VERIFY / QUADRATIC rows with a draft x:    accept = argmax == x      (T == 0)
                                               accept = u0·q(x) < p(x)   (T > 0)
                                               stop   = argmax | residual draw with u[:, 1]
    DENOISE rows: confidence, commit = conf >= threshold or first max of the ask (an ordered
                  ask: slot 0, then while every slot so far reaches the threshold)
    QUADRATIC: accepted count c (leading accepts, on the device) -> gather the masks of row c
               (their logits computed now) -> DRAFT decisions on them
    logprobs (asks that want them): log softmax(Z / T) at token, stop and draft, top k
    pack [token, accept, stop, commit (, 3 logprobs)] per row (+ top k) + second-stage drafts
         -> one .tolist() -> ``packed.unpack_decisions``

Everything the host needs to build the index tensors is known before the forward (rows,
drafts, temperatures, streams); tensors go host→device only. Sampled drafts' proposals q stay
on the device, as slices the strategies keep for their verify.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .decisions import Ask, Decision, Kind, logprob_rows, logprob_temperature
from .grammar import unpack
from .packed import unpack_decisions
from .processors import RowContext, SamplingRule, shape_logits, truncate
from . import sampling
from .sampling import confidence, normalised, sample
from .uniforms import reduce_seed, uniforms


def _long(values: list[int], dev) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=dev)


def _rows(logits, index: list[int]) -> torch.Tensor:
    """Rows [n, V] of a logits tensor or ``PassLogits`` (one head call)."""
    if isinstance(logits, torch.Tensor):
        return logits[index]
    return logits.rows(index)


def _gather(logits, index: torch.Tensor) -> torch.Tensor:
    """Rows at a device index (no host read of ``index``)."""
    if isinstance(logits, torch.Tensor):
        return logits.index_select(0, index)
    return logits.rows_at(index)


def _uniforms(rules: list[SamplingRule], seeds: list[int], draws: list[int], dev
              ) -> torch.Tensor | None:
    """The rows' uniform pairs [n, 2], or None when no row samples (greedy rows read none)."""
    if not any(r.sampled for r in rules):
        return None
    return uniforms(_long(seeds, dev), _long(draws, dev))


def _draw(lb: torch.Tensor, rules: list[SamplingRule], u: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Tokens [n] for banned, shaped logits [n, V]: argmax, or a draw with ``u[:, 0]`` from the
    row's law (``sampling.law``) for rows with T > 0. Returns (tokens, the sampled rows' laws [s, V]
    float64, unnormalised when truncated, or None; their row numbers)."""
    tokens = lb.argmax(-1)
    hot = [i for i, r in enumerate(rules) if r.sampled]
    if not hot:
        return tokens, None, hot
    dev = lb.device
    hot_t = _long(hot, dev)
    temp = torch.tensor([rules[i].temperature for i in hot], dtype=torch.float64, device=dev)
    probs = torch.softmax(lb.index_select(0, hot_t).to(torch.float64) / temp[:, None], dim=-1)
    cut = [k for k, i in enumerate(hot) if rules[i].truncated]
    if cut:
        ct = _long(cut, dev)
        lim = [rules[hot[k]] for k in cut]
        probs = probs.index_put((ct,), truncate(
            probs.index_select(0, ct), _long([r.top_k for r in lim], dev),
            torch.tensor([r.top_p for r in lim], dtype=torch.float64, device=dev),
            torch.tensor([r.min_p for r in lim], dtype=torch.float64, device=dev)))
    tokens = tokens.index_put((hot_t,), sample(probs, u[:, 0].index_select(0, hot_t)))
    return tokens, probs, hot


def _shaped(L: torch.Tensor, parts: list[tuple[list[int], SamplingRule, RowContext | None]]
            ) -> torch.Tensor:
    """L [n, V] with each part's processors applied to its rows (one request's rule each)."""
    parts = [(rows, rule, ctx) for rows, rule, ctx in parts if rule.shapes_logits and rows]
    if not parts:
        return L
    z = L.float() if L.dtype != torch.float64 else L.clone()
    for rows, rule, ctx in parts:
        idx = _long(rows, L.device)
        z = z.index_put((idx,), shape_logits(L.index_select(0, idx), rule, ctx).to(z.dtype))
    return z


def _constrained(L: torch.Tensor, items, plan) -> torch.Tensor:
    """L [n, V] with each grammar ask's forbidden tokens at -inf (its first m rows; the bits of
    every such ask go host->device in one copy)."""
    parts = [(plan.first[a], ask.allowed) for a, (_, _, ask) in enumerate(items)
             if ask.allowed is not None and len(ask.allowed)]
    if not parts:
        return L
    rows = _long([f + j for f, bits in parts for j in range(len(bits))], L.device)
    bits = torch.cat([b for _, b in parts])
    if bits.device != L.device:                           # host -> device, never back
        bits = bits.to(L.device, non_blocking=True)
    forbid = ~unpack(bits, L.shape[-1])
    return L.index_put((rows,), L.index_select(0, rows).masked_fill(forbid, float("-inf")))


class _Plan:
    """Host-side row tables of one forward (lists; shipped to the device once)."""

    def __init__(self, items: Sequence[tuple[int, int, Ask]]):
        self.abs, self.rules, self.seeds, self.draws = [], [], [], []
        self.first = []                                   # first row number of each ask
        for start, _, ask in items:
            self.first.append(len(self.abs))
            seed, d0 = ask.stream
            for j, r in enumerate(ask.rows):
                self.abs.append(start + r)
                self.rules.append(ask.rule)
                self.seeds.append(reduce_seed(seed))
                self.draws.append(d0 + j)


def decide_batched(logits, items: Sequence[tuple[int, int, Ask]], mask_id: int
                   ) -> list[Decision]:
    """Every ask of a forward; ``items``: (start, end, ask) per pass. See the module docstring."""
    if not items:
        return []
    plan = _Plan(items)
    L = _shaped(_constrained(_rows(logits, plan.abs), items, plan), [
        (list(range(plan.first[a], plan.first[a] + len(ask.rows))), ask.rule, ask.context())
        for a, (_, _, ask) in enumerate(items)])
    dev = L.device
    n = len(plan.abs)
    lb = L.clone()
    lb[:, mask_id] = float("-inf")
    u = _uniforms(plan.rules, plan.seeds, plan.draws, dev)
    token, probs, hot = _draw(lb, plan.rules, u)
    hot_pos = {r: k for k, r in enumerate(hot)}           # row -> row of probs
    accept = torch.zeros(n, dtype=torch.long, device=dev)
    stop = token.clone()
    commit = torch.zeros(n, dtype=torch.long, device=dev)

    # ---- verify rows: greedy and sampled accept tests, the residual draw ----
    g_rows, g_x, s_rows, s_x, s_q = [], [], [], [], []
    for a, (_, _, ask) in enumerate(items):
        if ask.kind not in (Kind.VERIFY, Kind.QUADRATIC):
            continue
        for j, x in enumerate(ask.drafts):
            r = plan.first[a] + j
            if ask.sampled:
                s_rows.append(r), s_x.append(x), s_q.append(ask.q[j])
            else:
                g_rows.append(r), g_x.append(x)
    if g_rows:
        gi = _long(g_rows, dev)
        hit = token.index_select(0, gi) == _long(g_x, dev)
        accept = accept.index_put((gi,), hit.long())
    if s_rows:
        si = _long(s_rows, dev)
        x = _long(s_x, dev)[:, None]
        p = normalised(probs.index_select(0, _long([hot_pos[r] for r in s_rows], dev)))
        q = torch.stack(s_q)                               # float64, on the device already
        px, qx = p.gather(1, x).squeeze(1), q.gather(1, x).squeeze(1)
        hit = sampling.accepts(u.index_select(0, si)[:, 0], px, qx)
        accept = accept.index_put((si,), hit.long())
        stop = stop.index_put((si,), sample(sampling.residual_law(p, q),
                                            u.index_select(0, si)[:, 1]))

    # ---- denoise rows: confidence, commit = conf >= threshold or the ask's first max ----
    d_rows, d_ask, d_thr, d_local, d_ord, d_head = [], [], [], [], [], []
    for a, (_, _, ask) in enumerate(items):
        if ask.kind == Kind.DENOISE:
            head = len(d_rows)
            for j in range(len(ask.rows)):
                d_rows.append(plan.first[a] + j), d_ask.append(a)
                d_thr.append(ask.threshold), d_local.append(j)
                d_ord.append(ask.ordered), d_head.append(head)
    if d_rows:
        di = _long(d_rows, dev)
        da = _long(d_ask, dev)
        conf = confidence(L.index_select(0, di), token.index_select(0, di))
        seg_max = torch.full((len(items),), float("-inf"), dtype=conf.dtype, device=dev)
        seg_max = seg_max.scatter_reduce(0, da, conf, "amax")
        local = _long(d_local, dev)
        big = torch.full_like(local, 1 << 30)
        first = torch.full((len(items),), 1 << 30, dtype=torch.long, device=dev).scatter_reduce(
            0, da, torch.where(conf == seg_max[da], local, big), "amin")
        above = conf >= torch.tensor(d_thr, dtype=conf.dtype, device=dev)
        hit = above | (local == first[da])
        if any(d_ord):     # ordered asks: slot 0, then while every slot so far is above
            short = (~above & (local > 0)).long().cumsum(0)
            before = short.index_select(0, _long(d_head, dev))
            hit = torch.where(torch.tensor(d_ord, device=dev), short == before, hit)
        commit = commit.index_put((di,), hit.long())

    # ---- quadratic: draft from the accepted row's masks, chosen on the device ----
    quad = [a for a, (_, _, ask) in enumerate(items) if ask.kind == Kind.QUADRATIC]
    second, q2_parts = None, {}
    if quad:
        second, q2_parts = _quadratic_drafts(logits, items, quad, plan, accept, mask_id)

    cols = [token, accept, stop, commit]
    k = max((ask.logprobs for _, _, ask in items if ask.logprobs is not None), default=None)
    top = None
    if k is not None:
        lp = _logprobs(L, plan.rules)
        draft_x = torch.zeros(n, dtype=torch.long, device=dev)
        if g_rows or s_rows:
            draft_x = draft_x.index_put((_long(g_rows + s_rows, dev),), _long(g_x + s_x, dev))
        cols = [c.to(lp.dtype) for c in cols] + [lp.gather(1, c[:, None]).squeeze(1)
                                                 for c in (token, stop, draft_x)]
        if k:
            vals, ids = lp.topk(k, dim=-1)
            top = torch.stack([ids.to(lp.dtype), vals], dim=-1).reshape(-1)
    m = max((len(ask.logprob_ids) for _, _, ask in items if ask.logprobs is not None), default=0)
    packed = [torch.stack(cols, dim=1).reshape(-1)]
    if top is not None:
        packed.append(top)
    if m:                                                 # the requested ids, per row
        packed.append(lp.gather(1, _id_table(items, plan.first, n, m, dev)).reshape(-1))
    if second is not None:
        packed.append(second.to(packed[0].dtype))
    host = torch.cat(packed).tolist()                     # the one device→host transfer
    return unpack_decisions(items, plan.first, host, n, quad, q2_parts, probs, hot_pos,
                            len(cols), k or 0, m)


def _id_table(items, first: list[int], n: int, m: int, dev) -> torch.Tensor:
    """[n, m] long: each row's ask's ``logprob_ids`` (padded with id 0), one host→device copy."""
    table = [[0] * m for _ in range(n)]
    for a, (_, _, ask) in enumerate(items):
        if ask.logprobs is not None and ask.logprob_ids:
            for r in range(first[a], first[a] + len(ask.rows)):
                table[r][:len(ask.logprob_ids)] = ask.logprob_ids
    return torch.tensor(table, dtype=torch.long, device=dev)


def _logprobs(L: torch.Tensor, rules: list[SamplingRule]) -> torch.Tensor:
    """``decisions.logprob_rows`` for every row, each at its own temperature."""
    dtype = torch.float64 if L.dtype == torch.float64 else torch.float32
    temp = torch.tensor([logprob_temperature(r) for r in rules], dtype=dtype, device=L.device)
    return logprob_rows(L, temp[:, None])


def _quadratic_drafts(logits, items, quad: list[int], plan: _Plan, accept: torch.Tensor,
                      mask_id: int) -> tuple[torch.Tensor, dict]:
    """Accepted count c per quadratic ask (device), the masks of row c, their drafts.
    Returns (packed [c per ask, then the drafts], {ask: q [B-1, V] or None})."""
    dev = accept.device
    widest = max(len(items[a][2].drafts) for a in quad)
    pad = torch.zeros(len(quad), widest + 1, dtype=torch.long, device=dev)
    for k, a in enumerate(quad):
        nd = len(items[a][2].drafts)
        if nd:
            rows = torch.arange(plan.first[a], plan.first[a] + nd, device=dev)
            pad[k, :nd] = accept.index_select(0, rows)
    c = pad.cumprod(dim=1).sum(dim=1)                     # leading accepts [len(quad)]
    base, width, local, ask_k, seeds, draws, rules, parts = [], [], [], [], [], [], [], []
    for k, a in enumerate(quad):
        start, _, ask = items[a]
        seed, d0 = ask.stream
        parts.append((list(range(len(base), len(base) + ask.width - 2)), ask.rule,
                      ask.draft_context()))
        for j in range(ask.width - 2):
            base.append(start + 2 + j), width.append(ask.width), local.append(j)
            ask_k.append(k), seeds.append(reduce_seed(seed)), draws.append(d0 + len(ask.rows) + j)
            rules.append(ask.rule)
    kt = _long(ask_k, dev)
    idx = _long(base, dev) + c.index_select(0, kt) * _long(width, dev)
    L2 = _shaped(_gather(logits, idx), parts)
    lb = L2.clone()
    lb[:, mask_id] = float("-inf")
    tokens, probs, hot = _draw(lb, rules, _uniforms(rules, seeds, draws, dev))
    q2 = {}
    if probs is not None:
        at = {r: i for i, r in enumerate(hot)}
        for k, a in enumerate(quad):
            rows = [r for r in range(len(kt)) if ask_k[r] == k]
            if rows and rows[0] in at:
                q2[a] = normalised(probs[at[rows[0]]:at[rows[-1]] + 1])
    return torch.cat([c, tokens]), q2

"""The batched decision layer: every ask of one forward decided on the device that holds the
logits, with ONE host→device copy of its tables and ONE device→host transfer of O(rows)
integers (never O(vocab)).

Same contract as ``decisions.decide_each`` (its readable twin; tests run both on the same
logits and uniforms): ``decide_batched(logits, items, mask_id, staged=None) -> list[Decision]``.

Two stages. The host stage (``decide_stage.DecidePlan``) builds every table the device reads
from the asks alone — rows, temperatures, top-k / top-p / min-p, drafts, thresholds, histories,
grammar bits, streams — so it can run before the forward. The device stage (below) reads only
their device views and branches only on the host plan: it makes no host→device copy itself.

    before the forward (the caller)          or, staged=None (this call)
    stage_decisions(items, mask_id, pack)    DecidePlan(items).stage(HostPack())
    pack.upload(device): the step's one      .upload(device): this call's one
      host→device copy -> staged               host→device copy
              |                                  |
              +-> decide.* views (a DevicePack) <-+  -> the device stage:

    with N the rows all asks read (their logits computed at decide.abs, one head call, each
    distinct row once):

    L [N, V] -> grammar asks' forbidden tokens at -inf (decide.grammar.bits)
             -> each ask's processors (penalties, bias, min_new_tokens:
                processors.shape_logits on the staged decide.shape.{a}) -> Z
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

Sampled drafts' proposals q stay on the device, as slices the strategies keep for their verify.
A request's own logits processor (``SamplingRule.transform``) runs as given; grammar bits that
were made on a device (not the host) are used where they are, outside the copy.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..host_pack import DevicePack, HostPack
from .decide_stage import DecidePlan, DrawPlan, ShapePart, stage_decisions
from .decisions import Ask, Decision, logprob_rows
from .grammar import unpack
from .packed import unpack_decisions
from .processors import shape_logits, truncate
from . import sampling
from .sampling import confidence, normalised, sample
from .uniforms import uniforms

__all__ = ["decide_batched", "stage_decisions"]


def _device(logits) -> torch.device:
    return logits.device if isinstance(logits, torch.Tensor) else logits.hidden.device


def _gather(logits, index: torch.Tensor) -> torch.Tensor:
    """Rows at a device index (no host read of ``index``; a ``PassLogits`` computes them now)."""
    if isinstance(logits, torch.Tensor):
        return logits.index_select(0, index)
    return logits.rows_at(index)


def _rows(logits, plan: DecidePlan, dev: DevicePack) -> torch.Tensor:
    """The decided rows [n, V] from the device index (a ``PassLogits`` computes each distinct
    row once, in increasing order: the head call and ``rows_computed`` of ``rows(list)`` on a
    fresh one, with no index upload; rows a caller prefetched are not reused)."""
    if isinstance(logits, torch.Tensor) or not plan.deduped:
        return _gather(logits, dev["decide.abs"])
    return logits.rows_at(dev["decide.heads"]).index_select(0, dev["decide.inv"])


def _constrained(L: torch.Tensor, plan: DecidePlan, dev: DevicePack) -> torch.Tensor:
    """L [n, V] with each grammar ask's forbidden tokens at -inf (its first m rows)."""
    if not plan.grammar_rows:
        return L
    rows = dev["decide.grammar.rows"]
    if plan.bits_staged:
        bits = dev["decide.grammar.bits"].view(-1, plan.bits_words)
    else:                                  # bits made on a device: there already
        bits = torch.cat(plan.grammar_bits).to(L.device, non_blocking=True)
    forbid = ~unpack(bits, L.shape[-1])
    return L.index_put((rows,), L.index_select(0, rows).masked_fill(forbid, float("-inf")))


def _shaped(L: torch.Tensor, parts: list[ShapePart], dev: DevicePack) -> torch.Tensor:
    """L [n, V] with each part's processors applied to its rows (one request's rule each)."""
    if not parts:
        return L
    z = L.to(torch.float32 if L.dtype != torch.float64 else L.dtype, copy=True)
    for p in parts:
        z[p.lo:p.hi] = shape_logits(L[p.lo:p.hi], p.rule, None,
                                    {role: dev[name] for role, name in p.names.items()}
                                    ).to(z.dtype)
    return z


def _draw(lb: torch.Tensor, draw: DrawPlan, key: str, dev: DevicePack
          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Tokens [n] for banned, shaped logits [n, V]: argmax, or a draw with ``u[:, 0]`` from the
    row's law (``sampling.law``) for rows with T > 0. Returns (tokens, the sampled rows' laws
    [s, V] float64, unnormalised when truncated, or None; the uniform pairs [n, 2] or None)."""
    tokens = lb.argmax(-1)
    if not draw.hot:
        return tokens, None, None
    u = uniforms(dev[f"{key}.seeds"], dev[f"{key}.draws"])
    hot = dev[f"{key}.hot"]
    probs = torch.softmax(lb.index_select(0, hot).to(torch.float64)
                          / dev[f"{key}.temp"][:, None], dim=-1)
    if draw.cut:
        ct = dev[f"{key}.cut"]
        probs = probs.index_put((ct,), truncate(
            probs.index_select(0, ct), dev[f"{key}.top_k"], dev[f"{key}.top_p"],
            dev[f"{key}.min_p"]))
    tokens = tokens.index_put((hot,), sample(probs, u[:, 0].index_select(0, hot)))
    return tokens, probs, u


def decide_batched(logits, items: Sequence[tuple[int, int, Ask]], mask_id: int,
                   staged: DevicePack | None = None,
                   plan: DecidePlan | None = None) -> list[Decision]:
    """Every ask of a forward; ``items``: (start, end, ask) per pass. ``staged``: the upload
    that carried ``stage_decisions(items, mask_id, pack)`` (then this call copies nothing to
    the device), and ``plan`` what that call returned (else built again here); None: stage and
    upload here, in one copy. See the module docstring."""
    if not items:
        return []
    if plan is None or plan.items is not items:
        plan = DecidePlan(items)
    if staged is None:
        pack = HostPack()
        plan.stage(pack)
        staged = pack.upload(_device(logits))
    elif staged["decide.abs"].numel() != plan.n:
        raise ValueError(f"staged decision tables hold {staged['decide.abs'].numel()} rows, "
                         f"these asks decide {plan.n}: staged for other asks")
    dev = staged
    L = _shaped(_constrained(_rows(logits, plan, dev), plan, dev), plan.shape, dev)
    n, device = plan.n, L.device
    lb = L.clone()
    lb[:, mask_id] = float("-inf")
    token, probs, u = _draw(lb, plan.draw, "decide.draw", dev)
    accept = torch.zeros(n, dtype=torch.long, device=device)
    stop = token.clone()
    commit = torch.zeros(n, dtype=torch.long, device=device)

    # ---- verify rows: greedy and sampled accept tests, the residual draw ----
    if plan.greedy:
        gi = dev["decide.verify.rows"][:plan.greedy]
        hit = token.index_select(0, gi) == dev["decide.verify.x"][:plan.greedy]
        accept = accept.index_put((gi,), hit.long())
    if plan.sampled:
        si = dev["decide.verify.rows"][plan.greedy:]
        x = dev["decide.verify.x"][plan.greedy:, None]
        p = normalised(probs.index_select(0, dev["decide.verify.s_hot"]))
        q = torch.cat(plan.proposals)                      # float64, on the device already
        px, qx = p.gather(1, x).squeeze(1), q.gather(1, x).squeeze(1)
        us = u.index_select(0, si)
        accept = accept.index_put((si,), sampling.accepts(us[:, 0], px, qx).long())
        stop = stop.index_put((si,), sample(sampling.residual_law(p, q), us[:, 1]))

    # ---- denoise rows: confidence, commit = conf >= threshold or the ask's first max ----
    if plan.denoise:
        di, da = dev["decide.denoise.rows"], dev["decide.denoise.ask"]
        local = dev["decide.denoise.local"]
        conf = confidence(L.index_select(0, di), token.index_select(0, di))
        seg_max = torch.full((len(items),), float("-inf"), dtype=conf.dtype, device=device)
        seg_max = seg_max.scatter_reduce(0, da, conf, "amax")
        big = torch.full_like(local, 1 << 30)
        first = torch.full((len(items),), 1 << 30, dtype=torch.long, device=device
                           ).scatter_reduce(0, da, torch.where(conf == seg_max[da], local, big),
                                            "amin")
        above = conf >= dev["decide.denoise.thr"].to(conf.dtype)
        hit = above | (local == first[da])
        if plan.ordered:   # ordered asks: slot 0, then while every slot so far is above
            short = (~above & (local > 0)).long().cumsum(0)
            before = short.index_select(0, dev["decide.denoise.head"])
            hit = torch.where(dev["decide.denoise.ordered"], short == before, hit)
        commit = commit.index_put((di,), hit.long())

    # ---- quadratic: draft from the accepted row's masks, chosen on the device ----
    second, q2_parts = None, {}
    if plan.quad:
        second, q2_parts = _quadratic_drafts(logits, plan, accept, mask_id, dev)

    cols = [token, accept, stop, commit]
    top = None
    if plan.k is not None:
        lp = _logprobs(L, dev)
        draft_x = torch.zeros(n, dtype=torch.long, device=device)
        if plan.greedy or plan.sampled:
            draft_x = draft_x.index_put((dev["decide.verify.rows"],), dev["decide.verify.x"])
        cols = [c.to(lp.dtype) for c in cols] + [lp.gather(1, c[:, None]).squeeze(1)
                                                 for c in (token, stop, draft_x)]
        if plan.k:
            vals, ids = lp.topk(plan.k, dim=-1)
            top = torch.stack([ids.to(lp.dtype), vals], dim=-1).reshape(-1)
    packed = [torch.stack(cols, dim=1).reshape(-1)]
    if top is not None:
        packed.append(top)
    if plan.m:                                            # the requested ids, per row
        packed.append(lp.gather(1, dev["decide.lp.ids"].view(n, plan.m)).reshape(-1))
    if second is not None:
        packed.append(second.to(packed[0].dtype))
    host = torch.cat(packed).tolist()                     # the one device→host transfer
    return unpack_decisions(items, plan.first, host, n, plan.quad, q2_parts, probs,
                            plan.draw.pos, len(cols), plan.k or 0, plan.m)


def _logprobs(L: torch.Tensor, dev: DevicePack) -> torch.Tensor:
    """``decisions.logprob_rows`` for every row, each at its own temperature."""
    dtype = torch.float64 if L.dtype == torch.float64 else torch.float32
    return logprob_rows(L, dev["decide.lp.temp"].to(dtype)[:, None])


def _quadratic_drafts(logits, plan: DecidePlan, accept: torch.Tensor, mask_id: int,
                      dev: DevicePack) -> tuple[torch.Tensor, dict]:
    """Accepted count c per quadratic ask (device), the masks of row c, their drafts.
    Returns (packed [c per ask, then the drafts], {ask: q [B-1, V] or None})."""
    judged = torch.cat([accept, accept.new_zeros(1)]).index_select(0, dev["decide.quad.judge"])
    c = judged.view(len(plan.quad), plan.widest + 1).cumprod(dim=1).sum(dim=1)  # leading accepts
    idx = dev["decide.q2.base"] + c.index_select(0, dev["decide.q2.ask"]) * dev["decide.q2.width"]
    L2 = _shaped(_gather(logits, idx), plan.q2_shape, dev)
    lb = L2.clone()
    lb[:, mask_id] = float("-inf")
    tokens, probs, _ = _draw(lb, plan.q2_draw, "decide.q2.draw", dev)
    q2 = {}
    if probs is not None:
        at = plan.q2_draw.pos
        for a, rows in zip(plan.quad, plan.q2_rows):
            if len(rows) and rows[0] in at:
                q2[a] = normalised(probs[at[rows[0]]:at[rows[-1]] + 1])
    return torch.cat([c, tokens]), q2

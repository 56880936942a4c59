"""The batched decision layer (``decide_batched``) against its per-request twin (``decide_each``):
the same decisions on the same random logits and uniforms, at T = 0 and T > 0, for every kind
of ask mixed in one forward; its draws follow the tempered softmax and its speculative accept
keeps the target law (chi-square); it reads the host once per forward, O(rows) elements, and
copies its tables up once (tests/test_decide_uploads.py: staged in the step's own copy)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from scipy import stats

from nemotron_sglang.testing.host_reads import HostReads
from nemotron_sglang.core.decoding import Ask, Kind, SamplingRule, decide_batched, decide_each
from nemotron_sglang.core.decoding.grammar import unpack, words
from nemotron_sglang.core.decoding.uniforms import stream_uniforms
from nemotron_sglang.core.logits import PassLogits

TEMPS = (0.0, 0.7, 1.3)


def _proposal(n: int, v: int, mask_id: int, g) -> torch.Tensor:
    q = torch.softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 2, -1)
    q[:, mask_id] = 0
    return q / q.sum(-1, keepdim=True)


def random_rule(rnd: random.Random, t: float, v: int, mask_id: int,
                shaping: bool = True) -> SamplingRule:
    """Half plain temperature, half a random mix of every processor (``shaping`` False: of
    top-k / top-p / min-p only, no processor that shapes the logits)."""
    if rnd.random() < 0.5:
        return SamplingRule(t)
    pick = lambda p, x, default: x if rnd.random() < p else default     # noqa: E731
    if not shaping:
        return SamplingRule(temperature=t, top_k=pick(0.5, rnd.randint(1, 8), 0),
                            top_p=pick(0.5, rnd.uniform(0.2, 0.95), 1.0),
                            min_p=pick(0.4, rnd.uniform(0.01, 0.3), 0.0))
    return SamplingRule(
        temperature=t, top_k=pick(0.4, rnd.randint(1, 8), 0),
        top_p=pick(0.4, rnd.uniform(0.2, 0.95), 1.0), min_p=pick(0.3, rnd.uniform(0.01, 0.3), 0.0),
        frequency_penalty=pick(0.4, rnd.uniform(-1, 2), 0.0),
        presence_penalty=pick(0.4, rnd.uniform(-1, 2), 0.0),
        repetition_penalty=pick(0.4, rnd.uniform(0.5, 2), 1.0),
        logit_bias=tuple((rnd.randrange(v), rnd.uniform(-5, 5)) for _ in range(rnd.randint(0, 3))),
        min_new_tokens=pick(0.4, rnd.randint(1, 12), 0),
        stop_ids=tuple(rnd.sample([t for t in range(v) if t != mask_id], 2)),
        transform=pick(0.3, _custom_processor(rnd.randrange(v), rnd.uniform(0.5, 2)), None))


def _custom_processor(banned: int, scale: float):
    """A request's own logits processor (as a custom logit processor is): scales and bans."""
    def transform(z: torch.Tensor) -> torch.Tensor:
        z = z * scale
        z[:, banned] = float("-inf")
        return z
    return transform


def random_bits(rnd: random.Random, v: int, mask_id: int, want: list) -> torch.Tensor:
    """Grammar bits [len(want), W]: a random third of the vocabulary (never only the mask id)
    per row, with want[j] allowed when set."""
    bits = torch.zeros(len(want), words(v), dtype=torch.int64)
    for j, w in enumerate(want):
        ok = set(rnd.sample([t for t in range(v) if t != mask_id], max(3, v // 3)))
        ok |= {w} if w is not None else set()
        ok |= {mask_id} if rnd.random() < 0.5 else set()
        for t in ok:
            bits[j, t // 32] |= 1 << (t % 32)
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)


def random_forward(seed: int, v: int = 37, passes: int = 12, kinds: tuple = tuple(Kind),
                   shaping: bool = True):
    """(logits [T, V], items [(start, end, ask)], mask_id): passes of ``kinds``, random
    sampling rules (``shaping``: with the processors that shape logits, ``random_rule``),
    histories, seeds and draw counters, logprobs and grammars on some; verifier rows agree
    with their drafts often enough that accept runs of every length occur."""
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    mask_id = rnd.randrange(v)
    tok = lambda: rnd.choice([t for t in range(v) if t != mask_id])      # noqa: E731
    items, start, agree = [], 0, []
    for _ in range(passes):
        kind = rnd.choice(list(kinds))
        t = random_rule(rnd, rnd.choice(TEMPS), v, mask_id, shaping)
        stream = (rnd.randrange(1 << 62), rnd.randrange(1000))
        if kind == Kind.PICK:
            n = rnd.randint(1, 5)
            ask = Ask(kind, (rnd.randrange(n),), t, stream)
        elif kind == Kind.DRAFT:
            n = rnd.randint(2, 6)
            ask = Ask(kind, tuple(range(1, n)), t, stream)
        elif kind == Kind.DENOISE:
            n = rnd.randint(1, 6)
            rows = tuple(sorted(rnd.sample(range(n), rnd.randint(1, n))))
            ask = Ask(kind, rows, t, stream, threshold=rnd.choice([0.0, 0.05, 0.2, 1.5]))
        elif kind == Kind.VERIFY:
            nd = rnd.randint(0, 5)
            n = nd + 1
            drafts = tuple(tok() for _ in range(nd))
            q = _proposal(nd, v, mask_id, g) if t.sampled else None
            ask = Ask(kind, tuple(range(n)), t, stream, drafts=drafts, q=q)
            agree += [(start + j, x) for j, x in enumerate(drafts) if rnd.random() < 0.7]
        else:
            b, r = rnd.randint(1, 4), rnd.randint(1, 4)
            w, n = b + 1, r * (b + 1)
            drafts = tuple(tok() for _ in range(r - 1))
            q = _proposal(r - 1, v, mask_id, g) if t.sampled else None
            ask = Ask(kind, tuple(range(0, n, w)), t, stream, drafts=drafts, q=q, width=w)
            agree += [(start + j * w, x) for j, x in enumerate(drafts) if rnd.random() < 0.7]
        if ask.rule.needs_history:
            ask = dataclasses.replace(ask, history=tuple(tok() for _ in range(rnd.randint(0, 9))))
        if rnd.random() < 0.4:
            ids = tuple(rnd.randrange(v) for _ in range(rnd.choice([0, 0, 1, 3])))
            ask = dataclasses.replace(ask, logprobs=rnd.choice([0, 2, 5]), logprob_ids=ids)
        if rnd.random() < 0.35:                 # a grammar: masks on the first m rows
            m = rnd.randint(1, len(ask.rows)) if kind in (Kind.VERIFY, Kind.QUADRATIC) else 1
            want = [ask.drafts[j] if j < len(ask.drafts) and rnd.random() < 0.8 else None
                    for j in range(m)]
            ask = dataclasses.replace(ask, allowed=random_bits(rnd, v, mask_id, want),
                                      ordered=kind == Kind.DENOISE)
        items.append((start, start + n, ask))
        start += n
    logits = torch.randn(start, v, generator=g, dtype=torch.float64) * 2
    for row, x in agree:
        logits[row, x] += 8.0          # greedy agrees; sampled p(x) high
    logits[rnd.randrange(start), mask_id] = 50.0                  # never a candidate
    return logits, items, mask_id


def _lazy(full: torch.Tensor) -> PassLogits:
    return PassLogits(torch.arange(len(full), dtype=torch.float64)[:, None],
                      lambda h: full[h[:, 0].long()])


def _same(a, b, where):
    assert a.tokens == b.tokens, where
    assert a.commit == b.commit and a.drafts == b.drafts and a.accepted == b.accepted, where
    assert (a.q is None) == (b.q is None), where
    if a.q is not None:
        torch.testing.assert_close(a.q, b.q, rtol=0, atol=0)
    assert (a.logprobs is None) == (b.logprobs is None), where
    for (x, tx, ix), (y, ty, iy) in zip(a.logprobs or [], b.logprobs or []):
        assert abs(x - y) <= 1e-12 and [t for t, _ in tx] == [t for t, _ in ty], where
        assert all(abs(p - r) <= 1e-12 for (_, p), (_, r) in zip(tx, ty)), where
        assert len(ix) == len(iy) and all(p == r or abs(p - r) <= 1e-12                # -inf: masked
                                          for p, r in zip(ix, iy)), where


@pytest.mark.parametrize("case", range(6))
def test_batched_decisions_equal_the_per_request_twin(case):
    seed = random.randrange(1 << 30) + case
    logits, items, mask_id = random_forward(seed)
    twin = decide_each(logits, items, mask_id)
    lazy_twin, lazy = _lazy(logits), _lazy(logits)
    for got in (decide_batched(logits, items, mask_id), decide_batched(lazy, items, mask_id),
                decide_each(lazy_twin, items, mask_id)):
        for (s, e, ask), a, b in zip(items, twin, got):
            _same(a, b, f"seed {seed}: {ask.kind.value} T={ask.temperature} rows {s}..{e}")
    assert lazy.rows_computed == lazy_twin.rows_computed            # same rows, head once each
    for (s, _, ask), d in zip(items, twin):
        assert mask_id not in d.tokens and mask_id not in (d.drafts or [])
        if ask.allowed is not None and ask.kind != Kind.DENOISE:    # every emitted row obeys
            ok = unpack(ask.allowed, logits.shape[1])
            for j, t in enumerate(d.tokens[:len(ok)]):
                assert ok[j, t], (seed, ask.kind, j, t)
        if ask.ordered and d.commit:                 # commits are a prefix, slot 0 always
            assert d.commit[0] and d.commit == sorted(d.commit, reverse=True)
        if ask.kind in (Kind.VERIFY, Kind.QUADRATIC):
            assert list(d.tokens[:-1]) == list(ask.drafts[:d.accepted])
        if ask.logprobs is not None and ask.kind in (Kind.PICK, Kind.VERIFY):
            for j, (t, (lp, top, at_ids)) in enumerate(zip(d.tokens, d.logprobs)):  # emitting row
                z = logits[s + ask.rows[j]]
                if not ask.rule.shapes_logits and ask.allowed is None:
                    t_ = ask.temperature if ask.sampled else 1.0
                    ref = torch.log_softmax(z / t_, -1)
                    assert abs(lp - float(ref[t])) < 1e-9
                    assert [round(x, 9) for x in at_ids] == \
                        [round(float(ref[i]), 9) for i in ask.logprob_ids]
                assert len(top) == ask.logprobs and all(v <= 0 for _, v in top)
                assert len(at_ids) == len(ask.logprob_ids)


def test_the_kinds_are_exercised():
    """random_forward covers every kind at both temperatures, accepts and rejections, and
    every processor at both temperatures."""
    seen = set()
    for seed in range(40):
        logits, items, mask_id = random_forward(seed)
        for (_, _, ask), d in zip(items, decide_batched(logits, items, mask_id)):
            hot = ask.temperature > 0
            seen.add((ask.kind, hot))
            if ask.drafts:
                seen.add(("full" if d.accepted == len(ask.drafts) else "cut", hot))
            if ask.allowed is not None:
                seen.add(("grammar", ask.kind))
            r = ask.rule
            seen |= {(name, hot) for name, on in [
                ("penalty", r.penalized), ("bias", bool(r.logit_bias)),
                ("min_new", r.min_new_tokens > 0), ("truncated", r.truncated)] if on}
    assert seen >= {(k, s) for k in Kind for s in (False, True)} | \
        {(c, s) for c in ("full", "cut") for s in (False, True)} | \
        {(c, s) for c in ("penalty", "bias", "min_new") for s in (False, True)} | \
        {("truncated", True)} | {("grammar", k) for k in Kind}


def test_one_small_host_read_per_forward():
    seed = random.randrange(1 << 30)
    logits, items, mask_id = random_forward(seed, v=131, passes=16)
    lazy = _lazy(logits)
    with HostReads() as reads:
        out = decide_batched(lazy, items, mask_id)
    rows = sum(len(a.rows) for _, _, a in items)
    quad = [a for _, _, a in items if a.kind == Kind.QUADRATIC]
    ks = [a.logprobs for _, _, a in items if a.logprobs is not None]
    width = 7 if ks else 4                            # + 3 logprob columns
    top = 2 * max(ks) * rows if ks else 0             # + top-k (id, value) per row
    top += max((len(a.logprob_ids) for _, _, a in items if a.logprobs is not None),
               default=0) * rows                      # + the requested ids' values per row
    assert len(out) == len(items)
    assert [c for c, _ in reads.calls] == ["tolist"], (seed, reads.calls)
    assert len(reads.uploads) == 1, (seed, reads.uploads)   # its tables: one copy up
    assert reads.elements == width * rows + top + sum(1 + a.width - 2 for a in quad), \
        (seed, reads.calls)
    with HostReads() as twin_reads:                  # the twin is host code: many reads
        decide_each(lazy, items, mask_id)
    assert len(twin_reads.calls) > len(items)


def _chi2(counts, probs, n):
    keys = sorted(probs)
    return stats.chisquare([counts.get(k, 0) for k in keys], [probs[k] * n for k in keys]).pvalue


def test_batched_draws_follow_the_tempered_softmax():
    """PICK, DRAFT and DENOISE candidates of many seeds in one forward: softmax(l / T), the
    mask id excluded; and the test can fail: the untempered law is rejected."""
    rnd = random.Random(random.randrange(1 << 30))
    v, mask_id, temp, n = 6, 2, 0.7, 6000
    logits = torch.randn(v, dtype=torch.float64, generator=torch.Generator().manual_seed(
        rnd.randrange(1 << 30)))
    logits[mask_id] = 5.0
    want = torch.softmax(torch.cat([logits[:mask_id], logits[mask_id + 1:]]) / temp, -1)
    probs = {k: float(p) for k, p in zip([i for i in range(v) if i != mask_id], want)}
    flat = torch.softmax(torch.cat([logits[:mask_id], logits[mask_id + 1:]]), -1)
    wrong = {k: float(p) for k, p in zip(probs, flat)}
    for kind in (Kind.PICK, Kind.DRAFT, Kind.DENOISE):
        items = [(i, i + 1, Ask(kind, (0,), temp, (rnd.randrange(1 << 62), 0)))
                 for i in range(n)]
        drawn = [d.tokens[0] for d in decide_batched(logits.expand(n, v), items, mask_id)]
        counts = {k: drawn.count(k) for k in probs}
        assert mask_id not in drawn
        assert _chi2(counts, probs, n) > 1e-3, kind
        assert _chi2(counts, wrong, n) < 1e-6, kind


def test_uniform_streams_are_uniform_and_independent():
    rnd = random.Random(random.randrange(1 << 30))
    u = stream_uniforms(rnd.randrange(1 << 62), rnd.randrange(1 << 20), 50000)
    for lane in (0, 1):
        assert stats.kstest(u[:, lane].numpy(), "uniform").pvalue > 1e-4
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.03
    pairs = (u[:-1, 0] * 8).long() * 8 + (u[1:, 0] * 8).long()    # consecutive draws
    assert stats.chisquare(torch.bincount(pairs, minlength=64).numpy()).pvalue > 1e-4
    across = torch.cat([stream_uniforms(rnd.randrange(1 << 62), 0, 1) for _ in range(5000)])
    assert stats.kstest(across[:, 0].numpy(), "uniform").pvalue > 1e-4


def test_batched_speculative_accept_keeps_the_target_law():
    """Markov-chain target over 4 tokens (+ the mask id), independent proposals: 3-token outputs
    of repeated VERIFY cycles, every chain of a round in one batched call, follow the chain."""
    rnd = random.Random(random.randrange(1 << 30))
    g = torch.Generator().manual_seed(rnd.randrange(1 << 30))
    v, mask_id, n_draft, n = 5, 4, 3, 8000
    P = torch.softmax(torch.randn(v, v, generator=g, dtype=torch.float64) * 1.5, -1)
    P[:, mask_id] = 0
    P = P / P.sum(-1, keepdim=True)
    Q = _proposal(n_draft, v, mask_id, g)
    outs = [[] for _ in range(n)]
    seeds = [rnd.randrange(1 << 62) for _ in range(n)]
    draws = [0] * n
    while any(len(o) < 3 for o in outs):
        live = [i for i in range(n) if len(outs[i]) < 3]
        items, rows = [], []
        for i in live:
            drafts = torch.multinomial(Q, 1, generator=g).squeeze(1).tolist()
            last = outs[i][-1] if outs[i] else 0
            rows += [last] + drafts
            a = Ask(Kind.VERIFY, tuple(range(n_draft + 1)), 1.0, (seeds[i], draws[i]),
                    drafts=tuple(drafts), q=Q)
            draws[i] += a.draws
            items.append((len(rows) - n_draft - 1, len(rows), a))
        logits = P.log()[torch.tensor(rows)]
        for i, d in zip(live, decide_batched(logits, items, mask_id)):
            outs[i] += d.tokens
    counts: dict = {}
    for o in outs:
        counts[tuple(o[:3])] = counts.get(tuple(o[:3]), 0) + 1
    probs = {(a, b, c): float(P[0, a] * P[a, b] * P[b, c])
             for a in range(4) for b in range(4) for c in range(4)}
    assert _chi2(counts, probs, n) > 1e-3

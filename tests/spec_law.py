"""The exact output law of sampled self-speculation, for law tests that can fail.

A checkpoint is small enough to enumerate when each next-token law is cut to its ``top_k``
tokens (SGLang's top-k, served in every mode): the first ``L`` output tokens then take at most
``top_k ** L`` values, and their exact probabilities follow from the model's forwards alone.

- ``Oracle``: the model's next-token laws, from plain forwards over core's model (no strategy
  or decision code): ``p(out)``, the AR law after ``prompt + out``; ``q_linear(out)``,
  linear_spec's draft law of slot 1 of the canvas ``[out[-1], M]`` (bidirectional, the drafting
  LoRA on); ``q_quadratic(out)``, quadratic_spec's draft law of row ``[out[-1], M, M]``'s slot 2
  (the QUADRATIC mask). Every law is softmax(z / T) with the mask id banned, cut to the top k,
  normalised. Under a grammar (``grammar=``, a ``TokenDFA``) the tokens it forbids after
  ``out`` are banned first (``core.decoding.grammar``'s rows: the verifier's and the PICK /
  DRAFT row 0 after the output; quadratic's drafts, read from mask slots past the ask's rows,
  are unconstrained).
- ``ar_law``: the exact law of AR sampling's first ``L`` tokens (cut at EOS).
- ``spec_law``: the exact law of linear / quadratic self-speculation at block 2 (one draft per
  cycle) under the speculative rule or a deliberately broken one (``RULES``):

      correct     accept x ~ q with min(1, p(x)/q(x)); else draw max(0, p - q); bonus ~ p(next)
      under_10    accept with 0.9 · min(1, p/q) (a 10 % error in acceptance)
      residual_p  after a rejection draw from p instead of the residual
      bonus_row   the bonus drawn from the verifying row's law, not the next row's
      q_untempered the rule divides by the untempered draft law, the drafts come from the
                  tempered one (drafts' law != the one the rule divides by)

  Under ``correct`` it equals ``ar_law`` exactly (Leviathan et al.); that equality is itself
  tested, so the calculator and the theorem check each other.
- ``chi2_test`` / ``power``: the one-sample test the law tests use (cells with expected count
  >= 5, the rest pooled; reject at p < ALPHA, for a false-alarm rate <= FALSE_ALARM) and its
  power against an alternative law: the
  probability that N draws from it are rejected, by simulation of the test as applied
  (multinomial draws, the same pooling) and asymptotically (non-central chi-square).

Block 2 keeps each cycle to one draft, so the bonus token of an accepted draft is among the first
four tokens of either mode (linear: t0 seed, cycle 1 → t1 [+ t2 bonus]; quadratic: its first
cycle only drafts, so cycle 2 → t2 [+ t3 bonus]).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import stats

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, quadratic
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.kv_cache import PagedKVCache

# the law tests' false-alarm rate is FALSE_ALARM: they reject at p < ALPHA, half of it, because the
# chi-square approximation is liberal this far in the tail (1e6 tables simulated under the null
# at the tests' N: 1.56e-4 / 1.41e-4 at p < 1e-4, 8.7e-5 / 8.1e-5 at p < 5e-5, linear / quadratic)
FALSE_ALARM = 1e-4
ALPHA = 5e-5
MIN_EXPECTED = 5        # cells with fewer expected draws are pooled
RULES = ("correct", "under_10", "residual_p", "bonus_row", "q_untempered")


class Oracle:
    """Exact next-token laws of ``model`` after ``prompt`` (see the module docstring); laws are
    {token: probability} dicts over at most ``top_k`` tokens."""

    def __init__(self, model, prompt: list[int], temperature: float, top_k: int,
                 grammar=None):
        self.model, self.prompt = model, list(prompt)
        self.t, self.k = temperature, top_k
        self.grammar = grammar           # a TokenDFA (testing.token_grammar), or None
        self.mask_id = model.config.mask_token_id
        self.eos = model.config.eos_token_id
        self.p = lru_cache(maxsize=None)(self._p)
        self.q_linear = lru_cache(maxsize=None)(self._q_linear)
        self.q_quadratic = lru_cache(maxsize=None)(self._q_quadratic)

    def _forward(self, cached: list[int], tokens: list[int], mask, lora: bool = False
                 ) -> torch.Tensor:
        """Logits [len(tokens), V] of one pass over ``cached`` (encoded causally first)."""
        c = self.model.config
        cache = PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                             head_dim=c.head_dim, num_pages=64, page_size=16,
                             dtype=self.model.dtype)
        cache.add(0)
        if cached:
            self.model(ForwardBatch.from_rows(
                [PassRow(0, cached, list(range(len(cached))), 0, CAUSAL)], write_kv=True), cache)
            cache.commit(0, len(cached))
        n = len(cached)
        row = PassRow(0, tokens, list(range(n, n + len(tokens))), n, mask)
        return self.model(ForwardBatch.from_rows([row], lora=lora), cache).double()

    def allowed(self, out: tuple[int, ...]) -> list[int] | None:
        """The tokens the grammar allows after ``out`` (None: no grammar)."""
        if self.grammar is None:
            return None
        g = self.grammar.fresh()
        for t in out:
            assert g.accept(t), (out, t)
        return g.allowed()

    def _law(self, z: torch.Tensor, temperature: float | None = None,
             allowed: list[int] | None = None) -> dict[int, float]:
        z = z.clone()
        if allowed is not None:          # the grammar first: forbidden tokens at -inf
            keep = torch.full_like(z, float("-inf"))
            keep[allowed] = 0
            z = z + keep
        z[self.mask_id] = float("-inf")
        p = torch.softmax(z / (temperature or self.t), -1)
        vals, ids = p.topk(self.k)
        vals = vals / vals.sum()
        return {int(i): float(v) for i, v in zip(ids, vals) if v > 0}

    def _p(self, out: tuple[int, ...]) -> dict[int, float]:
        ctx = self.prompt + list(out)
        return self._law(self._forward(ctx[:-1], ctx[-1:], CAUSAL)[-1], allowed=self.allowed(out))

    def _q_linear(self, out: tuple[int, ...], temperature: float | None = None):
        ctx = self.prompt + list(out)
        z = self._forward(ctx[:-1], [ctx[-1], self.mask_id], BIDIRECTIONAL,
                          lora=self.model.has_lora)[1]
        return self._law(z, temperature, self.allowed(out))

    def _q_quadratic(self, out: tuple[int, ...], temperature: float | None = None):
        ctx = self.prompt + list(out)
        z = self._forward(ctx[:-1], [ctx[-1], self.mask_id, self.mask_id], quadratic(2))[2]
        return self._law(z, temperature)

    def q(self, mode: str, out: tuple[int, ...], temperature: float | None = None):
        if temperature is not None:      # a law the rule may wrongly divide by (not cached)
            f = self._q_linear if mode == "linear_spec" else self._q_quadratic
            return f(out, temperature)
        return (self.q_linear if mode == "linear_spec" else self.q_quadratic)(out)


def _done(out: tuple[int, ...], length: int, eos: int) -> bool:
    return len(out) >= length or (len(out) > 0 and out[-1] == eos)


def _add(law: dict, out: tuple[int, ...], length: int, eos: int, prob: float) -> None:
    """Credit ``prob`` to the output ``out`` seen as its first ``length`` tokens, cut at EOS."""
    if eos in out:
        out = out[:out.index(eos) + 1]
    key = out[:length]
    law[key] = law.get(key, 0.0) + prob


def ar_law(o: Oracle, length: int) -> dict[tuple[int, ...], float]:
    """Exact law of AR sampling's first ``length`` output tokens (cut at EOS)."""
    law: dict = {}

    def walk(out, prob):
        if _done(out, length, o.eos):
            _add(law, out, length, o.eos, prob)
            return
        for t, pt in o.p(out).items():
            walk(out + (t,), prob * pt)
    walk((), 1.0)
    return law


def spec_law(o: Oracle, mode: str, length: int, rule: str = "correct"
             ) -> dict[tuple[int, ...], float]:
    """Exact law of ``mode``'s first ``length`` output tokens at block 2 under ``rule``."""
    assert mode in ("linear_spec", "quadratic_spec") and rule in RULES
    law: dict = {}
    scale = 0.9 if rule == "under_10" else 1.0

    def cycle(out, drafted_from, prob):
        """``out`` emitted; the next draft's law conditions on ``drafted_from`` (linear: all of
        ``out``; quadratic: the row the previous pass accepted, i.e. ``out`` minus its last)."""
        if _done(out, length, o.eos):
            _add(law, out, length, o.eos, prob)
            return
        q = o.q(mode, drafted_from)
        q_div = o.q(mode, drafted_from, temperature=1.0) if rule == "q_untempered" else q
        p0 = o.p(out)
        residual = {t: max(0.0, p0.get(t, 0.0) - q_div.get(t, 0.0)) for t in p0}
        if sum(residual.values()) <= 0 or rule == "residual_p":
            residual = dict(p0)
        total = sum(residual.values())
        for d, qd in q.items():
            qx = q_div.get(d, 0.0)
            a = 0.0 if qx <= 0 else min(1.0, p0.get(d, 0.0) / qx) * scale
            if a > 0:
                kept = out + (d,)
                if _done(kept, length, o.eos):
                    _add(law, kept, length, o.eos, prob * qd * a)
                else:
                    bonus = p0 if rule == "bonus_row" else o.p(kept)
                    for b, pb in bonus.items():
                        nxt = kept + (b,)
                        cycle(nxt, nxt if mode == "linear_spec" else kept, prob * qd * a * pb)
            if a < 1:
                for r, pr in residual.items():
                    if pr > 0:
                        nxt = out + (r,)
                        cycle(nxt, nxt if mode == "linear_spec" else out, prob * qd * (1 - a) * pr
                              / total)

    for t0, p in o.p(()).items():
        seed = (t0,)
        if mode == "linear_spec":
            cycle(seed, seed, p)
        elif _done(seed, length, o.eos):
            _add(law, seed, length, o.eos, p)
        else:                            # quadratic's first pass: the AR token, then drafts
            for t1, p1 in o.p(seed).items():
                cycle(seed + (t1,), seed, p * p1)
    return law


def cells(null: dict) -> tuple[list, np.ndarray]:
    """The null law's outcomes, most probable first, and their probabilities: the test's cells
    before ``_pool`` joins those with fewer than ``MIN_EXPECTED`` expected draws."""
    keys = sorted(null, key=lambda k: -null[k])
    return keys, np.array([null[k] for k in keys])


def _pool(probs: np.ndarray, n: int) -> np.ndarray:
    """Which cells stand alone (expected >= MIN_EXPECTED); the rest form one pooled cell."""
    return probs * n >= MIN_EXPECTED


def _statistic(counts: np.ndarray, probs: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Chi-square statistics of count rows [s, cells] against ``probs`` (pooled as the test
    pools), and the degrees of freedom."""
    big = _pool(probs, n)
    obs = np.concatenate([counts[:, big], counts[:, ~big].sum(1, keepdims=True)], 1)
    exp = np.concatenate([probs[big], [probs[~big].sum()]]) * n
    if exp[-1] < MIN_EXPECTED:           # too small a pool: merge it into the smallest cell
        obs = np.concatenate([obs[:, :-2], obs[:, -2:].sum(1, keepdims=True)], 1)
        exp = np.concatenate([exp[:-2], [exp[-2:].sum()]])
    return ((obs - exp) ** 2 / exp).sum(1), len(exp) - 1


def chi2_test(samples: list[tuple], null: dict) -> tuple[float, int]:
    """(p-value, degrees of freedom) of ``samples`` against the law ``null``; an outcome
    outside the null's support gives p = 0."""
    keys, probs = cells(null)
    index = {k: i for i, k in enumerate(keys)}
    if any(s not in index for s in samples):
        return 0.0, len(keys) - 1
    counts = np.zeros((1, len(keys)))
    for s in samples:
        counts[0, index[s]] += 1
    stat, df = _statistic(counts, probs, len(samples))
    return float(stats.chi2.sf(stat[0], df)), df


def power(null: dict, alt: dict, n: int, sims: int = 4000, seed: int = 0
          ) -> tuple[float, float]:
    """(simulated, asymptotic) probability that ``chi2_test`` rejects ``n`` draws of ``alt``
    at ``ALPHA``. Simulation: ``sims`` multinomial tables through the same statistic;
    asymptotic: non-central chi-square with λ = n Σ (a - p)² / p over the pooled cells. Draws
    outside the null's support reject outright (counted by the simulation only)."""
    keys, probs = cells(null)
    a = np.array([alt.get(k, 0.0) for k in keys])
    outside = max(0.0, 1.0 - a.sum())
    rng = np.random.default_rng(seed)
    table = rng.multinomial(n, np.append(a, outside) / (a.sum() + outside), size=sims)
    stat, df = _statistic(table[:, :-1].astype(float), probs, n)
    crit = stats.chi2.isf(ALPHA, df)
    simulated = float(((stat > crit) | (table[:, -1] > 0)).mean())
    big = _pool(probs, n)
    pp = np.append(probs[big], probs[~big].sum())
    aa = np.append(a[big], a[~big].sum())
    keep = pp > 0
    lam = n * float((((aa - pp) ** 2)[keep] / pp[keep]).sum())
    return simulated, float(stats.ncx2.sf(crit, df, lam))

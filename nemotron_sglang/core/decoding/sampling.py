"""The token rules of every mode, one request at a time: greedy / tempered picks with the mask id
banned, diffusion candidates and confidences, the commit rule, the speculative accept rule.

This is the readable twin of the batched decision layer (``decide_batched.py``): both take the
same logits and the same explicit uniforms (``uniforms.py``) and give the same tokens; the
primitives ``ban``, ``target_probs``, ``sample``, ``confidence`` and the processors
(``processors.py``: penalties, logit bias, min_new_tokens, top-k / top-p / min-p) are shared.

Conventions (every function, every device):
- logits [..., V] are never modified; the processors of the request's ``SamplingRule`` shape
  them first (``shape_logits``, with each row's preceding output ``ctx``);
- the mask id is never a candidate (its logit is -inf before argmax or sampling) but stays in
  the softmax that gives a diffusion slot its confidence;
- a sampled row draws from its law (``law``: softmax(z / T), truncated, float64) by inverse CDF
  with its ``u[0]`` (``u[1]``: the residual sample after a rejection);
- a confidence is exp(z[cand] - logsumexp(z)) of the shaped logits, in their dtype (at least
  float32).
"""

from __future__ import annotations

import torch

from .processors import RowContext, SamplingRule, shape_logits, truncate


def ban(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Copy of ``logits`` with the mask id at -inf."""
    out = logits.clone()
    out[..., mask_id] = float("-inf")
    return out


def target_probs(logits: torch.Tensor, temperature: float | torch.Tensor, mask_id: int
                 ) -> torch.Tensor:
    """softmax(logits / T) in float64 with the mask id banned; [..., V]. T must be > 0
    (a tensor T broadcasts against logits [..., 1])."""
    return torch.softmax(ban(logits.to(torch.float64), mask_id) / temperature, dim=-1)


def sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from unnormalised probabilities [n, V] (float64) with uniforms [n] in
    (0, 1) -> [n] int64. A zero-probability token is never drawn."""
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def confidence(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Untempered softmax probability (mask id included) of ``cand`` [n] under logits [n, V]."""
    lf = logits if logits.dtype == torch.float64 else logits.float()
    return (lf.gather(-1, cand[:, None]).squeeze(-1) - torch.logsumexp(lf, dim=-1)).exp()


def law(z: torch.Tensor, rule: SamplingRule, mask_id: int) -> torch.Tensor:
    """The sampled law [n, V] float64 of shaped logits z: softmax(z / T), mask id banned,
    top-k / top-p / min-p applied (unnormalised when truncated)."""
    p = target_probs(z, rule.temperature, mask_id)
    if not rule.truncated:
        return p
    n = p.shape[0]
    return truncate(p, torch.full((n,), rule.top_k, device=p.device),
                    torch.full((n,), rule.top_p, dtype=p.dtype, device=p.device),
                    torch.full((n,), rule.min_p, dtype=p.dtype, device=p.device))


def normalised(p: torch.Tensor) -> torch.Tensor:
    return p / p.sum(-1, keepdim=True)


def choose(z: torch.Tensor, rule: SamplingRule, mask_id: int, u: torch.Tensor) -> torch.Tensor:
    """Greedy (T == 0) or sampled (T > 0, with ``u[:, 0]``) tokens for shaped logits [n, V]."""
    if not rule.sampled:
        return ban(z, mask_id).argmax(-1)
    return sample(law(z, rule, mask_id), u[:, 0])


def pick(logits: torch.Tensor, rule: SamplingRule, mask_id: int, u: torch.Tensor,
         ctx: RowContext | None = None) -> torch.Tensor:
    """Tokens [n] for raw logits [n, V]: the rule's processors, then ``choose``."""
    return choose(shape_logits(logits, rule, ctx), rule, mask_id, u)


def diffusion_candidates(logits: torch.Tensor, rule: SamplingRule, mask_id: int,
                         u: torch.Tensor, ctx: RowContext | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate token and confidence per block slot, logits [B, V] -> ([B] int64, [B])."""
    z = shape_logits(logits, rule, ctx)
    cand = choose(z, rule, mask_id, u)
    return cand, confidence(z, cand)


def commit_mask(conf: torch.Tensor, threshold: float, ordered: bool = False) -> torch.Tensor:
    """Which slots commit [n] bool: confidence >= threshold, and always the most confident one
    (the first of equals). ``ordered`` (a grammar): slot 0 (the leftmost masked one) always,
    then each slot while it and every slot before it reach the threshold."""
    commit = conf >= threshold
    if ordered:
        commit[0] = True
        return commit.long().cumprod(0).bool()
    commit[int(conf.argmax())] = True
    return commit


def draft_tokens(logits: torch.Tensor, rule: SamplingRule, mask_id: int, u: torch.Tensor,
                 ctx: RowContext | None = None) -> tuple[list[int], torch.Tensor | None]:
    """Fill draft slots from logits [n, V]: (tokens, their proposal distributions q [n, V]
    (normalised) or None when greedy)."""
    z = shape_logits(logits, rule, ctx)
    if not rule.sampled:
        return ban(z, mask_id).argmax(-1).tolist(), None
    pl = law(z, rule, mask_id)
    return sample(pl, u[:, 0]).tolist(), normalised(pl)


def speculative_accept(drafts: list[int], draft_probs: torch.Tensor | None,
                       target_logits: torch.Tensor, rule: SamplingRule, mask_id: int,
                       u: torch.Tensor, ctx: RowContext | None = None) -> list[int]:
    """Verify ``n`` drafted tokens against target logits [n+1, V] with uniforms [n+1, 2];
    return the emitted tokens (1..n+1).

    ``target_logits[i]`` is the verifier's next-token distribution after the i-th verified
    position, i.e. it judges ``drafts[i]``; the last row gives the bonus token; ``ctx`` gives
    row i the output before it (drafts[:i] included). Greedy: keep the longest prefix with
    ``argmax == draft``, then emit the verifier's own token. T > 0: accept ``drafts[i]`` iff
    ``u[i, 0] * q_i(x) < p_i(x)`` (``accepts``: probability min(1, p/q)), p the verifier's law
    (``law``, normalised); on rejection emit a sample (``u[i, 1]``) of the normalised residual
    max(0, p_i - q_i) (``residual_law``) and stop (Leviathan et al.), so the emitted stream is
    distributed exactly as AR sampling with the same rule.
    """
    n = len(drafts)
    if target_logits.shape[0] != n + 1:
        raise ValueError(f"need {n + 1} target rows for {n} drafts, got {target_logits.shape[0]}")
    z = shape_logits(target_logits, rule, ctx)
    if not rule.sampled:
        verified = ban(z, mask_id).argmax(-1).tolist()
        out = []
        for i in range(n):
            out.append(verified[i])
            if verified[i] != drafts[i]:
                return out
        out.append(verified[n])
        return out
    if draft_probs is None and n:
        raise ValueError("sampled verification needs the draft distributions")
    pl = law(z, rule, mask_id)
    p = normalised(pl)
    out = []
    for i, x in enumerate(drafts):
        if bool(accepts(u[i, 0], p[i, x], draft_probs[i, x])):
            out.append(x)
            continue
        out.append(int(sample(residual_law(p[i:i + 1], draft_probs[i:i + 1]), u[i, 1:2])[0]))
        return out
    out.append(int(sample(pl[n:], u[n:, 0])[0]))
    return out


def accepts(u0: torch.Tensor, px: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
    """The speculative accept test, elementwise: a draft x drawn from q is kept iff
    ``u0 · q(x) < p(x)``, i.e. with probability min(1, p(x) / q(x)) (never when q(x) = 0)."""
    return (qx > 0) & (u0 * qx < px)


def residual_law(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What a rejected draft's slot draws from, rows [n, V] (float64): max(0, p - q), or p where
    that is all zero (p == q; never reached by a rejection then). Unnormalised; ``sample``
    normalises. With ``accepts`` this keeps the emitted token's law exactly p."""
    residual = (p - q).clamp_min(0.0)
    return torch.where((residual.sum(-1) > 0)[:, None], residual, p)

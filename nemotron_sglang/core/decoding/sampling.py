"""Token choice for every mode: greedy / tempered sampling with the mask id banned, diffusion
candidates with confidence, and the speculative-sampling acceptance rule.

All functions take logits [..., V] and never modify them. The mask token is never a candidate:
its logit is set to -inf before argmax or sampling, but it stays in the softmax that gives a
diffusion slot its confidence.
"""

from __future__ import annotations

import torch


def ban(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Copy of ``logits`` with the mask id at -inf."""
    out = logits.clone()
    out[..., mask_id] = float("-inf")
    return out


def target_probs(logits: torch.Tensor, temperature: float, mask_id: int) -> torch.Tensor:
    """softmax(logits / T) in float64 with the mask id banned; [..., V]. T must be > 0."""
    return torch.softmax(ban(logits.to(torch.float64), mask_id) / temperature, dim=-1)


def pick(logits: torch.Tensor, temperature: float, mask_id: int,
         generator: torch.Generator | None) -> torch.Tensor:
    """Greedy (T == 0) or sampled (T > 0) tokens for logits [N, V] -> [N] int64."""
    if temperature <= 0:
        return ban(logits, mask_id).argmax(-1)
    p = target_probs(logits, temperature, mask_id)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)


def diffusion_candidates(logits: torch.Tensor, temperature: float, mask_id: int,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate token and confidence per block slot, logits [B, V] -> ([B] int64, [B] float64).

    Candidate: argmax (T == 0) or Gumbel-max of logits / T (T > 0), mask id excluded.
    Confidence: softmax of the untempered logits (mask id included) at the candidate.
    """
    lf = logits.to(torch.float64)
    if temperature <= 0:
        cand = ban(lf, mask_id).argmax(-1)
    else:
        u = torch.rand(lf.shape, dtype=torch.float64, generator=generator).clamp_min(1e-300)
        cand = (ban(lf, mask_id) / temperature - torch.log(-torch.log(u))).argmax(-1)
    conf = torch.softmax(lf, dim=-1).gather(-1, cand[:, None]).squeeze(-1)
    return cand, conf


def draft_tokens(logits: torch.Tensor, temperature: float, mask_id: int,
                 generator: torch.Generator | None) -> tuple[list[int], torch.Tensor | None]:
    """Fill draft slots from logits [n, V]: (tokens, their proposal distributions q [n, V] or
    None when greedy)."""
    if temperature <= 0:
        return ban(logits, mask_id).argmax(-1).tolist(), None
    q = target_probs(logits, temperature, mask_id)
    return torch.multinomial(q, 1, generator=generator).squeeze(-1).tolist(), q


def speculative_accept(drafts: list[int], draft_probs: torch.Tensor | None,
                       target_logits: torch.Tensor, temperature: float, mask_id: int,
                       generator: torch.Generator | None) -> list[int]:
    """Verify ``n`` drafted tokens against target logits [n+1, V]; return the emitted tokens.

    ``target_logits[i]`` is the verifier's next-token distribution after the i-th verified
    position, i.e. it judges ``drafts[i]``; the last row gives the bonus token. Greedy: keep the
    longest prefix with ``argmax == draft``, then emit the verifier's own token. T > 0: accept
    ``drafts[i]`` with probability min(1, p_i(x) / q_i(x)); on rejection emit a sample of the
    normalised residual max(0, p_i - q_i) and stop (Leviathan et al.), so the emitted stream is
    distributed exactly as AR sampling at temperature T. Returns 1..n+1 tokens.
    """
    n = len(drafts)
    if target_logits.shape[0] != n + 1:
        raise ValueError(f"need {n + 1} target rows for {n} drafts, got {target_logits.shape[0]}")
    if temperature <= 0:
        verified = ban(target_logits, mask_id).argmax(-1).tolist()
        out = []
        for i in range(n):
            out.append(verified[i])
            if verified[i] != drafts[i]:
                return out
        out.append(verified[n])
        return out
    if draft_probs is None and n:
        raise ValueError("sampled verification needs the draft distributions")
    p = target_probs(target_logits, temperature, mask_id)
    out = []
    for i, x in enumerate(drafts):
        tok, accepted = _accept_sampled(x, draft_probs[i], p[i], generator)
        out.append(tok)
        if not accepted:
            return out
    out.append(int(torch.multinomial(p[n], 1, generator=generator)))
    return out


def _accept_sampled(x: int, q: torch.Tensor, p: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[int, bool]:
    """One Leviathan step: keep draft ``x`` with probability min(1, p(x)/q(x)), else sample the
    normalised residual max(0, p - q). Returns (token, accepted)."""
    px, qx = p[x].item(), q[x].item()
    u = torch.rand((), dtype=torch.float64, generator=generator).item()
    if qx > 0 and u * qx < px:
        return x, True
    residual = (p - q).clamp_min(0.0)
    dist = residual if residual.sum() > 0 else p
    return int(torch.multinomial(dist / dist.sum(), 1, generator=generator)), False

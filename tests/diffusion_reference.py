"""An independent greedy FastDiffuser: block diffusion written once more from the published rule
(model_spec §2.3, §3.2) and the project's documented semantics, over transformers' Ministral3,
to check core's ``diffusion`` strategy and the server against something that shares none of
their code. It imports nothing from ``nemotron_sglang.core.decoding`` and not core's model
(``tests/test_diffusion_reference.py`` asserts it); from the package it takes only the name
table of a checkpoint's tensors in a plain Ministral3 (``core.weights.ministral3_name``,
``testing.mistral3.ministral3_config``). Clarity over speed: no KV cache — every pass re-runs
the whole sequence [prompt ; emitted ; block] under a dense mask (the model is tiny).

The rule, for one request at temperature 0 (block B, threshold τ, step budget k or none)::

    context pass: causal over the prompt; seed = argmax of its last logit (mask id banned)
    repeat:
        block = [seed, M × (B-1)] at the positions right after the committed text
        until the output is decided or no M is left:
            denoise pass: the committed text causal, the block bidirectional over itself and
                          all of the text; logits at slot j predict the token AT slot j
            every masked slot: candidate = argmax (mask id banned), confidence = softmax of
                          the raw logits at the candidate (mask id kept in the normaliser)
            commit every masked slot with confidence >= τ' and always the most confident one
                          (the first of equals); τ' = τ, or 0 on the k-th pass of the block
        emit the block; refresh pass: causal over text + block (the block's KV), next seed =
                          argmax of its last logit (mask id banned)

Each committed token's logprob (``return_logprob``) is log softmax of the raw logits, T = 1 as
SGLang reports a greedy token, at the slot in the pass that committed it (the seed's: the
context or refresh pass's last position); the mask id stays in the normaliser.

Where the project departs from the published rules, this follows the project (README,
docs/structure.md) and says so:

- seed at slot 0: the published HF ``generate`` does this (causal_context); SGLang's
  FastDiffuser diffuses every slot. The project seeds, so slot 0 is AR's token.
- the mask id is never a candidate (as SGLang's FastDiffuser; HF's argmax may pick it) but stays
  in the confidence's softmax (as both).
- threshold mode only (τ in [0, 1]): HF's schedule mode (threshold None) is not offered; τ = 1
  commits one slot per pass (bar exact confidence-1 ties), τ = 0 the whole block in one pass.
- step budget k (``max_steps``): the k-th denoise pass of a block commits every slot still
  masked with its own candidates; SGLang's FastDiffuser instead fills what is left after k passes
  from one more forward's argmax.
- the output is decided, and the request ends without further passes, once an EOS has no mask
  before it or the first ``max_new_tokens - emitted`` slots are all committed (later slots cannot
  change them): the output is cut after that EOS or at ``max_new_tokens``. HF finishes the block
  it is in and keeps the refresh pass; SGLang fills masks after an EOS with EOS. The tokens are
  the same; the forward count (``Trace.forwards``: denoise passes + 1 refresh per block, the
  published count) lacks the refresh of the block that ends the request, and the denoise passes
  a decided block no longer needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from nemotron_sglang.core.weights import ministral3_name
from nemotron_sglang.testing.mistral3 import ministral3_config


class Ministral3Net:
    """transformers' Ministral3ForCausalLM holding an NLD checkpoint's tensors (the untied
    ``diffusion_head`` as ``lm_head``), run on one whole sequence under a dense mask."""

    def __init__(self, ckpt: Path, dtype: torch.dtype = torch.float64):
        from transformers import Ministral3Config, Ministral3ForCausalLM

        d = json.loads((Path(ckpt) / "config.json").read_text())
        self.mask_id, self.eos_id = int(d["mask_token_id"]), int(d["eos_token_id"])
        cfg = Ministral3Config(**{k: v for k, v in ministral3_config(d).items()
                                  if k not in ("architectures", "model_type", "auto_map",
                                               "torch_dtype", "attn_implementation")})
        cfg._attn_implementation = "sdpa"
        self.model = Ministral3ForCausalLM(cfg).to(dtype).eval()
        tensors = {ministral3_name(k): v.to(dtype)
                   for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}
        self.model.load_state_dict(tensors, strict=True)
        self.dtype = dtype

    @torch.no_grad()
    def logits(self, tokens: list[int], block_start: int | None = None) -> torch.Tensor:
        """Logits [n, V] of ``tokens`` [n] at positions 0..n-1: causal attention, except that
        the rows from ``block_start`` on (the block) see every token of the sequence."""
        n = len(tokens)
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        if block_start is not None:
            allowed[block_start:, :] = True
        out = self.model(input_ids=torch.tensor([tokens]), attention_mask=allowed[None, None],
                         position_ids=torch.arange(n)[None], use_cache=False)
        return out.logits[0].to(self.dtype)


# ---- the per-slot rules (module functions, so a test can swap in a wrong one) -----------------

def candidate(row: torch.Tensor, mask_id: int) -> int:
    """Greedy token of one logit row [V], the mask id never chosen."""
    z = row.clone()
    z[mask_id] = float("-inf")
    return int(z.argmax())


def confidence(row: torch.Tensor, token: int) -> float:
    """softmax(row)[token], untempered, over the whole vocabulary (mask id included)."""
    return float(torch.softmax(row, dim=-1)[token])


def candidate_margin(row: torch.Tensor, mask_id: int) -> float:
    """How far the greedy choice is from a tie: softmax probability of the best token minus the
    second's (mask id excluded)."""
    p = torch.softmax(row.double(), dim=-1)
    p[mask_id] = -1.0
    top = p.topk(2).values
    return float(top[0] - top[1])


def commit_margin(conf: dict[int, float], threshold: float) -> float:
    """How far a pass's commit decision is from flipping: each confidence's distance to the
    threshold, and, when the most confident slot commits only for being the most confident, its
    lead over the next. A server computing in another dtype may decide differently within it."""
    gaps = [abs(c - threshold) for c in conf.values()]
    ranked = sorted(conf.values(), reverse=True)
    if len(ranked) > 1 and ranked[0] < threshold:
        gaps.append(ranked[0] - ranked[1])
    return min(gaps)


def logprob(row: torch.Tensor, token: int) -> float:
    """The reported logprob: log softmax(row / 1)[token] (greedy: T = 1), mask id included."""
    return float(torch.log_softmax(row, dim=-1)[token])


def pass_threshold(threshold: float, step: int, max_steps: int | None) -> float:
    """The threshold of a block's ``step``-th denoise pass (1-based): 0 on the last allowed."""
    return 0.0 if max_steps is not None and step >= max_steps else threshold


def committed(conf: dict[int, float], threshold: float) -> set[int]:
    """Slots to commit, of masked slot -> confidence: those >= threshold and the most confident
    (the leftmost of equals)."""
    best = max(conf, key=lambda s: (conf[s], -s))
    return {s for s, c in conf.items() if c >= threshold} | {best}


# ---- the decode ---------------------------------------------------------------------------------

@dataclass
class Trace:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    forwards: int = 0                 # denoise + refresh passes (the context pass excluded)
    # per block begun: how many slots each of its denoise passes committed
    commits: list[list[int]] = field(default_factory=list)
    finish_reason: str = "length"
    # the closest any decision came to flipping (candidate_margin, commit_margin): a comparison
    # with a server in float32 is decidable only well above its rounding
    margin: float = float("inf")


def decided(block: list[int], mask_id: int, eos_id: int, need: int) -> int | None:
    """How many of the block's tokens end the output once that is fixed: through an EOS with no
    mask before it, or the first ``need`` slots all committed; None otherwise."""
    for i, t in enumerate(block):
        if t == mask_id:
            return None
        if t == eos_id or i + 1 >= need:
            return i + 1
    return None


def diffuse(net: Ministral3Net, prompt: list[int], max_new_tokens: int, block_length: int,
            threshold: float, max_steps: int | None = None) -> Trace:
    """Greedy block diffusion of ``prompt`` (the rule in the module docstring)."""
    mask_id, eos_id = net.mask_id, net.eos_id
    out = Trace()
    text = list(prompt)                                       # committed: prompt + emitted
    last = net.logits(text)[-1]                               # context pass (not counted)
    out.margin = candidate_margin(last, mask_id)
    seed = candidate(last, mask_id)
    seed_lp = logprob(last, seed)
    while True:
        block = [seed] + [mask_id] * (block_length - 1)
        out.commits.append([])
        lps: list[float | None] = [seed_lp] + [None] * (block_length - 1)
        step = 0
        while mask_id in block and decided(block, mask_id, eos_id,
                                           max_new_tokens - len(out.tokens)) is None:
            step += 1
            out.forwards += 1
            rows = net.logits(text + block, block_start=len(text))[len(text):]
            masked = [s for s, t in enumerate(block) if t == mask_id]
            cand = {s: candidate(rows[s], mask_id) for s in masked}
            conf = {s: confidence(rows[s], cand[s]) for s in masked}
            thr = pass_threshold(threshold, step, max_steps)
            chosen = committed(conf, thr)
            out.margin = min([out.margin, commit_margin(conf, thr)] +     # what commits, and
                             [candidate_margin(rows[s], mask_id) for s in chosen])  # as what
            for s in chosen:
                block[s], lps[s] = cand[s], logprob(rows[s], cand[s])
            out.commits[-1].append(len(chosen))
        n = decided(block, mask_id, eos_id, max_new_tokens - len(out.tokens))
        if n is not None:                                     # the output ends in this block
            out.tokens += block[:n]
            out.logprobs += [float(x) for x in lps[:n] if x is not None]
            out.finish_reason = "stop" if block[n - 1] == eos_id else "length"
            return out
        out.tokens += block
        out.logprobs += [float(x) for x in lps if x is not None]
        text += block
        out.forwards += 1                                     # refresh pass: next seed
        last = net.logits(text)[-1]
        out.margin = min(out.margin, candidate_margin(last, mask_id))
        seed = candidate(last, mask_id)
        seed_lp = logprob(last, seed)

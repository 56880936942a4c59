"""The tiny fixture's training objective: the dual-stream pass, its attention mask, the noise, the loss.

One responsibility: given clean token windows, compute the loss ``train_tiny`` minimises.

Training runs core's :class:`NLDModel` parameters through a dense, batched forward of its own
(:func:`dense_forward`; the serving forward is paged and ``no_grad``). Every sample is the
dual-stream sequence of model_spec §2.3, length 2L = [noisy x_t ; clean x], both halves at
positions 0..L-1:

* clean -> clean: token-causal (gives the AR next-token loss in the same pass);
* noisy -> noisy: same block only (bidirectional within the block);
* noisy -> clean: clean blocks strictly before the query's block;
* clean -> noisy: none.

Loss = AR CE (clean stream, next token) + ``dlm_weight`` x block-diffusion loss (noisy stream,
CE at masked slots weighted by 1/t, summed and divided by the number of noisy tokens). The
block size of a step is drawn from {32: 0.6, 16: 0.2, 8: 0.2} (decoders run at 8, 16, 32). The
mask ratio is biased toward heavy masking: per block, with probability ``p_draft`` the block
is the drafting pattern [clean slot 0, masks after it] (what linear/quadratic drafting and the
first diffusion step see), otherwise every slot is masked with probability t ~ Beta(2, 1)
clipped to [0.05, 1] (at least one mask per block).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..core.lora import lora_delta
from ..core.model import NLDModel
from ..core.tokenizer import MASK_ID


def dual_mask(length: int, block: int) -> torch.Tensor:
    """Bool [2L, 2L], True = may attend; rows/cols 0..L-1 noisy, L..2L-1 clean."""
    i = torch.arange(length)
    bi = i // block
    causal = i[None, :] <= i[:, None]
    same_block = bi[None, :] == bi[:, None]
    earlier_block = bi[None, :] < bi[:, None]
    top = torch.cat([same_block, earlier_block], dim=1)            # noisy queries
    bottom = torch.cat([torch.zeros_like(causal), causal], dim=1)  # clean queries
    return torch.cat([top, bottom], dim=0)


def dense_forward(model: NLDModel, ids: torch.Tensor, positions: torch.Tensor,
                  mask: torch.Tensor, lora: list | None = None, lora_scale: float = 0.0,
                  lora_rows: torch.Tensor | None = None) -> torch.Tensor:
    """ids [N, T], positions [T], mask [T, T] bool -> logits [N, T, V] (with autograd).

    ``lora``: per layer (A [r, q], B [h, r]) added to o_proj at token rows ``lora_rows`` [T] bool.
    """
    cfg = model.config
    n, t = ids.shape
    x = model.encoder.embed_tokens(ids)
    pos = positions.repeat(n)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for li, layer in enumerate(model.encoder.layers):
        att = layer.self_attn
        h = layer.input_layernorm(x).reshape(n * t, -1)
        q = att.q_proj(h).view(n * t, cfg.num_attention_heads, cfg.head_dim)
        k = att.k_proj(h).view(n * t, cfg.num_key_value_heads, cfg.head_dim)
        v = att.v_proj(h).view(n * t, cfg.num_key_value_heads, cfg.head_dim)
        q, k = model.rotary.apply(q, k, pos)
        q = q.view(n, t, -1, cfg.head_dim).transpose(1, 2)
        k = k.view(n, t, -1, cfg.head_dim).transpose(1, 2).repeat_interleave(group, dim=1)
        v = v.view(n, t, -1, cfg.head_dim).transpose(1, 2).repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scale)
        o = o.transpose(1, 2).reshape(n, t, cfg.q_size)
        y = att.o_proj(o)
        if lora is not None:
            a, b = lora[li]
            y = y + lora_delta(o, a, b, lora_scale, lora_rows[None, :]).to(y.dtype)
        x = x + y
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.diffusion_head(model.encoder.norm(x))


def pick_block(g: random.Random, sizes) -> int:
    u, acc = g.random(), 0.0
    for b, p in sizes:
        acc += p
        if u < acc:
            return b
    return sizes[-1][0]


def noise(clean: torch.Tensor, block: int, p_draft: float, gen: torch.Generator,
          uniform: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked copy of clean [N, L], the bool mask and the per-token mask ratio t; ``uniform``
    [N, L // block] bool: blocks whose t is uniform (light masks as likely as heavy ones)."""
    n, length = clean.shape
    nb = length // block
    draft = torch.rand(n, nb, generator=gen) < p_draft
    # Beta(2,1) by inverse CDF (sqrt of uniform), with our generator for determinism
    u = torch.rand(n, nb, generator=gen)
    t = (u.sqrt() if uniform is None else torch.where(uniform, u, u.sqrt())).clamp(0.05, 1.0)
    m = torch.rand(n, nb, block, generator=gen) < t[..., None]
    # at least one mask per block
    force = torch.randint(0, block, (n, nb), generator=gen)
    m.scatter_(2, force[..., None], True)
    draft_pat = torch.ones(block, dtype=torch.bool)
    draft_pat[0] = False
    m = torch.where(draft[..., None], draft_pat.expand(n, nb, block), m)
    t = torch.where(draft, torch.full_like(t, (block - 1) / block), t)
    m = m.reshape(n, length)
    tt = t[..., None].expand(n, nb, block).reshape(n, length)
    noisy = torch.where(m, torch.full_like(clean, MASK_ID), clean)
    return noisy, m, tt


@dataclass(frozen=True)
class ReplyBlocks:
    """Rows whose block at ``at`` opens on a reply (``train_data.Stream.draw``): that block's
    diffusion term is scaled by ``weight``; with ``uniform_t`` its mask ratio is uniform, so
    the light masks of a canvas's later passes (only the hard slots left) are drawn as often
    as the heavy ones of its first."""
    rows: torch.Tensor          # [n] bool
    at: int
    weight: float = 1.0
    uniform_t: bool = False


def pass_loss(model: NLDModel, x: torch.Tensor, y: torch.Tensor, block: int, p_draft: float,
              dlm_weight: float, mask: torch.Tensor, gen: torch.Generator,
              reply: ReplyBlocks | None = None):
    """(loss, ar, dlm) of one batch of clean rows ``x`` [n, L] with next tokens ``y``."""
    L, vocab = x.shape[1], model.config.vocab_size
    positions = torch.cat([torch.arange(L), torch.arange(L)])
    uniform = slot_weight = None
    if reply is not None and reply.rows.any():
        if reply.uniform_t:
            uniform = torch.zeros(x.shape[0], L // block, dtype=torch.bool)
            uniform[reply.rows, reply.at // block] = True
        if reply.weight != 1.0:
            slot_weight = torch.ones_like(x, dtype=torch.float32)
            slot_weight[reply.rows, reply.at:reply.at + block] = reply.weight
    noisy, m, t = noise(x, block, p_draft, gen, uniform)
    logits = dense_forward(model, torch.cat([noisy, x], dim=1), positions, mask)
    ar = F.cross_entropy(logits[:, L:].reshape(-1, vocab), y.reshape(-1))
    ce = F.cross_entropy(logits[:, :L].reshape(-1, vocab), x.reshape(-1),
                         reduction="none").view_as(x)
    if slot_weight is not None:
        ce = ce * slot_weight
    dlm = (ce * m / t).sum() / x.numel()
    return ar + dlm_weight * dlm, ar, dlm

"""The NLD network in plain PyTorch: Ministral3 backbone (``encoder``) + untied ``diffusion_head``.

Module names equal the HF checkpoint names (``encoder.layers.N.self_attn.q_proj.weight``, ...,
``diffusion_head.weight``), so a safetensors state dict loads without renaming.

One forward (:meth:`NLDModel.forward`) takes a packed :class:`ForwardBatch` of new tokens
[T] with absolute positions [T], per-row masks and prefix lengths over the paged
:class:`PagedKVCache`, and returns logits [T, vocab] in float32 (float64 for a float64 model).
In a causal pass the logits at a token predict the NEXT token; in a bidirectional pass the
logits at a block slot predict the token AT that slot. If ``batch.write_kv`` the pass stages
each row's K/V (all tokens for causal rows, the row heads for quadratic rows) into the cache
with ``cache.append``; the caller commits what it keeps.

Per layer (model_spec §1.5): x += o_proj(attn(RoPE(q)·s_llama4, RoPE(k), v)); x += down(silu(gate
x) · up x), both on fp32 RMSNorm'd inputs; GQA; softmax scale 1/sqrt(head_dim). The drafting
LoRA adds ``scale · B(A(attn_out))`` to ``o_proj`` when ``batch.lora``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .attention import paged_attention
from .batch import ForwardBatch
from .config import NLDConfig
from .logits import PassLogits
from .lora import lora_delta
from .rope import Rotary
from .step_attention import StepAttention, reference_step
from .step_plan import HeadShape

AttentionFn = Callable[..., torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.to(acc) * xf).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: NLDConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, cfg.q_size, bias=False)
        self.k_proj = nn.Linear(h, cfg.kv_size, bias=False)
        self.v_proj = nn.Linear(h, cfg.kv_size, bias=False)
        self.o_proj = nn.Linear(cfg.q_size, h, bias=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.lora_A: torch.Tensor | None = None    # [r, q_size]
        self.lora_B: torch.Tensor | None = None    # [hidden, r]
        self.lora_scale = 0.0

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary):
        t, c = x.shape[0], self.cfg
        q = self.q_proj(x).view(t, c.num_attention_heads, c.head_dim)
        k = self.k_proj(x).view(t, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(x).view(t, c.num_key_value_heads, c.head_dim)
        q, k = rotary.apply(q, k, positions)
        return q, k, v

    def _out(self, out: torch.Tensor, lora: bool | torch.Tensor) -> torch.Tensor:
        """o_proj of attention outputs [T, Hq, D], plus the LoRA delta (``lora``: the whole pass,
        or a [T] 0/1 scale per token)."""
        out = out.reshape(out.shape[0], self.cfg.q_size)
        y = self.o_proj(out)
        if isinstance(lora, torch.Tensor):
            if self.lora_A is not None:
                y = y + lora_delta(out, self.lora_A, self.lora_B, self.lora_scale, lora)
        elif lora:
            y = y + lora_delta(out, self.lora_A, self.lora_B, self.lora_scale)
        return y

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache, rotary: Rotary,
                write_index: list[torch.Tensor] | None, write_slots: list[torch.Tensor] | None,
                attention_fn: AttentionFn) -> torch.Tensor:
        q, k, v = self._qkv(x, batch.positions, rotary)
        out = attention_fn(q, k, v, cache, self.layer, batch, self.scale)
        if write_index is not None:
            for (start, _), idx, slots in zip(batch.spans(), write_index, write_slots):
                cache.write(self.layer, slots, k[start + idx], v[start + idx])
        return self._out(out, batch.lora)

    def step(self, x: torch.Tensor, plan, rotary: Rotary, attend) -> torch.Tensor:
        """A planned step (``core.step_plan.StepPlan``): ``attend(q, k, v, layer, scale)``
        attends and writes the plan's K/V; the LoRA scaled per token by ``plan.lora``."""
        q, k, v = self._qkv(x, plan.positions, rotary)
        return self._out(attend(q, k, v, self.layer, self.scale), plan.lora)


class MLP(nn.Module):
    def __init__(self, cfg: NLDConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: NLDConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, batch, cache, rotary, write_index, write_slots, attention_fn):
        x = x + self.self_attn(self.input_layernorm(x), batch, cache, rotary, write_index,
                               write_slots, attention_fn)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(self, x, plan, rotary, attend):
        x = x + self.self_attn.step(self.input_layernorm(x), plan, rotary, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: NLDConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class NLDModel(nn.Module):
    """Backbone + untied head. ``attention_fn`` (a ``ForwardBatch`` pass, :meth:`forward`) has
    :func:`core.attention.paged_attention`'s signature; ``step_attention`` (a planned step,
    :meth:`step_hidden`, which core's decoder loop runs) is a
    :data:`core.step_attention.StepAttention`."""

    def __init__(self, cfg: NLDConfig, attention_fn: AttentionFn = paged_attention,
                 step_attention: StepAttention = reference_step):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.diffusion_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg)
        self.attention_fn = attention_fn
        self.step_attention = step_attention
        self.has_lora = False

    @property
    def dtype(self) -> torch.dtype:
        return self.diffusion_head.weight.dtype

    @property
    def heads(self) -> HeadShape:
        c = self.config
        return HeadShape(c.num_attention_heads, c.num_key_value_heads, c.head_dim)

    def set_lora(self, adapters: list[tuple[torch.Tensor, torch.Tensor]] | None, scale: float) -> None:
        """Install per-layer (A [r, q_size], B [hidden, r]) for drafting passes; None removes it."""
        layers = self.encoder.layers
        if adapters is not None and len(adapters) != len(layers):
            raise ValueError(f"LoRA has {len(adapters)} layers, model has {len(layers)}")
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            if adapters is None:
                attn.lora_A = attn.lora_B = None
                attn.lora_scale = 0.0
            else:
                a, b = adapters[i]
                attn.lora_A = a.to(self.dtype)
                attn.lora_B = b.to(self.dtype)
                attn.lora_scale = float(scale)
        self.has_lora = adapters is not None

    @torch.no_grad()
    def forward(self, batch: ForwardBatch, cache, lazy: bool = False,
                embeds: torch.Tensor | None = None):
        """Run one pass; returns logits [T, vocab] (float32, or float64 for a float64 model),
        or with ``lazy`` a :class:`~nemotron_sglang.core.logits.PassLogits` that computes the
        head only for the rows read. ``embeds`` [T, hidden]: the pass's input embeddings in
        place of its tokens' (a prompt with images: ``core.vision.splice_images``)."""
        if batch.lora and not self.has_lora:
            raise ValueError("this pass asks for the drafting LoRA but no adapter is loaded")
        write_index = write_slots = None
        if batch.write_kv:
            write_index, write_slots = [], []
            for sid, n, prefix, mask in zip(batch.seq_ids, batch.q_lens, batch.prefix_lens,
                                            batch.masks):
                if cache.length(sid) != prefix:
                    raise ValueError(f"seq {sid}: a KV-writing pass must start at the committed "
                                     f"length {cache.length(sid)}, not {prefix}")
                idx = mask.kv_write_index(n)
                write_index.append(idx)
                write_slots.append(cache.append(sid, len(idx)))
        if embeds is not None and embeds.shape != (batch.input_ids.numel(), self.config.hidden_size):
            raise ValueError(f"embeds {tuple(embeds.shape)} for a pass of "
                             f"{batch.input_ids.numel()} tokens × hidden {self.config.hidden_size}")
        x = self.encoder.embed_tokens(batch.input_ids) if embeds is None else embeds.to(self.dtype)
        for layer in self.encoder.layers:
            x = layer(x, batch, cache, self.rotary, write_index, write_slots, self.attention_fn)
        x = self.encoder.norm(x)
        if lazy:
            return PassLogits(x, self.head)
        return self.head(x)

    @torch.no_grad()
    def step_hidden(self, plan, attend, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [Tp, H] of a planned step (``core.step_plan.StepPlan``, padded or
        not): its ids, positions and per-token LoRA read from the plan's device views only, so
        the same call runs eagerly and inside a captured graph; ``attend(q, k, v, layer,
        scale)`` is the step's attention, which also writes the plan's K/V
        (``core.step_attention``, ``kernels.step.PlanAttention``). ``embeds`` [T, H]: input
        embeddings in place of the ids' (a prompt with images). Padding tokens' rows are not
        meaningful."""
        if embeds is not None and embeds.shape != (plan.num_tokens, self.config.hidden_size):
            raise ValueError(f"embeds {tuple(embeds.shape)} for a step of {plan.num_tokens} "
                             f"tokens × hidden {self.config.hidden_size}")
        x = self.encoder.embed_tokens(plan.ids) if embeds is None else embeds.to(self.dtype)
        for layer in self.encoder.layers:
            x = layer.step(x, plan, self.rotary, attend)
        return self.encoder.norm(x)

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] of final hidden states [n, H] (float32, float64 for float64)."""
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        return self.diffusion_head(hidden).to(acc)

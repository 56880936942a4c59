"""The image path of the vision-language NLD model: a Pixtral-style vision tower and the Mistral3
projector, in plain PyTorch, with the HF module names (``vision_tower.*``,
``multi_modal_projector.*``), and the splice of image features into the text embeddings.

An image of H × W pixels (both multiples of ``patch_size``) becomes h × w = H/p × W/p patches:

    pixels [3, H, W] --patch_conv (p × p, stride p, no bias)--> [h·w, D] --ln_pre (RMSNorm)-->
    ``num_hidden_layers`` × (RMSNorm → attention with 2-D RoPE → + ; RMSNorm → gated MLP → +)
    --> [h·w, D]                                                   (the vision tower)
    --norm (RMSNorm) --> merge s × s neighbours [h/s · w/s, D·s²] --merging_layer--> [·, D]
    --linear_1 → act → linear_2--> [h/s · w/s, text hidden]       (the projector)

Patches attend only to patches of their own image (every image runs on its own: the HF block
diagonal mask), bidirectionally. 2-D RoPE: of the head's D/2 frequency slots the first D/4
rotate by the patch's row, the last D/4 by its column, with frequencies
θ^(-2k/D) for even k (rows) and odd k (columns); rotate-half layout. The merge takes, for
merged cell (i, j), the s × s patches (s·i + a, s·j + b) in row-major (a, b) order, each
patch's D channels laid out channel-major (channel c, then a, then b), as
``torch.nn.functional.unfold`` lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import RMSNorm

VISION_EPS = 1e-5      # the tower's RMSNorm epsilon (fixed in the reference implementation)


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower and projector geometry (``config.json``'s ``vision_config`` and the
    top-level multimodal keys)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    head_dim: int = 64
    patch_size: int = 14
    num_channels: int = 3
    image_size: int = 1540
    rope_theta: float = 1.0e4
    hidden_act: str = "silu"         # unread from the real config; SGLang's Pixtral MLP is SiLU
    spatial_merge_size: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = False
    text_hidden_size: int = 4096
    text_rms_norm_eps: float = 1e-5
    image_token_id: int = 131072     # unread: 131072 (vocab 131073) or [IMG] = 10 (docs/vlm.md)

    def __post_init__(self):
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(f"vision head_dim {self.head_dim} × heads "
                             f"{self.num_attention_heads} != hidden_size {self.hidden_size}")
        if self.head_dim % 4:
            raise ValueError(f"vision head_dim {self.head_dim}: 2-D RoPE needs a multiple of 4")
        for name in ("hidden_act", "projector_hidden_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} {getattr(self, name)!r}: one of {sorted(ACTIVATIONS)}")

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], text_hidden_size: int, text_rms_norm_eps: float
                     ) -> "VisionConfig":
        """From an HF Mistral3-style ``config.json`` (``vision_config`` + top-level keys)."""
        v = d["vision_config"]
        rope = v.get("rope_parameters") or {}
        heads = v.get("num_attention_heads", cls.num_attention_heads)
        hidden = v.get("hidden_size", cls.hidden_size)
        return cls(hidden_size=hidden, intermediate_size=v.get("intermediate_size", 4 * hidden),
                   num_hidden_layers=v.get("num_hidden_layers", cls.num_hidden_layers),
                   num_attention_heads=heads, head_dim=v.get("head_dim") or hidden // heads,
                   patch_size=v.get("patch_size", cls.patch_size),
                   num_channels=v.get("num_channels", cls.num_channels),
                   image_size=v.get("image_size", cls.image_size),
                   rope_theta=float(rope.get("rope_theta", v.get("rope_theta", cls.rope_theta))),
                   hidden_act=v.get("hidden_act", cls.hidden_act),
                   spatial_merge_size=d.get("spatial_merge_size", cls.spatial_merge_size),
                   projector_hidden_act=d.get("projector_hidden_act", cls.projector_hidden_act),
                   multimodal_projector_bias=d.get("multimodal_projector_bias",
                                                   cls.multimodal_projector_bias),
                   text_hidden_size=text_hidden_size, text_rms_norm_eps=text_rms_norm_eps,
                   image_token_id=d.get("image_token_index", d.get("image_token_id",
                                                                   cls.image_token_id)))


ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rope_2d(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim] for patches at (rows[n], cols[n]) (module docstring)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.cat([rows[:, None].double() * inv[0::2], cols[:, None].double() * inv[1::2]],
                       dim=-1)                                     # [N, head_dim / 2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.attention_norm = RMSNorm(d, VISION_EPS)
        self.ffn_norm = RMSNorm(d, VISION_EPS)
        self.attention = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.attention, name, nn.Linear(d, d, bias=False))
        self.feed_forward = nn.Module()
        self.feed_forward.gate_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.feed_forward.up_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.feed_forward.down_proj = nn.Linear(cfg.intermediate_size, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, D] (one image's patches) → [N, D]."""
        n, h, hd = x.shape[0], self.cfg.num_attention_heads, self.cfg.head_dim
        a, y = self.attention, self.attention_norm(x)
        q, k, v = (p(y).view(n, h, hd).transpose(0, 1) for p in (a.q_proj, a.k_proj, a.v_proj))
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        att = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1) @ v   # [h, N, hd]
        x = x + a.o_proj(att.transpose(0, 1).reshape(n, h * hd))
        f, y = self.feed_forward, self.ffn_norm(x)
        act = ACTIVATIONS[self.cfg.hidden_act]
        return x + f.down_proj(act(f.gate_proj(y)) * f.up_proj(y))


class VisionTower(nn.Module):
    """``vision_tower.*``: pixels of one image → its patch features [h·w, D]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_conv = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size,
                                    stride=cfg.patch_size, bias=False)
        self.ln_pre = RMSNorm(cfg.hidden_size, VISION_EPS)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(VisionLayer(cfg)
                                                for _ in range(cfg.num_hidden_layers))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [C, H, W] (H, W multiples of the patch) → [H/p · W/p, D], row-major."""
        grid = self.patch_conv(pixels[None].to(self.patch_conv.weight.dtype))[0]   # [D, h, w]
        h, w = grid.shape[1:]
        x = self.ln_pre(grid.flatten(1).T)
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        cos, sin = rope_2d(rows, cols, self.cfg.head_dim, self.cfg.rope_theta)
        for layer in self.transformer.layers:
            x = layer(x, cos.to(x.device), sin.to(x.device))
        return x


class Projector(nn.Module):
    """``multi_modal_projector.*``: one image's patch features [h·w, D] on an h × w grid →
    its text-space embeddings [h/s · w/s, text hidden]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.hidden_size, cfg.spatial_merge_size
        self.norm = RMSNorm(d, cfg.text_rms_norm_eps)
        self.patch_merger = nn.Module()
        self.patch_merger.merging_layer = nn.Linear(d * s * s, d, bias=False)
        bias = cfg.multimodal_projector_bias
        self.linear_1 = nn.Linear(d, cfg.text_hidden_size, bias=bias)
        self.linear_2 = nn.Linear(cfg.text_hidden_size, cfg.text_hidden_size, bias=bias)

    def forward(self, feats: torch.Tensor, h: int, w: int) -> torch.Tensor:
        s, d = self.cfg.spatial_merge_size, feats.shape[-1]
        grid = self.norm(feats).view(h, w, d)[: h // s * s, : w // s * s]
        cells = grid.reshape(h // s, s, w // s, s, d).permute(0, 2, 4, 1, 3)  # [h', w', D, a, b]
        merged = self.patch_merger.merging_layer(cells.reshape(-1, d * s * s))
        act = ACTIVATIONS[self.cfg.projector_hidden_act]
        return self.linear_2(act(self.linear_1(merged)))


class VisionEncoder(nn.Module):
    """The tower and the projector: images → the embeddings their image tokens stand for."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg)
        self.multi_modal_projector = Projector(cfg)

    def tokens_per_image(self, size: Sequence[int]) -> int:
        """How many image tokens an H × W image takes in the prompt."""
        p, s = self.cfg.patch_size, self.cfg.spatial_merge_size
        return (size[0] // p // s) * (size[1] // p // s)

    def forward(self, pixel_values: torch.Tensor, image_sizes: Sequence[Sequence[int]]
                ) -> list[torch.Tensor]:
        """pixel_values [N, C, Hmax, Wmax] (image n in its top-left ``image_sizes[n]`` = (H, W))
        → one [tokens_per_image, text hidden] tensor per image."""
        p, out = self.cfg.patch_size, []
        for pixels, (hp, wp) in zip(pixel_values, image_sizes):
            h, w = int(hp) // p, int(wp) // p
            feats = self.vision_tower(pixels[:, : h * p, : w * p])
            out.append(self.multi_modal_projector(feats, h, w))
        return out


def splice_images(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                  features: Sequence[torch.Tensor]) -> torch.Tensor:
    """embeds [T, H] with the rows of the image tokens (``input_ids == image_token_id``, in
    order) replaced by the images' features, concatenated in image order; the counts must
    match."""
    where = (input_ids == image_token_id).nonzero().flatten()
    feats = torch.cat(list(features)) if features else embeds.new_zeros(0, embeds.shape[-1])
    if where.numel() != feats.shape[0]:
        raise ValueError(f"{where.numel()} image tokens in the prompt, {feats.shape[0]} image "
                         f"features")
    out = embeds.clone()
    out[where] = feats.to(embeds.dtype)
    return out


def prompt_embeds(embed_tokens: nn.Module, encoder: VisionEncoder, input_ids: torch.Tensor,
                  pixel_values: torch.Tensor | None = None,
                  image_sizes: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """A prompt's input embeddings [T, H] (the decoder's ``Request.prompt_embeds``): its tokens'
    (``embed_tokens``, the text model's table) with each image's features at its image tokens."""
    with torch.no_grad():
        feats = encoder(pixel_values, image_sizes) if len(image_sizes) else []
        return splice_images(embed_tokens(input_ids), input_ids, encoder.cfg.image_token_id,
                             feats)

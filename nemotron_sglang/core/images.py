"""Images into a VLM prompt, in plain PyTorch: Pixtral's preprocessing (resize to fit, aligned to
the image-token cell; rescale; normalise) and the prompt's image placeholders. Decoding image
files is the caller's (``serving/cli.py`` uses PIL); this module takes RGB ``uint8`` tensors.

An H × W image becomes H' × W' pixels: scaled down (floor) so its longest edge is at most
``longest_edge``, never up, then each side rounded up to a multiple of ``cell`` = patch size ×
spatial merge (28 for the released VLM) by the same bicubic, antialiased resize. It takes
h × w = H'/cell × W'/cell image tokens, written in the prompt row by row, ``[IMG_BREAK]`` after
each row and ``[IMG_END]`` in place of the last one (h = 2, w = 3):

    [IMG] [IMG] [IMG] [IMG_BREAK]
    [IMG] [IMG] [IMG] [IMG_END]

Only the ``[IMG]`` positions take image features (``core/vision.py:splice_images``); the break
and end tokens are ordinary embedded tokens. Mirrors transformers' ``PixtralImageProcessor`` and
``PixtralProcessor.replace_image_token`` (tested against both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """An image the model cannot take (its message is the reason, fit for a 400)."""


@dataclass(frozen=True)
class ImageSpec:
    """How images enter the prompt: the preprocessor's settings and the image token ids."""

    cell: int = 28                       # pixels per image token side: patch × spatial merge
    longest_edge: int = 1540
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255
    image_token_id: int = 131072
    break_token_id: int = 12
    end_token_id: int = 13
    max_images: int = 8                  # per request
    max_pixels: int = 64_000_000         # of a decoded image, before resizing

    @classmethod
    def from_files(cls, preprocessor: Mapping[str, Any], cell: int, image_token_id: int,
                   break_token_id: int, end_token_id: int, **limits) -> "ImageSpec":
        """From ``preprocessor_config.json`` (a PixtralImageProcessor's) and the model's ids;
        settings the path does not implement are refused."""
        for key, want in (("do_resize", True), ("do_rescale", True), ("do_normalize", True),
                          ("resample", 3)):
            if preprocessor.get(key, want) != want:
                raise ImageError(f"preprocessor {key}={preprocessor[key]!r}: only {want!r} is "
                                 f"implemented")
        size = preprocessor.get("size", {"longest_edge": 1024})
        if "longest_edge" not in size:
            raise ImageError(f"preprocessor size {size!r}: only longest_edge is implemented")
        return cls(cell=cell, longest_edge=int(size["longest_edge"]),
                   image_mean=tuple(preprocessor.get("image_mean", CLIP_MEAN)),
                   image_std=tuple(preprocessor.get("image_std", CLIP_STD)),
                   rescale_factor=float(preprocessor.get("rescale_factor", 1 / 255)),
                   image_token_id=image_token_id, break_token_id=break_token_id,
                   end_token_id=end_token_id, **limits)


def resized_size(height: int, width: int, spec: ImageSpec) -> tuple[int, int]:
    """(H', W') of an H × W image: fit inside longest_edge² (floor), then round each side up to
    a multiple of ``cell``. An image so elongated that a side falls to zero pixels is refused."""
    ratio = max(height / spec.longest_edge, width / spec.longest_edge)
    if ratio > 1:
        height, width = int(height / ratio), int(width / ratio)
    if height < 1 or width < 1:
        raise ImageError(f"image aspect ratio too extreme: a side is under one pixel once the "
                         f"longest edge is fit to {spec.longest_edge}")
    c = spec.cell
    return (height - 1) // c * c + c, (width - 1) // c * c + c


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased, as torchvision resizes a uint8 image: natively in uint8 on the CPU,
    elsewhere in float32 then clamped and rounded."""
    if tuple(image.shape[-2:]) == size:
        return image
    if image.device.type == "cpu":
        return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False,
                             antialias=True)[0]
    out = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0, 255).round_().to(torch.uint8)


def check_count(n: int, spec: ImageSpec) -> None:
    """Refuse more than ``max_images`` images in one request."""
    if n > spec.max_images:
        raise ImageError(f"{n} images: at most {spec.max_images} per request")


def check_pixels(i: int, h: int, w: int, spec: ImageSpec) -> None:
    """Refuse image ``i`` of h × w pixels unless it has at least one and at most max_pixels."""
    if h < 1 or w < 1 or h * w > spec.max_pixels:
        raise ImageError(f"image {i} has {h} × {w} pixels: at most {spec.max_pixels} pixels, "
                         f"at least 1 × 1")


def check_image(i: int, image: torch.Tensor, spec: ImageSpec) -> None:
    """Refuse what is not an RGB uint8 image [3, H, W] within ``check_pixels``."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ImageError(f"an image must be RGB uint8 [3, H, W], got {image.dtype} "
                         f"{list(image.shape)}")
    check_pixels(i, image.shape[1], image.shape[2], spec)


def check_request(sizes: Sequence[tuple[int, int] | None], markers: int, spec: ImageSpec
                  ) -> None:
    """A request's images, by their decoded (H, W) (None: not known before decoding, e.g. a
    remote URL), against its prompt's ``[IMG]`` count: ``check_count``, ``check_pixels``, one
    placeholder per image. (The server's rule; ``expand_prompt`` also takes a prompt without
    placeholders, putting images first.)"""
    check_count(len(sizes), spec)
    for i, size in enumerate(sizes):
        if size is not None:
            check_pixels(i, *size, spec)
    if markers != len(sizes):
        raise ImageError(f"the prompt has {markers} image placeholders for {len(sizes)} images "
                         f"(one [IMG] per image, where it goes)")


def preprocess(images: Sequence[torch.Tensor], spec: ImageSpec
               ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """RGB uint8 images [3, H, W] → (pixel_values [N, 3, max H', max W'] float32, each image in
    its top-left corner, zeros elsewhere; sizes [(H', W')])."""
    check_count(len(images), spec)
    out, sizes = [], []
    mean = torch.tensor(spec.image_mean).view(3, 1, 1)
    std = torch.tensor(spec.image_std).view(3, 1, 1)
    for i, image in enumerate(images):
        check_image(i, image, spec)
        size = resized_size(image.shape[1], image.shape[2], spec)
        pixels = _resize(image, size).float() * spec.rescale_factor
        out.append((pixels - mean.to(pixels.device)) / std.to(pixels.device))
        sizes.append(size)
    if not out:
        return torch.zeros(0, 3, 0, 0), []
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = torch.stack([F.pad(p, (0, wmax - p.shape[2], 0, hmax - p.shape[1])) for p in out])
    return batch, sizes


def placeholder_ids(size: tuple[int, int], spec: ImageSpec) -> list[int]:
    """The prompt tokens of one preprocessed image of ``size`` = (H', W') (drawn above)."""
    h, w = size[0] // spec.cell, size[1] // spec.cell
    ids = ([spec.image_token_id] * w + [spec.break_token_id]) * h
    ids[-1] = spec.end_token_id
    return ids


def expand_prompt(ids: Sequence[int], sizes: Sequence[tuple[int, int]], spec: ImageSpec
                  ) -> list[int]:
    """The prompt with its i-th ``[IMG]`` replaced by image i's placeholder; a prompt with no
    ``[IMG]`` gets the images in front. Any other count of ``[IMG]`` than images is refused."""
    at = [i for i, t in enumerate(ids) if t == spec.image_token_id]
    if not at:
        at, ids = list(range(len(sizes))), [spec.image_token_id] * len(sizes) + list(ids)
    if len(at) != len(sizes):
        raise ImageError(f"the prompt has {len(at)} image placeholders for {len(sizes)} images")
    out: list[int] = []
    prev = 0
    for pos, size in zip(at, sizes):
        out += list(ids[prev:pos]) + placeholder_ids(size, spec)
        prev = pos + 1
    return out + list(ids[prev:])

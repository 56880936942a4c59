"""Images into the VLM prompt (``core/images.py``): the resize rule and the pixels against
transformers' PixtralImageProcessor, the placeholder layout, and every refusal by its reason."""

from __future__ import annotations

import random

import pytest
import torch

from nemotron_sglang.core.images import (ImageError, ImageSpec, expand_prompt, placeholder_ids,
                                         preprocess, resized_size)

pixtral = pytest.importorskip("transformers.models.pixtral.image_processing_pixtral")

IMG, BRK, END = 900, 14, 15
SPEC = ImageSpec(cell=8, longest_edge=64, image_token_id=IMG, break_token_id=BRK,
                 end_token_id=END, max_images=3, max_pixels=10_000)


def test_resized_size_is_transformers_rule():
    import numpy as np

    for _ in range(300):
        h, w = random.randint(1, 400), random.randint(1, 400)
        theirs = pixtral.get_resize_output_image_size(np.zeros((3, h, w)), size=(64, 64),
                                                      patch_size=(8, 8),
                                                      input_data_format="channels_first")
        if min(theirs) == 0:          # a side floored to nothing: transformers' resize fails
            with pytest.raises(ImageError, match="aspect ratio"):
                resized_size(h, w, SPEC)
        else:
            assert resized_size(h, w, SPEC) == tuple(theirs), (h, w)
    with pytest.raises(ImageError, match="aspect ratio"):
        resized_size(1, 200, SPEC)


def _hf(device="cpu"):
    return pixtral.PixtralImageProcessor(size={"longest_edge": 64},
                                         patch_size={"height": 8, "width": 8}, device=device)


def test_pixels_equal_transformers():
    images = [torch.randint(0, 256, (3, random.randint(1, 99), random.randint(1, 99)),
                            dtype=torch.uint8) for _ in range(3)]
    ours, sizes = preprocess(images, SPEC)
    theirs = _hf()(images=images, return_tensors="pt")
    assert sizes == [tuple(s) for s in theirs["image_sizes"].tolist()]
    torch.testing.assert_close(ours, theirs["pixel_values"], rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pixels_equal_transformers_on_cuda():
    """On CUDA both resize in float32, then clamp and round (torchvision's non-native path)."""
    images = [torch.randint(0, 256, (3, 37, 90), dtype=torch.uint8).cuda(),
              torch.randint(0, 256, (3, 20, 11), dtype=torch.uint8).cuda()]
    ours, sizes = preprocess(images, SPEC)
    theirs = _hf()(images=images, return_tensors="pt", device="cuda")
    torch.testing.assert_close(ours, theirs["pixel_values"].to(ours.device), rtol=0, atol=1e-5)


def test_placeholder_rows():
    assert placeholder_ids((16, 24), SPEC) == [IMG, IMG, IMG, BRK, IMG, IMG, IMG, END]
    assert placeholder_ids((8, 8), SPEC) == [IMG, END]


def test_expand_prompt_places_images_at_their_markers():
    a, b = (8, 16), (16, 8)
    assert expand_prompt([5, IMG, 6, IMG], [a, b], SPEC) == \
        [5, IMG, IMG, END, 6, IMG, BRK, IMG, END]
    assert expand_prompt([5, 6], [a], SPEC) == [IMG, IMG, END, 5, 6]   # no marker: images first
    assert expand_prompt([5, 6], [], SPEC) == [5, 6]
    with pytest.raises(ImageError, match="2 image placeholders for 1 images"):
        expand_prompt([IMG, 5, IMG], [a], SPEC)
    with pytest.raises(ImageError, match="1 image placeholders for 0 images"):
        expand_prompt([IMG, 5], [], SPEC)


def test_bad_images_are_refused_with_the_reason():
    ok = torch.randint(0, 256, (3, 9, 9), dtype=torch.uint8)
    with pytest.raises(ImageError, match="4 images: at most 3"):
        preprocess([ok] * 4, SPEC)
    with pytest.raises(ImageError, match="RGB uint8"):
        preprocess([ok.float()], SPEC)
    with pytest.raises(ImageError, match="RGB uint8"):
        preprocess([ok[:1]], SPEC)
    with pytest.raises(ImageError, match="at most 10000 pixels"):
        preprocess([torch.zeros(3, 101, 100, dtype=torch.uint8)], SPEC)
    with pytest.raises(ImageError, match="at least 1"):
        preprocess([torch.zeros(3, 0, 5, dtype=torch.uint8)], SPEC)


def test_preprocessor_settings_not_implemented_are_refused():
    with pytest.raises(ImageError, match="do_normalize"):
        ImageSpec.from_files({"do_normalize": False}, 28, 1, 2, 3)
    with pytest.raises(ImageError, match="longest_edge"):
        ImageSpec.from_files({"size": {"height": 28, "width": 28}}, 28, 1, 2, 3)
    s = ImageSpec.from_files({"size": {"longest_edge": 100}, "image_mean": [0.5] * 3}, 28, 1, 2, 3)
    assert (s.longest_edge, s.image_mean, s.cell) == (100, (0.5,) * 3, 28)

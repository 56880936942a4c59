"""The image rule of a tokenization request (``sglang_plugin/vlm.check_request_images``) without a
server: every form SGLang accepts for ``image_data`` (bytes, a data URL, base64, a path, a
``file://`` URL, a decoded PIL image, precomputed features, a remote URL) is counted, and what
cannot be served is refused with its reason."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import pytest

pytest.importorskip("sglang")
Image = pytest.importorskip("PIL.Image")

from nemotron_sglang.core.config import ARCHITECTURE  # noqa: E402
from nemotron_sglang.core.images import ImageError  # noqa: E402
from nemotron_sglang.core.vlm_checkpoint import (VLM_ARCHITECTURE,  # noqa: E402
                                                 write_tiny_vlm_checkpoint)
from nemotron_sglang.sglang_plugin.vlm import check_request_images  # noqa: E402


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return str(write_tiny_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "v", seed=1))


def png(w: int = 5, h: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def check(vlm_dir, images, text="[IMG]", input_ids=None, arch=VLM_ARCHITECTURE):
    obj = SimpleNamespace(image_data=images, text=text, input_ids=input_ids)
    check_request_images(obj, [arch], vlm_dir)
    return obj


def test_every_accepted_form_counts_as_an_image(vlm_dir, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png())
    forms = [png(), "data:image/png;base64," + base64.b64encode(png()).decode(),
             base64.b64encode(png()).decode(), str(path), Image.new("RGB", (3, 3)),
             {"format": "processor_output"}, "https://example.invalid/x.png"]
    check(vlm_dir, forms, text="[IMG]" * len(forms))
    obj = check(vlm_dir, ["file://" + str(path)])
    assert obj.image_data == [str(path)]                   # SGLang would open "file://..."
    check(vlm_dir, [png()], text=None, input_ids=[5, 512, 6])     # [IMG] as its id
    check(vlm_dir, None, text="no images")


@pytest.mark.parametrize("images,text,reason", [
    ([b"nope"], "[IMG]", "image_data[0] is not an image"),
    (["/no/such/file.png"], "[IMG]", "no such file"),
    ([png(), png()], "[IMG]", "1 image placeholders for 2 images"),
    ([png()], "none here", "0 image placeholders for 1 images"),
    (None, "a [IMG]", "1 image placeholders for 0 images"),
    ([png()] * 9, "[IMG]" * 9, "9 images: at most 8"),
])
def test_what_cannot_be_served_is_refused_with_its_reason(vlm_dir, images, text, reason):
    with pytest.raises(ImageError, match=reason.replace("[", r"\[")):
        check(vlm_dir, images, text=text)


def test_the_text_model_takes_no_images(vlm_dir):
    with pytest.raises(ImageError, match="text-only"):
        check(vlm_dir, [png()], arch=ARCHITECTURE)
    check(vlm_dir, None, text="fine", arch=ARCHITECTURE)
    check(vlm_dir, [png()], arch="SomeOtherModel")          # not ours: untouched

"""The vision-language NLD through the real SGLang server (tri-mode dLLM algorithm, SGLang's
multimodal path on the CPU): image prompts on ``/generate`` and the OpenAI chat route (a data
URL and a local file) give core's tokens in every decode mode, and the lossless modes give what
SGLang's own Mistral3 server (no plugin code on its path) gives for the same weights; bad images
get a 400 with the reason and the server stays up."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch

import doc_commands
from doc_commands import commands_for
from sglang_server import TRI_MODE, Server, used_tokens

pytest.importorskip("sglang")
PIL = pytest.importorskip("PIL.Image")

from nemotron_sglang.core.decoding import DecodeParams, Request, generate  # noqa: E402
from nemotron_sglang.core.images import expand_prompt, preprocess  # noqa: E402
from nemotron_sglang.core.tokenizer import encode, load_tokenizer  # noqa: E402
from nemotron_sglang.core.vision import prompt_embeds  # noqa: E402
from nemotron_sglang.core.vlm_checkpoint import (load_image_spec, load_vlm,  # noqa: E402
                                                 write_tiny_vlm_checkpoint)
from nemotron_sglang.testing.mistral3 import write_mistral3_copy  # noqa: E402

MODES = ("ar", "linear_spec", "quadratic_spec", "diffusion")


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "tiny-vlm", seed=3)


@pytest.fixture(scope="module")
def core(vlm_dir):
    model, enc = load_vlm(vlm_dir)
    return model, enc, load_image_spec(vlm_dir, enc.cfg), load_tokenizer(vlm_dir)


@pytest.fixture(scope="module")
def server(vlm_dir, tmp_path_factory):
    s = Server(vlm_dir, tmp_path_factory.mktemp("logs") / "vlm.log",
               TRI_MODE + ["--max-running-requests", "4"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(vlm_dir, tmp_path_factory):
    """SGLang's plain AR server of the same weights as a Mistral3 checkpoint."""
    d = write_mistral3_copy(vlm_dir, tmp_path_factory.mktemp("mistral3") / "m3")
    s = Server(d, tmp_path_factory.mktemp("logs") / "mistral3.log", ["--disable-overlap-schedule"])
    yield s
    s.stop()


def png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def random_image(h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8)


def core_tokens(core, text: str, images, mode: str, max_new: int) -> list[int]:
    model, enc, spec, tok = core
    pixels, sizes = preprocess(images, spec)
    ids = expand_prompt(encode(tok, text), sizes, spec)
    embeds = prompt_embeds(model.encoder.embed_tokens, enc, torch.tensor(ids), pixels, sizes)
    (r,) = generate(model, [Request(ids, mode, DecodeParams(max_new_tokens=max_new),
                                    prompt_embeds=embeds)])
    return r.output_ids


def gen(server, text: str, images, mode: str | None, max_new: int) -> tuple[int, dict | str]:
    """/generate, greedy, in ``mode`` (None: no decode mode, for the plain server)."""
    sp = {"max_new_tokens": max_new, "temperature": 0}
    if mode is not None:
        sp["custom_params"] = {"decode_mode": mode}
    status, body = server.post("/generate", {"text": text, "image_data": images,
                                             "sampling_params": sp})
    return status, (json.loads(body) if status == 200 else body)


def test_image_prompts_equal_core_in_every_mode(server, core):
    one, two = random_image(30, 50), random_image(70, 20)       # the second is scaled down
    for mode in MODES:
        status, out = gen(server, "Look [IMG] here", [data_url(one)], mode, 12)
        assert status == 200, out
        assert out["output_ids"] == core_tokens(core, "Look [IMG] here", [one], mode, 12), mode
    status, out = gen(server, "[IMG] and [IMG]?", [data_url(one), data_url(two)],
                      "linear_spec", 10)
    assert status == 200, out
    assert out["output_ids"] == core_tokens(core, "[IMG] and [IMG]?", [one, two], "ar", 10)
    assert used_tokens(server) == 0


def test_chat_with_an_image_url_and_a_local_file(server, core, tmp_path):
    """The chat route's prompt is the VLM template with [IMG] where the image part stands;
    its reply is the /generate reply of that prompt, for a data URL and for a file path."""
    image = random_image(24, 40)
    path = tmp_path / "img.png"
    path.write_bytes(png(image))
    model, enc, spec, tok = core
    text = "<s><|im_start|>user\n[IMG]What is it?<|im_end|>\n<|im_start|>assistant\n"
    for url in (data_url(image), str(path)):
        for mode in ("ar", "quadratic_spec"):
            status, body = server.post("/v1/chat/completions", {
                "model": "nld", "max_tokens": 8, "temperature": 0, "decode_mode": mode,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is it?"}]}]})
            assert status == 200, body
            reply = json.loads(body)
            status, out = gen(server, text, [data_url(image)], mode, 8)
            assert status == 200, out
            assert out["output_ids"] == core_tokens(core, text, [image], mode, 8)
            assert reply["choices"][0]["message"]["content"] == out["text"]
            assert reply["usage"]["completion_tokens"] == len(out["output_ids"])
    # streamed, with usage: the same reply chunk by chunk, the mode's statistics in the usage
    status, body = server.post("/v1/chat/completions", {
        "model": "nld", "max_tokens": 8, "temperature": 0, "decode_mode": "linear_spec",
        "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(path)}},
            {"type": "text", "text": "What is it?"}]}]})
    assert status == 200, body
    events = [json.loads(line[len("data: "):]) for line in body.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    text_streamed = "".join(c["delta"].get("content") or "" for e in events
                            for c in e["choices"])
    status, out = gen(server, text, [data_url(image)], "linear_spec", 8)
    assert text_streamed == out["text"]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 8 and usage["decode_mode"] == "linear_spec"
    assert usage["prompt_tokens_details"]["image_tokens"] == 15     # 24 × 40 px: 3 × 5 cells


def png_header_only(h: int, w: int) -> bytes:
    """A PNG that declares h × w pixels (a valid IHDR) over a 1 × 1 image's data: its header
    is all a lazy open reads."""
    import struct
    import zlib

    data = bytearray(png(random_image(1, 1)))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_the_docs_image_line(server, tmp_path):
    """docs/serving.md's image chat (``doc_commands``), run as written with its placeholder path
    a real image: a reply in the asked mode, the image tokens counted in the usage."""
    path = tmp_path / "image.png"
    path.write_bytes(png(random_image(24, 40)))
    lines = commands_for("vlm")
    assert lines
    for cmd in lines:
        status, text = doc_commands.run(cmd, server.url, {"/path/to/image.png": str(path)})
        answer = doc_commands.check(cmd, status, text)
        assert answer["usage"]["prompt_tokens_details"]["image_tokens"] > 0, answer["usage"]


def test_bad_images_are_400_with_the_reason(server, tmp_path):
    ok = data_url(random_image(16, 16))
    huge = "data:image/png;base64," + base64.b64encode(png_header_only(9000, 9000)).decode()
    cases = [
        ("Look [IMG]", ["data:image/png;base64," + base64.b64encode(b"nope").decode()],
         "image_data[0] is not an image"),
        ("Look [IMG]", [str(tmp_path / "missing.png")], "no such file"),
        ("Look [IMG]", [ok, ok], "1 image placeholders for 2 images"),
        ("Look", [ok], "0 image placeholders for 1 images"),
        ("Look [IMG]", None, "1 image placeholders for 0 images"),
        ("[IMG]" * 9, [ok] * 9, "9 images: at most 8"),
        ("[IMG]", [ok, huge][1:], "9000 × 9000 pixels: at most"),
    ]
    for text, images, reason in cases:
        status, body = server.post("/generate", {
            "text": text, "image_data": images,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0}})
        assert status == 400 and reason in body, (reason, status, body)
    status, body = server.post("/generate", {"input_ids": [5, 6], "image_data": [ok],
                                             "sampling_params": {"max_new_tokens": 2}})
    assert status == 400 and "0 image placeholders" in body, body
    path = tmp_path / "ok.png"
    path.write_bytes(png(random_image(16, 16)))
    for url in (str(path), "file://" + str(path)):      # a file:// URL is its path
        status, out = gen(server, "Look [IMG] here", [url], "ar", 4)
        assert status == 200, out
    assert used_tokens(server) == 0


def test_lossless_modes_equal_sglangs_own_mistral3(server, reference):
    images = [data_url(random_image(40, 33)), data_url(random_image(90, 64))]
    for text, imgs in (("Two: [IMG] then [IMG].", images), ("[IMG] alone", images[1:])):
        status, ref = gen(reference, text, imgs, None, 12)
        assert status == 200, ref
        for mode in ("ar", "linear_spec", "quadratic_spec"):
            status, out = gen(server, text, imgs, mode, 12)
            assert status == 200, out
            assert out["output_ids"] == ref["output_ids"], mode
            assert out["meta_info"]["prompt_tokens"] == ref["meta_info"]["prompt_tokens"]

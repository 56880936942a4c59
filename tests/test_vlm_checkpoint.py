"""The tiny VLM checkpoint (``core/vlm_checkpoint.py``): written deterministically, loaded with
every tensor checked by name, and, read by transformers as a Mistral3 (text keys = a Ministral3),
giving the same logits as core for a prompt with an image."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemotron_sglang.core.vision import prompt_embeds
from nemotron_sglang.core.vlm_checkpoint import (WeightsError, load_vlm,
                                                 parse_vlm_config, write_tiny_vlm_checkpoint)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "tiny-vlm", seed=3)


def test_writer_is_deterministic_and_loads(vlm_dir, tmp_path):
    again = write_tiny_vlm_checkpoint(tmp_path / "again", seed=3)
    a, b = load_file(str(vlm_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, enc = load_vlm(vlm_dir)
    sd = {**{k: v for k, v in model.state_dict().items()},
          **{"encoder." + k: v for k, v in enc.state_dict().items()}}
    assert sd.keys() == a.keys() and all(torch.equal(sd[k], a[k]) for k in a)
    assert enc.cfg.image_token_id == model.config.vocab_size - 1


def test_stray_and_missing_tensors_are_refused_by_name(vlm_dir, tmp_path):
    sd = load_file(str(vlm_dir / "model.safetensors"))
    for name, change in (("missing", lambda t: t.pop("encoder.vision_tower.ln_pre.weight")),
                         ("unexpected", lambda t: t.update(
                             {"encoder.vision_tower.extra.weight": torch.ones(2)}))):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((vlm_dir / "config.json").read_text())
        t = dict(sd)
        change(t)
        save_file(t, str(d / "model.safetensors"))
        with pytest.raises(WeightsError, match=f"{name}.*encoder.vision_tower"):
            load_vlm(d)


def test_bad_vlm_configs_are_refused(vlm_dir):
    d = json.loads((vlm_dir / "config.json").read_text())
    with pytest.raises(WeightsError, match="vision_feature_layer"):
        parse_vlm_config({**d, "vision_feature_layer": -2})
    with pytest.raises(WeightsError, match="image_token_index"):
        parse_vlm_config({**d, "image_token_index": d["vocab_size"]})
    with pytest.raises(WeightsError, match="not an NLD VLM"):
        parse_vlm_config({**d, "architectures": ["NemotronLabsDiffusionModel"]})


def hf_mistral3(vlm_dir):
    """transformers' Mistral3ForConditionalGeneration holding the checkpoint's tensors."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from nemotron_sglang.testing.mistral3 import mistral3_config, mistral3_name

    cfg = mistral3_config(json.loads((vlm_dir / "config.json").read_text()))
    cfg.pop("architectures"), cfg.pop("model_type")
    hf = Mistral3ForConditionalGeneration(Mistral3Config(**cfg)).eval()
    sd = load_file(str(vlm_dir / "model.safetensors"))
    missing, unexpected = hf.load_state_dict({mistral3_name(k): v for k, v in sd.items()},
                                             strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf


def test_transformers_reads_the_checkpoint_as_mistral3_with_core_logits(vlm_dir):
    from test_vision import core_logits      # core's image prefill, as the VLM test runs it

    hf = hf_mistral3(vlm_dir)
    model, enc = load_vlm(vlm_dir)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    size = (24, 16)
    img = enc.cfg.image_token_id
    ids = [1] + torch.randint(20, 400, (8,), generator=g).tolist() + \
        [img] * enc.tokens_per_image(size) + [40, 41]
    pixels = torch.randn(1, 3, *size, generator=g)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids]), pixel_values=pixels,
                    image_sizes=torch.tensor([size])).logits[0]
    # core's whole prompt through the decoder's own prefill (Request.prompt_embeds): its
    # first token is the argmax of the last logit, which must be transformers' too
    from nemotron_sglang.core.decoding import DecodeParams, Request, generate

    embeds = prompt_embeds(model.encoder.embed_tokens, enc, torch.tensor(ids), pixels, [size])
    (res,) = generate(model, [Request(ids, "ar", DecodeParams(max_new_tokens=1),
                                      prompt_embeds=embeds)])
    last = theirs[-1].clone()
    last[model.config.mask_token_id] = float("-inf")        # core never emits the mask id
    assert res.output_ids == [int(last.argmax())]
    ours = core_logits(model, enc, ids, pixels, [size])      # the same prefill, full logits
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-4)


def test_cli_writes_the_tiny_vlm(tmp_path, vlm_dir):
    from nemotron_sglang.serving.cli import main

    assert main(["make-tiny-checkpoint", str(tmp_path / "v"), "--vlm", "--seed", "3"]) == 0
    a = load_file(str(vlm_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "v" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["make-tiny-checkpoint", str(tmp_path / "w"), "--vlm", "--with-lora"]) == 2


def test_raw_images_through_core_equal_transformers_processor_and_model(vlm_dir):
    """From raw RGB images and a text with [IMG] placeholders to logits: transformers'
    PixtralProcessor (read from the checkpoint's processor files) + Mistral3 against core's
    preprocess / expand_prompt / prefill, for two images (one scaled down, one up)."""
    from transformers import AutoProcessor

    from nemotron_sglang.core.images import expand_prompt, preprocess
    from nemotron_sglang.core.tokenizer import encode, load_tokenizer
    from nemotron_sglang.core.vlm_checkpoint import load_image_spec
    from test_vision import core_logits

    model, enc = load_vlm(vlm_dir)
    spec = load_image_spec(vlm_dir, enc.cfg)
    proc = AutoProcessor.from_pretrained(vlm_dir)
    images = [torch.randint(0, 256, (3, 90, 41), dtype=torch.uint8),
              torch.randint(0, 256, (3, 13, 30), dtype=torch.uint8)]
    text = "Compare [IMG] with [IMG] now"
    theirs = proc(text=text, images=images, return_tensors="pt")
    pixels, sizes = preprocess(images, spec)
    ids = expand_prompt(encode(load_tokenizer(vlm_dir), text), sizes, spec)
    assert ids == theirs["input_ids"][0].tolist()
    assert sizes == [tuple(s) for s in theirs["image_sizes"].tolist()]
    torch.testing.assert_close(pixels, theirs["pixel_values"], rtol=0, atol=1e-5)
    with torch.no_grad():
        ref = hf_mistral3(vlm_dir)(**theirs).logits[0]
    ours = core_logits(model, enc, ids, pixels, sizes)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-4, atol=1e-4)


def test_generate_with_an_image(tmp_path, vlm_dir, capsys):
    """``generate --image``: self-speculation gives ar's tokens after an image prompt; a file that
    is no image, or an image for the text model, is refused with exit 2 and the reason."""
    from PIL import Image

    from nemotron_sglang.serving.cli import main

    path = tmp_path / "a.png"
    Image.fromarray(torch.randint(0, 256, (30, 50, 3), dtype=torch.uint8).numpy()).save(path)
    outs = {}
    for mode in ("ar", "linear_spec", "quadratic_spec", "diffusion"):
        assert main(["generate", "--model", str(vlm_dir), "--mode", mode, "--prompt",
                     "Look [IMG] here", "--image", str(path), "--max-new-tokens", "12",
                     "--json"]) == 0
        outs[mode] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(outs["ar"]["output_ids"]) == 12
    assert outs["linear_spec"]["output_ids"] == outs["ar"]["output_ids"]
    assert outs["quadratic_spec"]["output_ids"] == outs["ar"]["output_ids"]
    assert main(["generate", "--model", str(vlm_dir), "--prompt", "x", "--image", str(path),
                 "--image", str(path), "--max-new-tokens", "2"]) == 0   # both before the text
    (tmp_path / "bad.png").write_text("not an image")
    capsys.readouterr()
    assert main(["generate", "--model", str(vlm_dir), "--prompt", "x", "--image",
                 str(tmp_path / "bad.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--image", str(path)]) == 2
    assert "not a vision-language checkpoint" in capsys.readouterr().err

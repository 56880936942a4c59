"""Core's image path (``core/vision.py``) against transformers' Mistral3 on tiny random weights:
the vision tower + projector features of 1 and 2 images of different sizes (fp32, rtol 1e-4),
and the splice of those features into the text embeddings."""

from __future__ import annotations

import pytest
import torch

from nemotron_sglang.core.vision import VisionConfig, VisionEncoder, prompt_embeds, splice_images

transformers = pytest.importorskip("transformers")

TEXT_HIDDEN = 48


def hf_model(act: str, bias: bool):
    from transformers import Mistral3Config, Mistral3Model

    cfg = Mistral3Config(
        vision_config={"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 8,
                       "patch_size": 4, "image_size": 64, "hidden_act": act,
                       "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}},
        text_config={"model_type": "mistral", "hidden_size": TEXT_HIDDEN,
                     "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 12, "vocab_size": 120,
                     "rms_norm_eps": 1e-5},
        image_token_index=100, spatial_merge_size=2, projector_hidden_act="gelu",
        multimodal_projector_bias=bias, vision_feature_layer=-1)
    model = Mistral3Model(cfg).eval()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    with torch.no_grad():
        for p in model.parameters():        # fresh random weights, norms included
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return cfg, model


def core_encoder(cfg, model) -> VisionEncoder:
    vc = VisionConfig.from_hf_dict(cfg.to_dict(), cfg.text_config.hidden_size,
                                   cfg.text_config.rms_norm_eps)
    enc = VisionEncoder(vc).eval()
    theirs = {k: v for k, v in model.state_dict().items()
              if k.startswith(("vision_tower.", "multi_modal_projector."))}
    missing, unexpected = enc.load_state_dict(theirs, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return enc


@pytest.mark.parametrize("act,bias", [("gelu", False), ("silu", True)])
@pytest.mark.parametrize("sizes", [[(16, 24)], [(16, 24), (32, 8)]])
def test_image_features_match_transformers(act, bias, sizes):
    cfg, model = hf_model(act, bias)
    enc = core_encoder(cfg, model)
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
    pixels = torch.randn(len(sizes), 3, hmax, wmax)
    with torch.no_grad():
        theirs = model.get_image_features(pixels, image_sizes=torch.tensor(sizes),
                                          vision_feature_layer=-1).pooler_output
        ours = enc(pixels, sizes)
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    assert [o.shape[0] for o in ours] == [enc.tokens_per_image(s) for s in sizes]
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-4, atol=1e-4)


def test_a_wrong_merge_order_is_caught():
    """The comparison can fail: transposing each image's patch grid changes the features."""
    cfg, model = hf_model("gelu", False)
    enc = core_encoder(cfg, model)
    pixels = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        theirs = model.get_image_features(pixels, image_sizes=torch.tensor([(16, 24)]),
                                          vision_feature_layer=-1).pooler_output[0]
        ours = enc(pixels.transpose(-1, -2).contiguous(), [(24, 16)])[0]
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs, rtol=1e-2, atol=1e-2)


def test_splice_replaces_exactly_the_image_tokens():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    ids = torch.tensor([1, 7, 100, 100, 9, 100, 3])
    embeds = torch.randn(7, 5, generator=g)
    feats = [torch.randn(2, 5, generator=g), torch.randn(1, 5, generator=g)]
    out = splice_images(embeds, ids, 100, feats)
    torch.testing.assert_close(out[[2, 3]], feats[0])
    torch.testing.assert_close(out[5], feats[1][0])
    keep = [0, 1, 4, 6]
    torch.testing.assert_close(out[keep], embeds[keep])
    assert torch.equal(splice_images(embeds, torch.tensor([1, 2, 3, 4, 5, 6, 7]), 100, []),
                       embeds)
    with pytest.raises(ValueError, match="3 image tokens in the prompt, 2 image features"):
        splice_images(embeds, ids, 100, feats[:1])


# ---- the whole VLM: core's NLD decoder after core's image path == transformers' Mistral3 ------
IMAGE_TOKEN = 500


def vlm_pair(n_layers_vision: int = 2):
    """(core NLDModel, core VisionEncoder, transformers Mistral3ForConditionalGeneration) with
    the same fresh random weights; the text model is NLD's tiny geometry as a Ministral3."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from nemotron_sglang.core.config import preset
    from nemotron_sglang.core.model import NLDModel

    nld = preset("tiny")
    text = {k: v for k, v in nld.to_hf_dict().items()
            if k not in ("architectures", "auto_map", "model_type", "torch_dtype")}
    cfg = Mistral3Config(
        vision_config={"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": n_layers_vision, "num_attention_heads": 4,
                       "head_dim": 8, "patch_size": 4, "image_size": 64, "hidden_act": "silu",
                       "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}},
        text_config={"model_type": "ministral3", **text}, image_token_index=IMAGE_TOKEN,
        spatial_merge_size=2, projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=-1, tie_word_embeddings=False)   # NLD's head is its own
    hf = Mistral3ForConditionalGeneration(cfg).eval()
    assert hf.lm_head.weight.data_ptr() != hf.model.language_model.embed_tokens.weight.data_ptr()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    sd = hf.state_dict()
    core = NLDModel(nld).eval()
    core.load_state_dict({k: sd["model.language_model." + k[len("encoder."):]]
                          if k.startswith("encoder.") else sd["lm_head.weight"]
                          for k in core.state_dict()})
    enc = VisionEncoder(VisionConfig.from_hf_dict(cfg.to_dict(), nld.hidden_size,
                                                  nld.rms_norm_eps)).eval()
    enc.load_state_dict({k: sd["model." + k] for k in enc.state_dict()})
    return core, enc, hf


def core_logits(core, enc, ids: list[int], pixels, sizes) -> torch.Tensor:
    from nemotron_sglang.core.attention import CAUSAL
    from nemotron_sglang.core.batch import ForwardBatch, PassRow
    from nemotron_sglang.core.kv_cache import PagedKVCache

    c = core.config
    cache = PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                         head_dim=c.head_dim, num_pages=16, page_size=16)
    cache.add(0)
    batch = ForwardBatch.from_rows([PassRow(0, ids, list(range(len(ids))), 0, CAUSAL)],
                                   write_kv=True)
    return core(batch, cache,
                embeds=prompt_embeds(core.encoder.embed_tokens, enc, batch.input_ids, pixels, sizes))


@pytest.mark.parametrize("sizes", [[], [(16, 24)], [(16, 24), (8, 32)]])
def test_vlm_logits_match_transformers_mistral3(sizes):
    core, enc, hf = vlm_pair()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    # 30 text tokens first: the positions cross original_max_position_embeddings (32), where
    # the llama-4 query scale starts
    ids = [1] + torch.randint(20, 400, (30,), generator=g).tolist()
    for s in sizes:                       # each image's tokens, then some text
        ids += [IMAGE_TOKEN] * enc.tokens_per_image(s)
        ids += torch.randint(20, 400, (3,), generator=g).tolist()
    pixels = torch.randn(len(sizes), 3, max([s[0] for s in sizes] or [4]),
                         max([s[1] for s in sizes] or [4]), generator=g)
    with torch.no_grad():
        kw = {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)} if sizes else {}
        theirs = hf(input_ids=torch.tensor([ids]), **kw).logits[0]
    ours = core_logits(core, enc, ids, pixels, sizes)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-4)
    if sizes:                              # the images matter: without them the logits differ
        blank = core_logits(core, enc, [t if t != IMAGE_TOKEN else 5 for t in ids], pixels, [])
        assert not torch.allclose(blank, theirs, rtol=1e-3, atol=1e-3)


def test_every_mode_decodes_after_an_image_prompt_and_self_spec_equals_ar():
    """Images live in the prompt: after an image prefill every mode decodes as for text, and
    greedy self-speculation emits ar's tokens; the image changes what is decoded."""
    from nemotron_sglang.core.decoding import DecodeParams, Request, default_cache, generate
    from nemotron_sglang.core.modes import DECODE_MODES, SELF_SPEC_MODES

    core, enc, _ = vlm_pair()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    size = (16, 16)
    ids = [1, 30, 31] + [IMAGE_TOKEN] * enc.tokens_per_image(size) + [40, 41, 42]
    pixels = torch.randn(1, 3, *size, generator=g)
    embeds = prompt_embeds(core.encoder.embed_tokens, enc, torch.tensor(ids), pixels, [size])
    params = DecodeParams(max_new_tokens=12, threshold=0.5)
    out = {}
    for mode in DECODE_MODES:
        req = Request(ids, mode, params, prompt_embeds=embeds)
        (res,) = generate(core, [req], cache=default_cache(core, [req]))
        assert res.finish_reason in ("length", "stop") and res.output_ids, (mode, res)
        out[mode] = res.output_ids
    for mode in SELF_SPEC_MODES:
        assert out[mode] == out["ar"], mode
    text_only = Request(ids, "ar", params)
    (plain,) = generate(core, [text_only], cache=default_cache(core, [text_only]))
    assert plain.output_ids != out["ar"]
    with pytest.raises(Exception, match="prompt_embeds"):
        bad = Request(ids, "ar", params, prompt_embeds=embeds[:-1])
        generate(core, [bad], cache=default_cache(core, [bad]))

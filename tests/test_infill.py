"""Diffusion infill in core (``DecodeParams.canvas``, ``core.modes.infill_canvas``): a first block
holding given tokens the model sees bidirectionally and masks it fills. Every given token is kept,
every mask is filled, a suffix changes the answer before it, and the other modes refuse it."""

from __future__ import annotations

import random

import pytest

from conftest import random_prompts
from nemotron_sglang.core.decoding import DecodeError, DecodeParams, Request, default_cache, \
    generate, make_decoder
from nemotron_sglang.core.modes import RuleError, infill_canvas


def canvases(rng: random.Random, n: int, block: int, vocab: int, mask: int, eos: int):
    """Random canvases: 1..block tokens, each a mask with probability 1/2, else a given id."""
    out = []
    for _ in range(n):
        length = rng.randint(1, block)
        out.append(tuple(mask if rng.random() < 0.5 else rng.choice(
            [t for t in range(vocab) if t not in (mask, eos)]) for _ in range(length)))
    return out


@pytest.mark.parametrize("threshold", [0.0, 0.9, 1.0])
def test_infill_keeps_every_given_token_and_fills_every_mask(model64, threshold):
    cfg = model64.config
    rng = random.Random(random.randrange(1 << 30))
    b, mask, eos = cfg.block_size, cfg.mask_token_id, cfg.eos_token_id
    prompts = random_prompts(16, seed=rng.randrange(1 << 20), vocab=512)
    cans = canvases(rng, 16, b, 512, mask, eos)
    res = generate(model64, [Request(p, "diffusion", DecodeParams(
        max_new_tokens=64, threshold=threshold, canvas=c)) for p, c in zip(prompts, cans)])
    for c, r in zip(cans, res):
        out = r.output_ids
        assert mask not in out and r.finish_reason == "stop" and r.mode == "diffusion"
        assert 1 <= len(out) <= len(c)
        for t, given in zip(out, c):
            assert given == mask or t == given
        if eos not in out:
            assert len(out) == len(c)           # the whole region, then the request ends
        else:
            assert out.index(eos) == len(out) - 1
        # each denoise pass commits at least one mask (slot 0, when masked, is the seed)
        assert r.forwards <= sum(t == mask for t in c[1:])
        if threshold == 0.0:
            assert r.forwards <= 1


def test_a_suffix_is_seen_and_kept_out_of_the_output(ckpt_dirs):
    import torch

    from nemotron_sglang.core.weights import load_model

    model = load_model(ckpt_dirs["s1_b8"], dtype=torch.float64)      # block 8: a 4-token gap
    cfg = model.config
    rng = random.Random(random.randrange(1 << 30))
    b, mask = cfg.block_size, cfg.mask_token_id
    prompts = random_prompts(24, seed=rng.randrange(1 << 20), vocab=512)
    outs = {}
    for name in ("a", "b"):
        suffix = tuple(rng.randrange(128, 512) for _ in range(b // 2))
        reqs = []
        for p in prompts:
            canvas, gap = infill_canvas(suffix, b, 64, mask)
            assert canvas[gap:] == suffix and canvas[:gap] == (mask,) * gap
            reqs.append(Request(p, "diffusion", DecodeParams(max_new_tokens=64, canvas=canvas,
                                                             canvas_emit=gap)))
        outs[name] = [r.output_ids for r in generate(model, reqs)]
        assert all(len(o) <= b - b // 2 for o in outs[name])
    # the first slot is the prompt's AR seed either way; the rest sees the suffix
    assert sum(x != y for x, y in zip(outs["a"], outs["b"])) >= 12     # ~20 of 24 measured
    assert all(x[0] == y[0] for x, y in zip(outs["a"], outs["b"]))
    # max_new_tokens caps the gap
    canvas, gap = infill_canvas((300,), b, 2, mask)
    assert gap == 2 and canvas == (mask, mask, 300)


def test_infill_is_refused_where_it_has_no_meaning(model64):
    from nemotron_sglang.testing.token_grammar import random_dfa

    cfg = model64.config
    cache = default_cache(model64, [Request([1, 2, 3])])
    dec = make_decoder(model64, cache)
    canvas = (cfg.mask_token_id, 300, cfg.mask_token_id)
    for mode in ("ar", "linear_spec", "quadratic_spec"):
        with pytest.raises(DecodeError, match=f"canvas: only decode_mode diffusion.*{mode}"):
            dec.run([Request([4, 5, 6], mode, DecodeParams(canvas=canvas))])
    with pytest.raises(DecodeError, match="canvas: .* do not fit the block"):
        dec.run([Request([4, 5], "diffusion", DecodeParams(canvas=(300,) * (cfg.block_size + 1)))])
    with pytest.raises(DecodeError, match="vocabulary"):
        dec.run([Request([4, 5], "diffusion", DecodeParams(canvas=(cfg.vocab_size,)))])
    g = random_dfa(random.Random(random.randrange(1 << 20)), cfg.vocab_size, states=3,
                   fanout=(2, 8), stop_ids=(cfg.eos_token_id,), avoid=(cfg.mask_token_id,))
    with pytest.raises(DecodeError, match="canvas: infill cannot be constrained"):
        dec.run([Request([4, 5], "diffusion", DecodeParams(canvas=canvas), grammar=g)])
    assert cache.num_free_pages == cache.num_pages and not cache.seq_ids()
    with pytest.raises(RuleError, match="suffix: .* leave no gap"):
        infill_canvas((5,) * cfg.block_size, cfg.block_size, 64, cfg.mask_token_id)
    for bad in ([1.5], "abc", (True,)):
        with pytest.raises(DecodeError, match="canvas"):
            DecodeParams(canvas=bad)


def test_infill_on_the_trained_fixture_fills_the_rule():
    """The embedded default (trained with masks anywhere in a block) fills a 4-token gap between
    "The number after n is" and ". The number after n+2 is n+3." with " n+1." — 66 of the 79
    two-digit n measured (plain diffusion without the suffix: 79)."""
    import torch

    from nemotron_sglang.core.tokenizer import decode, encode, load_tokenizer
    from nemotron_sglang.core.weights import load_model
    from nemotron_sglang.data import EMBEDDED

    model, tok = load_model(EMBEDDED, dtype=torch.float32), load_tokenizer(EMBEDDED)
    ns = list(range(10, 89))
    reqs = []
    for n in ns:
        canvas, gap = infill_canvas(encode(tok, f". The number after {n + 2} is {n + 3}."), 32, 4,
                                    model.config.mask_token_id)
        reqs.append(Request(encode(tok, f"The number after {n} is"), "diffusion",
                            DecodeParams(max_new_tokens=4, canvas=canvas, canvas_emit=gap)))
    res = generate(model, reqs)
    right = sum(decode(tok, r.output_ids) == f" {n + 1}." for n, r in zip(ns, res))
    assert right >= 60, right

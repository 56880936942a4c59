"""Grammars in core (``core/decoding/grammar.py``) with random token automata
(``testing/token_grammar.py``): the cursor's masks and look-aheads; every mode's output is a
sentence of its grammar; greedy self-speculation equals greedy AR under the same grammar (with
penalties too) through both decision layers; diffusion commits left to right; the token that
completes a grammar ends the output. At T > 0 self-speculation keeps AR's constrained law:
``tests/test_spec_law.py`` (the exact law under a grammar, with its power and a negative
control)."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import random_prompts
from nemotron_sglang.core.decoding import (DecodeParams, Request, SamplingRule, decide_batched,
                                           decide_each, generate)
from nemotron_sglang.core.decoding.grammar import GrammarCursor, constrain, unpack, words
from nemotron_sglang.testing.token_grammar import TokenDFA, random_dfa

MODES = ("ar", "linear_spec", "quadratic_spec", "diffusion")
EOS, MASK = 11, 100


def dfa(seed: int, vocab: int = 512, fanout=(2, 40)) -> TokenDFA:
    return random_dfa(random.Random(seed), vocab, states=7, fanout=fanout, stop_ids=(EOS, 2),
                      avoid=(MASK,))


def test_cursor_rows_follow_the_automaton_and_roll_back():
    seed = random.randrange(1 << 30)
    g = dfa(seed)
    cur = GrammarCursor(g.fresh(), 512)
    rnd = random.Random(seed)
    walk = g.fresh()
    path = []
    for _ in range(6):                   # a random sentence prefix, no stop token (each state
        t = rnd.choice([t for t in walk.allowed() if t not in g.stop_ids])   # has >= 2 others)
        walk.accept(t), path.append(t)
    cur.advance(path[:2])
    tails = path[2:] + [MASK]            # the last tail is refused: rows stop after it
    bits = cur.rows((), tails, len(tails) + 1)
    assert cur.consumed == path[:2] and cur.grammar.path == walk.path[:3]   # rolled back
    assert len(bits) == len(tails)       # the row judging MASK, none after it
    ref = g.fresh()
    for t in path[:2]:
        ref.accept(t)
    for i in range(len(bits)):
        allowed = set(unpack(bits[i:i + 1], 512)[0].nonzero().flatten().tolist())
        assert allowed == set(ref.allowed()), (seed, i)
        if i < len(tails) - 1:
            ref.accept(tails[i])
    k, done = cur.prefix(path[2:3], path[3:] + [MASK])
    assert k == len(path) - 3 and not done and cur.consumed == path[:2]
    cur.seek(path[:1])
    assert cur.consumed == path[:1] and g.fresh().matches(cur.consumed)


def test_constrain_masks_only_the_rows_it_has():
    g = torch.Generator().manual_seed(random.randrange(1 << 30))
    z = torch.randn(4, 70, generator=g, dtype=torch.float64)
    bits = torch.randint(-(1 << 31), 1 << 31, (2, words(70)), generator=g, dtype=torch.int64)
    bits = bits.to(torch.int32)
    out = constrain(z, bits)
    ok = unpack(bits, 70)
    assert torch.equal(out[:2][ok], z[:2][ok]) and bool((out[:2][~ok] == -torch.inf).all())
    assert torch.equal(out[2:], z[2:])


@pytest.mark.parametrize("case", range(3))
def test_every_mode_obeys_the_grammar_and_self_spec_equals_ar(model64, case):
    seed = random.randrange(1 << 30) + case
    g = dfa(seed)
    prompts = random_prompts(6, seed=seed, vocab=512)
    rule = SamplingRule(frequency_penalty=0.8) if case == 2 else None

    def run(mode, decide, block=None):
        reqs = [Request(p, mode, DecodeParams(max_new_tokens=24, threshold=0.5, sampling=rule,
                                              block_length=block), grammar=g.fresh())
                for p in prompts]
        return [r.output_ids for r in generate(model64, reqs, decide=decide)]

    out = {(m, d.__name__): run(m, d) for m in MODES for d in (decide_batched, decide_each)}
    unconstrained = [r.output_ids for r in generate(model64, [Request(p, "ar", DecodeParams(
        max_new_tokens=24, sampling=rule)) for p in prompts])]
    assert out[("ar", "decide_batched")] != unconstrained, seed      # the grammar bites
    for (mode, dec), outs in out.items():
        for o in outs:
            assert g.matches(o) and MASK not in o, (seed, mode, dec, o)
        assert outs == out[(mode, "decide_batched")], (seed, mode)    # twin == batched
    for mode in ("linear_spec", "quadratic_spec"):
        assert out[(mode, "decide_batched")] == out[("ar", "decide_batched")], (seed, mode)
        assert run(mode, decide_batched, block=4) == out[("ar", "decide_batched")], seed


def test_a_completing_stop_token_ends_the_output(model64):
    """A grammar whose only sentence is ``a b <stop 2>`` (2 is not the model's EOS): every
    mode emits exactly it and stops there."""
    a, b = 300, 301
    g = TokenDFA({0: {a: 1}, 1: {b: 2}, 2: {}}, accepting={2}, stop_ids=(2,))
    for mode in MODES:
        (r,) = generate(model64, [Request([5, 6, 7], mode, DecodeParams(max_new_tokens=20),
                                          grammar=g.fresh())])
        assert r.output_ids == [a, b, 2] and r.finish_reason == "stop", (mode, r)


def test_diffusion_commits_left_to_right_under_a_grammar(model64):
    """Under a grammar that allows every token (so no candidate changes) each denoise pass
    commits a prefix of the masked slots, and the leftmost always; without one the same
    requests commit out of order somewhere (else this proves nothing)."""
    free = TokenDFA({0: {t: 0 for t in range(512) if t not in (MASK, EOS)}}, {0}, (EOS,))
    prompts = random_prompts(6, seed=random.randrange(1 << 30), vocab=512)

    def commits(grammar):
        seen = []

        def spy(logits, items, mask_id, **staged):
            out = decide_batched(logits, items, mask_id, **staged)
            seen.extend((a, d) for (_, _, a), d in zip(items, out) if d.commit is not None)
            return out
        generate(model64, [Request(p, "diffusion", DecodeParams(max_new_tokens=16,
                                                                threshold=0.2),
                                   grammar=None if grammar is None else grammar.fresh())
                           for p in prompts], decide=spy)
        return seen
    ordered = commits(free)
    assert ordered and all(a.ordered and d.commit[0] and d.commit == sorted(d.commit,
                                                                             reverse=True)
                           for a, d in ordered)
    assert any(d.commit != sorted(d.commit, reverse=True) for _, d in commits(None))


def test_a_grammar_the_rule_cannot_meet_ends_in_an_error_and_frees_the_kv(model64):
    """The grammar ``a b <stop>`` with min_new_tokens 5 (stop banned): after ``a b`` nothing is
    allowed. Every mode ends the request with finish reason "error" and the reason, emits only
    grammar tokens, and leaves the cache empty."""
    from nemotron_sglang.core.decoding import default_cache

    g = TokenDFA({0: {300: 1}, 1: {301: 2}, 2: {}}, accepting={2}, stop_ids=(EOS,))
    rule = SamplingRule(min_new_tokens=5, stop_ids=(EOS,))
    for mode in MODES:
        reqs = [Request([5, 6, 7], mode, DecodeParams(max_new_tokens=12, sampling=rule),
                        grammar=g.fresh())]
        cache = default_cache(model64, reqs)
        (r,) = generate(model64, reqs, cache=cache)
        assert r.finish_reason == "error" and "min_new_tokens" in r.error, (mode, r)
        assert g.matches(r.output_ids) and len(r.output_ids) <= 2, (mode, r.output_ids)
        assert cache.num_free_pages == cache.num_pages, mode


def test_unpack_equals_its_readable_twin():
    """The byte-wise ``unpack`` against ``unpack_reference`` on random bit rows (every word
    value, negative ones included), vocabularies not a multiple of 32 or 8."""
    from nemotron_sglang.core.decoding.grammar import unpack_reference

    for vocab in (1, 7, 37, 513, 640, 4099):
        bits = torch.randint(-2**31, 2**31 - 1, (5, words(vocab)), dtype=torch.int32)
        assert torch.equal(unpack(bits, vocab), unpack_reference(bits, vocab)), vocab
    bits = torch.tensor([[-1, 0, -2**31]], dtype=torch.int32)    # bit 31 alone: token 95
    assert unpack(bits, 96)[0].tolist() == [True] * 32 + [False] * 32 + [False] * 31 + [True]

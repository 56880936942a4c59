"""Decoder semantics: lossless self-speculation, diffusion commit rules, KV invariants, aborts,
validation, and the sampling rules' distributions."""

from __future__ import annotations

import random

import pytest
import torch
from scipy import stats

from conftest import new_cache, random_prompts
from nemotron_sglang.core.decoding import (DecodeError, DecodeParams, Request, default_cache,
                                           generate, make_decoder)
from nemotron_sglang.core.decoding import Ask, Kind, SamplingRule, decide_batched, decide_each
from nemotron_sglang.core.decoding.diffusion import commit_step
from nemotron_sglang.core.decoding.sampling import (diffusion_candidates, pick,
                                                    speculative_accept)
from nemotron_sglang.core.weights import load_model

SPEC = ("linear_spec", "quadratic_spec")


def run(model, prompts, mode, max_new=None, **kw):
    max_new = max_new or [20] * len(prompts)
    reqs = [Request(p, mode, DecodeParams(max_new_tokens=n, **kw)) for p, n in zip(prompts, max_new)]
    return generate(model, reqs)


def eos_heavy(model, factor: float):
    """A copy whose EOS head row is scaled so EOS wins at some positions."""
    m = load_model.__globals__["NLDModel"](model.config).to(model.dtype)
    m.load_state_dict(model.state_dict())
    if model.has_lora:
        m.set_lora([(a.lora_A, a.lora_B) for a in (l.self_attn for l in model.encoder.layers)],
                   model.encoder.layers[0].self_attn.lora_scale)
    with torch.no_grad():
        m.diffusion_head.weight[model.config.eos_token_id] *= factor
    return m.eval()


@pytest.mark.parametrize("name,seed", [("s0_lora", 101), ("s1_b8", 102), ("s2_lora", 103)])
def test_self_spec_equals_greedy_ar_on_200_prompts(ckpt_dirs, name, seed):
    model = load_model(ckpt_dirs[name], dtype=torch.float64)
    prompts = random_prompts(200, seed=seed, vocab=model.config.vocab_size)
    max_new = [random.Random(i).randint(1, 24) for i in range(200)]
    ar = run(model, prompts, "ar", max_new)
    variants = [(m, {}) for m in SPEC]
    if model.has_lora:
        variants.append(("linear_spec", {"use_lora": False}))
    for mode, kw in variants:
        got = run(model, prompts, mode, max_new, **kw)
        for i, (a, g) in enumerate(zip(ar, got)):
            assert g.output_ids == a.output_ids, (mode, kw, i)
            assert g.finish_reason == a.finish_reason
    assert all(len(r.output_ids) == n for r, n in zip(ar, max_new) if r.finish_reason == "length")


def test_self_spec_equals_ar_with_eos_mid_block(ckpt_dirs):
    base = load_model(ckpt_dirs["s0_lora"], dtype=torch.float64)
    model = eos_heavy(base, 3.0)
    prompts = random_prompts(200, seed=7, vocab=512)
    ar = run(model, prompts, "ar", [24] * 200)
    stops = [len(r.output_ids) for r in ar if r.finish_reason == "stop"]
    assert len(stops) >= 40, f"EOS too rare to test: {len(stops)} stops"
    assert len({n % 4 for n in stops}) == 4         # EOS lands at every slot of a block
    for mode in SPEC:
        for kw in ({}, {"use_lora": False}):
            got = run(model, prompts, mode, [24] * 200, **kw)
            assert [g.output_ids for g in got] == [a.output_ids for a in ar], (mode, kw)
            assert [g.finish_reason for g in got] == [a.finish_reason for a in ar]
    diff = run(model, prompts, "diffusion", [24] * 200)
    for r in diff:
        eos = model.config.eos_token_id
        assert eos not in r.output_ids[:-1]
        assert (r.finish_reason == "stop") == (r.output_ids[-1] == eos)


def test_self_spec_takes_fewer_forwards_with_agreeing_drafts(model64):
    """Linear spec with a drafter equal to the verifier is not testable on random weights, but
    the forward accounting is: 2 per cycle, acceptance = tokens per cycle."""
    prompts = random_prompts(20, seed=3, vocab=512)
    for r in run(model64, prompts, "linear_spec"):
        assert r.forwards == 2 * r.cycles
        emitted_in_cycles = len(r.output_ids) - 1           # the prefill seed is emitted first
        assert r.acceptance_length == pytest.approx(emitted_in_cycles / r.cycles) or (
            r.finish_reason == "stop")
    for r in run(model64, prompts, "quadratic_spec"):
        assert r.forwards == r.cycles + 1                   # first pass drafts only


def test_kv_after_every_mode_equals_ar_kv(model64):
    m = model64
    prompts = random_prompts(12, seed=5, vocab=512)
    for mode in ("ar", "diffusion", "linear_spec", "quadratic_spec"):
        reqs = [Request(p, mode, DecodeParams(max_new_tokens=13)) for p in prompts]
        cache = default_cache(m, reqs, page_size=3)
        results = make_decoder(m, cache).run(reqs, free=False)
        for p, r in zip(prompts, results):
            n = cache.length(r.seq_id)
            assert len(p) <= n <= len(p) + len(r.output_ids) - 1
            text = (p + r.output_ids)[:n]
            ref = new_cache(m)
            ref.add(0)
            from nemotron_sglang.core.attention import CAUSAL
            from nemotron_sglang.core.batch import ForwardBatch, PassRow
            m(ForwardBatch.from_rows([PassRow(0, text, list(range(n)), 0, CAUSAL)],
                                     write_kv=True), ref)
            ref.commit(0, n)
            for layer in range(m.config.num_hidden_layers):
                for got, want in zip(cache.gather(layer, r.seq_id), ref.gather(layer, 0)):
                    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            cache.free(r.seq_id)
        cache.check_integrity()
        assert cache.num_free_pages == cache.num_pages


def test_diffusion_threshold_extremes_forward_counts(model64):
    b = model64.config.block_size
    prompts = random_prompts(30, seed=9, vocab=512)
    eos = model64.config.eos_token_id
    for threshold, per_block in ((0.0, 1), (1.0, b - 1)):   # the rule's ends (core/modes.py)
        res = run(model64, prompts, "diffusion", [3 * b] * 30, threshold=threshold)
        full = [r for r in res if r.finish_reason == "length"]
        assert len(full) >= 25
        for r in full:
            assert eos not in r.output_ids and len(r.output_ids) == 3 * b
            # 3 blocks of `per_block` denoise passes, refresh after the first two only
            assert r.forwards == 3 * per_block + 2


def test_diffusion_step_budget_caps_the_denoise_passes_of_every_block(model64):
    """max_steps = k: at most k denoise passes per block, the k-th committing every slot left.
    At threshold 1 (one slot per pass otherwise) the count is exact: min(k, B - 1) per block;
    k = 1 is threshold 0's decode, and a budget that is never reached changes nothing."""
    b = model64.config.block_size
    n = 12
    prompts = random_prompts(n, seed=random.randrange(1 << 20), vocab=512)
    eos = model64.config.eos_token_id
    free = run(model64, prompts, "diffusion", [3 * b] * n, threshold=1.0)
    assert run(model64, prompts, "diffusion", [3 * b] * n, threshold=1.0,
               max_steps=b - 1) == free
    assert [r.output_ids for r in run(model64, prompts, "diffusion", [3 * b] * n, max_steps=1)] \
        == [r.output_ids for r in run(model64, prompts, "diffusion", [3 * b] * n, threshold=0.0)]
    for k in (1, 2, 3, b // 2):
        res = run(model64, prompts, "diffusion", [3 * b] * n, threshold=1.0, max_steps=k)
        full = [r for r in res if r.finish_reason == "length" and eos not in r.output_ids]
        assert len(full) >= n - 2
        for r in full:
            assert len(r.output_ids) == 3 * b and r.mode == "diffusion"
            assert r.forwards == 3 * min(k, b - 1) + 2      # + the refresh after blocks 1, 2
    for r in run(model64, prompts, "diffusion", [3 * b] * n, threshold=0.9, max_steps=2):
        assert r.forwards <= 3 * 2 + 2


def test_step_budget_is_refused_where_it_has_no_meaning(model64):
    from nemotron_sglang.testing.token_grammar import random_dfa

    cache = default_cache(model64, [Request([1, 2, 3])])
    dec = make_decoder(model64, cache)
    for mode in ("ar", "linear_spec", "quadratic_spec"):
        with pytest.raises(DecodeError, match=f"max_steps: only decode_mode diffusion.*{mode}"):
            dec.run([Request([4, 5, 6], mode, DecodeParams(max_steps=2))])
    g = random_dfa(random.Random(random.randrange(1 << 20)), model64.config.vocab_size, states=3,
                   fanout=(2, 8), stop_ids=(model64.config.eos_token_id,),
                   avoid=(model64.config.mask_token_id,))
    with pytest.raises(DecodeError, match="max_steps: a step budget cannot be kept under a grammar"):
        dec.run([Request([4, 5, 6], "diffusion", DecodeParams(max_steps=2), grammar=g)])
    assert cache.num_free_pages == cache.num_pages and not cache.seq_ids()
    for k in (0, -1, 1.5, True, "2"):
        with pytest.raises(DecodeError, match="max_steps"):
            DecodeParams(max_steps=k)


def test_diffusion_block_seeds_are_greedy_ar(model64):
    b = model64.config.block_size
    prompts = random_prompts(10, seed=13, vocab=512)
    res = run(model64, prompts, "diffusion", [3 * b] * 10)
    for p, r in zip(prompts, res):
        starts = [j for j in range(0, len(r.output_ids), b)]
        ctx = [p + r.output_ids[:j] for j in starts]
        nxt = run(model64, ctx, "ar", [1] * len(ctx))
        assert [x.output_ids[0] for x in nxt] == [r.output_ids[j] for j in starts]


@pytest.mark.parametrize("decide", [decide_each, decide_batched])
def test_commit_step_rules(decide):
    g = torch.Generator().manual_seed(random.randrange(1 << 30))
    mask_id, v = 5, 8
    logits = torch.randn(6, v, generator=g, dtype=torch.float64) * 3
    logits[2, mask_id] = 50.0                         # the mask id is never a candidate
    block = [3, mask_id, mask_id, 1, mask_id, mask_id]
    masked = (1, 2, 4, 5)

    def step(threshold):
        ask = Ask(Kind.DENOISE, masked, 0.0, (0, 0), threshold=threshold)
        return commit_step(block, masked, decide(logits, [(0, 6, ask)], mask_id)[0])

    everything = step(0.0)
    assert mask_id not in everything
    assert [everything[i] for i in (0, 3)] == [3, 1]
    cand, conf = diffusion_candidates(logits, SamplingRule(), mask_id, None)
    assert int(cand[2]) != mask_id
    one = step(1.5)
    changed = [i for i in range(6) if one[i] != block[i]]
    assert changed == [max(masked, key=lambda i: conf[i])]
    tau = float(sorted(conf[list(masked)].tolist())[1])  # commits the top 3 of the 4 masked slots
    some = step(tau)
    assert sum(t == mask_id for t in some) == 1
    assert all(some[i] == int(cand[i]) for i in masked if conf[i] >= tau)


def test_mixed_modes_in_one_batch_equal_single_mode_runs(model64):
    prompts = random_prompts(16, seed=17, vocab=512)
    modes = ["ar", "diffusion", "linear_spec", "quadratic_spec"] * 4
    mixed = generate(model64, [Request(p, m, DecodeParams(max_new_tokens=15))
                               for p, m in zip(prompts, modes)])
    for i, (p, m) in enumerate(zip(prompts, modes)):
        (alone,) = run(model64, [p], m, [15])
        assert mixed[i].output_ids == alone.output_ids
        assert mixed[i].forwards == alone.forwards


def test_random_aborts_leave_no_leak_and_do_not_disturb_others(model64):
    prompts = random_prompts(24, seed=19, vocab=512)
    modes = ["ar", "diffusion", "linear_spec", "quadratic_spec"] * 6
    reqs = [Request(p, m, DecodeParams(max_new_tokens=18)) for p, m in zip(prompts, modes)]
    clean = generate(model64, reqs)
    for trial in range(3):
        rng = random.Random(trial)
        cache = default_cache(model64, reqs, page_size=2)

        def on_step(step, active):
            return [s.rid for s in active if rng.random() < 0.08]

        res = make_decoder(model64, cache).run(reqs, on_step=on_step)
        cache.check_integrity()
        assert cache.num_free_pages == cache.num_pages
        aborted = [r for r in res if r.finish_reason == "abort"]
        assert 0 < len(aborted) < len(res)
        for r, c in zip(res, clean):
            if r.finish_reason != "abort":
                assert r.output_ids == c.output_ids
            else:
                assert r.output_ids == c.output_ids[: len(r.output_ids)]


def test_bad_requests_are_refused_and_leak_nothing(model64):
    cache = default_cache(model64, [Request([1, 2, 3])])
    dec = make_decoder(model64, cache)
    bad = [(Request([1, 2], "turbo"), "unknown decode mode"),
           (Request([]), "empty prompt"),
           (Request([1, 512]), "out of range"),
           (Request([1], "diffusion", DecodeParams(block_length=8)), "exceeds the model's block"),
           (Request([1] * 200, "linear_spec", DecodeParams(max_new_tokens=60)), "exceed the context")]
    for req, msg in bad:
        with pytest.raises(DecodeError, match=msg):
            dec.run([Request([4, 5, 6]), req])
        assert cache.num_free_pages == cache.num_pages and not cache.seq_ids()
    with pytest.raises(DecodeError, match="power of two"):
        DecodeParams(block_length=3)
    with pytest.raises(DecodeError, match="max_new_tokens"):
        DecodeParams(max_new_tokens=0)
    for t in (float("nan"), -0.1, 1.5):                  # [0, 1], as the server's flag and API
        with pytest.raises(DecodeError, match="threshold"):
            DecodeParams(threshold=t)


def test_kv_cache_full_is_a_clear_error_and_frees_everything(model64):
    cache = new_cache(model64, num_pages=6, page_size=2)
    with pytest.raises(DecodeError, match="KV cache full"):
        make_decoder(model64, cache).run([Request([1] * 5, "ar", DecodeParams(max_new_tokens=30))])
    cache.check_integrity()
    assert cache.num_free_pages == cache.num_pages


# ---- temperature > 0 ------------------------------------------------------------------------

def _chi2_ok(counts: dict, probs: dict, n: int) -> float:
    keys = sorted(probs)
    obs = [counts.get(k, 0) for k in keys]
    exp = [probs[k] * n for k in keys]
    assert sum(obs) == n
    return stats.chisquare(obs, exp).pvalue


def test_speculative_sampling_keeps_the_target_distribution():
    """A Markov-chain target over 4 tokens (+ a mask id); independent draft distributions.
    Three-token sequences from repeated accept cycles must follow the chain exactly."""
    g = torch.Generator().manual_seed(123)
    v, mask_id, n_draft = 5, 4, 3
    P = torch.softmax(torch.randn(v, v, generator=g, dtype=torch.float64) * 1.5, -1)
    P[:, mask_id] = 0
    P = P / P.sum(-1, keepdim=True)
    logP = P.log()
    Q = torch.softmax(torch.randn(n_draft, v, generator=g, dtype=torch.float64), -1)
    Q[:, mask_id] = 0
    Q = Q / Q.sum(-1, keepdim=True)
    seed_tok, n = 0, 12000
    counts: dict = {}
    for _ in range(n):
        out, last = [], seed_tok
        while len(out) < 3:
            drafts = [int(torch.multinomial(Q[j], 1, generator=g)) for j in range(n_draft)]
            chain = [last] + drafts
            target = torch.stack([logP[t] for t in chain])        # verifier after each prefix
            u = torch.rand(n_draft + 1, 2, generator=g, dtype=torch.float64)
            emitted = speculative_accept(drafts, Q, target, SamplingRule(1.0), mask_id, u)
            out += emitted
            last = out[-1]
        key = tuple(out[:3])
        counts[key] = counts.get(key, 0) + 1
    probs = {}
    for a in range(4):
        for b in range(4):
            for c in range(4):
                probs[(a, b, c)] = float(P[seed_tok, a] * P[a, b] * P[b, c])
    assert _chi2_ok(counts, probs, n) > 1e-3
    # and the rule is not vacuous: the same test rejects plain draft acceptance
    naive = {}
    for _ in range(5000):
        key = tuple(int(torch.multinomial(Q[j], 1, generator=g)) for j in range(3))
        naive[key] = naive.get(key, 0) + 1
    assert _chi2_ok(naive, probs, 5000) < 1e-6


def test_sampling_and_diffusion_candidates_follow_tempered_softmax():
    g = torch.Generator().manual_seed(7)
    v, mask_id, temp, n = 6, 2, 0.7, 20000
    logits = torch.randn(v, generator=g, dtype=torch.float64)
    logits[mask_id] = 5.0                              # must never be drawn
    want = torch.softmax(torch.cat([logits[:mask_id], logits[mask_id + 1:]]) / temp, -1)
    probs = {k: float(p) for k, p in zip([i for i in range(v) if i != mask_id], want)}
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    drawn = pick(logits.expand(n, v), SamplingRule(temp), mask_id, u).tolist()
    cand, conf = diffusion_candidates(logits.expand(n, v).clone(), SamplingRule(temp), mask_id,
                                      torch.rand(n, 2, generator=g, dtype=torch.float64))
    for seq in (drawn, cand.tolist()):
        assert mask_id not in seq
        counts = {k: seq.count(k) for k in probs}
        assert _chi2_ok(counts, probs, n) > 1e-3
    untempered = torch.softmax(logits, -1)            # confidence: untempered, mask kept
    torch.testing.assert_close(conf, untempered[cand])


def test_temperature_modes_are_seeded_and_never_emit_the_mask(model64):
    prompts = random_prompts(8, seed=23, vocab=512)
    for mode in ("ar", "diffusion", "linear_spec", "quadratic_spec"):
        a = run(model64, prompts, mode, temperature=0.8, seed=1)
        b = run(model64, prompts, mode, temperature=0.8, seed=1)
        c = run(model64, prompts, mode, temperature=0.8, seed=2)
        assert [r.output_ids for r in a] == [r.output_ids for r in b]
        assert [r.output_ids for r in a] != [r.output_ids for r in c]
        assert all(100 not in r.output_ids for r in a + c)


def test_block_length_one_degenerates_to_ar(model64):
    prompts = random_prompts(6, seed=29, vocab=512)
    ar = run(model64, prompts, "ar", [9] * 6)
    for mode in ("diffusion", "linear_spec", "quadratic_spec"):
        got = run(model64, prompts, mode, [9] * 6, block_length=1)
        assert [g.output_ids for g in got] == [a.output_ids for a in ar]
        assert [g.forwards for g in got] == [a.forwards for a in ar]   # no wasted draft pass

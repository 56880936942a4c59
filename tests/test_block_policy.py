"""The adaptive block's rule (``core/block_policy.py``): expected tokens per cycle, the acceptance
estimate, the cost table's interpolation and validation, and the choice under load."""

from __future__ import annotations

import random

import pytest

from nemotron_sglang.core.block_policy import (AcceptanceTally, CostTable, acceptance_rate,
                                               candidate_blocks, choose_block, expected_tokens)
from nemotron_sglang.core.decoding.base import DecodeParams, RequestState


def test_expected_tokens_is_the_truncated_geometric_mean():
    rng = random.Random(5)
    for alpha, block in [(0.5, 4), (0.9, 32), (0.2, 2)]:
        draws = []
        for _ in range(40000):          # simulate: drafts accepted while each passes with alpha
            c = 0
            while c < block - 1 and rng.random() < alpha:
                c += 1
            draws.append(c + 1)
        mean = sum(draws) / len(draws)
        assert abs(mean - expected_tokens(alpha, block)) < 0.03 * block, (alpha, block, mean)
    assert expected_tokens(0.7, 1) == 1.0 and expected_tokens(1.0, 8) == 8.0


def test_acceptance_estimate_follows_note_verify():
    st = RequestState(rid=0, prompt=[1], params=DecodeParams(), block=8, mask_id=3, eos_id=2)
    assert acceptance_rate(st.draft_hits, st.draft_trials) == pytest.approx(0.8)   # the prior
    for _ in range(200):
        st.note_verify(7, 1)            # one accepted, then a rejection: α = 1/2
    assert acceptance_rate(st.draft_hits, st.draft_trials) == pytest.approx(0.5, abs=0.01)
    st.note_verify(7, 7)                # all accepted: 7 hits in 7 trials (no rejection seen)
    assert (st.draft_hits, st.draft_trials) == (207, 407)
    assert acceptance_rate(0, 0, prior=0.95) == pytest.approx(0.95)
    assert acceptance_rate(10, 10, prior=0.5) == pytest.approx(12.5 / 15)


def test_tally_pools_recent_acceptance():
    tally = AcceptanceTally(decay=0.5)
    assert tally.alpha() == pytest.approx(0.8)
    for _ in range(30):
        tally.add(9, 10)                # a server whose drafts pass 9 times in 10
    assert tally.alpha() == pytest.approx((18 + 4) / (20 + 5), abs=1e-6)
    for _ in range(30):
        tally.add(1, 10)                # recent requests weigh most
    assert tally.alpha() < 0.3
    tally.add(0, 0)                     # nothing tried: no change


def flat_then_linear(knee_tokens: float, base: float = 10.0) -> CostTable:
    """A GPU-like table: flat until ``knee_tokens`` tokens per forward, then linear."""
    rows, blocks = (1, 2, 4, 8, 16, 32, 64), tuple(candidate_blocks(32))
    ms = tuple(tuple(base * max(1.0, r * b / knee_tokens) for b in blocks) for r in rows)
    return CostTable(rows, blocks, ms)


def test_cost_interpolates_and_extrapolates():
    t = flat_then_linear(256)
    assert t.cost(4, 4 * 8) == pytest.approx(10.0)
    assert t.cost(64, 64 * 32) == pytest.approx(80.0)
    assert t.cost(128, 128 * 32) == pytest.approx(160.0)       # beyond the rows: linear
    mid = t.cost(48, 48 * 32)
    assert t.cost(32, 32 * 32) < mid < t.cost(64, 64 * 32)


GOOD = {"rows": [1, 2], "blocks": [1, 2], "ms": [[1.0, 2.0], [2.0, 3.0]]}


@pytest.mark.parametrize("change", [{"rows": [2, 1]}, {"blocks": [2, 2]}, {"ms": [[1.0, 2.0]]},
                                    {"ms": [[0.0, 2.0], [2.0, 3.0]]}, {"extra": 1},
                                    {"ms": [[1.0, float("nan")], [2.0, 3.0]]}])
def test_bad_tables_are_refused(change):
    assert CostTable.from_mapping(GOOD).cost(2, 4) == 3.0
    with pytest.raises(ValueError, match="cost table"):
        CostTable.from_mapping({**GOOD, **change})
    with pytest.raises(ValueError, match="missing key 'ms'"):
        CostTable.from_mapping({"rows": [1], "blocks": [1]})


def test_choice_shrinks_the_block_as_load_grows():
    """Idle: the largest block; more rows: smaller blocks; far past the knee: ar. The anchors of
    the issue (a B200 study: 32 at <= 4 requests, 16 at 8-32, 8 at >= 64) come out of a
    flat-then-linear table, the monotone trend at least."""
    t = flat_then_linear(512)
    picks = [choose_block([0.85] * n, t, 32) for n in (1, 2, 4, 8, 16, 32, 64, 256)]
    assert picks[0] == 32
    assert all(a >= b for a, b in zip(picks, picks[1:])), picks
    assert picks[-1] < 32
    assert choose_block([0.01] * 64, t, 32) == 1          # drafts never accepted: ar
    # neighbours' tokens count: a crowded forward makes the same rows choose smaller
    assert choose_block([0.85] * 4, t, 32, other_rows=32, other_tokens=4096) <= picks[2]


def test_choice_is_the_rate_argmax():
    t = flat_then_linear(128)
    alphas = [0.3, 0.9, 0.6]
    rates = {b: sum(expected_tokens(a, b) for a in alphas) /
             ((1 if b == 1 else 2) * t.cost(3, 3 * b)) for b in candidate_blocks(32)}
    assert choose_block(alphas, t, 32) == max(rates, key=rates.get)
    assert choose_block(alphas, t, 32, candidates=[1, 4]) in (1, 4)


def test_a_request_near_its_end_takes_a_smaller_block():
    """Tokens past what a request may still emit are not counted, so with 5 tokens left a
    32-slot cycle is worth no more than an 8-slot one and the cheaper block wins."""
    t = flat_then_linear(256)                 # 8 rows x 32 tokens still on the flat part
    assert choose_block([0.97] * 8, t, 32, remaining=[400] * 8) == 32
    assert choose_block([0.97] * 8, t, 32, remaining=[5] * 8) == 8     # ties go to the smaller

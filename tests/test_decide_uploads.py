"""The batched decision layer sends its host tables to the device in ONE copy
(``core/decoding/decide_stage.py``): on random mixes of asks — PICK, DRAFT, VERIFY, DENOISE and
QUADRATIC, greedy and sampled (top-k / top-p / min-p), logprobs with top k and ids, grammars,
ordered denoising, and the processors (penalties, bias, min_new_tokens) — on a logits tensor
and on a lazy ``PassLogits``, counted under a simulated GPU run (``HostReads``):

    decide_batched(..., staged=None)                        1 blocking upload, 1 read
    stage_decisions + upload before (the step's own copy)   0 uploads,         1 read

and the decisions are those of the per-request twin ``decide_each``. The counter sees the
staged upload when it happens inside the counted region (the negative control)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from test_decisions import _lazy, _same, random_forward
from nemotron_sglang.core.decoding import Ask, Kind, decide_batched, decide_each
from nemotron_sglang.core.decoding.decide_stage import stage_decisions
from nemotron_sglang.core.host_pack import HostPack
from nemotron_sglang.testing.host_reads import HostReads

MIXES = {     # name -> (kinds, with processors that shape the logits)
    "pick": ((Kind.PICK,), False),
    "draft": ((Kind.DRAFT,), False),
    "verify": ((Kind.VERIFY,), False),
    "denoise": ((Kind.DENOISE,), False),
    "quadratic": ((Kind.QUADRATIC,), False),
    "every kind": (tuple(Kind), False),
    "every kind, processors": (tuple(Kind), True),
}
FORWARDS, PASSES = 8, 24        # 192 asks a mix: every feature occurs (misses < 1e-5)


def _features(items) -> set:
    seen = set()
    for _, _, ask in items:
        seen.add((ask.kind, ask.sampled))
        r = ask.rule
        seen |= {name for name, on in [
            ("truncated", r.truncated), ("logprobs top k", bool(ask.logprobs)),
            ("logprob ids", ask.logprobs is not None and bool(ask.logprob_ids)),
            ("grammar", ask.allowed is not None), ("ordered", ask.ordered),
            ("threshold", ask.kind == Kind.DENOISE and ask.threshold > 0),
            ("processors", r.shapes_logits)] if on}
    return seen


def _staged(items, mask_id):
    pack = HostPack()
    stage_decisions(items, mask_id, pack)
    return pack.upload(torch.device("cpu"))


def _check(got, twin, items, where):
    assert len(got) == len(twin) == len(items), where
    for (s, e, ask), a, b in zip(items, twin, got):
        _same(a, b, f"{where}: {ask.kind.value} T={ask.temperature} rows {s}..{e}")


@pytest.mark.parametrize("mix", MIXES)
def test_one_upload_or_none_when_staged(mix):
    kinds, shaping = MIXES[mix]
    seen = set()
    for _ in range(FORWARDS):
        seed = random.randrange(1 << 30)
        logits, items, mask_id = random_forward(seed, passes=PASSES, kinds=kinds, shaping=shaping)
        seen |= _features(items)
        twin = decide_each(logits, items, mask_id)
        for name, make in (("tensor", lambda: logits), ("PassLogits", lambda: _lazy(logits))):
            where = f"{mix}, {name}, seed {seed}"
            with HostReads(simulate=True) as counted:
                got = decide_batched(make(), items, mask_id)
            assert [u.site for u in counted.uploads] == ["host_pack.py:HostPack.upload"], \
                (where, counted.uploads)
            assert [c for c, _ in counted.calls] == ["tolist"], (where, counted.calls)
            _check(got, twin, items, where)

            staged = _staged(items, mask_id)                 # before the step: not counted
            lazy = make()
            with HostReads(simulate=True) as counted:
                got = decide_batched(lazy, items, mask_id, staged=staged)
            assert counted.uploads == [], (where, counted.uploads)
            assert [c for c, _ in counted.calls] == ["tolist"], (where, counted.calls)
            _check(got, twin, items, where)
            if name == "PassLogits":                         # each decided row computed once
                lazy_twin = make()
                decide_each(lazy_twin, items, mask_id)
                assert lazy.rows_computed == lazy_twin.rows_computed, where

            with HostReads(simulate=True) as counted:        # the negative control
                got = decide_batched(make(), items, mask_id, staged=_staged(items, mask_id))
            assert len(counted.uploads) == 1, (where, counted.uploads)
            _check(got, twin, items, where)
    want = {(k, s) for k in kinds for s in (False, True)} | {
        "truncated", "logprobs top k", "logprob ids", "grammar"}
    want |= {"threshold", "ordered"} if kinds == (Kind.DENOISE,) else set()
    want |= {"processors"} if shaping else set()
    assert seen >= want, want - seen


def test_shared_and_unordered_rows():
    """Asks reading the same rows, out of order: the head computes each distinct row once,
    in one copy, and the decisions are the twin's."""
    logits, items, mask_id = random_forward(random.randrange(1 << 30), passes=10)
    again = [(s, e, dataclasses.replace(a, stream=(a.stream[0] + 1, a.stream[1])))
             for s, e, a in items[::-1] if a.kind != Kind.QUADRATIC]
    both = items + again + [(0, 1, Ask(Kind.PICK, (0,), 0.7, (5, 0)))] * 2
    twin = decide_each(logits, both, mask_id)
    lazy, lazy_twin = _lazy(logits), _lazy(logits)
    decide_each(lazy_twin, both, mask_id)
    with HostReads(simulate=True) as counted:
        got = decide_batched(lazy, both, mask_id)
    assert len(counted.uploads) == 1 and [c for c, _ in counted.calls] == ["tolist"]
    _check(got, twin, both, "shared rows")
    _check(decide_batched(logits, both, mask_id, staged=_staged(both, mask_id)), twin, both,
           "shared rows, staged")
    assert lazy.rows_computed == lazy_twin.rows_computed


def test_tables_staged_for_other_asks_are_refused():
    logits, items, mask_id = random_forward(random.randrange(1 << 30), passes=6)
    staged = _staged(items[:-1], mask_id)
    with pytest.raises(ValueError, match="staged for other asks"):
        decide_batched(logits, items, mask_id, staged=staged)
    # the twin takes (and ignores) the same argument, so a caller can swap the two
    _check(decide_each(logits, items, mask_id, staged=_staged(items, mask_id)),
           decide_batched(logits, items, mask_id), items, "twin with staged")

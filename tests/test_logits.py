"""Logits computed only for the rows read (``core/logits.py``) and the quadratic row budget.

A lazy ``PassLogits`` indexes like the full logits tensor; every strategy decides the same tokens
from it as from the full tensor; a quadratic pass computes exactly R + B - 1 head rows (the R row
heads and the accepted row's B - 1 draft slots), a draft B - 1, a refresh / AR pass 1; the fused
pass carries at most the row budget's rows, and self-speculation stays equal to greedy AR.
"""

from __future__ import annotations

import pytest
import torch

from conftest import random_prompts
from nemotron_sglang.core.decoding import (DecodeParams, Request, decide_batched, decide_each,
                                           default_cache, make_decoder)
from nemotron_sglang.core.decoding.base import RequestState
from nemotron_sglang.core.decoding.quadratic_spec import QuadraticSpecStrategy, row_budget
from nemotron_sglang.core.logits import PassLogits
from nemotron_sglang.core.weights import load_model


def _lazy(t: int, vocab: int, seed: int):
    """A PassLogits whose head looks its rows up in a random [t, vocab] table (exact)."""
    full = torch.randn(t, vocab, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
    rows = torch.arange(t, dtype=torch.float64)[:, None]
    return PassLogits(rows, lambda h: full[h[:, 0].long()]), full


@pytest.mark.parametrize("seed", [3, 4])
def test_lazy_logits_index_like_the_tensor(seed):
    lazy, full = _lazy(12, 20, seed)
    view, sub = lazy.span(2, 11), full[2:11]
    for index in (0, -1, 5, slice(1, None), slice(0, None, 3), slice(4, 2), [0, 7, 3]):
        torch.testing.assert_close(view[index], sub[index], rtol=0, atol=0,
                                   msg=lambda m: f"seed {seed} index {index}: {m}")
    assert lazy.rows_computed == 9          # each row computed once, however often read
    assert view[slice(4, 2)].shape == (0, 20)
    with pytest.raises(IndexError):
        view[9]


def _quadratic_state(block: int, drafts: list[int], seed: int) -> RequestState:
    st = RequestState(rid=0, prompt=[1], params=DecodeParams(max_new_tokens=200), block=block,
                      mask_id=19, eos_id=-1, kv_len=5, seed=seed)
    st.output = [7]
    st.scratch.update(drafts=list(drafts), q=None, accepted_avg=None)
    return st


@pytest.mark.parametrize("decide", [decide_each, decide_batched])
@pytest.mark.parametrize("accepted", [0, 2, 5])
def test_quadratic_pass_reads_r_plus_b_minus_one_rows(accepted, decide):
    """Lazy and full logits give the same decision; the lazy one computes R + B - 1 rows (the
    batched layer finds the accepted row on the device and gathers only its masks)."""
    b, vocab, seed = 6, 20, 40 + accepted
    s = QuadraticSpecStrategy()
    st, twin = (_quadratic_state(b, list(range(1, b)), seed) for _ in range(2))
    p = s.next_pass(st)
    s.next_pass(twin)
    n = len(p.token_ids)
    r = n // (b + 1)
    full = torch.randn(n, vocab, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    for i in range(r):      # the verifier agrees with drafts 1..accepted, then disagrees
        full[i * (b + 1), st.scratch["drafts"][i] if i < accepted else 0] = 1e6
    lazy = PassLogits(torch.arange(n, dtype=torch.float64)[:, None],
                      lambda rows: full[rows[:, 0].long()])
    keep_lazy = s.on_decision(st, p, decide(lazy, [(0, n, p.ask)], st.mask_id)[0])
    keep_full = s.on_decision(twin, p, decide(full, [(0, n, p.ask)], st.mask_id)[0])
    assert (keep_lazy, st.output, st.scratch["drafts"]) == \
        (keep_full, twin.output, twin.scratch["drafts"])
    assert keep_lazy == accepted + 1
    assert lazy.rows_computed == r + b - 1, f"{lazy.rows_computed} rows for R={r}, B={b}"


def test_row_budget_rule():
    assert row_budget(None, 31) == 32              # no cycle seen yet: every row
    assert row_budget(0.0, 31) == 2
    assert row_budget(4.0, 31) == 8                # ceil(1.5 * 4) + 2
    assert row_budget(30.0, 31) == 32              # never more rows than drafts + 1
    assert row_budget(3.3, 2) == 3


def test_loop_computes_only_read_rows_and_trims_rows(ckpt_dirs):
    """A mixed run (every step ONE forward of every mode's rows): a quadratic row computes
    R + B - 1 head rows, a bidirectional one its masked slots, a causal one at most its tokens;
    quadratic passes carry at most the row budget (fewer than B rows at low acceptance);
    self-spec outputs equal greedy AR."""
    model64 = load_model(ckpt_dirs["s1_b8"], dtype=torch.float64)
    cfg = model64.config
    b, mask_id = cfg.block_size, cfg.mask_token_id
    prompts = random_prompts(6, seed=91, vocab=cfg.vocab_size)
    modes = ("ar", "diffusion", "linear_spec", "quadratic_spec")
    reqs = [Request(p, m, DecodeParams(max_new_tokens=24)) for p in prompts for m in modes]
    dec = make_decoder(model64, default_cache(model64, reqs))
    plans, computed = [], []
    step_attention, decide = model64.step_attention, dec.decide

    def planning(*args, **kw):
        plan, attend = step_attention(*args, **kw)
        plans.append(plan)
        return plan, attend

    def deciding(logits, items, mask_id_, **kw):
        out = decide(logits, items, mask_id_, **kw)
        computed.append(logits.rows_computed)        # the step's whole decision read
        return out
    model64.step_attention, dec.decide = planning, deciding
    results = dec.run(reqs)
    for i in range(0, len(reqs), 4):
        ar = results[i].output_ids
        assert results[i + 2].output_ids == ar and results[i + 3].output_ids == ar, i
    assert len(plans) == len(computed) == dec.stats.steps + 1
    quad_rows, kinds = [], set()
    for plan, n in zip(plans[1:], computed[1:]):    # plans[0] is the prefill
        exact = slack = 0
        for row in plan.rows:
            kind = row.mask.kind.value
            kinds.add(kind)
            if kind == "quadratic":
                r = row.q_len // (b + 1)
                quad_rows.append(r)
                exact += r + b - 1
            elif kind == "bidirectional":
                exact += sum(1 for t in row.token_ids if t == mask_id)
            else:
                slack += row.q_len
        assert exact <= n <= exact + slack, (n, exact, slack)
    assert kinds == {"causal", "bidirectional", "quadratic"}
    first = len(prompts)                            # each request's first pass has R = 1
    assert b == 8 and quad_rows[first:] and min(quad_rows[first:]) < b, quad_rows

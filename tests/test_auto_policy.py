"""core/auto_policy.py: auto's choice per round, tested in core (the plugin only applies it)."""

from __future__ import annotations

import pytest

from nemotron_sglang.core.auto_policy import (AUTO_START, AutoRow, label_of, plan_auto,
                                              strategy_of)
from nemotron_sglang.core.block_policy import CostTable, acceptance_rate, choose_block


def _row(block_length=16, asked=False, hits=0, trials=0, remaining=64, block=16) -> AutoRow:
    return AutoRow(block_length, asked, hits, trials, remaining, block)


def _table(cost) -> CostTable:
    rows, blocks = [1, 2, 4, 8], [1, 2, 4, 8, 16]
    return CostTable.from_mapping({"rows": rows, "blocks": blocks,
                                   "ms": [[cost(r, b) for b in blocks] for r in rows]})


def test_strategy_and_label_of_a_block():
    assert AUTO_START == strategy_of(16) == "linear_spec"
    assert strategy_of(1) == "ar" and label_of(1) == "ar" and label_of(8) == "linear_spec/8"


@pytest.mark.parametrize("round_rows,want", [(1, 16), (2, 16), (3, 1), (9, 1)])
def test_without_a_table_the_round_size_decides(round_rows, want):
    free = [_row(), _row(block_length=8, asked=True)]
    got = plan_auto(free, round_rows=round_rows, active_rows=round_rows, fixed_tokens=0,
                    table=None, block_size=16, auto_max_batch=2, prior=0.8)
    assert got == ([16, 8] if want > 1 else [1, 1])


def test_with_a_table_free_rows_take_the_policys_block_and_asked_rows_choose_it_or_ar():
    flat = _table(lambda r, b: 5.0)               # a forward costs the same whatever it carries
    free = [_row(hits=9, trials=10), _row(block_length=4, asked=True, hits=9, trials=10)]
    got = plan_auto(free, round_rows=2, active_rows=2, fixed_tokens=0, table=flat,
                    block_size=16, auto_max_batch=2, prior=0.8)
    assert got == [16, 4]
    steep = _table(lambda r, b: float(r * b))     # cost grows with every token
    rejected = [_row(hits=0, trials=20), _row(block_length=4, asked=True, hits=0, trials=20)]
    assert plan_auto(rejected, round_rows=2, active_rows=2, fixed_tokens=0, table=steep,
                     block_size=16, auto_max_batch=2, prior=0.8) == [1, 1]   # ar wins


def test_each_group_sees_the_blocks_chosen_for_the_others():
    """The asked group is planned after the free group, beside the block just chosen for it:
    equal to choose_block called with those other tokens."""
    table = _table(lambda r, b: 1.0 + 0.05 * r * b)
    free = [_row(hits=3, trials=10), _row(block_length=8, asked=True, hits=7, trials=10)]
    got = plan_auto(free, round_rows=3, active_rows=3, fixed_tokens=5, table=table,
                    block_size=16, auto_max_batch=2, prior=0.8)
    first = choose_block([acceptance_rate(3, 10, 0.8)], table, 16, other_rows=2,
                         other_tokens=5 + 16, remaining=[64])
    second = choose_block([acceptance_rate(7, 10, 0.8)], table, 16, other_rows=2,
                          other_tokens=5 + first, candidates=[1, 8], remaining=[64])
    assert got == [first, second]

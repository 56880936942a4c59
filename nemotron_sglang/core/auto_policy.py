"""``auto``: what an auto request runs in each round, said once.

An auto request runs ``ar`` (block 1) or ``linear_spec`` at some block. It starts as
``AUTO_START`` at its block and is re-planned only between cycles (when no drafts await their
verify pass). For the round's idle auto rows, ``plan_auto`` gives each its block:

- with a cost table (measured on the device): the block of highest expected rate
  (``block_policy.choose_block``) beside what the round's other rows carry; the rows that set
  ``block_length`` choose between that block and ``ar`` and are planned as their own group, the
  others over every candidate block; each group sees the blocks already chosen for the others;
- without one: the request's block while the round holds at most ``auto_max_batch`` requests,
  ``ar`` beyond.

    idle auto rows (acceptance so far, tokens left, block asked)
        + the round (rows, tokens the other passes carry, table or auto_max_batch)
        -> plan_auto -> a block per row (1 = ar) -> strategy_of(block)

The SGLang adapter (``sglang_plugin/auto_plan.py``) only builds the rows and applies the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .block_policy import CostTable, acceptance_rate, choose_block

AUTO_START = "linear_spec"        # an auto request's strategy before its first plan


def strategy_of(block: int) -> str:
    """The strategy an auto request runs at ``block``: ``ar`` at 1, else ``linear_spec``."""
    return "ar" if block == 1 else "linear_spec"


def label_of(block: int) -> str:
    """How a round of an auto request is reported: ``ar`` or ``linear_spec/<block>``."""
    return "ar" if block == 1 else f"linear_spec/{block}"


@dataclass(frozen=True)
class AutoRow:
    """One idle auto request of a round: its block (asked or the server's) and whether the
    request asked for it, its drafts accepted / tried so far, the tokens it may still emit,
    and the block it runs now."""
    block_length: int
    asked: bool
    hits: float
    trials: float
    remaining: int
    block: int


def plan_auto(free: Sequence[AutoRow], *, round_rows: int, active_rows: int, fixed_tokens: int,
              table: CostTable | None, block_size: int, auto_max_batch: int,
              prior: float) -> list[int]:
    """The block of each of ``free`` this round (1 = ar; module docstring).

    ``round_rows``: the round's requests; ``active_rows``: those not finished; ``fixed_tokens``:
    the tokens the passes of the active rows that are not in ``free`` carry; ``prior``: the
    acceptance a request with few trials is pulled toward (the server's pooled one)."""
    if table is None:
        small = round_rows <= auto_max_batch
        return [r.block_length if small else 1 for r in free]
    current = [r.block for r in free]
    groups: dict[int | None, list[int]] = {}
    for i, r in enumerate(free):
        groups.setdefault(r.block_length if r.asked else None, []).append(i)
    for asked, members in groups.items():
        mine = set(members)
        others = sum(b for i, b in enumerate(current) if i not in mine)
        b = choose_block([acceptance_rate(free[i].hits, free[i].trials, prior) for i in members],
                         table, block_size, other_rows=active_rows - len(members),
                         other_tokens=fixed_tokens + others,
                         candidates=None if asked is None else [1, asked],
                         remaining=[free[i].remaining for i in members])
        for i in members:
            current[i] = b
    return current

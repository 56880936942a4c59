"""``auto``'s choice for one canvas round: which idle ``auto`` request runs ``ar``, and which
runs ``linear_spec`` at which block.

Only the translation lives here: the round's rows become core's ``auto_policy.AutoRow``s
(acceptances, tokens left, the block asked) and the round's load (what the other rows' passes
carry), ``auto_policy.plan_auto`` decides, and the chosen block becomes the request's strategy
and block. A request is re-planned only while idle
(no drafts awaiting their verify pass: ``Strategy.idle``), so a cycle never changes block midway.

    round rows:  [auto idle] [auto idle] [linear mid-cycle] [diffusion] [auto finished]
                  \\_______ choose ______/  \\__________ other_tokens __________/

``switch_point_note``: the start-up log line saying where ``auto``'s switch point comes from
(a measured cost table, or ``auto_max_batch``, unmeasured on that device).
"""

from __future__ import annotations

import logging

from ..core.auto_policy import AutoRow, label_of, plan_auto, strategy_of
from ..core.block_policy import AcceptanceTally, CostTable
from ..core.decoding import get_strategy
from ..core.modes import AUTO


class AutoPlanner:
    """Per process (one per ``NemotronTriMode``): the cost table, if any, and the server's
    pooled linear_spec acceptance (new requests' prior)."""

    def __init__(self, table: CostTable | None, block_size: int, auto_max_batch: int):
        self.table, self.block_size, self.auto_max_batch = table, block_size, auto_max_batch
        self.tally = AcceptanceTally()

    def plan(self, rows, has_lora: bool) -> None:
        """Set this round's strategy and block of every idle auto row (``canvas_round.Row``):
        core's ``plan_auto`` decides, this applies."""
        self._tally(rows)
        auto = [r for r in rows if r.nld.params.mode == AUTO and not r.state.finished]
        free = [r for r in auto if r.nld.strategy.idle(r.state)]
        if free:
            active = [r for r in rows if not r.state.finished]
            mine = {id(r) for r in free}
            fixed = 0 if self.table is None else sum(       # only the table weighs tokens
                len(r.nld.strategy.next_pass(r.state).token_ids)
                for r in active if id(r) not in mine)
            blocks = plan_auto(
                [AutoRow(r.nld.params.block_length, r.nld.params.block_set, r.state.draft_hits,
                         r.state.draft_trials, r.state.remaining, r.nld.block) for r in free],
                round_rows=len(rows), active_rows=len(active), fixed_tokens=fixed,
                table=self.table, block_size=self.block_size,
                auto_max_batch=self.auto_max_batch, prior=self.tally.alpha())
            for r, b in zip(free, blocks):
                set_block(r.nld, b, has_lora)
        for r in auto:
            label = label_of(r.nld.block)
            r.nld.stats.auto_rounds[label] = r.nld.stats.auto_rounds.get(label, 0) + 1

    def _tally(self, rows) -> None:
        for r in rows:
            if r.nld.strategy.name != "linear_spec":
                continue
            st, (h0, t0) = r.state, r.nld.tallied
            self.tally.add(st.draft_hits - h0, st.draft_trials - t0)
            r.nld.tallied = (st.draft_hits, st.draft_trials)


def set_block(nld, block: int, has_lora: bool) -> None:
    """Run an idle auto request (``request.NLDRequest``) at ``block``: its strategy is core's
    ``strategy_of(block)``."""
    mode = strategy_of(block)
    if nld.strategy.name != mode:
        nld.strategy = get_strategy(mode)
        nld.strategy.adopt(nld.state)
        nld.state.lora = nld.strategy.uses_lora and has_lora
    if block > 1:
        nld.state.block = block


def switch_point_note(table: CostTable | None, auto_max_batch: int, device: str
                      ) -> tuple[int, str]:
    """(log level, text) of the start-up line on ``auto``'s switch point on ``device``
    (SGLang's device name: ``cuda``, ``cpu``, ...): INFO with a cost table (where it was
    measured), WARNING without one (``auto_max_batch`` is no measurement of this device)."""
    if table is not None:
        return logging.INFO, (f"auto: the block (or ar) of each round from the YAML's "
                              f"cost_model, measured on: {table.device or 'unnamed device'}")
    if str(device).startswith("cuda"):
        origin = (f"{auto_max_batch} (serve's CUDA default 8 is DESIGN §6's estimate of an "
                  f"H100's compute roof, not a measurement)")
        measure = ("python benchmarks/cost_model.py --model DIR --json cost.json on this GPU, "
                   "then serve --cost-model cost.json (or --write YOUR.yaml)")
    else:
        origin = (f"{auto_max_batch} (serve's CPU default 64 was measured for the embedded "
                  f"default on a 2-core CPU only)")
        measure = ("python benchmarks/cost_model.py --server --model DIR --write YOUR.yaml "
                   "(or --json cost.json, then serve --cost-model cost.json)")
    return logging.WARNING, (f"auto: no cost_model in the YAML: linear_spec while a round holds "
                             f"<= auto_max_batch requests, ar beyond; its switch point is "
                             f"unmeasured on this {device} device: auto_max_batch {origin}; "
                             f"measure it: {measure}")

"""The one typed object the plugin keeps per SGLang request (``req.nld``), and its counters.

A request's core ``RequestState`` lives here across scheduler rounds, so a strategy continues
where the last round stopped: a linear_spec request's next seed, a quadratic request's drafts
and a diffusion block carried across rounds are the strategy's own state, exactly as in core's
loop. SGLang's view of the request (``output_ids``, the KV it holds) trails the state by the
tokens emitted but not yet returned (``pending``: the held seed, whose KV the next pass writes).

    SGLang committed   [ prompt | returned ......... ]            = req.output_ids
    core state         [ prompt | returned ......... | pending ]  = state.output
    KV held            [ prompt | returned ......... ]            = state.kv_len
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..core.decoding import RequestState
from ..core.modes import AUTO
from .params import RequestParams


@dataclass
class RequestStats:
    """Counters reported in ``meta_info`` / ``usage`` (totals over the request's life)."""

    mode: str = ""
    forwards: int = 0               # passes this request took part in, prefill excluded
    pass_tokens: int = 0            # tokens those passes carried (compute per useful token)
    cycles: int = 0
    cycle_tokens: int = 0
    rounds: int = 0                 # canvas rounds the request took part in
    reprefills: int = 0             # context passes after the prompt (retraction, mismatch)
    auto_rounds: dict = field(default_factory=dict)   # "auto": rounds run per chosen mode
    blocks: dict = field(default_factory=dict)        # rounds run per block (ar: 1)

    @property
    def block_length(self) -> int | None:
        """The block most of the request's rounds ran (1 = ar)."""
        return max(self.blocks, key=self.blocks.get) if self.blocks else None

    def counters(self) -> dict[str, Any]:
        """What ``meta_info`` reports, by key (``surface.export_stats``)."""
        return {"nld_mode": self.reported_mode, "nld_forwards": self.forwards,
                "nld_cycles": self.cycles, "nld_cycle_tokens": self.cycle_tokens,
                "nld_rounds": self.rounds, "nld_reprefills": self.reprefills,
                "nld_pass_tokens": self.pass_tokens, "nld_block_length": self.block_length}

    @property
    def reported_mode(self) -> str:
        """The mode as reported: ``auto(linear_spec/16,ar)`` names what auto chose, most
        rounds first."""
        if self.mode != AUTO:
            return self.mode
        return f"auto({','.join(sorted(self.auto_rounds, key=self.auto_rounds.get, reverse=True))})"


@dataclass
class NLDRequest:
    """Per-request plugin state: parameters, sampling seed, core state, counters.

    Made in two steps, on the one attribute: the scheduler's ``TriModeConfig.validate_request``
    parses the request's parameters (its one parse) and attaches ``admitted(params, rid)``
    (parameters, seed, counters); the algorithm completes it the first time it sees the request
    (``NemotronTriMode.request``: sampling rule, logprob asks, grammar cursor, strategy, which
    need the model's EOS id and SGLang's compiled grammar). ``started`` tells the two apart.
    ``state`` is None until the request's first context pass; a later context pass (after a
    retraction, which drops SGLang's KV) starts a fresh state from that pass's AR-exact seed.
    ``keep`` is what the last canvas round asks SGLang to keep of its B canvas slots (the
    tokens it returned, all with KV); ``hooks.keep_canvas_kv`` reads and clears it.
    """

    params: RequestParams
    seed: int                       # of the request's uniforms (core/decoding/uniforms.py)
    stats: RequestStats
    state: RequestState | None = None
    returned: int = 0               # len(state.output) already handed to SGLang
    round_tokens: int = 0           # tokens the last canvas round handed to SGLang
    keep: int = 0
    base_cycles: int = 0            # cycles / tokens of states replaced by a re-prefill
    base_cycle_tokens: int = 0
    recorded: bool = False          # counted in the Prometheus totals
    reseeds: int = 0                # rounds that asked for a context pass (``RESEED``)
    strategy: Any = None            # core Strategy of the mode this round runs
    tallied: tuple[int, int] = (0, 0)   # (draft hits, trials) already in the server's tally
    rule: Any = None                # core SamplingRule (params.sampling_rule)
    logprobs: int | None = None     # return_logprob: top-k per token (0: the token's alone)
    logprob_ids: tuple[int, ...] = ()   # token_ids_logprob: these ids' logprobs per token
    round_logprobs: list = field(default_factory=list)  # entries of the tokens just returned
    grammar: Any = None             # core GrammarCursor over req.grammar, for the request's life

    @classmethod
    def admitted(cls, params: RequestParams, rid: Any) -> NLDRequest:
        """The state of a request whose parameters were just parsed: its seed (the request's,
        else one derived from its rid) and counters; not yet ``started``."""
        seed = params.seed
        if seed is None:
            seed = int.from_bytes(hashlib.blake2b(str(rid).encode(), digest_size=8).digest(),
                                  "little")
        return cls(params, seed, RequestStats(mode=params.mode))

    @property
    def started(self) -> bool:
        """The algorithm has seen the request (``NemotronTriMode.request`` completed it)."""
        return self.strategy is not None

    @property
    def block(self) -> int:
        """The block the request's passes run now: 1 for ar, else its state's block."""
        return 1 if self.strategy.name == "ar" else self.state.block

    @property
    def pending(self) -> list[int]:
        return [] if self.state is None else self.state.output[self.returned:]

    def replace_state(self, state: RequestState) -> None:
        if self.state is not None:
            # pending tokens were never returned: the new state derives them again
            self.base_cycles += self.state.cycles
            self.base_cycle_tokens += max(0, self.state.cycle_tokens - len(self.pending))
        self.state, self.returned, self.keep, self.tallied = state, 0, 0, (0, 0)

    def sync_stats(self) -> None:
        st = self.state
        self.stats.cycles = self.base_cycles + (st.cycles if st else 0)
        self.stats.cycle_tokens = self.base_cycle_tokens + (st.cycle_tokens if st else 0)


# the keys of ``RequestStats.counters``: the per-request counters in ``meta_info``
COUNTER_KEYS = tuple(RequestStats().counters())

"""The adaptive block: which block a self-speculating request runs this round, from a cost table
measured on the serving device (large blocks while the forward is small, smaller ones as spec
rows fill it, AR beyond).

Model. A ``linear_spec`` cycle at block b is 2 forwards (draft + verify, b tokens per row each)
and emits the seed plus the accepted drafts; with a per-draft acceptance probability α that is
E(α, b) = 1 + α + ... + α^(b-1) = (1 - α^b) / (1 - α) tokens. ``ar`` (b = 1) is 1 forward and
1 token. For the n rows that may choose, beside rows of fixed passes (``other_rows`` rows
carrying ``other_tokens`` tokens), the policy picks the b with the highest rate

    rate(b) = Σ_r E(α_r, min(b, left_r)) / (forwards(b) · t(other_rows + n, other_tokens + n·b))

(``left_r``: tokens the request may still emit) where t(rows, tokens) is the forward time
interpolated from :class:`CostTable` (``ms[i][j]`` =
one forward of ``rows[i]`` rows of ``blocks[j]`` tokens each, e.g. from
``benchmarks/cost_model.py``). α_r is the request's acceptance so far, plus a prior worth 5
trials: the server's recent pooled acceptance (:class:`AcceptanceTally`; 0.8 before any). A
cycle that accepted c of its d drafts adds c hits and c + [c < d] trials (the drafts tried until
the first rejection; ``RequestState.note_verify``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

PRIOR_ALPHA, PRIOR_TRIALS = 0.8, 5.0


def acceptance_rate(hits: float, trials: float, prior: float = PRIOR_ALPHA) -> float:
    """Per-draft acceptance α: the request's own counts plus ``prior`` weighted as 5 trials."""
    return (hits + prior * PRIOR_TRIALS) / (trials + PRIOR_TRIALS)


class AcceptanceTally:
    """The server's recent acceptance, pooled over requests (counts decay by ``decay`` per
    update): the prior of a request that has no cycle of its own yet."""

    def __init__(self, decay: float = 0.98):
        self.decay, self.hits, self.trials = decay, 0.0, 0.0

    def add(self, hits: float, trials: float) -> None:
        if trials:
            self.hits = self.decay * self.hits + hits
            self.trials = self.decay * self.trials + trials

    def alpha(self) -> float:
        return acceptance_rate(self.hits, self.trials)


def expected_tokens(alpha: float, block: int) -> float:
    """E(α, b): tokens a linear cycle at block b emits (1 for b = 1)."""
    if alpha >= 1.0:
        return float(block)
    return (1.0 - alpha ** block) / (1.0 - alpha)


@dataclass(frozen=True)
class CostTable:
    """Forward time in ms of ``rows[i]`` rows × ``blocks[j]`` tokens; both axes ascending."""

    rows: tuple[int, ...]
    blocks: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    device: str = ""

    def __post_init__(self) -> None:
        if not self.rows or not self.blocks:
            raise ValueError("cost table: rows and blocks must be non-empty")
        for name, axis in (("rows", self.rows), ("blocks", self.blocks)):
            if any(a < 1 for a in axis) or list(axis) != sorted(set(axis)):
                raise ValueError(f"cost table: {name} must be ascending positive integers, "
                                 f"got {list(axis)}")
        if len(self.ms) != len(self.rows) or any(len(r) != len(self.blocks) for r in self.ms):
            raise ValueError(f"cost table: ms must be {len(self.rows)} x {len(self.blocks)}")
        if any(not (v > 0 and math.isfinite(v)) for r in self.ms for v in r):
            raise ValueError("cost table: every ms must be a positive number")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "CostTable":
        unknown = set(d) - {"rows", "blocks", "ms", "device", "command"}
        if unknown:
            raise ValueError(f"cost table: unknown keys {sorted(unknown)}")
        try:
            return cls(tuple(int(r) for r in d["rows"]), tuple(int(b) for b in d["blocks"]),
                       tuple(tuple(float(v) for v in row) for row in d["ms"]),
                       str(d.get("device", "")))
        except KeyError as e:
            raise ValueError(f"cost table: missing key {e.args[0]!r}") from None

    def to_mapping(self) -> dict[str, Any]:
        return {"device": self.device, "rows": list(self.rows), "blocks": list(self.blocks),
                "ms": [[round(v, 4) for v in row] for row in self.ms]}

    def cost(self, rows: int, tokens: int) -> float:
        """Interpolated ms of a forward of ``rows`` rows carrying ``tokens`` tokens in all
        (log-linear in rows and in tokens per row; beyond the largest row count, linear in
        rows)."""
        rows = max(rows, 1)
        per_row = max(tokens / rows, 1.0)
        scale = 1.0
        if rows > self.rows[-1]:
            scale, rows = rows / self.rows[-1], self.rows[-1]
        i0, i1, wi = _bracket(self.rows, rows)
        j0, j1, wj = _bracket(self.blocks, per_row)

        def at(i, j0_, j1_):
            return (1 - wj) * self.ms[i][j0_] + wj * self.ms[i][j1_]
        return scale * ((1 - wi) * at(i0, j0, j1) + wi * at(i1, j0, j1))


def _bracket(axis: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices around ``x`` and the log-space weight of the upper one (clamped to the axis)."""
    if x <= axis[0]:
        return 0, 0, 0.0
    if x >= axis[-1]:
        n = len(axis) - 1
        return n, n, 0.0
    for k in range(len(axis) - 1):
        lo, hi = axis[k], axis[k + 1]
        if lo <= x <= hi:
            return k, k + 1, math.log(x / lo) / math.log(hi / lo)
    raise AssertionError("unreachable")


def candidate_blocks(max_block: int) -> list[int]:
    """1 (ar) and every power of two from 2 to ``max_block``."""
    out, b = [1], 2
    while b <= max_block:
        out.append(b)
        b *= 2
    return out


def choose_block(alphas: Sequence[float], table: CostTable, max_block: int,
                 other_rows: int = 0, other_tokens: int = 0,
                 candidates: Sequence[int] | None = None,
                 remaining: Sequence[int] | None = None) -> int:
    """The block of highest rate for rows with acceptances ``alphas`` (1 = ar); see above.
    ``remaining[r]``: tokens row r may still emit; a cycle counts at most that many
    (E(α, min(b, remaining))), so a request near its end does not pay for a block it cannot use."""
    n = len(alphas)
    if n == 0:
        return max_block
    left = list(remaining) if remaining is not None else [max_block] * n
    best, best_rate = 1, -1.0
    for b in candidates or candidate_blocks(max_block):
        forwards = 1 if b == 1 else 2
        tokens = sum(expected_tokens(a, max(1, min(b, r))) for a, r in zip(alphas, left))
        rate = tokens / (forwards * table.cost(other_rows + n, other_tokens + n * b))
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = b, rate
    return best

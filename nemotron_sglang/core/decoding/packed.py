"""The host side of ``decide_batched``: its one packed device→host list back into a
:class:`~.decisions.Decision` per ask.

Layout of ``host`` (n decided rows, ``width`` columns, k = the widest top-k asked):

    [n × width]   per row: token, accept, stop, commit (, logprob of token, stop, draft)
    [n × 2k]      per row: top-k (id, logprob) pairs, when any ask wants logprobs
    [n × m]       per row: the logprobs of its ask's ``logprob_ids`` (m = the most asked)
    [len(quad)]   each quadratic ask's accepted count c (found on the device)
    [...]         then each quadratic ask's B - 1 next drafts (row c's masks)

A VERIFY / QUADRATIC ask emits its accepted drafts, then the stop token of the first rejected
row (or the last row's token when all are accepted), with the logprob column of each.
"""

from __future__ import annotations

from .decisions import Decision, Kind
from .sampling import normalised


def unpack_decisions(items, first: list[int], host: list, n: int, quad: list[int],
                     q2_parts: dict, probs, hot_pos, width: int, k: int,
                     m: int = 0) -> list[Decision]:
    """Decisions of every ask from the packed host list (layout in the module docstring)."""
    col = lambda r, c: host[width * r + c]                # noqa: E731
    at = width * n
    tops, at = host[at:at + 2 * k * n], at + 2 * k * n
    ids, at = host[at:at + m * n], at + m * n
    second = [int(x) for x in host[at:]]

    def entry(r, c, ask):
        top = tops[2 * k * r:2 * k * (r + 1)]
        return (col(r, c), [(int(top[2 * j]), top[2 * j + 1]) for j in range(ask.logprobs)],
                ids[m * r:m * r + len(ask.logprob_ids)])
    c_of = {a: second[k] for k, a in enumerate(quad)}
    drafts_at, pos = {}, len(quad)
    for a in quad:
        nd = items[a][2].width - 2
        drafts_at[a] = second[pos:pos + nd]
        pos += nd
    out = []
    for a, (_, _, ask) in enumerate(items):
        rows = range(first[a], first[a] + len(ask.rows))
        want = ask.logprobs is not None
        if ask.kind == Kind.PICK:
            out.append(Decision([int(col(rows[0], 0))],
                                logprobs=[entry(rows[0], 4, ask)] if want else None))
        elif ask.kind == Kind.DRAFT:
            q = None
            if ask.sampled and len(rows):
                q = normalised(probs[hot_pos[rows[0]]:hot_pos[rows[-1]] + 1])
            out.append(Decision([int(col(r, 0)) for r in rows], q=q))
        elif ask.kind == Kind.DENOISE:
            out.append(Decision([int(col(r, 0)) for r in rows],
                                commit=[bool(col(r, 3)) for r in rows],
                                logprobs=[entry(r, 4, ask) for r in rows] if want else None))
        else:
            emitted, lps = [], []
            for j, x in enumerate(ask.drafts):
                if col(rows[j], 1):
                    emitted.append(x)
                    lps.append((rows[j], 6))
                else:
                    emitted.append(int(col(rows[j], 2)))
                    lps.append((rows[j], 5))
                    break
            else:
                emitted.append(int(col(rows[-1], 0)))
                lps.append((rows[-1], 4))
            c = len(emitted) - 1
            lps = [entry(r, cc, ask) for r, cc in lps] if want else None
            if ask.kind == Kind.VERIFY:
                out.append(Decision(emitted, accepted=c, logprobs=lps))
            else:
                if c_of[a] != c:
                    raise RuntimeError(f"quadratic accept count {c_of[a]} on the device, {c} here")
                out.append(Decision(emitted, drafts=drafts_at[a], q=q2_parts.get(a), accepted=c,
                                    logprobs=lps))
    return out

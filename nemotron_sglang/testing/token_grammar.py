"""A grammar over token ids for tests and benchmarks: a deterministic automaton with the protocol
of ``core/decoding/grammar.py`` (fill / accept / rollback / is_terminated), like xgrammar's
matcher but without a tokenizer.

    state s allows every token t with an edge s --t--> s', plus the stop tokens when s accepts;
    consuming a stop token terminates it (nothing is allowed after).

``random_dfa`` draws one: each state allows a random few tokens of the vocabulary.
"""

from __future__ import annotations

import random

import torch


class TokenDFA:
    def __init__(self, edges: dict[int, dict[int, int]], accepting: set[int],
                 stop_ids: tuple[int, ...], start: int = 0,
                 _words: dict[tuple[int, int], torch.Tensor] | None = None):
        self.edges, self.accepting, self.stop_ids = edges, accepting, tuple(stop_ids)
        self.start = start
        self.path: list[int] = [start]          # states; a terminated path ends with -1
        # (state, row width) -> packed row: the automaton is fixed, so each state's row is
        # packed once and shared by every fresh copy
        self._words = {} if _words is None else _words

    def fresh(self) -> "TokenDFA":
        return TokenDFA(self.edges, self.accepting, self.stop_ids, self.start, self._words)

    @property
    def state(self) -> int:
        return self.path[-1]

    def allowed(self) -> list[int]:
        if self.is_terminated():
            return []
        out = list(self.edges.get(self.state, {}))
        if self.state in self.accepting:
            out += [t for t in self.stop_ids if t not in out]
        return out

    def fill(self, bits: torch.Tensor, row: int) -> None:
        key = (self.state, bits.shape[1])
        if key not in self._words:
            words = [0] * bits.shape[1]
            for t in self.allowed():
                words[t // 32] |= 1 << (t % 32)
            self._words[key] = torch.tensor([w - (1 << 32) if w >= 1 << 31 else w
                                             for w in words], dtype=torch.int32)
        bits[row] = self._words[key]

    def accept(self, token: int) -> bool:
        if self.is_terminated():
            return False
        nxt = self.edges.get(self.state, {}).get(token)
        if nxt is None:
            if token in self.stop_ids and self.state in self.accepting:
                nxt = -1
            else:
                return False
        self.path.append(nxt)
        return True

    def rollback(self, k: int) -> None:
        if k > len(self.path) - 1:
            raise ValueError(f"rollback {k} past the start ({len(self.path) - 1} consumed)")
        if k:
            del self.path[-k:]

    def is_terminated(self) -> bool:
        return self.state == -1

    def matches(self, tokens: list[int]) -> bool:
        """Whether ``tokens`` is a sequence this grammar allows from its start (a prefix, or a
        complete sentence ending in a stop token)."""
        g = self.fresh()
        return all(g.accept(t) for t in tokens)


def random_dfa(rng: random.Random, vocab: int, states: int, fanout: tuple[int, int],
               stop_ids: tuple[int, ...], avoid: tuple[int, ...] = (),
               accept_frac: float = 0.3) -> TokenDFA:
    """A random automaton: each state allows ``fanout`` (lo, hi) tokens drawn from the vocabulary
    (never the ``avoid`` ids nor the stop ids), each to a random state; a random
    ``accept_frac`` of the states accept (state 0 never does: the output is never empty)."""
    pool = [t for t in range(vocab) if t not in set(avoid) | set(stop_ids)]
    edges = {s: {t: rng.randrange(states) for t in rng.sample(pool, rng.randint(*fanout))}
             for s in range(states)}
    accepting = {s for s in range(1, states) if rng.random() < accept_frac}
    return TokenDFA(edges, accepting, stop_ids)

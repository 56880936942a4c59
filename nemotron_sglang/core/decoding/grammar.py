"""Constrained decoding: a request's grammar as row masks over the vocabulary, and the cursor that
keeps the grammar in step with the request's output.

A grammar (xgrammar's matcher behind SGLang's grammar object on the server, any object with this
protocol in tests) answers three things about the token sequence it has consumed:

    fill(bits, row)    write the allowed next tokens into ``bits[row]`` (a packed bitmask
                       [n, W] int32, W = ceil(V / 32); bit v % 32 of word v // 32 set = allowed)
    accept(token)      consume one token; False (nothing consumed) when it is not allowed
    rollback(k)        un-consume the last k tokens
    is_terminated()    a stop token has been consumed: the output is complete

``GrammarCursor`` wraps one and keeps ``consumed`` equal to the request's output at rest
(``RequestState.emit`` advances it); an ask (``base.RequestState.ask``) moves it ahead over
tokens not yet emitted (drafts, a diffusion block's committed prefix), reads row masks, and
rolls back. The masks reach the decision
layer as ``Ask.allowed`` (bits of the ask's first m rows; later rows are unconstrained) and are
applied after the penalties, like SGLang's vocab mask (``constrain``):

    VERIFY / QUADRATIC row i    allowed after output + drafts[:i]   (every row: the verifier
                                judges each draft under the grammar; rows past the first draft
                                the grammar refuses cannot be reached and stay unconstrained)
    PICK, DRAFT row 0           allowed after output                (later draft rows are
                                unconstrained: any proposal keeps speculation exact)
    DENOISE row 0 (= leftmost   allowed after output + block[:s0]   (the ask is ``ordered``:
    masked slot s0)                                                 slots commit left to right,
                                                                    each kept only while the
                                                                    grammar accepts it)
"""

from __future__ import annotations

import sys
from typing import Protocol, Sequence

import torch


class Grammar(Protocol):
    def fill(self, bits: torch.Tensor, row: int) -> None: ...
    def accept(self, token: int) -> bool: ...
    def rollback(self, k: int) -> None: ...
    def is_terminated(self) -> bool: ...


def words(vocab: int) -> int:
    return (vocab + 31) // 32


def unpack_reference(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Allowed tokens [n, V] bool of packed bitmask rows [n, W] int32: token t is bit t % 32 of
    word t // 32 (the readable twin of ``unpack``)."""
    v = torch.arange(vocab, device=bits.device)
    word = bits.index_select(1, v // 32).to(torch.int64) & 0xFFFFFFFF
    return ((word >> (v % 32)) & 1).bool()


def unpack(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """``unpack_reference`` read byte by byte: a little-endian int32 word w is bytes 4w..4w+3,
    byte k holding tokens 32w + 8k .. 32w + 8k + 7 in its bits 0..7, so the flat bit index of
    [n, 4W] bytes × 8 is the token (35× faster on a CPU at V = 131072, 32 rows)."""
    if sys.byteorder != "little":
        return unpack_reference(bits, vocab)
    b = bits.contiguous().view(torch.uint8)                                   # [n, 4W]
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((b[..., None] >> shifts) & 1).view(b.shape[0], -1)[:, :vocab].bool()


def constrain(z: torch.Tensor, bits: torch.Tensor | None) -> torch.Tensor:
    """Logits [n, V] with the tokens the first m = len(bits) rows' grammar forbids at -inf
    (later rows unchanged); a copy when it masks anything."""
    if bits is None or not len(bits):
        return z
    m = bits.shape[0]
    if bits.device != z.device:
        bits = bits.to(z.device)
    forbid = ~unpack(bits, z.shape[-1])
    out = z.clone()
    out[:m] = out[:m].masked_fill(forbid, float("-inf"))
    return out


def allows(bits: torch.Tensor, row: int, token: int) -> bool:
    """Host check of one bit of a CPU bitmask."""
    return bool((int(bits[row, token // 32]) >> (token % 32)) & 1)


class GrammarCursor:
    """A grammar kept at the request's output (``consumed``) between asks; every look-ahead
    (pending tokens, drafts, candidates) is rolled back before it returns."""

    def __init__(self, grammar: Grammar, vocab: int):
        self.grammar, self.vocab = grammar, vocab
        self.consumed: list[int] = []                 # what the grammar has accepted

    def _take(self, tokens: Sequence[int]) -> int:
        """Accept tokens in order while the grammar allows them; how many it took."""
        k = 0
        for t in tokens:
            if not (0 <= t < self.vocab and self.grammar.accept(int(t))):
                break
            self.consumed.append(int(t))
            k += 1
        return k

    def _undo(self, k: int) -> None:
        if k:
            self.grammar.rollback(k)
            del self.consumed[-k:]

    def seek(self, tokens: Sequence[int]) -> None:
        """Make ``consumed`` equal ``tokens`` (a new state of the request: a re-prefill drops
        what it had not returned)."""
        common = 0
        for a, b in zip(self.consumed, tokens):
            if a != b:
                break
            common += 1
        self._undo(len(self.consumed) - common)
        self._need(tokens[common:])

    def _need(self, tokens: Sequence[int]) -> None:
        k = self._take(tokens)
        if k != len(tokens):
            raise ValueError(f"the grammar refuses token {tokens[k]} after {len(self.consumed)} "
                             f"tokens (a decision ignored its mask)")

    def rows(self, pending: Sequence[int] = (), tails: Sequence[int] = (), n: int = 1
             ) -> torch.Tensor:
        """Bits [m, W] (CPU) of the rows after consumed + pending + tails[:i], i = 0..n-1, up
        to the first tail token the grammar refuses (m <= n: later rows cannot be reached)."""
        self._need(list(pending))
        bits = torch.full((n, words(self.vocab)), -1, dtype=torch.int32)
        m = walked = 0
        for i in range(n):
            if self.grammar.is_terminated():
                break
            self.grammar.fill(bits, i)
            m = i + 1
            if i == n - 1 or not allows(bits, i, tails[i]) or not self._take([tails[i]]):
                break
            walked += 1
        self._undo(walked + len(pending))
        return bits[:m]

    def prefix(self, pending: Sequence[int], tokens: Sequence[int]) -> tuple[int, bool]:
        """How many of ``tokens`` the grammar accepts in order after consumed + pending, and
        whether they complete it (a stop token); nothing stays consumed."""
        self._need(list(pending))
        k = self._take(tokens)
        done = self.grammar.is_terminated()
        self._undo(k + len(pending))
        return k, done

    def advance(self, tokens: Sequence[int]) -> bool:
        """Consume emitted ``tokens``; True once the grammar is terminated."""
        self._need(list(tokens))
        return self.grammar.is_terminated()

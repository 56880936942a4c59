"""SGLang's grammar object of a request (``req.grammar``: xgrammar's matcher by default, built by
SGLang's grammar backend from ``regex`` / ``json_schema`` / ``ebnf`` / ``structural_tag`` /
``response_format``; with ``--enable-strict-thinking`` wrapped in SGLang's reasoning object,
which also enforces a thinking budget) seen through core's grammar protocol
(``core/decoding/grammar.py``).

Only translation: the bitmask layout is xgrammar's own ([n, ceil(V / 32)] int32), so core's
rows go to ``fill_vocab_mask`` unchanged; a refused token is reported, not raised. SGLang's
reasoning wrapper (``ReasonerGrammarObject``) consumes any token it is given, even one its own
mask forbids (its AR sampler never offers one), so for it ``accept`` checks the mask first:
a diffusion block's later slots and a draft reach the grammar unmasked.
"""

from __future__ import annotations

import torch

from ..core.decoding.grammar import allows, words


def is_reasoning_wrapper(obj) -> bool:
    """SGLang's ``ReasonerGrammarObject`` (duck-typed: the one grammar with a think-end)."""
    return hasattr(obj, "think_end_ids") and hasattr(obj, "max_think_tokens")


def constrains(obj, max_new_tokens: int) -> bool:
    """Whether SGLang's grammar object can forbid a token of this request: xgrammar's always;
    the reasoning wrapper only around a grammar, or while the request thinks with its token
    filter on and either excluded tokens or a budget it can reach (< ``max_new_tokens``, which
    SGLang's scheduler has bounded by the context length before the request's first round:
    ``Scheduler.init_req_max_new_tokens``). A wrapper that cannot forbid anything is not a
    grammar to core (diffusion would otherwise commit left to right for nothing)."""
    if not is_reasoning_wrapper(obj):
        return True
    if obj.grammar is not None:
        return True
    thinking = obj.tokens_in_think >= 0 and obj.tokens_after_end == -1
    if not (obj.enable_token_filter and thinking):
        return False
    budget = obj.max_think_tokens
    reachable = 0 <= budget < max_new_tokens
    return reachable or obj.think_excluded_token_ids is not None


class SGLangGrammar:
    def __init__(self, obj, vocab: int):
        self.obj = obj                      # sglang BaseGrammarObject (XGrammarGrammar, ...)
        self.vocab = vocab
        # the wrapper's mask, for accept to check (one row, reused; filled from all-allowed)
        self._bits = torch.empty((1, words(vocab)), dtype=torch.int32) \
            if is_reasoning_wrapper(obj) else None

    def fill(self, bits, row: int) -> None:
        self.obj.fill_vocab_mask(bits, row)

    def accept(self, token: int) -> bool:
        if self.obj.is_terminated():        # SGLang's accept_token ignores tokens then
            return False
        if self._bits is not None:
            self._bits.fill_(-1)            # the wrapper edits only what it forbids
            self.obj.fill_vocab_mask(self._bits, 0)
            if not allows(self._bits, 0, token):
                return False
        try:
            self.obj.accept_token(token)
        except ValueError:                  # xgrammar: "Tokens not accepted"
            return False
        return True

    def rollback(self, k: int) -> None:
        if k:
            self.obj.rollback(k)

    def is_terminated(self) -> bool:
        return bool(self.obj.is_terminated())

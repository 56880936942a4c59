"""SGLang's grammar object of a request (``req.grammar``: xgrammar's matcher by default, built by
SGLang's grammar backend from ``regex`` / ``json_schema`` / ``ebnf`` / ``structural_tag`` /
``response_format``) seen through core's grammar protocol (``core/decoding/grammar.py``).

Only translation: the bitmask layout is xgrammar's own ([n, ceil(V / 32)] int32), so core's
rows go to ``fill_vocab_mask`` unchanged; a refused token is reported, not raised.
"""

from __future__ import annotations


class SGLangGrammar:
    def __init__(self, obj):
        self.obj = obj                      # sglang BaseGrammarObject (XGrammarGrammar, ...)

    def fill(self, bits, row: int) -> None:
        self.obj.fill_vocab_mask(bits, row)

    def accept(self, token: int) -> bool:
        if self.obj.is_terminated():        # SGLang's accept_token ignores tokens then
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

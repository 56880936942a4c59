"""The tiny fixture's training windows: packed raw-corpus and conversation streams.

One responsibility: turn documents (``corpus.documents``) and conversations
(``chat_corpus.conversations``, rendered by the chat template exactly as SGLang's chat route
renders a request) into one packed token stream each, and draw training windows [n, length]
from it. A window starts at a document (half of them) or anywhere; a conversation stream also
knows where each assistant reply's generated part starts (``reply_starts``), and an ``aligned``
window puts such a start at a block start::

    window   [ ... prompt ... | reply r0 r1 r2 ... ]      | = a block boundary (answer_at)
    decoder  [ ... KV ...     | seed m  m  m  ...  ]      the canvas serving opens there
"""

from __future__ import annotations

import random

import torch

from ..core.tokenizer import BOS_ID, EOS_ID
from . import corpus


_TRIES = 10000         # reply starts drawn before a window that fits none is refused


class Stream:
    """Packed token stream of training documents with their start offsets (and, for
    conversations, the offsets where a generated reply starts: ``answers``)."""

    def __init__(self, tok, seed: int, n_docs: int, docs: list[str] | None = None,
                 bos_share: float = 0.5, marks: list[list[int]] | None = None):
        """``docs`` (default: ``corpus.documents(seed * 1000 + 1, n_docs)``), each
        ``[bos]? text [eos]`` with bos at ``bos_share``; ``marks``: per doc, character offsets
        that begin a token, kept as stream offsets in ``answers``."""
        if docs is None:
            docs = corpus.documents(seed * 1000 + 1, n_docs)
        r = random.Random(seed)
        ids: list[int] = []
        starts: list[int] = []
        answers: list[int] = []
        for d, enc in enumerate(tok.encode_batch(docs, add_special_tokens=False)):
            starts.append(len(ids))
            if r.random() < bos_share:
                ids.append(BOS_ID)
            if marks is not None:
                first = {a: i for i, (a, _) in reversed(list(enumerate(enc.offsets)))}
                for c in marks[d]:
                    if c not in first:
                        raise ValueError(f"doc {d}: character {c} does not begin a token")
                    answers.append(len(ids) + first[c])
            ids.extend(enc.ids)
            ids.append(EOS_ID)
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.starts = starts
        self.answers = answers

    def batch(self, g: random.Random, n: int, length: int, aligned: float = 0.0,
              answer_at: int = 0) -> torch.Tensor:
        """``n`` windows [n, length] (``draw``'s, without which of them are aligned)."""
        return self.draw(g, n, length, aligned, answer_at)[0]

    def draw(self, g: random.Random, n: int, length: int, aligned: float = 0.0,
             answer_at: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` windows [n, length] and which of them are aligned [n] bool: half start at a
        document, half anywhere; with ``aligned`` > 0, that share of them instead puts a
        reply's first token (``answers``) at row offset ``answer_at``, a block start: the block
        a decoder's canvas opens on."""
        rows, flags = [], []
        limit = len(self.ids) - length - 1
        for _ in range(n):
            flags.append(aligned > 0 and g.random() < aligned)
            if flags[-1]:
                s, tries = -1, 0
                while not 0 <= s <= limit:
                    if tries == _TRIES:
                        raise ValueError(f"no reply start fits a window of {length} at "
                                         f"{answer_at} ({len(self.answers)} replies)")
                    s, tries = self.answers[g.randrange(len(self.answers))] - answer_at, tries + 1
            elif g.random() < 0.5:
                s = self.starts[g.randrange(len(self.starts) - 50)]
            else:
                s = g.randrange(limit)
            rows.append(self.ids[s:s + length])
        return torch.stack(rows), torch.tensor(flags, dtype=torch.bool)


def chat_stream(tok, seed: int, n: int, weights: str | None = None) -> Stream:
    """``n`` conversations of ``chat_corpus`` (seed ``seed * 1000 + 2``, the kinds drawn with
    ``weights``, ``chat_corpus.kind_weights``) rendered by the chat
    template exactly as SGLang's chat route renders them (Hugging Face's ``apply_chat_template``;
    the template writes the bos), each closed by its last ``<|im_end|>`` (= eos), packed, with
    each reply's start (``reply_starts``) in ``answers``."""
    from transformers import PreTrainedTokenizerFast

    from ..core.tokenizer import CHAT_TEMPLATE
    from . import chat_corpus

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHAT_TEMPLATE)
    prompts = generation_prompts(hf)
    texts, marks = [], []
    for c in chat_corpus.conversations(seed * 1000 + 2, n,
                                        chat_corpus.kind_weights(weights)):
        text = hf.apply_chat_template(c["messages"], tools=c["tools"], tokenize=False)
        texts.append(text.removesuffix("<|im_end|>\n"))     # the stream appends the eos
        marks.append(reply_starts(texts[-1], prompts))
    return Stream(tok, seed, n, docs=texts, bos_share=0.0, marks=marks)


def generation_prompts(hf) -> tuple[str, ...]:
    """The generation prompts ``hf``'s chat template appends, thinking off and on (for the
    committed template ``<|im_start|>assistant\\n<think></think>\\n\\n`` and
    ``<|im_start|>assistant\\n<think>\\n``): what serving renders before a reply."""
    msgs = [{"role": "user", "content": "?"}]
    base = hf.apply_chat_template(msgs, tokenize=False)
    out = []
    for thinking in (False, True):
        full = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                      enable_thinking=thinking)
        if not full.startswith(base) or full == base:
            raise ValueError("the chat template's generation prompt does not extend the chat")
        out.append(full[len(base):])
    return tuple(out)


def reply_starts(text: str, prompts: tuple[str, ...]) -> list[int]:
    """Character offsets in a rendered conversation where each assistant reply's generated
    part starts: right after one of the generation ``prompts`` (``generation_prompts``)."""
    return sorted({i + len(p) for p in prompts for i in _find_all(text, p)})


def _find_all(text: str, sub: str):
    i = text.find(sub)
    while i >= 0:
        yield i
        i = text.find(sub, i + 1)

"""Tests for the rule conversations (nemotron_sglang.testing.chat_corpus)."""

from __future__ import annotations

import json
import random

import pytest

from nemotron_sglang.core.tokenizer import CHAT_TEMPLATE
from nemotron_sglang.testing import chat_corpus as C
from nemotron_sglang.testing.corpus import EVAL_SEED_BASE


def test_deterministic_and_seed_ranges():
    assert C.conversations(3, 50) == C.conversations(3, 50)
    assert C.conversations(3, 50) != C.conversations(4, 50)
    with pytest.raises(ValueError):
        C.conversations(EVAL_SEED_BASE, 1)
    with pytest.raises(ValueError):
        C.eval_questions(EVAL_SEED_BASE - 1, 1)
    held = C.eval_questions(EVAL_SEED_BASE, 10)
    assert [q["kind"] for q in held] == [C.KINDS[i % len(C.KINDS)] for i in range(10)]


def test_kind_weights_shift_the_draw():
    """``add=1000`` makes nearly every conversation an addition; no weights keep the uniform
    draw (the stream stages 2 and 3 were trained on); a weight for no kind is refused."""
    seed = random.randrange(EVAL_SEED_BASE)

    def additions(convs):
        return sum(" + " in c["messages"][-1]["content"] for c in convs) / len(convs)

    assert C.conversations(seed, 400, None) == C.conversations(seed, 400)
    assert 0.1 < additions(C.conversations(seed, 400)) < 0.3, seed
    assert additions(C.conversations(seed, 400, C.kind_weights("add=1000"))) > 0.95, seed
    assert C.kind_weights(None) is None
    assert C.kind_weights("add=3,sequence=2")["sequence"] == 2.0
    for bad in ("mul=2", "add", "add=x", "add=-1"):
        with pytest.raises(ValueError):
            C.kind_weights(bad)


def test_every_answer_follows_its_rule():
    seed = random.randrange(10**6)
    r = random.Random(seed)
    for kind in C.KINDS:
        for _ in range(50):
            q = C.question(r, kind)
            assert C.answer_ok(q, q["answer"]), (seed, q)
            if q["args"] is not None:             # the tool's result is the answer's number
                assert q["result"] in q["answer"]


@pytest.mark.parametrize("kind", C.KINDS)
def test_answer_ok_refuses_a_wrong_answer(kind):
    """Negative control: off by one (or the wrong name) fails."""
    q = C.question(random.Random(5), kind)
    if kind == "cycle":
        wrong = "Sunday." if q["answer"] != "Sunday." else "Monday."
    elif kind == "sequence":
        terms = q["answer"].split(", ")
        wrong = ", ".join([terms[0], str(int(terms[1]) + 1)] + terms[2:])
    else:
        num = q["result"]
        wrong = q["answer"].replace(num, str(int(num) + 1))
    assert not C.answer_ok(q, wrong), (q, wrong)
    assert not C.answer_ok(q, "")


def test_conversations_render_and_calls_fit_their_schema():
    jsonschema = pytest.importorskip("jsonschema")
    transformers = pytest.importorskip("transformers")
    from nemotron_sglang.core.tokenizer import build_tokenizer

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(512),
                                              chat_template=CHAT_TEMPLATE)
    kinds = set()
    for c in C.conversations(random.randrange(1000), 300):
        text = hf.apply_chat_template(c["messages"], tools=c["tools"], tokenize=False)
        assert text.startswith("<s>") and text.endswith(c["messages"][-1]["content"] +
                                                        "<|im_end|>\n")
        offered = {t["function"]["name"] for t in c["tools"] or ()}
        assert len(offered) <= C.MAX_TOOLS
        for m in c["messages"]:
            for call in m.get("tool_calls") or ():
                name = call["function"]["name"]
                assert name in offered
                jsonschema.validate(json.loads(call["function"]["arguments"]),
                                    C.TOOLS[name]["function"]["parameters"])
                kinds.add("call")
            if m.get("reasoning_content"):
                kinds.add("think")
        kinds.add("tools" if c["tools"] else "plain")
    assert kinds == {"call", "think", "tools", "plain"}

"""Conversations over the rule corpus: chat, thinking and tool-call turns (pure Python, deterministic).

One responsibility: generate OpenAI-format conversations whose answers follow a rule, for
training the tiny fixture to the chat template (``core.tokenizer.CHAT_TEMPLATE``) and for
measuring it. A conversation is ``{"messages": [...], "tools": [...] | None}`` in the shape a
client sends to ``/v1/chat/completions`` (assistant ``tool_calls`` with JSON-string arguments,
``tool`` messages with the result), so training renders exactly what serving renders.

Questions (``KINDS``), each with its answer:

* ``after`` / ``before``: "What comes after 41?" -> "The number after 41 is 42."
* ``add``: "What is 12 + 30?" -> "12 + 30 = 42."
* ``sequence``: "Count: 5, 10, 15" (a counting, countdown or ``x = [`` prefix of 3-5 terms)
  -> "20, 25, 30, 35" (the next four terms).
* ``cycle``: "What day comes after Monday?" -> "Tuesday." (days and months).

A share of the answers carries a reasoning section (``reasoning``: one line stating the rule);
the template writes it as ``<think>\\n...\\n</think>\\n\\n`` before the answer. Tool conversations
offer a shuffled subset (at most ``MAX_TOOLS``) of ``TOOLS`` (``add(a, b)``, ``next_number(n)``,
``previous_number(n)``): a question a tool answers (its tool offered in ``MATCH_SHARE`` of these)
is a call (the Mistral convention the ``mistral`` tool-call parser reads: ``[TOOL_CALLS]
[{"name":"add", "arguments":{...}}]``), the tool's result, then the answer; a question no
offered tool answers is answered directly.

Seeds: training uses seeds below ``corpus.EVAL_SEED_BASE``; ``eval_questions`` only seeds at or
above it (the rules and number ranges are shared; the drawn questions are not).
"""

from __future__ import annotations

import json
import random

from .corpus import DAYS, EVAL_SEED_BASE, MONTHS

KINDS = ("after", "before", "add", "sequence", "cycle")
TOOLS = {
    "add": {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
    "next_number": {"type": "function", "function": {
        "name": "next_number", "description": "The integer after n.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}},
                       "required": ["n"]}}},
    "previous_number": {"type": "function", "function": {
        "name": "previous_number", "description": "The integer before n.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}},
                       "required": ["n"]}}},
}
# which tool answers which question, and with what arguments
TOOL_FOR = {"add": "add", "after": "next_number", "before": "previous_number"}


def strict(tool: dict) -> dict:
    """``tool`` marked ``"strict": true``: with ``tool_choice`` required or named, SGLang's
    grammar then holds the call's arguments to its schema (docs/serving.md)."""
    return {**tool, "function": {**tool["function"], "strict": True}}

THINK_SHARE = 0.3        # of answers with a reasoning section
TOOL_SHARE = 0.5         # of conversations that offer tools
SYSTEM_SHARE = 0.2       # of conversations that open with a system message
MAX_TOOLS = 2            # tools offered at most (each renders to ~130 tokens)
MATCH_SHARE = 0.75       # of tool offers to a question a tool answers that include that tool


def question(r: random.Random, kind: str, big: bool = False) -> dict:
    """One rule question: ``{"kind", "user", "answer", "reasoning", "args", "result"}`` (``args``
    and ``result``: what the kind's tool takes and returns, for the tool kinds). ``big``: an
    addition of up to 99 + 499, for a tool to answer (else up to 9 + 99)."""
    if kind in ("after", "before"):
        n = r.randint(1, 999)
        m = n + 1 if kind == "after" else n - 1
        user = r.choice([f"What comes {kind} {n}?", f"What number comes {kind} {n}?",
                           f"What is the number {kind} {n}?"])
        op = "+" if kind == "after" else "-"
        return {"kind": kind, "user": user, "answer": f"The number {kind} {n} is {m}.",
                "reasoning": f"{n} {op} 1 = {m}.", "args": {"n": n}, "result": str(m)}
    if kind == "add":           # small enough to answer without a tool; a tool takes any
        a, b = (r.randint(1, 99), r.randint(1, 499)) if big else (r.randint(1, 9), r.randint(1, 99))
        user = r.choice([f"What is {a} + {b}?", f"What is {a} plus {b}?", f"Add {a} and {b}."])
        return {"kind": kind, "user": user, "answer": f"{a} + {b} = {a + b}.",
                "reasoning": f"{a} + {b} = {a + b}.", "args": {"a": a, "b": b},
                "result": str(a + b)}
    if kind == "sequence":
        form = r.choice(["count", "countdown", "list"])
        k = r.randint(3, 5)
        if form == "countdown":
            step = r.choice([1, 2, 3, 5])
            start = r.randint(step * (k + 4), step * (k + 4) + 500)
            xs = [start - step * i for i in range(k + 4)]
            head, rule = "Countdown: ", f"Each term is {step} less than the one before."
        else:
            start, step = r.randint(0, 400), r.choice([1, 2, 3, 5, 10, r.randint(2, 12)])
            xs = [start + step * i for i in range(k + 4)]
            head = (r.choice(["", "Count: ", f"Counting by {step}: ", "Numbers: "])
                    if form == "count" else r.choice(["x", "values", "nums", "a"]) + " = [")
            rule = f"Each term is {step} more than the one before."
        terms = ", ".join(str(v) for v in xs[:k])
        more = [xs[-1] + (xs[1] - xs[0]) * i for i in range(1, 13)]   # the rule, past the answer
        user = r.choice([head + terms, "Continue: " + head + terms,
                           "What comes next? " + head + terms])
        return {"kind": kind, "user": user, "answer": ", ".join(str(v) for v in xs[k:]),
                "reasoning": rule, "args": None, "result": None,
                "follow": [str(v) for v in xs[k:] + more]}
    if kind == "cycle":
        names, what = r.choice([(DAYS, "day"), (MONTHS, "month")])
        i = r.randrange(len(names))
        nxt = names[(i + 1) % len(names)]
        user = r.choice([f"What {what} comes after {names[i]}?",
                           f"Which {what} follows {names[i]}?"])
        return {"kind": kind, "user": user, "answer": f"{nxt}.",
                "reasoning": f"After {names[i]} comes {nxt}.", "args": None, "result": None}
    raise ValueError(f"unknown question kind {kind!r}")


def _assistant(text: str, reasoning: str | None) -> dict:
    msg = {"role": "assistant", "content": text}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def kind_weights(spec: str | None) -> dict[str, float] | None:
    """``"add=3,sequence=3"`` -> each kind's draw weight (kinds not named: 1); None for None."""
    if not spec:
        return None
    weights = dict.fromkeys(KINDS, 1.0)
    for item in spec.split(","):
        kind, _, w = item.partition("=")
        if kind.strip() not in weights or not w or float(w) < 0:
            raise ValueError(f"kind weights {spec!r}: want kind=weight (>= 0) with kinds from "
                             f"{KINDS}")
        weights[kind.strip()] = float(w)
    return weights


def conversation(r: random.Random, weights: dict[str, float] | None = None) -> dict:
    """One training conversation (see the module docstring for the mix); ``weights``: each
    kind's draw weight (``kind_weights``; None: uniform, the draw stages 2 and 3 were trained on)."""
    kind = r.choice(KINDS) if weights is None else r.choices(KINDS, [weights[k] for k in KINDS])[0]
    offer = r.random() < TOOL_SHARE
    tool = TOOL_FOR.get(kind)
    names = []
    if offer:
        others = [n for n in TOOLS if n != tool]
        r.shuffle(others)
        names = others[:r.randint(1, MAX_TOOLS)]
        if tool is not None and r.random() < MATCH_SHARE:
            names = names[:MAX_TOOLS - 1]
            names.insert(r.randint(0, len(names)), tool)
    q = question(r, kind, big=tool in names)
    think = q["reasoning"] if r.random() < THINK_SHARE else None
    messages = []
    if r.random() < SYSTEM_SHARE:
        messages.append({"role": "system", "content": r.choice(
            ["You are a helpful assistant.", "Answer briefly.", "You answer rule questions."])})
    messages.append({"role": "user", "content": q["user"]})
    tools = None
    if offer:
        tools = [TOOLS[n] for n in names]
        if tool in names:
            call = {"id": f"call_{r.randrange(10**8):08d}", "type": "function",
                    "function": {"name": tool, "arguments": json.dumps(q["args"])}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": q["result"]})
            think = None     # a reasoning section only on direct answers
    messages.append(_assistant(q["answer"], think))
    return {"messages": messages, "tools": tools}


def conversations(seed: int, n: int, weights: dict[str, float] | None = None) -> list[dict]:
    """``n`` training conversations; deterministic in ``seed`` (< EVAL_SEED_BASE) and
    ``weights`` (``conversation``)."""
    if seed >= EVAL_SEED_BASE:
        raise ValueError(f"training conversations use seeds below {EVAL_SEED_BASE}")
    r = random.Random(seed)
    return [conversation(r, weights) for _ in range(n)]


def eval_questions(seed: int, n: int, kinds=KINDS, big: bool = False) -> list[dict]:
    """``n`` held-out questions (seed >= EVAL_SEED_BASE), the kinds in turn (``big``: the
    additions a tool answers)."""
    if seed < EVAL_SEED_BASE:
        raise ValueError(f"held-out questions use seeds >= {EVAL_SEED_BASE}")
    r = random.Random(seed)
    return [question(r, kinds[i % len(kinds)], big) for i in range(n)]


def answer_ok(q: dict, text: str) -> bool:
    """Whether an answer ``text`` (reasoning removed) states the question's answer: its first
    line begins with the expected answer. A sequence's first line holds at least its four next
    terms; any term after them follows the rule too (the last may be cut by ``max_tokens``)."""
    got = text.strip().splitlines()[0].strip() if text.strip() else ""
    if q["kind"] == "sequence":
        want = q["answer"].split(", ")
        terms = [t.strip() for t in got.rstrip(".").split(",")]
        n, follow = len(terms), q["follow"]
        if len(want) < n <= len(follow) and follow[n - 1].startswith(terms[-1]):
            terms = terms[:-1]                    # a last term cut short
        return terms[:len(want)] == want and terms == q["follow"][:len(terms)]
    return got.startswith(q["answer"].rstrip(".")) or got == q["answer"]

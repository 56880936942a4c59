"""``nemotron-sglang serve`` end to end: with no ``--model`` it serves the embedded default through
SGLang's own server, prints the URL and a curl line, and answers the OpenAI routes in every mode:
raw rule prompts, chat, thinking and tool calls (its parsers are serve's defaults).
With no ``--max-running-requests`` the running cap is core's rule on the pools SGLang sized
(logged with its derivation), and more than 16 requests run in one round."""

from __future__ import annotations

import json
import random
import re
import sys

import pytest

from nemotron_sglang.core.limits import running_request_cap
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.serving import serve
from nemotron_sglang.testing import chat_corpus
from sglang_server import Server

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    import os
    os.environ["NEMOTRON_SGLANG_CACHE"] = str(cache)
    try:
        s = Server(None, tmp_path_factory.mktemp("logs") / "serve.log", [],
                   command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    finally:
        del os.environ["NEMOTRON_SGLANG_CACHE"]
    yield s
    s.stop()


def test_serve_banner_and_every_mode(served):
    log = served.log.read_text()
    assert f"http://127.0.0.1:{served.port}" in log and "curl -s" in log
    for mode in ("ar", "diffusion", "linear_spec"):
        status, body = served.post("/v1/completions", {"model": "nld", "prompt": "The number after",
                                                       "max_tokens": 8, "temperature": 0,
                                                       "decode_mode": mode})
        assert status == 200, body
        usage = json.loads(body)["usage"]
        assert usage["decode_mode"] == mode and usage["completion_tokens"] > 0
    status, body = served.post("/v1/chat/completions", {
        "model": "nld", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
        "stream": True, "decode_mode": "diffusion"})
    assert status == 200 and body.rstrip().endswith("data: [DONE]")


# The embedded default is the trained rule-corpus fixture: a user's first request gets the rule's
# answer, the same text in every lossless mode (the banner's curl line uses the first prompt).
RULE_PROMPTS = {"The number after 41 is": " 42. The number after 42 is 43.",
                "Q: What comes after 41? A:": " 42\nQ: What comes after 42? A: 43",
                "Count: 17, 18, 19": ", 20, 21, 22, 23",
                "def add_3(x):\n    return x + 3\n\ndef add_4(x):": "\n    return x + 4\n\ndef add_5"}


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec"])
def test_embedded_default_answers_by_the_rule(served, mode):
    for prompt, expected in RULE_PROMPTS.items():
        status, body = served.post("/v1/completions", {"model": "nld", "prompt": prompt,
                                                       "max_tokens": 24, "temperature": 0,
                                                       "decode_mode": mode})
        assert status == 200, body
        text = json.loads(body)["choices"][0]["text"]
        assert text.startswith(expected), (mode, prompt, text)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear_spec", "quadratic_spec"])
def test_a_grammar_completed_at_a_round_boundary_keeps_its_last_token(served, mode):
    """A regex of exactly one block (32 digits, one token each in the embedded default): diffusion
    completes it in one round and the stop token it then needs lands in the next. The output is
    the 32 digits, ended by the stop token. (It once lost the last digit: the grammar had taken
    the stop token core held back, SGLang read it as complete a round early, finished on the
    32nd digit and trimmed it as the matched stop.)"""
    status, body = served.post("/generate", {"text": "x = [", "sampling_params": {
        "max_new_tokens": 64, "temperature": 0, "regex": "[0-9]{32}",
        "custom_params": {"decode_mode": mode}}})
    assert status == 200, body
    out = json.loads(body)
    assert re.fullmatch("[0-9]{32}", out["text"]), (mode, out["text"])
    eos = json.loads((EMBEDDED / "config.json").read_text())["eos_token_id"]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": eos}, out["meta_info"]


def sglang_pools(log: str) -> tuple[int, int]:
    """SGLang's own start-up line: (KV pool tokens, request slots) it sized."""
    m = re.search(r"max_total_num_tokens=(\d+),.*?max_running_requests=(\d+),", log)
    assert m, log[-3000:]
    return int(m.group(1)), int(m.group(2))


def running_counts(log: str) -> list[int]:
    """``#running-req`` of every canvas round SGLang logged (a "Decode batch" line per
    ``--decode-log-interval`` rounds: ``metrics.report_canvas_round``)."""
    return [int(n) for n in re.findall(r"Decode batch, #running-req: (\d+),", log)]


def run_together(server, n: int, tokens: int) -> list[int]:
    """``n`` ar requests of ``tokens`` tokens (ignore_eos) sent in one batched ``/generate``;
    the running counts logged meanwhile."""
    start = len(server.log.read_text())
    prompts = [[random.randrange(20, 200) for _ in range(random.randint(4, 12))] for _ in range(n)]
    status, body = server.post("/generate", {"input_ids": prompts, "sampling_params": {
        "max_new_tokens": tokens, "temperature": 0, "ignore_eos": True,
        "custom_params": {"decode_mode": "ar"}}}, timeout=600)
    assert status == 200, body
    assert [len(o["output_ids"]) for o in json.loads(body)] == [tokens] * n
    return running_counts(server.log.read_text()[start:])


def test_running_cap_is_derived_from_memory(served):
    """No flag: the cap SGLang's dLLM server would run at (1) is replaced by core's rule on the
    KV pool and request slots SGLang logged, and the derivation is logged; so is where auto's
    switch point comes from (the shipped CPU table: measured)."""
    log = served.log.read_text()
    kv, slots = sglang_pools(log)
    block = json.loads((EMBEDDED / "config.json").read_text())["block_size"]
    cap, why = running_request_cap(kv, slots, block)
    assert f"NemotronTriMode: {why}" in log, log[-3000:]
    assert cap == min(slots, kv // (block + 1)) > 16
    assert "NemotronTriMode: auto: the block (or ar) of each round from the YAML's cost_model, " \
           "measured on: x86_64 CPU" in log


def test_more_than_16_requests_run_in_one_round(served):
    """24 requests sent at once all run in the same canvas rounds (the old fixed cap was 16)."""
    counts = run_together(served, 24, 120)
    assert counts and max(counts) == 24, counts


# The embedded default as a chat model (its README: trained on chat, thinking and tool turns).
# Held-out questions (chat_corpus seeds >= 1 000 000), greedy; the lossless modes must give ar's
# answer exactly, and ar must get the rule right on CHAT_MIN of them.
CHAT_N, CHAT_MIN = 10, 9      # stage 7: 10 / 10 on these (0.95 on benchmarks/chat_eval.py's 100)
ADD_TOOL = chat_corpus.TOOLS["add"]
NEXT_TOOL = chat_corpus.TOOLS["next_number"]


def chat(served, messages, mode, **body) -> dict:
    status, text = served.post("/v1/chat/completions", {
        "model": "nld", "messages": messages, "max_tokens": 48, "temperature": 0,
        "decode_mode": mode, **body})
    assert status == 200, text
    return json.loads(text)["choices"][0]


def test_embedded_default_answers_chat(served):
    """The banner's chat line gets the rule's answer in every mode; held-out rule questions are
    answered correctly by ar (CHAT_MIN of CHAT_N) and identically by the lossless modes."""
    for mode in ("ar", "diffusion", "linear_spec", "quadratic_spec"):
        got = chat(served, [{"role": "user", "content": serve.CHAT_EXAMPLE}], mode)
        assert got["message"]["content"].startswith("The number after 41 is 42"), (mode, got)
    qs = chat_corpus.eval_questions(chat_corpus.EVAL_SEED_BASE + 7, CHAT_N)
    answers = {mode: [chat(served, [{"role": "user", "content": q["user"]}], mode)["message"]
                      ["content"] for q in qs] for mode in ("ar", "linear_spec", "quadratic_spec")}
    ok = [chat_corpus.answer_ok(q, a) for q, a in zip(qs, answers["ar"])]
    assert sum(ok) >= CHAT_MIN, list(zip([q["user"] for q in qs], answers["ar"]))
    assert answers["linear_spec"] == answers["ar"] == answers["quadratic_spec"]


def test_embedded_default_thinks_when_asked(served):
    """enable_thinking: a reasoning section (reasoning_content) and then the answer (content);
    without it, no reasoning at all."""
    q = chat_corpus.eval_questions(chat_corpus.EVAL_SEED_BASE + 8, 1)[0]
    msgs = [{"role": "user", "content": q["user"]}]
    for mode in ("ar", "linear_spec"):
        got = chat(served, msgs, mode, chat_template_kwargs={"enable_thinking": True})["message"]
        assert got["reasoning_content"] and chat_corpus.answer_ok(q, got["content"]), got
        plain = chat(served, msgs, mode)["message"]
        assert not plain.get("reasoning_content") and chat_corpus.answer_ok(q, plain["content"])


@pytest.mark.parametrize("mode", ["ar", "linear_spec"])
def test_embedded_default_calls_tools(served, mode):
    """The lossless modes (diffusion's figures are lower: the fixture README), through SGLang's
    mistral parser: tool_choice required and named, with the tools as a client writes them and
    with strict tools, give arguments that validate against the tool's schema (and are the
    question's); auto calls the tool a question
    needs and answers directly one no tool answers; the second turn, with the tool's result, is
    answered."""
    jsonschema = pytest.importorskip("jsonschema")
    tools = [ADD_TOOL, NEXT_TOOL]
    # SGLang's grammar holds the arguments to the schema only for strict tools; without it the
    # model writes them inside the forced call frame (docs/serving.md)
    strict = [chat_corpus.strict(t) for t in tools]
    q = chat_corpus.eval_questions(chat_corpus.EVAL_SEED_BASE + 9, 1, ("add",), big=True)[0]
    msgs = [{"role": "user", "content": q["user"]}]
    named = {"type": "function", "function": {"name": "add"}}
    for choice, offered in (("required", tools), (named, tools), ("required", strict),
                            (named, strict), ("auto", tools)):
        got = chat(served, msgs, mode, tools=offered, tool_choice=choice)
        calls = got["message"]["tool_calls"]
        assert got["finish_reason"] == "tool_calls" and calls, (choice, got)
        args = json.loads(calls[0]["function"]["arguments"])
        jsonschema.validate(args, ADD_TOOL["function"]["parameters"])
        assert calls[0]["function"]["name"] == "add" and args == q["args"], (choice, calls)
    direct = chat(served, [{"role": "user", "content": "What day comes after Monday?"}], mode,
                  tools=tools, tool_choice="auto")
    assert not direct["message"].get("tool_calls") and \
        direct["message"]["content"].startswith("Tuesday"), direct
    call = {"id": "call_0", "type": "function",
            "function": {"name": "add", "arguments": json.dumps(q["args"])}}
    second = chat(served, msgs + [{"role": "assistant", "content": "", "tool_calls": [call]},
                                  {"role": "tool", "tool_call_id": "call_0",
                                   "content": q["result"]}], mode, tools=tools)
    assert chat_corpus.answer_ok(q, second["message"]["content"]), second

"""The embedded default as a chat model: rule questions, thinking and tool calls through the real server.

Starts ``nemotron-sglang serve`` (``--model``, default the embedded fixture) with
``--tool-call-parser mistral --reasoning-parser nemotron_3 --enable-strict-thinking`` on the CPU
(or uses ``--url``) and asks, through the ``openai`` client, greedy, held-out questions of
``testing.chat_corpus`` (corpus seed >= 1 000 000, never trained on):

* **chat**: every kind of rule question, in every mode; correct = the answer's first line states
  the rule's answer (``chat_corpus.answer_ok``).
* **thinking**: ``enable_thinking``; has a reasoning section and a correct answer; and with
  ``thinking_budget`` 4 the section ends there (the answer follows).
* **tools** (``add`` and ``next_number`` offered; questions one of them answers):
  ``tool_choice`` ``required`` and named, with the tools as a client writes them and with
  ``strict`` tools (the schema then joins SGLang's grammar): the call's arguments validate
  against the tool's JSON schema (and, second figure, equal the question's); ``auto``: a
  question a tool answers gets a call, one none answers (days, sequences) a direct correct
  answer; **second turn**: the conversation with the call and the tool's result gets a correct
  answer.

    python benchmarks/chat_eval.py --markdown
    python benchmarks/chat_eval.py --model /path/to/checkpoint --n 40 --modes ar,linear_spec
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai

from nemotron_sglang.core.modes import AUTO, SERVING_MODES
from nemotron_sglang.testing import chat_corpus as C
from nemotron_sglang.testing.bench import hardware, print_table
from nemotron_sglang.testing.cpu_server import CPUServer

MODES = tuple(m for m in SERVING_MODES if m != AUTO)
SERVER_FLAGS = ["--tool-call-parser", "mistral", "--reasoning-parser", "nemotron_3",
                "--enable-strict-thinking"]
OFFERED = ("add", "next_number")
EVAL_SEED = 1_000_000


def _ask(client, mode: str, messages, **kw):
    extra = dict(kw.pop("extra_body", {}), decode_mode=mode)
    return client.chat.completions.create(model="nld", messages=messages, temperature=0,
                                          max_tokens=kw.pop("max_tokens", 48),
                                          extra_body=extra, **kw).choices[0].message


def _share(flags) -> str:
    flags = list(flags)
    return f"{sum(flags) / len(flags):.2f} ({sum(flags)}/{len(flags)})"


def chat_rows(client, modes, n: int, pool) -> list[list]:
    qs = C.eval_questions(EVAL_SEED, n)
    rows = []
    for mode in modes:
        msgs = list(pool.map(lambda q: _ask(client, mode, [{"role": "user", "content": q["user"]}]),
                             qs))
        ok = [C.answer_ok(q, m.content or "") for q, m in zip(qs, msgs)]
        per = {k: _share(o for q, o in zip(qs, ok) if q["kind"] == k) for k in C.KINDS}
        rows.append([mode, _share(ok), *(per[k] for k in C.KINDS)])
    return rows


def thinking_rows(client, modes, n: int, pool) -> list[list]:
    qs = C.eval_questions(EVAL_SEED + 1, n)
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    rows = []
    for mode in modes:
        free = list(pool.map(lambda q: _ask(client, mode, [{"role": "user", "content": q["user"]}],
                                            extra_body=think, max_tokens=64), qs))
        cut = list(pool.map(lambda q: _ask(client, mode, [{"role": "user", "content": q["user"]}],
                                           extra_body={**think, "thinking_budget": 4},
                                           max_tokens=64), qs))
        rows.append([mode,
                     _share(bool(m.reasoning_content) for m in free),
                     _share(bool(m.reasoning_content) and C.answer_ok(q, m.content or "")
                            for q, m in zip(qs, free)),
                     _share(bool(m.content and m.content.strip()) for m in cut)])
    return rows


def _tool_questions(n: int) -> list[dict]:
    return C.eval_questions(EVAL_SEED + 2, n, kinds=("add", "after"), big=True)


def _call_ok(q: dict, call) -> tuple[bool, bool]:
    """(arguments validate against the called tool's schema, and equal the question's)."""
    name = call.function.name
    if name not in C.TOOLS:
        return False, False
    try:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, C.TOOLS[name]["function"]["parameters"])
    except (ValueError, jsonschema.ValidationError):
        return False, False
    return True, name == C.TOOL_FOR[q["kind"]] and args == q["args"]


def tool_rows(client, modes, n: int, pool) -> list[list]:
    tools = [C.TOOLS[t] for t in OFFERED]
    strict = [C.strict(t) for t in tools]
    qs = _tool_questions(n)
    direct = C.eval_questions(EVAL_SEED + 3, n, kinds=("cycle", "sequence"))
    rows = []
    for mode in modes:
        def first_call(q, choice, offered=tools):
            m = _ask(client, mode, [{"role": "user", "content": q["user"]}], tools=offered,
                     tool_choice=choice)
            return _call_ok(q, m.tool_calls[0]) if m.tool_calls else (False, False)

        def named(q):
            return {"type": "function", "function": {"name": C.TOOL_FOR[q["kind"]]}}

        req = list(pool.map(lambda q: first_call(q, "required"), qs))
        nam = list(pool.map(lambda q: first_call(q, named(q)), qs))
        s_req = list(pool.map(lambda q: first_call(q, "required", strict), qs))
        s_nam = list(pool.map(lambda q: first_call(q, named(q), strict), qs))
        auto = list(pool.map(lambda q: first_call(q, "auto"), qs))
        plain = list(pool.map(
            lambda q: _ask(client, mode, [{"role": "user", "content": q["user"]}], tools=tools,
                           tool_choice="auto"), direct))

        def second(q):
            call = {"id": "call_0", "type": "function", "function": {
                "name": C.TOOL_FOR[q["kind"]], "arguments": json.dumps(q["args"])}}
            m = _ask(client, mode, [{"role": "user", "content": q["user"]},
                                    {"role": "assistant", "content": "", "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": "call_0",
                                     "content": q["result"]}], tools=tools)
            return C.answer_ok(q, m.content or "")

        turn2 = list(pool.map(second, qs))
        rows.append([mode, *(f"{_share(v for v, _ in got)} / {sum(e for _, e in got)}"
                             for got in (req, nam, s_req, s_nam)),
                     _share(e for _, e in auto),
                     _share(not m.tool_calls and C.answer_ok(q, m.content or "")
                            for q, m in zip(direct, plain)),
                     _share(turn2)])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the embedded one)")
    ap.add_argument("--url", default=None, help="a running server with SERVER_FLAGS")
    ap.add_argument("--n", type=int, default=40, help="questions per measure")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tool-modes", default="ar,diffusion,linear_spec")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    modes, tool_modes = args.modes.split(","), args.tool_modes.split(",")
    server = None
    if args.url is None:
        cmd = [sys.executable, "-m", "nemotron_sglang", "serve",
               *(["--model", args.model] if args.model else [])]
        server = CPUServer(None, Path(tempfile.mkdtemp()) / "serve.log", SERVER_FLAGS,
                           command=cmd, env={"SGLANG_MAX_THINK_TOKENS": "1000000"})
        url = server.url
    else:
        url = args.url
    t0 = time.time()
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=600)
        with ThreadPoolExecutor(8) as pool:
            chat = chat_rows(client, modes, args.n, pool)
            think = thinking_rows(client, modes, args.n, pool)
            tools = tool_rows(client, tool_modes, args.n, pool)
    finally:
        if server is not None:
            server.stop()
    print(f"# chat_eval: {args.model or 'embedded default'}, {args.n} held-out questions per "
          f"measure, greedy; {hardware()}; {time.time() - t0:.0f} s\n")
    print_table(["mode", "chat correct", *C.KINDS], chat, args.markdown)
    print()
    print_table(["mode", "thinking: has reasoning", "reasoning + correct",
                 "budget 4: answer after"], think, args.markdown)
    print()
    print_table(["mode", "required: valid / exact", "named: valid / exact",
                 "strict required: valid / exact", "strict named: valid / exact",
                 "auto: calls when needed", "auto: direct when not", "2nd turn correct"],
                tools, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

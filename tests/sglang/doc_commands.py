"""The ``curl`` lines of the README and ``docs/*.md``, parsed and run against the tests' real
servers (they drift otherwise): ``commands()`` extracts every one from the fenced code blocks
(line continuations, quotes and comments as bash reads them, a body that spans lines), each
with the server it needs (``target``); ``run`` executes the doc's own text with bash and the
real ``curl``, only the doc's ``http://127.0.0.1:<port>`` swapped for the test server's, and
checks that bash ran exactly the argv parsed here; ``check`` asserts the status and the
response the route and the doc promise.

Targets: ``tri`` (the tri-mode ``serve``, ``test_doc_commands.py``), ``thinking`` (``serve``
with the thinking-budget flags, the same module), ``vlm`` (the
vision-language server, ``test_server_vlm.py``), ``gateway`` (``smg``, ``test_gateway.py``),
``dynamo`` (Dynamo's frontend, ``test_dynamo.py``). Each of those modules calls
``commands_for("<target>")``; ``test_doc_commands.py`` checks that every line has a target and
that every target is run by its module."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
# which test module runs the lines of each target (test_doc_commands.py checks each calls
# ``commands_for`` with its target)
RUNNERS = {"tri": "tests/sglang/test_doc_commands.py",
           "thinking": "tests/sglang/test_doc_commands.py",
           "vlm": "tests/sglang/test_server_vlm.py", "gateway": "tests/sglang/test_gateway.py",
           "dynamo": "tests/sglang/test_dynamo.py"}
DOC_URL = re.compile(r"http://127\.0\.0\.1:\d+")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<"}


class DocCommandError(ValueError):
    """A curl line of a doc that this module cannot parse (the test fails on it: no line is
    skipped silently)."""


@dataclass(frozen=True)
class DocCurl:
    doc: str                  # path relative to the repository, e.g. "docs/serving.md"
    line: int                 # 1-based line of the ``curl`` in the doc
    text: str                 # the command as written (continuation lines included)
    argv: tuple[str, ...]     # as bash splits it, ``curl`` first
    url: str
    method: str
    headers: dict[str, str]
    body: dict | None
    comment: str              # the comment line right above it in the block ("" if none)
    target: str
    expect_status: int = 200
    block: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream"))


def fenced_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(1-based line of the block's first content line, info string, lines) of every fenced
    code block (```)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"\s*(`{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if j == len(lines):
            raise DocCommandError(f"unclosed code fence at line {i + 1}")
        blocks.append((start + 1, info, lines[start:j]))
        i = j + 1
    return blocks


def split_command(text: str) -> list[str]:
    """``text`` as bash splits one simple command: backslash-newline joins lines, quotes may
    span lines, ``#`` starts a comment. Raises ``ValueError`` while a quote is open."""
    lex = shlex.shlex(text.replace("\\\n", ""), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def parse_curl(argv: list[str], where: str) -> tuple[str, str, dict[str, str], dict | None]:
    """(method, url, headers, JSON body) of a curl argv; any option not understood here is an
    error (so a new kind of line is noticed, not half-run)."""
    if bad := SHELL_OPERATORS.intersection(argv):
        raise DocCommandError(f"{where}: shell operator {sorted(bad)} in a curl line")
    method, urls, headers, data = None, [], {}, None
    it = iter(argv[1:])
    for a in it:
        if a in ("-H", "--header"):
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif a in ("-d", "--data", "--data-raw", "--data-binary"):
            if data is not None:
                raise DocCommandError(f"{where}: more than one body")
            data = next(it)
        elif a in ("-X", "--request"):
            method = next(it)
        elif re.fullmatch(r"-[sSN]+", a) or a in ("--silent", "--no-buffer", "--show-error"):
            continue
        elif a.startswith("-"):
            raise DocCommandError(f"{where}: curl option {a!r} is not understood by the test")
        else:
            urls.append(a)
    if len(urls) != 1 or not DOC_URL.match(urls[0]):
        raise DocCommandError(f"{where}: expected one http://127.0.0.1:PORT URL, got {urls}")
    body = None
    if data is not None:
        if headers.get("Content-Type") != "application/json":
            raise DocCommandError(f"{where}: a body without Content-Type: application/json")
        try:
            body = json.loads(data)
        except json.JSONDecodeError as e:
            raise DocCommandError(f"{where}: the body is not JSON ({e}): {data}") from None
    return method or ("POST" if data is not None else "GET"), urls[0], headers, body


def target_of(block: list[str], body: dict | None) -> str:
    """The server a line needs: the gateway or Dynamo when its block starts one, the
    vision-language server for an image part, otherwise the tri-mode ``serve``."""
    if any(line.lstrip().startswith("smg launch") for line in block):
        return "gateway"
    if any("dynamo.frontend" in line for line in block):
        return "dynamo"
    if "image_url" in json.dumps(body):
        return "vlm"
    if {"thinking_budget", "max_thinking_tokens"} & set(body or {}):
        return "thinking"        # serve with the reasoning flags the docs name
    return "tri"


def extract(path: Path) -> list[DocCurl]:
    """Every curl command in ``path``'s fenced code blocks."""
    return extract_text(path.read_text(), str(path.relative_to(ROOT)))


def extract_text(markdown: str, rel: str) -> list[DocCurl]:
    """Every curl command in the fenced code blocks of ``markdown`` (the doc ``rel``)."""
    out = []
    for first, _info, lines in fenced_blocks(markdown):
        comment, i = "", 0
        while i < len(lines):
            stripped = lines[i].strip()
            where = f"{rel}:{first + i}"
            if stripped.startswith("#"):
                comment, i = stripped, i + 1
                continue
            if not re.search(r"(^|[\s;&|(])curl\s", stripped):
                if stripped:
                    comment = ""
                i += 1
                continue
            if not stripped.startswith("curl "):
                raise DocCommandError(f"{where}: curl not at the start of the command: {stripped}")
            j = i
            while True:               # until bash would see a whole command
                text = "\n".join(lines[i:j + 1])
                try:
                    argv = split_command(text)
                    if not text.rstrip().endswith("\\"):
                        break
                except ValueError:
                    pass
                j += 1
                if j == len(lines):
                    raise DocCommandError(f"{where}: unterminated curl command: {text}")
            method, url, headers, body = parse_curl(argv, where)
            m = re.search(r"HTTP (\d{3})", comment)
            out.append(DocCurl(rel, first + i, text, tuple(argv), url, method, headers, body,
                               comment, target_of(lines, body),
                               int(m.group(1)) if m else 200, "\n".join(lines)))
            comment, i = "", j + 1
    return out


def commands() -> list[DocCurl]:
    return [c for doc in DOCS for c in extract(doc)]


def commands_for(target: str) -> list[DocCurl]:
    assert target in RUNNERS, target
    return [c for c in commands() if c.target == target]


def docs_mentioning_curl() -> list[str]:
    """The docs with a ``curl`` command inside a code block (each must yield commands)."""
    out = []
    for doc in DOCS:
        for _first, _info, lines in fenced_blocks(doc.read_text()):
            if any(re.match(r"\s*curl\s", line) for line in lines):
                out.append(str(doc.relative_to(ROOT)))
                break
    return out


def run(cmd: DocCurl, base_url: str, replace: dict[str, str] | None = None,
        timeout: float = 300) -> tuple[int, str]:
    """Run the doc's own text with bash and the real curl, its URL's scheme://host:port swapped
    for ``base_url`` (and each ``replace`` key, e.g. a placeholder path, for its value); the
    (HTTP status, body). Bash's argv must equal the parsed one (after the same swaps)."""
    curl = shutil.which("curl")
    assert curl, "curl is not installed"
    text = DOC_URL.sub(base_url, cmd.text)
    for old, new in (replace or {}).items():
        assert old in text, (old, cmd.key)
        text = text.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        args = os.path.join(tmp, "argv")
        # the doc's text runs as written; ``curl`` is a function that records its argv and adds
        # the status line (the last line of the output) and a time limit
        script = (f"curl() {{ printf '%s\\0' \"$@\" > {shlex.quote(args)}; "
                  f"{shlex.quote(curl)} --max-time {int(timeout)} --write-out '\\n%{{http_code}}' "
                  f"\"$@\"; }}\n{text}\n")
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=timeout + 30)
        assert done.returncode == 0, (cmd.key, done.returncode, done.stderr, done.stdout[-2000:])
        ran = Path(args).read_text().split("\0")[:-1]
    want = [DOC_URL.sub(base_url, a) for a in cmd.argv[1:]]
    for old, new in (replace or {}).items():
        want = [a.replace(old, new) for a in want]
    assert ran == want, (cmd.key, ran, want)
    out, _, status = done.stdout.rpartition("\n")
    return int(status), out


def sse_events(text: str, where: str) -> list[dict]:
    """The JSON events of an SSE body that ends with ``data: [DONE]``."""
    assert text.rstrip().endswith("data: [DONE]"), (where, text[-500:])
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        assert line.startswith("data:"), (where, line)
        data = line[5:].strip()
        if data != "[DONE]":
            events.append(json.loads(data))
    assert events and not any("error" in e for e in events), (where, text[-1000:])
    return events


def _mode_of(body: dict) -> str | None:
    """The decode mode a request asks for: top level, in ``custom_params``, or as Dynamo's
    ``nld.decode_mode`` annotation."""
    sp = body.get("sampling_params") or {}
    for source in ((sp.get("custom_params") or {}), body):
        if "decode_mode" in source:
            return source["decode_mode"]
    for note in (body.get("nvext") or {}).get("annotations", []):
        if note.startswith("nld.decode_mode="):
            return note.split("=", 1)[1]
    return None


def _same_mode(reported: str, asked: str) -> bool:
    return reported.split("(")[0] == asked           # auto reports "auto(linear_spec/32,...)"


NLD_USAGE = ("decode_mode", "forwards", "tokens_per_forward", "acceptance_length")
NLD_META = ("nld_mode", "nld_forwards", "nld_cycles", "nld_block_length")


def check(cmd: DocCurl, status: int, text: str, nld_usage: bool = True) -> dict:
    """Assert the answer of ``cmd``: the status (200, or the ``HTTP nnn`` its comment names);
    a JSON body or an SSE stream ending in ``[DONE]``; the route's fields; NLD's usage fields
    (``nld_usage``; Dynamo's OpenAI routes drop them, as docs/scale-out.md says) or ``nld_*``
    ``meta_info`` counters with the mode asked for; what the line's feature promises (a regex
    match, a gap of at most ``max_tokens``, a filled canvas). Returns the final answer: the
    decoded body, or for a stream ``{"events": [...], "text": ..., "usage" / "meta_info"}``."""
    where = cmd.key
    assert status == cmd.expect_status, (where, status, text[:2000])
    if cmd.expect_status != 200:
        err = json.loads(text)
        assert "error" in err or "message" in err or "detail" in err, (where, err)
        return err
    body, route, mode = cmd.body or {}, cmd.path, _mode_of(cmd.body or {})
    if cmd.stream:
        events = sse_events(text, where)
        if route == "/generate":
            answer = {"events": events, "text": "".join(e.get("text", "") for e in events)
                      if "input_ids" not in body else None, "meta_info": events[-1]["meta_info"]}
        else:
            key = "text" if route == "/v1/completions" else "content"
            parts = [c.get(key) if key == "text" else (c.get("delta") or {}).get(key)
                     for e in events for c in e.get("choices", [])]
            answer = {"events": events, "text": "".join(p or "" for p in parts),
                      "usage": next((e["usage"] for e in reversed(events) if e.get("usage")),
                                    None)}
            if (body.get("stream_options") or {}).get("include_usage"):
                assert answer["usage"], (where, "no usage chunk")
    else:
        answer = json.loads(text)
    if route in ("/v1/completions", "/v1/chat/completions"):
        if cmd.stream:
            finish = [c["finish_reason"] for e in answer["events"] for c in e.get("choices", [])
                      if c.get("finish_reason")]
            assert len(finish) == 1, (where, finish)
        else:
            choice = answer["choices"][0]
            answer["text"] = (choice["text"] if route == "/v1/completions"
                              else choice["message"]["content"])
            finish = [choice["finish_reason"]]
            if finish[0] == "tool_calls":       # a call: JSON-object arguments, no text needed
                assert body.get("tools"), (where, "a tool call without tools", answer)
                calls = choice["message"]["tool_calls"]
                assert calls and all(isinstance(json.loads(c["function"]["arguments"]), dict)
                                     for c in calls), (where, calls)
                answer["text"] = answer["text"] or ""
        assert finish[0] in ("stop", "length", *(("tool_calls",) if body.get("tools") else ())), \
            (where, finish)
        if finish[0] == "length":           # an answer, not only special tokens
            assert answer["text"], (where, answer)
        usage = answer["usage"]
        if usage is not None:
            assert 0 < usage["completion_tokens"] <= body["max_tokens"], (where, usage)
            if nld_usage and mode is not None:
                assert all(k in usage for k in NLD_USAGE), (where, usage)
                assert _same_mode(usage["decode_mode"], mode), (where, usage, mode)
            elif not nld_usage:
                assert "decode_mode" not in usage, (where, "Dynamo passed NLD's usage", usage)
        assert isinstance(answer["text"], str), (where, answer)
    elif route == "/generate":
        meta = answer["meta_info"]
        if mode is not None:
            assert all(k in meta for k in NLD_META), (where, meta)
            assert _same_mode(meta["nld_mode"], mode), (where, meta, mode)
        assert 0 < meta["completion_tokens"] <= body["sampling_params"]["max_new_tokens"], \
            (where, meta)
    else:
        raise AssertionError(f"{where}: no check for route {route}")
    if "regex" in body:
        assert re.fullmatch(body["regex"], answer["text"]), (where, body["regex"], answer["text"])
    if "suffix" in body:                # infill: the gap, ending with its block
        assert body["suffix"] not in answer["text"], (where, answer["text"])
        assert answer["choices"][0]["finish_reason"] == "stop", (where, answer["choices"])
    canvas = ((body.get("sampling_params") or {}).get("custom_params") or {}).get("canvas")
    if isinstance(canvas, str):          # the masks filled, every other piece kept
        pieces = canvas.split("<|mask|>")
        assert "<|mask|>" not in answer["text"], (where, answer["text"])
        assert re.fullmatch(".+?".join(map(re.escape, pieces)), answer["text"], re.S), \
            (where, canvas, answer["text"])
    return answer

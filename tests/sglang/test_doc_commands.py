"""Every ``curl`` line of the README and ``docs/*.md`` runs against a real server, as written
(``doc_commands``: the doc's text through bash and the real curl, only the host:port swapped),
so the docs cannot drift from the server. This module runs the lines for the tri-mode server:
``nemotron-sglang serve`` of the embedded default as the docs start it, and the banner's own
"try:" line; then the thinking-budget lines against ``serve`` with the flags the docs name
(``--reasoning-parser nemotron_3 --enable-strict-thinking``). The lines that need another server run where that server is: the image chat in
``test_server_vlm.py``, the gateway's in ``test_gateway.py``, Dynamo's in ``test_dynamo.py``;
the first test here checks that every line found has such a home, and that none goes unfound."""

from __future__ import annotations

import re
import sys

import pytest

import doc_commands
from doc_commands import DocCommandError, commands_for, extract_text
from sglang_server import Server

pytest.importorskip("sglang")

THINK = ["--reasoning-parser", "nemotron_3", "--enable-strict-thinking"]


def test_every_curl_line_is_found_parsed_and_has_a_runner():
    docs = doc_commands.docs_mentioning_curl()
    assert {"README.md", "docs/serving.md", "docs/scale-out.md"} <= set(docs), docs
    found = doc_commands.commands()
    for doc in docs:
        mine = [c for c in found if c.doc == doc]
        # an independent count: the lines in code blocks that start a curl command
        text = (doc_commands.ROOT / doc).read_text()
        starts = sum(1 for _f, _i, lines in doc_commands.fenced_blocks(text) for line in lines
                     if re.match(r"\s*curl\s", line))
        assert len(mine) == starts > 0, (doc, len(mine), starts)
    assert len({c.key for c in found}) == len(found)
    for target, runner in doc_commands.RUNNERS.items():
        assert f'commands_for("{target}")' in (doc_commands.ROOT / runner).read_text(), runner
    assert {c.target for c in found} <= set(doc_commands.RUNNERS)


@pytest.mark.parametrize("block,error", [
    ("curl -s http://127.0.0.1:30000/v1/completions -d '{\"a\": 1", "unterminated"),
    ("curl -s http://127.0.0.1:30000/x -H 'Content-Type: application/json' -d '{a}'", "not JSON"),
    ("curl -s -o out http://127.0.0.1:30000/x", "'-o' is not understood"),
    ("curl -s http://127.0.0.1:30000/x | jq .", "shell operator"),
    ("curl -s https://example.com/x", "one http://127.0.0.1:PORT URL"),
    ("FOO=1 curl -s http://127.0.0.1:30000/x", "not at the start"),
])
def test_a_curl_line_the_test_cannot_read_fails_loudly(block, error):
    with pytest.raises(DocCommandError, match=re.escape(error)):
        extract_text(f"```bash\n{block}\n```\n", "doc.md")


def test_continuations_quotes_and_comments_parse_as_bash_reads_them():
    (c,) = extract_text("```bash\n# 400 example, HTTP 400\ncurl -sN http://127.0.0.1:8000/generate"
                        " -H 'Content-Type: application/json' \\\n  -d '{\"a\": \"x y\",\n"
                        "  \"b\": [1, 2]}'   # trailing comment\n```\n", "doc.md")
    assert c.line == 3 and c.expect_status == 400 and c.stream is False
    assert c.argv == ("curl", "-sN", "http://127.0.0.1:8000/generate", "-H",
                      "Content-Type: application/json", "-d", '{"a": "x y",\n  "b": [1, 2]}')
    assert c.body == {"a": "x y", "b": [1, 2]} and c.path == "/generate"


def serve(log, extra: list[str], cache) -> Server:
    """``nemotron-sglang serve`` of the embedded default with ``extra`` (the docs' server)."""
    return Server(None, log, extra, command=[sys.executable, "-m", "nemotron_sglang", "serve"],
                  env={"NEMOTRON_SGLANG_CACHE": str(cache)})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = serve(tmp_path_factory.mktemp("logs") / "serve.log", [], tmp_path_factory.mktemp("cache"))
    yield s
    s.stop()


def run_all(server, lines, extra_check=None) -> None:
    """Run every line against ``server``; every failing line is reported, and the lines run
    are exactly the lines given."""
    assert lines
    failures, ran = [], set()
    for cmd in lines:
        try:
            answer = doc_commands.check(cmd, *doc_commands.run(cmd, server.url))
            if extra_check:
                extra_check(cmd, answer)
            ran.add(cmd.key)
        except AssertionError as e:
            failures.append(f"{cmd.key}: {e}")
    assert not failures, "\n".join(failures)
    assert ran == {c.key for c in lines}


def test_every_tri_mode_doc_line_answers_as_the_doc_says(served):
    """Each line of the README and docs/serving.md for plain ``serve``, run as written."""
    run_all(served, commands_for("tri"))


def test_the_banners_curl_line(served):
    """``serve`` prints a ready-to-paste curl line; it answers too."""
    (line,) = [m.group(1) for m in re.finditer(r"^\s*try:\s+(curl .*)$",
                                               served.log.read_text(), re.M)]
    (cmd,) = extract_text(f"```bash\n{line}\n```\n", "serve's banner")
    doc_commands.check(cmd, *doc_commands.run(cmd, served.url))


def test_the_thinking_budget_lines(tmp_path):
    """The thinking-budget lines, against ``serve`` with the flags the docs name (a server of
    its own: those flags move a plain chat's whole answer into ``reasoning_content``, so the
    other lines run without them): the budget closes the reasoning, so the chat answer has
    both parts."""
    def both_parts(cmd, answer):
        msg = answer["choices"][0]["message"]
        assert msg.get("reasoning_content") and msg["content"], (cmd.key, msg)

    with serve(tmp_path / "think.log", THINK, tmp_path / "cache") as s:
        run_all(s, commands_for("thinking"), both_parts)

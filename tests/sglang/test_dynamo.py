"""NVIDIA Dynamo (ai-dynamo 1.6.1) in front of the tri-mode server, all on loopback: Dynamo's
frontend (``python -m dynamo.frontend``) and ``nemotron-sglang serve --dynamo`` workers, found
through file discovery (``dynamo_worker.LOCAL_ENV``). Every decode mode per request — on the
OpenAI routes through ``nvext.annotations`` (``nld.<field>=<value>``), on the native
``/generate`` through ``custom_params`` — equal to the direct server (``serve``); refusals a 400
naming the field; streams that end; a stream dropped by its client frees its worker's KV; with a
second worker, requests spread over both; every address the processes listen on or advertise in
the discovery store is loopback (``docs/scale-out.md``)."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from nemotron_sglang.core.modes import SERVING_MODES
from nemotron_sglang.core.tokenizer import MASK_ID, encode, load_tokenizer
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.testing.cpu_server import listening_addresses
from nemotron_sglang.testing.dynamo_local import SERVE, Worker, wait_registered
from nemotron_sglang.testing.dynamo_local import frontend as start_frontend
import doc_commands
from doc_commands import commands_for
from sglang_server import Server

WORKER_FLAGS = ["--max-running-requests", "8", "--sleep-on-idle"]
PROMPT = "The number after 41 is"
CHAT = [{"role": "user", "content": "Count: 5, 10, 15"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("dynamo") / "discovery"


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    s = Server(None, tmp_path_factory.mktemp("logs") / "direct.log",
               ["--max-running-requests", "8"], command=SERVE)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def frontend(store, tmp_path_factory):
    f = start_frontend(tmp_path_factory.mktemp("logs") / "frontend.log", store)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def workers(store, frontend, tmp_path_factory):
    """One worker registered with the frontend (a second joins in ``second_worker``)."""
    out = [Worker(tmp_path_factory.mktemp("logs") / "worker0.log", store, WORKER_FLAGS)]
    try:
        wait_registered(frontend, store, 1, out[0].log)
        yield out
    finally:
        for w in out:
            w.stop()


def _post(url: str, path: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _events(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines()
            if line.startswith("data:") and "[DONE]" not in line]


def _openai(url: str, route: str, fields: dict, annotate: bool, stream: bool = False) -> str:
    """The answer's text of a greedy request (``fields``: NLD's, top-level for the direct
    server, ``nld.`` annotations for Dynamo's frontend)."""
    body = {"model": "nld", "max_tokens": 12, "temperature": 0, "stream": stream}
    body.update({"prompt": PROMPT} if route == "/v1/completions" else {"messages": CHAT})
    if annotate:
        body["nvext"] = {"annotations": [f"nld.{k}={json.dumps(v)}" for k, v in fields.items()]}
    else:
        body.update(fields)
    status, text = _post(url, route, body)
    assert status == 200, (status, text[:500])
    if not stream:
        choice = json.loads(text)["choices"][0]
        return choice["text"] if "text" in choice else choice["message"]["content"]
    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    parts = [c["choices"][0] for c in _events(text) if c.get("choices")]
    return "".join(p.get("text") or (p.get("delta") or {}).get("content") or "" for p in parts)


def _native(frontend, ids: list[int], custom: dict) -> tuple[list[int], dict]:
    """Dynamo's native ``/generate`` (streaming only): the output ids and the last meta_info."""
    status, text = _post(frontend.url, "/generate", {
        "model": "nld", "input_ids": ids, "stream": True,
        "sampling_params": {"max_new_tokens": 12, "temperature": 0, "custom_params": custom}})
    assert status == 200 and text.rstrip().endswith("data: [DONE]"), (status, text[-500:])
    events = _events(text)
    assert events and not any("error" in e for e in events), text[-500:]
    return [t for e in events for t in e["output_ids"]], events[-1]["meta_info"]


# a diffusion request whose answer differs from the server's default mode: proof that the fields
# reached the algorithm (otherwise every lossless mode answers the same greedy text)
DISTINCT = {"decode_mode": "diffusion", "max_steps": 1}


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_every_mode_through_dynamos_openai_routes_equals_the_direct_server(
        direct, frontend, workers, route):
    plain = _openai(direct.url, route, {}, annotate=False)
    assert _openai(direct.url, route, DISTINCT, annotate=False) != plain
    for fields in [{"decode_mode": m} for m in SERVING_MODES] + [
            DISTINCT, {"decode_mode": "diffusion", "threshold": 0.5},
            {"decode_mode": "linear_spec", "block_length": 8},
            {"decode_mode": "diffusion", "canvas": [MASK_ID, 348, MASK_ID, MASK_ID]}]:
        want = _openai(direct.url, route, fields, annotate=False)
        assert _openai(frontend.url, route, fields, annotate=True) == want, fields
        assert _openai(frontend.url, route, fields, annotate=True, stream=True) == want, fields


@pytest.mark.parametrize("mode", SERVING_MODES)
def test_every_mode_through_dynamos_generate_equals_the_direct_server(direct, frontend, workers,
                                                                      mode):
    """The native route keeps SGLang's request and answer: custom_params in, the ``nld_*``
    counters of ``meta_info`` out, equal to the direct server's."""
    ids = encode(load_tokenizer(EMBEDDED), PROMPT)
    want = direct.post_json("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "custom_params": {"decode_mode": mode}}})
    got, meta = _native(frontend, ids, {"decode_mode": mode})
    assert got == want["output_ids"]
    for key in ("nld_mode", "nld_forwards", "nld_cycles", "nld_block_length"):
        assert meta[key] == want["meta_info"][key], key       # one final value each
    assert meta["nld_mode"].split("(")[0] == mode


def test_the_docs_dynamo_lines(frontend, workers):
    """docs/scale-out.md's curl lines for Dynamo (``doc_commands``), run as written against this
    frontend: the OpenAI route's answer without NLD's usage fields (as the doc says), the native
    stream's ``nld_*`` counters in the mode asked for."""
    lines = commands_for("dynamo")
    assert lines
    for cmd in lines:
        doc_commands.check(cmd, *doc_commands.run(cmd, frontend.url), nld_usage=False)


@pytest.mark.parametrize("route,annotations,field", [
    ("/v1/completions", ["nld.decode_mode=bogus"], "decode_mode"),
    ("/v1/completions", ["nld.decode_mode=linear_spec", "nld.block_length=3"], "block_length"),
    ("/v1/chat/completions", ["nld.decode_mode=ar", "nld.max_steps=2"], "max_steps"),
    ("/v1/completions", ["nld.thresh=0.5"], "nvext.annotations"),
    ("/v1/completions", ["nld.decode_mode"], "nvext.annotations"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_field_is_a_400_naming_it(frontend, workers, route, annotations, field, stream):
    body = {"model": "nld", "max_tokens": 4, "stream": stream,
            "nvext": {"annotations": annotations}}
    body.update({"prompt": PROMPT} if route == "/v1/completions" else {"messages": CHAT})
    status, text = _post(frontend.url, route, body)
    assert status == 400 and field in text, (status, text[:500])


def test_a_bad_field_on_generate_is_an_error_event_naming_it(frontend, workers):
    """Dynamo's native route commits its 200 before the worker answers: the refusal is the
    stream's error event (still naming the field; never the generic internal error)."""
    ids = encode(load_tokenizer(EMBEDDED), PROMPT)
    status, text = _post(frontend.url, "/generate", {
        "model": "nld", "input_ids": ids, "stream": True, "sampling_params": {
            "max_new_tokens": 4, "custom_params": {"decode_mode": "diffusion", "threshold": -1}}})
    errors = [e["error"] for e in _events(text) if "error" in e]
    assert status == 200 and errors and "threshold" in errors[0]["message"], text[:500]


def test_a_stream_its_client_drops_frees_the_kv_on_its_worker(frontend, workers):
    (w,) = workers[:1]
    aborted = w.metric("sglang:num_aborted_requests_total")
    host, port = "127.0.0.1", frontend.port
    body = json.dumps({"model": "nld", "prompt": PROMPT, "max_tokens": 3000, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "nvext": {"annotations": ["nld.decode_mode=ar"]}}).encode()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n%b" % (host.encode(), len(body), body))
        got = b""
        while got.count(b"data: {") < 3:
            got += s.recv(4096)
        assert b" 200 " in got.split(b"\r\n", 1)[0], got[:200]
        busy = w.metric("sglang:num_used_tokens")
    assert busy > 0                         # it was running when the client left
    deadline = time.time() + 60
    while w.metric("sglang:num_used_tokens") or w.metric("sglang:num_running_reqs"):
        assert time.time() < deadline, "a dropped stream kept its KV"
        time.sleep(0.5)
    assert w.metric("sglang:num_aborted_requests_total") == aborted + 1
    assert _openai(frontend.url, "/v1/completions", {"decode_mode": "ar"}, annotate=True)


@pytest.fixture(scope="module")
def second_worker(store, frontend, workers, tmp_path_factory):
    workers.append(Worker(tmp_path_factory.mktemp("logs") / "worker1.log", store, WORKER_FLAGS))
    wait_registered(frontend, store, 2, workers[1].log)
    return workers[1]


def _served(w: Worker) -> float:
    """Requests the worker's endpoint took (Dynamo's counter; its health checks may add some)."""
    return w.metric("dynamo_component_requests_total")


def test_requests_spread_over_two_workers_and_answer_alike(direct, frontend, workers,
                                                           second_worker):
    want = _openai(direct.url, "/v1/completions", DISTINCT, annotate=False)
    before = [_served(w) for w in workers]
    for _ in range(6):
        assert _openai(frontend.url, "/v1/completions", DISTINCT, annotate=True) == want
    gained = [_served(w) - b for w, b in zip(workers, before)]
    assert all(g >= 1 for g in gained) and sum(gained) >= 6, gained


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def test_nothing_listens_or_is_advertised_off_loopback(store, frontend, workers, second_worker):
    advertised, event_ports = set(), set()
    for path in store.rglob("*"):
        if path.is_file():
            text = path.read_text()
            advertised |= set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text))
            if "EventChannel" in text:
                event_ports |= {int(p) for p in re.findall(r"tcp://[\d.]+:(\d+)", text)}
    assert advertised and all(_loopback(a) for a in advertised), advertised
    assert event_ports                       # each worker's KV-metrics channel
    assert all(_loopback(a) for a, _ in listening_addresses(frontend.proc.pid))
    for w in workers:
        # two wildcard binds whatever the host variables say, each advertised on loopback (a
        # deployment keeps them behind its firewall, docs/scale-out.md): torch's TCPStore
        # (SGLang's --nccl-port), and Dynamo 1.6.1's ZMQ event publisher (tcp://0.0.0.0:0 in its
        # runtime; DYN_EVENT_PLANE_HOST only sets the address it advertises)
        off = {(a, p) for a, p in listening_addresses(w.proc.pid)
               if not _loopback(a) and p != w.nccl and p not in event_ports}
        assert not off, off

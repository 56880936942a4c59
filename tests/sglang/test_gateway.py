"""SGLang's gateway (``smg launch``) in front of two ``nemotron-sglang serve`` workers, all on
loopback: every decode mode per request through it (a top-level field on the OpenAI routes,
``custom_params`` inside ``/generate``), equal to a worker asked directly; bad fields still a 400
naming them; streams that end; a stream dropped by its client frees its worker's KV; requests
spread over both workers; and nothing listens or is advertised off loopback but torch's
distributed store (``docs/scale-out.md``)."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nemotron_sglang.core.modes import SERVING_MODES
from nemotron_sglang.testing.cpu_server import CPUServer, free_port, listening_addresses
import doc_commands
from doc_commands import commands_for
from sglang_server import Server, used_tokens

SMG = Path(sys.executable).parent / "smg"
PROMPT = "The number after 41 is"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("gateway")
    out = []
    try:
        for i in range(2):
            nccl = free_port()         # torch's distributed store: the one wildcard listener
            out.append((Server(None, logs / f"worker{i}.log", ["--nccl-port", str(nccl)],
                               command=[sys.executable, "-m", "nemotron_sglang", "serve"]),
                        nccl))
        yield out
    finally:
        for w, _ in out:
            w.stop()


@pytest.fixture(scope="module")
def gateway(workers, tmp_path_factory):
    assert SMG.exists(), f"{SMG}: smg is installed by scripts/install.sh (the gateway extra)"
    g = CPUServer(None, tmp_path_factory.mktemp("smg") / "smg.log",
                  ["--worker-urls", *[w.url for w, _ in workers], "--policy", "round_robin",
                   "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())],
                  command=[str(SMG), "launch", "--host", "127.0.0.1"])
    try:
        deadline = time.time() + 120          # healthy before it has registered the workers
        while len(_get(g.url + "/workers")["workers"]) < 2:
            assert time.time() < deadline, g.log.read_text()[-2000:]
            time.sleep(0.5)
        yield g
    finally:
        g.stop()


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def test_nothing_listens_or_is_advertised_off_loopback(workers, gateway):
    for w in _get(gateway.url + "/workers")["workers"]:
        host = w["url"].split("//", 1)[1].rsplit(":", 1)[0]
        assert _loopback(host), w["url"]
    assert all(_loopback(a) for a, _ in listening_addresses(gateway.proc.pid))
    for w, nccl in workers:
        listening = listening_addresses(w.proc.pid)
        assert (("127.0.0.1", w.port)) in listening
        # torch's TCPStore (SGLang's --nccl-port) binds the wildcard whatever the host; a
        # deployment keeps that port behind its firewall (docs/scale-out.md)
        off = {(a, p) for a, p in listening if not _loopback(a) and p != nccl}
        assert not off, off


def _completion(url: str, **fields) -> dict:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(
        {"model": "nld", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, **fields}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read().decode())


@pytest.mark.parametrize("mode", SERVING_MODES)
def test_every_mode_through_the_gateway_equals_the_worker(workers, gateway, mode):
    direct = _completion(workers[0][0].url, decode_mode=mode)
    for _ in range(2):                       # round robin: once on each worker
        got = _completion(gateway.url, decode_mode=mode)
        assert got["choices"][0]["text"] == direct["choices"][0]["text"], mode
        assert got["usage"]["decode_mode"].split("(")[0] == mode
        assert got["usage"]["forwards"] == direct["usage"]["forwards"]
    ids = workers[0][0].post_json("/generate", {"text": PROMPT, "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "custom_params": {"decode_mode": mode}}})
    through = gateway.post_json("/generate", {"text": PROMPT, "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "custom_params": {"decode_mode": mode}}})
    assert through["output_ids"] == ids["output_ids"]
    assert through["meta_info"]["nld_mode"].split("(")[0] == mode


@pytest.mark.parametrize("route,body,field", [
    ("/v1/completions", {"decode_mode": "bogus"}, "decode_mode"),
    ("/v1/completions", {"decode_mode": "linear_spec", "block_length": 3}, "block_length"),
    ("/v1/completions", {"decode_mode": "ar", "max_steps": 2}, "max_steps"),
    ("/v1/completions", {"decode_mode": "diffusion", "threshold": 2, "stream": True}, "threshold"),
    ("/generate", {"decode_mode": "diffusion", "threshold": -1}, "threshold"),
])
def test_a_bad_field_is_a_400_naming_it(gateway, route, body, field):
    if route == "/generate":
        payload = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4,
                                                       "custom_params": body}}
    else:
        payload = {"model": "nld", "prompt": PROMPT, "max_tokens": 4, **body}
    status, text = gateway.post(route, payload)
    assert status == 400 and field in text, (status, text[:500])


def test_the_docs_gateway_lines(workers, gateway):
    """docs/scale-out.md's curl lines for the gateway (``doc_commands``), run as written against
    this gateway: the server's answer and NLD's usage fields through it."""
    lines = commands_for("gateway")
    assert lines
    for cmd in lines:
        doc_commands.check(cmd, *doc_commands.run(cmd, gateway.url))


def test_a_stream_through_the_gateway_ends_cleanly(workers, gateway):
    direct = _completion(workers[1][0].url, decode_mode="linear_spec")["choices"][0]["text"]
    status, text = gateway.post("/v1/completions", {
        "model": "nld", "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
        "decode_mode": "linear_spec", "stream": True})
    assert status == 200 and text.rstrip().endswith("data: [DONE]"), text[-500:]
    chunks = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c.get("choices")) == direct
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" or \
        any(c["choices"][0].get("finish_reason") for c in chunks if c.get("choices"))


def _counter(worker, name: str) -> float:
    """A Prometheus counter of ``worker``'s ``/metrics``, summed over its labels."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def _requests_served(worker) -> float:
    return _counter(worker, "nemotron_sglang_requests_total")


def test_requests_spread_over_both_workers(workers, gateway):
    before = [_requests_served(w) for w, _ in workers]
    for _ in range(4):
        _completion(gateway.url, decode_mode="ar", max_tokens=2)
    gained = [_requests_served(w) - b for (w, _), b in zip(workers, before)]
    assert all(g >= 1 for g in gained) and sum(gained) == 4, gained


def test_a_stream_its_client_drops_frees_the_kv_on_its_worker(workers, gateway):
    """A long stream dropped after its first chunk: its worker aborts it (SGLang's aborted-request
    counter), both workers' KV is idle again, and they serve the next request."""
    aborted = sum(_counter(w, "sglang:num_aborted_requests_total") for w, _ in workers)
    host, port = "127.0.0.1", gateway.port
    body = json.dumps({"model": "nld", "prompt": PROMPT, "max_tokens": 3000, "temperature": 0,
                       "ignore_eos": True, "decode_mode": "ar", "stream": True}).encode()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n%b" % (host.encode(), len(body), body))
        got = b""
        while b"data: {" not in got:
            got += s.recv(4096)
        assert b" 200 " in got.split(b"\r\n", 1)[0], got[:200]
        busy = sum(used_tokens(w) for w, _ in workers)
    assert busy > 0                       # it was running when the client left
    deadline = time.time() + 60
    while sum(used_tokens(w) for w, _ in workers):
        assert time.time() < deadline, "a dropped stream kept its KV"
        time.sleep(0.5)
    assert sum(_counter(w, "sglang:num_aborted_requests_total") for w, _ in workers) \
        == aborted + 1
    assert _completion(gateway.url, decode_mode="ar", max_tokens=2)["usage"]["completion_tokens"]

"""The serving round through the real SGLang server on the trained fixture, page size 1 and 4.

- Each request runs core's passes exactly: its tokens, forwards, cycles and acceptance equal
  core's for the same prompt, with no re-encode: linear_spec 2 forwards per cycle, quadratic_spec
  1 (+ its first drafting pass), ar 1 forward and 1 round per token. The fixture's LoRA changes
  some prompts' drafts, so a server without the adapter fails this test.
- The KV the round keeps is exactly the committed text's (equal outputs prove its content) and
  every path ends idle (``/v1/loads`` 0): length, EOS, stop strings, stop token ids, a stream
  whose client goes away, a flush.
- Under KV pressure (``--max-total-tokens`` below what the requests need together) requests wait
  for KV, still equal core, and the server ends idle.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest
import torch

from nemotron_sglang.core.weights import load_model
from round_checks import (FIXTURE, MAX_NEW, assert_counts_equal_core, core_results,
                          fixture_prompts, wait_idle)
from sglang_server import Server

pytest.importorskip("sglang")

SPEC_MODES = ("ar", "linear_spec", "quadratic_spec", "diffusion")


@pytest.fixture(scope="module")
def core():
    return load_model(FIXTURE, dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts():
    return fixture_prompts(8)


@pytest.fixture(scope="module")
def want(core, prompts):
    return {m: core_results(m, prompts, model=core) for m in SPEC_MODES}


@pytest.fixture(scope="module", params=[1, 4], ids=["page1", "page4"])
def server(request, tmp_path_factory):
    s = Server(FIXTURE, tmp_path_factory.mktemp("logs") / f"round{request.param}.log",
               ["--dllm-algorithm", "NemotronTriMode", "--max-running-requests", "8",
                "--page-size", str(request.param)])
    yield s
    s.stop()


def _generate(server, ids, max_new=MAX_NEW, decode_mode=None, **extra) -> dict:
    sp = {"max_new_tokens": max_new, "temperature": 0, **extra}
    if decode_mode is not None:
        sp["custom_params"] = {"decode_mode": decode_mode}
    status, body = server.post("/generate", {"input_ids": ids, "sampling_params": sp})
    assert status == 200, body
    return json.loads(body)


def test_lora_changes_some_drafts(core, prompts, want):
    """The test below can catch a lost adapter: without it core's linear_spec differs."""
    without = core_results("linear_spec", prompts, use_lora=False, model=core)
    assert [w.output_ids for w in without] == [w.output_ids for w in want["linear_spec"]]
    assert [w.forwards for w in without] != [w.forwards for w in want["linear_spec"]]


def test_each_request_runs_cores_passes_alone_and_mixed(server, prompts, want):
    for mode in SPEC_MODES:                              # one at a time
        got = _generate(server, prompts[4], decode_mode=mode)
        assert_counts_equal_core(got, want[mode][4], mode)
    results: dict = {}

    def worker(k, mode, i):
        results[k] = (mode, i, _generate(server, prompts[i], decode_mode=mode))

    jobs = [(m, i) for i in range(len(prompts)) for m in SPEC_MODES]
    threads = [threading.Thread(target=worker, args=(k, m, i)) for k, (m, i) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == len(jobs)
    for mode, i, got in results.values():               # mixed rounds: the same per request
        assert_counts_equal_core(got, want[mode][i], mode)
    assert wait_idle(server) == 0


def test_server_tpf_equals_cores(server, prompts, want):
    for mode in ("linear_spec", "quadratic_spec", "diffusion"):
        tokens = forwards = 0
        for ids in prompts:
            meta = _generate(server, ids, decode_mode=mode)["meta_info"]
            tokens += meta["completion_tokens"]
            forwards += meta["nld_forwards"][-1]
        core_tpf = (sum(len(w.output_ids) for w in want[mode]) /
                    sum(w.forwards for w in want[mode]))
        assert tokens / forwards == pytest.approx(core_tpf, rel=1e-9), mode


@pytest.mark.parametrize("mode", SPEC_MODES)
def test_every_ending_leaves_the_kv_idle(server, prompts, want, mode):
    ids, full = prompts[1], want[mode][1].output_ids
    # length, mid-block
    got = _generate(server, ids, max_new=7, decode_mode=mode)
    assert got["output_ids"] == full[:7] and got["meta_info"]["finish_reason"]["type"] == "length"
    assert wait_idle(server) == 0
    # a stop token id from the middle of the output: cut there, the rest of the round dropped
    assert len(full) > 16
    stop_id = full[10]
    got = _generate(server, ids, decode_mode=mode, stop_token_ids=[stop_id])
    cut = full.index(stop_id) + 1
    assert got["output_ids"][:cut] == full[:cut]
    assert got["meta_info"]["finish_reason"]["type"] == "stop"
    assert wait_idle(server) == 0
    # a stop string
    text = json.loads(server.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": MAX_NEW, "temperature": 0, "custom_params": {"decode_mode": mode}}})[1])
    stop = text["text"][12:16]
    got = json.loads(server.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": MAX_NEW, "temperature": 0, "stop": [stop],
        "custom_params": {"decode_mode": mode}}})[1])
    assert got["text"] == text["text"][:text["text"].index(stop)]
    assert wait_idle(server) == 0
    # a streaming client that goes away after its first chunk
    body = json.dumps({"input_ids": ids, "stream": True, "sampling_params": {
        "max_new_tokens": 400, "temperature": 0, "ignore_eos": True,
        "custom_params": {"decode_mode": mode}}}).encode()
    req = urllib.request.Request(server.url + "/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.readline()
    assert wait_idle(server, timeout=60) == 0
    # a flush, then the same request again: the KV left behind was the committed text's
    assert server.post("/flush_cache", {})[0] == 200
    assert _generate(server, ids, decode_mode=mode)["output_ids"] == full
    assert wait_idle(server) == 0


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    # six requests of 13-89 prompt + 96 new tokens need ~900 slots with their canvases: 320
    # hold two or three, so the requests run out of KV while running (measured: 5-17 retractions
    # per burst, in 3 of 3 bursts; without the hook SGLang's idle check killed the server)
    s = Server(FIXTURE, tmp_path_factory.mktemp("logs") / "tight.log",
               ["--dllm-algorithm", "NemotronTriMode", "--max-running-requests", "6",
                "--max-total-tokens", "320"])
    yield s
    s.stop()


def test_kv_pressure_retracts_and_stays_exact(tight, core):
    """Requests arriving together run out of KV for their canvases: the newest is retracted,
    parked and re-prefilled later (``nld_reprefills``); every output still equals core's.
    Whether a burst runs short depends on how its requests arrive (one that arrives late waits
    for room instead), so up to three bursts are sent; every burst must be exact and end idle,
    and one of them must have retracted."""
    prompts = fixture_prompts(6)
    modes = [SPEC_MODES[k % 4] for k in range(6)]
    want = [core_results(m, [p], max_new=96, model=core)[0] for m, p in zip(modes, prompts)]
    reprefills = []
    for burst in range(3):
        results: dict = {}
        start = threading.Barrier(6)

        def worker(k):
            start.wait()
            results[k] = _generate(tight, prompts[k], max_new=96, decode_mode=modes[k])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert len(results) == 6, f"burst {burst}"
        for k in range(6):
            assert results[k]["output_ids"] == want[k].output_ids, (burst, modes[k])
        assert wait_idle(tight) == 0, f"burst {burst}"
        reprefills.append(sum(r["meta_info"]["nld_reprefills"][-1] for r in results.values()))
        if reprefills[-1]:
            break
    assert reprefills[-1] >= 1, f"no burst ran short of KV: re-prefills per burst {reprefills}"
    assert "retracted request" in tight.log.read_text()

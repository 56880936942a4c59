"""The serving round through the real SGLang server on the trained fixture, page size 1 and 4.

- Each request runs core's passes exactly: its tokens, forwards, cycles and acceptance equal
  core's for the same prompt, with no re-encode: linear_spec 2 forwards per cycle, quadratic_spec
  1 (+ its first drafting pass), ar 1 forward and 1 round per token. The fixture's LoRA changes
  some prompts' drafts, so a server without the adapter fails this test.
- The KV the round keeps is exactly the committed text's (equal outputs prove its content) and
  every path ends idle (``/v1/loads`` 0): length, EOS, stop strings, stop token ids, a stream
  whose client goes away, a flush.
- ``/abort_request`` by rid, mid-generation, streamed and not, in every mode: the request ends
  with finish reason ``abort``, the requests beside it still equal core, the server ends idle.
- Core finishing first (an infill region complete, SGLang's stop rules would go on:
  ``canvas_round.InfillDone``): core's tokens, finish reason ``stop`` with no match, idle.
- ``auto`` without a cost table (the YAML sets only ``auto_max_batch: 2``): a lone request runs
  core's linear_spec exactly; requests sent together, more than two to a round, run ar rounds
  (and still equal core).
- Under KV pressure (``--max-total-tokens`` below what the requests need together, page size 1
  and 4) requests are retracted and wait for KV, still equal core, and the server ends idle; an
  abort reaches a request while it is parked; a lone request that outgrows the whole pool ends
  with an abort naming the pool (the server lives on, idle).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest
import torch

from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.weights import load_model
from round_checks import (FIXTURE, MAX_NEW, abort_rid, assert_counts_equal_core, core_results,
                          fixture_prompts, post_generate, stream_chunks, wait_idle,
                          wait_used_above)
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


AUTO_MAX_BATCH = 2        # auto's switch point without a cost table (the YAML's only key)


@pytest.fixture(scope="module", params=[1, 4], ids=["page1", "page4"])
def server(request, tmp_path_factory):
    yaml = tmp_path_factory.mktemp("yaml") / "tri_mode.yaml"
    yaml.write_text(f"auto_max_batch: {AUTO_MAX_BATCH}\n")
    s = Server(FIXTURE, tmp_path_factory.mktemp("logs") / f"round{request.param}.log",
               ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config", str(yaml),
                "--max-running-requests", "8", "--page-size", str(request.param)])
    s.page_size = request.param
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
            forwards += meta["nld_forwards"]
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


ABORTED = 1500     # ignore_eos tokens of a request aborted mid-generation: it cannot finish first


def test_abort_request_mid_generation_frees_the_kv(server, core, prompts, want):
    """``/abort_request`` with the rid of a running request, in every mode. Alone and not
    streamed: sent once the request holds KV beyond its prompt and a canvas (it has committed
    output). Streamed, beside a finishing request of every mode: sent after two chunks. Each
    aborted request ends with ``abort``; the others equal core; the KV returns to idle; the
    same prompts then decode as core's (no KV left behind)."""
    assert wait_idle(server) == 0
    block, page = core.config.block_size, server.page_size
    for k, mode in enumerate(SPEC_MODES):
        ids, rid, out = prompts[k], f"abort-{mode}-{server.page_size}-{time.monotonic_ns()}", {}
        t = threading.Thread(target=lambda: out.update(r=post_generate(
            server, ids, ABORTED, mode, rid=rid, ignore_eos=True)))
        t.start()
        floor = len(ids) + block + 2 * page
        assert wait_used_above(server, floor) > floor, mode
        abort_rid(server, rid)
        t.join(timeout=120)
        status, got = out["r"]
        assert status == 200 and got["meta_info"]["finish_reason"]["type"] == "abort", got
        assert wait_idle(server) == 0, mode
    streamed, finished = {}, {}

    def victim(mode, ids):
        rid = f"abort-stream-{mode}-{server.page_size}-{time.monotonic_ns()}"
        chunks = streamed[mode] = []
        for c in stream_chunks(server, {"input_ids": ids, "rid": rid, "sampling_params": {
                "max_new_tokens": ABORTED, "temperature": 0, "ignore_eos": True,
                "custom_params": {"decode_mode": mode}}}):
            chunks.append(c)
            if len(chunks) == 2:
                abort_rid(server, rid)

    def survivor(mode, i):
        finished[mode] = post_generate(server, prompts[i], MAX_NEW, mode)

    threads = [threading.Thread(target=f, args=(m, a)) for k, m in enumerate(SPEC_MODES)
               for f, a in ((victim, prompts[k]), (survivor, 4 + k))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for k, mode in enumerate(SPEC_MODES):
        chunks = streamed[mode]
        assert len(chunks) >= 2 and chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
        assert chunks[-1]["meta_info"]["completion_tokens"] < ABORTED, mode
        status, got = finished[mode]
        assert status == 200, got
        assert_counts_equal_core(got, want[mode][4 + k], mode)
    assert wait_idle(server) == 0
    for k, mode in enumerate(SPEC_MODES):
        status, got = post_generate(server, prompts[k], MAX_NEW, mode)
        assert status == 200 and got["output_ids"] == want[mode][k].output_ids, mode
    assert wait_idle(server) == 0


def test_core_finishing_an_infill_first_ends_the_request(server, core, prompts, want):
    """A diffusion canvas (infill) whose region core completes while SGLang's stop rules would
    go on (``max_new_tokens`` above the region, no EOS in it): the request ends there with
    core's tokens and finish reason ``stop`` without a match (``InfillDone``), no re-prefill,
    streamed or not, beside a running linear_spec request that still equals core; then idle."""
    assert wait_idle(server) == 0
    mask, eos = core.config.mask_token_id, core.config.eos_token_id
    cases = []
    for ids in prompts:
        canvas = (mask, mask, ids[-1], mask, mask)       # a kept token between masked slots
        (w,) = generate(core, [Request(ids, "diffusion", DecodeParams(max_new_tokens=MAX_NEW,
                                                                     canvas=canvas))])
        if eos not in w.output_ids:
            cases.append((ids, canvas, w.output_ids))
    assert len(cases) >= 2, "every infill of the prompts holds an EOS: nothing for core to end"
    for stream in (False, True):
        ids, canvas, out = cases[stream]
        assert len(out) == len(canvas) < MAX_NEW
        side: dict = {}
        t = threading.Thread(target=lambda: side.update(r=post_generate(
            server, prompts[6], MAX_NEW, "linear_spec")))
        t.start()
        custom = {"decode_mode": "diffusion", "canvas": list(canvas)}
        if stream:
            chunks = list(stream_chunks(server, {"input_ids": ids, "sampling_params": {
                "max_new_tokens": MAX_NEW, "temperature": 0, "custom_params": custom}}))
            got = chunks[-1]                  # SGLang's default stream: cumulative output_ids
        else:
            status, got = post_generate(server, ids, MAX_NEW, custom=custom)
            assert status == 200, got
        t.join(timeout=300)
        meta = got["meta_info"]
        assert got["output_ids"] == out, stream
        assert meta["finish_reason"] == {"type": "stop", "matched": None}, meta
        assert meta["nld_reprefills"] == 0 and meta["completion_tokens"] == len(out)
        assert_counts_equal_core(side["r"][1], want["linear_spec"][6], "linear_spec")
        assert wait_idle(server) == 0, stream


def test_lone_auto_without_a_table_runs_linear_spec(server, core, prompts, want):
    """No cost table: ``auto`` runs linear_spec at the request's block while a round holds at
    most ``auto_max_batch`` requests, so a lone request is core's linear_spec exactly (tokens,
    forwards, cycles, acceptance)."""
    assert wait_idle(server) == 0
    status, got = post_generate(server, prompts[3], MAX_NEW, "auto")
    assert status == 200, got
    assert got["meta_info"]["nld_mode"] == f"auto(linear_spec/{core.config.block_size})"
    assert_counts_equal_core(got, want["linear_spec"][3], "linear_spec")


def test_auto_runs_ar_in_rounds_above_its_switch_point(server, core, prompts, want):
    """Six ``auto`` requests sent together: their first rounds hold more than
    ``auto_max_batch`` requests, so each runs ar there (its reported mode lists ar rounds);
    lossless either way, each equals core's ar."""
    assert wait_idle(server) == 0
    batch = prompts[:6]
    status, text = server.post("/generate", {"input_ids": batch, "sampling_params": {
        "max_new_tokens": MAX_NEW, "temperature": 0, "custom_params": {"decode_mode": "auto"}}},
        timeout=600)
    assert status == 200, text
    for got, ar in zip(json.loads(text), want["ar"][:6]):
        assert got["output_ids"] == ar.output_ids
        mode = got["meta_info"]["nld_mode"]
        assert mode.startswith("auto(") and "ar" in mode[5:-1].split(","), mode
    assert wait_idle(server) == 0


@pytest.fixture(scope="module", params=[1, 4], ids=["page1", "page4"])
def tight(request, tmp_path_factory):
    # six requests of 13-89 prompt + 96 new tokens need ~900 slots with their canvases: 320
    # hold two or three, so the requests run out of KV while running (measured: 5-17 retractions
    # per burst, in 3 of 3 bursts; without the hook SGLang's idle check killed the server)
    s = Server(FIXTURE, tmp_path_factory.mktemp("logs") / f"tight{request.param}.log",
               ["--dllm-algorithm", "NemotronTriMode", "--max-running-requests", "6",
                "--max-total-tokens", "320", "--page-size", str(request.param)])
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
        reprefills.append(sum(r["meta_info"]["nld_reprefills"] for r in results.values()))
        if reprefills[-1]:
            break
    assert reprefills[-1] >= 1, f"no burst ran short of KV: re-prefills per burst {reprefills}"
    assert "retracted request" in tight.log.read_text()


def test_an_abort_reaches_a_parked_request(tight, core):
    """A request retracted under KV pressure waits in the plugin's parked list, where SGLang's
    ``abort_request`` never looks: aborted there (``retraction.abort_parked``), it ends with
    finish reason ``abort`` and never runs again; the others still equal core; idle after. Up
    to three bursts, until an abort lands while its request is parked (the log says so)."""
    prompts = fixture_prompts(6)
    modes = [SPEC_MODES[k % 4] for k in range(6)]
    want = [core_results(m, [p], max_new=96, model=core)[0] for m, p in zip(modes, prompts)]
    hit = False
    for burst in range(3):
        tag = f"park{burst}-{time.monotonic_ns()}"
        rids = [f"{tag}-{k}" for k in range(6)]
        results: dict = {}
        start = threading.Barrier(6)

        def worker(k):
            start.wait()
            results[k] = post_generate(tight, prompts[k], 96, modes[k], rid=rids[k])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        aborted, t0 = None, time.time()
        while aborted is None and any(t.is_alive() for t in threads) and time.time() - t0 < 300:
            found = re.findall(rf"retracted request ({tag}-\d)", tight.log.read_text())
            if found:
                aborted = found[0]
                abort_rid(tight, aborted)
            time.sleep(0.01)
        for t in threads:
            t.join(timeout=400)
        assert len(results) == 6, f"burst {burst}"
        for k in range(6):
            status, got = results[k]
            assert status == 200, got
            if rids[k] == aborted:
                assert got["meta_info"]["finish_reason"]["type"] == "abort", got["meta_info"]
            else:
                assert got["output_ids"] == want[k].output_ids, (burst, modes[k])
        assert wait_idle(tight) == 0, f"burst {burst}"
        log = tight.log.read_text()
        if aborted and f"aborted parked request {aborted}" in log:
            hit = True
            after = log.split(f"aborted parked request {aborted}", 1)[1]
            assert f"retracted request {aborted}" not in after, "the aborted request ran again"
            break
    assert hit, "no abort landed while its request was parked in 3 bursts"


def test_a_lone_request_that_outgrows_the_pool_is_aborted(tight, core):
    """One request whose prompt plus output outgrow the whole pool: once its next canvas cannot
    fit and nothing else holds KV, it ends with an abort naming the pool (SGLang's idle check
    killed the server here before); the server then serves the next request exactly, idle."""
    assert wait_idle(tight) == 0
    prompt = max(fixture_prompts(6), key=len)
    status, got = post_generate(tight, prompt, 400, "linear_spec", ignore_eos=True)
    text = json.dumps(got)
    assert "KV cache pool too small" in text, (status, text[:2000])
    assert wait_idle(tight) == 0
    small = fixture_prompts(6)[0]
    want = core_results("ar", [small], max_new=16, model=core)[0]
    status, got = post_generate(tight, small, 16, "ar")
    assert status == 200, got
    assert got["output_ids"] == want.output_ids
    assert wait_idle(tight) == 0

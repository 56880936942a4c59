"""A burst against ``nemotron-sglang serve`` (embedded default, CPU): mixed decode modes, streaming
and not, with clients that go away early; KV must return to idle afterwards. Plus stop strings in
the modes that commit several tokens per round.

One server (``--max-running-requests 8``), started through the CLI like a user would.
- Burst: 24 concurrent ``/v1/completions`` from threads through the ``openai`` client, modes
  ar / diffusion / linear_spec / auto in turn, 4 of the 18 finishing ones streamed. Six requests
  end early: three streams closed by their client after the first chunk, three non-streaming
  ``/generate`` requests cancelled through SGLang's ``/abort_request`` (sent every 0.3 s until the
  request returns, running or still queued; 1500 ignore_eos tokens cannot finish first, so no
  outcome depends on how fast the server is). All 18 others must finish
  with 200 and the plugin's usage fields; SGLang must count six aborts
  (``sglang:num_aborted_requests_total``) and ``GET /v1/loads`` must show ``num_used_tokens`` back
  at its idle value (0: the radix cache is off for NemotronTriMode and evictable tokens never count
  as used, see shared/reference/sglang_openai_surface.md §5) within a bounded time, and
  ``/health`` must answer 200.
- Stop strings: a substring from the middle of an unconstrained greedy output, sent as ``stop``,
  must cut the text right before its first occurrence with ``finish_reason == "stop"`` in ``ar``
  and ``linear_spec`` (lossless, so the same greedy text) and in ``diffusion`` (its own greedy
  text; it commits a whole block per round), streamed and not.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request

import pytest

from sglang_server import Server, loads, used_tokens

pytest.importorskip("sglang")
openai = pytest.importorskip("openai")

MODES = ("ar", "diffusion", "linear_spec", "auto")
PROMPTS = ("The number after 41 is", "Hello world", "Once upon a time", "List three primes:",
           "def f(x):", "A B C D")
IDLE_USED_TOKENS = 0
ABORT_STREAM = {1, 6, 11}          # closed after the first chunk
ABORT_RID = {3, 12, 18}            # non-stream, cancelled with /abort_request
LONG = 1500                        # max_tokens (ignore_eos) of the requests that are cut off:
                                   # long enough that none can finish before its abort arrives
                                   # (200 did: linear_spec serves ~350 tok/s alone here)
SHORT = 16                         # max_tokens of the requests that finish


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["NEMOTRON_SGLANG_CACHE"] = str(cache)
    try:
        s = Server(None, tmp_path_factory.mktemp("logs") / "burst.log",
                   ["--max-running-requests", "8"],
                   command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    finally:
        del os.environ["NEMOTRON_SGLANG_CACHE"]
    yield s
    s.stop()


def _client(server, timeout: float = 120.0):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=timeout,
                         max_retries=0)


def _aborted_total(server) -> float:
    """SGLang's ``sglang:num_aborted_requests_total``: aborts the tokenizer manager sent to the
    scheduler (``serve`` enables metrics)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(None, 1)[-1]) for line in text.splitlines()
               if line.startswith("sglang:num_aborted_requests_total"))


def _check_usage(usage, mode: str) -> None:
    extra = usage.model_extra or {}
    assert usage.completion_tokens > 0
    assert extra["decode_mode"] == mode or (mode == "auto" and
                                             extra["decode_mode"].startswith("auto(")), extra
    assert extra["forwards"] > 0, extra
    assert extra["tokens_per_forward"] == pytest.approx(usage.completion_tokens /
                                                        extra["forwards"], abs=1e-3)
    # ar reports no acceptance: null in a plain response, left out of a stream's usage chunk
    if extra["decode_mode"] == "ar":
        assert extra.get("acceptance_length") is None, extra
    elif extra["decode_mode"] == "diffusion" or "linear_spec" in extra["decode_mode"]:
        assert extra["acceptance_length"] > 0, extra


def _cancelled(server, k: int, prompt: str, mode: str) -> tuple:
    """A non-streaming request cancelled by its rid; (kind, finish reason or error text)."""
    rid = f"burst-{k}-{os.getpid()}-{time.monotonic_ns()}"
    done = threading.Event()

    def abort():
        while not done.wait(0.3):
            server.post("/abort_request", {"rid": rid}, timeout=10)
    threading.Thread(target=abort, daemon=True).start()
    try:
        status, body = server.post("/generate", {"text": prompt, "rid": rid, "sampling_params": {
            "max_new_tokens": LONG, "ignore_eos": True, "temperature": 0,
            "custom_params": {"decode_mode": mode}}}, timeout=120)
    finally:
        done.set()
    if status == 200:
        reason = json.loads(body)["meta_info"]["finish_reason"]
        return ("aborted-rid" if reason["type"] == "abort" else "finished-despite-abort", reason)
    return ("aborted-rid" if "abort" in body.lower() else "error", f"{status}: {body[:300]}")


def _job(server, client, k: int, results: dict) -> None:
    mode = MODES[k % len(MODES)]
    prompt = PROMPTS[k % len(PROMPTS)]
    body = dict(model="nld", prompt=prompt, temperature=0)
    t0 = time.monotonic()
    try:
        if k in ABORT_STREAM:
            stream = client.completions.create(
                **body, max_tokens=LONG, stream=True, extra_body={"decode_mode": mode,
                                                                  "ignore_eos": True})
            first = next(iter(stream))
            stream.close()                     # the client goes away mid-generation
            results[k] = ("aborted-stream", first is not None, time.monotonic() - t0)
        elif k in ABORT_RID:
            results[k] = (*_cancelled(server, k, prompt, mode), time.monotonic() - t0)
        elif k % 3 == 0:
            stream = client.completions.create(
                **body, max_tokens=SHORT, stream=True, stream_options={"include_usage": True},
                extra_body={"decode_mode": mode})
            chunks = list(stream)
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finals = [c for c in chunks if c.usage is not None]
            _check_usage(finals[-1].usage, mode)
            results[k] = ("ok-stream", text, time.monotonic() - t0)
        else:
            r = client.completions.create(**body, max_tokens=SHORT,
                                          extra_body={"decode_mode": mode})
            _check_usage(r.usage, mode)
            results[k] = ("ok", r.choices[0].text, time.monotonic() - t0)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        results[k] = ("error", f"{type(e).__name__}: {e}", time.monotonic() - t0)


def test_burst_with_early_disconnects_frees_kv(served):
    assert used_tokens(served) == IDLE_USED_TOKENS          # idle before
    aborted_before = _aborted_total(served)
    results: dict = {}
    peak = [0]
    stop_poll = threading.Event()

    def poll():
        while not stop_poll.is_set():
            try:
                peak[0] = max(peak[0], used_tokens(served))
            except OSError:
                pass
            stop_poll.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    client = _client(served)          # one connection pool, shared by the threads
    threads = [threading.Thread(target=_job, args=(served, client, k, results), daemon=True)
               for k in range(24)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    deadline = t_start + 150
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    t_burst = time.monotonic() - t_start
    stop_poll.set()
    poller.join(timeout=15)
    assert not any(t.is_alive() for t in threads), "burst clients still running after 150 s"

    kinds = {k: v[0] for k, v in results.items()}
    errors = {k: v for k, v in results.items() if v[0] == "error"}
    assert not errors, errors
    assert sorted(k for k, v in kinds.items() if v.startswith("aborted")) == \
        sorted(ABORT_STREAM | ABORT_RID), kinds
    done = [k for k, v in kinds.items() if v.startswith("ok")]
    assert len(done) == 18, kinds
    assert peak[0] > IDLE_USED_TOKENS                        # the poll saw the burst's KV

    # The six aborts reach the scheduler and KV goes back to idle.
    t_idle = time.monotonic()
    used = aborts = None
    while time.monotonic() - t_idle < 60:
        used, aborts = used_tokens(served), _aborted_total(served) - aborted_before
        if used == IDLE_USED_TOKENS and aborts >= len(ABORT_STREAM | ABORT_RID):
            break
        time.sleep(0.5)
    print(f"burst {t_burst:.1f} s, peak num_used_tokens {peak[0]}, idle and {aborts:g} aborts "
          f"{time.monotonic() - t_idle:.1f} s later; client times "
          f"{ {k: round(v[2], 1) for k, v in sorted(results.items())} }")
    assert used == IDLE_USED_TOKENS, f"num_used_tokens still {used} 60 s after the burst"
    assert aborts == len(ABORT_STREAM | ABORT_RID), f"{aborts} aborts sent to the scheduler"
    ranks = loads(served)["loads"]
    assert all(d["num_waiting_reqs"] == 0 for d in ranks), ranks
    with urllib.request.urlopen(served.url + "/health", timeout=10) as r:
        assert r.status == 200
    # and the server still serves every mode
    for mode in MODES:
        r = _client(served).completions.create(model="nld", prompt="Hello", max_tokens=4,
                                               temperature=0, extra_body={"decode_mode": mode})
        _check_usage(r.usage, mode)


def _stop_string(text: str) -> str | None:
    """A 3-character ASCII-alphanumeric/space substring from the middle of ``text`` whose first
    occurrence is where it was taken from (not at the very start)."""
    mid = len(text) // 2
    for start in sorted(range(1, max(1, len(text) - 2)), key=lambda i: abs(i - mid)):
        sub = text[start:start + 3]
        if len(sub) == 3 and all(c.isascii() and (c.isalnum() or c == " ") for c in sub) \
                and sub.strip() and text.find(sub) == start:
            return sub
    return None


_REFERENCES: dict = {}


def _reference(server, ref_mode: str) -> tuple[str, str, str]:
    """(prompt, unconstrained greedy text, stop string) for ``ref_mode``, found once."""
    if ref_mode not in _REFERENCES:
        client = _client(server)
        for prompt in PROMPTS:
            r = client.completions.create(model="nld", prompt=prompt, max_tokens=32,
                                          temperature=0, extra_body={"decode_mode": ref_mode})
            text = r.choices[0].text
            stop = _stop_string(text)
            if stop is not None:
                _REFERENCES[ref_mode] = (prompt, text, stop)
                break
        else:
            pytest.fail(f"no {ref_mode} greedy output with a usable ASCII substring")
    return _REFERENCES[ref_mode]


# ar and linear_spec share ar's greedy text (lossless); diffusion (4 tokens per round) its own
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode,ref_mode", [("ar", "ar"), ("linear_spec", "ar"),
                                           ("diffusion", "diffusion")])
def test_stop_string_cuts_before_it(served, mode, ref_mode, stream):
    prompt, full, stop = _reference(served, ref_mode)
    want = full[:full.find(stop)]
    client = _client(served)
    body = dict(model="nld", prompt=prompt, max_tokens=32, temperature=0, stop=[stop],
                extra_body={"decode_mode": mode})
    if stream:
        chunks = list(client.completions.create(**body, stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and
                   c.choices[0].finish_reason]
        finish = reasons[-1] if reasons else None
    else:
        r = client.completions.create(**body)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
    assert (text, finish) == (want, "stop"), (full, stop)

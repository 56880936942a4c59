"""What the serving-round tests share: the trained fixture's held-out prompts, core's results for
them, the comparison of a server's per-request counters with core's, KV polling, and requests
by rid: /generate, its stream, ``/abort_request``.

The trained fixture is used because its drafts are accepted (acceptance ~23 of 32 at block 32)
and its LoRA changes the drafts of some prompts: a server that lost the adapter, or re-encoded,
or ran an extra pass, reports different forwards or cycles than core, even where the greedy
text is the same."""

from __future__ import annotations

import json
import time
import urllib.request

import torch

from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.tokenizer import encode, load_tokenizer
from nemotron_sglang.core.weights import load_model
from nemotron_sglang.testing.corpus import examples
from sglang_server import used_tokens
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402

MAX_NEW = 48


def fixture_prompts(n: int = 8, seed: int = 1_000_000) -> list[list[int]]:
    tok = load_tokenizer(FIXTURE)
    return [encode(tok, e["prompt"]) for e in examples(seed, n)]


def core_results(mode: str, prompts: list[list[int]], max_new: int = MAX_NEW,
                 use_lora: bool = True, model=None):
    model = model if model is not None else load_model(FIXTURE, dtype=torch.float32)
    return generate(model, [Request(p, mode, DecodeParams(max_new_tokens=max_new,
                                                          use_lora=use_lora))
                            for p in prompts])


def assert_counts_equal_core(got: dict, want, mode: str) -> None:
    """A /generate response against core's Result for the same prompt: tokens, forwards,
    cycles and acceptance exactly, no re-encode, and each mode's forwards per cycle."""
    meta = got["meta_info"]
    last = {k: meta[k] for k in ("nld_forwards", "nld_cycles", "nld_cycle_tokens",
                                      "nld_rounds", "nld_reprefills")}
    n = len(got["output_ids"])
    assert got["output_ids"] == want.output_ids, mode
    assert (last["nld_forwards"], last["nld_cycles"]) == (want.forwards, want.cycles), (mode, last)
    if want.acceptance_length is not None:
        assert abs(last["nld_cycle_tokens"] / last["nld_cycles"] - want.acceptance_length) < 1e-9
    assert last["nld_reprefills"] == 0, last
    if mode == "ar":                  # 1 forward per token after the seed, 1 round per token
        assert last["nld_forwards"] == n - 1 and last["nld_rounds"] in (n - 1, n), last
    elif mode == "linear_spec":       # draft + verify
        assert last["nld_forwards"] == 2 * last["nld_cycles"], last
    elif mode == "quadratic_spec":    # 1 fused pass per cycle, plus the first drafting pass
        assert last["nld_forwards"] == last["nld_cycles"] + 1, last
    if mode != "diffusion":           # every spec / ar round completes a cycle
        assert last["nld_rounds"] <= max(1, last["nld_forwards"]) + 1, last


def wait_idle(server, timeout: float = 30.0) -> int:
    """``num_used_tokens`` once it reaches 0, or its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    used = used_tokens(server)
    while used != 0 and time.monotonic() < deadline:
        time.sleep(0.25)
        used = used_tokens(server)
    return used


def post_generate(server, ids, max_new: int = MAX_NEW, decode_mode=None, rid=None,
                  custom=None, **sampling) -> tuple[int, dict | str]:
    """A greedy /generate of ``ids``; (status, decoded body or the error text)."""
    sp = {"max_new_tokens": max_new, "temperature": 0, **sampling}
    custom = dict(custom or {}, **({"decode_mode": decode_mode} if decode_mode else {}))
    if custom:
        sp["custom_params"] = custom
    body = {"input_ids": ids, "sampling_params": sp, **({"rid": rid} if rid else {})}
    status, text = server.post("/generate", body, timeout=300)
    return status, (json.loads(text) if status == 200 else text)


def stream_chunks(server, body: dict):
    """The decoded ``data:`` chunks of a streamed /generate, as they arrive."""
    req = urllib.request.Request(server.url + "/generate",
                                 data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                yield json.loads(line[len("data:"):])


def abort_rid(server, rid: str) -> None:
    status, text = server.post("/abort_request", {"rid": rid}, timeout=30)
    assert status == 200, text


def wait_used_above(server, floor: int, timeout: float = 120.0) -> int:
    """Poll ``num_used_tokens`` until it exceeds ``floor``; its value then (or the last one)."""
    deadline = time.monotonic() + timeout
    used = used_tokens(server)
    while used <= floor and time.monotonic() < deadline:
        time.sleep(0.02)
        used = used_tokens(server)
    return used

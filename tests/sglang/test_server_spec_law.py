"""Sampled self-speculation through the real server keeps AR's exact law (``tests/spec_law.py``).

The trained fixture served by one tri-mode server (fp32); the same prompt, temperature, top-k,
block 2 and output length as core's law test (``tests/test_spec_law.py``, which also holds the
negative controls), each request with its own ``sampling_seed`` drawn from the test's seed (a
failure replays with ``NLD_TEST_SEED``). The first 5 output tokens of ``N[mode]`` requests, the
bonus token of an accepted draft among them, against the exact AR law enumerated from core's
model: one-sample chi-square at a false-alarm rate <= ``spec_law.FALSE_ALARM`` = 1e-4, whose power
against a 10 % error in acceptance at these N is >= 0.99 (computed from that rule's exact law
and asserted here too, so a changed fixture cannot silently weaken the test). The negative
control: a second server whose rule draws a rejected slot from p instead of the residual (the
mutation that earlier server and core law tests let through), patched into its processes by a
``sitecustomize``; the same test rejects it.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from spec_law import ALPHA, Oracle, ar_law, chi2_test, power, spec_law
from sglang_server import TRI_MODE, Server, tri_mode_server
from test_spec_law import LENGTH, MIN_POWER, N, PROMPT_TEXT, SPEC, TEMP, TOP_K, observed
from nemotron_sglang.core.tokenizer import load_tokenizer
from nemotron_sglang.core.weights import load_model
from nemotron_sglang.data import EMBEDDED

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def oracle():
    prompt = load_tokenizer(EMBEDDED).encode(PROMPT_TEXT).ids
    return Oracle(load_model(EMBEDDED, dtype=torch.float64), prompt, TEMP, TOP_K)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a request holds its prompt and a 32-slot canvas: 96 of them fit the 4096-token pool
    s = tri_mode_server(EMBEDDED, tmp_path_factory.mktemp("logs") / "spec_law.log", 96)
    yield s
    s.stop()


# residual -> p in every process of the broken server (the scheduler's decisions included)
BROKEN_RULE = """
from nemotron_sglang.core.decoding import sampling
sampling.residual_law = lambda p, q: p
"""


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    (folder / "sitecustomize.py").write_text(BROKEN_RULE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    s = Server(EMBEDDED, folder / "broken.log", TRI_MODE + ["--max-running-requests", "96"],
               env={"PYTHONPATH": path})
    yield s
    s.stop()


def sample(server, oracle, mode: str, n: int) -> list[tuple]:
    base = random.getrandbits(40)
    params = [{"max_new_tokens": LENGTH, "temperature": TEMP, "top_k": TOP_K,
               "sampling_seed": base + i,
               "custom_params": {"decode_mode": mode, "block_length": 2}} for i in range(n)]
    status, body = server.post("/generate", {"input_ids": [oracle.prompt] * n,
                                             "sampling_params": params}, timeout=1800)
    assert status == 200, body[:2000]
    eos = oracle.model.config.eos_token_id
    return [observed(r["output_ids"], eos) for r in json.loads(body)]


@pytest.mark.parametrize("mode", SPEC)
def test_self_spec_keeps_the_exact_ar_law_through_the_server(server, oracle, mode):
    ar = ar_law(oracle, LENGTH)
    sim, asym = power(ar, spec_law(oracle, mode, LENGTH, "under_10"), N[mode],
                      seed=random.getrandbits(32))
    assert min(sim, asym) >= MIN_POWER, (sim, asym)
    got = sample(server, oracle, mode, N[mode])
    p, df = chi2_test(got, ar)
    assert p >= ALPHA, (mode, p, df)


def test_a_seed_replays_a_sampled_self_spec_request(server, oracle):
    """The same ``sampling_seed`` gives the same tokens (what makes a failure replayable)."""
    for mode in SPEC:
        state = random.getstate()
        a = sample(server, oracle, mode, 4)
        random.setstate(state)
        assert sample(server, oracle, mode, 4) == a


def test_negative_control_a_broken_server_rule_is_rejected(broken_server, oracle):
    """The same test against the server whose rejected slots draw from p: rejected (its power
    at this N, from the broken rule's exact law, is >= 0.99)."""
    ar = ar_law(oracle, LENGTH)
    mode = "linear_spec"
    sim, asym = power(ar, spec_law(oracle, mode, LENGTH, "residual_p"), N[mode],
                      seed=random.getrandbits(32))
    assert min(sim, asym) >= MIN_POWER, (sim, asym)
    p, _ = chi2_test(sample(broken_server, oracle, mode, N[mode]), ar)
    assert p < ALPHA, p

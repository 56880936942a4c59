"""The server's ``diffusion`` against the independent FastDiffuser (``tests/diffusion_reference.py``:
the published rule over transformers' Ministral3, no code of core's strategies or model), on the
trained fixture (block 32, where threshold 0.9 commits several slots in one pass), through one
tri-mode server and one batched ``/generate`` call (fp32 server, fp64 reference):

- at thresholds 0 / 0.9 / 1, with and without a step budget (``max_steps`` 2), block 32, 16
  or 8, on fresh held-out corpus prompts (18 requests in one call): the server's tokens, finish
  reasons and forwards (``meta_info.nld_forwards``) equal the reference's;
- the output logprobs the server reports (``return_logprob``: each committed slot's log softmax
  in the pass that committed it, the seed's from the context or refresh pass) equal the
  reference's within 5e-4, the first token's included (a batch once lost it: SGLang's streamer
  advanced the logprob offset of a request whose round returned no token).

The mask id's share of the normaliser is below 1e-7 on this trained model: these logprobs cannot
tell a normaliser with the mask id from one without it.
"""

from __future__ import annotations

import json
import random

import pytest

import diffusion_reference as ref
from conftest import seed_of
from sglang_server import tri_mode_server
from nemotron_sglang.core.tokenizer import encode, load_tokenizer
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.testing.corpus import examples

pytest.importorskip("sglang")
pytest.importorskip("transformers")

THRESHOLDS = (0.0, 0.9, 1.0)
BUDGETS = (None, 2)
TOL = 5e-4           # fp32 server vs fp64 reference: logprobs measured up to 1.1e-4 apart
MARGIN = 1e-4        # decisions closer than this to flipping are not compared (``decidable``)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(requests (prompt, block, max_new, threshold, budget), the server's answers, the
    reference's traces): one server start, one batched call."""
    r = random.Random(seed_of(__name__))            # fresh per session, replayed by its seed
    tok = load_tokenizer(EMBEDDED)
    prompts = [encode(tok, e["prompt"]) for e in examples(1_000_000 + r.randrange(1 << 30), 3)]
    reqs = [(p, r.choice((8, 16, 32)), r.randint(20, 40), th, k)
            for p in prompts for th in THRESHOLDS for k in BUDGETS]
    params = []
    for _, block, max_new, th, k in reqs:
        custom = {"decode_mode": "diffusion", "threshold": th, "block_length": block}
        if k is not None:
            custom["max_steps"] = k
        params.append({"max_new_tokens": max_new, "temperature": 0, "custom_params": custom})
    server = tri_mode_server(EMBEDDED, tmp_path_factory.mktemp("logs") / "diff_ref.log",
                             max_running=len(reqs))
    try:
        status, body = server.post("/generate", {"input_ids": [q[0] for q in reqs],
                                                 "sampling_params": params,
                                                 "return_logprob": True}, timeout=600)
    finally:
        server.stop()
    assert status == 200, body
    got = json.loads(body)
    assert len(got) == len(reqs)
    net = ref.Ministral3Net(EMBEDDED)
    want = [ref.diffuse(net, p, max_new, block, th, k) for p, block, max_new, th, k in reqs]
    return reqs, got, want


def decidable(served):
    """The requests whose every decision is further than ``MARGIN`` from flipping in the
    reference (fp64): the fp32 server may decide a closer one the other way (a confidence of
    0.99999999 is 1.0 in fp32, and threshold 1 commits it; fp32 logprobs sit up to ~1e-4 from
    fp64 ones). Threshold 1 is compared only where decidable: its margin is 1 - the most
    confident slot's confidence, 2e-5 to 4e-5 on this confident model in one CI run (core's fp64
    test, tests/test_diffusion_reference.py, covers it exactly). Of thresholds 0 and 0.9, at
    least half of the requests and some of each, so the comparison is never empty."""
    reqs, got, want = served
    keep = [(q, g, w) for q, g, w in zip(reqs, got, want) if w.margin > MARGIN]
    margins = [(q[3], q[4], f"{w.margin:.2g}") for q, w in zip(reqs, want)]
    below_one = [q for q in reqs if q[3] < 1.0]
    kept_below_one = [q for q, _, _ in keep if q[3] < 1.0]
    assert 2 * len(kept_below_one) >= len(below_one), margins
    assert {q[3] for q in kept_below_one} == {t for t in THRESHOLDS if t < 1.0}, margins
    return keep


def test_server_tokens_and_forwards_equal_the_reference(served):
    reqs, _, want = served
    for q, g, w in decidable(served):
        where = q[1:]
        assert g["output_ids"] == w.tokens, where
        assert g["meta_info"]["finish_reason"]["type"] == w.finish_reason, where
        assert g["meta_info"]["nld_forwards"] == w.forwards, where
    # threshold 0.9 is neither 0 nor 1 here: some pass commits several slots, not all
    assert any(1 < n for q, w in zip(reqs, want) if q[3:] == (0.9, None)
               for c in w.commits for n in c)


def test_server_logprobs_equal_the_reference(served):
    for q, g, w in decidable(served):
        where = q[1:]
        lps = g["meta_info"]["output_token_logprobs"]
        assert [t for _, t, _ in lps] == g["output_ids"] == w.tokens, where
        assert len(w.logprobs) == len(w.tokens), where
        for i, ((x, _, _), y) in enumerate(zip(lps, w.logprobs)):
            assert abs(x - y) < TOL, (where, i, x, y)

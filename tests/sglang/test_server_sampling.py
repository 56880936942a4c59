"""Sampled requests through the real SGLang server (T > 0): ``ar`` draws from the model's
tempered softmax, truncation in every mode, a seed reproduces its output (self-speculation's
exact law through the server: ``test_server_spec_law.py``).

Distributions are chi-square tests on a random tiny checkpoint (vocab 512) at T = 0.35, where
the next-token law is spread over a few dozen tokens: one-sample for ``ar``'s first token against
core's exact softmax(logits / T) (and the same counts reject the untempered law).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from scipy import stats

from sglang_server import ckpt, core32, tri_mode_server  # noqa: F401
from nemotron_sglang.core.attention import CAUSAL
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.decoding.processors import truncate
from nemotron_sglang.core.kv_cache import PagedKVCache

pytest.importorskip("sglang")

PROMPT = [17, 400, 23, 5]
TEMP = 0.35


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    s = tri_mode_server(ckpt, tmp_path_factory.mktemp("logs") / "sampling.log", 32)
    yield s
    s.stop()


def sample(server, mode: str, n: int, max_new: int, seed: int | None = None, **feature
           ) -> list[list[int]]:
    params = {"max_new_tokens": max_new, "temperature": TEMP, "ignore_eos": True,
              "custom_params": {"decode_mode": mode}, **feature}
    if seed is not None:
        params["sampling_seed"] = seed
    status, body = server.post("/generate", {"input_ids": [PROMPT] * n,
                                             "sampling_params": [params] * n}, timeout=900)
    assert status == 200, body
    return [r["output_ids"] for r in json.loads(body)]


def first_token_law(model, temperature: float) -> torch.Tensor:
    c = model.config
    cache = PagedKVCache(num_layers=c.num_hidden_layers, num_kv_heads=c.num_key_value_heads,
                         head_dim=c.head_dim, num_pages=8, page_size=16, dtype=model.dtype)
    cache.add(0)
    batch = ForwardBatch.from_rows([PassRow(0, PROMPT, list(range(len(PROMPT))), 0, CAUSAL)],
                                   write_kv=True)
    logits = model(batch, cache)[-1].double()
    logits[c.mask_token_id] = float("-inf")
    return torch.softmax(logits / temperature, -1)


def one_sample_p(tokens: list[int], law: torch.Tensor) -> float:
    counts = Counter(tokens)
    n = len(tokens)
    big = [int(t) for t in torch.nonzero(law * n >= 5).squeeze(1)]
    obs = [counts.get(t, 0) for t in big] + [n - sum(counts.get(t, 0) for t in big)]
    exp = [float(law[t]) * n for t in big] + [n * (1 - float(law[big].sum()))]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


def test_ar_draws_from_the_tempered_softmax(server, core32):
    got = [o[0] for o in sample(server, "ar", 600, 1)]
    law = first_token_law(core32, TEMP)
    assert core32.config.mask_token_id not in got
    assert one_sample_p(got, law) > 1e-3
    assert one_sample_p(got, first_token_law(core32, 1.0)) < 1e-6     # the test can fail


TRUNCATION = {"top_k": 12, "top_p": 0.8, "min_p": 0.08}


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "diffusion"])
def test_top_k_top_p_min_p_draws_from_the_truncated_law(server, core32, mode):
    """The first token (ar's pick, a self-spec seed, a diffusion block's seed) follows core's
    truncated law — the rule ``test_processors_vs_sglang`` checks against SGLang's sampler."""
    law = first_token_law(core32, TEMP)
    n = law.shape[0]
    kept = truncate(law[None].float(), torch.tensor([12]), torch.tensor([0.8]),
                    torch.tensor([0.08]))[0].double()
    assert 2 < int((kept > 0).sum()) < int((law * 600 >= 5).sum())    # the limits bite
    got = [o[0] for o in sample(server, mode, 600, 1, **TRUNCATION)]
    assert all(kept[t] > 0 for t in got)
    assert one_sample_p(got, kept / kept.sum()) > 1e-3
    assert n == core32.config.vocab_size


def test_a_seed_reproduces_a_sampled_request(server):
    for mode in ("ar", "linear_spec", "diffusion"):
        a = sample(server, mode, 2, 8, seed=1234)
        b = sample(server, mode, 1, 8, seed=1235)
        assert a[0] == a[1], mode
        assert a[0] != b[0], mode


@pytest.mark.parametrize("mode", ["ar", "linear_spec", "quadratic_spec", "diffusion"])
def test_n_sampled_choices_are_independent_draws(server, core32, mode):
    """n > 1 at T > 0: the n choices of one request are separate draws (their first tokens
    follow the tempered law, they are not copies of one another); with a ``sampling_seed`` they
    share it and so the same tokens."""
    def choices(n, **extra):
        params = {"max_new_tokens": 6, "temperature": TEMP, "ignore_eos": True, "n": n,
                  "custom_params": {"decode_mode": mode}, **extra}
        status, body = server.post("/generate", {"input_ids": PROMPT, "sampling_params": params},
                                   timeout=900)
        assert status == 200, body
        out = json.loads(body)
        assert len(out) == n
        return [r["output_ids"] for r in out]
    got = choices(64)
    assert len({tuple(o) for o in got}) > 16, got               # not one draw copied n times
    if mode == "ar":
        assert one_sample_p([o[0] for o in got], first_token_law(core32, TEMP)) > 1e-3
    seeded = choices(3, sampling_seed=99)
    assert seeded[0] == seeded[1] == seeded[2]

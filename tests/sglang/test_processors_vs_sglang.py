"""Core's top-k / top-p / min-p rule (``processors.truncate``) against SGLang's own torch path
(``layers/sampler.top_k_top_p_min_p_sampling_from_probs_torch``, its filtered weights), on random
distributions and limits: the same tokens kept with the same weights."""

from __future__ import annotations

import random

import pytest
import torch

from nemotron_sglang.core.decoding.processors import truncate

sampler = pytest.importorskip("sglang.srt.layers.sampler")


@pytest.mark.parametrize("case", range(4))
def test_truncation_keeps_what_sglang_keeps(case):
    rnd = random.Random(random.randrange(1 << 30) + case)
    g = torch.Generator().manual_seed(rnd.randrange(1 << 30))
    n, v = 64, 97
    probs = torch.softmax(torch.randn(n, v, generator=g) * rnd.uniform(0.5, 4), -1)
    top_k = torch.tensor([rnd.choice([1, 2, 5, 20, v]) for _ in range(n)])
    top_p = torch.tensor([rnd.choice([1.0, 0.9, 0.5, rnd.uniform(0.05, 1)]) for _ in range(n)])
    min_p = torch.tensor([rnd.choice([0.0, 0.05, rnd.uniform(0, 0.5)]) for _ in range(n)])
    _, kept, idx, _ = sampler.top_k_top_p_min_p_sampling_from_probs_torch(
        probs.clone(), top_k.to(torch.int32), top_p, min_p, True, None,
        torch.zeros(n, dtype=torch.long), return_filtered_probs=True)
    theirs = torch.zeros_like(probs).scatter(-1, idx.long(), kept)
    ours = truncate(probs, torch.where(top_k >= v, 0, top_k), top_p, min_p)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (ours > 0).sum() < (probs > 0).sum()         # the limits did cut

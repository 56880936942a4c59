"""The rule corpus (``nemotron_sglang.testing.corpus``): determinism, continuation length, seed
ranges, and the ``nemotron-sglang corpus --json`` output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nemotron_sglang.testing import corpus
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402



def test_documents_and_examples_are_deterministic_by_seed():
    assert corpus.documents(3, 50) == corpus.documents(3, 50)
    assert corpus.documents(3, 50) != corpus.documents(4, 50)
    assert corpus.examples(corpus.EVAL_SEED_BASE, 20) == corpus.examples(corpus.EVAL_SEED_BASE, 20)
    assert corpus.examples(corpus.EVAL_SEED_BASE, 20) != corpus.examples(corpus.EVAL_SEED_BASE + 1, 20)


def test_examples_shape_and_split():
    for ex in corpus.examples(corpus.EVAL_SEED_BASE + 17, 200):
        assert set(ex) == {"prompt", "continuation"}
        assert ex["prompt"] and ex["continuation"]
        assert corpus.approx_tokens(ex["continuation"]) >= corpus.CONTINUATION_MIN_TOKENS
        assert len(ex["continuation"]) <= corpus.CONTINUATION_MAX_CHARS
        # the cut is at an item boundary: the continuation starts with its separator
        assert ex["continuation"][0] in " ,\n", ex
        assert not ex["prompt"][-1].isspace()


def test_continuation_is_at_least_32_tokens():
    from nemotron_sglang.core.tokenizer import encode, load_tokenizer
    from nemotron_sglang.testing.train_tiny import TrainConfig, build_corpus_tokenizer

    tok = (load_tokenizer(FIXTURE) if (FIXTURE / "tokenizer.json").exists()
           else build_corpus_tokenizer(TrainConfig().vocab))
    lengths = [len(encode(tok, ex["continuation"]))
               for ex in corpus.examples(corpus.EVAL_SEED_BASE, 300)]
    assert min(lengths) >= 32


def test_train_and_eval_seed_ranges_are_disjoint():
    from nemotron_sglang.testing import train_tiny

    assert corpus.EVAL_SEED_BASE == 1_000_000
    # training stream seeds: seed * 1000 + 1 for training seeds 0..998; tokenizer text seed
    for seed in range(0, 999):
        assert seed * 1000 + 1 < corpus.EVAL_SEED_BASE
    assert train_tiny.TOKENIZER_SEED < corpus.EVAL_SEED_BASE
    # Rules with a small state space (the import list, day cycles, small tables) repeat across
    # any two seeds; most held-out examples are still absent from a sample of training text.
    train_docs = corpus.documents(1, 2000)
    exs = corpus.examples(corpus.EVAL_SEED_BASE, 100)
    seen = sum(any(d.startswith(ex["prompt"] + ex["continuation"]) for d in train_docs)
               for ex in exs)
    assert seen <= 25


def test_cli_corpus_json():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "nemotron_sglang", "corpus", "--n", "5",
                           "--seed", "1000003", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    objs = [json.loads(line) for line in lines]
    assert all(set(o) == {"prompt", "continuation"} for o in objs)
    assert objs == corpus.examples(1_000_003, 5)


@pytest.mark.parametrize("n", [0, 1])
def test_cli_corpus_small_n(n):
    proc = subprocess.run([sys.executable, "-m", "nemotron_sglang", "corpus", "--n", str(n),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == n

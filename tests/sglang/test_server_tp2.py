"""Scale past one process through SGLang itself: ``--tp-size 2`` on the CPU (gloo, one core per
rank) shards the plugin's model class, drafting LoRA included, and gives the same greedy tokens
as core (= TP 1) in every served mode."""

from __future__ import annotations

import sys

import pytest
import torch

from nemotron_sglang.core.weights import load_model
from sglang_server import PROMPTS, Server, ckpt, core32, core_ids  # noqa: F401

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def tp2(ckpt, tmp_path_factory):
    s = Server(None, tmp_path_factory.mktemp("logs") / "tp2.log",
               ["--model", str(ckpt), "--tp-size", "2", "--max-total-tokens", "4096"],
               command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    yield s
    s.stop()


def test_tp2_equals_core_in_every_mode(tp2, ckpt):
    core = load_model(ckpt, dtype=torch.float32)
    log = tp2.log.read_text()
    assert "TP1]" in log and "tp_size': 2" in log          # two ranks really ran
    for ids in PROMPTS[:2]:
        ar = core_ids(core, "ar", ids, 12)
        for mode in ("ar", "linear_spec", "auto"):
            assert tp2.generate_ids(ids, 12, decode_mode=mode)["output_ids"] == ar, mode
        assert tp2.generate_ids(ids, 12, decode_mode="diffusion")["output_ids"] == \
            core_ids(core, "diffusion", ids, 12)

"""Scale past one process through SGLang itself: ``--tp-size 2`` on the CPU (gloo, one core per
rank) shards the plugin's model class, drafting LoRA included, and runs core's passes exactly:
on the trained fixture (whose LoRA changes some drafts) every served mode gives core's tokens,
forwards and cycles, so a rank that lost its adapter shard fails here."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from nemotron_sglang.core.weights import load_model
from round_checks import FIXTURE, assert_counts_equal_core, core_results, fixture_prompts
from sglang_server import Server

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    s = Server(None, tmp_path_factory.mktemp("logs") / "tp2.log",
               ["--model", str(FIXTURE), "--tp-size", "2", "--max-total-tokens", "4096"],
               command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    yield s
    s.stop()


def test_tp2_runs_cores_passes_in_every_mode(tp2):
    core = load_model(FIXTURE, dtype=torch.float32)
    log = tp2.log.read_text()
    assert "TP1]" in log and "tp_size': 2" in log          # two ranks really ran
    prompts = [fixture_prompts(8)[i] for i in (1, 4)]      # 4: the LoRA changes its drafts
    for mode in ("ar", "linear_spec", "quadratic_spec", "diffusion"):
        want = core_results(mode, prompts, model=core)
        for ids, w in zip(prompts, want):
            status, body = tp2.post("/generate", {"input_ids": ids, "sampling_params": {
                "max_new_tokens": 48, "temperature": 0, "custom_params": {"decode_mode": mode}}})
            assert status == 200, body
            assert_counts_equal_core(json.loads(body), w, mode)
    auto = json.loads(tp2.post("/generate", {"input_ids": prompts[0], "sampling_params": {
        "max_new_tokens": 48, "temperature": 0, "custom_params": {"decode_mode": "auto"}}})[1])
    assert auto["output_ids"] == core_results("ar", prompts[:1], model=core)[0].output_ids

"""The real server with its canvas steps replayed from captured graphs (YAML ``step_graphs``),
emulated on this CPU (``kernels.step_graphs``: the capture-time call replayed, so whatever a
CUDA graph would freeze is frozen here too): every mode, alone and mixed in one round, equals
core's decoders token for token; the log names the buckets captured and replayed; a bad value
is refused at start-up."""

from __future__ import annotations

import re

import pytest

from sglang_server import (PROMPTS, ROOT, Server, ckpt, core32, core_ids,  # noqa: F401
                           mixed_modes_equal_core)

pytest.importorskip("sglang")

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")


@pytest.fixture(scope="module")
def graphed(ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    yaml = folder / "tri_mode.yaml"
    yaml.write_text((ROOT / "launch" / "tri_mode.yaml").read_text() + "step_graphs: emulate\n")
    s = Server(ckpt, folder / "server.log", ["--dllm-algorithm", "NemotronTriMode",
                                              "--dllm-algorithm-config", str(yaml),
                                              "--max-running-requests", "4"])
    yield s
    s.stop()


def test_every_mode_equals_core_through_replayed_steps(graphed, core32):
    for ids in PROMPTS:
        ar = core_ids(core32, "ar", ids, 12)
        for mode in MODES:
            want = core_ids(core32, "diffusion", ids, 12) if mode == "diffusion" else ar
            assert graphed.generate_ids(ids, 12, decode_mode=mode)["output_ids"] == want, mode
    log = graphed.log.read_text()
    captured = re.search(r"emulate step graphs captured for (\d+) buckets", log)
    assert captured and int(captured.group(1)) == 3, log[-2000:]     # rows 1, 2, 4
    b = core32.config.block_size
    assert f"step graph (rows 1, tokens {b}) replayed" in log


def test_mixed_rounds_replay_one_bucket_for_any_mix(graphed, core32):
    mixed_modes_equal_core(graphed, core32, 10)
    b = core32.config.block_size
    assert f"step graph (rows 4, tokens {4 * b}) replayed" in graphed.log.read_text()


@pytest.mark.parametrize("value, error", [("bogus", "step_graphs 'bogus'"),
                                          ("cuda", "needs a CUDA device")])
def test_a_bad_step_graphs_value_is_refused_at_start(value, error):
    import torch

    from nemotron_sglang.sglang_plugin.algorithm import NemotronTriMode
    from nemotron_sglang.sglang_plugin.server_config import TriModeConfig

    if value == "cuda" and torch.cuda.is_available():
        error = None
    cfg = TriModeConfig(algorithm="NemotronTriMode",
                        algorithm_config={"default_mode": "ar", "step_graphs": value},
                        block_size=4, mask_id=100, max_running_requests=4,
                        first_done_first_out_mode=False, requires_separate_context_encoding=True)
    if error is None:
        assert NemotronTriMode(cfg).step_graphs is not None
        return
    with pytest.raises(ValueError, match=error):
        NemotronTriMode(cfg)
    cfg_off = TriModeConfig(algorithm="NemotronTriMode", algorithm_config={"default_mode": "ar"},
                            block_size=4, mask_id=100, max_running_requests=4,
                            first_done_first_out_mode=False,
                            requires_separate_context_encoding=True)
    assert NemotronTriMode(cfg_off).step_graphs is None

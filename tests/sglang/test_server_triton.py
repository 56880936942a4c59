"""The plugin's Triton kernel inside the real server, for every pass: ``--attention-backend
nemotron`` sends prefill, decode, the dLLM canvas passes and the KV writes through
``nemotron_sglang.kernels`` (interpreted on CPU), and YAML ``custom_attention: triton`` does the
same for the fused quadratic pass. Every mode's greedy answer equals core's."""

from __future__ import annotations

import os

import pytest

from sglang_server import PROMPTS, ROOT, Server, ckpt, core32, core_ids  # noqa: F401

pytest.importorskip("sglang")
pytest.importorskip("triton")


@pytest.fixture(scope="module")
def triton_server(ckpt, tmp_path_factory):
    yaml = tmp_path_factory.mktemp("cfg") / "tri_triton.yaml"
    yaml.write_text((ROOT / "launch" / "tri_mode.yaml").read_text() + "custom_attention: triton\n")
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"       # the server has no GPU: interpret the kernel
    log = tmp_path_factory.mktemp("logs") / "triton.log"
    try:
        s = Server(ckpt, log, ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config",
                               str(yaml), "--attention-backend", "nemotron"])
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = before
    yield s
    s.stop()


def test_server_attention_backend_is_ours(triton_server):
    text = triton_server.log.read_text()
    assert "'attention_backend': 'nemotron'" in text, text[-2000:]
    assert "nemotron attention backend: triton on cpu" in text, text[-2000:]


@pytest.mark.parametrize("mode,core_mode", [("ar", "ar"), ("diffusion", "diffusion"),
                                            ("linear_spec", "ar"), ("quadratic_spec", "ar")])
def test_every_mode_through_the_triton_kernel_equals_core(triton_server, core32, mode, core_mode):
    for ids in PROMPTS:
        got = triton_server.generate_ids(ids, 12, decode_mode=mode)["output_ids"]
        assert got == core_ids(core32, core_mode, ids, 12), (mode, ids)

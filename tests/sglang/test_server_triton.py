"""The plugin's Triton kernel inside the real server: the fused quadratic pass attends through
``nemotron_sglang.kernels`` (YAML ``custom_attention: triton``; interpreted on CPU) and the
answers equal core's greedy ``ar``."""

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
    try:
        s = Server(ckpt, tmp_path_factory.mktemp("logs") / "triton.log",
                   ["--dllm-algorithm", "NemotronTriMode", "--dllm-algorithm-config", str(yaml)])
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = before
    yield s
    s.stop()


def test_quadratic_through_the_triton_kernel_equals_ar(triton_server, core32):
    for ids in PROMPTS:
        got = triton_server.generate_ids(ids, 12, decode_mode="quadratic_spec")["output_ids"]
        assert got == core_ids(core32, "ar", ids, 12)

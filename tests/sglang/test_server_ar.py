"""The plain AR path (no ``--dllm-algorithm``) of the real SGLang server with the plugin's model
class: greedy tokens equal core's ``ar``; other decode modes are refused with a pointer to the
dLLM launch flag. A module of its own so its server never runs beside the dLLM one."""

from __future__ import annotations

import pytest

from sglang_server import PROMPTS, Server, ckpt, core32, core_ids  # noqa: F401

pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def ar_server(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("logs") / "ar.log", [])
    yield s
    s.stop()


def test_plain_ar_server_equals_core_ar_and_refuses_other_modes(ar_server, core32):
    for ids in PROMPTS:
        assert ar_server.generate_ids(ids, 16)["output_ids"] == core_ids(core32, "ar", ids, 16)
    status, text = ar_server.post("/v1/completions", {"model": "nld", "prompt": "Hi",
                                                      "max_tokens": 4, "decode_mode": "diffusion"})
    assert status == 400 and "--dllm-algorithm" in text
    assert ar_server.post("/v1/completions", {"model": "nld", "prompt": "Hi", "max_tokens": 4,
                                              "decode_mode": "ar"})[0] == 200
    # SGLang drops a suffix without a completion template; this server cannot infill: a 400
    for extra, field in (({"suffix": "ab"}, "suffix"), ({"max_steps": 2}, "max_steps")):
        status, text = ar_server.post("/v1/completions", {"model": "nld", "prompt": "Hi",
                                                          "max_tokens": 4, **extra})
        assert status == 400 and field in text and "diffusion" in text, text

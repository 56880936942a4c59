"""``nemotron-sglang serve --dp-size 2``: one server, two data-parallel scheduler ranks (SGLang's
own DP controller spreads requests over them). Every decode mode, all at once, equals core; both
ranks run canvas work; the KV of every rank is idle afterwards."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from nemotron_sglang.core.weights import load_model
from nemotron_sglang.data import EMBEDDED
from sglang_server import Server, loads, mixed_modes_equal_core, used_tokens


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory):
    s = Server(None, tmp_path_factory.mktemp("dp") / "dp.log", ["--dp-size", "2"],
               command=[sys.executable, "-m", "nemotron_sglang", "serve"])
    yield s
    s.stop()


def test_every_mode_on_two_dp_ranks_equals_core_and_leaves_them_idle(dp_server):
    core = load_model(EMBEDDED, dtype=torch.float32)
    start = len(dp_server.log.read_text())
    mixed_modes_equal_core(dp_server, core, max_new=12)
    ranks = {int(m) for m in re.findall(r" DP(\d)\] Prefill batch, #new-seq",
                                        dp_server.log.read_text()[start:])}
    assert ranks == {0, 1}, ranks                  # both ranks took this test's requests
    assert [d["dp_rank"] for d in loads(dp_server)["loads"]] == [0, 1]
    assert used_tokens(dp_server) == 0

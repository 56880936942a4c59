"""``--max-running-requests`` given to ``nemotron-sglang serve``: the flag wins over the cap the
plugin derives from memory (``core/limits.py``), the log says so, and with more requests sent
at once than it allows, the rounds run exactly that many. (Without the flag:
``test_serve_command.py``.)"""

from __future__ import annotations

import json
import sys

import pytest

from nemotron_sglang.core.limits import running_request_cap
from nemotron_sglang.data import EMBEDDED
from sglang_server import Server
from test_serve_command import run_together, sglang_pools

pytest.importorskip("sglang")

FLAG = 20          # above the old fixed 16; the memory rule on this pool gives 124


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    env = {"NEMOTRON_SGLANG_CACHE": str(tmp_path_factory.mktemp("cache"))}
    s = Server(None, tmp_path_factory.mktemp("logs") / "cap.log",
               ["--max-running-requests", str(FLAG), "--max-total-tokens", "4096"],
               command=[sys.executable, "-m", "nemotron_sglang", "serve"], env=env)
    yield s
    s.stop()


def test_the_flag_wins_and_bounds_every_round(capped):
    log = capped.log.read_text()
    kv, slots = sglang_pools(log)
    block = json.loads((EMBEDDED / "config.json").read_text())["block_size"]
    cap, why = running_request_cap(kv, slots, block, requested=FLAG)
    assert cap == FLAG and f"NemotronTriMode: {why}" in log, log[-3000:]
    assert why.startswith(f"max_running_requests {FLAG} = --max-running-requests {FLAG} (")
    assert slots == FLAG and kv == 4096    # SGLang's request slots hold the flag already
    counts = run_together(capped, FLAG + 4, 60)
    assert counts and max(counts) == FLAG, counts

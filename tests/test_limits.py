"""The start-up limits of a tri-mode server, without SGLang: the running-request cap from the
device's memory (``core/limits.py``) and the log line on ``auto``'s switch point
(``auto_plan.switch_point_note``). The server applies them in ``tests/sglang/test_serve_command.py``
and ``tests/sglang/test_server_cap.py``."""

from __future__ import annotations

import json
import logging
import random

import pytest

from nemotron_sglang.core.block_policy import CostTable
from nemotron_sglang.core.limits import canvas_floor_cap, running_request_cap
from nemotron_sglang.serving import serve
from nemotron_sglang.sglang_plugin.auto_plan import switch_point_note


def test_worked_examples():
    """serve's CPU pool (16384 tokens) and the tests' (4096) at block 32, 2048 request slots."""
    cap, why = running_request_cap(16384, 2048, 32)
    assert cap == 496
    assert why.startswith("max_running_requests 496 = min(SGLang's request slots 2048, KV pool "
                          "16384 tokens // (block 32 + 1) = 496)")
    assert running_request_cap(4096, 2048, 32)[0] == 124
    assert running_request_cap(4096, 100, 32)[0] == 100          # the request slots bind
    assert running_request_cap(20, 10, 32)[0] == 1               # never below one request


def test_derived_cap_is_the_most_canvases_that_fit():
    """Random pools: the cap fits (each request one context token + a block-slot canvas), never
    exceeds SGLang's request slots, and one request more would break one of the two."""
    for _ in range(500):
        kv, slots, block = random.randint(1, 1 << 20), random.randint(1, 4096), \
            random.choice([1, 2, 4, 8, 16, 32, 64])
        cap, why = running_request_cap(kv, slots, block)
        assert 1 <= cap <= slots
        assert cap == 1 or cap * (block + 1) <= kv
        assert cap == slots or (cap + 1) * (block + 1) > kv
        assert why.startswith(f"max_running_requests {cap} = min(") and str(kv) in why
        assert canvas_floor_cap(kv, block) == kv // (block + 1)


def test_the_flag_wins_within_the_request_slots():
    cap, why = running_request_cap(4096, 3, 32, requested=3)
    assert cap == 3 and why.startswith("max_running_requests 3 = --max-running-requests 3 (")
    assert "memory rule would give 3" in why and "retracted" not in why
    cap, why = running_request_cap(4096, 2048, 32, requested=200)    # above the KV floor (124)
    assert cap == 200 and "124 canvases" in why and "retracted under KV pressure" in why
    cap, why = running_request_cap(4096, 50, 32, requested=64)       # SGLang's slots hold 50
    assert cap == 50 and "within SGLang's request slots 50" in why
    for _ in range(200):
        kv, slots, req = random.randint(1, 1 << 18), random.randint(1, 4096), \
            random.randint(1, 8192)
        assert running_request_cap(kv, slots, 32, requested=req)[0] == min(req, slots)


@pytest.mark.parametrize("args", [(0, 10, 32), (4096, 0, 32), (4096, 10, 0)])
def test_bad_sizes_refused(args):
    with pytest.raises(ValueError):
        running_request_cap(*args)
    with pytest.raises(ValueError, match="max-running-requests"):
        running_request_cap(4096, 10, 32, requested=0)


def test_switch_point_note():
    """CUDA without a cost table: a WARNING that auto_max_batch is unmeasured and how to measure
    it; with the shipped CPU table: INFO naming where the table was measured."""
    level, text = switch_point_note(None, serve.AUTO_MAX_BATCH["cuda"], "cuda")
    assert level == logging.WARNING
    assert "unmeasured on this cuda device" in text and "DESIGN §6's estimate" in text
    assert "benchmarks/cost_model.py" in text and "--cost-model" in text
    level, text = switch_point_note(None, 64, "cpu")
    assert level == logging.WARNING and "unmeasured on this cpu device" in text
    shipped = CostTable.from_mapping(json.loads(serve.CPU_COST_TABLE.read_text()))
    level, text = switch_point_note(shipped, 64, "cpu")
    assert level == logging.INFO and "unmeasured" not in text
    assert text.endswith(f"measured on: {shipped.device}") and "CPU" in shipped.device

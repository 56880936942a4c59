"""Host syncs of whole canvas steps in the real server (``testing.host_sync_probe``): each mode's
steps and a mixed batch's, the model's forward and the custom pass included, counted inside the
scheduler. Every step makes exactly one blocking upload (``core.host_pack``: the step plan and the
decisions' tables in one copy) and one device→host read (the decisions' one ``tolist``,
``decide_batched``) — nothing else, in any mode; the counter is shown to see the step by finding
exactly those two. On a GPU the upload is pinned and non-blocking (not a sync at all); on this
CPU run it is counted as the one copy it is."""

from __future__ import annotations

import pytest

from nemotron_sglang.data import EMBEDDED as FIXTURE
from nemotron_sglang.testing.host_sync_probe import MODES, measure, probe_server

pytest.importorskip("sglang")
pytest.importorskip("triton")

# Per canvas step (max over the steps measured). Before issue 36 (main 0b2bffe, 2026-12-06,
# ``python benchmarks/host_syncs.py``): 2 reads in every mode (the slot table, the decisions) and
# 6 / 9 / 9 / 11 / 19 uploads (ar / diffusion / linear_spec / quadratic_spec / mixed).
MAX_READS = 1
MAX_UPLOADS = 1
DECISIONS = "decide_batched.py:decide_batched"
UPLOAD = "host_pack.py:HostPack.upload"
PROMPTS = [[5, 6, 7, 8, 300, 301], [17, 400, 23], [250, 251, 252, 253, 254, 255, 256, 257]]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("host_syncs")
    log = folder / "reads.jsonl"
    server = probe_server(FIXTURE, 4, folder, log)
    try:
        yield measure(server, log, PROMPTS, max_new=8)
    finally:
        server.stop()


@pytest.mark.parametrize("mode", [*MODES, "mixed"])
def test_a_canvas_step_uploads_once_and_reads_once(steps, mode):
    s = steps[mode]
    assert s["steps"] > 0 and s["rounds"] > 0, s
    assert s["max_reads"] <= MAX_READS, (mode, s)
    assert s["max_uploads"] <= MAX_UPLOADS, (mode, s)


@pytest.mark.parametrize("mode", [*MODES, "mixed"])
def test_the_counter_sees_the_whole_step(steps, mode):
    """Every step reads its decisions once and makes its one upload (the plan and the decisions'
    tables, inside the custom pass); a round reads nothing outside its steps (its rows' canvas
    starts and pool rows are SGLang's host values)."""
    s = steps[mode]
    assert s["sites"] == {DECISIONS: 1.0}, (mode, s["sites"])
    assert s["ops"] == {"tolist": 1.0}, (mode, s["ops"])
    assert s["upload_sites"] == {UPLOAD: 1.0}, (mode, s["upload_sites"])
    assert s["round_outside_steps"] == 0.0, (mode, s)

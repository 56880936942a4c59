"""``metrics.publish_canvas_load`` around SGLang's own ``Scheduler.publish_load_snapshot``: a
canvas round publishes the load snapshot on ``--load-snapshot-publish-interval`` like a decode
iteration; context rounds, other algorithms' batches and the idle publishes stay forced.

The scheduler here holds only what ``publish_load_snapshot`` reads (its snapshot writer, its load
inquirer, the batch being processed); the function under the hook is SGLang's. The canvas rounds'
log lines are checked through the real server in ``test_server.py``."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

pytest.importorskip("sglang")
from sglang.srt.managers.scheduler import Scheduler  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

from nemotron_sglang.sglang_plugin.metrics import publish_canvas_load  # noqa: E402

INTERVAL = 15          # SGLang's default --load-snapshot-publish-interval
ORIGINAL = inspect.unwrap(Scheduler.publish_load_snapshot)


class Writer:
    def __init__(self):
        self.publish_counter, self.publish_interval, self.written = 0, INTERVAL, 0

    def write(self, load):
        self.written += 1


def scheduler(batch):
    return SimpleNamespace(load_snapshot_writer=Writer(), cur_batch_for_debug=batch,
                           load_inquirer=SimpleNamespace(get_loads=lambda: object()))


def batch(mode, nld=True):
    return SimpleNamespace(forward_mode=mode,
                           reqs=[SimpleNamespace(nld=object() if nld else None)])


@pytest.mark.parametrize("case,current,want", [
    ("canvas round", batch(ForwardMode.DLLM_EXTEND), 45 // INTERVAL),
    ("context round", batch(ForwardMode.EXTEND), 45),
    ("another algorithm's dLLM batch", batch(ForwardMode.DLLM_EXTEND, nld=False), 45),
    ("idle", None, 45),
])
def test_forced_publish_is_throttled_only_for_canvas_rounds(case, current, want):
    """45 forced publishes (what SGLang asks after 45 extend batches): a canvas round writes
    every INTERVAL-th (3), everything else every time."""
    s = scheduler(current)
    for _ in range(45):
        publish_canvas_load(ORIGINAL, s, force=True)
    assert s.load_snapshot_writer.written == want, case


def test_unforced_publish_is_unchanged():
    s = scheduler(batch(ForwardMode.DLLM_EXTEND))
    for _ in range(45):
        publish_canvas_load(ORIGINAL, s)
    assert s.load_snapshot_writer.written == 45 // INTERVAL


def test_normal_loop_names_the_batch_before_processing_it():
    """The hook reads ``cur_batch_for_debug``: SGLang's normal event loop (the dLLM path's:
    overlap is off) sets it to the batch before ``process_batch_result`` and to None when idle."""
    src = inspect.getsource(Scheduler.event_loop_normal)
    assert "batch = plan.batch_to_run" in src
    assert src.index("self.cur_batch_for_debug = batch") < src.index(
        "self.process_batch_result(batch, result)")

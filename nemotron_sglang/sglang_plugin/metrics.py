"""Prometheus counters per decode mode, next to SGLang's own metrics on ``/metrics``; canvas
rounds reported to SGLang's metrics reporter as the decode iterations they are.

Created lazily in the process that records (the scheduler), never in ``register()``: SGLang
exports metrics through prometheus_client's multiprocess directory, which must be set before the
first metric object of a process exists. Names: ``nemotron_sglang_requests_total``,
``_tokens_total``, ``_forwards_total`` (labels ``mode``) and the histogram
``nemotron_sglang_tokens_per_forward``. A request is recorded once, when it finishes.

SGLang's dLLM path reports every round as a prefill (``report_prefill_stats``: a "Prefill
batch" log line and the prefill gauges per round, so per token for ``ar``). An AROUND hook on it
(``report_canvas_round``) reports a NemotronTriMode canvas round as SGLang's AR loop reports a
decode step (``report_decode_stats``: the generated tokens every round, a "Decode batch" line and
the running-request gauges every ``--decode-log-interval`` rounds); context rounds stay
prefills. Likewise SGLang forces a load snapshot (``get_loads``: a walk of the queues, ~65 µs a
round measured at concurrency 1) after every extend batch, canvas rounds included; an AROUND hook
on ``Scheduler.publish_load_snapshot`` (``publish_canvas_load``) lets a canvas round publish on
``--load-snapshot-publish-interval`` like a decode iteration. It reads the batch being processed
from ``Scheduler.cur_batch_for_debug``, which SGLang 0.5.23's normal event loop (the one the dLLM
path runs: overlap is off) sets before ``process_batch_result`` and leaves None while idle
(``tests/sglang/test_metrics_hooks.py`` checks both). The router-facing publisher
(``--load-publish-endpoint``, off by default) keeps SGLang's per-round forcing.
"""

from __future__ import annotations

import os
from typing import Any

REPORT_TARGET = ("sglang.srt.managers.scheduler_components.metrics_reporter."
                 "SchedulerMetricsReporter.report_prefill_stats")
PUBLISH_TARGET = "sglang.srt.managers.scheduler.Scheduler.publish_load_snapshot"
CALLED = ("sglang.srt.managers.scheduler_components.metrics_reporter."
          "SchedulerMetricsReporter.report_decode_stats",)

_metrics: dict[str, Any] | None = None
TPF_BUCKETS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0)


def enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _get() -> dict[str, Any]:
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Histogram

        _metrics = {
            "requests": Counter("nemotron_sglang_requests", "Finished requests per decode mode",
                                ["mode"]),
            "tokens": Counter("nemotron_sglang_tokens", "Generated tokens per decode mode",
                              ["mode"]),
            "forwards": Counter("nemotron_sglang_forwards",
                                "Model forwards (prefill excluded) per decode mode", ["mode"]),
            "tpf": Histogram("nemotron_sglang_tokens_per_forward",
                             "Tokens per forward of finished requests", ["mode"],
                             buckets=TPF_BUCKETS),
        }
    return _metrics


def record_finished(mode: str, tokens: int, forwards: int) -> None:
    if not enabled():
        return
    m = _get()
    m["requests"].labels(mode=mode).inc()
    m["tokens"].labels(mode=mode).inc(tokens)
    m["forwards"].labels(mode=mode).inc(forwards)
    if forwards:
        m["tpf"].labels(mode=mode).observe(tokens / forwards)


def is_canvas_round(batch) -> bool:
    """A NemotronTriMode canvas round: a DLLM_EXTEND batch whose requests carry ``req.nld``."""
    return batch is not None and batch.forward_mode.is_dllm_extend() and any(
        getattr(r, "nld", None) is not None for r in batch.reqs)


def report_canvas_round(original, self, batch, prefill_stats, can_run_cuda_graph,
                        dp_cooperation_info=None):
    """SGLang's ``report_prefill_stats`` (same signature), except for a canvas round of
    NemotronTriMode, which is counted and reported as a decode step."""
    if not is_canvas_round(batch):
        return original(self, batch, prefill_stats, can_run_cuda_graph, dp_cooperation_info)
    self.forward_ct_decode = (self.forward_ct_decode + 1) % (1 << 30)    # as SGLang's AR loop
    tokens = sum(r.nld.round_tokens for r in batch.reqs if getattr(r, "nld", None) is not None)
    self.report_decode_stats(can_run_cuda_graph, running_batch=batch,
                             num_generated_tokens=tokens)


def publish_canvas_load(original, self, force=False):
    """SGLang's ``Scheduler.publish_load_snapshot`` (same signature); a canvas round's forced
    publish becomes a throttled one, as for a decode iteration."""
    if force and is_canvas_round(self.cur_batch_for_debug):
        force = False
    return original(self, force)

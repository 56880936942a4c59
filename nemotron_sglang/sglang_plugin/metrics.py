"""Prometheus counters per decode mode, next to SGLang's own metrics on ``/metrics``.

Created lazily in the process that records (the scheduler), never in ``register()``: SGLang
exports metrics through prometheus_client's multiprocess directory, which must be set before the
first metric object of a process exists. Names: ``nemotron_sglang_requests_total``,
``_tokens_total``, ``_forwards_total`` (labels ``mode``) and the histogram
``nemotron_sglang_tokens_per_forward``. A request is recorded once, when it finishes.
"""

from __future__ import annotations

import os
from typing import Any

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

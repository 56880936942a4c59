"""Per-request decode parameters: parse and validate, refusing what a mode cannot honour.

A request may set ``decode_mode``, ``threshold`` and ``block_length`` (in SGLang's
``custom_params``); everything else comes from the server's YAML defaults. Sampling features the
NLD decoders do not implement (logprobs, grammars, penalties, top-p / top-k / min-p, logit bias,
custom logit processors, ``min_new_tokens``) are refused with a message naming the field, which
SGLang turns into an HTTP 400. Pure Python: no SGLang import, so it is tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

# every core mode, plus "auto": a serving policy (linear_spec at the block the load allows, or
# ar; core/block_policy.py)
MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec", "auto")
PARAM_KEYS = ("decode_mode", "threshold", "block_length")


class ParamError(ValueError):
    """A request parameter the server refuses; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ServerDefaults:
    """What a request falls back to; from the algorithm YAML and the checkpoint."""

    default_mode: str = "linear_spec"
    threshold: float = 0.9
    block_size: int = 32            # the server's canvas: the largest block a request may ask for
    auto_max_batch: int = 8         # "auto" speculates while a round holds at most this many


@dataclass(frozen=True)
class RequestParams:
    mode: str
    threshold: float
    block_length: int
    temperature: float              # 0 = greedy
    seed: int | None
    block_set: bool = False         # the request chose block_length (auto keeps it)


@dataclass(frozen=True)
class SamplingView:
    """The sampling features of a request, as plain values (see ``from_req`` in algorithm.py)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k_limited: bool = False     # a top_k other than "whole vocabulary" (and not greedy)
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    logit_bias: bool = False
    grammar: str | None = None      # name of a set grammar field (json_schema, regex, ...)
    logprobs: bool = False
    custom_logit_processor: bool = False
    seed: int | None = None


def _refuse_unsupported(s: SamplingView) -> None:
    checks = [
        ("logprobs", s.logprobs, "logprobs are not computed by the NLD decoders"),
        ("top_p", s.top_p != 1.0, "only top_p = 1 is supported"),
        ("top_k", s.top_k_limited, "only top_k = -1 (whole vocabulary) is supported"),
        ("min_p", s.min_p != 0.0, "only min_p = 0 is supported"),
        ("frequency_penalty", s.frequency_penalty != 0.0, "penalties are not supported"),
        ("presence_penalty", s.presence_penalty != 0.0, "penalties are not supported"),
        ("repetition_penalty", s.repetition_penalty != 1.0, "penalties are not supported"),
        ("min_new_tokens", s.min_new_tokens != 0, "min_new_tokens is not supported"),
        ("logit_bias", s.logit_bias, "logit_bias is not supported"),
        ("custom_logit_processor", s.custom_logit_processor, "custom logit processors are "
                                                             "not supported"),
    ]
    for field, bad, msg in checks:
        if bad:
            raise ParamError(field, msg)
    if s.grammar is not None:
        raise ParamError(s.grammar, "constrained decoding (grammars, response_format) is not "
                                    "supported by the NLD decoders")


def check_fields(custom: Mapping[str, Any]) -> None:
    """The checks that need no server state: known mode, threshold in [0, 1],
    block length a power of two (each only if present). Shared with the main-process hook."""
    if "decode_mode" in custom:
        mode = custom["decode_mode"]
        if not isinstance(mode, str) or mode not in MODES:
            raise ParamError("decode_mode", f"unknown decode mode {mode!r}; choose one of "
                                            f"{', '.join(MODES)}")
    if "threshold" in custom:
        t = custom["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or \
                not 0.0 <= t <= 1.0:
            raise ParamError("threshold", f"must be a number in [0, 1], got {t!r}")
    if "block_length" in custom:
        b = custom["block_length"]
        if isinstance(b, bool) or not isinstance(b, int) or b < 1 or b & (b - 1):
            raise ParamError("block_length", f"must be a power of two, got {b!r}")


def parse(custom: Mapping[str, Any] | None, sampling: SamplingView,
          defaults: ServerDefaults) -> RequestParams:
    """Validate one request; raises :class:`ParamError` naming the offending field."""
    merged = {"decode_mode": defaults.default_mode, "threshold": defaults.threshold,
              "block_length": defaults.block_size, **dict(custom or {})}
    check_fields(merged)
    mode, threshold, block = merged["decode_mode"], merged["threshold"], merged["block_length"]
    if block > defaults.block_size:
        raise ParamError("block_length", f"{block} exceeds the server's block size "
                                         f"{defaults.block_size}")
    _refuse_unsupported(sampling)
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise ParamError("temperature", f"must be >= 0, got {sampling.temperature}")
    return RequestParams(mode, float(threshold), block, float(sampling.temperature), sampling.seed,
                         block_set="block_length" in (custom or {}))

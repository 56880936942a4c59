"""Per-request decode parameters: parse and validate, refusing what a mode cannot honour.

A request may set ``decode_mode``, ``threshold``, ``block_length``, ``max_steps`` (diffusion's
step budget) and, for diffusion infill, ``canvas`` (token ids, the mask id where to fill; text
with mask placeholders is tokenized in the main process) or ``suffix_ids`` (the tokens of an
OpenAI ``suffix``), in SGLang's ``custom_params``; everything else comes from the server's YAML
defaults. SGLang's sampling
parameters become core's ``SamplingRule`` (``sampling_rule``: temperature, top-k / top-p /
min-p, frequency / presence / repetition penalties, logit bias, min_new_tokens), honoured in
every mode, as are grammars (SGLang's grammar object, ``grammar.py``), and output logprobs
(with top-k and ``token_ids_logprob``) are reported in every mode (prompt logprobs by SGLang's
own context pass, ``prompt_logprobs.py``), as is a custom logit processor (the rule's
``transform``). A value out of its range is refused with a message naming the field and the
mode, which SGLang turns into an HTTP 400. No SGLang import, so it is tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..core.decoding import SamplingRule, SamplingValues
from ..core.server_settings import AUTO_MAX_BATCH
from ..core.modes import (DEFAULT_MODE, DEFAULT_THRESHOLD, MODE_ONLY, RuleError,
                          check_block_length, check_canvas, check_max_steps, check_mode,
                          check_mode_fields, check_threshold, infill_canvas)

PARAM_KEYS = ("decode_mode", "threshold", "block_length", "max_steps", "canvas", "suffix_ids")
# the custom_params key of each of core's mode-only fields (MODE_ONLY) -> the field, which a
# refusal names (a suffix arrives as the OpenAI ``suffix``, tokenized to ``suffix_ids``)
MODE_FIELDS = {"max_steps": "max_steps", "canvas": "canvas", "suffix_ids": "suffix"}
if set(MODE_FIELDS.values()) != set(MODE_ONLY):
    raise ImportError(f"params.MODE_FIELDS {sorted(MODE_FIELDS.values())} != core.modes.MODE_ONLY "
                      f"{sorted(MODE_ONLY)}")


def mode_fields(custom: Mapping[str, Any]) -> list[str]:
    """The mode-only fields a request's custom_params set (None: not set)."""
    return [field for key, field in MODE_FIELDS.items() if custom.get(key) is not None]


# a request parameter the server refuses (``field`` names it): core's one such error, so core's
# rules (core/modes.py, SamplingRule's ranges) reach SGLang's 400 without a translation
ParamError = RuleError


@dataclass(frozen=True)
class ServerDefaults:
    """What a request falls back to; from the algorithm YAML and the checkpoint."""

    default_mode: str = DEFAULT_MODE
    threshold: float = DEFAULT_THRESHOLD
    block_size: int = 32            # the server's canvas: the largest block a request may ask for
    auto_max_batch: int = AUTO_MAX_BATCH   # "auto" speculates while a round holds at most this many


@dataclass(frozen=True)
class RequestParams:
    mode: str
    threshold: float
    block_length: int
    temperature: float              # 0 = greedy
    seed: int | None
    block_set: bool = False         # the request chose block_length (auto keeps it)
    max_steps: int | None = None    # diffusion: denoise passes per block at most
    canvas: tuple[int, ...] = ()    # diffusion infill: the first block (mask id = fill)
    suffix: tuple[int, ...] = ()    # diffusion infill: the tokens after the gap (not output)


@dataclass(frozen=True)
class SamplingView(SamplingValues):
    """The sampling features of a request, as plain values (``server_config.sampling_view``):
    core's sampling values (temperature 0 = greedy, SGLang's T < 1e-6 or top_k = 1; top_k 0 =
    the whole vocabulary), then what only the server reports or refuses."""

    logprobs: bool = False          # return_logprob: each output token's logprob
    top_logprobs: int = 0           # top_logprobs_num
    token_ids_logprob: tuple[int, ...] = ()   # logprobs of these ids at each output token
    seed: int | None = None
    grammar: bool = False           # a regex / JSON schema / EBNF / structural tag is set

    @property
    def top_k_limited(self) -> bool:
        return self.top_k != 0


def sampling_rule(s: SamplingView, stop_ids: tuple[int, ...] = (), transform=None
                  ) -> SamplingRule:
    """Core's rule for a request (``stop_ids``: what min_new_tokens bans, SGLang's set: stop
    token ids, EOS ids, the tokenizer's stop and EOS ids; ``transform``: its custom logit
    processor, ``server_config.custom_transform``). Greedy keeps its processors: SGLang's
    greedy path is the argmax of the penalised, biased, processed logits."""
    values = {f.name: getattr(s, f.name) for f in fields(SamplingValues)}
    return SamplingRule(**values, stop_ids=tuple(sorted(stop_ids)) if s.min_new_tokens else (),
                        transform=transform)


def add_custom(sampling_params: dict, fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to ``sampling_params``' ``custom_params`` (a value already there wins)."""
    if fields:
        sampling_params["custom_params"] = {**fields,
                                            **(sampling_params.get("custom_params") or {})}


def check_fields(custom: Mapping[str, Any], grammar: bool = False) -> None:
    """The checks that need no server state (core/modes.py's rules: known mode, threshold in
    [0, 1], block length a power of two, the mode's own fields; each only if present; with
    ``grammar``, a mode-only field that a grammar forbids). Shared with the main-process hook,
    which cannot see a grammar yet (the scheduler's ``parse`` checks it)."""
    if "decode_mode" in custom:
        check_mode(custom["decode_mode"])
    if "threshold" in custom:
        check_threshold(custom["threshold"])
    if "block_length" in custom:
        check_block_length(custom["block_length"])
    if custom.get("max_steps") is not None:        # null: no budget
        check_max_steps(custom["max_steps"])
    for key in ("canvas", "suffix_ids"):
        if custom.get(key) is not None:                # the block is checked later
            check_canvas(custom[key], field=MODE_FIELDS[key])
    if "decode_mode" in custom:
        check_mode_fields(custom["decode_mode"], mode_fields(custom), grammar=grammar)
    if custom.get("canvas") is not None and custom.get("suffix_ids") is not None:
        raise RuleError("suffix", "a request has a canvas or a suffix, not both")


def parse(custom: Mapping[str, Any] | None, sampling: SamplingView,
          defaults: ServerDefaults) -> RequestParams:
    """Validate one request; raises :class:`ParamError` naming the offending field."""
    merged = {"decode_mode": defaults.default_mode, "threshold": defaults.threshold,
              "block_length": defaults.block_size, **dict(custom or {})}
    check_fields(merged, grammar=bool(sampling.grammar))
    mode, threshold, block = merged["decode_mode"], merged["threshold"], merged["block_length"]
    check_block_length(block, defaults.block_size, of="the server's block size")
    steps = merged.get("max_steps")
    canvas, suffix = _infill(merged, block)
    if sampling.top_logprobs < 0:
        raise ParamError("top_logprobs_num", f"must be >= 0 (decode_mode {mode})")
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise ParamError("temperature", f"must be >= 0, got {sampling.temperature}")
    sampling_rule(sampling)                      # ranges (SGLang checks them first, too)
    return RequestParams(mode, float(threshold), block, float(sampling.temperature), sampling.seed,
                         block_set="block_length" in (custom or {}), max_steps=steps,
                         canvas=canvas, suffix=suffix)


def _infill(merged: Mapping[str, Any], block: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The request's canvas and suffix, checked against its block."""
    canvas, suffix = merged.get("canvas"), merged.get("suffix_ids")
    if canvas is not None:
        check_canvas(canvas, block)
    if suffix is not None:
        infill_canvas(suffix, block, 1, 0)              # core's rule: a gap must remain
    return tuple(canvas or ()), tuple(suffix or ())

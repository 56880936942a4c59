"""The request/response surface: NLD's per-request fields in, early 400s, per-request counters out.

Hooks (all thin; the decisions live in ``params.py`` and the algorithm):
- AFTER ``OpenAIServing{Completion,Chat}._convert_to_internal_request`` (main process): copies the
  top-level ``decode_mode`` / ``threshold`` / ``block_length`` / ``max_steps`` of the JSON body (the OpenAI
  client's ``extra_body``) into ``custom_params``; an explicit ``custom_params`` value wins.
- AFTER ``TokenizerManager._create_tokenized_object`` (main process): tokenizes a ``canvas`` given
  as text (its mask placeholders are the tokenizer's mask token) and checks those fields before
  the request is queued, so streaming requests also get a real HTTP 400. On a plain AR server of
  an NLD checkpoint, a mode other than ``ar`` is refused with a pointer to ``--dllm-algorithm``;
  prompt token ids outside the vocabulary (which crash SGLang's scheduler) are refused.
  The scheduler's ``validate_request`` remains the authoritative check (it also knows the block).
- BEFORE ``SchedulerOutputStreamer.stream_output`` (scheduler): copies the request's counters
  into ``customized_info`` (SGLang's form: token-aligned, cumulative; ``COUNTER_KEYS``:
  ``nld_forwards`` / ``nld_cycles`` / ``nld_cycle_tokens`` / ``nld_rounds`` / ``nld_reprefills`` /
  ``nld_pass_tokens`` / ``nld_block_length`` / ``nld_mode``), and records finished
  requests in the per-mode Prometheus counters (``metrics.py``).
- AFTER ``UsageProcessor.calculate_response_usage`` (main): adds ``decode_mode``, ``forwards``,
  ``cycles``, ``rounds``, ``forwards_per_cycle``, ``tokens_per_forward``,
  ``pass_tokens_per_token`` (tokens its forwards carried per generated token), ``block_length``
  (the block most rounds ran; 1 = ar; what ``auto`` chose) and
  ``acceptance_length`` to a non-streaming response's ``usage``.
- AROUND ``TokenizerManager.generate_request`` + AFTER ``UsageProcessor.calculate_streaming_usage``
  (main): ``/generate``'s top-level ``decode_mode`` / ... fields copied into ``custom_params`` as
  on the OpenAI routes (SGLang's own parser would drop them silently); each answer's ``meta_info`` carries every counter once, its value so far (a stream's
  last chunk: the final value; ``counters_once``), and a stream's final usage chunk the usage
  fields. The generator hook keeps each choice's latest ``meta_info`` in a context variable; the
  SSE task, created after the first chunk, shares it.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

from ..core.vlm_checkpoint import SERVED_ARCHITECTURES
from . import metrics
from ..core.modes import ALGORITHM_NAME, check_mode_fields, check_thinking_budget
from .params import PARAM_KEYS, ParamError, add_custom, check_fields, mode_fields
from .request import COUNTER_KEYS

# top-level fields of an OpenAI body copied into custom_params: NLD's, and SGLang's own thinking
# budget (its grammar manager reads custom_params["thinking_budget"]; /generate has
# max_thinking_tokens for it, the OpenAI routes nothing)
TOP_LEVEL_KEYS = PARAM_KEYS + ("thinking_budget",)
THINK_ENV = "SGLANG_MAX_THINK_TOKENS"

CONVERT_TARGETS = (
    "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion."
    "_convert_to_internal_request",
    "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._convert_to_internal_request",
)
TOKENIZE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._create_tokenized_object"
STREAM_TARGET = ("sglang.srt.managers.scheduler_components.output_streamer."
                 "SchedulerOutputStreamer.stream_output")
USAGE_TARGET = "sglang.srt.entrypoints.openai.usage_processor.UsageProcessor.calculate_response_usage"
STREAM_USAGE_TARGET = ("sglang.srt.entrypoints.openai.usage_processor.UsageProcessor."
                       "calculate_streaming_usage")
GENERATE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request"
# latest meta_info per choice index of the request being streamed (shared with the SSE task)
_STREAM_META: ContextVar[dict | None] = ContextVar("nemotron_sglang_stream_meta", default=None)


def suffix_ids(serving, request) -> list[int] | None:
    """The token ids of a completion's ``suffix`` (OpenAI field), unless SGLang's completion
    template (fill-in-the-middle prompts) already placed it in the prompt."""
    suffix = getattr(request, "suffix", None)
    templates = getattr(serving, "template_manager", None)
    if not suffix or getattr(templates, "completion_template_name", None) is not None:
        return None
    tokenizer = serving.tokenizer_manager.tokenizer
    return list(tokenizer.encode(suffix, add_special_tokens=False))


def copy_top_level_fields(result, self, request, raw_request=None, *args, **kwargs):
    body = getattr(raw_request, "_json", None)
    body = body if isinstance(body, dict) else {}
    suffix = suffix_ids(self, request)
    if suffix is not None:
        body = {**body, "suffix_ids": suffix}
    adapted = result[0] if isinstance(result, tuple) else result
    copy_fields(body, adapted)
    return None


def copy_fields(body: dict, obj) -> None:
    """The ``TOP_LEVEL_KEYS`` of a request's JSON ``body`` into each of ``obj``'s (SGLang's
    ``GenerateReqInput``) sampling parameters' ``custom_params``; a value already there wins."""
    fields = {k: body[k] for k in TOP_LEVEL_KEYS if k in body}
    if not fields:
        return
    sp = obj.sampling_params
    if sp is None:
        sp = obj.sampling_params = {}
    for params in sp if isinstance(sp, list) else [sp]:
        if params is not None:
            add_custom(params, fields)


def check_request_fields(custom: dict[str, Any] | None, dllm_algorithm: str | None,
                         nld_model: bool) -> None:
    """Main-process checks (no scheduler state); raises ParamError."""
    custom = custom or {}
    if dllm_algorithm != ALGORITHM_NAME:
        mode = custom.get("decode_mode")
        if nld_model and mode not in (None, "ar"):
            raise ParamError("decode_mode", f"this server decodes plain AR only; launch it with "
                                            f"--dllm-algorithm {ALGORITHM_NAME} for {mode!r}")
        if nld_model:                    # a plain AR server decodes ar, so core's rule refuses
            try:                         # the mode-only fields
                check_mode_fields("ar", mode_fields(custom))
            except ParamError as e:
                raise ParamError(e.field, f"{e.message}, on a server launched without "
                                          f"--dllm-algorithm {ALGORITHM_NAME}") from None
        return
    check_fields(custom)


def check_tokenized(result, self, *args, **kwargs):
    sp = getattr(result, "sampling_params", None)
    if sp is None:
        return None
    server_args = getattr(self, "server_args", None)
    algo = getattr(server_args, "dllm_algorithm", None)
    archs = getattr(getattr(getattr(self, "model_config", None), "hf_config", None),
                    "architectures", None) or []
    nld = bool(set(SERVED_ARCHITECTURES) & set(archs))
    custom = getattr(sp, "custom_params", None)
    if isinstance(custom, dict) and isinstance(custom.get("canvas"), str):
        # a canvas given as text (mask placeholders: the tokenizer's mask token) becomes ids
        custom["canvas"] = list(self.tokenizer.encode(custom["canvas"], add_special_tokens=False))
    try:
        check_request_fields(custom, algo, nld)
        if nld:
            check_token_ids(getattr(result, "input_ids", None),
                            getattr(getattr(self, "model_config", None), "vocab_size", None))
            check_token_ids(getattr(result, "token_ids_logprob", None),
                            getattr(getattr(self, "model_config", None), "vocab_size", None),
                            "token_ids_logprob")
            custom = getattr(sp, "custom_params", None) or {}
            if isinstance(custom.get("canvas"), list):
                check_token_ids(custom["canvas"], getattr(getattr(self, "model_config", None),
                                                          "vocab_size", None), "canvas")
        if nld:
            check_thinking(getattr(sp, "custom_params", None), server_args)
    except ParamError as e:
        raise ValueError(f"nemotron-sglang: {e}") from None
    return None


def check_thinking(custom, server_args) -> None:
    """A thinking budget is enforced by SGLang's reasoning wrapper, which needs
    ``--reasoning-parser``, ``--enable-strict-thinking`` and its token filter on
    (``SGLANG_MAX_THINK_TOKENS`` >= 0; ``nemotron-sglang serve`` sets it); without them SGLang
    would ignore the budget silently: refuse it instead."""
    budget = (custom or {}).get("thinking_budget")
    if budget is None:
        return
    check_thinking_budget(budget)
    missing = [flag for flag, on in (
        ("--reasoning-parser", getattr(server_args, "reasoning_parser", None)),
        ("--enable-strict-thinking", getattr(server_args, "enable_strict_thinking", False)))
        if not on]
    if not missing and int(os.environ.get(THINK_ENV, "-1")) < 0:
        missing.append(f"{THINK_ENV} >= 0 (the filter's default budget)")
    if missing:
        raise ParamError("thinking_budget", "this server does not enforce a thinking budget; "
                                            f"launch it with {', '.join(missing)}")


def check_token_ids(ids, vocab_size: int | None, field: str = "input_ids") -> None:
    """Out-of-vocabulary ids (of the prompt, or of ``token_ids_logprob``) would crash SGLang's
    scheduler (IndexError): refuse them."""
    if ids is None or vocab_size is None:
        return
    bad = [int(t) for t in ids if not 0 <= int(t) < vocab_size]
    if bad:
        raise ParamError(field, f"token ids outside the vocabulary [0, {vocab_size}): "
                                      f"{bad[:5]}")


def attach_logprobs(req, nld) -> None:
    """The logprobs of the tokens a canvas round just returned, into SGLang's lists (as its AR
    path appends them: value and id per token, the top k when asked)."""
    entries, nld.round_logprobs = nld.round_logprobs, []
    lp = getattr(req, "logprob", None)
    if not entries or not req.return_logprob or lp is None or \
            lp.output_token_logprobs_val is None:
        return
    tokens = req.output_ids[len(req.output_ids) - len(entries):]
    for tok, (value, top, at_ids) in zip(tokens, entries):
        lp.output_token_logprobs_val.append(value)
        lp.output_token_logprobs_idx.append(tok)
        if lp.top_logprobs_num > 0:
            lp.output_top_logprobs_val.append([v for _, v in top])
            lp.output_top_logprobs_idx.append([t for t, _ in top])
        if lp.token_ids_logprob is not None:
            lp.output_token_ids_logprobs_val.append(list(at_ids))
            lp.output_token_ids_logprobs_idx.append(list(lp.token_ids_logprob))


def export_stats(self, reqs, *args, **kwargs):
    for req in reqs:
        nld = getattr(req, "nld", None)
        if nld is None or not nld.started:      # validated only: the algorithm never ran it
            continue
        lp = getattr(req, "logprob", None)
        if lp is not None and lp.output_token_logprobs_val is not None:
            # SGLang's streamer sends logprobs up to max(len(output_ids), 1), as if a prefill had
            # emitted the first token: a round that returned none must not skip the first entry
            req.send_output_token_logprobs_offset = min(
                req.send_output_token_logprobs_offset, len(lp.output_token_logprobs_val))
        if nld.round_logprobs:
            attach_logprobs(req, nld)
        stats = nld.stats
        n = len(getattr(req, "output_ids_through_stop", None) or req.output_ids)
        info = req.customized_info if req.customized_info is not None else {}
        for key, value in stats.counters().items():
            seq = info.setdefault(key, [])
            del seq[n:]
            seq.extend([value] * (n - len(seq)))
            if seq:
                seq[-1] = value
        req.customized_info = info
        if req.finished() and not nld.recorded:
            nld.recorded = True
            # per-mode counters use the requested mode ("auto", not what it chose)
            metrics.record_finished(stats.mode, len(req.output_ids), stats.forwards)
    return None


def _last(meta: dict, key: str):
    v = meta.get(key)
    if isinstance(v, list):                   # SGLang's token-aligned form
        return v[-1] if v else None
    return v


def usage_stats(responses: list[dict]) -> dict[str, Any] | None:
    """NLD counters over the choices of one response, or None if the server did not run them."""
    metas = [r.get("meta_info", {}) for r in responses]
    forwards = [_last(m, "nld_forwards") for m in metas]
    if any(f is None for f in forwards):
        return None
    tokens = sum(m.get("completion_tokens", 0) for m in metas)
    cycles = sum(_last(m, "nld_cycles") or 0 for m in metas)
    cycle_tokens = sum(_last(m, "nld_cycle_tokens") or 0 for m in metas)
    modes = sorted({_last(m, "nld_mode") for m in metas})
    total = sum(forwards)
    rounds = sum(_last(m, "nld_rounds") or 0 for m in metas)
    carried = sum(_last(m, "nld_pass_tokens") or 0 for m in metas)
    blocks = sorted({_last(m, "nld_block_length") for m in metas} - {None})
    return {"decode_mode": modes[0] if len(modes) == 1 else ",".join(modes),
            "forwards": total, "cycles": cycles, "rounds": rounds,
            "forwards_per_cycle": round(total / cycles, 4) if cycles else None,
            "tokens_per_forward": round(tokens / total, 4) if total else None,
            "pass_tokens_per_token": round(carried / tokens, 4) if tokens else None,
            "block_length": (blocks[0] if len(blocks) == 1 else
                             ",".join(map(str, blocks)) if blocks else None),
            "acceptance_length": (round(cycle_tokens / cycles, 4)
                                  if cycles and modes != ["ar"] else None)}


def add_usage(result, responses, *args, **kwargs):
    stats = usage_stats(responses)
    if stats is None or result is None:
        return None
    for k, v in stats.items():
        setattr(result, k, v)
    return result


def allow_usage_extras() -> None:
    """Let ``UsageInfo`` carry our fields and the response models serialise them."""
    from sglang.srt.entrypoints.openai import protocol

    protocol.UsageInfo.model_config["extra"] = "allow"
    protocol.UsageInfo.model_rebuild(force=True)
    for name in dir(protocol):
        cls = getattr(protocol, name)
        fields = getattr(cls, "model_fields", None)
        if isinstance(cls, type) and fields and "usage" in fields:
            cls.model_rebuild(force=True)


def counters_once(meta: dict) -> dict:
    """``meta_info`` with each ``nld_*`` counter as one value, its latest (SGLang carries
    ``customized_info`` as a token-aligned list; a chunk that added no token carries none)."""
    out = {k: v for k, v in meta.items() if k not in COUNTER_KEYS}
    for k in COUNTER_KEYS:
        v = meta.get(k)
        if isinstance(v, list):
            if v:
                out[k] = v[-1]
        elif v is not None:
            out[k] = v
    return out


def _once(out):
    """An answer with ``counters_once`` applied to a copy of its ``meta_info`` (SGLang's own
    state keeps the lists it accumulates)."""
    if isinstance(out, dict) and isinstance(out.get("meta_info"), dict):
        return {**out, "meta_info": counters_once(out["meta_info"])}
    return out


async def track_stream_meta(original, self, obj, *args, **kwargs):
    raw = kwargs.get("request", args[0] if args else None)
    body = getattr(raw, "_json", None)       # SGLang's /generate parsed it (its contract check)
    if isinstance(body, dict) and getattr(getattr(raw, "url", None), "path", "") == "/generate":
        copy_fields(body, obj)               # top-level fields, as on the OpenAI routes
    box: dict[int, dict] = {}
    _STREAM_META.set(box)
    inner = original(self, obj, *args, **kwargs)
    try:
        async for out in inner:
            if isinstance(out, list):                       # a batch: one answer per request
                out = [_once(o) for o in out]
            else:
                out = _once(out)
                if isinstance(out, dict) and isinstance(out.get("meta_info"), dict):
                    box[int(out.get("index", 0) or 0)] = out["meta_info"]
            yield out
    finally:                     # a client that leaves early must still abort SGLang's request
        await inner.aclose()


def add_streaming_usage(result, prompt_tokens, reasoning_tokens, completion_tokens, *args,
                        **kwargs):
    box = _STREAM_META.get()
    if not box or result is None:
        return None
    responses = [{"meta_info": {**meta, "completion_tokens": completion_tokens.get(i, 0)}}
                 for i, meta in sorted(box.items())]
    return add_usage(result, responses)

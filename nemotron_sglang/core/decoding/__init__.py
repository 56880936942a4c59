"""Decoders for NLD's modes over batches of requests: a registry of strategies and ``generate``.

``ar``, ``diffusion``, ``linear_spec`` and ``quadratic_spec`` are small :class:`Strategy`
classes over one step loop (:class:`Decoder`). Unknown mode names fail loudly.
"""

from __future__ import annotations

from ..modes import DECODE_MODES
from .ar import ARStrategy
from .base import DecodeError, DecodeParams, Pass, RequestState, Strategy, seed_ask
from .decide_batched import decide_batched
from .decisions import Ask, Decision, Kind, decide_each
from .processors import SamplingRule, SamplingValues
from .diffusion import DiffusionStrategy
from .linear_spec import LinearSpecStrategy
from .loop import Decoder, LoopStats, Request, Result
from .quadratic_spec import QuadraticSpecStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (ARStrategy, DiffusionStrategy, LinearSpecStrategy,
                              QuadraticSpecStrategy)
}
if tuple(STRATEGIES) != DECODE_MODES:                # the registry is core/modes.py's list
    raise ImportError(f"strategies {tuple(STRATEGIES)} differ from the modes {DECODE_MODES}")
MODES: tuple[str, ...] = DECODE_MODES


def get_strategy(mode: str) -> Strategy:
    try:
        return STRATEGIES[mode]()
    except KeyError:
        raise DecodeError(f"unknown decode mode {mode!r}; known: {list(MODES)}") from None


def make_decoder(model, cache, decide=decide_batched) -> Decoder:
    return Decoder(model, cache, {m: get_strategy(m) for m in MODES}, decide)


def default_cache(model, requests: list[Request], page_size: int = 16):
    """A paged cache large enough for ``requests`` (prompt + output + lookahead each)."""
    from ..kv_cache import PagedKVCache

    cfg = model.config
    pages = 0
    for r in requests:
        block = r.params.block_length or cfg.block_size
        tokens = len(r.prompt_ids) + r.params.max_new_tokens + 2 * block * (block + 1)
        pages += -(-tokens // page_size)
    return PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                        head_dim=cfg.head_dim, num_pages=max(pages, 1), page_size=page_size,
                        dtype=model.dtype)


def generate(model, requests: list[Request], cache=None, decide=decide_batched) -> list[Result]:
    """Decode a batch (modes may differ per request) with a fresh cache unless one is given;
    ``decide``: the batched decision layer or its per-request twin ``decide_each``."""
    cache = cache if cache is not None else default_cache(model, requests)
    return make_decoder(model, cache, decide).run(requests)


__all__ = ["Ask", "Decision", "Kind", "SamplingRule", "SamplingValues", "decide_batched",
           "decide_each", "seed_ask",
           "DecodeError", "DecodeParams", "Decoder", "LoopStats", "MODES", "Pass", "Request",
           "RequestState", "Result", "STRATEGIES", "Strategy", "default_cache", "generate",
           "get_strategy", "make_decoder"]

"""How many requests a tri-mode server runs at once: the one rule, from the device's memory.

SGLang derives a normal server's running-request limit from its KV pool
(``kv_cache_configurator.resolve_max_num_reqs``): at most ``kv_tokens // 2`` (each request
holds at least one prompt and one decode token) and the request-slot pool it sizes from that
(``req_slots``: 2048..4096 by default, ``--max-running-requests`` when given, never above
``kv_tokens // 2``). A dLLM server without the flag runs one request at a time
(``DllmConfig.from_server_args``). A canvas round holds, per request, at least one committed
context token plus the ``block_size``-slot canvas, so the same rule at a canvas round's floor is

    cap = min(req_slots, kv_tokens // (block_size + 1)),  at least 1

e.g. a 16384-token pool at block 32 with 2048 request slots: min(2048, 16384 // 33) = 496.
``--max-running-requests N`` wins over the derived value, within SGLang's request slots (which
already hold ``min(N, kv_tokens // 2)``). Pure Python: no torch, no SGLang.
"""

from __future__ import annotations


def canvas_floor_cap(kv_tokens: int, block_size: int) -> int:
    """Requests whose canvas rounds fit the pool at once: ``kv_tokens // (block_size + 1)``."""
    if kv_tokens < 1 or block_size < 1:
        raise ValueError(f"KV pool {kv_tokens} tokens and block {block_size} must be >= 1")
    return kv_tokens // (block_size + 1)


def running_request_cap(kv_tokens: int, req_slots: int, block_size: int,
                        requested: int | None = None) -> tuple[int, str]:
    """The server's running-request cap and how it was derived (one log line's text).

    ``kv_tokens``: SGLang's KV pool (``max_total_num_tokens``); ``req_slots``: its request-slot
    pool (the scheduler's ``max_running_requests``); ``requested``: ``--max-running-requests``
    or None."""
    if req_slots < 1:
        raise ValueError(f"request slots must be >= 1, got {req_slots}")
    floor = canvas_floor_cap(kv_tokens, block_size)
    derived = max(1, min(req_slots, floor))
    if requested is None:
        return derived, (f"max_running_requests {derived} = min(SGLang's request slots "
                         f"{req_slots}, KV pool {kv_tokens} tokens // (block {block_size} + 1) "
                         f"= {floor}), from SGLang's pools; --max-running-requests "
                         f"overrides it")
    if requested < 1:
        raise ValueError(f"--max-running-requests must be >= 1, got {requested}")
    cap = min(requested, req_slots)
    why = f"max_running_requests {cap} = --max-running-requests {requested}"
    if cap < requested:
        why += f" within SGLang's request slots {req_slots}"
    why += f" (the memory rule would give {derived}"
    if cap > floor:
        why += (f"; more than the KV pool's {floor} canvases at once: requests are retracted "
                f"under KV pressure")
    return cap, why + ")"

"""Counter-based uniforms: the randomness of every sampled decision, as a pure function of
(request seed, draw index).

A decision row draws one pair of uniforms ``u[0], u[1]`` in (0, 1) (``u[0]``: a sample or an
accept test, ``u[1]``: the residual sample after a rejection). The pair is a hash of the request's
seed and the row's draw index, so it is the same on every device, in the batched decision layer
and in its per-request twin, and a request's draws do not depend on which other requests share
its batch. Each request advances its own draw counter (``RequestState.stream``).

    seeds [n] int64, index [n] int64  ->  u [n, 2] float64 (53 random bits each)

The hash is ``lowbias32`` (Chris Wellons' 32-bit integer mixer) chained over the seed's two
halves, the index and the lane, on int64 tensors whose values stay below 2**32 (products wrap
mod 2**64, so the low 32 bits are exact).
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
SEED_BITS = 63                      # seeds are reduced to 63 bits (int64, non-negative)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def reduce_seed(seed: int) -> int:
    """Any Python int as the non-negative 63-bit seed the hash takes."""
    return int(seed) & ((1 << SEED_BITS) - 1)


def uniforms(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Uniform pairs [n, 2] float64 in (0, 1) for rows with ``seeds`` [n] and draw ``index`` [n]
    (both int64, on the device the result should be on)."""
    s = _mix((seeds & M32) ^ _mix(((seeds >> 32) & M32) ^ 0x9E3779B9))
    key = _mix(s ^ _mix((index & M32) ^ 0x85EBCA6B) ^ ((index >> 32) & M32))
    lanes = []
    for lane in (0x27D4EB2F, 0x165667B1):
        hi = _mix(key ^ lane)
        lo = _mix(hi ^ 0xC2B2AE35)
        bits = (hi >> 5) * (1 << 26) + (lo >> 6)          # 27 + 26 = 53 bits
        lanes.append((bits.to(torch.float64) + 0.5) * 2.0 ** -53)
    return torch.stack(lanes, dim=-1)


def stream_uniforms(seed: int, start: int, n: int, device=None) -> torch.Tensor:
    """The pairs [n, 2] of draws ``start .. start + n - 1`` of one request."""
    idx = torch.arange(start, start + n, dtype=torch.int64, device=device)
    return uniforms(torch.full_like(idx, reduce_seed(seed)), idx)

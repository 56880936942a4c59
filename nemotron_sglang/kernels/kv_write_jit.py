"""Triton device code for the KV-write scatter (imports triton; loaded lazily by :mod:`.kv_write`).

One program per written token ``i``: copy ``K_src[SRC[i]]`` and ``V_src[SRC[i]]``
(``[Hkv, D]`` each) into pool slot ``SLOT[i]`` of one layer, converting to the pool's dtype.
A negative slot means "padding, skip" (a fixed-size launch can carry unused entries).

Shapes: K_src/V_src ``[T, Hkv, D]``, SRC/SLOT ``[n]`` int64, K_pool/V_pool ``[S, Hkv, D]``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def kv_write_kernel(K_src, V_src, SRC, SLOT, K_pool, V_pool,
                    s_kt, s_kh, s_vt, s_vh, s_pk, s_pkh, s_pv, s_pvh,
                    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    slot = tl.load(SLOT + i).to(tl.int64)
    src = tl.load(SRC + i).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HEAD_DIM) & (slot >= 0)
    k = tl.load(K_src + src * s_kt + offs_h[:, None] * s_kh + offs_d[None, :], mask=mask)
    v = tl.load(V_src + src * s_vt + offs_h[:, None] * s_vh + offs_d[None, :], mask=mask)
    tl.store(K_pool + slot * s_pk + offs_h[:, None] * s_pkh + offs_d[None, :],
             k.to(K_pool.dtype.element_ty), mask=mask)
    tl.store(V_pool + slot * s_pv + offs_h[:, None] * s_pvh + offs_d[None, :],
             v.to(V_pool.dtype.element_ty), mask=mask)

"""Writing the K/V a pass commits into its cache slots (Triton scatter + torch twin) and the
device-side length bookkeeping that makes self-spec rollback free of host syncs.

Write: ``pool[slots[i]] = src[src_index[i]]`` for K and V of one layer, where
``src`` is the pass's packed new K or V ``[T, Hkv, D]``, ``src_index`` ``[n]`` picks the
tokens whose KV the pass keeps (all of a causal row, the row heads ``d_i`` of a quadratic row:
``MaskSpec.kv_write_index`` shifted by the row's start) and ``slots`` ``[n]`` are flat pool
slots (``page * page_size + offset``); a negative slot is padding and is skipped.
Pools are one layer's ``[S, Hkv, D]`` views (``cache.k[layer]``).

Rollback bookkeeping (linear / quadratic self-spec)
--------------------------------------------------
A KV-writing pass stages its tokens at positions ``len .. len + n - 1``, contiguous in
position order (quadratic rows write only their heads, so the staged run is ``d_0 .. d_{R-1}``).
The verifier then accepts ``c`` drafts and the cache keeps ``c + 1`` of them. Rolling back is
therefore a *length* update, never a data move: the rejected slots hold stale K/V that no
query reads (every kernel reads a prefix strictly below the length) and that the next pass
overwrites. On the device that is ``lengths += accepted + 1`` (:func:`commit_lengths_`), and
the next pass's write slots follow from the page table and the new lengths
(:func:`staging_slots`) — no ``.item()``, no host round trip inside the step, provided the
pages for ``len + n`` tokens were reserved before the step (the host cache's ``append``
reserves them; :class:`~nemotron_sglang.core.kv_cache.PagedKVCache` trims pages past the
committed length when the host learns ``c`` at the end of the step, which it must read anyway
to emit tokens). The host-side cache (``commit`` / ``rollback``) stays the source of truth
between steps; these helpers only avoid stalls within one.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["commit_lengths_", "kv_write", "kv_write_torch", "kv_write_triton", "staging_slots"]


def _check(k_pool, v_pool, k_src, v_src, src_index, slots) -> None:
    if k_src.shape != v_src.shape or k_src.dim() != 3:
        raise ValueError(f"k/v sources must be [T, Hkv, D] alike, got {tuple(k_src.shape)} "
                         f"and {tuple(v_src.shape)}")
    if k_pool.shape[1:] != k_src.shape[1:] or v_pool.shape != k_pool.shape:
        raise ValueError(f"pool {tuple(k_pool.shape)} does not match source {tuple(k_src.shape)}")
    if src_index.shape != slots.shape or slots.dim() != 1:
        raise ValueError("src_index and slots must be 1-D of equal length")


def kv_write_torch(k_pool: torch.Tensor, v_pool: torch.Tensor, k_src: torch.Tensor,
                   v_src: torch.Tensor, src_index: torch.Tensor, slots: torch.Tensor) -> None:
    """Readable twin of :func:`kv_write_triton` (boolean indexing: syncs on CUDA)."""
    _check(k_pool, v_pool, k_src, v_src, src_index, slots)
    keep = slots >= 0
    dst, src = slots[keep].long(), src_index[keep].long()
    k_pool[dst] = k_src[src].to(k_pool.dtype)
    v_pool[dst] = v_src[src].to(v_pool.dtype)


def kv_write_triton(k_pool: torch.Tensor, v_pool: torch.Tensor, k_src: torch.Tensor,
                    v_src: torch.Tensor, src_index: torch.Tensor, slots: torch.Tensor) -> None:
    """Scatter in one launch, one program per written token; no host synchronisation."""
    _check(k_pool, v_pool, k_src, v_src, src_index, slots)
    n = slots.shape[0]
    if n == 0:
        return
    try:
        jit = importlib.import_module("nemotron_sglang.kernels.kv_write_jit")
    except ImportError as e:
        raise RuntimeError(f"kv_write_triton needs `triton`; use kv_write_torch ({e})") from e
    if k_pool.device.type != "cuda":
        from triton.runtime.interpreter import InterpretedFunction
        if not isinstance(jit.kv_write_kernel, InterpretedFunction):
            raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1 set before the "
                               "kernel module is first imported")
    for t in (k_pool, v_pool, k_src, v_src):
        if t.stride(-1) != 1:
            raise ValueError("the head_dim axis must be contiguous")
    hkv, d = k_src.shape[1], k_src.shape[2]
    jit.kv_write_kernel[(n,)](
        k_src, v_src, src_index, slots, k_pool, v_pool,
        k_src.stride(0), k_src.stride(1), v_src.stride(0), v_src.stride(1),
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        NUM_HEADS=hkv, HEAD_DIM=d, BLOCK_H=triton_next_pow2(hkv), BLOCK_D=triton_next_pow2(d),
        num_warps=4 if hkv * d >= 1024 else 1)


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def kv_write(cache, layer: int, k_src: torch.Tensor, v_src: torch.Tensor,
             src_index: torch.Tensor, slots: torch.Tensor, impl: str = "triton") -> None:
    """Write into ``cache.k[layer]`` / ``cache.v[layer]``; ``impl`` is ``triton`` or ``torch``."""
    fns = {"triton": kv_write_triton, "torch": kv_write_torch}
    if impl not in fns:
        raise ValueError(f"unknown kv_write impl {impl!r}; known: {sorted(fns)}")
    dev = cache.k.device
    fns[impl](cache.k[layer], cache.v[layer], k_src, v_src, src_index.to(dev), slots.to(dev))


def commit_lengths_(lengths: torch.Tensor, accepted: torch.Tensor, extra: int = 1) -> torch.Tensor:
    """In place on the device: ``lengths += accepted + extra`` (1: keep the verified token too)."""
    return lengths.add_(accepted.to(lengths.dtype) + extra)


def staging_slots(page_table: torch.Tensor, lengths: torch.Tensor, n: int,
                  page_size: int) -> torch.Tensor:
    """Slots ``[R, n]`` of positions ``lengths[r] .. lengths[r] + n - 1`` (device, no sync).

    page_table ``[R, P]`` must already hold the pages for those positions (reserved earlier).
    """
    pos = lengths.long()[:, None] + torch.arange(n, device=lengths.device)[None, :]
    page = torch.gather(page_table.long(), 1, pos // page_size)
    return page * page_size + pos % page_size

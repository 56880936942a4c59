"""FlashInfer path for the same paged block attention (imported lazily; UNTESTED here).

flashinfer cannot be installed on the CPU machines this project is built on, and no GPU
session has run this file yet: it is written against FlashInfer's documented 0.2+ Python API
and must be proven on a GPU (``benchmarks/kernels.py`` compares it with the reference when
``import flashinfer`` works) before anything depends on it.

Same signature and semantics as :func:`nemotron_sglang.core.attention.paged_attention`:
q ``[T, Hq, D]``, k_new/v_new ``[T, Hkv, D]`` -> ``[T, Hq, D]``. Split the way FlashInfer
supports it, as cascade attention does:

1. prefix: ``BatchPrefillWithPagedKVCacheWrapper`` over each row's cached prefix, no mask
   (every query sees its whole prefix), ``return_lse=True``;
2. new tokens: ``BatchPrefillWithRaggedKVCacheWrapper`` over k_new/v_new with ``causal=True``
   when every row is causal, no mask when every row is bidirectional, otherwise a
   ``custom_mask`` (the rows' ``build_mask`` new-token blocks, flattened — FlashInfer needs
   the mask materialised, ``q_len²`` bits per row, 1056² ≈ 140 KB at B = 32);
3. ``flashinfer.merge_state`` combines the two (output, lse) pairs.

Rows with an empty prefix are given a zero-page prefix and their prefix state is overwritten
with (0, -inf) before the merge. Plans are rebuilt per call (host work, like the Triton
wrapper's metadata); a server would plan once per forward and reuse it for every layer.
Only 16-bit dtypes and FlashInfer's head dims (64, 128, 256) are supported by FlashInfer.
"""

from __future__ import annotations

import importlib

import torch

from ..core.attention import MaskKind, build_mask

__all__ = ["flashinfer_available", "paged_attention_flashinfer"]

_WORKSPACE: dict[torch.device, torch.Tensor] = {}


def flashinfer_available() -> bool:
    try:
        importlib.import_module("flashinfer")
    except ImportError:
        return False
    return True


def _flashinfer():
    try:
        return importlib.import_module("flashinfer")
    except ImportError as e:
        raise RuntimeError(
            "attention impl 'flashinfer' needs the flashinfer package (a CUDA wheel matching "
            "your torch; https://docs.flashinfer.ai/installation.html); it is not installed "
            f"here. Use 'triton' or 'reference' instead. ({e})") from e


def _workspace(device: torch.device) -> torch.Tensor:
    if device not in _WORKSPACE:
        _WORKSPACE[device] = torch.zeros(128 * 1024 * 1024, dtype=torch.uint8, device=device)
    return _WORKSPACE[device]


def paged_attention_flashinfer(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache,
                               layer: int, batch, scale: float) -> torch.Tensor:
    """Drop-in for ``core.attention.paged_attention`` on FlashInfer (GPU only, unproven)."""
    fi = _flashinfer()
    if q.device.type != "cuda":
        raise RuntimeError("the flashinfer attention path runs on CUDA tensors only")
    dev, t, hq, d = q.device, q.shape[0], q.shape[1], q.shape[2]
    hkv, ps = k_new.shape[1], cache.page_size
    ws = _workspace(dev)

    # host metadata (int32): ragged query offsets, paged prefix (indptr / indices / last len)
    qo, kv_pages, kv_ptr, last_len = [0], [], [0], []
    for sid, n, p in zip(batch.seq_ids, batch.q_lens, batch.prefix_lens):
        qo.append(qo[-1] + n)
        pages = cache.page_table(sid)[: -(-p // ps)]
        kv_pages += pages
        kv_ptr.append(len(kv_pages))
        last_len.append(p - (len(pages) - 1) * ps if pages else 0)
    i32 = dict(dtype=torch.int32, device=dev)
    qo_indptr = torch.tensor(qo, **i32)

    # 1. prefix over the paged pool; NHD layout [pages, page_size, Hkv, D] is a view of ours
    k_pool = cache.k[layer].view(cache.num_pages, ps, hkv, d)
    v_pool = cache.v[layer].view(cache.num_pages, ps, hkv, d)
    paged = fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
    paged.plan(qo_indptr, torch.tensor(kv_ptr, **i32), torch.tensor(kv_pages or [0], **i32),
               torch.tensor(last_len, **i32), hq, hkv, d, ps, causal=False, sm_scale=scale,
               q_data_type=q.dtype, kv_data_type=cache.k.dtype)
    o_pre, lse_pre = paged.run(q, (k_pool, v_pool), return_lse=True)
    empty = [r for r, p in enumerate(batch.prefix_lens) if p == 0]
    if empty:
        for r in empty:
            o_pre[qo[r]:qo[r + 1]] = 0
            lse_pre[qo[r]:qo[r + 1]] = float("-inf")

    # 2. new tokens, ragged, with the rows' mask
    kinds = {m.kind for m in batch.masks}
    ragged = fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD")
    mask_kw: dict = {"causal": kinds == {MaskKind.CAUSAL}}
    if kinds - {MaskKind.CAUSAL, MaskKind.BIDIRECTIONAL} or len(kinds) > 1:
        mask_kw = {"custom_mask": torch.cat([
            build_mask(m, 0, n, device=dev).flatten() for m, n in zip(batch.masks, batch.q_lens)])}
    ragged.plan(qo_indptr, qo_indptr, hq, hkv, d, sm_scale=scale, q_data_type=q.dtype,
                kv_data_type=k_new.dtype, **mask_kw)
    o_new, lse_new = ragged.run(q, k_new, v_new, return_lse=True)

    # 3. merge the two softmax states
    out, _ = fi.merge_state(o_pre, lse_pre, o_new, lse_new)
    return out.to(q.dtype).view(t, hq, d)

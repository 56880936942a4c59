"""Host side of the Triton paged block attention: metadata, launch heuristics, the wrapper.

:func:`paged_attention_triton` has exactly the signature and semantics of
:func:`nemotron_sglang.core.attention.paged_attention` (the oracle): q ``[T, Hq, D]``,
k_new/v_new ``[T, Hkv, D]`` packed over the rows of a
:class:`~nemotron_sglang.core.batch.ForwardBatch`; every new token sees its row's whole cached
prefix (``batch.prefix_lens[r]`` tokens of ``batch.seq_ids[r]``); among the new tokens the
row's mask kind decides (causal / bidirectional / quadratic with block B). Returns
``[T, Hq, D]`` in q's dtype. The device code is in :mod:`.attention_jit`.

Host work per call (documented because it sits on the forward's critical path):
:func:`build_metadata` reads ``batch.q_lens`` / ``prefix_lens`` / ``masks`` (Python ints) and
each row's page list from the cache (``cache.page_table``, only the pages the prefix covers),
packs them into ONE int32 host tensor and copies it to the device once. The result is
memoised for the last (batch, cache, prefix pages) seen, so the per-layer calls of one model
forward pay the build and the copy once; checking the memo still lists each row's prefix pages
(O(total prefix pages) Python work per layer call). :func:`attention_for_forward` skips even
that: it builds the metadata once and returns an ``attention_fn`` bound to one forward.
No device->host synchronisation happens. The server's canvas steps build none of this: a
``core.step_plan.StepPlan`` carries the rows and tiles in its one upload and the kernel reads
SGLang's ``req_to_token`` through each row's table row (:func:`metadata_from_plan`).
"""

from __future__ import annotations

import importlib
import math
import weakref
from dataclasses import dataclass

import torch

from ..core.attention import MaskKind

__all__ = ["AttentionMetadata", "LaunchConfig", "attention_for_forward", "build_metadata",
           "choose_config", "metadata_from_plan", "paged_attention_triton",
           "paged_attention_with_metadata", "plan_config", "triton_available"]



def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _jit():
    """The @triton.jit module, imported (and its kernels decorated) on first use."""
    try:
        mod = importlib.import_module("nemotron_sglang.kernels.attention_jit")
    except ImportError as e:
        raise RuntimeError("the Triton attention kernel needs `triton` (pip install "
                           "'nemotron-sglang[gpu]'); use attention impl 'reference' without "
                           f"it ({e})") from e
    return mod


def _check_interpreter(kernel, device: torch.device) -> None:
    if device.type == "cuda":
        return
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            "Triton kernels on CPU tensors run only under the interpreter: set "
            "TRITON_INTERPRET=1 before nemotron_sglang.kernels first launches a Triton kernel "
            "(triton reads it when the kernel module is imported)")


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and kv split; ``block_m`` rows = ``block_m // group`` tokens × group heads."""

    block_m: int
    block_n: int
    num_splits: int
    num_warps: int = 4
    num_stages: int = 2


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_config(q_lens, prefix_lens, group: int, num_kv_heads: int, head_dim: int,
                  device: torch.device, block_m: int | None = None, block_n: int | None = None,
                  num_splits: int | None = None) -> LaunchConfig:
    """Heuristics (host ints only). GPU figures are untuned guesses until measured on a device.

    * decode-like passes (every row 1 token): ``block_m = max(16, group)`` — the group's heads
      of one token fill the tile;
    * otherwise 64 rows (16 tokens × 4 heads at the 8B shape), 128 for long query rows on
      CUDA (64 on CPU too: the interpreter is fastest with few, large tiles);
    * kv split (flash-decoding) when tiles × kv heads cannot fill the SMs twice over, each split
      keeping at least 128 prefix keys (at most 16 splits).
    """
    max_q = max(q_lens)
    if block_m is None:
        if max_q == 1:
            block_m = 16
        elif max_q * group >= 1024 and device.type == "cuda":
            block_m = 128
        else:
            block_m = 64
    block_m = _next_pow2(max(block_m, group, 16))          # tl.dot needs >= 16, arange pow2
    if block_n is None:
        block_n = 32 if head_dim > 128 else 64
    block_n = _next_pow2(max(block_n, 16))
    tok = block_m // group
    n_tiles = sum(-(-n // tok) for n in q_lens)
    max_prefix = max(prefix_lens)
    if num_splits is None:
        programs = n_tiles * num_kv_heads
        want = -(-2 * _num_sms(device) // programs)
        num_splits = max(1, min(want, max_prefix // 128, 16))
    num_splits = max(1, min(num_splits, max(1, -(-max_prefix // block_n))))
    warps = 8 if block_m >= 128 else 4
    return LaunchConfig(block_m=block_m, block_n=block_n, num_splits=num_splits, num_warps=warps)


@dataclass
class AttentionMetadata:
    """Device tensors describing one pass, plus the host ints the launch needs.

    ``rows`` [6, R]: q_start, q_len, prefix_len, mask kind (0 causal, 1 bidirectional,
    2 quadratic), width (B + 1 for quadratic, else 1), page-table row (``core.step_plan``'s row
    table). ``page_table`` [N, P]: row ``rows[5, r]`` lists row r's pages (padded with 0, never
    read past the prefix; SGLang's ``req_to_token`` as it is). ``tiles`` [2, n_tiles]: row and
    first token of each query tile.
    """

    rows: torch.Tensor
    page_table: torch.Tensor
    tiles: torch.Tensor
    num_tokens: int
    page_size: int
    chunk: int
    config: LaunchConfig


def _chunk(max_prefix: int, config: LaunchConfig) -> int:
    chunk = -(-max(max_prefix, 1) // config.num_splits)
    return -(-chunk // config.block_n) * config.block_n


def plan_config(plan_rows, group: int, num_kv_heads: int, head_dim: int, device: torch.device,
                bucket=None, **overrides) -> LaunchConfig:
    """The launch configuration of a step's rows (``core.step_plan.PlanRow``), chosen before the
    plan is built (its tiles are this config's query tiles); a ``bucket``'s own tile and split
    count when the step is padded to one (the same launch for any row mix)."""
    if bucket is not None and bucket.tile_tokens:
        return choose_config([bucket.tile_tokens], [max(bucket.max_prefix, 1)], group,
                             num_kv_heads, head_dim, device, block_m=bucket.tile_tokens * group,
                             num_splits=bucket.splits)
    return choose_config([r.q_len for r in plan_rows], [r.prefix_len for r in plan_rows], group,
                         num_kv_heads, head_dim, device, **overrides)


def metadata_from_plan(plan, page_table: torch.Tensor, page_size: int,
                       config: LaunchConfig) -> AttentionMetadata:
    """Metadata of a ``core.step_plan.StepPlan`` built with ``tile_tokens = block_m // group``:
    its row table and tiles as they are on the device, ``page_table`` (SGLang: ``req_to_token``)
    read by the kernel through the rows' table row. No host work beyond ints, no copy."""
    if plan.tiles is None:
        raise ValueError("the step plan has no tiles: build it with the kernel's tile_tokens")
    bucket = plan.bucket
    longest = bucket.max_prefix if bucket is not None and bucket.max_prefix else plan.max_prefix
    return AttentionMetadata(rows=plan.table, page_table=page_table, tiles=plan.tiles,
                             num_tokens=int(plan.ids.shape[0]), page_size=page_size,
                             chunk=_chunk(longest, config), config=config)


def build_metadata(batch, cache, group: int, head_dim: int, device: torch.device,
                   config: LaunchConfig | None = None, **overrides) -> AttentionMetadata:
    """Host-built metadata for ``batch`` over ``cache`` (one H2D copy). See module docstring."""
    q_lens, prefix_lens = list(batch.q_lens), list(batch.prefix_lens)
    page_size = cache.page_size
    if config is None:
        config = choose_config(q_lens, prefix_lens, group, cache.num_kv_heads, head_dim, device,
                               **overrides)
    tok = config.block_m // group
    n_rows = len(q_lens)
    pages = []
    for sid, p in zip(batch.seq_ids, prefix_lens):
        need = -(-p // page_size)
        table = cache.page_table(sid)
        if len(table) < need:
            raise ValueError(f"seq {sid}: prefix {p} exceeds its {len(table)} page(s) of "
                             f"{page_size} tokens")
        pages.append(table[:need])
    max_pages = max(1, max(len(p) for p in pages))
    tile_row, tile_tok0 = [], []
    for r, n in enumerate(q_lens):
        for t0 in range(0, n, tok):
            tile_row.append(r)
            tile_tok0.append(t0)
    n_tiles = len(tile_row)
    host = torch.zeros(6 * n_rows + n_rows * max_pages + 2 * n_tiles, dtype=torch.int32)
    starts = [0]
    for n in q_lens[:-1]:
        starts.append(starts[-1] + n)
    kinds, widths = [], []
    for m, n in zip(batch.masks, q_lens):
        kinds.append(m.kind.code)
        if m.kind == MaskKind.QUADRATIC:
            m.rows(n)                       # validates q_len = rows·(B+1)
            widths.append(m.block + 1)
        else:
            widths.append(1)
    host[: 6 * n_rows] = torch.tensor(starts + q_lens + prefix_lens + kinds + widths
                                      + list(range(n_rows)), dtype=torch.int32)
    pt = torch.zeros(n_rows, max_pages, dtype=torch.int32)
    for r, p in enumerate(pages):
        if p:
            pt[r, : len(p)] = torch.tensor(p, dtype=torch.int32)
    host[6 * n_rows: 6 * n_rows + n_rows * max_pages] = pt.flatten()
    host[6 * n_rows + n_rows * max_pages:] = torch.tensor(tile_row + tile_tok0, dtype=torch.int32)
    if torch.device(device).type == "cuda":
        dev = host.pin_memory().to(device, non_blocking=True)     # the caching host allocator
    else:                                                           # keeps it alive till copied
        dev = host.to(device)
    rows = dev[: 6 * n_rows].view(6, n_rows)
    page_table = dev[6 * n_rows: 6 * n_rows + n_rows * max_pages].view(n_rows, max_pages)
    tiles = dev[6 * n_rows + n_rows * max_pages:].view(2, n_tiles)
    return AttentionMetadata(rows=rows, page_table=page_table, tiles=tiles,
                             num_tokens=sum(q_lens), page_size=page_size,
                             chunk=_chunk(max(prefix_lens), config), config=config)


def paged_attention_with_metadata(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                                  k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Launch over prepared metadata. k_cache/v_cache: one layer's pool ``[S, Hkv, D]``."""
    jit = _jit()
    t, hq, d = q.shape
    hkv = k_new.shape[1]
    if k_new.shape != (t, hkv, d) or v_new.shape != k_new.shape or hq % hkv:
        raise ValueError(f"bad shapes q {tuple(q.shape)} k {tuple(k_new.shape)} "
                         f"v {tuple(v_new.shape)}")
    if not (q.dtype == k_new.dtype == v_new.dtype):
        raise ValueError(f"q/k/v dtypes differ: {q.dtype} {k_new.dtype} {v_new.dtype}")
    if t != meta.num_tokens:
        raise ValueError(f"q has {t} tokens, the batch {meta.num_tokens}")
    _check_interpreter(jit.paged_attention_kernel, q.device)
    q, k_new, v_new = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_new, v_new))
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the cache's head_dim axis must be contiguous")
    group = hq // hkv
    cfg = meta.config
    out = torch.empty_like(q)
    block_d = max(16, _next_pow2(d))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"     # tf32 is ignored for 16-bit
    splits = cfg.num_splits
    if splits > 1:
        o_part = torch.empty(splits, t, hq, d, device=q.device, dtype=torch.float32)
        lse_part = torch.empty(splits, t, hq, device=q.device, dtype=torch.float32)
    else:
        o_part = lse_part = out                                   # unused
    rows, tiles = meta.rows, meta.tiles
    grid = (tiles.shape[1], hkv, splits)
    jit.paged_attention_kernel[grid](
        q, k_new, v_new, k_cache, v_cache, out, o_part, lse_part,
        meta.page_table, rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], tiles[0],
        tiles[1],
        scale * math.log2(math.e), meta.page_size, meta.chunk, t,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0),
        v_new.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), out.stride(0), out.stride(1), meta.page_table.stride(0),
        GROUP=group, TOK=cfg.block_m // group, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HEAD_DIM=d, BLOCK_D=block_d, NUM_SPLITS=splits, NUM_HQ=hq, PREC=prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if splits > 1:
        jit.merge_splits_kernel[(t, hq)](o_part, lse_part, out, t, out.stride(0), out.stride(1),
                                         NUM_HQ=hq, HEAD_DIM=d, BLOCK_D=block_d,
                                         NUM_SPLITS=splits, num_warps=1)
    return out


class _MetadataMemo:
    """One entry: metadata of the last (batch, cache, prefix pages, device, overrides)."""

    def __init__(self) -> None:
        self._key = None
        self._batch_ref = None
        self._meta = None

    def get(self, batch, cache, group, head_dim, device, overrides):
        pages = tuple(tuple(cache.page_table(s)[: -(-p // cache.page_size)])
                      for s, p in zip(batch.seq_ids, batch.prefix_lens))
        key = (id(cache), cache.page_size, pages, group, head_dim, str(device),
               tuple(sorted(overrides.items())))
        if (self._meta is not None and self._key == key and self._batch_ref is not None
                and self._batch_ref() is batch):
            return self._meta
        meta = build_metadata(batch, cache, group, head_dim, device, **overrides)
        self._key, self._batch_ref, self._meta = key, weakref.ref(batch), meta
        return meta


_MEMO = _MetadataMemo()


def paged_attention_triton(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache,
                           layer: int, batch, scale: float, **overrides) -> torch.Tensor:
    """Drop-in for ``core.attention.paged_attention`` running the Triton kernel.

    ``overrides`` (tests, benchmarks): ``block_m``, ``block_n``, ``num_splits``.
    """
    _jit()                                   # a clear error first when triton is missing
    group = q.shape[1] // k_new.shape[1]
    meta = _MEMO.get(batch, cache, group, q.shape[2], q.device, overrides)
    return paged_attention_with_metadata(q, k_new, v_new, cache.k[layer], cache.v[layer], meta,
                                         scale)


def attention_for_forward(batch, cache, num_heads: int, head_dim: int, **overrides):
    """An ``attention_fn`` valid for ONE forward of ``batch`` over ``cache`` (metadata built once).

    Set it as ``model.attention_fn`` before the forward; it refuses any other batch or cache.
    """
    group = num_heads // cache.num_kv_heads
    meta = build_metadata(batch, cache, group, head_dim, cache.k.device, **overrides)

    def attention_fn(q, k_new, v_new, cache_, layer, batch_, scale):
        if batch_ is not batch or cache_ is not cache:
            raise ValueError("attention_for_forward: called with another batch or cache")
        return paged_attention_with_metadata(q, k_new, v_new, cache.k[layer], cache.v[layer],
                                             meta, scale)

    attention_fn.metadata = meta
    return attention_fn

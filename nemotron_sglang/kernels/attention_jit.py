"""Triton device code for block attention over the paged KV cache (imports triton; load lazily).

Only :mod:`nemotron_sglang.kernels.triton_attention` imports this module, on the first kernel
launch, so ``@triton.jit`` runs after the caller had its chance to set ``TRITON_INTERPRET=1``
(triton 3.x reads that variable when a function is decorated, not when triton is imported).

One program = (query tile, kv head, kv split). A tile packs ``TOK`` consecutive new tokens of
one request times the ``GROUP`` query heads that share kv head ``h`` (GQA packing: row ``m`` of
the tile is token ``tok0 + m // GROUP``, query head ``h * GROUP + m % GROUP``), so every K/V
block is loaded once for the whole group. Keys come in three streams, each masked from indices:

1. the cached prefix, positions ``[split * CHUNK, min(prefix_len, (split + 1) * CHUNK))``,
   through the page table (any page size >= 1), no mask (every query sees its whole prefix);
2. new tokens in a contiguous range: causal ``j <= i``; bidirectional all; quadratic (width
   ``W = B + 1``) only ``j`` in the query's own row with ``slot_i > 0`` and ``slot_j > 0``;
3. quadratic only: the row heads ``j = k * W`` for ``k <= row_i``.

Streams 2 and 3 together are exactly ``core.attention.build_mask`` for the new tokens, with
no overlap; they run in the last split only. Softmax is online in fp32 (base-2 exponent with
``log2(e)`` folded into the scale). With one split the program writes the normalised output;
with several it writes (output, log2-sum-exp) partials that :func:`merge_splits_kernel`
combines.

Shapes (int tensors int32 or int64): Q ``[T, Hq, D]``, K_new/V_new ``[T, Hkv, D]``,
K_cache/V_cache one layer ``[S, Hkv, D]`` (``S = pages * page_size``), PAGE_TABLE ``[N, P]``
(row ``ROW_TABLE[r]`` lists row r's pages: SGLang's ``req_to_token`` as it is), ROW_* ``[R]``,
TILE_ROW/TILE_TOK0 ``[n_tiles]``, O_PART ``[splits, T, Hq, D]`` fp32,
LSE_PART ``[splits, T, Hq]`` fp32, OUT ``[T, Hq, D]``. Last dims are contiguous.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.attention import MaskKind

# the row kinds' codes, from core's one table (constexpr: folded into the compiled kernel)
MASK_CAUSAL = tl.constexpr(MaskKind.CAUSAL.code)
MASK_BIDIRECTIONAL = tl.constexpr(MaskKind.BIDIRECTIONAL.code)
MASK_QUADRATIC = tl.constexpr(MaskKind.QUADRATIC.code)


@triton.jit
def _online_step(q, k, v, allowed, acc, m_i, l_i, qk_scale, PREC: tl.constexpr):
    """Fold one key block into the running (acc, max, sum); scores are in base-2 units."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)      # rows with nothing seen yet
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def paged_attention_kernel(
        Q, K_new, V_new, K_cache, V_cache, OUT, O_PART, LSE_PART,
        PAGE_TABLE, ROW_Q_START, ROW_Q_LEN, ROW_PREFIX, ROW_KIND, ROW_WIDTH, ROW_TABLE,
        TILE_ROW, TILE_TOK0,
        qk_scale, page_size, chunk, num_tokens,
        s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_ct, s_ch, s_cvt, s_cvh, s_ot, s_oh, s_pt,
        GROUP: tl.constexpr, TOK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
        NUM_HQ: tl.constexpr, PREC: tl.constexpr):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    r = tl.load(TILE_ROW + tile)
    tok0 = tl.load(TILE_TOK0 + tile)
    q_start = tl.load(ROW_Q_START + r).to(tl.int64)
    q_len = tl.load(ROW_Q_LEN + r)
    prefix = tl.load(ROW_PREFIX + r)
    kind = tl.load(ROW_KIND + r)
    width = tl.load(ROW_WIDTH + r)       # B + 1 for quadratic rows, 1 otherwise
    table_row = tl.load(ROW_TABLE + r).to(tl.int64)   # the row's row of PAGE_TABLE

    offs_m = tl.arange(0, BLOCK_M)
    tok = tok0 + offs_m // GROUP                     # token index inside the row
    hq = kvh * GROUP + offs_m % GROUP                # query head
    m_valid = (offs_m < TOK * GROUP) & (tok < q_len)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(Q + q_rows[:, None] * s_qt + hq[:, None] * s_qh + offs_d[None, :],
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # ---- stream 1: cached prefix through the page table --------------------------------
    kv_lo = split * chunk
    kv_hi = tl.minimum(prefix, kv_lo + chunk)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        pos = start + offs_n
        n_valid = pos < kv_hi
        page = tl.load(PAGE_TABLE + table_row * s_pt + pos // page_size, mask=n_valid, other=0)
        slot = page.to(tl.int64) * page_size + (pos % page_size)
        ld_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K_cache + slot[:, None] * s_ct + kvh * s_ch + offs_d[None, :], mask=ld_mask,
                    other=0.0).to(K_new.dtype.element_ty)
        v = tl.load(V_cache + slot[:, None] * s_cvt + kvh * s_cvh + offs_d[None, :], mask=ld_mask,
                    other=0.0).to(V_new.dtype.element_ty)
        acc, m_i, l_i = _online_step(q, k, v, n_valid[None, :], acc, m_i, l_i, qk_scale, PREC)

    # ---- new tokens (last split only) ---------------------------------------------------
    last = split == NUM_SPLITS - 1
    is_causal = kind == MASK_CAUSAL
    is_bidir = kind == MASK_BIDIRECTIONAL
    is_quad = kind == MASK_QUADRATIC
    t_last = tl.minimum(tok0 + TOK, q_len) - 1
    row_i = tok // width
    slot_i = tok % width
    row_first = tok0 // width
    row_last = t_last // width
    a_lo = tl.where(is_quad, row_first * width, 0)
    a_hi = tl.where(is_causal, t_last + 1,
                    tl.where(is_bidir, q_len, tl.minimum(q_len, (row_last + 1) * width)))
    a_hi = tl.where(last, a_hi, a_lo)
    # stream 2: contiguous new keys
    for start in range(a_lo, a_hi, BLOCK_N):
        j = start + offs_n
        n_valid = j < a_hi
        rows_j = (q_start + j).to(tl.int64)
        ld_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K_new + rows_j[:, None] * s_kt + kvh * s_kh + offs_d[None, :], mask=ld_mask,
                    other=0.0)
        v = tl.load(V_new + rows_j[:, None] * s_vt + kvh * s_vh + offs_d[None, :], mask=ld_mask,
                    other=0.0)
        row_j = j // width
        slot_j = j % width
        causal_ok = j[None, :] <= tok[:, None]
        quad_ok = (row_j[None, :] == row_i[:, None]) & (slot_i[:, None] > 0) & (slot_j[None, :] > 0)
        allowed = (is_bidir | (is_causal & causal_ok) | (is_quad & quad_ok)) & n_valid[None, :]
        acc, m_i, l_i = _online_step(q, k, v, allowed, acc, m_i, l_i, qk_scale, PREC)
    # stream 3: quadratic row heads d_0 .. d_row_last (strided keys)
    b_hi = tl.where(is_quad & last, row_last + 1, 0)
    for start in range(0, b_hi, BLOCK_N):
        kk = start + offs_n
        n_valid = kk < b_hi
        rows_j = (q_start + kk * width).to(tl.int64)
        ld_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K_new + rows_j[:, None] * s_kt + kvh * s_kh + offs_d[None, :], mask=ld_mask,
                    other=0.0)
        v = tl.load(V_new + rows_j[:, None] * s_vt + kvh * s_vh + offs_d[None, :], mask=ld_mask,
                    other=0.0)
        allowed = (kk[None, :] <= row_i[:, None]) & n_valid[None, :]
        acc, m_i, l_i = _online_step(q, k, v, allowed, acc, m_i, l_i, qk_scale, PREC)

    # ---- epilogue -------------------------------------------------------------------------
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    st_mask = m_valid[:, None] & d_valid[None, :]
    if NUM_SPLITS == 1:
        tl.store(OUT + q_rows[:, None] * s_ot + hq[:, None] * s_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=st_mask)
    else:
        lse = tl.where(l_i > 0.0, m_i + tl.math.log2(l_safe), float("-inf"))
        base = (split * num_tokens + q_rows) * NUM_HQ + hq            # [BLOCK_M] int64
        tl.store(O_PART + base[:, None] * HEAD_DIM + offs_d[None, :], out, mask=st_mask)
        tl.store(LSE_PART + base, lse, mask=m_valid)


@triton.jit
def merge_splits_kernel(O_PART, LSE_PART, OUT, num_tokens, s_ot, s_oh,
                        NUM_HQ: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        NUM_SPLITS: tl.constexpr):
    """OUT[t, h] = sum_s 2^(lse_s - lse) * O_PART[s, t, h] for one (token, query head)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    m = float("-inf")
    for s in tl.static_range(NUM_SPLITS):
        m = tl.maximum(m, tl.load(LSE_PART + (s * num_tokens + t) * NUM_HQ + h))
    m_use = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_D], tl.float32)
    den = 0.0
    for s in tl.static_range(NUM_SPLITS):
        base = (s * num_tokens + t) * NUM_HQ + h
        w = tl.math.exp2(tl.load(LSE_PART + base) - m_use)
        o = tl.load(O_PART + base * HEAD_DIM + offs_d, mask=d_valid, other=0.0)
        acc += w * o
        den += w
    den = tl.where(den > 0.0, den, 1.0)
    tl.store(OUT + t * s_ot + h * s_oh + offs_d, (acc / den).to(OUT.dtype.element_ty), mask=d_valid)

"""Reference attention over the paged KV cache for every mask kind NLD's modes use (the oracle).

A request's pass has ``P`` committed tokens in the cache (positions ``0..P-1``) and ``L`` new
query tokens. Every query sees the whole cached prefix; what it sees among the new tokens
depends on the :class:`MaskKind` (``x`` = may attend, ``.`` = masked; columns after ``|`` are
the new tokens):

CAUSAL (prefill, AR decode, verify, KV refresh)::

    prefix | n0 n1 n2 n3
    x x x  | x  .  .  .
    x x x  | x  x  .  .
    x x x  | x  x  x  .
    x x x  | x  x  x  x

BIDIRECTIONAL (diffusion denoise, self-spec draft): every new token sees every new token::

    x x x  | x  x  x  x      (all rows)

QUADRATIC (quadratic self-spec, model_spec §2.5), R rows of ``[d_i, M×B]`` (here R=2, B=2, so
new tokens are ``d0 m m d1 m m``): ``d_i`` sees ``d_0..d_i``; row ``i``'s masks see
``d_0..d_i`` and their whole own row::

             d0 m  m  d1 m  m
    d0    x | x  .  .  .  .  .
    m     x | x  x  x  .  .  .
    m     x | x  x  x  .  .  .
    d1    x | x  .  .  x  .  .
    m     x | x  .  .  x  x  x
    m     x | x  .  .  x  x  x

Only causal passes may write KV: all new tokens for CAUSAL, the ``d_i`` heads of every row for
QUADRATIC (their K/V are causal, hence equal to AR's).

A QUADRATIC pass is computed by its structure (:func:`quadratic_attention`): each query scores
the prefix, the heads of the rows before its own (R keys) and its own row (B+1 keys), so a
query costs P + R + B + 1 keys instead of P + R·(B+1); :func:`quadratic_attention_dense` (the
dense mask above) is its readable twin. Many CAUSAL or BIDIRECTIONAL rows of one query length
(a step's AR tokens, its drafts, its verify rows) run as one padded call
(:func:`padded_attention`; twin :func:`padded_attention_rows`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class MaskKind(str, enum.Enum):
    CAUSAL = "causal"
    BIDIRECTIONAL = "bidirectional"
    QUADRATIC = "quadratic"

    @property
    def code(self) -> int:
        """The integer the attention kernels read for this kind (per-row ``ROW_KIND``); the one
        table of them is ``KERNEL_CODES``."""
        return KERNEL_CODES[self]


KERNEL_CODES = {MaskKind.CAUSAL: 0, MaskKind.BIDIRECTIONAL: 1, MaskKind.QUADRATIC: 2}


@dataclass(frozen=True)
class MaskSpec:
    """How one request's new tokens attend to each other. ``block`` is B for QUADRATIC."""

    kind: MaskKind
    block: int = 0

    def __post_init__(self) -> None:
        if self.kind == MaskKind.QUADRATIC and self.block < 1:
            raise ValueError("a QUADRATIC mask needs block >= 1")

    def rows(self, q_len: int) -> int:
        """Number of quadratic rows in ``q_len`` new tokens (q_len = rows·(B+1))."""
        if self.kind != MaskKind.QUADRATIC:
            raise ValueError(f"{self.kind} mask has no rows")
        if q_len % (self.block + 1):
            raise ValueError(f"quadratic q_len {q_len} is not a multiple of B+1={self.block + 1}")
        return q_len // (self.block + 1)

    def kv_write_offsets(self, q_len: int) -> range:
        """The one rule of which new tokens a KV-writing pass stores, in position order: all of
        a causal pass, the row heads of a quadratic one (their K/V are causal by the mask)."""
        if self.kind == MaskKind.CAUSAL:
            return range(q_len)
        if self.kind == MaskKind.QUADRATIC:
            return range(0, self.rows(q_len) * (self.block + 1), self.block + 1)
        raise ValueError("a BIDIRECTIONAL pass never writes KV")

    def kv_write_index(self, q_len: int) -> torch.Tensor:
        """``kv_write_offsets`` as a tensor (indices into the new tokens)."""
        offsets = self.kv_write_offsets(q_len)
        return torch.arange(offsets.start, offsets.stop, offsets.step)


CAUSAL = MaskSpec(MaskKind.CAUSAL)
BIDIRECTIONAL = MaskSpec(MaskKind.BIDIRECTIONAL)


def quadratic(block: int) -> MaskSpec:
    return MaskSpec(MaskKind.QUADRATIC, block)


def build_mask(spec: MaskSpec, prefix_len: int, q_len: int, device=None) -> torch.Tensor:
    """Dense boolean mask [q_len, prefix_len + q_len]; True where the query may attend."""
    new = torch.zeros(q_len, q_len, dtype=torch.bool, device=device)
    if spec.kind == MaskKind.CAUSAL:
        new = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
    elif spec.kind == MaskKind.BIDIRECTIONAL:
        new[:] = True
    else:
        w = spec.block + 1
        r = spec.rows(q_len)
        row = torch.arange(q_len, device=device) // w
        slot = torch.arange(q_len, device=device) % w
        key_row, key_slot = row[None, :], slot[None, :]
        sees_heads = (key_slot == 0) & (key_row <= row[:, None])
        own_row = (key_row == row[:, None]) & (slot[:, None] > 0)
        new = sees_heads | own_row
        assert new.shape == (r * w, r * w)
    prefix = torch.ones(q_len, prefix_len, dtype=torch.bool, device=device)
    return torch.cat([prefix, new], dim=1)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Masked GQA softmax attention, computed in float32 (float64 if the input is float64).

    q [Lq, Hq, d], k/v [Lk, Hkv, d], mask [Lq, Lk] bool -> out [Lq, Hq, d] in q's dtype.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    qf = q.to(acc).transpose(0, 1)                                    # [Hq, Lq, d]
    kf = k.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)    # [Hq, Lk, d]
    vf = v.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)
    scores = (qf @ kf.transpose(1, 2)) * scale
    scores = scores.masked_fill(~mask[None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf                          # [Hq, Lq, d]
    return out.transpose(0, 1).to(q.dtype)


def quadratic_attention_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              prefix_len: int, block: int, scale: float) -> torch.Tensor:
    """The twin of :func:`quadratic_attention`: the dense QUADRATIC mask over every key."""
    mask = build_mask(quadratic(block), prefix_len, q.shape[0], device=q.device)
    return reference_attention(q, k, v, mask, scale)


def quadratic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int,
                        block: int, scale: float) -> torch.Tensor:
    """A QUADRATIC pass's attention by its structure, equal to :func:`quadratic_attention_dense`.

    q [L, Hq, d] with L = R·(B+1) new tokens; k, v [P + L, Hkv, d] = prefix then new tokens.
    Row i's query at slot s scores three key groups, softmaxed together::

        prefix       P keys        every query
        row heads    d_0..d_{i-1}  (heads of earlier rows; R keys, key row < i)
        own row      d_i, m..m     slot 0 sees only d_i, slots 1..B see the whole row

    Returns [L, Hq, d] in q's dtype (float32 accumulation, float64 for float64 input).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    w, p = block + 1, prefix_len
    n = q.shape[0]
    r = quadratic(block).rows(n)
    group = q.shape[1] // k.shape[1]
    qf = q.to(acc).transpose(0, 1)                                    # [H, L, d]
    kf = k.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)    # [H, P+L, d]
    vf = v.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)
    h, d = qf.shape[0], qf.shape[2]
    k_row, v_row = kf[:, p:].reshape(h, r, w, d), vf[:, p:].reshape(h, r, w, d)
    k_head, v_head = k_row[:, :, 0], v_row[:, :, 0]                   # [H, R, d]
    q_row = qf.view(h, r, w, d)
    s_prefix = (qf @ kf[:, :p].transpose(1, 2)) * scale               # [H, L, P]
    s_heads = (qf @ k_head.transpose(1, 2)) * scale                   # [H, L, R]
    s_own = (q_row @ k_row.transpose(2, 3)) * scale                   # [H, R, w, w]
    row_of = torch.arange(n, device=q.device) // w
    earlier = torch.arange(r, device=q.device)[None, :] < row_of[:, None]          # [L, R]
    s_heads = s_heads.masked_fill(~earlier[None], float("-inf"))
    head_query = torch.zeros(w, w, dtype=torch.bool, device=q.device)
    head_query[0, 1:] = True                                          # d_i: not its own masks
    s_own = s_own.masked_fill(head_query, float("-inf")).reshape(h, n, w)
    probs = torch.softmax(torch.cat([s_prefix, s_heads, s_own], dim=-1), dim=-1)
    p_prefix, p_heads, p_own = probs.split([p, r, w], dim=-1)
    out = p_prefix @ vf[:, :p] + p_heads @ v_head
    out = out + (p_own.reshape(h, r, w, w) @ v_row).reshape(h, n, d)
    return out.transpose(0, 1).to(q.dtype)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec,
                     prefix_len: int, scale: float) -> torch.Tensor:
    """One row's attention: q [L, Hq, d] over k, v [P + L, Hkv, d] under ``spec``."""
    if spec.kind == MaskKind.QUADRATIC:
        return quadratic_attention(q, k, v, prefix_len, spec.block, scale)
    return reference_attention(q, k, v, build_mask(spec, prefix_len, q.shape[0], q.device), scale)


def padded_mask(prefix_lens: torch.Tensor, width: int, spec: MaskSpec,
                length: int) -> torch.Tensor:
    """The mask of :func:`padded_attention`: [N, 1, L, W + L] bool, row n's first
    ``prefix_lens[n]`` of W prefix slots visible to every query, then ``spec`` over the L new
    tokens. A pass builds it once and hands it to every layer."""
    if spec.kind == MaskKind.QUADRATIC:
        raise ValueError("padded_attention takes CAUSAL or BIDIRECTIONAL rows")
    n = prefix_lens.shape[0]
    dev = prefix_lens.device
    prefix = torch.arange(width, device=dev)[None, :] < prefix_lens[:, None]       # [N, W]
    new = build_mask(spec, 0, length, device=dev)                                   # [L, L]
    return torch.cat([prefix[:, None, :].expand(n, length, width),
                      new[None].expand(n, length, length)], dim=2)[:, None]


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     prefix_lens: torch.Tensor, spec: MaskSpec, scale: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """N rows that share a CAUSAL or BIDIRECTIONAL mask and a query length L, in one call.

    q [N, L, Hq, d]; k, v [N, W + L, Hkv, d]: row n's committed prefix in its first
    ``prefix_lens[n]`` of W slots (the rest is padding, never attended: any finite values),
    then its L new tokens; prefix_lens [N] long; ``mask``: :func:`padded_mask` of these rows when
    the caller built it already (else built here). Returns [N, L, Hq, d] in q's dtype, equal to
    :func:`masked_attention` row by row (:func:`padded_attention_rows`, its twin). Row n = 0 with
    prefix_lens 2, W = 3, L = 2, CAUSAL (``-`` = padding)::

        k0 k1 -  | n0 n1
        x  x  .  | x  .
        x  x  .  | x  x

    One ``scaled_dot_product_attention`` for all rows (float32 accumulation, float64 for float64
    input), where the twin runs a Python loop over rows.
    """
    length = q.shape[1]
    if mask is None:
        mask = padded_mask(prefix_lens.to(q.device), k.shape[1] - length, spec, length)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(acc).transpose(1, 2), k.to(acc).transpose(1, 2), v.to(acc).transpose(1, 2),
        attn_mask=mask, scale=scale, enable_gqa=True)                        # [N, Hq, L, d]
    return out.transpose(1, 2).to(q.dtype)


def padded_attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          prefix_lens: torch.Tensor, spec: MaskSpec, scale: float,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """The readable twin of :func:`padded_attention`: :func:`masked_attention` row by row (each
    row's own mask; ``mask`` is accepted for the same signature and not read)."""
    width = k.shape[1] - q.shape[1]
    out = q.new_empty(*q.shape[:3], v.shape[3])
    for r, p in enumerate(prefix_lens.tolist()):
        keys = torch.cat([k[r, :p], k[r, width:]])
        values = torch.cat([v[r, :p], v[r, width:]])
        out[r] = masked_attention(q[r], keys, values, spec, p, scale)
    return out


def paged_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache, layer: int,
                    batch, scale: float) -> torch.Tensor:
    """Attention of a packed batch of new tokens over each request's cached prefix.

    q [T, Hq, d], k_new/v_new [T, Hkv, d] for the packed new tokens of ``batch``
    (a :class:`~nemotron_sglang.core.batch.ForwardBatch`); the prefix K/V of request ``r`` are
    the first ``batch.prefix_lens[r]`` tokens of ``batch.seq_ids[r]`` in ``cache``.
    Returns [T, Hq, d]. Kernels implement this same signature.
    """
    out = torch.empty_like(q)
    for r, (start, end) in enumerate(batch.spans()):
        pk, pv = cache.gather(layer, batch.seq_ids[r], batch.prefix_lens[r])
        k = torch.cat([pk.to(k_new.dtype), k_new[start:end]])
        v = torch.cat([pv.to(v_new.dtype), v_new[start:end]])
        out[start:end] = masked_attention(q[start:end], k, v, batch.masks[r],
                                          batch.prefix_lens[r], scale)
    return out

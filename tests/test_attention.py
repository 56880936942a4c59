"""The structured QUADRATIC attention equals its dense twin (the mask of ``build_mask``), and
the padded many-row call equals core's attention row by row.

Judged against float64: in fp64 the two agree to rounding; in float32 / bfloat16 the structured
path's error against the fp64 dense result is at most 2x the dense path's own error in the same
dtype, plus a small floor. Inputs are random with a seed per case, reported on failure.
"""

from __future__ import annotations

import pytest
import torch

from nemotron_sglang.core.attention import (BIDIRECTIONAL, CAUSAL, MaskKind, build_mask,
                                            masked_attention, padded_attention,
                                            padded_attention_rows, quadratic,
                                            quadratic_attention, quadratic_attention_dense)

CASES = [(0, 1, 4), (5, 1, 4), (9, 3, 4), (17, 4, 8), (3, 6, 2), (30, 2, 32)]


def _inputs(prefix: int, rows: int, block: int, seed: int, dtype):
    g = torch.Generator().manual_seed(seed)
    n = rows * (block + 1)
    q = torch.randn(n, 4, 16, generator=g, dtype=torch.float64)
    k = torch.randn(prefix + n, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(prefix + n, 2, 16, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("prefix,rows,block", CASES)
def test_structured_equals_dense_in_fp64(prefix, rows, block):
    seed = 1000 + 97 * prefix + 13 * rows + block
    q, k, v = _inputs(prefix, rows, block, seed, torch.float64)
    got = quadratic_attention(q, k, v, prefix, block, 0.25)
    ref = quadratic_attention_dense(q, k, v, prefix, block, 0.25)
    err = (got - ref).abs().max().item()
    assert err < 1e-12, f"seed {seed}: structured vs dense max error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prefix,rows,block", CASES)
def test_structured_error_no_worse_than_dense(prefix, rows, block, dtype):
    seed = 5000 + 97 * prefix + 13 * rows + block
    q, k, v = _inputs(prefix, rows, block, seed, dtype)
    ref = quadratic_attention_dense(q.double(), k.double(), v.double(), prefix, block, 0.25)
    got = quadratic_attention(q, k, v, prefix, block, 0.25).double()
    plain = quadratic_attention_dense(q, k, v, prefix, block, 0.25).double()
    e_got, e_plain = (got - ref).abs().max().item(), (plain - ref).abs().max().item()
    floor = 1e-6 if dtype == torch.float32 else 1e-2
    assert e_got <= 2 * e_plain + floor, (
        f"seed {seed} {dtype}: structured error {e_got:.3g} > 2 x dense {e_plain:.3g} + {floor}")


def test_each_key_group_matters():
    """Changing a key the mask hides changes nothing; changing one it shows changes the rows that
    see it (so a structured path that dropped a group would fail the equality above)."""
    prefix, rows, block, seed = 4, 3, 4, 77
    q, k, v = _inputs(prefix, rows, block, seed, torch.float64)
    base = quadratic_attention(q, k, v, prefix, block, 0.5)
    mask = build_mask(quadratic(block), prefix, q.shape[0])
    for key in (1, prefix + 0, prefix + block + 1, prefix + block + 3):   # prefix, d0, d1, row1 mask
        v2 = v.clone()
        v2[key] += 1.0
        moved = (quadratic_attention(q, k, v2, prefix, block, 0.5) - base).abs().amax((1, 2)) > 0
        assert torch.equal(moved, mask[:, key]), f"key {key}: rows that changed != rows that see it"


def test_masked_attention_routes_by_kind():
    q, k, v = _inputs(3, 2, 4, 11, torch.float64)
    spec = quadratic(4)
    assert spec.kind == MaskKind.QUADRATIC
    torch.testing.assert_close(masked_attention(q, k, v, spec, 3, 0.3),
                               quadratic_attention_dense(q, k, v, 3, 4, 0.3), rtol=0, atol=1e-12)


PADDED = [(CAUSAL, 1, [0, 5, 17, 3]), (CAUSAL, 5, [9, 0, 2]), (BIDIRECTIONAL, 4, [7, 1, 12, 12]),
          (BIDIRECTIONAL, 1, [4])]


def _padded_inputs(lens, q_len, seed, dtype):
    """Random rows with random (finite) padding past each prefix: it must not be read."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lens), max(lens)
    q = torch.randn(n, q_len, 4, 16, generator=g, dtype=torch.float64)
    k = torch.randn(n, width + q_len, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(n, width + q_len, 2, 16, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), torch.tensor(lens)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec,q_len,lens", PADDED)
def test_padded_attention_equals_rows(spec, q_len, lens, dtype):
    """fp64: the padded call equals the row-by-row twin to rounding; lower precision: its error
    against fp64 is at most 2x the twin's own in the same dtype, plus a floor."""
    seed = 7000 + 31 * q_len + sum(lens) + (0 if spec == CAUSAL else 1)
    q, k, v, p = _padded_inputs(lens, q_len, seed, dtype)
    ref = padded_attention_rows(q.double(), k.double(), v.double(), p, spec, 0.25)
    got = padded_attention(q, k, v, p, spec, 0.25)
    assert got.dtype == dtype and got.shape == q.shape
    e_got = (got.double() - ref).abs().max().item()
    if dtype == torch.float64:
        assert e_got < 1e-12, f"seed {seed}: padded vs rows {e_got:.3g}"
        return
    e_rows = (padded_attention_rows(q, k, v, p, spec, 0.25).double() - ref).abs().max().item()
    floor = 1e-6 if dtype == torch.float32 else 1e-2
    assert e_got <= 2 * e_rows + floor, f"seed {seed} {dtype}: {e_got:.3g} vs rows {e_rows:.3g}"


def test_padded_attention_reads_no_padding_and_every_key():
    """Changing a padding key changes nothing; changing a row's prefix or new key changes exactly
    the queries of that row that see it."""
    q, k, v, p = _padded_inputs([3, 6], 3, 99, torch.float64)
    base = padded_attention(q, k, v, p, CAUSAL, 0.5)
    width = 6
    for row, key, sees in ((0, 4, [0, 0, 0]), (0, 1, [1, 1, 1]), (1, 5, [1, 1, 1]),
                           (0, width + 1, [0, 1, 1]), (1, width + 2, [0, 0, 1])):
        v2 = v.clone()
        v2[row, key] += 1.0
        moved = (padded_attention(q, k, v2, p, CAUSAL, 0.5) - base).abs().amax((2, 3)) > 0
        want = torch.zeros(2, 3, dtype=torch.bool)
        want[row] = torch.tensor(sees, dtype=torch.bool)
        assert torch.equal(moved, want), f"row {row} key {key}: {moved.tolist()}"


def test_padded_attention_refuses_quadratic():
    q, k, v, p = _padded_inputs([2], 5, 3, torch.float64)
    with pytest.raises(ValueError, match="CAUSAL or BIDIRECTIONAL"):
        padded_attention(q, k, v, p, quadratic(4), 0.5)

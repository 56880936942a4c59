"""Tests for nemotron_sglang.core.rope: YaRN inverse frequencies, llama-4 q-scale, Rotary.apply.

The reference YaRN implementation below is written independently from model_spec §1.5 with
plain ``math`` and loops.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from nemotron_sglang.core import rope
from nemotron_sglang.core.config import RopeParameters, preset
from nemotron_sglang.core.rope import Rotary, llama4_query_scale, yarn_parameters


# ------------------------------------------------------------------ scalar reference
def ref_mscale(s: float, m: float) -> float:
    return 0.1 * m * math.log(s) + 1.0


def ref_yarn(rp: RopeParameters, dim: int) -> tuple[list[float], float]:
    base = float(rp.rope_theta)
    s = float(rp.factor)
    l0 = float(rp.original_max_position_embeddings)

    def corr(r):
        return dim * math.log(l0 / (2.0 * math.pi * r)) / (2.0 * math.log(base))

    low = math.floor(corr(rp.beta_fast))
    high = math.ceil(corr(rp.beta_slow))
    if low < 0:
        low = 0
    if high > dim - 1:
        high = dim - 1
    if high == low:
        high = high + 0.001
    out = []
    for i in range(dim // 2):
        f_extra = math.pow(base, -2.0 * i / dim)
        f_inter = f_extra / s
        ramp = (i - low) / (high - low)
        ramp = min(1.0, max(0.0, ramp))
        out.append(f_inter * ramp + f_extra * (1.0 - ramp))
    att = ref_mscale(s, rp.mscale) / ref_mscale(s, rp.mscale_all_dim)
    return out, att


def assert_close_list(got: torch.Tensor, want: list[float], rtol=1e-12):
    assert got.dtype == torch.float64
    assert got.shape == (len(want),)
    for i, (g, w) in enumerate(zip(got.tolist(), want)):
        assert abs(g - w) <= rtol * abs(w), (i, g, w)


# ------------------------------------------------------------------ YaRN
@pytest.mark.parametrize("name", ["8b", "14b", "tiny"])
def test_yarn_matches_scalar_reference(name):
    cfg = preset(name)
    inv, att = yarn_parameters(cfg.rope_parameters, cfg.head_dim)
    want, want_att = ref_yarn(cfg.rope_parameters, cfg.head_dim)
    assert_close_list(inv, want)
    assert att == want_att == 1.0


def test_14b_uses_theta_1e9():
    cfg = preset("14b")
    assert cfg.rope_parameters.rope_theta == 1.0e9
    inv14, _ = yarn_parameters(cfg.rope_parameters, 128)
    inv8, _ = yarn_parameters(preset("8b").rope_parameters, 128)
    assert not torch.allclose(inv14, inv8)


def test_yarn_ramp_structure_8b():
    # 8B: low = floor(20.4) = 20, high = ceil(36.4) = 37: pure extrapolation below 20,
    # pure interpolation (/16) from 37 on, strictly between in the ramp.
    rp = preset("8b").rope_parameters
    inv, _ = yarn_parameters(rp, 128)
    ext = [1e6 ** (-2 * i / 128) for i in range(64)]
    for i in range(64):
        if i <= 20:
            assert inv[i].item() == pytest.approx(ext[i], rel=1e-13)
        elif i >= 37:
            assert inv[i].item() == pytest.approx(ext[i] / 16, rel=1e-13)
        else:
            assert ext[i] / 16 < inv[i].item() < ext[i]


@pytest.mark.parametrize("rp,dim", [
    # clamping of high to dim-1 (small theta)
    (RopeParameters(rope_theta=20.0, factor=4.0, original_max_position_embeddings=16384), 16),
    # non-integer original length ratio, other betas
    (RopeParameters(rope_theta=5e5, factor=32.0, original_max_position_embeddings=8192,
                    beta_fast=16.0, beta_slow=2.0), 64),
    # tiny-like head_dim with a large theta (low clamped to 0)
    (RopeParameters(rope_theta=1e9, factor=2.0, original_max_position_embeddings=64), 16),
])
def test_yarn_other_parameters(rp, dim):
    inv, att = yarn_parameters(rp, dim)
    want, want_att = ref_yarn(rp, dim)
    assert_close_list(inv, want)
    assert att == pytest.approx(want_att, rel=1e-15)


def test_attention_factor_is_one_when_mscales_equal():
    for m in (1.0, 0.5, 2.0):
        rp = RopeParameters(factor=16.0, mscale=m, mscale_all_dim=m)
        _, att = yarn_parameters(rp, 128)
        assert att == pytest.approx(1.0, abs=1e-15)


def test_attention_factor_mscale_all_dim_zero():
    rp = RopeParameters(factor=16.0, mscale=1.0, mscale_all_dim=0.0)
    _, att = yarn_parameters(rp, 128)
    assert att == pytest.approx(0.1 * math.log(16) + 1.0, rel=1e-14)
    assert att == pytest.approx(1.2773, abs=1e-4)


def test_attention_factor_scales_cos_sin():
    cfg = preset("tiny").replace(
        rope_parameters=RopeParameters(rope_theta=10000.0, factor=8.0,
                                       original_max_position_embeddings=32,
                                       mscale=1.0, mscale_all_dim=0.0))
    r = Rotary(cfg)
    att = 0.1 * math.log(8.0) + 1.0
    assert r.attention_factor == pytest.approx(att, rel=1e-14)
    pos = torch.tensor([0, 3, 40])
    cos, sin = r.cos_sin(pos, torch.float64)
    # cos² + sin² == att² per (position, dim)
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.full_like(cos, att ** 2),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("theta,dim", [(10000.0, 16), (1e6, 128), (500.0, 8)])
def test_default_rope_type(theta, dim):
    rp = RopeParameters(rope_type="default", rope_theta=theta, factor=16.0)
    inv, att = yarn_parameters(rp, dim)
    want = [theta ** (-2 * i / dim) for i in range(dim // 2)]
    assert_close_list(inv, want)
    assert att == 1.0


# ------------------------------------------------------------------ llama-4 q-scale
def test_llama4_scale_below_original_is_exactly_one():
    rp = preset("8b").rope_parameters
    pos = torch.tensor([0, 1, 100, 8191, 16383])
    s = llama4_query_scale(pos, rp)
    assert s.dtype == torch.float64
    assert torch.equal(s, torch.ones(5, dtype=torch.float64))


def test_llama4_scale_at_and_beyond_original():
    rp = preset("8b").rope_parameters
    L0 = rp.original_max_position_embeddings
    pos = torch.tensor([L0, 2 * L0 - 1, 3 * L0, 3 * L0 + 5, 262143])
    s = llama4_query_scale(pos, rp).tolist()
    assert s[0] == pytest.approx(1 + 0.1 * math.log(2), rel=1e-15)
    assert s[1] == pytest.approx(1 + 0.1 * math.log(2), rel=1e-15)
    assert s[2] == pytest.approx(1 + 0.1 * math.log(4), rel=1e-15)
    assert s[3] == pytest.approx(1 + 0.1 * math.log(4), rel=1e-15)
    assert s[4] == pytest.approx(1 + 0.1 * math.log(16), rel=1e-15)


def test_llama4_scale_uses_beta():
    rp = RopeParameters(original_max_position_embeddings=10, llama_4_scaling_beta=0.7)
    s = llama4_query_scale(torch.tensor([9, 10, 25]), rp).tolist()
    assert s == pytest.approx([1.0, 1 + 0.7 * math.log(2), 1 + 0.7 * math.log(3)], rel=1e-15)


# ------------------------------------------------------------------ Rotary.apply
def _seed():
    return random.randrange(2**31)   # seeded per test by conftest


def complex_rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """NeoX rotate-half as a complex multiplication: z_j = x_j + i·x_{j+d/2}, z ← z·e^{i·p·f_j}."""
    h = x.shape[-1] // 2
    z = torch.complex(x[..., :h], x[..., h:])                     # [T, H, h]
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, h]
    w = torch.polar(torch.ones_like(ang), ang)[:, None, :]
    zr = z * w
    return torch.cat([zr.real, zr.imag], dim=-1)


@pytest.fixture
def tiny_rotary():
    cfg = preset("tiny")
    return cfg, Rotary(cfg)


def test_apply_matches_complex_rotation(tiny_rotary):
    cfg, r = tiny_rotary
    assert r.attention_factor == 1.0
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([0, 1, 5, 17, 31])
    q = torch.randn(5, cfg.num_attention_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(5, cfg.num_key_value_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    qo, ko = r.apply(q, k, pos)
    inv = r.inv_freq
    torch.testing.assert_close(qo, complex_rotate(q, pos, inv), rtol=1e-12, atol=1e-12,
                               msg=f"seed {seed}")
    torch.testing.assert_close(ko, complex_rotate(k, pos, inv), rtol=1e-12, atol=1e-12,
                               msg=f"seed {seed}")
    # position 0 is the identity
    torch.testing.assert_close(qo[0], q[0], rtol=0, atol=1e-15)
    # inputs untouched
    assert not torch.equal(qo[1:], q[1:])


def test_apply_pairs_i_with_i_plus_half(tiny_rotary):
    cfg, r = tiny_rotary
    d, h = cfg.head_dim, cfg.head_dim // 2
    # a unit vector in dim j must rotate only into dim j + d/2 (not j+1, the GPT-J layout)
    for j in (0, 3, h - 1):
        k = torch.zeros(1, 1, d, dtype=torch.float64)
        k[0, 0, j] = 1.0
        q = k.clone()
        _, ko = r.apply(q, k, torch.tensor([7]))
        nz = (ko[0, 0].abs() > 1e-15).nonzero().flatten().tolist()
        theta = 7 * r.inv_freq[j].item()
        assert nz == [j, j + h]
        assert ko[0, 0, j].item() == pytest.approx(math.cos(theta), abs=1e-14)
        assert ko[0, 0, j + h].item() == pytest.approx(math.sin(theta), abs=1e-14)


def test_apply_preserves_pair_norms_of_k(tiny_rotary):
    cfg, r = tiny_rotary
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([0, 9, 31, 32, 100, 255])
    q = torch.randn(6, cfg.num_attention_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(6, cfg.num_key_value_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    _, ko = r.apply(q, k, pos)
    h = cfg.head_dim // 2
    n_in = k[..., :h] ** 2 + k[..., h:] ** 2
    n_out = ko[..., :h] ** 2 + ko[..., h:] ** 2
    torch.testing.assert_close(n_out, n_in, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    assert not torch.allclose(ko[1:], k[1:])


def test_apply_scales_q_not_k_beyond_original(tiny_rotary):
    cfg, r = tiny_rotary
    L0 = cfg.rope_parameters.original_max_position_embeddings
    assert L0 == 32
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([0, 31, 32, 100])
    q = torch.randn(4, cfg.num_attention_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(4, cfg.num_key_value_heads, cfg.head_dim, generator=g, dtype=torch.float64)
    qo, ko = r.apply(q, k, pos)
    q_rot = complex_rotate(q, pos, r.inv_freq)
    k_rot = complex_rotate(k, pos, r.inv_freq)
    scale = [1.0, 1.0, 1 + 0.1 * math.log(2), 1 + 0.1 * math.log(4)]
    for t in range(4):
        torch.testing.assert_close(qo[t], q_rot[t] * scale[t], rtol=1e-12, atol=1e-12,
                                   msg=f"q at position {pos[t].item()} (seed {seed})")
        torch.testing.assert_close(ko[t], k_rot[t], rtol=1e-12, atol=1e-12,
                                   msg=f"k at position {pos[t].item()} (seed {seed})")
    # the norm ratio of q reveals the scale directly
    ratio = (qo.norm(dim=-1) / q.norm(dim=-1))
    torch.testing.assert_close(ratio, torch.tensor(scale, dtype=torch.float64)[:, None].expand_as(ratio),
                               rtol=1e-12, atol=0)


def _dot_after_rope(r, cfg, qv, kv, m, n):
    q = qv.view(1, 1, cfg.head_dim)
    k = kv.view(1, 1, cfg.head_dim)
    qm, _ = r.apply(q, k, torch.tensor([m]))
    _, kn = r.apply(q, k, torch.tensor([n]))
    return float((qm * kn).sum())


def test_relative_position_property(tiny_rotary):
    cfg, r = tiny_rotary
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    qv = torch.randn(cfg.head_dim, generator=g, dtype=torch.float64)
    kv = torch.randn(cfg.head_dim, generator=g, dtype=torch.float64)
    for delta in (-7, -1, 0, 3, 12):
        base = _dot_after_rope(r, cfg, qv, kv, 15 + delta, 15)
        for shift in (-15, -10, -3, 4, 9):
            m, n = 15 + delta + shift, 15 + shift
            if not (0 <= m < 32 and 0 <= n < 32):
                continue
            got = _dot_after_rope(r, cfg, qv, kv, m, n)
            assert got == pytest.approx(base, rel=1e-11, abs=1e-11), (delta, m, n, seed)
    # and it does depend on m - n
    vals = [_dot_after_rope(r, cfg, qv, kv, m, 0) for m in range(8)]
    assert max(vals) - min(vals) > 1e-3, (vals, seed)


def test_relative_position_broken_by_q_scale_beyond_original(tiny_rotary):
    # beyond original_max the q-scale (1 + 0.1 ln 2) multiplies the score: same m-n, different dot
    cfg, r = tiny_rotary
    g = torch.Generator().manual_seed(_seed())
    qv = torch.randn(cfg.head_dim, generator=g, dtype=torch.float64)
    kv = torch.randn(cfg.head_dim, generator=g, dtype=torch.float64)
    a = _dot_after_rope(r, cfg, qv, kv, 10, 5)
    b = _dot_after_rope(r, cfg, qv, kv, 37, 32)
    assert b == pytest.approx(a * (1 + 0.1 * math.log(2)), rel=1e-11, abs=1e-12)


def test_rotary_uses_config_head_dim_and_inv_freq():
    cfg = preset("14b")
    r = Rotary(cfg)
    assert r.inv_freq.shape == (64,)
    want, _ = ref_yarn(cfg.rope_parameters, 128)
    assert_close_list(r.inv_freq, want)
    assert rope.yarn_parameters is yarn_parameters

"""The model over the paged cache vs a naive dense-mask forward, for every mask kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import new_cache
from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, build_mask, quadratic
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.rope import Rotary


def naive_forward(model, ids: list[int], positions: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Whole-sequence forward from the state dict with a dense [L, L] mask; logits [L, V]."""
    cfg, sd = model.config, model.state_dict()
    pos = torch.tensor(positions)
    rot = Rotary(cfg)

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    x = sd["encoder.embed_tokens.weight"][torch.tensor(ids)]
    n = len(ids)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(n, cfg.num_attention_heads, cfg.head_dim)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(n, cfg.num_key_value_heads, cfg.head_dim)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(n, cfg.num_key_value_heads, cfg.head_dim)
        q, k = rot.apply(q, k, pos)
        g = cfg.num_attention_heads // cfg.num_key_value_heads
        out = torch.empty_like(q)
        for head in range(cfg.num_attention_heads):
            s = q[:, head] @ k[:, head // g].T / math.sqrt(cfg.head_dim)
            s = s.masked_fill(~mask, float("-inf"))
            out[:, head] = torch.softmax(s, -1) @ v[:, head // g]
        x = x + out.reshape(n, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        mlp = F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ sd[p + "mlp.down_proj.weight"].T
    return rms(x, sd["encoder.norm.weight"]) @ sd["diffusion_head.weight"].T


def causal_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def rand_ids(n: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefill(model, cache, sid: int, ids: list[int]) -> torch.Tensor:
    cache.add(sid)
    b = ForwardBatch.from_rows([PassRow(sid, ids, list(range(len(ids))), 0, CAUSAL)], write_kv=True)
    logits = model(b, cache)
    cache.commit(sid, len(ids))
    return logits


def test_causal_matches_naive_and_incremental_decode(model64):
    ids = rand_ids(44, seed=11)          # crosses original_max (32): llama-4 q-scale active
    ref = naive_forward(model64, ids, list(range(44)), causal_mask(44))
    cache = new_cache(model64, shuffle_seed=5)
    full = prefill(model64, cache, 0, ids)
    torch.testing.assert_close(full, ref, rtol=1e-10, atol=1e-10)
    cache2 = new_cache(model64, page_size=3)
    parts = [prefill(model64, cache2, 0, ids[:20])]
    for t in range(20, 44):
        b = ForwardBatch.from_rows([PassRow(0, [ids[t]], [t], t, CAUSAL)], write_kv=True)
        parts.append(model64(b, cache2))
        cache2.commit(0, 1)
    torch.testing.assert_close(torch.cat(parts), ref, rtol=1e-10, atol=1e-10)
    for layer in range(model64.config.num_hidden_layers):
        for a, b in zip(cache.gather(layer, 0), cache2.gather(layer, 0)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_incremental_decode_float32_close(ckpt_dirs):
    from nemotron_sglang.core.weights import load_model
    m32 = load_model(ckpt_dirs["s0_lora"], dtype=torch.float32)
    ids = rand_ids(30, seed=12)
    ref = naive_forward(m32.double(), ids, list(range(30)), causal_mask(30)).float()
    m32 = load_model(ckpt_dirs["s0_lora"], dtype=torch.float32)
    cache = new_cache(m32)
    parts = [prefill(m32, cache, 0, ids[:10])]
    for t in range(10, 30):
        parts.append(m32(ForwardBatch.from_rows([PassRow(0, [ids[t]], [t], t, CAUSAL)],
                                                write_kv=True), cache))
        cache.commit(0, 1)
    torch.testing.assert_close(torch.cat(parts), ref, rtol=1e-4, atol=1e-4)


def test_bidirectional_block_over_prefix_matches_naive_and_keeps_kv(model64):
    m = model64
    prefix, block = rand_ids(13, seed=21), [7] + [100] * 3 + rand_ids(4, seed=22)
    cache = new_cache(m, shuffle_seed=1)
    prefill(m, cache, 0, prefix)
    snapshot = (cache.k.clone(), cache.v.clone(), cache.length(0), cache.num_free_pages)
    pos = list(range(13, 13 + len(block)))
    b = ForwardBatch.from_rows([PassRow(0, block, pos, 13, BIDIRECTIONAL)])
    got = m(b, cache)
    n = 13 + len(block)
    mask = causal_mask(n)
    mask[13:, :] = True                         # block queries see prefix and the whole block
    ref = naive_forward(m, prefix + block, list(range(n)), mask)[13:]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(cache.k, snapshot[0]) and torch.equal(cache.v, snapshot[1])
    assert (cache.length(0), cache.num_free_pages, cache.staged(0)) == (13, snapshot[3], 0)
    causal = m(ForwardBatch.from_rows([PassRow(0, block, pos, 13, CAUSAL)]), cache)
    assert not torch.allclose(causal[:-1], got[:-1])   # the mask matters


@pytest.mark.parametrize("rows,block", [(1, 4), (3, 4), (4, 4), (2, 8)])
def test_quadratic_pass_matches_separate_passes(model64, rows, block):
    m, mask_id = model64, model64.config.mask_token_id
    prefix = rand_ids(9, seed=30 + rows)
    heads = rand_ids(rows, seed=40 + rows)
    cache = new_cache(m)
    prefill(m, cache, 0, prefix)
    ids, pos = [], []
    for i, d in enumerate(heads):
        ids += [d] + [mask_id] * block
        pos += list(range(9 + i, 9 + i + block + 1))
    b = ForwardBatch.from_rows([PassRow(0, ids, pos, 9, quadratic(block))], write_kv=True)
    got = m(b, cache).view(rows, block + 1, -1)
    # heads: causal next-token logits after prefix + d_0..d_i
    ar = naive_forward(m, prefix + heads, list(range(9 + rows)), causal_mask(9 + rows))[9:]
    torch.testing.assert_close(got[:, 0], ar, rtol=1e-10, atol=1e-10)
    # row i's masks: a bidirectional draft block [d_i, M×B] after prefix + d_0..d_{i-1}
    for i in range(rows):
        seq = prefix + heads[: i + 1] + [mask_id] * block
        n, start = len(seq), 9 + i
        mask = causal_mask(n)
        mask[start:, :] = True
        mask[start, start + 1:] = False      # d_i does not see its own row's masks
        ref = naive_forward(m, seq, list(range(n)), mask)
        torch.testing.assert_close(got[i, 1:], ref[start + 1:], rtol=1e-10, atol=1e-10)
    # only the row heads were staged, and their K/V equal AR's causal K/V
    assert cache.staged(0) == rows
    cache.commit(0, rows)
    ref_cache = new_cache(m)
    prefill(m, ref_cache, 0, prefix + heads)
    for layer in range(m.config.num_hidden_layers):
        for a, r in zip(cache.gather(layer, 0), ref_cache.gather(layer, 0)):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_quadratic_mask_drawing():
    got = build_mask(quadratic(2), 1, 6).int().tolist()
    assert got == [[1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0, 0],
                   [1, 1, 0, 0, 1, 0, 0],
                   [1, 1, 0, 0, 1, 1, 1],
                   [1, 1, 0, 0, 1, 1, 1]]


def test_ragged_batch_rows_equal_single_rows(model64):
    m = model64
    prompts = [rand_ids(n, seed=50 + n) for n in (1, 7, 19)]
    cache = new_cache(m, page_size=3, shuffle_seed=9)
    for sid, p in enumerate(prompts):
        prefill(m, cache, sid, p)
    rows = [PassRow(0, [5, 100, 100, 100], list(range(1, 5)), 1, BIDIRECTIONAL),
            PassRow(1, [9, 100, 100, 100], list(range(7, 11)), 7, BIDIRECTIONAL),
            PassRow(2, [100, 100], [19, 20], 19, BIDIRECTIONAL)]
    together = m(ForwardBatch.from_rows(rows), cache)
    alone = torch.cat([m(ForwardBatch.from_rows([r]), cache) for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)


def test_pass_validation(model64):
    with pytest.raises(ValueError, match="bidirectional pass cannot write KV"):
        ForwardBatch.from_rows([PassRow(0, [1], [0], 0, BIDIRECTIONAL)], write_kv=True)
    cache = new_cache(model64)
    prefill(model64, cache, 0, [3, 4, 5])
    with pytest.raises(ValueError, match="committed length"):
        model64(ForwardBatch.from_rows([PassRow(0, [6], [2], 2, CAUSAL)], write_kv=True), cache)
    with pytest.raises(ValueError, match="multiple of B\\+1"):
        quadratic(4).rows(7)

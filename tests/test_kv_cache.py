"""Tests for nemotron_sglang.core.kv_cache.PagedKVCache."""

import math
import random

import pytest
import torch

from nemotron_sglang.core.kv_cache import KVCacheError, KVCacheFull, PagedKVCache

H, D, L = 2, 3, 2


def make(num_pages=16, page_size=4, shuffle_seed=0, **kw):
    return PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, num_pages=num_pages,
                        page_size=page_size, shuffle_seed=shuffle_seed, **kw)


def rand_kv(n, gen):
    # randn + 1.0 offset: never all-zero, so an unwritten (zero) slot can't match by accident
    k = torch.randn(n, H, D, generator=gen) + 1.0
    v = torch.randn(n, H, D, generator=gen) - 1.0
    return k, v


def write_all_layers(c, slots, gen):
    out = []
    for layer in range(L):
        k, v = rand_kv(slots.numel(), gen)
        c.write(layer, slots, k, v)
        out.append((k, v))
    return out


# ----------------------------------------------------------------- round trip
@pytest.mark.parametrize("page_size", [1, 3, 4, 16])
def test_write_gather_round_trip_interleaved(page_size):
    gen = torch.Generator().manual_seed(1234 + page_size)
    c = make(num_pages=64, page_size=page_size, shuffle_seed=7)
    assert c.k.shape == (L, 64 * page_size, H, D)
    seqs = [10, 11, 12]
    expected = {s: [[[], []] for _ in range(L)] for s in seqs}  # per seq, per layer: [k chunks, v chunks]
    for s in seqs:
        c.add(s)
    chunk_sizes = [5, 1, page_size + 2, 7, 2]
    for n in chunk_sizes:
        for s in seqs:  # interleave so pages of different sequences are mixed in the pool
            slots = c.append(s, n)
            assert slots.dtype == torch.long and slots.shape == (n,)
            for layer, (k, v) in enumerate(write_all_layers(c, slots, gen)):
                expected[s][layer][0].append(k)
                expected[s][layer][1].append(v)
            c.commit(s, n)
            c.check_integrity()
    total = sum(chunk_sizes)
    all_pages = []
    for s in seqs:
        assert c.length(s) == total and c.staged(s) == 0
        pt = c.page_table(s)
        assert len(pt) == math.ceil(total / page_size)
        all_pages += pt
        for layer in range(L):
            k, v = c.gather(layer, s)
            assert k.shape == (total, H, D) and k.is_contiguous()
            torch.testing.assert_close(k, torch.cat(expected[s][layer][0]), rtol=0, atol=0)
            torch.testing.assert_close(v, torch.cat(expected[s][layer][1]), rtol=0, atol=0)
        # slots agree with the page table formula
        sl = c.slots(s, 0, total)
        ref = [pt[p // page_size] * page_size + p % page_size for p in range(total)]
        assert sl.tolist() == ref
    assert len(set(all_pages)) == len(all_pages)
    if page_size <= 4:  # shuffled free list: pages are not simply ascending
        assert sorted(all_pages) != all_pages


def test_shuffle_seed_scatters_and_default_is_ascending():
    c = make(num_pages=16, page_size=2, shuffle_seed=None)
    c.add(0)
    c.append(0, 8)
    assert c.page_table(0) == [0, 1, 2, 3]
    c2 = make(num_pages=16, page_size=2, shuffle_seed=3)
    c2.add(0)
    c2.append(0, 8)
    assert c2.page_table(0) != [0, 1, 2, 3]
    c3 = make(num_pages=16, page_size=2, shuffle_seed=3)
    c3.add(0)
    c3.append(0, 8)
    assert c3.page_table(0) == c2.page_table(0)


def test_gather_can_include_staged_tokens():
    gen = torch.Generator().manual_seed(5)
    c = make(page_size=4)
    c.add(1)
    (k0, v0), _ = write_all_layers(c, c.append(1, 3), gen)
    c.commit(1, 3)
    (k1, v1), _ = write_all_layers(c, c.append(1, 4), gen)
    k, v = c.gather(0, 1)
    assert k.shape[0] == 3
    k, v = c.gather(0, 1, length=7)
    torch.testing.assert_close(k, torch.cat([k0, k1]), rtol=0, atol=0)
    torch.testing.assert_close(v, torch.cat([v0, v1]), rtol=0, atol=0)
    with pytest.raises(KVCacheError):
        c.gather(0, 1, length=8)


def test_write_casts_to_pool_dtype():
    c = make(dtype=torch.float16)
    c.add(0)
    slots = c.append(0, 2)
    k = torch.full((2, H, D), 1.5, dtype=torch.float64)
    c.write(0, slots, k, -k)
    c.commit(0, 2)
    gk, gv = c.gather(0, 0)
    assert gk.dtype == torch.float16
    assert torch.all(gk == 1.5) and torch.all(gv == -1.5)


# -------------------------------------------------------- commit / rollback
def test_partial_commit_frees_unneeded_pages():
    c = make(num_pages=10, page_size=4)
    c.add(0)
    c.append(0, 10)  # 3 pages
    assert c.staged(0) == 10 and c.length(0) == 0
    assert c.num_free_pages == 7 and len(c.page_table(0)) == 3
    staged_pages = c.page_table(0)
    c.commit(0, 5)  # 2 pages kept
    assert c.length(0) == 5 and c.staged(0) == 0
    assert c.page_table(0) == staged_pages[:2]
    assert c.num_free_pages == 8
    c.append(0, 3)  # 8 tokens -> still 2 pages
    assert c.num_free_pages == 8
    c.commit(0, 0)  # accept nothing
    assert c.length(0) == 5 and c.num_free_pages == 8
    c.commit(0, 0)
    c.check_integrity()


def test_append_replaces_previous_staging():
    c = make(num_pages=10, page_size=4)
    c.add(0)
    c.append(0, 2)
    c.commit(0, 2)
    c.append(0, 12)  # 14 tokens -> 4 pages
    assert c.num_free_pages == 6
    s = c.append(0, 1)  # staging restarts at length 2 -> 3 tokens -> 1 page
    assert c.staged(0) == 1 and c.length(0) == 2
    assert s.tolist() == c.slots(0, 2, 3).tolist()
    assert c.num_free_pages == 9
    c.check_integrity()


def test_rollback_frees_pages_and_keeps_prefix_content():
    gen = torch.Generator().manual_seed(99)
    c = make(num_pages=12, page_size=3, shuffle_seed=11)
    c.add(0)
    (k0, v0), (k0b, v0b) = write_all_layers(c, c.append(0, 10), gen)
    c.commit(0, 10)  # 4 pages
    assert c.num_free_pages == 8
    pages_before = c.page_table(0)
    c.rollback(0, 4)  # 2 pages
    assert c.length(0) == 4 and c.num_free_pages == 10
    assert c.page_table(0) == pages_before[:2]
    # other sequences take the freed pages and write into them
    c.add(1)
    write_all_layers(c, c.append(1, 3 * 8), gen)  # 8 pages, 2 left free
    c.commit(1, 24)
    (k1, v1), _ = write_all_layers(c, c.append(0, 5), gen)  # 4 + 5 > 6: new page allocated
    c.commit(0, 5)
    k, v = c.gather(0, 0)
    torch.testing.assert_close(k, torch.cat([k0[:4], k1]), rtol=0, atol=0)
    torch.testing.assert_close(v, torch.cat([v0[:4], v1]), rtol=0, atol=0)
    kb, _ = c.gather(1, 0, length=4)
    torch.testing.assert_close(kb, k0b[:4], rtol=0, atol=0)
    c.rollback(0, 0)
    assert c.page_table(0) == [] and c.length(0) == 0
    c.rollback(0, 0)
    c.check_integrity()


def test_rollback_drops_staging():
    c = make(num_pages=8, page_size=2)
    c.add(0)
    c.append(0, 4)
    c.commit(0, 4)
    c.append(0, 4)
    assert c.num_free_pages == 4
    c.rollback(0, 3)
    assert c.staged(0) == 0 and c.length(0) == 3 and len(c.page_table(0)) == 2
    assert c.num_free_pages == 6


def test_free_releases_staged_and_committed():
    c = make(num_pages=8, page_size=2)
    c.add(0)
    c.add(1)
    c.append(0, 3)
    c.commit(0, 3)
    c.append(0, 4)
    c.append(1, 5)
    c.free(0)
    assert not c.has(0) and c.has(1) and c.seq_ids() == [1]
    assert c.num_free_pages == 5
    c.free(1)
    assert c.num_free_pages == 8 and c.seq_ids() == []
    c.check_integrity()
    c.add(0)  # id may be reused after free
    assert c.length(0) == 0 and c.page_table(0) == []


# ------------------------------------------------------------------- full pool
def test_kvcache_full_leaves_state_unchanged():
    c = make(num_pages=5, page_size=4, shuffle_seed=2)
    c.add(0)
    c.add(1)
    c.append(0, 6)
    c.commit(0, 6)  # 2 pages
    c.append(0, 1)  # staged, still 2 pages
    c.append(1, 8)  # 2 pages
    free_before = c.num_free_pages
    tables_before = {s: c.page_table(s) for s in c.seq_ids()}
    free_list_before = list(c._free)
    with pytest.raises(KVCacheFull):
        c.append(0, 10)  # 16 tokens -> 4 pages, only 1 free
    with pytest.raises(KVCacheError):  # KVCacheFull is a KVCacheError
        c.append(1, 13)
    assert c.num_free_pages == free_before == 1
    assert {s: c.page_table(s) for s in c.seq_ids()} == tables_before
    assert c._free == free_list_before
    assert c.staged(0) == 1 and c.length(0) == 6 and c.staged(1) == 8
    c.check_integrity()
    c.append(0, 6)  # exactly fits: 12 tokens -> 3 pages
    assert c.num_free_pages == 0
    c.check_integrity()


def test_page_tables_padded():
    c = make(num_pages=10, page_size=2)
    for s, n in ((3, 5), (4, 0), (5, 2)):
        c.add(s)
        c.append(s, n)
        c.commit(s, n)
    table, lengths = c.page_tables([3, 4, 5])
    assert table.dtype == torch.long and lengths.dtype == torch.long
    assert table.shape == (3, 3)
    assert table[0].tolist() == c.page_table(3)
    assert table[1].tolist() == [-1, -1, -1]
    assert table[2].tolist() == c.page_table(5) + [-1, -1]
    assert lengths.tolist() == [5, 0, 2]
    t0, l0 = c.page_tables([])
    assert t0.shape == (0, 0) and l0.shape == (0,)


# ---------------------------------------------------------------------- misuse
def test_misuse_errors():
    c = make(num_pages=8, page_size=4)
    c.add(0)
    with pytest.raises(KVCacheError):
        c.add(0)
    for fn in (lambda: c.length(9), lambda: c.staged(9), lambda: c.page_table(9),
               lambda: c.append(9, 1), lambda: c.commit(9, 0), lambda: c.rollback(9, 0),
               lambda: c.free(9), lambda: c.slots(9, 0, 0), lambda: c.gather(0, 9),
               lambda: c.page_tables([0, 9])):
        with pytest.raises(KVCacheError, match="unknown sequence"):
            fn()
    c.append(0, 3)
    with pytest.raises(KVCacheError, match="only 3 staged"):
        c.commit(0, 4)
    with pytest.raises(KVCacheError):
        c.commit(0, -1)
    with pytest.raises(KVCacheError):
        c.append(0, -1)
    assert c.staged(0) == 3  # failed calls changed nothing
    c.commit(0, 2)
    with pytest.raises(KVCacheError, match="committed length is 2"):
        c.rollback(0, 3)
    with pytest.raises(KVCacheError):
        c.rollback(0, -1)
    c.append(0, 2)
    c.slots(0, 0, 4)
    with pytest.raises(KVCacheError, match="bad range"):
        c.slots(0, 0, 5)
    with pytest.raises(KVCacheError):
        c.slots(0, 3, 2)
    with pytest.raises(KVCacheError):
        c.slots(0, -1, 2)
    slots = c.slots(0, 0, 2)
    good = torch.ones(2, H, D)
    with pytest.raises(KVCacheError):
        c.write(L, slots, good, good)
    with pytest.raises(KVCacheError):
        c.write(0, slots, torch.ones(3, H, D), good)
    with pytest.raises(KVCacheError):
        c.write(0, slots, good, torch.ones(2, H, D + 1))
    with pytest.raises(KVCacheError):
        c.write(0, torch.tensor([0, 8 * 4]), good, good)
    c.free(0)
    with pytest.raises(KVCacheError):
        c.free(0)
    with pytest.raises(KVCacheError):
        make(num_pages=0)
    c.check_integrity()


# ---------------------------------------------------------- integrity checker
def _populated():
    c = make(num_pages=10, page_size=2, shuffle_seed=4)
    for s, n in ((0, 3), (1, 4)):
        c.add(s)
        c.append(s, n)
        c.commit(s, n)
    c.append(1, 1)
    c.check_integrity()
    return c


def test_check_integrity_detects_page_owned_twice():
    c = _populated()
    lost = c._seqs[1].pages[0]
    c._seqs[1].pages[0] = c._seqs[0].pages[0]
    c._free.append(lost)  # no leak: only the double ownership is wrong
    with pytest.raises(KVCacheError, match="owned by both"):
        c.check_integrity()


def test_check_integrity_detects_owned_and_free():
    c = _populated()
    c._free[0] = c._seqs[0].pages[1]
    with pytest.raises(KVCacheError, match="both free and owned"):
        c.check_integrity()


def test_check_integrity_detects_leak():
    c = _populated()
    c._free.pop()
    with pytest.raises(KVCacheError, match="leak"):
        c.check_integrity()


def test_check_integrity_detects_duplicate_free_and_out_of_range():
    c = _populated()
    c._free.append(c._free[0])
    with pytest.raises(KVCacheError, match="twice in the free list"):
        c.check_integrity()
    c = _populated()
    c._free[0] = c.num_pages
    with pytest.raises(KVCacheError, match="out-of-range"):
        c.check_integrity()
    c = _populated()
    c._seqs[0].pages.append(-1)
    c._seqs[0].staged += 2
    with pytest.raises(KVCacheError, match="out-of-range"):
        c.check_integrity()


def test_check_integrity_detects_wrong_page_count_and_negative_length():
    c = _populated()
    c._free.append(c._seqs[0].pages.pop())  # length 3 needs 2 pages, now holds 1
    with pytest.raises(KVCacheError, match="expected 2"):
        c.check_integrity()
    c = _populated()
    c._seqs[1].staged = 0  # 4 tokens need 2 pages, holds 3
    with pytest.raises(KVCacheError, match="expected 2"):
        c.check_integrity()
    c = _populated()
    c._seqs[0].length = -1
    with pytest.raises(KVCacheError, match="negative"):
        c.check_integrity()


# ------------------------------------------------------------ property test
@pytest.mark.parametrize("seed,page_size", [(0, 1), (1, 3), (2, 4), (3, 5)])
def test_randomized_against_shadow_model(seed, page_size):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    num_pages = 12  # small enough that KVCacheFull happens
    c = make(num_pages=num_pages, page_size=page_size, shuffle_seed=seed)
    # shadow[sid][layer] = (k_rows, v_rows): lists of [H, D] tensors for committed+staged tokens
    shadow: dict[int, list[tuple[list, list]]] = {}
    next_id = 0
    counts = {"full": 0, "commit": 0, "rollback": 0, "free": 0}

    def check(sid):
        sh = shadow[sid]
        n_comm = c.length(sid)
        n_all = n_comm + c.staged(sid)
        assert len(sh[0][0]) == n_all
        layer = rng.randrange(L)
        n = rng.choice([n_comm, n_all])
        k, v = c.gather(layer, sid, length=n)
        if n:
            torch.testing.assert_close(k, torch.stack(sh[layer][0][:n]), rtol=0, atol=0)
            torch.testing.assert_close(v, torch.stack(sh[layer][1][:n]), rtol=0, atol=0)
        else:
            assert k.shape == (0, H, D)

    def truncate(sid, n):
        for ks, vs in shadow[sid]:
            del ks[n:], vs[n:]

    for _ in range(400):
        op = rng.random()
        live = c.seq_ids()
        if op < 0.12 or not live:
            c.add(next_id)
            shadow[next_id] = [([], []) for _ in range(L)]
            next_id += 1
        else:
            sid = rng.choice(live)
            if op < 0.5:
                n = rng.randint(0, 3 * page_size + 2)
                free_before, table_before = c.num_free_pages, c.page_table(sid)
                staged_before = c.staged(sid)
                try:
                    slots = c.append(sid, n)
                except KVCacheFull:
                    counts["full"] += 1
                    assert c.num_free_pages == free_before and c.page_table(sid) == table_before
                    assert c.staged(sid) == staged_before
                else:
                    truncate(sid, c.length(sid))
                    for layer, (k, v) in enumerate(write_all_layers(c, slots, gen)):
                        shadow[sid][layer][0].extend(k.unbind(0))
                        shadow[sid][layer][1].extend(v.unbind(0))
            elif op < 0.75:
                n = rng.randint(0, c.staged(sid))
                c.commit(sid, n)
                truncate(sid, c.length(sid))
                counts["commit"] += 1
            elif op < 0.87:
                n = rng.randint(0, c.length(sid))
                c.rollback(sid, n)
                truncate(sid, n)
                counts["rollback"] += 1
            else:
                c.free(sid)
                del shadow[sid]
                counts["free"] += 1
        c.check_integrity()
        used = sum(len(c.page_table(s)) for s in c.seq_ids())
        assert used + c.num_free_pages == num_pages
        for s in c.seq_ids():
            assert len(c.page_table(s)) == math.ceil((c.length(s) + c.staged(s)) / page_size)
            check(s)

    assert all(v > 0 for v in counts.values()), counts
    for s in c.seq_ids():
        c.free(s)
    c.check_integrity()
    assert c.num_free_pages == num_pages

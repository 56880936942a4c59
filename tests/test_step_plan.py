"""The step plan (``core.step_plan``): what the device receives is what the rows say, in one
copy; the K/V-write rule is core's one rule; padding to a bucket adds only inert entries."""

from __future__ import annotations

import random

import pytest
import torch

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, MaskKind, quadratic
from nemotron_sglang.core.step_plan import (NOWHERE, PAD_TILE_TOKEN, ROW_FIELDS, Bucket, PlanRow,
                                            StepPlan)
from nemotron_sglang.testing.host_reads import HostReads


def random_rows(rng: random.Random, n: int, block: int = 4) -> list[PlanRow]:
    """A mix of every kind of canvas row (ar, draft, denoise, verify, quadratic)."""
    rows = []
    for i in range(n):
        kind = rng.choice(["ar", "draft", "verify", "quadratic"])
        prefix = rng.randrange(0, 40)
        if kind == "ar":
            mask, q, writes = CAUSAL, 1, 1
        elif kind == "draft":
            mask, q, writes = BIDIRECTIONAL, block, 0
        elif kind == "verify":
            mask, q, writes = CAUSAL, block, rng.randrange(0, block + 1)
        else:
            r = rng.randrange(1, block + 1)
            mask, q, writes = quadratic(block), r * (block + 1), r
        rows.append(PlanRow(table_row=rng.randrange(0, 64), prefix_len=prefix, q_len=q, mask=mask,
                            token_ids=[rng.randrange(0, 1000) for _ in range(q)],
                            positions=[prefix + rng.randrange(0, block + 1) for _ in range(q)],
                            lora=kind == "draft" and rng.random() < 0.7, writes=writes,
                            write_base=i * block))
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_device_views_are_the_rows(seed):
    rng = random.Random(seed)
    rows = random_rows(rng, rng.randrange(1, 9))
    plan = StepPlan.build(rows, "cpu", tile_tokens=rng.choice([1, 2, 16]))
    assert plan.ids.tolist() == [t for r in rows for t in r.token_ids]
    assert plan.positions.tolist() == [p for r in rows for p in r.positions]
    assert plan.lora.tolist() == [int(r.lora) for r in rows for _ in range(r.q_len)]
    starts = [sum(r.q_len for r in rows[:i]) for i in range(len(rows))]
    want = {"q_start": starts, "q_len": [r.q_len for r in rows],
            "prefix_len": [r.prefix_len for r in rows],
            "code": [r.mask.kind.code for r in rows],
            "width": [r.mask.block + 1 if r.mask.kind == MaskKind.QUADRATIC else 1 for r in rows],
            "table_row": [r.table_row for r in rows]}
    for name in ROW_FIELDS:
        assert plan.field(name).tolist() == want[name], name
    # writes: the first ``writes`` of the mask's rule, to write_base + i
    tokens, dests = [], []
    for r, s in zip(rows, starts):
        rule = list(r.mask.kv_write_offsets(r.q_len)) if r.writes else []
        tokens += [s + o for o in rule[:r.writes]]
        dests += [r.write_base + i for i in range(r.writes)]
    assert plan.write_token.tolist() == tokens
    assert plan.write_dest.tolist() == dests
    # tiles cover every row's tokens once, in tile_tokens steps
    tok = plan.tile_tokens
    covered = [(int(r), int(t0) + j) for r, t0 in plan.tiles.t().tolist()
               for j in range(tok) if int(t0) + j < rows[int(r)].q_len]
    assert sorted(covered) == sorted((i, j) for i, r in enumerate(rows) for j in range(r.q_len))
    # the reference attention's order lists each group contiguously, every row once
    order = plan.order_rows.tolist()
    assert sorted(order + list(plan.singles)) == list(range(len(rows)))
    for g in plan.groups:
        members = order[g.rows]
        assert {(rows[i].mask, rows[i].q_len) for i in members} == {(g.mask, g.q_len)}
        assert g.width == max(rows[i].prefix_len for i in members)
        assert plan.order_tokens[g.tokens].tolist() == [starts[i] + j for i in members
                                                        for j in range(g.q_len)]


def test_kv_write_rule_is_cores_one_rule():
    assert list(CAUSAL.kv_write_offsets(3)) == [0, 1, 2]
    assert list(quadratic(4).kv_write_offsets(15)) == [0, 5, 10]
    assert quadratic(4).kv_write_index(15).tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="never writes"):
        BIDIRECTIONAL.kv_write_offsets(4)
    with pytest.raises(ValueError, match="writes"):
        PlanRow(0, 3, 4, BIDIRECTIONAL, writes=1)
    with pytest.raises(ValueError, match="multiple"):
        StepPlan.build([PlanRow(0, 3, 7, quadratic(4))], "cpu")


def test_one_copy_and_no_read():
    rows = random_rows(random.Random(7), 6)
    with HostReads() as reads:
        StepPlan.build(rows, torch.device("cpu"), tile_tokens=4)
    assert len(reads.uploads) == 1, reads.uploads
    assert not reads.reads, reads.reads


def test_padding_adds_only_inert_entries():
    rng = random.Random(11)
    rows = random_rows(rng, 5)
    plain = StepPlan.build(rows, "cpu", tile_tokens=2)
    t, w, g = plain.num_tokens, plain.num_writes, plain.tiles.shape[1]
    bucket = Bucket(tokens=t + 7, rows=len(rows) + 3, writes=w + 2, tiles=g + 5)
    padded = StepPlan.build(rows, "cpu", tile_tokens=2, bucket=bucket)
    assert padded.ids.shape == (bucket.tokens,) and padded.table.shape == (6, bucket.rows)
    assert padded.write_dest.shape == (bucket.writes,) and padded.tiles.shape == (2, bucket.tiles)
    assert torch.equal(padded.ids[:t], plain.ids) and not padded.lora[t:].any()
    assert torch.equal(padded.table[:, :len(rows)], plain.table)
    assert padded.field("q_len")[len(rows):].eq(0).all()
    assert padded.write_dest[w:].eq(NOWHERE).all()
    assert padded.tiles[1, g:].eq(PAD_TILE_TOKEN).all()
    # a padding write lands on the destination table's padding entry (SGLang's slot 0)
    dest = torch.arange(100, 100 + 8 * len(rows))
    slots = padded.write_slots(dest)
    assert torch.equal(slots[:w], dest[plain.write_dest]) and slots[w:].eq(0).all()
    with pytest.raises(ValueError, match="does not fit"):
        StepPlan.build(rows, "cpu", bucket=Bucket(tokens=t - 1, rows=len(rows), writes=w))

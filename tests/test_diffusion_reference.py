"""Core's ``diffusion`` against an independent FastDiffuser (``tests/diffusion_reference.py``:
the published rule over transformers' Ministral3, no code of ``core.decoding``).

- the reference imports nothing of ``nemotron_sglang.core.decoding`` or core's model, directly
  (its source) or through what it imports (a fresh interpreter's modules);
- on fresh random prompts of the tiny random checkpoints (block 4 and 8) and of the trained
  fixture (block 32, 16, 8 per request; corpus prompts, where threshold 0.9 commits several
  slots in one pass), at thresholds 0 / 0.9 / 1 with and without a step budget, core's tokens,
  finish reasons and forwards equal the reference's, and the forwards are the published count:
  denoise passes + 1 refresh per block (less the block that ends the request), 1 denoise pass
  per block at threshold 0, one slot per pass at threshold 1, at most k passes under a budget k;
- negative controls: the reference with a wrong rule (the leftmost masked slot committed
  instead of the most confident, a tempered confidence, the budget's last pass one late)
  disagrees with core on the same inputs, so the comparison has power.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffusion_reference as ref
from conftest import random_prompts
from nemotron_sglang.core.decoding import DecodeParams, Request, generate
from nemotron_sglang.core.tokenizer import encode, load_tokenizer
from nemotron_sglang.core.weights import load_model
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.testing.corpus import examples

pytest.importorskip("transformers")

REF = Path(ref.__file__)
THRESHOLDS = (0.0, 0.9, 1.0)
BUDGETS = (None, 1, 2)
FORBIDDEN = ("nemotron_sglang.core.decoding", "nemotron_sglang.core.model")


def test_reference_shares_no_code_with_core_decoding():
    names = []
    for node in ast.walk(ast.parse(REF.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the reference"
            names += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    assert "nemotron_sglang.core.weights.ministral3_name" in names       # the walk sees imports
    assert not [n for n in names if n.startswith(FORBIDDEN)], names
    code = (f"import sys; sys.path.insert(0, {str(REF.parent)!r}); import diffusion_reference; "
            f"print([m for m in sys.modules if m.startswith({FORBIDDEN[0]!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- the cases: (checkpoint, block length, prompts, max_new_tokens) -------------------------

@pytest.fixture(scope="module")
def nets(ckpt_dirs):
    """name -> (reference net, core model in float64, checkpoint block size)."""
    out = {}
    for name, path in (("s0_lora", ckpt_dirs["s0_lora"]), ("s1_b8", ckpt_dirs["s1_b8"]),
                       ("fixture", EMBEDDED)):
        core = load_model(path, dtype=torch.float64)
        out[name] = (ref.Ministral3Net(path), core, core.config.block_size)
    return out


def cases(nets, name: str, n: int):
    """Fresh prompts and lengths: random ids (tiny checkpoints, 1..3 blocks each) or held-out
    corpus prompts (the fixture, block 32 / 16 / 8, up to 36 new tokens)."""
    _, core, block = nets[name]
    if name != "fixture":
        prompts = random_prompts(n, seed=random.randrange(1 << 30), vocab=core.config.vocab_size)
        return [(block, p, random.randint(1, 3 * block)) for p in prompts]
    tok = load_tokenizer(EMBEDDED)
    ex = examples(1_000_000 + random.randrange(1 << 30), n)
    return [(random.choice((8, 16, 32)), encode(tok, e["prompt"]), random.randint(8, 36))
            for e in ex]


def core_results(core, todo, threshold, budget):
    return generate(core, [Request(p, "diffusion", DecodeParams(
        max_new_tokens=m, block_length=b, threshold=threshold, max_steps=budget))
        for b, p, m in todo])


def disagreements(net, core, todo, threshold, budget) -> int:
    want = core_results(core, todo, threshold, budget)
    got = [ref.diffuse(net, p, m, b, threshold, budget) for b, p, m in todo]
    return sum((g.tokens, g.finish_reason, g.forwards) != (w.output_ids, w.finish_reason,
                                                           w.forwards)
               for g, w in zip(got, want))


@pytest.mark.parametrize("name", ["s0_lora", "s1_b8", "fixture"])
def test_reference_equals_core(nets, name):
    net, core, _ = nets[name]
    todo = cases(nets, name, 8 if name == "fixture" else 16)
    multi = 0
    for threshold in THRESHOLDS:
        for budget in BUDGETS:
            want = core_results(core, todo, threshold, budget)
            for (b, p, m), w in zip(todo, want):
                where = (name, threshold, budget, b, p, m)
                g = ref.diffuse(net, p, m, b, threshold, budget)
                assert g.tokens == w.output_ids, where
                assert g.finish_reason == w.finish_reason, where
                assert len(g.tokens) == m or g.tokens[-1] == net.eos_id, where
                # the published count: denoise passes + 1 refresh per block, the last excepted
                passes = [len(c) for c in g.commits]
                assert g.forwards == w.forwards == sum(passes) + len(passes) - 1, where
                assert all(sum(c) == b - 1 for c in g.commits[:-1]), where   # blocks completed
                if threshold == 0.0:                       # the whole block in one pass
                    assert all(c == [b - 1] for c in g.commits[:-1]), where
                if budget is not None:
                    assert max(passes) <= budget, where
                if threshold == 1.0 and budget is None and name != "fixture":
                    assert {n for c in g.commits for n in c} <= {1}, where   # one slot a pass
                multi += threshold == 0.9 and budget is None and \
                    any(n > 1 for c in g.commits for n in c)
    if name == "fixture":          # 0.9 is more than 1 there: some pass commits several slots
        assert multi >= 1


# ---- negative controls: a wrong reference disagrees with core ---------------------------------

def _leftmost(conf, threshold):
    return {s for s, c in conf.items() if c >= threshold} | {min(conf)}


def _tempered(row, token):
    return float(torch.softmax(row / 2.0, dim=-1)[token])


def _late_budget(threshold, step, max_steps):
    return 0.0 if max_steps is not None and step > max_steps else threshold


@pytest.mark.parametrize("name,wrong,threshold,budget", [
    ("s1_b8", ("committed", _leftmost), 1.0, None),
    ("fixture", ("confidence", _tempered), 0.9, None),
    ("s1_b8", ("pass_threshold", _late_budget), 1.0, 2),
])
def test_a_wrong_reference_disagrees_with_core(nets, monkeypatch, name, wrong, threshold,
                                               budget):
    net, core, _ = nets[name]
    todo = cases(nets, name, 8)
    assert disagreements(net, core, todo, threshold, budget) == 0
    monkeypatch.setattr(ref, *wrong)
    assert disagreements(net, core, todo, threshold, budget) >= 1

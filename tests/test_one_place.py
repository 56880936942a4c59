"""One definition per rule (issue 17), checked at the source level: the decode modes are listed
only in ``core/modes.py`` and the attention kernels' mask codes only on ``MaskKind``
(``core/attention.py``'s ``KERNEL_CODES``), and the drafting LoRA's delta ``(x Aᵀ) Bᵀ`` only in
``core/lora.py``. Every other file imports them; a second mode list, code table or LoRA product
in the package, the benchmarks or the scripts fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from nemotron_sglang.core.attention import KERNEL_CODES, MaskKind
from nemotron_sglang.core.modes import SERVING_MODES

ROOT = Path(__file__).resolve().parents[1]
MODES_HOME = ROOT / "nemotron_sglang" / "core" / "modes.py"
CODES_HOME = ROOT / "nemotron_sglang" / "core" / "attention.py"
LORA_HOME = ROOT / "nemotron_sglang" / "core" / "lora.py"
KIND_NAMES = {k.name for k in MaskKind}


def sources() -> list[Path]:
    files = [*(ROOT / "nemotron_sglang").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "scripts").glob("*.py")]
    assert len(files) > 30, files
    return sorted(files)


def mode_lists(tree: ast.AST) -> list[int]:
    """Lines of tuple / list / set literals naming two or more decode modes."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            named = {e.value for e in node.elts
                     if isinstance(e, ast.Constant) and e.value in SERVING_MODES}
            if len(named) >= 2:
                hits.append(node.lineno)
    return hits


def code_tables(tree: ast.AST) -> list[int]:
    """Lines that give a mask kind an integer: a dict ``{MaskKind.X: 0, ...}``, or a name like
    ``MASK_CAUSAL`` / ``*KIND_CODE*`` bound to an int literal (directly or through a call such
    as ``tl.constexpr(0)``)."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            if any(isinstance(k, ast.Attribute) and k.attr in KIND_NAMES for k in node.keys) and \
                    any(isinstance(v, ast.Constant) and isinstance(v.value, int)
                        for v in node.values):
                hits.append(node.lineno)
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if not any(re.search(r"KIND_CODE|KERNEL_CODES", n) or
                       any(k in n.upper() for k in KIND_NAMES) for n in names):
                continue
            value = node.value.args[0] if isinstance(node.value, ast.Call) and node.value.args \
                else node.value
            if isinstance(value, ast.Dict) or (isinstance(value, ast.Constant) and
                                               type(value.value) is int):
                hits.append(node.lineno)
    return hits


def lora_products(tree: ast.AST) -> list[int]:
    """Lines of ``(x @ a.T) @ b.T``: a product by a transpose of a product by a transpose."""
    def by_transpose(node) -> bool:
        return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)
                and isinstance(node.right, ast.Attribute) and node.right.attr in ("T", "mT"))
    return [n.lineno for n in ast.walk(tree) if by_transpose(n) and by_transpose(n.left)]


def test_the_checks_see_what_they_look_for():
    """Both checks find the one definition that is allowed (so they can fail elsewhere)."""
    assert mode_lists(ast.parse(MODES_HOME.read_text()))
    assert code_tables(ast.parse(CODES_HOME.read_text()))
    assert mode_lists(ast.parse('x = mode in ("ar", "diffusion")'))
    assert code_tables(ast.parse("MASK_CAUSAL = tl.constexpr(0)"))
    assert code_tables(ast.parse("_KIND_CODE = {MaskKind.CAUSAL: 0}"))
    assert not mode_lists(ast.parse('VARIANTS = (("ar", False), ("diffusion", True))'))
    assert not code_tables(ast.parse("MASK_ID = 100"))
    assert sorted(KERNEL_CODES.values()) == list(range(len(MaskKind)))
    assert lora_products(ast.parse(LORA_HOME.read_text()))
    assert lora_products(ast.parse("y = y + s * ((o @ a.T) @ b.T)"))
    assert not lora_products(ast.parse("y = (q @ k.T) * scale"))


def test_one_mode_list_and_one_mask_code_table():
    found = []
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        if path != MODES_HOME:
            found += [f"{rel}:{ln}: a list of decode modes (import core.modes)"
                      for ln in mode_lists(tree)]
        if path != CODES_HOME:
            found += [f"{rel}:{ln}: mask kind codes (use MaskKind.code / KERNEL_CODES)"
                      for ln in code_tables(tree)]
        if path != LORA_HOME:
            found += [f"{rel}:{ln}: a LoRA delta (use core.lora.lora_delta)"
                      for ln in lora_products(tree)]
    assert not found, "\n".join(found)

"""``nemotron_sglang.kernels`` as a package: the registry, clear errors for missing backends,
imports without triton / flashinfer, and the layering rule that core never imports kernels.
Needs neither triton nor a GPU."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nemotron_sglang.core.attention import CAUSAL, paged_attention
from nemotron_sglang.core.batch import ForwardBatch, PassRow
from nemotron_sglang.core.kv_cache import PagedKVCache
from nemotron_sglang.kernels import (ATTENTION_IMPLS, flashinfer_available, get_attention_impl,
                                     paged_attention_triton)

ROOT = Path(__file__).resolve().parents[2]


def test_registry():
    assert ATTENTION_IMPLS["reference"] is paged_attention
    assert get_attention_impl("triton") is paged_attention_triton
    assert sorted(ATTENTION_IMPLS) == ["flashinfer", "reference", "triton"]
    with pytest.raises(KeyError, match="unknown attention implementation 'nope'.*known"):
        get_attention_impl("nope")
    with pytest.raises(KeyError, match="unknown attention implementation"):
        ATTENTION_IMPLS["Triton"]


def test_flashinfer_path_fails_clearly_without_flashinfer():
    if flashinfer_available():
        pytest.skip("flashinfer is installed; benchmarks/kernels.py exercises its path")
    cache = PagedKVCache(num_layers=1, num_kv_heads=2, head_dim=16, num_pages=4, page_size=4)
    cache.add(0)
    batch = ForwardBatch.from_rows([PassRow(0, [1, 2], [0, 1], 0, CAUSAL)])
    q, kv = torch.zeros(2, 4, 16), torch.zeros(2, 2, 16)
    with pytest.raises(RuntimeError, match="needs the flashinfer package"):
        ATTENTION_IMPLS["flashinfer"](q, kv, kv, cache, 0, batch, 0.25)


def test_package_imports_without_triton_or_flashinfer():
    code = textwrap.dedent("""
        import importlib, sys
        import torch
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('triton', 'flashinfer', 'sglang', 'kernels'):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import nemotron_sglang.kernels as K
        for m in ('triton_attention', 'kv_write', 'flashinfer_attention'):
            importlib.import_module('nemotron_sglang.kernels.' + m)
        assert sorted(K.ATTENTION_IMPLS) == ['flashinfer', 'reference', 'triton']
        assert not K.triton_available() and not K.flashinfer_available()
        for call in (lambda: K.paged_attention_triton(None, None, None, None, 0, None, 1.0),
                     lambda: K.kv_write_triton(*[torch.zeros(1, 1, 1)] * 4,
                                               torch.zeros(1, dtype=torch.long),
                                               torch.zeros(1, dtype=torch.long))):
            try:
                call()
            except RuntimeError as e:
                assert 'needs `triton`' in str(e), e
            else:
                raise SystemExit('no error without triton')
        leaked = [m for m in sys.modules if m.split('.')[0] in ('triton', 'flashinfer')]
        assert not leaked, leaked
        print('ok')
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr + proc.stdout


def test_core_never_imports_kernels():
    hits = []
    for path in sorted((ROOT / "nemotron_sglang" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            hits += [f"{path.name}:{node.lineno} {n}" for n in names
                     if "nemotron_sglang.kernels" in n or n.lstrip(".").startswith("kernels")]
    assert not hits, hits

"""The linter and the type checker are part of the test suite (so of CI): ``ruff check`` over the
repository, with the rules in ``pyproject.toml`` (``[tool.ruff]``), and ``mypy`` over the rule and
config modules ``[tool.mypy]`` lists. A missing ruff or mypy fails in CI (conftest's rule for
test dependencies); both are in the ``dev`` extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean(tmp_path):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.importorskip("ruff")         # conftest turns this skip into a failure in CI
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")            # the rules catch an unused import (so can fail)
    flagged = subprocess.run([str(ruff), "check", "--no-cache", "--config",
                              str(ROOT / "pyproject.toml"), str(bad)], capture_output=True,
                             text=True)
    assert flagged.returncode == 1 and "F401" in flagged.stdout, flagged.stdout
    run = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_is_clean_on_the_rule_modules(tmp_path):
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.importorskip("mypy")         # conftest turns this skip into a failure in CI
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: int) -> str:\n    return x\n")     # so the checker can fail
    flagged = subprocess.run([str(mypy), "--no-incremental", str(bad)], capture_output=True,
                             text=True, cwd=tmp_path)
    assert flagged.returncode == 1 and "return-value" in flagged.stdout, flagged.stdout
    run = subprocess.run([str(mypy), "--no-incremental", "--cache-dir", str(tmp_path / "c")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

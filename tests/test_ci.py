"""CI runs every test: a missing test dependency fails the session (``conftest.py``) rather than
skipping whole modules through ``pytest.importorskip``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import TEST_DEPENDENCIES, missing_modules


def test_every_test_dependency_is_installed_and_a_missing_one_is_named():
    assert missing_modules(TEST_DEPENDENCIES) == []
    assert missing_modules(["torch", "no_such_module_xyz"]) == ["no_such_module_xyz"]


def test_ci_session_start_fails_on_a_missing_dependency():
    here = str(Path(__file__).parent)
    code = (f"import sys; sys.path.insert(0, {here!r}); import conftest; "
            "conftest.TEST_DEPENDENCIES = ('no_such_module_xyz',); "
            "conftest.pytest_sessionstart(None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CI": "true"})
    assert out.returncode != 0 and "no_such_module_xyz" in out.stderr, out.stderr[-500:]
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "CI"})
    assert quiet.returncode == 0, quiet.stderr[-500:]       # outside CI: modules skip as before

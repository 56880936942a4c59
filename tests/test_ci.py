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


def test_random_tests_are_reproducible_and_a_failure_names_its_seed(tmp_path):
    """Every test's ``random``/torch draws are a function of (session seed, test id); a failing
    test's report carries the command that replays it with the same seed."""
    import shutil
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_draw.py").write_text(
        "import random, torch\n"
        "def test_draw():\n"
        "    print('DRAW', random.random(), float(torch.rand(())))\n"
        "    assert False\n")

    def run(seed):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                              str(tmp_path / "test_draw.py")], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "NLD_TEST_SEED": str(seed)})
        assert out.returncode == 1, out.stdout[-2000:]
        draw = next(line for line in out.stdout.splitlines() if line.startswith("DRAW"))
        return draw, out.stdout

    a, text = run(123)
    assert "replay: NLD_TEST_SEED=123 python -m pytest 'test_draw.py::test_draw'" in text, text
    b, _ = run(123)
    c, _ = run(124)
    assert a == b and a != c, (a, b, c)

"""CI runs every test: a missing test dependency fails the session (``conftest.py``) rather than
skipping whole modules through ``pytest.importorskip``, and in CI any skip outside
``conftest.ALLOWED_SKIPS`` (GPU-only ones) fails the run, at collection as at run time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ALLOWED_SKIPS, TEST_DEPENDENCIES, missing_modules

TESTS = Path(__file__).parent


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


def test_every_allowed_skip_is_used_by_a_test():
    """No stale entry: each allowed reason is a skip reason some test module states."""
    sources = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    for reason in ALLOWED_SKIPS:
        assert f'"{reason}"' in sources or f"'{reason}'" in sources, reason


def test_ci_fails_every_skip_but_the_allowed_ones(tmp_path):
    """pytest runs (``CI=true``, this conftest) on tiny test files: an allowed skip whose reason
    holds here passes; a skip with another reason, an allowed reason that is false here, an xfail,
    and a module-level ``importorskip`` each fail, naming the test and the reason. Without CI all
    of them skip as before."""
    import shutil
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    true_here = next(r for r, holds in ALLOWED_SKIPS.items() if holds())
    false_here = next(r for r, holds in ALLOWED_SKIPS.items() if not holds())
    files = {
        "test_allowed.py": f"""
import pytest
@pytest.mark.skipif(True, reason={true_here!r})
def test_gpu(): pass
def test_ok(): pass
""",
        "test_other.py": """
import pytest
def test_lazy():
    pytest.skip("no network here")
""",
        "test_false.py": f"""
import pytest
@pytest.mark.skipif(True, reason={false_here!r})
def test_false_claim(): pass
""",
        "test_xfail.py": """
import pytest
@pytest.mark.xfail(reason="known bug")
def test_xf(): assert False
""",
        "test_module.py": """
import pytest
pytest.importorskip("no_such_module_xyz")
def test_x(): pass
""",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    def start(ci: bool, *paths):
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        if ci:
            env["CI"] = "true"
        return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                                 "no:cacheprovider", *paths], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    runs = {"allowed": start(True, "test_allowed.py"),
            "run time": start(True, "test_other.py", "test_false.py", "test_xfail.py"),
            "collection": start(True, "test_module.py"), "no CI": start(False, *files)}
    out = {name: (p.wait(timeout=300), p.stdout.read()) for name, p in runs.items()}
    rc, text = out["allowed"]
    assert rc == 0 and "1 passed, 1 skipped" in text, text[-3000:]
    rc, text = out["run time"]
    assert rc == 1 and "2 failed, 1 error" in text, text[-3000:]
    for name, reason in [("test_other.py::test_lazy", "no network here"),
                         ("test_false.py::test_false_claim", false_here),
                         ("test_xfail.py::test_xf", "xfail: known bug")]:
        assert f"CI: {name} skipped: {reason!r}" in text, (name, text[-3000:])
    rc, text = out["collection"]
    assert rc != 0 and "CI: test_module.py skipped: " in text, text[-3000:]
    assert "No module named 'no_such_module_xyz'" in text, text[-3000:]
    rc, text = out["no CI"]
    assert rc == 0 and "1 passed, 4 skipped, 1 xfailed" in text, text[-3000:]


def test_no_installed_package_hides_test_files(pytestconfig):
    """Installed packages can register pytest plugins; ai-dynamo's stop collecting every file
    named test_triton_* (ours among them) when NVIDIA's tritonclient is missing, silently.
    pyproject's addopts blocks them: none of them may be loaded."""
    loaded = {getattr(p, "__name__", "") for p in pytestconfig.pluginmanager.get_plugins()}
    assert not {n for n in loaded if n.startswith("dynamo.")}, loaded

"""The built wheel, installed alone in a fresh venv outside the repository, serves the trained
fixture by default and registers the plugin through SGLang's entry points.

The fresh venv gets only the wheel (``--no-deps``); torch, SGLang and the other dependencies
come from the test venv's site-packages through a ``.pth`` line (a path entry, so the test
venv's editable finder for this repository is not loaded). Every command runs with the temporary
directory as cwd, so nothing is imported from the source tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp / "dist"), str(ROOT)], tmp)
    (wheel,) = (tmp / "dist").glob("nemotron_sglang-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
          "--disable-pip-version-check", str(wheel)], tmp)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp).strip())
    (site / "_deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return tmp, py, site


def test_the_installed_package_is_the_wheel_and_ships_the_fixture(fresh):
    tmp, py, site = fresh
    out = json.loads(_run([str(py), "-c", (
        "import json, nemotron_sglang, nemotron_sglang.data as d;"
        "print(json.dumps([nemotron_sglang.__file__, str(d.EMBEDDED),"
        " sorted(p.name for p in d.EMBEDDED.iterdir())]))")], tmp))
    pkg, embedded, files = out
    assert Path(pkg).is_relative_to(site) and Path(embedded).is_relative_to(site), out
    assert {"config.json", "model.safetensors", "tokenizer.json", "linear_spec_lora"} <= set(files)


def test_serve_picks_the_shipped_fixture(fresh):
    tmp, py, site = fresh
    out = _run([str(py), "-m", "nemotron_sglang", "serve", "--dry-run"], tmp)
    line = next(x for x in out.splitlines() if "sglang.launch_server" in x)
    model = line.split("--model-path", 1)[1].split()[0]
    assert Path(model) == site / "nemotron_sglang" / "data" / "nld-tiny-rules", line


def test_the_plugin_registers_through_the_entry_point(fresh):
    pytest.importorskip("sglang")
    tmp, py, site = fresh
    out = _run([str(py), "-c", (
        "from importlib.metadata import entry_points;"
        "(ep,) = {e.value: e for e in entry_points(group='sglang.srt.plugins')"
        " if e.name == 'nemotron_sglang'}.values();"
        "ep.load()();"
        "import nemotron_sglang.sglang_plugin as p, sglang.srt.dllm.algorithm as a;"
        "print(p.__file__, a.get_algorithm_cls('NemotronTriMode').__name__)")], tmp)
    path, name = out.split()
    assert Path(path).is_relative_to(site) and name == "NemotronTriMode", out

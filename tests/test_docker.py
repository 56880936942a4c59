"""The docker files against the package (no container engine runs here): what the Dockerfile
copies exists and is all the package needs, its entry point is the package's console script,
its SGLang pin and dependency pins are pyproject's and the plugin's, the build context excludes
the venv, and the documented run lines carry SGLang's shared-memory flags."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from nemotron_sglang.sglang_plugin import SGLANG_VERSION

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_copies_exist_and_are_only_the_package():
    copies = [shlex.split(a)[:-1] for op, a in instructions() if op == "COPY"]
    sources = [s for c in copies for s in c]
    assert sources and all((ROOT / s).exists() for s in sources), sources
    assert not any(s.startswith("tests") for s in sources)      # the fixture is package data
    assert {"pyproject.toml", "nemotron_sglang"} <= set(sources)


def test_base_image_and_pins_match_the_package():
    args = dict(a.split("=", 1) for op, a in instructions() if op == "ARG" and "=" in a)
    assert args["SGLANG_IMAGE"].endswith(f":v{SGLANG_VERSION}")
    assert f"need {SGLANG_VERSION}" in DOCKERFILE and f"v == '{SGLANG_VERSION}'" in DOCKERFILE
    deps = {re.split(r"[<>=]", d)[0]: d for d in PYPROJECT["project"]["dependencies"]}
    installed = re.findall(r'"([a-z_]+[<>=][^"]+)"', DOCKERFILE)
    assert installed and all(deps[re.split(r"[<>=]", d)[0]] == d for d in installed), installed


def test_entry_point_and_build_check_use_the_installed_package():
    (entry,) = [a for op, a in instructions() if op == "ENTRYPOINT"]
    exe = eval(entry)[0]                                       # JSON-form ENTRYPOINT
    assert exe in PYPROJECT["project"]["scripts"]
    plugin = PYPROJECT["project"]["entry-points"]["sglang.srt.plugins"]
    run = " ".join(a for op, a in instructions() if op == "RUN")
    assert "rm -rf /tmp/nemotron-sglang" in run and "cd / &&" in run
    assert "entry_points(group='sglang.srt.plugins')" in run and \
        f"e.name == '{next(iter(plugin))}'" in run
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["nemotron_sglang.data"]
    assert any(p.startswith("nld-tiny-rules/") for p in data)


def test_healthcheck_and_port():
    ops = dict(instructions())
    port = ops["EXPOSE"]
    assert f"127.0.0.1:{port}/health" in ops["HEALTHCHECK"]
    assert f'"--port", "{port}"' in ops["ENTRYPOINT"]


def test_build_context_and_run_lines():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)
    readme = (ROOT / "docker" / "README.md").read_text()
    runs = [ln for ln in re.sub(r"\\\n", " ", readme).splitlines()
            if ln.startswith("docker run")]
    assert runs and all("--ipc=host" in r and "--shm-size" in r and "--gpus" in r
                        for r in runs), runs
    assert "cuda-graph" not in " ".join(runs)      # the dLLM path runs without CUDA graphs

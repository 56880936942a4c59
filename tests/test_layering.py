"""Layering rules: the pure-PyTorch core (and the CLI) never import GPU / serving stacks.

``nemotron_sglang.core`` may use torch, safetensors and tokenizers only. This file checks that
three ways: (a) a fresh interpreter with sglang, triton, flashinfer and ``kernels`` made
unimportable imports every core module and the CLI, and none of those names may be attempted by
project code or end up in ``sys.modules``; (b) a static AST scan of core's sources; (c) the repo
ships no importable top-level ``kernels`` package.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "nemotron_sglang" / "core"
BLOCKED = ("sglang", "triton", "flashinfer", "kernels")

# Runs in a fresh interpreter. argv[1] is a JSON object:
#   packages    - packages to walk (every module under them is imported)
#   modules     - extra modules to import
#   owner_dirs  - directories whose code counts as "project code" for import attempts
#   sys_path    - entries prepended to sys.path
# The last stdout line is a JSON report.
PROBE = textwrap.dedent(r'''
    import importlib, json, os, pkgutil, sys, traceback

    cfg = json.loads(sys.argv[1])
    BLOCKED = set(cfg["blocked"])
    OWNERS = [os.path.realpath(d) + os.sep for d in cfg["owner_dirs"]]
    IMPORTLIB_DIR = os.path.dirname(os.path.realpath(importlib.__file__)) + os.sep
    attempts = []          # (module name, file of the code that asked for it)

    def _importer():
        f = sys._getframe(2)
        while f is not None:
            fn = f.f_code.co_filename
            if fn.startswith("<") and not fn.startswith("<frozen"):
                return fn                    # <string> (this probe) or other generated code
            if not (fn.startswith("<frozen") or os.path.realpath(fn).startswith(IMPORTLIB_DIR)):
                return os.path.realpath(fn)
            f = f.f_back
        return "?"

    class Blocker:
        """A meta-path finder that makes BLOCKED top-level names (and submodules) unimportable."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append((name, _importer()))
                raise ModuleNotFoundError(f"{name} is blocked by test_layering", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    for p in reversed(cfg["sys_path"]):
        sys.path.insert(0, p)

    names, failed = [], {}
    def _onerror(name):
        failed[name] = traceback.format_exc(limit=-3)

    for pkg_name in cfg["packages"]:
        try:
            pkg = importlib.import_module(pkg_name)
        except BaseException:
            failed[pkg_name] = traceback.format_exc(limit=-3)
            continue
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + ".", onerror=_onerror):
            names.append(info.name)
    names += cfg["modules"]
    imported = []
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException:
            failed[name] = traceback.format_exc(limit=-3)

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    by_project = sorted({(n, f) for n, f in attempts if any(f.startswith(o) for o in OWNERS)})
    print(json.dumps({"imported": sorted(set(imported)), "failed": failed, "leaked": leaked,
                      "attempts_by_project": by_project, "attempts": sorted(set(attempts))}))
''')


def _probe(packages, modules=(), owner_dirs=(ROOT / "nemotron_sglang",), sys_path=(),
           cwd=ROOT) -> dict:
    cfg = {"blocked": list(BLOCKED), "packages": list(packages), "modules": list(modules),
           "owner_dirs": [str(d) for d in owner_dirs], "sys_path": [str(p) for p in sys_path]}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cfg)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_clean(report: dict) -> None:
    assert not report["failed"], "modules failed to import with sglang/triton/flashinfer/kernels " \
        "blocked:\n" + "\n".join(f"--- {k}\n{v}" for k, v in report["failed"].items())
    assert not report["attempts_by_project"], \
        f"project code tried to import blocked modules: {report['attempts_by_project']}"
    assert not report["leaked"], f"blocked modules ended up in sys.modules: {report['leaked']}"


# ---- (a) runtime: fresh interpreter, blocked imports ---------------------------------------

def test_core_and_cli_import_without_gpu_stacks():
    report = _probe(["nemotron_sglang.core"], ["nemotron_sglang.serving.cli"])
    _assert_clean(report)
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in CORE.rglob("*.py")}
    missing = on_disk - set(report["imported"])
    assert not missing, f"core modules not reached by the walk: {sorted(missing)}"
    assert "nemotron_sglang.serving.cli" in report["imported"]


def test_probe_catches_violations(tmp_path):
    """The probe itself must flag a module that imports a blocked name, guarded or not."""
    pkg = tmp_path / "fakecore"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "clean.py").write_text("import json\n")
    (pkg / "direct.py").write_text("import triton.language\n")
    (pkg / "guarded.py").write_text("try:\n    import flashinfer\nexcept ImportError:\n    pass\n")
    (pkg / "lazy.py").write_text("import importlib\nimportlib.import_module('sglang.srt')\n")
    report = _probe(["fakecore"], owner_dirs=[pkg], sys_path=[tmp_path], cwd=tmp_path)
    assert set(report["failed"]) == {"fakecore.direct", "fakecore.lazy"}
    flagged = {(name, Path(f).name) for name, f in report["attempts_by_project"]}
    assert flagged == {("triton", "direct.py"), ("flashinfer", "guarded.py"), ("sglang", "lazy.py")}
    assert "fakecore.clean" in report["imported"]
    with pytest.raises(AssertionError):
        _assert_clean(report)


# ---- (b) static: AST scan of core ----------------------------------------------------------

def _is_dynamic_import(call: ast.Call) -> bool:
    """``__import__("x")`` or ``importlib.import_module("x")`` with a literal name."""
    f = call.func
    named = (isinstance(f, ast.Name) and f.id == "__import__") or \
        (isinstance(f, ast.Attribute) and f.attr == "import_module")
    return named and bool(call.args) and isinstance(call.args[0], ast.Constant) \
        and isinstance(call.args[0].value, str)


def _blocked_imports(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            names = [node.args[0].value]
        hits += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names
                 if n.split(".")[0] in BLOCKED]
    return hits


def test_core_sources_do_not_import_gpu_stacks():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 10, files
    hits = [h for f in files for h in _blocked_imports(f)]
    assert not hits, "core imports a forbidden package:\n" + "\n".join(hits)


def test_ast_scan_detects_forbidden_imports(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import os\nimport triton\nfrom sglang.srt import x\nfrom . import flashinfer\n"
        "import importlib\nimportlib.import_module('flashinfer.jit')\n")
    hits = _blocked_imports(tmp_path / "bad.py", root=tmp_path)
    assert [h.split(": ")[1] for h in hits] == ["triton", "sglang.srt", "flashinfer.jit"]


# ---- (c) no top-level ``kernels`` package from this repo -----------------------------------

def test_repo_ships_no_top_level_kernels_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), \
        "kernels/ must stay a plain directory (no __init__.py): 'kernels' is the HF hub package"
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}) \
        .get("setuptools", {})
    packages = setuptools_cfg.get("packages", {"find": {}})
    if isinstance(packages, dict):      # [tool.setuptools.packages.find]
        include = packages.get("find", {}).get("include", ["*"])
        assert not any(fnmatch.fnmatchcase("kernels", pat) for pat in include), include
    else:                               # an explicit packages = [...] list
        assert not any(p.split(".")[0] == "kernels" for p in packages), packages
    for top_level in ROOT.glob("*.egg-info/top_level.txt"):   # an installed build's record
        assert "kernels" not in top_level.read_text().split(), top_level

"""Preflight of ``benchmarks/gpu_all.sh``: do the modules its steps import exist on the GPU machine?

The steps (the ``benchmarks/*.py`` and ``tests/...`` paths on gpu_all.sh's command lines, plus
the conftest.py files pytest loads for them) are walked with ``ast``: every import at module
level and inside functions, following ``nemotron_sglang.*`` and other repository-local modules
(a script's or test's own folder, the repository root, ``tests/``) transitively, and
``importlib.import_module("literal")`` calls too. An import is exempt when it sits under
``if TYPE_CHECKING:``, or inside a ``try:`` that catches ImportError, or in a function of a
module that calls ``pytest.importorskip`` on that name; ``pytest.importorskip("X")`` itself counts
as needing X (a skipped GPU test is a failed check). Local modules are followed even through
exempt imports: the GPU steps are meant to take the path that works, not the fallback.

    python3 benchmarks/gpu_preflight.py                   # on the GPU machine: import them all
    python3 benchmarks/gpu_preflight.py --allow-no-cuda   # the same as a CPU dry run
    python benchmarks/gpu_preflight.py --static benchmarks/gpu_machine_packages.txt

``--static`` imports nothing third-party: it reports each top-level third-party name not in the
packages file (one distribution name a line, ``#`` comments, optional version after a blank)
and not in the standard library, and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_all.sh"
# import name -> distribution name, where they differ beyond case and '_' / '-'
DIST_OF = {"yaml": "pyyaml", "PIL": "pillow", "google.protobuf": "protobuf", "cv2":
           "opencv-python-headless", "sklearn": "scikit-learn", "skimage": "scikit-image",
           "attr": "attrs", "dateutil": "python-dateutil", "_pytest": "pytest"}


@dataclass(frozen=True)
class Use:
    """One import of a third-party module: who imports it, where, and how it was reached."""
    name: str           # the dotted module name as written
    file: Path
    line: int
    exempt: bool
    via: tuple[str, ...]


def step_paths(script: Path = SCRIPT) -> list[Path]:
    """The repository paths (``benchmarks/*.py``, ``tests/...``) on gpu_all.sh's command lines."""
    found: list[Path] = []
    for line in script.read_text().splitlines():
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        for m in re.finditer(r"(?<![\w/$])((?:benchmarks|tests)/[\w./-]*\w)", code):
            p = ROOT / m.group(1)
            if p not in found and (p.suffix == ".py" or p.is_dir() or not p.suffix):
                found.append(p)
    return found


def entry_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The Python files the steps run (test folders expanded, their conftests added); and the
    paths that do not exist."""
    files: list[Path] = []
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    for p in paths:
        if not p.exists():
            continue
        tests = sorted(p.rglob("test_*.py")) if p.is_dir() else [p]
        if p.is_relative_to(ROOT / "tests"):
            d = p if p.is_dir() else p.parent
            while d.is_relative_to(ROOT / "tests"):
                if (d / "conftest.py").exists():
                    tests.insert(0, d / "conftest.py")
                d = d.parent
        files += [f for f in tests if f not in files]
    return files, missing


class _Imports(ast.NodeVisitor):
    """(module name, line, exempt) of every import in one file; relative names resolved."""

    def __init__(self, package: str, tree: ast.AST):
        self.package, self.out = package, []
        self.skips = {c.args[0].value.split(".")[0] for c in ast.walk(tree)
                      if isinstance(c, ast.Call) and _called(c) == "importorskip" and c.args
                      and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)}
        self.depth = self.guarded = 0
        self.visit(tree)

    def add(self, name: str, line: int, required: bool = False) -> None:
        top = name.split(".")[0]
        exempt = not required and (self.guarded > 0 or (self.depth > 0 and top in self.skips))
        self.out.append((name, line, exempt))

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Try(self, node):
        catches = any(_catches_import_error(h.type) for h in node.handlers)
        self.guarded += catches
        for stmt in node.body:
            self.visit(stmt)
        self.guarded -= catches
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    visit_TryStar = visit_Try

    def visit_If(self, node):
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        for a in node.names:
            self.add(a.name, node.lineno)

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(p for p in (*parts, base) if p)
        self.add(base, node.lineno)
        for a in node.names:                                # a name may be a submodule
            if a.name != "*":
                self.add(f"{base}.{a.name}", node.lineno)

    def visit_Call(self, node):
        attr, arg = _called(node), node.args[0] if node.args else None
        if attr in ("import_module", "importorskip") and isinstance(arg, ast.Constant) \
                and isinstance(arg.value, str):
            self.add(arg.value, node.lineno, required=attr == "importorskip")
        self.generic_visit(node)


def _called(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _catches_import_error(t) -> bool:
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    return t is None or any(getattr(n, "id", "") in ("ImportError", "ModuleNotFoundError",
                                                     "Exception", "BaseException") for n in names)


def _local_file(name: str, roots: list[Path]) -> Path | None:
    rel = Path(*name.split("."))
    for r in roots:
        for f in (r / rel / "__init__.py", r.joinpath(rel).with_suffix(".py")):
            if f.is_file():
                return f
    return None


def _package_of(f: Path) -> str:
    """The dotted package a file's relative imports start from ('' for a script)."""
    parts, d = [], f.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts)


def walk(entries: list[Path]) -> tuple[list[Use], list[Path]]:
    """Every third-party import reached from ``entries``, and every local file reached."""
    uses: list[Use] = []
    seen: dict[Path, tuple[str, ...]] = {}
    todo = [(f, (str(f.relative_to(ROOT)),)) for f in entries]
    while todo:
        f, via = todo.pop(0)
        if f in seen:
            continue
        seen[f] = via
        v = _Imports(_package_of(f), ast.parse(f.read_text(), str(f)))
        in_package = (f.parent / "__init__.py").exists()
        roots = ([] if in_package else [f.parent]) + [ROOT, ROOT / "tests"]
        for name, line, exempt in v.out:
            top = name.split(".")[0]
            if _local_file(top, roots) is not None:
                parts = name.split(".")                     # a package's __init__ runs too
                for i in range(1, len(parts) + 1):
                    g = _local_file(".".join(parts[:i]), roots)
                    if g is not None and g not in seen:
                        todo.append((g, via + (".".join(parts[:i]),)))
            elif top not in sys.stdlib_module_names and top != "__future__":
                uses.append(Use(name, f, line, exempt, via))
    return uses, list(seen)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(module: str) -> str:
    for imp, dist in DIST_OF.items():
        if module == imp or module.startswith(imp + "."):
            return dist
    return module.split(".")[0]


def read_packages(path: Path) -> set[str]:
    lines = (ln.split("#")[0].split() for ln in path.read_text().splitlines())
    return {_normal(ws[0]) for ws in lines if ws}


def static_check(packages: Path) -> int:
    have = read_packages(packages)
    entries, missing = entry_files(step_paths())
    uses, _ = walk(entries)
    bad = {}
    for u in uses:
        if not u.exempt and _normal(dist_name(u.name)) not in have:
            bad.setdefault((u.file, u.name.split(".")[0]), u)
    for p in missing:
        print(f"gpu_all.sh names {p}, which does not exist")
    for u in bad.values():
        print(f"module {u.file.relative_to(ROOT)} imports {u.name} (line {u.line}), not on the "
              f"GPU machine ({dist_name(u.name)}; reached via {' -> '.join(u.via)})")
    print(f"static preflight: {len(entries)} entry files, {len(bad) + len(missing)} problem(s)")
    return 1 if bad or missing else 0


def _module_name(f: Path) -> str | None:
    """The dotted name of a reached package module (scripts and tests are not imported)."""
    pkg = _package_of(f)
    if not pkg:
        return None
    return pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"


def runtime_check(allow_no_cuda: bool) -> int:
    entries, missing = entry_files(step_paths())
    uses, files = walk(entries)
    names = sorted({m for f in files if (m := _module_name(f))}
                   | {u.name for u in uses if not u.exempt})
    failed, broken, ok = [], set(), 0
    for name in names:                          # sorted: a package comes before its parts
        if any(name.startswith(b + ".") for b in broken):
            continue
        try:
            importlib.import_module(name)
            ok += 1
        except Exception as e:                  # ImportError, or a crash while importing
            parent = name.rpartition(".")[0]
            if isinstance(e, ImportError) and e.name == name and parent in sys.modules:
                ok += 1                         # `from X import attr`: attr is no module
                continue
            failed.append(f"{name}: {type(e).__name__}: {e}")
            broken.add(name)
    print(f"imported {ok} of the {len(names)} modules the steps need ({len(failed)} failed; "
          f"the parts of a failed one not tried)")
    for p in missing:
        print(f"MISSING FILE: gpu_all.sh names {p}")
    for line in failed:
        print(f"MISSING IMPORT: {line}")
    versions = {m: getattr(sys.modules.get(m), "__version__", "missing") for m in ("torch",
                                                                                  "triton")}
    torch = sys.modules.get("torch")
    cuda = bool(torch and torch.cuda.is_available())
    print(f"python {sys.version.split()[0]} at {sys.executable}; torch {versions['torch']}, "
          f"triton {versions['triton']}; cuda available: {cuda}"
          + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
    if not cuda and not allow_no_cuda:
        print("MISSING: CUDA (torch.cuda.is_available() is False); --allow-no-cuda for a dry run")
    return 1 if failed or missing or (not cuda and not allow_no_cuda) else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--static", type=Path, metavar="PACKAGES_FILE",
                    help="walk the imports only; report those not in PACKAGES_FILE")
    ap.add_argument("--allow-no-cuda", action="store_true")
    args = ap.parse_args(argv)
    if args.static:
        return static_check(args.static)
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    return runtime_check(args.allow_no_cuda)


if __name__ == "__main__":
    sys.exit(main())

"""``benchmarks/gpu_all.sh`` runs on the lent GPU machine as it is: its steps import only what that
machine has (``gpu_preflight.py --static`` against ``gpu_machine_packages.txt``, and a control
that the check can fail), it installs nothing, and its driver counts failed steps and writes every
step's output (run here with a stub interpreter, no GPU)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_all.sh"
PREFLIGHT = ROOT / "benchmarks" / "gpu_preflight.py"
PACKAGES = ROOT / "benchmarks" / "gpu_machine_packages.txt"
STEPS = ("preflight", "gpu_tests", "kernels", "forward_cost", "quadratic_pass", "cost_model",
         "decisions")


def static(packages: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREFLIGHT), "--static", str(packages)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_steps_import_only_what_the_gpu_machine_has():
    run = static(PACKAGES)
    assert run.returncode == 0, run.stdout + run.stderr


def test_static_check_fails_without_triton(tmp_path):
    lacking = tmp_path / "packages.txt"
    lacking.write_text("".join(line + "\n" for line in PACKAGES.read_text().splitlines()
                               if not re.match(r"triton(\s|$)", line)))
    run = static(lacking)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "imports triton" in run.stdout and "not on the GPU machine" in run.stdout, run.stdout


def test_script_installs_nothing_and_names_existing_files():
    text = SCRIPT.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for word in (".venv", "pip", "install.sh"):
        assert word not in code, f"gpu_all.sh uses {word!r}"
    spec = importlib.util.spec_from_file_location("gpu_preflight", PREFLIGHT)
    mod = sys.modules.setdefault("gpu_preflight", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(mod)                    # (its dataclass looks itself up there)
    paths = {str(p.relative_to(ROOT)) for p in mod.step_paths(SCRIPT)}
    assert {"benchmarks/gpu_preflight.py", "tests/kernels", "benchmarks/kernels.py",
            "benchmarks/decisions.py"} <= paths, paths
    assert all((ROOT / p).exists() for p in paths), paths
    syntax = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_driver_counts_failures_and_writes_every_step(tmp_path):
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\necho "stub $* PYTHONPATH=$PYTHONPATH"\n'
                    '[ "$1" != benchmarks/kernels.py ]\n')
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(stub), "OUT": str(out)}
    env.pop("GPU_ALL_STEPS", None)
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    for name in STEPS:
        assert "stub " in (out / f"{name}.txt").read_text(), name
    assert f"PYTHONPATH={ROOT}" in (out / "kernels.txt").read_text()
    summary = (out / "summary.txt").read_text()
    assert re.search(r"kernels\s+FAILED rc=1", summary), summary
    assert all(re.search(rf"{name}\s+ok", summary) for name in STEPS if name != "kernels"), summary


def test_the_step_graphs_benchmark_runs_its_cpu_smoke():
    """``benchmarks/step_graphs.py --smoke`` (tiny preset, emulated graphs, the attention's PyTorch
    twin): every replay equals the eager step (the table's last column), and a step padded to
    a bucket launches the same number of ops whatever its batch and mix."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_graphs.py"), "--smoke"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.split() for line in out.stdout.splitlines()
             if line.split() and line.split()[0] in ("ar", "draft")]
    timed, ops = [r for r in lines if len(r) == 7], [r for r in lines if len(r) == 4]
    assert len(timed) == 4 and len(ops) == 4, out.stdout
    assert all(float(r[-1]) < 1e-4 for r in timed), out.stdout
    assert len({r[-1] for r in ops}) == 1, out.stdout      # flat within the bucket

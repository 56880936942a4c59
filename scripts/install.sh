#!/usr/bin/env bash
# Fresh-machine install: a venv in .venv with pinned torch, SGLang 0.5.23 (CPU-capable slim
# install: --no-deps + its pure-Python requirements) and this package with test extras.
# NEMOTRON_SGLANG_NO_SGLANG=1 skips SGLang (core only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# sglang 0.5.23 pins torch 2.14.1; pip takes it from the machine's local wheel store
"${PIP[@]}" "torch==2.14.1" 2> >(grep -v "^WARNING: Location" >&2)
EXTRAS=dev
if [ "${NEMOTRON_SGLANG_NO_SGLANG:-0}" != "1" ]; then
  # recipe: ../shared/reference/sglang_cpu.md (approach B); never run `pip check` on this env
  "${PIP[@]}" --no-deps "sglang==0.5.23" 2> >(grep -v "^WARNING: Location" >&2)
  "${PIP[@]}" -r requirements/sglang-cpu.txt 2> >(grep -v "^WARNING: Location" >&2)
  EXTRAS=dev,gateway        # SGLang's gateway (smg), for docs/scale-out.md and its tests
  # NVIDIA Dynamo (frontend + worker, docs/scale-out.md): pinned, without its dependencies
  "${PIP[@]}" --no-deps -r requirements/dynamo.txt 2> >(grep -v "^WARNING: Location" >&2)
fi
"${PIP[@]}" -e ".[$EXTRAS]" 2> >(grep -v "^WARNING: Location" >&2) >/dev/null
.venv/bin/python - <<'PY'
import importlib.util, torch, nemotron_sglang
sg = "sglang " + __import__("importlib.metadata").metadata.version("sglang") \
    if importlib.util.find_spec("sglang") else "no sglang"
print(f"installed: torch {torch.__version__}, {sg}, nemotron_sglang {nemotron_sglang.__version__}")
PY

#!/usr/bin/env bash
# Fresh-machine install: a venv in .venv with pinned torch and this package (+ test deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# sglang 0.5.23 pins torch 2.14.1; pip takes it from the machine's local wheel store
.venv/bin/python -m pip install -q "torch==2.14.1"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import torch, nemotron_sglang; print("torch", torch.__version__, "nemotron_sglang", nemotron_sglang.__version__)')"

#!/usr/bin/env bash
# Serve an NLD checkpoint with SGLang, every decode mode per request: `nemotron-sglang serve`
# (its CPU defaults on a machine without CUDA: docs in nemotron_sglang/serving/serve.py).
# usage: launch/serve_cpu.sh [MODEL_DIR] [PORT]   (extra sglang flags via SGLANG_ARGS;
#        no MODEL_DIR, or "", serves the embedded default)
set -euo pipefail
MODEL="${1:-}"
PORT="${2:-30000}"
exec "${PYTHON:-python}" -m nemotron_sglang serve ${MODEL:+--model "$MODEL"} --port "$PORT" \
  ${SGLANG_ARGS:-}

#!/usr/bin/env bash
# Serve an NLD checkpoint with SGLang on a CPU-only machine, every decode mode per request.
# usage: launch/serve_cpu.sh MODEL_DIR [PORT]   (extra sglang flags via SGLANG_ARGS)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
MODEL="${1:?usage: serve_cpu.sh MODEL_DIR [PORT]}"
PORT="${2:-30000}"
export NEMOTRON_SGLANG_CPU_PLATFORM=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m sglang.launch_server --model-path "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --device cpu --attention-backend torch_native --dtype float32 --max-total-tokens 8192 \
  --dllm-algorithm NemotronTriMode --dllm-algorithm-config "$here/tri_mode.yaml" \
  --max-running-requests 16 ${SGLANG_ARGS:-}

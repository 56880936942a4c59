#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one command, for a session that is lent a
# device (`run` tool: `bash benchmarks/gpu_all.sh`, after `bash scripts/install.sh`).
# Writes each step's output under ${OUT:-gpu_out}/ and keeps going past a failing step, so one
# call returns everything; the exit status is the number of failed steps.
#   1. the `gpu`-marked tests (kernels at real shapes, bf16/fp16, vs the fp32 reference)
#   2. benchmarks/kernels.py: kernel vs flex_attention / masked SDPA / FlashInfer, bandwidth
#   3. benchmarks/forward_cost.py: 8B-shaped forward cost at 1 / 32 / 1056 query tokens
#   4. benchmarks/quadratic_pass.py: the fused quadratic pass's attention / linear / head split
#      at 8B shapes (one layer timed, scaled to 34), before and after the lean pass
#   5. benchmarks/cost_model.py --preset 8b: the adaptive block's cost table for NLD-8B shapes
#      on this GPU (random bf16 weights), as JSON for `serve --cost-model`
#   6. benchmarks/decisions.py: the batched decision layer on CUDA tensors at batch 1 and 16,
#      block 32, vocab 131072 (greedy and T = 1), against copying the rows to the host first
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
PY=.venv/bin/python
fail=0
step() {                      # step NAME COMMAND...
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.txt"
  "$@" >>"$OUT/$name.txt" 2>&1 || { echo "   FAILED (see $OUT/$name.txt)"; fail=$((fail + 1)); }
  tail -n 40 "$OUT/$name.txt"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
step gpu_tests "$PY" -m pytest -q -m gpu tests/kernels
step kernels "$PY" benchmarks/kernels.py --markdown
step forward_cost "$PY" benchmarks/forward_cost.py --markdown --check
step quadratic_pass "$PY" benchmarks/quadratic_pass.py --markdown
step cost_model "$PY" benchmarks/cost_model.py --markdown --preset 8b --json "$OUT/cost_cuda_8b.json"
step decisions "$PY" benchmarks/decisions.py --markdown
exit $fail

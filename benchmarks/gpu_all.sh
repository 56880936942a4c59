#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one command, on the lent GPU machine as it is
# (offline, bare: its own python3 with torch / triton / transformers, no sglang, no flashinfer,
# nothing installed; benchmarks/gpu_machine_packages.txt lists what it has). Through the device
# tool: `run` with command `bash benchmarks/gpu_all.sh` (no carry needed; the checkout is enough).
# Runs ${PYTHON:-python3} with PYTHONPATH=<repo root>; writes each step's output to
# ${OUT:-gpu_out}/<step>.txt, keeps going past a failing step (exit status = number of failed
# steps) and ends with a table of step, status, seconds. GPU_ALL_STEPS="a b" runs only those.
# Each step has a hard `timeout` (seconds, below); together at most 525 s + 5 s of kill grace each,
# so one call stays inside the tool's 10 minutes. The budgets are estimates, not yet timed on a
# GPU: a TIMEOUT row in the table names the step whose budget (or workload) to change.
#   0. preflight       30  benchmarks/gpu_preflight.py: every import the steps need, CUDA present
#   1. gpu_tests      120  the `gpu`-marked tests (kernels at real shapes, bf16, vs fp32 reference)
#   2. kernels         75  benchmarks/kernels.py: kernel vs flex_attention / masked SDPA /
#                          FlashInfer (skipped there: not installed), bandwidth
#   3. forward_cost    60  benchmarks/forward_cost.py: 8B-shaped forward cost at 1 / 32 / 1056
#                          query tokens
#   4. quadratic_pass  40  benchmarks/quadratic_pass.py: the fused quadratic pass's attention /
#                          linear / head split at 8B shapes, before and after the lean pass
#   5. cost_model      45  benchmarks/cost_model.py --preset 8b: the adaptive block's cost table
#                          for NLD-8B shapes on this GPU, as JSON for `serve --cost-model`
#   6. decisions       45  benchmarks/decisions.py: the batched decision layer on CUDA tensors at
#                          batch 1 and 16, block 32, vocab 131072, against host copies first
#   7. step_plan       20  benchmarks/step_plan.py: host time to plan a step (the step plan's one
#                          upload against the old read-back of req_to_token), batch 1/4/16, 2k/8k
#   8. step_graphs     90  benchmarks/step_graphs.py: a canvas step eager vs its captured graph's
#                          replay, core's model at 8B shapes (ar and LoRA drafts, rows 1/4/16)
# A failed preflight stops nothing (the later steps show what breaks), but read it first.
set -u
cd "$(dirname "$0")/.."
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH PYTHONUNBUFFERED=1        # a step cut by its timeout keeps its output so far
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
fail=0
summary=""
step() {                      # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_ALL_STEPS:-}" ] && [[ " $GPU_ALL_STEPS " != *" $name "* ]]; then return; fi
  echo "== $name (timeout ${limit}s): $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS rc=0
  timeout -k 5 "$limit" "$@" >>"$OUT/$name.txt" 2>&1 || rc=$?
  tail -n +2 "$OUT/$name.txt" | tail -n 40
  local status=ok
  if [ "$rc" -ne 0 ]; then
    status="FAILED rc=$rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="TIMEOUT ${limit}s"
    echo "   $status (see $OUT/$name.txt)"
    fail=$((fail + 1))
  fi
  summary+=$(printf '%-15s %-16s %5ds' "$name" "$status" $((SECONDS - t0)))$'\n'
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
step preflight 30 "$PY" benchmarks/gpu_preflight.py
# without CI: tests/conftest.py would fail the session there for lacking sglang / openai / ...
step gpu_tests 120 env -u CI "$PY" -m pytest -q -m gpu tests/kernels
step kernels 75 "$PY" benchmarks/kernels.py --markdown
step forward_cost 60 "$PY" benchmarks/forward_cost.py --markdown --check
step quadratic_pass 40 "$PY" benchmarks/quadratic_pass.py --markdown
step cost_model 45 "$PY" benchmarks/cost_model.py --markdown --preset 8b \
  --json "$OUT/cost_cuda_8b.json"
step decisions 45 "$PY" benchmarks/decisions.py --markdown
step step_plan 20 "$PY" benchmarks/step_plan.py --markdown
step step_graphs 90 "$PY" benchmarks/step_graphs.py --markdown
printf '\n%-15s %-16s %6s\n%s' step status seconds "$summary" | tee "$OUT/summary.txt"
echo "failed steps: $fail"
exit $fail

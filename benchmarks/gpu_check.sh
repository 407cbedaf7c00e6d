#!/usr/bin/env bash
# GPU check (issue 14, item 4), one run of at most 8 minutes on a CUDA machine:
#   1. the `gpu` tests (pytest -m gpu: accelerate FSDP through `ftspec launch`, QLoRA on CUDA with its
#      peak memory in metrics.jsonl), at most 4 minutes;
#   2. peak memory of real LoRA / QLoRA steps against ftspec's estimate for four configurations
#      (benchmarks/gpu_memory.py: random-weight Llama shapes, no download), at most 3.5 minutes;
#   3. a Markdown table with the date for the README, and everything under $OUT (or ./gpu-check-out).
#
#   benchmarks/gpu_check.sh [--dry-run]
#
# --dry-run (no GPU needed): prints the commands, runs the estimates only and checks that every tool the
# real run needs is importable; exit 0 when the script would be able to start.
# Exit status: 0 all passed, 1 a step failed, 2 no CUDA device (without --dry-run).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check-out}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
START=$(date +%s)
status=0
note() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }

note "machine: $(uname -n), $(nproc) cores; $(uptime)"
if [ "$DRY" = 1 ]; then
  note "dry run: would run: timeout 240 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime_train.py"
  note "dry run: would run: timeout 210 $PY benchmarks/gpu_memory.py --steps 3 --json $OUT/gpu_memory.json"
  "$PY" -c "import torch, peft, transformers, bitsandbytes, ftspec.runtime.loss" \
    || { note "a package the real run needs does not import"; exit 1; }
  timeout 120 "$PY" benchmarks/gpu_memory.py --dry-run --json "$OUT/gpu_memory.json" | tee "$OUT/gpu_memory.txt" \
    || exit 1
  note "dry run done"
  exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  note "no CUDA device"
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"

note "1/2 gpu tests"
timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_runtime_train.py 2>&1 | tail -25 \
  | tee "$OUT/gpu_tests.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && { note "gpu tests failed (exit $rc)"; status=1; }

note "2/2 peak memory against the estimate"
timeout 210 "$PY" benchmarks/gpu_memory.py --steps 3 --json "$OUT/gpu_memory.json" 2>&1 \
  | tee "$OUT/gpu_memory.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && { note "memory measurement failed (exit $rc)"; status=1; }

note "done in $(( $(date +%s) - START )) s, exit $status; results in $OUT"
exit $status

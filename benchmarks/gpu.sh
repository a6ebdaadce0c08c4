#!/usr/bin/env bash
# Build, test and benchmark unsc_fast on a GPU machine in ONE call, in under 10 minutes.
#
#   OUT=/path/to/results bash benchmarks/gpu.sh          # from the repository root
#
# Needs: a CUDA build of torch (2.4+), triton, pytest; no internet. Steps, each under its own
# time limit so that the whole stays below TOTAL_S (default 560 s):
#   1. build the extension for this GPU's architecture: pip install --no-build-isolation
#      --no-deps -e . ; if that fails, setup.py build_ext --inplace; if that fails, the JIT
#      build (UNSC_FAST_JIT=1) on first use;
#   2. the CUDA/Triton kernel tests (the cuda and triton cases of tests/test_accumulate.py,
#      tests/test_accumulate_conv.py, tests/test_project_grads.py, and the dispatch tests,
#      -m "not slow", at most 25 failures);
#   3. python -m benchmarks.run --device cuda --quick, with a time budget, and
#      python -m benchmarks.step --device cuda (into the log);
#   4. python -m benchmarks.tune --device cuda into $OUT (never into the package).
# Results go only under $OUT, at most 8 files, one folder deep:
#   $OUT/gpu.log  $OUT/tuned-cuda.json  $OUT/bench/{results.json,summary.md,table.md,
#   speedup.png,memory.png,e2e.png}
# Build artefacts stay where any build leaves them (build/, unsc_fast/_C*.so, the editable
# install's metadata).
set -u
OUT="${OUT:-$PWD/gpu-out}"
TOTAL_S="${TOTAL_S:-560}"
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: > "$LOG"
cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
PY="${PYTHON:-python}"

log() { echo "[gpu.sh +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
# run LIMIT_S CMD...: run with a time limit (capped by what is left), output to the log
run() {
  local lim=$1; shift
  local l; l=$(left)
  (( lim > l )) && lim=$l
  if (( lim < 5 )); then log "SKIP (no time left): $*"; return 124; fi
  log "RUN (limit ${lim}s): $*"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$lim" "$@" >> "$LOG" 2>&1
  local rc=$?
  log "rc=$rc ($(( $(date +%s) - t0 ))s): ${*:2:3}"
  return $rc
}

log "unsc_fast GPU run; results in OUT, total limit ${TOTAL_S}s"
{ nvidia-smi 2>&1 | head -20; "$PY" - <<'EOF'
import os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
from torch.utils.cpp_extension import CUDA_HOME
print("CUDA_HOME", CUDA_HOME, "cpus", os.cpu_count())
EOF
} >> "$LOG" 2>&1

# 1. build for this GPU only (faster than the default 8.0;9.0 list)
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export UNSC_FAST_REQUIRE_CUDA=1  # a CPU-only build on the GPU machine must fail the CUDA tests
if ! run 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . ; then
  if ! run 300 "$PY" setup.py build_ext --inplace ; then
    log "both builds failed: falling back to the JIT build on first use (UNSC_FAST_JIT=1)"
    export UNSC_FAST_JIT=1
  fi
fi
run 240 "$PY" -c "import unsc_fast.dispatch as d; [print(k, ':', v) for k, v in d.availability().items()]"

# 2. the CUDA and Triton kernel tests (all of tests/ if those files are missing; up to 25
#    failures, so a first run on a new GPU shows the whole picture): -k keeps the cases whose
#    backend id is cuda or triton in the per-op files, and every test of test_dispatch.py
TESTS=$(ls tests/test_accumulate.py tests/test_accumulate_conv.py tests/test_project_grads.py \
        2>/dev/null | tr '\n' ' ')
run 150 "$PY" -m pytest ${TESTS:-tests} tests/test_dispatch.py -m "not slow" --maxfail=25 -q \
    -k "cuda or triton or test_dispatch" -p no:cacheprovider

# 3. the benchmark suite: op cases stop starting after BUDGET s, leaving time for the
#    end-to-end part, the report, the one-step benchmark and tune
BUDGET=$(( $(left) - 220 ))
(( BUDGET < 30 )) && BUDGET=30
run $(( $(left) - 110 )) "$PY" -m benchmarks.run --device cuda --quick --out "$OUT/bench" \
    --budget-s "$BUDGET" --note "GPU run by benchmarks/gpu.sh (quick preset, time-budgeted)"

# a run cut short keeps results.json (rewritten after every case): rebuild tables and plots
if [ -f "$OUT/bench/results.json" ] && [ ! -f "$OUT/bench/summary.md" ]; then
  run 40 "$PY" -m benchmarks.report "$OUT/bench/results.json"
fi

# one UNSC step per way of projecting (project_ vs projected_backward): its table goes to the
# log (OUT holds at most 8 files)
run 60 "$PY" -m benchmarks.step --device cuda --reps 5

# 4. tune (the table goes to OUT; copy it into unsc_fast/tuned.json by hand after review)
run $(( $(left) - 5 )) "$PY" -m benchmarks.tune --device cuda --reps 5 \
    --out "$OUT/tuned-cuda.json"

log "done in $(( $(date +%s) - START )) s; files:"
find "$OUT" -type f | sed "s|^$OUT/||" | tee -a "$LOG"

#!/usr/bin/env bash
# The one-shot GPU check, for a machine with a CUDA GPU and a preinstalled torch (our
# H100/H200 machines: Python 3.12, torch 2.11, Triton 3.6, no network).
#
#   OUT=/some/dir tools/gpu_check.sh        (or: make gpu-check)
#
# Builds in place against that torch (--no-build-isolation, nothing downloaded), runs the whole
# test suite (GPU tests included), the C++ test program under compute-sanitizer (memcheck,
# racecheck), and the benchmark suite. Writes at most 8 files into $OUT:
#   summary.txt   device, versions, what passed, timings of each step
#   build.log     the build with the ptxas resource report
#   tests.log     pytest
#   sanitizer.log ctest program under memcheck and racecheck
#   bench.json, bench_bandwidth.png, bench_model.png, bench.log   the benchmark run
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
# The device's own arch only: a quicker build (CI compiles sm_80 and sm_90a).
arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}" + ("a" if p == (9, 0) else ""))')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}

step() {  # step NAME LOG COMMAND...: runs a step, records status and time in the summary
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  "$@" > "$log" 2>&1
  local rc=$?
  echo "$(printf '%-10s' "$name") rc=$rc $(( $(date +%s) - t0 )) s   (log: $(basename "$log"))" | tee -a "$SUMMARY"
  return $rc
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "device", torch.cuda.get_device_name())'
  nvcc --version | tail -n 1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
} >> "$SUMMARY" 2>&1

step build "$OUT/build.log" env SE_KERNELS_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace
"$PY" tools/check_build_log.py "$OUT/build.log" >> "$OUT/build.log" 2>&1 \
  && echo "ptxas check: ok" >> "$SUMMARY" || echo "ptxas check: FAILED (see build.log)" >> "$SUMMARY"

step tests "$OUT/tests.log" "$PY" -m pytest -q -ra -p no:cacheprovider tests
tail -n 3 "$OUT/tests.log" >> "$SUMMARY"

if command -v compute-sanitizer >/dev/null; then
  step sanitizer "$OUT/sanitizer.log" bash -c "
    CMAKE_BUILD_DIR=build/cmake-gpu tools/cmake_check.sh $PY &&
    compute-sanitizer --tool memcheck --error-exitcode 1 build/cmake-gpu/se_kernels_test &&
    compute-sanitizer --tool racecheck --error-exitcode 1 build/cmake-gpu/se_kernels_test"
else
  echo "sanitizer  skipped: compute-sanitizer not found" >> "$SUMMARY"
fi

if "$PY" -c 'import se_kernels.cli' 2>/dev/null; then
  step bench "$OUT/bench.log" "$PY" -m se_kernels bench --output "$OUT"
fi
cat "$SUMMARY"

#!/usr/bin/env bash
# The one-shot GPU check, for a machine with a CUDA GPU and a preinstalled torch (our
# H100/H200 machines: Python 3.12, torch 2.11, Triton 3.6, pytest-xdist, no network).
#
#   OUT=/some/dir tools/gpu_check.sh [STEP ...]      (or: make gpu-check)
#
# STEPs, in order (default: all of them):
#   build      build se_kernels._C in place for this device's arch (--no-build-isolation)
#   tests      the whole pytest suite, GPU tests included (in parallel with pytest-xdist)
#   sanitizer  the C++ test program (CMake build) under compute-sanitizer memcheck/racecheck
#              (the quick matrix; the full matrix unsanitized is `make cmake-check`, a call of
#              its own: ~2500 GPU and ~1250 CPU cases, each with four serial C++ references)
#   bench      the benchmark CLI's default GPU run
# Each step has a time limit so that a hang (a deadlocked kernel) ends the step, not the call.
# The device tool stops a command after 10 minutes: run `build tests`, then `sanitizer`, then
# `bench`, one call each (the build stays in place between calls on a warm machine), with a
# different OUT per call or the files fetched in between.
#
# The device tool copies the working tree without .git: pass the commit you are testing,
#   SE_KERNELS_GIT_COMMIT=<sha of HEAD, written out here> OUT=$OUT tools/gpu_check.sh build tests
# so that the summary and the benchmark JSON name it (commit what you test first).
#
# Writes at most 8 files into $OUT: summary.txt (device, versions, each step's status and
# time), build.log, tests.log, sanitizer.log, bench.log, and the benchmark's bench.json,
# bench_bandwidth.png, bench_model.png.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1
STEPS=("$@")
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(build tests sanitizer bench)

# The device's own arch only: a quicker build (CI compiles sm_80 and sm_90a).
arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}" + ("a" if p == (9, 0) else ""))')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}

step() {  # step NAME LIMIT_S LOG COMMAND...: runs a step with a time limit, records it
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s)
  timeout --kill-after=20 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local note=""
  [[ $rc -eq 124 || $rc -eq 137 ]] && note=" (TIMED OUT after ${limit} s)"
  echo "$(printf '%-10s' "$name") rc=$rc $(( $(date +%s) - t0 )) s$note   (log: $(basename "$log"))" >> "$SUMMARY"
  return $rc
}

{
  echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) steps: ${STEPS[*]}   commit: $(git rev-parse HEAD 2>/dev/null || echo "${SE_KERNELS_GIT_COMMIT:-unknown}")"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "device", torch.cuda.get_device_name())'
  nvcc --version | tail -n 1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
} >> "$SUMMARY" 2>&1

for s in "${STEPS[@]}"; do
  case "$s" in
    build)
      step build 300 "$OUT/build.log" env SE_KERNELS_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace
      "$PY" tools/check_build_log.py "$OUT/build.log" >> "$OUT/build.log" 2>&1 \
        && echo "ptxas check: ok" >> "$SUMMARY" || echo "ptxas check: FAILED (see build.log)" >> "$SUMMARY"
      ;;
    tests)
      xdist=()
      "$PY" -c 'import xdist' 2>/dev/null && xdist=(-n 8 --dist load)
      timeouts=()
      "$PY" -c 'import pytest_timeout' 2>/dev/null && timeouts=(--timeout 240 --timeout-method thread)
      # Triton compiles each kernel variant on first launch (~830 in the suite, about 1 s
      # each): compile them up front, 16 at a time, into Triton's cache.
      cc=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(p[0] * 10 + p[1])')
      step triton-jit 150 "$OUT/tests.log" "$PY" tools/compile_triton_kernels.py --set tests \
        --arch "$cc" --jobs 16
      mv "$OUT/tests.log" "$OUT/triton-jit.log.tmp"
      step tests 420 "$OUT/tests.log" "$PY" -m pytest -q -ra -p no:cacheprovider "${xdist[@]}" "${timeouts[@]}" tests
      grep -E "passed|failed" "$OUT/tests.log" | tail -n 1 >> "$SUMMARY"
      { echo "== tools/compile_triton_kernels.py"; cat "$OUT/triton-jit.log.tmp"; } >> "$OUT/tests.log"
      rm -f "$OUT/triton-jit.log.tmp"
      ;;
    sanitizer)
      if command -v compute-sanitizer >/dev/null; then
        step sanitizer 480 "$OUT/sanitizer.log" bash -c "
          SE_KERNELS_SKIP_CTEST=1 CMAKE_BUILD_DIR=build/cmake-gpu CMAKE_JOBS=16 tools/cmake_check.sh $PY &&
          SE_KERNELS_TEST_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 1 build/cmake-gpu/se_kernels_test &&
          SE_KERNELS_TEST_QUICK=1 compute-sanitizer --tool racecheck --error-exitcode 1 build/cmake-gpu/se_kernels_test"
      else
        echo "sanitizer  skipped: compute-sanitizer not found" >> "$SUMMARY"
      fi
      ;;
    bench)
      step bench 480 "$OUT/bench.log" "$PY" -m se_kernels bench --output "$OUT"
      ;;
    *)
      echo "unknown step '$s' (build, tests, sanitizer, bench)" >> "$SUMMARY"
      ;;
  esac
done
cat "$SUMMARY"

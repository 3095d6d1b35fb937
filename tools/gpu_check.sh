#!/usr/bin/env bash
# The GPU checks, sized for the lent machines: one command of at most 10 minutes, at most 8
# files back, about 15 minutes of device time in all (the machine's start included).
#
#   OUT=/some/dir tools/gpu_check.sh [first [STEP ...]]   (default; or: make gpu-check)
#   OUT=/some/dir tools/gpu_check.sh more [STEP ...]      a second call, when time is left
#   tools/gpu_check.sh --dry-run first|more               on any machine, no GPU: the plan
#
# first, <= 480 s in all, answers in this order:
#   build   (150 s) se_kernels._C for sm_90a only (the device's arch), all cores,
#                   --no-build-isolation against the machine's torch; no downloads
#   smoke   (120 s) the Triton variants the selection needs, compiled in parallel first
#                   (tools/compile_triton_kernels.py --set first, <= 45 s), then
#                   pytest -m smoke tests/test_gpu_smoke.py -x, xdist, 60 s per test: every
#                   forced path at the SE-ResNet-50 stages against the float64 reference,
#                   opcheck, torch.compile, CUDA-graph replay
#   stress  (60 s)  pytest -m stress tests/test_stress.py: 200 bitwise-equal iterations and
#                   two streams at once, cuda (persistent) and triton
#   probe   (150 s) tools/gpu_probe.py: times against the floor and the predictions
#                   (probe.json), the ResNet-50 / SE-ResNet-50 headline
# more, <= 480 s (STEPs: any of build rest sanitizer huge; default all):
#   build   (150 s) as above (incremental: a no-op on a machine that built it already)
#   rest    (120 s) the rest of the pytest suite: -m "not smoke and not stress and not huge",
#                   after compile_triton_kernels.py --set tests (a third of the limit)
#   sanitizer (120 s) the C++ test program (CMake, sm_90a) on the quick matrix under
#                   compute-sanitizer memcheck (every path), racecheck on the persistent path
#                   (must be clean), racecheck and synccheck on the persistent path with 64 KiB
#                   FC items (the backward's two weight stages; one conv5_x-like shape: must
#                   be clean) and racecheck on the cluster path (its split barrier: see
#                   docs/perf-notes.md, "GPU first contact")
#   huge    (90 s)  the > 2^31-element tests, one at a time, outside xdist (each skips unless
#                   the GPU has the FREE memory it needs)
# A step's limit can be changed with LIMIT_<step>=seconds (e.g. LIMIT_rest=400 for a call of
# `more build rest`); a plan whose limits add up to more than 480 s is refused.
#
# Each step runs under its own time limit (a hang costs one step, not the call) and no step
# aborts the others. summary.txt gets a one-line verdict per step and is printed last.
# Files in $OUT: first: summary.txt build.log smoke.log stress.log probe.log probe.json;
# more: summary.txt build.log rest.log sanitizer.log huge.log (at most 8 either way).
#
# The device tool copies the working tree without .git: pass the commit under test,
#   SE_KERNELS_GIT_COMMIT=<sha> OUT=$OUT tools/gpu_check.sh first
# PYTHON=python3 (default) is the interpreter whose torch is used; nothing is installed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
MAX_PLAN_S=480
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 8)}
WORKERS=${WORKERS:-8}    # pytest-xdist workers sharing the one GPU
export PYTHONUNBUFFERED=1
export SE_KERNELS_GIT_COMMIT=${SE_KERNELS_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
PLAN=${1:-first}
[[ $# -gt 0 ]] && shift
case "$PLAN" in
  first) STEPS=(build smoke stress probe) ;;
  more)  STEPS=(build rest sanitizer huge) ;;
  *) echo "usage: tools/gpu_check.sh [--dry-run] first|more [STEP ...]" >&2; exit 2 ;;
esac
[[ $# -gt 0 ]] && STEPS=("$@")

declare -A LIMIT=([build]=150 [smoke]=120 [stress]=60 [probe]=150 [rest]=120 [sanitizer]=120
                  [huge]=90)
total=0
for s in "${STEPS[@]}"; do
  [[ -n "${LIMIT[$s]:-}" ]] || { echo "unknown step '$s' (build smoke stress probe rest sanitizer huge)" >&2; exit 2; }
  override="LIMIT_$s"
  if [[ -n "${!override:-}" ]]; then
    [[ "${!override}" =~ ^[0-9]+$ ]] || { echo "$override=${!override}: not a number of seconds" >&2; exit 2; }
    LIMIT[$s]=${!override}
  fi
  total=$((total + LIMIT[$s]))
done

# ---- the selections (one place: the real run and the dry run use the same ones) ------------
SMOKE_SEL=(-m smoke tests/test_gpu_smoke.py)
STRESS_SEL=(-m stress tests/test_stress.py)
REST_MARK="not smoke and not stress and not huge"
REST_SEL=(-m "$REST_MARK" tests)
HUGE_SEL=(-m huge tests/test_cuda.py tests/test_sizes.py tests/test_triton_int64.py)
PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
# The most nodes a selection may grow to and still fit its limit (smoke: ~3 s of a worker per
# node at N = 256 with the float64 oracle, 8 workers, ~75 s after the Triton warm-up; stress:
# ~10 s per GPU node; huge: ~15 s per node). `rest` is the remainder, run in calls of its own.
declare -A MAX_NODES=([smoke]=200 [stress]=10 [huge]=8)

count_nodes() {  # count_nodes ARGS...: the number of test nodes pytest collects, or -1
  local out n
  out=$("${PYTEST[@]}" --collect-only "$@" 2>&1)
  if grep -qE "^(ERROR|E )|errors? during collection|[0-9]+ errors?" <<<"$out"; then
    echo "collection errors:" >&2; tail -n 20 <<<"$out" >&2; echo -1; return
  fi
  n=$(grep -oE "^[0-9]+(/[0-9]+)? tests? collected|^no tests collected" <<<"$out" | tail -n 1 \
      | grep -oE "^[0-9]+" || true)
  echo "${n:-0}"
}

if [[ $DRY -eq 1 ]]; then
  fail=0
  echo "== gpu_check --dry-run $PLAN: ${STEPS[*]}   (python: $PY)"
  for s in "${STEPS[@]}"; do
    sel=()
    case $s in
      smoke) sel=("${SMOKE_SEL[@]}") ;; stress) sel=("${STRESS_SEL[@]}") ;;
      rest) sel=("${REST_SEL[@]}") ;; huge) sel=("${HUGE_SEL[@]}") ;;
    esac
    line=$(printf '%-10s %4d s' "$s" "${LIMIT[$s]}")
    if [[ ${#sel[@]} -gt 0 ]]; then
      n=$(count_nodes "${sel[@]}")
      line+="   pytest ${sel[*]}: $n nodes (as collected here)"
      if [[ "$n" -le 0 ]]; then line+="   EMPTY OR BROKEN SELECTION"; fail=1; fi
      cap=${MAX_NODES[$s]:-}
      if [[ -n "$cap" && "$n" -gt "$cap" ]]; then
        line+="   MORE THAN $cap NODES: outgrows its ${LIMIT[$s]} s"; fail=1
      fi
    fi
    case $s in
      build) line+="   setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=9.0a, MAX_JOBS=$JOBS" ;;
      smoke)
        jit=$("$PY" tools/compile_triton_kernels.py --set first --arch 90 --list 2>&1 | tail -n 1)
        line+="; triton-jit first: ${jit:-?}" ;;
      probe)
        p=$("$PY" tools/gpu_probe.py --dry-run --budget-s $(( LIMIT[probe] - 15 )) 2>&1 | head -n 2 | tr '\n' ' ')
        [[ "$p" == *"op rows"* ]] || { p+=" PROBE DRY RUN FAILED"; fail=1; }
        line+="   $p" ;;
      sanitizer) line+="   CMake build (sm_90a) + compute-sanitizer memcheck, racecheck x3, synccheck" ;;
    esac
    echo "$line"
  done
  echo "plan total: $total s (limit $MAX_PLAN_S s)"
  if [[ $total -gt $MAX_PLAN_S ]]; then echo "FAIL: the plan exceeds $MAX_PLAN_S s"; fail=1; fi
  [[ $fail -eq 0 ]] && echo "dry run: ok" || echo "dry run: FAILED"
  exit $fail
fi

if [[ $total -gt $MAX_PLAN_S ]]; then
  echo "gpu_check: the plan's limits add up to $total s > $MAX_PLAN_S s; refused" >&2
  exit 2
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T_START=$(date +%s)

FAILED_STEPS=()
verdict() {  # verdict NAME RC SECONDS LIMIT DETAIL
  local v=PASS
  case $2 in 0) v=PASS ;; 124|137) v="TIMEOUT" ;; *) v="FAIL(rc=$2)" ;; esac
  [[ $2 -ne 0 ]] && FAILED_STEPS+=("$1")
  printf '%-10s %-12s %4d s of %4d   %s\n' "$1" "$v" "$3" "$4" "$5" >> "$SUMMARY"
}

step() {  # step NAME LOG COMMAND...: runs under the step's limit; never aborts the script
  local name=$1 log=$2; shift 2
  local limit=${LIMIT[$name]} t0=$(date +%s) rc
  echo "== $name (limit ${limit} s): $*" >> "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  STEP_RC=$rc
  STEP_S=$(( $(date +%s) - t0 ))
  echo "== $name: rc=$rc after ${STEP_S} s" >> "$log"
}

pytest_tail() {  # the pytest result line of a log
  grep -E "[0-9]+ (passed|failed|skipped|error)|no tests ran" "$1" | tail -n 1 | sed 's/=//g; s/^ *//'
}

pytest_verdict() {  # pytest_verdict NAME LOG [NOTE]: a pytest step's line; a run where
  local name=$1 log=$2 res rc=$STEP_RC    # nothing passed is no PASS
  res=$(pytest_tail "$log")
  if [[ $rc -eq 0 ]]; then
    if ! grep -qE "[0-9]+ passed" <<<"$res"; then
      rc=1; res="NOTHING PASSED: $res"
    elif grep -qE "[0-9]+ skipped" <<<"$res"; then
      res+="  (skips: see the SKIPPED lines of $name.log)"
    fi
  fi
  verdict "$name" "$rc" "$STEP_S" "${LIMIT[$name]}" "${res:-no pytest summary: see $name.log}${3:+; $3}"
}

# xdist and per-test timeouts, where the plugins are installed
XDIST=() TIMEOUT=() T45=() T60=() T120=()
"$PY" -c 'import xdist' 2>/dev/null && XDIST=(-n "$WORKERS" --dist loadgroup)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  TIMEOUT=(--timeout 60 --timeout-method thread)
  T45=(--timeout 45 --timeout-method thread) T60=("${TIMEOUT[@]}")
  T120=(--timeout 120 --timeout-method thread)
fi

{
  echo "== gpu_check $PLAN $(date -u +%Y-%m-%dT%H:%M:%SZ) steps: ${STEPS[*]} (limits $total s)"
  echo "commit: $SE_KERNELS_GIT_COMMIT"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
  timeout 60 "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1 | tail -n 1
  echo "xdist: ${XDIST[*]:-none}   timeouts: ${TIMEOUT[*]:-none}   cores: $JOBS"
} >> "$SUMMARY"

for s in "${STEPS[@]}"; do
  log="$OUT/$s.log"
  case $s in
    build)
      step build "$log" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="$JOBS" \
        SE_KERNELS_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace
      rc=$STEP_RC; secs=$STEP_S
      detail="took ${secs} s"
      if [[ $rc -eq 0 ]]; then
        if timeout 60 "$PY" tools/check_build_log.py "$log" >> "$log" 2>&1; then
          detail+="; ptxas check ok"
        else
          detail+="; ptxas check FAILED (build.log)"
        fi
        be=$(timeout 60 "$PY" -c 'import se_kernels; print(se_kernels.available_backends(), se_kernels.EXTENSION_LOAD_ERROR or "")' 2>&1 | tail -n 1)
        detail+="; backends: $be"
      else
        detail+="; $(grep -m1 -E "error|Error" "$log" | cut -c1-150) (build.log)"
      fi
      echo "build took ${secs} s"
      verdict build "$rc" "$secs" "${LIMIT[build]}" "$detail"
      ;;
    smoke)
      cc=$(timeout 30 "$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(p[0] * 10 + p[1])' 2>/dev/null || echo 90)
      step smoke "$log" bash -c "
        timeout 45 $PY tools/compile_triton_kernels.py --set first --arch $cc --jobs $JOBS | tail -n 5
        echo \"== triton-jit rc=\${PIPESTATUS[0]} (a failure here only costs pytest the compile time)\"
        exec ${PYTEST[*]} -x ${XDIST[*]} ${TIMEOUT[*]} ${SMOKE_SEL[*]}"
      pytest_verdict smoke "$log" "$(grep -m1 -oE "triton-jit rc=[0-9]+" "$log")"
      ;;
    stress)
      step stress "$log" "${PYTEST[@]}" -p no:xdist "${T45[@]}" "${STRESS_SEL[@]}"
      pytest_verdict stress "$log"
      ;;
    probe)
      step probe "$log" "$PY" tools/gpu_probe.py --json "$OUT/probe.json" \
        --budget-s $(( LIMIT[probe] - 15 ))
      verdict probe "$STEP_RC" "$STEP_S" "${LIMIT[probe]}" "$(grep -E "^gpu_probe:" "$log" | tail -n 1) (probe.json)"
      ;;
    rest)
      # the ~830 Triton variants tests/test_triton.py launches, compiled in parallel first
      cc=$(timeout 30 "$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(p[0] * 10 + p[1])' 2>/dev/null || echo 90)
      jit_s=$(( LIMIT[rest] / 3 ))
      step rest "$log" bash -c "
        timeout $jit_s $PY tools/compile_triton_kernels.py --set tests --arch $cc --jobs $JOBS | tail -n 5
        echo \"== triton-jit rc=\${PIPESTATUS[0]} (a failure here only costs pytest the compile time)\"
        exec ${PYTEST[*]} ${XDIST[*]} ${T120[*]} -m '$REST_MARK' tests"
      pytest_verdict rest "$log" "$(grep -m1 -oE "triton-jit rc=[0-9]+" "$log")"
      ;;
    sanitizer)
      if ! command -v compute-sanitizer >/dev/null; then
        verdict sanitizer 1 0 "${LIMIT[sanitizer]}" "compute-sanitizer not found"
        continue
      fi
      bin=build/cmake-gpu/se_kernels_test
      step sanitizer "$log" bash -c "
        set -u
        TORCH_CUDA_ARCH_LIST=9.0a SE_KERNELS_SKIP_CTEST=1 CMAKE_BUILD_DIR=build/cmake-gpu \
          CMAKE_JOBS=$JOBS tools/cmake_check.sh $PY || exit 3
        rc=0
        echo '== memcheck, every path'
        SE_KERNELS_TEST_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 1 $bin || rc=1
        echo '== racecheck, persistent path (must be clean)'
        SE_KERNELS_TEST_QUICK=1 SE_KERNELS_TEST_PATH=persistent \
          compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 $bin || rc=1
        echo '== racecheck, persistent path, 64 KiB FC items: two weight stages (must be clean)'
        SE_KERNELS_TEST_QUICK=1 SE_KERNELS_TEST_PATH=persistent SE_KERNELS_TEST_SHAPE=9,2048,128,7,7 \
          SE_KERNELS_CUDA_FC_BYTES=65536 \
          compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 $bin || rc=1
        echo '== synccheck, persistent path, 64 KiB FC items: two weight stages (must be clean)'
        SE_KERNELS_TEST_QUICK=1 SE_KERNELS_TEST_PATH=persistent SE_KERNELS_TEST_SHAPE=9,2048,128,7,7 \
          SE_KERNELS_CUDA_FC_BYTES=65536 \
          compute-sanitizer --tool synccheck --error-exitcode 1 $bin || rc=1
        echo '== racecheck, cluster path (split barrier: read each report against docs/perf-notes.md)'
        SE_KERNELS_TEST_QUICK=1 SE_KERNELS_TEST_PATH=cluster \
          compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 2 $bin || rc=\$((rc | 2))
        exit \$rc"
      rc=$STEP_RC
      detail=$(grep -E "^== (memcheck|racecheck|synccheck)|(ERROR|RACECHECK) SUMMARY" "$log" \
        | sed 's/^=* *//; s/ (must.*//; s/ (split.*//' | tr '\n' ' ' | cut -c1-300)
      [[ $rc -eq 2 ]] && detail+=" (cluster path only: see docs/perf-notes.md before calling it a bug)"
      [[ $rc -eq 3 ]] && detail="CMake build failed"
      verdict sanitizer "$rc" "$STEP_S" "${LIMIT[sanitizer]}" "$detail"
      ;;
    huge)
      step huge "$log" "${PYTEST[@]}" -p no:xdist "${T60[@]}" "${HUGE_SEL[@]}"
      pytest_verdict huge "$log"
      ;;
  esac
done

nfiles=$(find "$OUT" -type f | wc -l)
echo "total $(( $(date +%s) - T_START )) s; $nfiles files in \$OUT$([[ $nfiles -gt 8 ]] && echo ' (MORE THAN 8: some will not come back)'); failed: ${FAILED_STEPS[*]:-none}" >> "$SUMMARY"
cat "$SUMMARY"
[[ ${#FAILED_STEPS[@]} -eq 0 ]]

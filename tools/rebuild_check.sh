#!/usr/bin/env bash
# Incremental, quiet builds, checked after a full build (CI runs it after `make test`):
# 1. a `make build` with no change prints one line and takes seconds (limit: $NOOP_LIMIT_S);
# 2. after an edit (a touched source) `make build` recompiles that file only and prints one
#    line, the summary (toolkit, archs, entry points, spills, warnings, time).
# Usage: tools/rebuild_check.sh [MAKE ARGUMENTS, e.g. PYTHON=python3]
set -euo pipefail
cd "$(dirname "$0")/.."
NOOP_LIMIT_S=${NOOP_LIMIT_S:-15}
EDITED=${EDITED:-csrc/python_module.cpp}
fail() { echo "rebuild-check: FAILED: $*" >&2; exit 1; }

timed_build() {  # sets out, secs
  local t0 t1
  t0=$(date +%s%N)
  out=$(make --no-print-directory build "$@" 2>&1) || { echo "$out"; fail "make build failed"; }
  t1=$(date +%s%N)
  secs=$(( (t1 - t0) / 1000000000 ))
}

timed_build "$@"
[[ $(printf '%s\n' "$out" | wc -l) == 1 && $out == "[se_kernels build]"*"nothing rebuilt"* ]] \
  || fail "a no-change build printed more than its one line, or rebuilt:"$'\n'"$out"
(( secs <= NOOP_LIMIT_S )) || fail "a no-change build took $secs s (limit $NOOP_LIMIT_S s)"
echo "rebuild-check: no-change build: $secs s, one line: $out"

touch "$EDITED"
timed_build "$@"
[[ $(printf '%s\n' "$out" | wc -l) == 1 && $out == "[se_kernels build]"*"warnings 0"* ]] \
  || fail "a build printed more than its one summary line:"$'\n'"$out"
[[ $out == *"(1 of "* ]] || fail "touching $EDITED recompiled more than it: $out"
echo "rebuild-check: after touching $EDITED: $secs s, one line: $out"

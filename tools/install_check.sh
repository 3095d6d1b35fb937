#!/usr/bin/env bash
# The install as users do it, checked outside the checkout:
# 1. builds an sdist and checks that it holds every file a source build needs (csrc/ as git
#    tracks it, CMakeLists.txt, setup.py, pyproject.toml, the tools setup.py imports);
# 2. builds the wheel from the sdist itself (so a missing file fails here, not at a user's)
#    -- CPU-only (SE_KERNELS_SKIP_CUDA=1) to keep CI time sane: the CUDA sources are compiled
#    by `make test` from the checkout, and the sdist check above covers their files;
# 3. installs the wheel into a fresh target folder (pip install --target) and, from another
#    folder, imports every module of the package (nothing from outside it) and runs the
#    installed `se-kernels bench --suites op --shape 1,32,8,8 --impls eager,cpu --threads 1
#    --no-plot`.
# Usage: tools/install_check.sh [PYTHON]   (a python with torch and the build requirements)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${1:-python3}
PY=$(command -v "$PY")
[[ "$PY" == /* ]] || PY="$ROOT/$PY"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/se_kernels-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log=$WORK/log
step() { echo "install-check: $*"; }
fail() { echo "install-check: FAILED: $*" >&2; tail -n 40 "$log" >&2 || true; exit 1; }

t0=$(date +%s)
"$PY" -c 'import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))' \
  "$WORK/dist" > "$log" 2>&1 || fail "building the sdist"
sdist=$(ls "$WORK"/dist/se_kernels-*.tar.gz)
step "sdist $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)"

git ls-files csrc > "$WORK/need" 2>/dev/null || find csrc -type f > "$WORK/need"
printf '%s\n' setup.py pyproject.toml CMakeLists.txt README.md tools/find_cuda.py >> "$WORK/need"
"$PY" - "$sdist" "$WORK/need" <<'PYEOF' || fail "the sdist lacks files a source build needs"
import sys, tarfile
names = tarfile.open(sys.argv[1]).getnames()
have = {n.split("/", 1)[1] for n in names if "/" in n}
need = [l.strip() for l in open(sys.argv[2]) if l.strip()]
missing = [n for n in need if n not in have]
if missing:
    sys.exit("missing from the sdist: " + ", ".join(missing))
stray = [n for n in have if n.endswith((".so", ".o"))]
if stray:
    sys.exit("build products in the sdist: " + ", ".join(stray))
print(f"install-check: sdist holds all {len(need)} files a source build needs")
PYEOF

mkdir -p "$WORK/elsewhere"
cd "$WORK/elsewhere"
SE_KERNELS_SKIP_CUDA=1 "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/wheel" \
  "$sdist" > "$log" 2>&1 || fail "building the wheel from the sdist"
wheel=$(ls "$WORK"/wheel/se_kernels-*.whl)
step "wheel $(basename "$wheel"), built from the sdist, CPU kernels only (SE_KERNELS_SKIP_CUDA=1)"

"$PY" -m pip install --no-deps --target "$WORK/site" "$wheel" > "$log" 2>&1 \
  || fail "installing the wheel"
export PYTHONPATH="$WORK/site"
"$PY" - "$WORK/site" <<'PYEOF' || fail "importing the installed package"
import importlib, pkgutil, sys
site = sys.argv[1]
import se_kernels
assert se_kernels.__file__.startswith(site), f"imported {se_kernels.__file__}, not the wheel's"
assert "cpu" in se_kernels.available_backends(), se_kernels.EXTENSION_LOAD_ERROR
names = [m.name for m in pkgutil.walk_packages(se_kernels.__path__, "se_kernels.")
         if not m.name.endswith(".__main__")]  # that one runs the command
for name in names:
    importlib.import_module(name)
outside = sorted(n for n in sys.modules if n.split(".")[0] in ("benchmarks", "tools", "tests"))
assert not outside, f"the package imported from outside itself: {outside}"
print(f"install-check: imported all {len(names)} modules of the installed package, "
      f"backends {se_kernels.available_backends()}")
PYEOF
[[ -x "$WORK/site/bin/se-kernels" ]] || fail "the wheel installs no se-kernels command"
"$WORK/site/bin/se-kernels" bench --suites op --shape 1,32,8,8 --impls eager,cpu --threads 1 \
  --no-plot --quiet --output "$WORK/out" > "$log" 2>&1 || fail "se-kernels bench (installed)"
rows=$("$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
impls = {r["impl"] for r in d["op"]}
assert impls == {"eager", "cpu"} and all(r["agrees"] for r in d["op"]), d["op"]
assert not d["model"] and not d["complexity"]
print(len(d["op"]))' "$WORK/out/bench.json") || fail "the installed bench's rows"
step "installed se-kernels bench ran from $WORK/elsewhere: $rows op rows (eager, cpu)"
step "ok ($(( $(date +%s) - t0 )) s)"

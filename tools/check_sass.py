#!/usr/bin/env python3
"""Static evidence for the CUDA kernels without a GPU: global-load widths in the sm_90a SASS.

Dumps the machine code of the built extension (cuobjdump --dump-sass; the CUDA toolkit's, or
the copy the triton package ships) and, for every instantiation of a hot kernel (named in a
`// hot-kernel: NAME` comment in csrc/cuda/), counts its global loads by width:

  LDG 128   16-byte loads (LDG.E.128): vectorised tile passes, FC weight loads
  LDGSTS    16-byte cp.async copies global -> shared (LDGSTS.E.BYPASS.128): the cluster slab
  LDG <128  narrower loads (64, 32, 16, 8 bits): scalar paths, tails, workspace reads

and prints the table. It fails when a kernel whose element type has a vector path (float,
half, bfloat16; float64 has none by design) shows none of the 16-byte accesses its hot loops
must use:
  * the persistent kernels: at least one LDG.E.128 (the vectorised tile passes; in the
    forward kernel also the FC weight loads of fc.cuh's rows_dot for 16-bit types);
  * se_fwd_cluster_kernel: at least one LDGSTS.128 (the slab copy), and for half/bfloat16
    at least one LDG.E.128: without a residual the kernel's only 16-byte LDGs are the FC
    weight loads (rows_dot; float keeps element loads there, fc.cuh kFcVec);
  * the NCHW persistent kernels (forward and backward) of half/bfloat16/float: at least one
    read-only 16-byte load (LDG.E.128.CONSTANT, column "RO.128"): the span reduce of
    tiles.cuh (reduce_span, grad_reduce_span), the only user of the read-only path, which
    reads rows whose length is not a multiple of 8 elements (H*W = 49, 196) with 16-byte
    vectors (float: 4). Without it those reductions fall back to element loads.
  * se_fwd_persistent_kernel for half/bfloat16: at least one LDG.E.128 inside the FC items'
    loop (fc.cuh rows_dot_padded; column "FC.128"). The tile passes have 16-byte loads of
    their own, so the plain count cannot tell a scalar FC; this one is found through the
    line table (-lineinfo): nvdisasm -gi prints each instruction's chain of inlined source
    lines, and a load counts when the chain passes through rows_dot_padded's lines. It needs
    nvdisasm (the toolkit's or triton's); without it the column reads "-" and the check is
    skipped, with a note.
  * se_bwd_persistent_kernel, every element type (float64 included): at least one LDGSTS.128
    (16-byte cp.async): the FC items' weight-block copies (fc.cuh cols_dot_staged, issue
    12c). Without it the items' weights would reach shared memory element by element (the
    fallback for unaligned weights only).
  * se_fwd_persistent_kernel for bfloat16, float and double: at least one LDGSTS.128, the FC
    items' input staging (fc.cuh stage_rows_padded, issue 12e; half keeps element staging).
A count is static (instructions in the binary, not executions): it proves that the vector
path exists in the machine code, not how often it runs; docs/perf-notes.md predicts that.

Usage: check_sass.py [LIBRARY_OR_CUBIN ...] [--arch sm_90a]
  default: se_kernels/_C*.so of this checkout. Exit 0: pass; 1: a check failed; 2: no SASS
  to check (no CUDA build, or no cuobjdump) -- reported, not a failure, unless --strict.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_tool(name: str) -> str | None:
    exe = shutil.which(name)
    if exe:
        return exe
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).is_file():
            return str(Path(home) / "bin" / name)
    try:  # the triton wheel bundles cuobjdump and nvdisasm
        import triton  # noqa: PLC0415

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if p.is_file():
            return str(p)
    except Exception:  # noqa: BLE001 - triton is optional here
        pass
    return None


def find_cuobjdump() -> str | None:
    return find_tool("cuobjdump")


# The FC loop of the persistent kernels' FC items: loads inlined from these lines of fc.cuh.
FC_ITEM_FUNCTION = "rows_dot_padded"


def function_lines(path: Path, name: str) -> tuple[int, int] | None:
    """First and last line of the definition of `name` in path (a brace-matched body)."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.search(rf"\b{name}\(", line) and "__device__" in "".join(lines[max(0, i - 2):i + 1]):
            depth, started = 0, False
            for j in range(i, len(lines)):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if started and depth == 0:
                    return i + 1, j + 1
    return None


_LINE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')


def fc_item_wide_loads(files: list[str], arch: str, cuobjdump: str) -> dict[str, int] | None:
    """{mangled function: LDG.E.128 whose inline chain passes through rows_dot_padded}, or
    None when nvdisasm is missing or the line table is absent."""
    nvdisasm = find_tool("nvdisasm")
    span = function_lines(ROOT / "csrc" / "cuda" / "fc.cuh", FC_ITEM_FUNCTION)
    if nvdisasm is None or span is None:
        return None
    out: dict[str, int] = {}
    seen_lines = False
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            r = subprocess.run([cuobjdump, "-xelf", "all", str(Path(f).resolve())], cwd=tmp,
                               capture_output=True, text=True)
            if r.returncode != 0:
                return None
        for cubin in sorted(Path(tmp).glob(f"*.{arch}.cubin")):
            r = subprocess.run([nvdisasm, "-gi", str(cubin)], capture_output=True, text=True)
            if r.returncode != 0:
                return None
            func, chain_hit, in_block = None, False, False
            for line in r.stdout.splitlines():
                m = re.match(r"^\.text\.(\S+):", line)
                if m:
                    func = m.group(1)
                    continue
                m = _LINE.search(line)
                if m:
                    seen_lines = True
                    if not in_block:  # a new annotation block: a new chain
                        chain_hit, in_block = False, True
                    for fpath, ln in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
                        if fpath and fpath.endswith("csrc/cuda/fc.cuh") and \
                                span[0] <= int(ln) <= span[1]:
                            chain_hit = True
                    continue
                if "/*" in line:
                    in_block = False
                    if func and chain_hit and re.search(r"\bLDG\.E\.128\b", line):
                        out[func] = out.get(func, 0) + 1
    return out if seen_lines else None


def hot_kernels() -> list[str]:
    names = set()
    for f in (ROOT / "csrc" / "cuda").glob("*"):
        if f.suffix in (".cu", ".cuh", ".h"):
            names.update(re.findall(r"//\s*hot-kernel:\s*(\w+)", f.read_text()))
    return sorted(names)


def demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


LOAD = re.compile(r"\b(LDGSTS|LDG)((?:\.[A-Z0-9_]+)*)\b")


def width(mods: list[str]) -> int:
    for m in mods:
        if m in ("128", "64"):
            return int(m)
        if m in ("U16", "S16"):
            return 16
        if m in ("U8", "S8"):
            return 8
    return 32


def parse_sass(text: str) -> dict[str, collections.Counter]:
    """{mangled function: Counter of 'LDG128', 'LDG64', ..., 'LDGSTS128'}"""
    funcs: dict[str, collections.Counter] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), collections.Counter())
            continue
        if cur is None or "/*" not in line:
            continue
        for op, mods in LOAD.findall(line):
            parts = mods.strip('.').split('.')
            cur[f"{op}{width(parts)}"] += 1
            if op == "LDG" and "CONSTANT" in parts and width(parts) == 128:
                cur["RO128"] += 1  # read-only data path (ld.global.nc), counted in LDG128 too
    return funcs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--strict", action="store_true", help="no SASS to check is a failure")
    args = ap.parse_args()
    files = args.files or sorted(glob.glob(str(ROOT / "se_kernels" / "_C*.so")))
    exe = find_cuobjdump()
    if not files or exe is None:
        print(f"check_sass: nothing to check ({'no cuobjdump' if exe is None else 'no library'})")
        return 1 if args.strict else 2
    text = ""
    for f in files:
        r = subprocess.run([exe, "--dump-sass", "--gpu-architecture", args.arch, f],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"check_sass: cuobjdump failed on {f}: {r.stderr.strip()}")
            return 1
        text += r.stdout
    funcs = parse_sass(text)
    names = demangle(list(funcs))
    fc_wide = fc_item_wide_loads(files, args.arch, exe)
    hot = hot_kernels()
    rows = []
    failures = []
    for mangled, cnt in sorted(funcs.items(), key=lambda kv: names[kv[0]]):
        full = names[mangled]
        kern = next((h for h in hot if re.search(rf"\b{h}<", full)), None)
        if kern is None:
            continue
        targs = re.search(rf"{kern}<([^>]*)>", full).group(1)
        targs = targs.replace("__nv_bfloat16", "bf16").replace("__half", "half").replace(" ", "")
        narrow = sum(v for k, v in cnt.items() if k.startswith("LDG") and not k.startswith(
            "LDGSTS") and k != "LDG128")
        fc = "-" if fc_wide is None else str(fc_wide.get(mangled, 0))
        rows.append((kern, targs, cnt["LDG128"], fc, cnt["LDGSTS128"], narrow, cnt["RO128"],
                     " ".join(f"{k}:{v}" for k, v in sorted(cnt.items()) if k not in (
                         "LDG128", "LDGSTS128", "RO128"))))
        dtype = targs.split(",")[0]
        if kern == "se_bwd_persistent_kernel" and cnt["LDGSTS128"] == 0:
            failures.append(f"{kern}<{targs}>: the FC items' weight copies are not 16-byte "
                            "cp.async (no LDGSTS.128, fc.cuh cols_dot_staged)")
        if kern == "se_fwd_persistent_kernel" and dtype != "half" and cnt["LDGSTS128"] == 0:
            failures.append(f"{kern}<{targs}>: the FC items' input staging is not 16-byte "
                            "cp.async (no LDGSTS.128, fc.cuh stage_rows_padded)")
        if dtype == "double":
            continue  # no vector path in the tile passes by design (device.cuh kHasVecPath)
        if kern == "se_fwd_cluster_kernel":
            if cnt["LDGSTS128"] == 0:
                failures.append(f"{kern}<{targs}>: the slab copy is not 16-byte cp.async")
            if dtype in ("half", "bf16") and cnt["LDG128"] == 0:
                failures.append(f"{kern}<{targs}>: FC weight loads are not 16-byte (LDG.E.128)")
        elif cnt["LDG128"] == 0:
            failures.append(f"{kern}<{targs}>: no 16-byte global load (LDG.E.128)")
        nchw = targs.split(",")[1:2] == ["false"]
        if (kern in ("se_fwd_persistent_kernel", "se_bwd_persistent_kernel") and nchw
                and cnt["RO128"] == 0):  # float too: its span reduce runs at H*W % 4 != 0
            failures.append(f"{kern}<{targs}>: the NCHW span reduce is not 16-byte "
                            "(no LDG.E.128.CONSTANT)")
        if (kern == "se_fwd_persistent_kernel" and dtype in ("half", "bf16")
                and fc_wide is not None and fc_wide.get(mangled, 0) == 0):
            failures.append(f"{kern}<{targs}>: the FC items' weight loads are not 16-byte "
                            f"(no LDG.E.128 inlined from fc.cuh {FC_ITEM_FUNCTION})")
    if not rows:
        print(f"check_sass: no hot kernel in the {args.arch} SASS of {', '.join(files)}")
        return 1 if args.strict else 2
    w = max(len(r[0]) + len(r[1]) + 2 for r in rows)
    print(f"check_sass: global loads per hot kernel ({args.arch} SASS, static counts)")
    print(f"  {'kernel<T,nhwc,max,res>':<{w}}  LDG.128  FC.128  LDGSTS.128  LDG<128  RO.128  "
          "(narrower by width)")
    for kern, targs, l128, fc, sts, narrow, ro, detail in rows:
        print(f"  {kern + '<' + targs + '>':<{w}}  {l128:7d}  {fc:>6}  {sts:10d}  {narrow:7d}  "
              f"{ro:6d}  {detail}")
    if fc_wide is None:
        print("check_sass: note: FC.128 not counted (no nvdisasm, or no line table in the "
              "library): the persistent FC-item check was skipped")
    if failures:
        print("check_sass: FAILED\n  " + "\n  ".join(failures))
        return 1
    print(f"check_sass: ok ({len(rows)} hot kernel instantiations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

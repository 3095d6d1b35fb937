#!/usr/bin/env python3
"""Checks a build log of se_kernels._C (written by `make build`).

* fails on compiler warnings in our own sources (csrc/);
* summarises the CUDA build: the archs compiled, and the ptxas resource report of every
  kernel (registers, stack, spills);
* fails if a kernel marked hot spills to local memory. A kernel is hot when its name
  appears in a `// hot-kernel: NAME` comment in csrc/cuda/.

Usage: check_build_log.py BUILD_LOG
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def main(log_path: str) -> int:
    text = Path(log_path).read_text(errors="replace")
    failures = []

    warnings = sorted({line.strip() for line in text.splitlines()
                       if re.search(r"csrc/\S+:\d+(:\d+)?: warning", line)
                       or re.search(r"csrc/\S+\(\d+\): warning", line)})
    if warnings:
        failures.append("compiler warnings in our sources:\n  " + "\n  ".join(warnings))

    # ptxas -v: "Compiling entry function 'NAME' for 'sm_90a'" then "Used N registers, ..."
    entries = []
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
        if m:
            current = {"name": m.group(1), "arch": m.group(2)}
            continue
        if current is not None:
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                current.update(stack=int(m.group(1)), spill_st=int(m.group(2)),
                               spill_ld=int(m.group(3)))
            m = re.search(r"Used (\d+) registers", line)
            if m:
                current["regs"] = int(m.group(1))
                entries.append(current)
                current = None

    hot = set()
    for src in (ROOT / "csrc" / "cuda").glob("*.cu*"):
        hot |= set(re.findall(r"//\s*hot-kernel:\s*(\w+)", src.read_text()))

    if entries:
        pretty = demangle(sorted({e["name"] for e in entries}))
        archs = sorted({e["arch"] for e in entries})
        print(f"[se_kernels build] CUDA kernels compiled for {', '.join(archs)}: "
              f"{len({e['name'] for e in entries})} entry points")
        for e in sorted(entries, key=lambda e: (e["arch"], pretty[e["name"]])):
            name = pretty[e["name"]]
            short = name.split("(")[0]
            is_hot = any(h in name for h in hot)
            print(f"  {e['arch']:8} regs {e.get('regs', '?'):>3} stack {e.get('stack', 0):>4} "
                  f"spill {e.get('spill_st', 0)}/{e.get('spill_ld', 0)}{'  [hot]' if is_hot else ''}"
                  f"  {short}")
            if is_hot and (e.get("spill_st", 0) or e.get("spill_ld", 0)):
                failures.append(f"hot kernel spills: {name} on {e['arch']}")
        missing = [h for h in hot if not any(h in pretty[e["name"]] for e in entries)]
        if missing:
            failures.append(f"hot kernels marked but not in the ptxas report: {missing}")
    elif "CUDA build:" in text:
        failures.append("a CUDA build ran but the log has no ptxas report "
                        "(SE_KERNELS_PTXAS_VERBOSE=1 not applied?)")

    for f in failures:
        print(f"[se_kernels build] FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

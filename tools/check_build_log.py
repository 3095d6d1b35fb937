#!/usr/bin/env python3
"""Checks a build log of se_kernels._C (written by `make build`) and summarises the build.

* fails on compiler warnings in our own sources (csrc/);
* summarises the CUDA build: the toolkit, the archs compiled, and the ptxas resource report
  of every kernel (registers, stack, spills);
* fails if a kernel marked hot spills to local memory. A kernel is hot when its name
  appears in a `// hot-kernel: NAME` comment in csrc/cuda/.

Builds are incremental (setup.py keeps ninja's objects in build/temp), so a log holds the
compiler output of the sources compiled in that run only. The report of every source is
kept in build/compile-report.json and merged with each new log: the table and the checks
always cover every source of the current build, and a warning stays until its source (or a
header it includes) is recompiled without it.

Usage: check_build_log.py BUILD_LOG [--quiet] [--seconds S] [--report JSON]
  default   prints the summary line and the full table (as tools/gpu_check.sh records it)
  --quiet   prints the summary line only; the table is appended to BUILD_LOG and written to
            build/build-report.txt (`make build V=1` shows it)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "[se_kernels build]"

# ninja -v: "[3/9] /usr/local/cuda/bin/nvcc ... -c /path/csrc/cuda/x.cu -o /path/x.o ..."
_NINJA_STEP = re.compile(r"^\s*\[\d+/\d+\] (.*)$")
_SOURCE = re.compile(r"\s-c\s+(\S+\.(?:cu|cpp|cc|cxx|c))(?:\s|$)")
_WARNING = (re.compile(r"csrc/\S+:\d+(:\d+)?: warning"), re.compile(r"csrc/\S+\(\d+\): warning"))
_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def _source_key(path: str) -> str:
    """A compiled source as a path relative to the tree it was built from (csrc/...)."""
    i = path.find("csrc/")
    return path[i:] if i >= 0 else path


def parse_log(text: str) -> dict:
    """{"sources": {source: {"entries": [...], "warnings": [...]}}, "other_warnings": [...],
    "cuda": "CUDA build: ..." line or None, "cpu_only": reason or None}."""
    sources: dict[str, dict] = {}
    other: list[str] = []
    current = None      # the source whose compiler output follows
    entry = None        # the ptxas entry being read
    cuda = cpu_only = None
    for line in text.splitlines():
        m = _NINJA_STEP.match(line)
        if m:
            s = _SOURCE.search(m.group(1))
            current = _source_key(s.group(1)) if s else None
            if current is not None:
                sources[current] = {"entries": [], "warnings": []}
            entry = None
            continue
        if TAG in line and "CUDA build:" in line:
            cuda = line.split("CUDA build:", 1)[1].strip()
        if TAG in line and "CPU-only build" in line:
            cpu_only = line.split("CPU-only build", 1)[1].strip(" ()")
        if any(w.search(line) for w in _WARNING):
            (sources[current]["warnings"] if current else other).append(line.strip())
            continue
        m = _ENTRY.search(line)
        if m:
            entry = {"name": m.group(1), "arch": m.group(2)}
            continue
        if entry is not None:
            m = _SPILL.search(line)
            if m:
                entry.update(stack=int(m.group(1)), spill_st=int(m.group(2)),
                             spill_ld=int(m.group(3)))
            m = _REGS.search(line)
            if m:
                entry["regs"] = int(m.group(1))
                if current is not None:
                    sources[current]["entries"].append(entry)
                else:  # a log without ninja's step lines (e.g. a hand-run nvcc)
                    sources.setdefault("(unattributed)", {"entries": [], "warnings": []})[
                        "entries"].append(entry)
                entry = None
    for s in sources.values():
        s["warnings"] = sorted(set(s["warnings"]))
    return {"sources": sources, "other_warnings": sorted(set(other)), "cuda": cuda,
            "cpu_only": cpu_only}


def merge(parsed: dict, report_path: Path | None) -> dict[str, dict]:
    """Every source of the current build: this log's, and the kept report's for sources that
    ninja found up to date (dropping sources that no longer exist, and CUDA sources in a
    CPU-only build)."""
    kept: dict[str, dict] = {}
    if report_path is not None and report_path.is_file():
        try:
            kept = json.loads(report_path.read_text()).get("sources", {})
        except (OSError, ValueError):
            kept = {}
    merged = {k: v for k, v in kept.items() if (ROOT / k).is_file()}
    if parsed["cpu_only"] is not None:
        merged = {k: v for k, v in merged.items() if not k.endswith(".cu")}
    merged.update(parsed["sources"])
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps({"sources": merged}, indent=1, sort_keys=True))
    return merged


def _toolkit(cuda_line: str | None) -> str:
    """'CUDA 13.0' from the setup.py line, else the nvcc in the line's toolkit folder."""
    if not cuda_line:
        return "CUDA"
    m = re.search(r"toolkit (\S+?),", cuda_line)
    if m:
        try:
            out = subprocess.run([f"{m.group(1)}/bin/nvcc", "--version"], capture_output=True,
                                 text=True, timeout=20).stdout
            v = re.search(r"release (\d+\.\d+)", out)
            if v:
                return f"CUDA {v.group(1)}"
        except (OSError, subprocess.SubprocessError):
            pass
    m = re.search(r"torch CUDA (\S+?),", cuda_line)
    return f"CUDA (torch {m.group(1)})" if m else "CUDA"


def check(log_path: str, *, report_path: Path | None, seconds: float | None
          ) -> tuple[str, list[str], list[str]]:
    """(summary line, table lines, failures)."""
    parsed = parse_log(Path(log_path).read_text(errors="replace"))
    sources = merge(parsed, report_path)
    entries = [e for s in sources.values() for e in s["entries"]]
    warnings = sorted({w for s in sources.values() for w in s["warnings"]}
                      | set(parsed["other_warnings"]))
    failures, table = [], []
    if warnings:
        failures.append("compiler warnings in our sources:\n  " + "\n  ".join(warnings))

    hot = set()
    for src in (ROOT / "csrc" / "cuda").glob("*.cu*"):
        hot |= set(re.findall(r"//\s*hot-kernel:\s*(\w+)", src.read_text()))

    spills = 0
    archs: list[str] = []
    if entries:
        pretty = demangle(sorted({e["name"] for e in entries}))
        archs = sorted({e["arch"] for e in entries})
        table.append(f"{TAG} CUDA kernels compiled for {', '.join(archs)}: "
                     f"{len({e['name'] for e in entries})} entry points")
        for e in sorted(entries, key=lambda e: (e["arch"], pretty[e["name"]])):
            name = pretty[e["name"]]
            short = name.split("(")[0]
            is_hot = any(h in name for h in hot)
            spilled = e.get("spill_st", 0) + e.get("spill_ld", 0)
            spills += spilled > 0
            table.append(f"  {e['arch']:8} regs {e.get('regs', '?'):>3} "
                         f"stack {e.get('stack', 0):>4} "
                         f"spill {e.get('spill_st', 0)}/{e.get('spill_ld', 0)}"
                         f"{'  [hot]' if is_hot else ''}  {short}")
            if is_hot and spilled:
                failures.append(f"hot kernel spills: {name} on {e['arch']}")
        missing = [h for h in hot if not any(h in pretty[e["name"]] for e in entries)]
        if missing:
            failures.append(f"hot kernels marked but not in the ptxas report: {missing}")
    elif parsed["cuda"] is not None:
        failures.append("a CUDA build ran but no ptxas report is in the log or in "
                        f"{report_path} (SE_KERNELS_PTXAS_VERBOSE=1 not applied?)")

    compiled = len(parsed["sources"])
    took = f", {seconds:.0f} s" if seconds is not None else ""
    if parsed["cuda"] is not None or entries:
        what = (f"{_toolkit(parsed['cuda'])}, archs {','.join(archs) or '?'}, "
                f"{len({e['name'] for e in entries})} entry points, spills {spills}")
    elif parsed["cpu_only"] is not None:
        what = f"CPU kernels only ({parsed['cpu_only']})"
    else:
        what = "no extension built"
    summary = (f"{TAG} {what}, warnings {len(warnings)}{took} "
               f"({compiled} of {len(sources)} sources compiled)")
    return summary, table, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log")
    p.add_argument("--quiet", action="store_true", help="print the summary line only")
    p.add_argument("--seconds", type=float, help="the build's time, for the summary line")
    p.add_argument("--report", default=str(ROOT / "build" / "compile-report.json"),
                   help="per-source report kept between builds ('' for none)")
    args = p.parse_args(argv)
    summary, table, failures = check(args.log, report_path=Path(args.report)
                                     if args.report else None, seconds=args.seconds)
    print(summary)
    if args.quiet:
        text = "\n".join([summary, *table]) + "\n"
        with open(args.log, "a") as f:
            f.write("\n" + text)
        if args.report:
            (Path(args.report).parent / "build-report.txt").write_text(text)
    else:
        for line in table:
            print(line)
    for f in failures:
        print(f"{TAG} FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Provenance, the JSON file, and the terminal tables (rich; plain text without it)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

SCHEMA = "se_kernels.bench/1"
PROVENANCE_KEYS = ("date", "command", "argv", "git_commit", "git_dirty", "device", "device_type",
                   "cpu", "versions", "platform", "threads", "copy_bandwidth_gbs",
                   "backends", "extension_load_error", "timer", "cache", "env", "load_average")


_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
             "KMP_BLOCKTIME", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST",
             "TORCHINDUCTOR_MAX_AUTOTUNE", "TORCHINDUCTOR_CACHE_DIR")


# ---- provenance -----------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    """git in the checkout se_kernels runs from; None for an installed copy (whose folder
    may sit inside some unrelated repository)."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / ".git").exists() and (root / "setup.py").is_file()):
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def provenance(device: torch.device, *, threads: dict, copy_bw: dict, timer: str, cache: str,
               load: dict, argv: list[str] | None = None) -> dict:
    import se_kernels

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    argv = list(sys.argv if argv is None else argv)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    cpu = {"name": cpu_name(), "logical_cpus": os.cpu_count(),
           "capability": torch.backends.cpu.get_cpu_capability()}
    try:
        cpu["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    gpu = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = {"name": p.name, "capability": f"{p.major}.{p.minor}",
               "memory_gib": round(p.total_memory / 2**30, 1),
               "multiprocessors": p.multi_processor_count,
               "l2_bytes": getattr(p, "L2_cache_size", None)}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m se_kernels " + shlex.join(argv[1:]),
        "argv": argv,
        # The device machines get a copy of the working tree without .git: the caller passes
        # the commit in SE_KERNELS_GIT_COMMIT (tools/gpu_check.sh says how).
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("SE_KERNELS_GIT_COMMIT"),
        "git_dirty": None if dirty is None else bool(dirty),
        "device": device_name(device),
        "device_type": device.type,
        "gpu": gpu,
        "cpu": cpu,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": triton_version, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                     "se_kernels": se_kernels.__version__},
        "platform": platform.platform(),
        "threads": threads,
        "copy_bandwidth_gbs": {str(k): v / 1e9 for k, v in copy_bw.items()},
        "backends": se_kernels.available_backends(),
        "extension_load_error": se_kernels.EXTENSION_LOAD_ERROR,
        "timer": timer,
        "cache": cache,
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
        "load_average": load,  # {"start": [1, 5, 15 min], "end": [...]}: how busy the machine was
    }


# ---- JSON -----------------------------------------------------------------------------------

def _clean(obj):
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(data), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    with open(path) as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a se_kernels bench file (schema {data.get('schema')!r}, "
                         f"expected {SCHEMA!r})")
    return data


# ---- tables ---------------------------------------------------------------------------------

def fmt_time_us(us: float | None) -> str:
    if us is None:
        return "-"
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.3g} ms"
    return f"{us:.3g} us"


def fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _num(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


class _Printer:
    """rich tables on stdout (wide enough not to wrap in a log file), tabulate or plain text
    without rich."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
        except ImportError:
            self.console = None
        else:
            width = None if sys.stdout.isatty() else 220
            self.console = Console(width=width, highlight=False)

    def table(self, title: str, headers: list[str], rows: list[list[str]],
              sections: list[int] | None = None, caption: str | None = None) -> None:
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title, caption=caption, title_justify="left",
                      caption_justify="left", header_style="bold")
            for i, h in enumerate(headers):
                t.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
            breaks = set(sections or [])
            for i, r in enumerate(rows):
                t.add_row(*r, end_section=i in breaks)
            self.console.print(t)
            return
        print(f"\n{title}")
        try:
            from tabulate import tabulate
            print(tabulate(rows, headers=headers, disablenumparse=True))
        except ImportError:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
            for r in [headers] + rows:
                print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if caption:
            print(caption)

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text)


def shape_label(r: dict) -> str:
    """"conv2_x 256x56x56/16" (a custom shape's name is its size: "64x32x32/4")."""
    dims = f"{r['c']}x{r['h']}x{r['w']}/{r['cr']}"
    return dims if r["family"] == "custom" else f"{r['shape']} {dims}"


def _case_key(r: dict, shape_order: dict) -> tuple:
    """Sort key of a row's case: pass, shape in the order measured (presets in their own
    order), batch, dtype, layout, residual, threads."""
    return (r["mode"], shape_order[(r["family"], r["shape"])], r["n"], r["dtype"], r["layout"],
            r["residual"], r["threads"] or 0)


def _shape_order(rows: list[dict]) -> dict:
    return {k: i for i, k in enumerate(dict.fromkeys((r["family"], r["shape"]) for r in rows))}


def print_report(data: dict) -> None:
    p = _Printer()
    prov = data["provenance"]
    bw = ", ".join(f"{k} thr: {v:.1f} GB/s" if k != "device" else f"{v:.0f} GB/s"
                   for k, v in prov["copy_bandwidth_gbs"].items())
    p.line(f"se_kernels bench on {prov['device']} ({prov['device_type']}), torch "
           f"{prov['versions']['torch']}, commit {(prov['git_commit'] or 'unknown')[:12]}"
           f"{' (dirty)' if prov['git_dirty'] else ''}, {prov['date']}")
    if bw:
        p.line(f"copy bandwidth (read + write): {bw}; timer: {prov['timer']}; cache: "
               f"{prov['cache']}")
    load, cpus = prov.get("load_average") or {}, prov["cpu"].get("usable_cpus") or 1
    busiest = max((v[0] for v in load.values() if v), default=0.0)
    if busiest > cpus:
        p.line(f"note: the machine was busy (load average up to {busiest:.1f} on {cpus} CPUs): "
               "timings, multi-threaded ones most, include waiting for other processes")
    op_rows = data.get("op", [])
    if op_rows:
        _print_op(p, op_rows)
    if data.get("model"):
        _print_model(p, data["model"])
    if data.get("complexity"):
        _print_complexity(p, data["complexity"])
    for s in data.get("skipped", []):
        p.line(f"not measured [{s['suite']}] {s['what']}: {s['reason']}")


def _print_op(p: _Printer, rows: list[dict]) -> None:
    vary = {k: len({r[k] for r in rows}) > 1 for k in ("dtype", "residual", "threads", "family")}
    order = _shape_order(rows)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sub = sorted((r for r in rows if r["mode"] == mode), key=lambda r: _case_key(r, order))
        headers = ["shape", "N", "layout"] + (["dtype"] if vary["dtype"] else []) + (
            ["res"] if vary["residual"] else []) + (["thr"] if vary["threads"] else []) + [
            "impl", "median", "IQR", "floor", "GB/s", "% copy", "GFLOP/s", "vs eager",
            "vs compile", ""]
        table, sections, prev = [], [], None
        for r in sub:
            key = _case_key(r, order)
            if prev is not None and key != prev:
                sections.append(len(table) - 1)
            prev = key
            table.append(
                [shape_label(r), str(r["n"]), r["layout"]]
                + ([r["dtype"]] if vary["dtype"] else [])
                + (["yes" if r["residual"] else "no"] if vary["residual"] else [])
                + ([str(r["threads"])] if vary["threads"] else [])
                + [r["impl"], fmt_time_us(r["median_us"]), fmt_time_us(r["iqr_us"]),
                   fmt_bytes(r["floor_bytes"]), f"{r['gbps']:.3g}", f"{r['pct_copy_bw']:.0f}%",
                   f"{r['gflops']:.3g}", _x(r["speedup_vs_eager"]), _x(r["speedup_vs_compile"]),
                   "" if r["agrees"] else "MISMATCH"])
        p.table(f"Op level, {mode}: median latency, bandwidth against the bytes floor, speedups",
                headers, table, sections,
                caption="floor: DESIGN.md section 3 (fwd 2|x|+|W|, +|x| with residual; bwd "
                        "3|x|+2|W|, 5|x|+2|W| with residual); GB/s = floor / median; % copy: of "
                        "the copy bandwidth measured in this run (>100% when x stays in cache)")
    _print_speedup_summary(p, rows)


def _print_speedup_summary(p: _Printer, rows: list[dict]) -> None:
    """One line per case: eager's median and each other implementation's speedup over it."""
    impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i != "eager"]
    by_case: dict[tuple, dict[str, dict]] = {}
    order = _shape_order(rows)
    for r in rows:
        by_case.setdefault(_case_key(r, order), {})[r["impl"]] = r
    if not impls or not any("eager" in v for v in by_case.values()):
        return
    headers = ["pass", "shape", "N", "layout", "dtype", "res", "thr", "eager"] + [
        f"{i} x" for i in impls]
    table = []
    for key in sorted(by_case):
        case = by_case[key]
        eager = case.get("eager")
        r0 = next(iter(case.values()))
        table.append([r0["mode"], r0["shape"], str(r0["n"]), r0["layout"], r0["dtype"],
                      "yes" if r0["residual"] else "no", str(r0["threads"] or "-"),
                      fmt_time_us(eager["median_us"]) if eager else "-"]
                     + [_x(case[i]["speedup_vs_eager"]) if i in case else "-" for i in impls])
    p.table("Speedup over the eager SE module (eager median / median)", headers, table)


def model_overhead(r: dict) -> tuple[float, float | None, float | None] | None:
    """(overhead %, interval low, high) of a model row; rows saved before the intervals
    (schema without overhead_pct) give the median ratio and no interval; None for the plain
    model."""
    if r["se"] == "none":
        return None
    if r.get("overhead_pct") is not None:
        return r["overhead_pct"], r["overhead_low_pct"], r["overhead_high_pct"]
    if r.get("ratio_vs_plain") is not None:
        return (r["ratio_vs_plain"] - 1) * 100, None, None
    return None


def fmt_overhead(r: dict) -> str:
    o = model_overhead(r)
    if o is None:
        return "-"
    pct, lo, hi = o
    if lo is None:
        return f"{pct:+.1f}% (no interval)"
    text = f"{pct:+.1f}% [{lo:+.1f}, {hi:+.1f}]"
    return text + " within noise" if lo <= 0 <= hi else text


def _print_model(p: _Printer, rows: list[dict]) -> None:
    headers = ["model", "SE", "mode", "N", "median", "IQR", "images/s",
               "SE overhead [95% CI]", "paper", "rounds"]
    table = []
    for r in rows:
        rounds = str(r.get("rounds", r["runs"]))
        if r.get("stop") == "budget" and r["se"] != "none":
            rounds += " (budget)"
        table.append([r["model"], r["se"], r["mode"], str(r["n"]),
                      fmt_time_us(r["median_ms"] * 1e3), fmt_time_us(r["iqr_ms"] * 1e3),
                      f"{r['images_per_s']:.3g}", fmt_overhead(r),
                      f"{(r['paper_ratio'] - 1) * 100:+.1f}%" if r["se"] != "none" else "",
                      rounds])
    r0 = rows[0]
    p.table(f"Model level: ResNet-50 vs SE-ResNet-50 ({r0['dtype']}, {r0['layout']}, "
            f"{r0['image_size']}x{r0['image_size']}"
            f"{', %s threads' % r0['threads'] if r0['threads'] else ''})", headers, table,
            caption="SE overhead: the geometric mean of the per-round step-time ratios over "
                    "ResNet-50 (models take turns each round), with a 95% interval (bootstrap "
                    "over rounds, at least as wide as Student's t); rounds run until its "
                    "half-width is <= 1 point or "
                    "the budget (--model-seconds) ends. 'within noise': the interval spans 0, "
                    "so this run shows no overhead either way. "
                    "paper: +1.8% CPU inference (batch 1), +10% training step (GPUs, batch 256)")


def _print_complexity(p: _Printer, rows: list[dict]) -> None:
    by_name = {r["model"]: r for r in rows}
    headers = ["model", "input", "params (M)", "GMACs", "paper params", "paper GMACs",
               "+params vs plain", "+MACs vs plain", "paper source"]
    table = []
    # each plain network followed by its SE version(s)
    for r in sorted(rows, key=lambda r: (r["baseline"] or r["model"], r["baseline"] is not None,
                                         r["model"])):
        base = by_name.get(r["baseline"]) if r["baseline"] else None
        table.append([r["model"], r["input_size"].split("x", 1)[-1], f"{r['params_m']:.2f}",
                      f"{r['gmacs']:.3f}",
                      _num(r["paper_params_m"], "g"), _num(r["paper_gmacs"], "g"),
                      f"{(r['params'] / base['params'] - 1) * 100:+.1f}%" if base else "",
                      f"{(r['macs'] / base['macs'] - 1) * 100:+.2f}%" if base else "",
                      r.get("paper_source") or ""])
    p.table("Complexity at each network's own input size (multiply-adds; the paper's GFLOPs "
            "are multiply-adds)", headers, table)

#!/usr/bin/env python3
"""Times each forward path of the CUDA backend on the SE-ResNet-50 stage shapes against eager
PyTorch, torch.compile, the Triton backend and the bytes floor of DESIGN.md section 3.

    python benchmarks/cuda_paths.py --out benchmarks/results/cuda_paths_h100.json
    python benchmarks/cuda_paths.py --batches 256 --layouts nhwc --sweep-cluster   # tuning

For every stage (C, HxW, Cr), batch N, layout and variant (plain SE, or the SE-ResNet tail
with residual) it measures forward and forward+backward of
  * the cuda backend with SE_KERNELS_CUDA_PATH = auto, persistent, cluster (sm_90);
  * optionally each cluster shape K,G (--sweep-cluster, SE_KERNELS_CUDA_CLUSTER);
  * eager PyTorch (mean, linear, relu, linear, sigmoid, mul [, add, relu]), torch.compile of
    it (--compile), and the triton backend when it is available;
and the floor: the fewest bytes (forward 2|x| + |W|, 3|x| + |W| with the residual; backward
3|x| + 2|W|, 5|x| + 2|W| with it) over the copy bandwidth measured in the same run.

Timing: CUDA events around `iters` calls that rotate over enough input sets to exceed L2 twice,
median of `reps` repetitions after a warm-up; "graph" columns replay the same calls captured in
a CUDA graph (no host overhead), where capture works. Writes JSON with provenance (device,
versions, commit, environment) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import se_kernels  # noqa: E402

STAGES = {  # name: (C, H = W, Cr)
    "conv2_x": (256, 56, 16),
    "conv3_x": (512, 28, 32),
    "conv4_x": (1024, 14, 64),
    "conv5_x": (2048, 7, 128),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    stage: str
    C: int
    HW: int
    Cr: int
    N: int
    layout: str
    dtype: str
    variant: str        # "plain" or "residual"
    impl: str           # cuda:auto, cuda:persistent, cuda:cluster, cuda:cluster=K,G, eager, ...
    fwd_us: float | None = None
    fwd_graph_us: float | None = None
    fwdbwd_us: float | None = None
    fwdbwd_graph_us: float | None = None
    floor_fwd_us: float = 0.0
    floor_fwdbwd_us: float = 0.0
    bytes_x: int = 0
    bytes_w: int = 0
    error: str | None = None
    extra: dict = field(default_factory=dict)


# ---- timing --------------------------------------------------------------------------------

def _median_event_time(run, iters: int, reps: int) -> float:
    """Median over reps of (time of `iters` calls of run(i)) / iters, in microseconds."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iters):
            run(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / iters)
    return statistics.median(times)


def _time(fn, sets, reps: int) -> tuple[float, float | None]:
    """(stream time, graph time) per call of fn(*sets[i % len(sets)]), in microseconds."""
    k = len(sets)
    for i in range(3):  # warm-up: module load, autotuning, allocator
        fn(*sets[i % k])
    torch.cuda.synchronize()
    one = _median_event_time(lambda i: fn(*sets[i % k]), 1, 3)
    iters = max(1, min(200, math.ceil(2000.0 / max(one, 1e-3))))  # ~2 ms per repetition
    iters = max(iters, k) if k <= 200 else iters
    stream = _median_event_time(lambda i: fn(*sets[i % k]), iters, reps)
    graph_time = None
    try:
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
            for i in range(2):
                fn(*sets[i % k])
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(*sets[i % k])
        g.replay()
        torch.cuda.synchronize()
        graph_time = _median_event_time(lambda i: g.replay(), 1, reps) / iters
        del g
    except Exception:  # noqa: BLE001 - capture is best effort
        torch.cuda.synchronize()
    return stream, graph_time


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t = _median_event_time(lambda i: dst.copy_(src), 5, 15)
    return 2 * nbytes / (t * 1e-6)


# ---- the implementations -------------------------------------------------------------------

def eager_se(x, w1, w2, b1, b2, residual):
    """The SE block as torchvision writes it (plus the SE-ResNet tail)."""
    s = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2))
    y = x * s[:, :, None, None]
    return y if residual is None else F.relu(y + residual)


def make_sets(n, c, hw, cr, dtype, layout, residual, count):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    sets = []
    for _ in range(count):
        x = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        r = (torch.randn(n, c, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
             if residual else None)
        w1 = (torch.randn(cr, c, device="cuda") / c ** 0.5).to(dtype)
        w2 = (torch.randn(c, cr, device="cuda") / cr ** 0.5).to(dtype)
        b1 = (torch.randn(cr, device="cuda") * 0.1).to(dtype)
        b2 = (torch.randn(c, device="cuda") * 0.1).to(dtype)
        dy = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        for t in (x, w1, w2, b1, b2, r):
            if t is not None:
                t.requires_grad_(True)
        sets.append((x, w1, w2, b1, b2, r, dy))
    return sets


def forward_fn(impl):
    if impl.startswith("cuda") or impl == "triton":
        backend = "triton" if impl == "triton" else "cuda"

        def f(x, w1, w2, b1, b2, r, dy):
            with torch.no_grad():
                return se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, backend=backend)
        return f
    se = eager_se if impl == "eager" else torch.compile(eager_se, dynamic=False)

    def g(x, w1, w2, b1, b2, r, dy):
        with torch.no_grad():
            return se(x, w1, w2, b1, b2, r)
    return g


def fwdbwd_fn(impl):
    if impl.startswith("cuda") or impl == "triton":
        backend = "triton" if impl == "triton" else "cuda"

        def call(x, w1, w2, b1, b2, r):
            return se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, backend=backend)
    else:
        call = eager_se if impl == "eager" else torch.compile(eager_se, dynamic=False)

    def f(x, w1, w2, b1, b2, r, dy):
        leaves = [t for t in (x, w1, w2, b1, b2, r) if t is not None]
        y = call(x, w1, w2, b1, b2, r)
        return torch.autograd.grad(y, leaves, dy)
    return f


class _Env:
    """Sets SE_KERNELS_* variables for one measurement."""

    def __init__(self, **env):
        self.env = {k: v for k, v in env.items() if v is not None}

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- provenance ----------------------------------------------------------------------------

def provenance(copy_bw: float) -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    p = torch.cuda.get_device_properties(0)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": run(["git", "rev-parse", "HEAD"]) or os.environ.get("SE_KERNELS_GIT_COMMIT", ""),
        "dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "host": platform.node(),
        "device": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "sms": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "driver": run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "backends": se_kernels.available_backends(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("SE_KERNELS_")},
        "copy_bandwidth_GBps": round(copy_bw / 1e9, 1),
        "script": "benchmarks/cuda_paths.py",
        "argv": sys.argv[1:],
    }


# ---- main ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stage names")
    ap.add_argument("--batches", default="1,256", help="comma-separated N")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--variants", default="plain,residual")
    ap.add_argument("--paths", default="auto,persistent,cluster")
    ap.add_argument("--no-baselines", action="store_true", help="skip eager/compile/triton")
    ap.add_argument("--compile", action="store_true",
                    help="also torch.compile of the eager module (compiles once per shape: slow)")
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--sweep-cluster", action="store_true",
                    help="also every cluster shape K,G (K in 1,2,4,8,16; G in 1,2,4,8)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--max-set-bytes", type=float, default=6e9,
                    help="memory for rotated input sets per configuration")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("cuda_paths.py: needs a CUDA device", file=sys.stderr)
        return 2
    if "cuda" not in se_kernels.available_backends():
        print(f"cuda_paths.py: the cuda backend is unavailable: "
              f"{se_kernels.ops._unavailable_reason('cuda', 'cuda')}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    esize = torch.tensor([], dtype=dtype).element_size()
    cap = torch.cuda.get_device_capability()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    bw = copy_bandwidth()
    prov = provenance(bw)
    print(f"# {prov['device']} sm_{cap[0]}{cap[1]}, copy bandwidth {bw / 1e9:.0f} GB/s, "
          f"torch {torch.__version__}, commit {prov['commit'][:10]}", flush=True)

    impls = [f"cuda:{p}" for p in args.paths.split(",") if p != "cluster" or cap >= (9, 0)]
    if not args.no_baselines:
        impls += ["eager"] + (["compile"] if args.compile else [])
        if "triton" in se_kernels.available_backends():
            impls.append("triton")
    sweep = [(k, g) for k in (1, 2, 4, 8, 16) for g in (1, 2, 4, 8)] if (
        args.sweep_cluster and cap >= (9, 0)) else []

    rows: list[Row] = []
    for stage in args.stages.split(","):
        c, hw, cr = STAGES[stage]
        for n in (int(b) for b in args.batches.split(",")):
            for layout in args.layouts.split(","):
                for variant in args.variants.split(","):
                    res = variant == "residual"
                    bx = n * c * hw * hw * esize
                    bw_ = 2 * c * cr * esize
                    per_set = bx * (4 if res else 3)  # x, dy, (residual), y
                    count = max(2, min(64, math.ceil(2 * l2 / max(bx, 1))))
                    count = max(1, min(count, int(args.max_set_bytes // max(per_set, 1))))
                    sets = make_sets(n, c, hw, cr, dtype, layout, res, count)
                    floor_f = ((3 if res else 2) * bx + bw_) / bw * 1e6
                    floor_b = ((5 if res else 3) * bx + 2 * bw_) / bw * 1e6
                    todo = [(i, {}) for i in impls] + [
                        (f"cuda:cluster={k},{g}", {"SE_KERNELS_CUDA_CLUSTER": f"{k},{g}"})
                        for k, g in sweep]
                    for impl, env in todo:
                        row = Row(stage, c, hw * hw, cr, n, layout, args.dtype, variant, impl,
                                  floor_fwd_us=floor_f, floor_fwdbwd_us=floor_f + floor_b,
                                  bytes_x=bx, bytes_w=bw_)
                        path = impl.split(":", 1)[1].split("=")[0] if impl.startswith("cuda") else None
                        try:
                            with _Env(SE_KERNELS_CUDA_PATH=path, **env):
                                row.fwd_us, row.fwd_graph_us = _time(forward_fn(impl), sets,
                                                                     args.reps)
                                if not args.no_backward:
                                    row.fwdbwd_us, row.fwdbwd_graph_us = _time(
                                        fwdbwd_fn(impl), sets, args.reps)
                        except Exception as e:  # noqa: BLE001 - record and go on
                            row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                            torch.cuda.synchronize()
                        rows.append(row)
                        _print_row(row)
                    del sets
                    torch.cuda.empty_cache()

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"provenance": prov, "rows": [asdict(r) for r in rows]},
                                  indent=1))
        print(f"# wrote {out}")
    _summary(rows)
    return 0


def _fmt(v):
    return "-" if v is None else f"{v:9.1f}"


def _print_row(r: Row) -> None:
    best = min([t for t in (r.fwd_us, r.fwd_graph_us) if t is not None], default=None)
    pct = f"{100 * r.floor_fwd_us / best:5.0f}%" if best else "    -"
    print(f"{r.stage:8} N={r.N:<4} {r.layout:4} {r.variant:8} {r.impl:22} fwd {_fmt(r.fwd_us)} "
          f"graph {_fmt(r.fwd_graph_us)} us ({pct} of floor {r.floor_fwd_us:7.1f})  "
          f"fwd+bwd {_fmt(r.fwdbwd_us)} graph {_fmt(r.fwdbwd_graph_us)}"
          + (f"  ERROR {r.error}" if r.error else ""), flush=True)


def _summary(rows) -> None:
    """Per configuration: the best cuda path against eager, and % of the floor."""
    print("\n# summary: best cuda forward vs eager (graph times where captured)")
    keys = sorted({(r.stage, r.N, r.layout, r.variant) for r in rows})
    for k in keys:
        group = [r for r in rows if (r.stage, r.N, r.layout, r.variant) == k and not r.error]

        def t(r):
            return r.fwd_graph_us if r.fwd_graph_us is not None else r.fwd_us
        cuda = [r for r in group if r.impl.startswith("cuda") and t(r) is not None]
        eager = [r for r in group if r.impl == "eager" and t(r) is not None]
        if not cuda:
            continue
        best = min(cuda, key=t)
        line = (f"{k[0]:8} N={k[1]:<4} {k[2]:4} {k[3]:8} best {best.impl:22} {t(best):9.1f} us "
                f"{100 * best.floor_fwd_us / t(best):5.0f}% of floor")
        if eager:
            line += f"  {t(eager[0]) / t(best):5.2f}x eager"
        print(line)


if __name__ == "__main__":
    sys.exit(main())

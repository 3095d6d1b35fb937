#!/usr/bin/env python3
"""The timed probe of the first GPU call (tools/gpu_check.sh first): how fast is each backend
against the bytes floor and against the predictions, in about two minutes?

    python tools/gpu_probe.py --json OUT/probe.json [--budget-s 140] [--headline-s 60]
    python tools/gpu_probe.py --dry-run            # the plan, floors and predictions; no GPU

Self-contained: it imports torch, triton (for its version) and se_kernels' public API
(``fused_se``, ``available_backends``, ``se_kernels.models``), nothing from benchmarks/.

Measured, in this order, each section under the remaining time budget (rows that the budget
does not reach are written as "not reached", never dropped):
1. the copy bandwidth: ``dst.copy_(src)`` of 1 GiB, counting bytes read plus written;
2. forward and backward of the SE block (biases, no residual: the configuration of the
   predictions), bfloat16, for the cuda and triton backends and the eager SE module as
   torchvision writes it (adaptive average pool, 1x1 convs, relu, sigmoid, multiply): the four SE-ResNet-50 stages x N in
   {1, 256} x NCHW/NHWC. CUDA events around each call, with a buffer of twice the L2 zeroed
   before it (no input is found in L2), median over the calls. Backward: the gradients of
   every input from one retained graph (``retain_graph=True``);
3. the headline: ResNet-50 against SE-ResNet-50 (reference SE, and fused with each backend),
   bfloat16, channels_last, cudnn.benchmark: inference at N = 256 and a training step (SGD
   with momentum) at N = 128, the models taking turns step by step (at most --headline-s);
4. ``torch.compile`` of the eager SE module on the same rows (last: each shape compiles
   forward and backward, seconds each);
5. the copy bandwidth again (drift).

Every op row holds its bytes (forward 2|x| + |W|, backward 3|x| + 2|W|: the floor of DESIGN.md
section 3, the bytes the predictions are made for), its floor (bytes over the copy bandwidth measured in this run),
the measured median and IQR, and the prediction of benchmarks/predictions/{cuda,triton}.json
keyed by (backend, stage, N, layout, direction): predicted time, its floor and bytes, and
measured / predicted. A missing file, a malformed file or a missing row is "no prediction".
The JSON is rewritten after every section, so a probe stopped by its time limit leaves what
it measured.
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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's se_kernels (built in place), as the tests use
    sys.path.insert(0, str(ROOT))

STAGES = {"conv2_x": (256, 56, 16), "conv3_x": (512, 28, 32), "conv4_x": (1024, 14, 64),
          "conv5_x": (2048, 7, 128)}  # C, H = W, Cr
BATCHES = (1, 256)
LAYOUTS = ("nchw", "nhwc")
DIRECTIONS = ("fwd", "bwd")
FUSED = ("cuda", "triton")
BASELINES = ("eager", "compile")
ELEM = 2  # bfloat16
H200_COPY_BPS = 4.3e12  # the model's copy bandwidth, used by --dry-run
PRED_KEYS = ("backend", "stage", "N", "layout", "direction")
SLACK = 0.20  # measured within 20 % of the prediction: "as predicted"


# ---- the plan, bytes and floors (pure, testable without a GPU) ---------------------------------

@dataclass
class OpRow:
    impl: str            # cuda, triton, eager, compile
    stage: str
    N: int
    layout: str          # nchw, nhwc
    direction: str       # fwd, bwd
    dtype: str = "bf16"
    variant: str = "plain"      # the SE block with biases, y = x * s (as the predictions)
    bytes: int = 0
    floor_us: float | None = None
    measured_us: float | None = None
    iqr_us: float | None = None
    runs: int = 0
    method: str = ""
    status: str = "planned"     # planned, ok, error, skipped, not reached
    error: str | None = None
    predicted_us: float | None = None
    pred_floor_us: float | None = None
    pred_bytes: int | None = None
    pred_path: str | None = None
    pred_in_flight_kb_per_sm: float | None = None
    pred_note: str | None = None
    vs_predicted: float | None = None   # measured / predicted
    vs_floor: float | None = None       # measured / floor
    verdict: str | None = None


def stage_bytes(stage: str, n: int, direction: str, elem: int = ELEM) -> int:
    """Fewest HBM bytes of the SE block (DESIGN.md section 3): forward reads x and writes y
    (2|x|) and reads W1, W2, b1, b2 once; backward reads dy and x and writes dx (3|x|), reads
    the weights and writes their gradients. The predictions of benchmarks/predictions/ are
    made for this configuration (no residual)."""
    c, hw, cr = STAGES[stage]
    x = n * c * hw * hw * elem
    w = (2 * c * cr + c + cr) * elem
    return 2 * x + w if direction == "fwd" else 3 * x + 2 * w


def plan(impls=FUSED + BASELINES) -> list[OpRow]:
    return [OpRow(impl, stage, n, layout, d, bytes=stage_bytes(stage, n, d))
            for impl in impls for stage in STAGES for n in BATCHES for layout in LAYOUTS
            for d in DIRECTIONS]


def set_floor(rows: list[OpRow], copy_bps: float) -> None:
    for r in rows:
        r.floor_us = r.bytes / copy_bps * 1e6


def load_predictions(folder: Path) -> tuple[dict[tuple, dict], list[str]]:
    """{(backend, stage, N, layout, direction): row} from folder/{cuda,triton}.json, and a
    list of problems (missing or malformed files and rows; never an exception)."""
    index: dict[tuple, dict] = {}
    problems: list[str] = []
    for backend in FUSED:
        path = folder / f"{backend}.json"
        if not path.exists():
            problems.append(f"{path.name}: missing (no predictions for {backend})")
            continue
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}: unreadable ({type(e).__name__}: {e})"[:300])
            continue
        if not isinstance(rows, list):
            problems.append(f"{path.name}: not a JSON list")
            continue
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or any(k not in r for k in PRED_KEYS) or not isinstance(
                    r.get("predicted_us"), (int, float)):
                problems.append(f"{path.name}[{i}]: lacks {', '.join(PRED_KEYS)} or a numeric "
                                f"predicted_us")
                continue
            if r.get("dtype", "bf16") != "bf16":
                continue
            key = (r["backend"], r["stage"], int(r["N"]), r["layout"], r["direction"])
            if key in index:
                problems.append(f"{path.name}[{i}]: a second row for {key} (the first is used)")
                continue
            index[key] = r
    return index, problems


def join(rows: list[OpRow], preds: dict[tuple, dict]) -> None:
    """Puts each row's prediction beside it, and measured / predicted where both exist."""
    for r in rows:
        p = preds.get((r.impl, r.stage, r.N, r.layout, r.direction))
        if p is None:
            r.pred_note = "no prediction" if r.impl in FUSED else None
            continue
        r.predicted_us = float(p["predicted_us"])
        r.pred_floor_us = _num(p.get("floor_us"))
        r.pred_bytes = int(p["bytes"]) if isinstance(p.get("bytes"), (int, float)) else None
        r.pred_path = p.get("path")
        r.pred_in_flight_kb_per_sm = _num(p.get("in_flight_kb_per_sm"))
        r.pred_note = p.get("note")
        if r.pred_bytes is not None and r.pred_bytes != r.bytes:
            r.pred_note = (f"[prediction counts {r.pred_bytes} bytes, the probe {r.bytes}] "
                           f"{r.pred_note or ''}").strip()
    grade(rows)


def grade(rows: list[OpRow]) -> None:
    for r in rows:
        if r.measured_us is None:
            continue
        if r.floor_us:
            r.vs_floor = r.measured_us / r.floor_us
        if r.predicted_us:
            r.vs_predicted = r.measured_us / r.predicted_us
            off = r.vs_predicted - 1
            r.verdict = ("as predicted" if abs(off) <= SLACK else
                         f"{off:+.0%} vs prediction: say why")


def _num(v):
    return float(v) if isinstance(v, (int, float)) else None


def summarize(times: list[float]) -> tuple[float, float]:
    """(median, interquartile range)."""
    xs = sorted(times)
    if len(xs) < 4:
        return statistics.median(xs), 0.0
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), q[2] - q[0]


class Budget:
    """A deadline, and each section's share of what is left."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        return self.end - self.clock()

    def over(self, reserve: float = 0.0) -> bool:
        return self.left() <= reserve


def run_rows(rows: list[OpRow], make: Callable[[OpRow], Callable[[], object]],
             timer: Callable[[Callable[[], object]], list[float]], budget: Budget,
             reserve: float = 0.0, on_row: Callable[[OpRow], None] | None = None) -> None:
    """Times every row: ``make(row)`` builds the call (inputs, warm-up), ``timer(fn)`` gives
    seconds per call. A row that raises is an error; the rest go on. Rows the budget does
    not reach are marked so."""
    for r in rows:
        if r.status not in ("planned",):
            continue
        if budget.over(reserve):
            r.status = "not reached"
            r.error = "the probe's time budget ran out first"
            continue
        try:
            fn = make(r)
            times = timer(fn)
            med, iqr = summarize(times)
            r.measured_us, r.iqr_us, r.runs, r.status = med * 1e6, iqr * 1e6, len(times), "ok"
        except Skip as e:
            r.status, r.error = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - recorded; the next row goes on
            r.status, r.error = "error", f"{type(e).__name__}: {e}"[:500]
        finally:
            fn = None  # noqa: F841 - frees the row's tensors before the next one
        if on_row:
            on_row(r)
    grade(rows)


def compile_order(r: OpRow):
    return (-r.N, r.layout != "nhwc", list(STAGES).index(r.stage), r.direction)


class Skip(Exception):
    pass


def headline_ratios(rows: list[dict]) -> None:
    """Adds to each model row its median over ResNet-50's in the same mode, and the SE
    overhead in percent."""
    plain = {r["mode"]: r["median_ms"] for r in rows
             if r["model"] == "resnet50" and r.get("median_ms")}
    for r in rows:
        base = plain.get(r["mode"])
        if base and r.get("median_ms"):
            r["ratio_vs_resnet50"] = r["median_ms"] / base
            r["se_overhead_pct"] = 100 * (r["median_ms"] / base - 1)


# ---- provenance ----------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float = 10) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> str:
    return (os.environ.get("SE_KERNELS_GIT_COMMIT") or _run(["git", "rev-parse", "HEAD"])
            or "unknown")


def provenance(argv: list[str]) -> dict:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import se_kernels

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + argv),
        "commit": commit(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "triton": triton_version,
        "se_kernels": getattr(se_kernels, "__version__", None),
        "backends": se_kernels.available_backends(),
        "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    l2_bytes=getattr(p, "L2_cache_size", None))
        info["clocks"] = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,clocks.mem,"
                               "temperature.gpu,power.draw", "--format=csv,noheader"])
    else:
        info["device"] = "cpu (dry run)"
    return info


# ---- the GPU side ---------------------------------------------------------------------------

class CudaTimer:
    """CUDA-event times of calls, a buffer of twice the L2 zeroed before each (not timed)."""

    def __init__(self, torch, target_s: float = 0.04, min_reps: int = 5, max_reps: int = 200):
        self.torch = torch
        p = torch.cuda.get_device_properties(0)
        l2 = getattr(p, "L2_cache_size", 0) or (64 << 20)
        self.flush = torch.empty(2 * l2, dtype=torch.int8, device="cuda")
        self.target_s, self.min_reps, self.max_reps = target_s, min_reps, max_reps

    def __call__(self, fn, flush: bool = True) -> list[float]:
        torch = self.torch
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        one = time.perf_counter() - t0
        reps = int(min(self.max_reps, max(self.min_reps, self.target_s / max(one, 1e-6))))
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
        for s, e in ev:
            if flush:
                self.flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e-3 for s, e in ev]


def copy_bandwidth(torch, timer: CudaTimer, nbytes: int = 1 << 30) -> float:
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = timer(lambda: dst.copy_(src), flush=False)
    return 2 * nbytes / statistics.median(times)


def eager_se(torch):
    """The SE block as torchvision's SqueezeExcitation writes it."""
    F = torch.nn.functional

    class EagerSE(torch.nn.Module):
        def __init__(self, c, cr):
            super().__init__()
            self.fc1 = torch.nn.Conv2d(c, cr, 1)
            self.fc2 = torch.nn.Conv2d(cr, c, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
            return x * s

    return EagerSE


class OpMaker:
    """Builds the timed call of one op row on the GPU (``device``: "cpu" in the tests)."""

    def __init__(self, torch, se_kernels, device="cuda"):
        self.torch, self.se, self.dev = torch, se_kernels, device
        self.EagerSE = eager_se(torch)
        self.backends = se_kernels.available_backends()
        self.compiled: dict = {}

    def __call__(self, r: OpRow):
        torch = self.torch
        if r.impl in FUSED and r.impl not in self.backends:
            raise Skip(f"the {r.impl} backend is not available: {self.backends}")
        c, hw, cr = STAGES[r.stage]
        fmt = torch.channels_last if r.layout == "nhwc" else torch.contiguous_format
        dt = torch.bfloat16
        dev = self.dev
        g = torch.Generator(device=dev).manual_seed(r.N * 7919 + c)
        x = torch.randn(r.N, c, hw, hw, device=dev, generator=g).to(dt).contiguous(
            memory_format=fmt)
        mod = self.EagerSE(c, cr).to(device=dev, dtype=dt)
        w1, w2 = mod.fc1.weight.detach(), mod.fc2.weight.detach()
        b1, b2 = mod.fc1.bias.detach(), mod.fc2.bias.detach()
        bwd = r.direction == "bwd"
        if r.impl in FUSED:
            leaves = [t.clone().requires_grad_(bwd) for t in (x, w1, w2, b1, b2)]

            def fwd():
                return self.se.fused_se(*leaves, backend=r.impl)
        else:
            leaves = [x.requires_grad_(bwd)] + list(mod.parameters())
            run = mod
            if r.impl == "compile":
                torch._dynamo.reset()  # one compiled graph per shape; no recompile limit
                run = torch.compile(mod)

            def fwd():
                return run(leaves[0])
        if not bwd:
            r.method = "forward, no grad"

            def call():
                with torch.no_grad():
                    return fwd()
            call()
            return call
        dy = torch.randn(x.shape, device=dev, generator=g).to(dt).contiguous(
            memory_format=fmt)
        y = fwd()
        try:
            for _ in range(2):
                torch.autograd.grad(y, leaves, dy, retain_graph=True)
            r.method = "backward of one retained graph, all input gradients"
            return lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True)
        except RuntimeError:
            r.method = "forward and backward (retain_graph refused)"
            return lambda: torch.autograd.grad(fwd(), leaves, dy)


def headline(torch, se_kernels, timer_budget: float, *, device="cuda", n_infer=256,
             n_train=128, image=224, backends=None, warmup=3, min_steps=3
             ) -> tuple[list[dict], list[str]]:
    """ResNet-50 vs SE-ResNet-50 (reference, fused per backend); rows and skipped notes.
    (device, sizes, backends and step counts are parameters for the CPU test.)"""
    if backends is None:
        backends = se_kernels.available_backends()
    F = torch.nn.functional
    models = se_kernels.models
    variants = [("resnet50", "none", lambda: models.resnet50()),
                ("se_resnet50", "reference", lambda: models.se_resnet50(backend="reference"))]
    for b in FUSED:
        if b in backends:
            variants.append(("se_resnet50", f"fused:{b}",
                             lambda b=b: models.se_resnet50(backend=b)))
    skipped = [f"se_resnet50 fused:{b}: backend not available" for b in FUSED
               if b not in backends]
    torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    t_end = time.monotonic() + timer_budget
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for mode, n, share in (("inference", n_infer, 0.4), ("train", n_train, 1.0)):
        built = []
        for name, se, ctor in variants:
            try:
                torch.manual_seed(0)
                m = ctor().to(device=device, dtype=torch.bfloat16,
                              memory_format=torch.channels_last)
                built.append((name, se, m))
            except Exception as e:  # noqa: BLE001
                skipped.append(f"{name} ({se}): {type(e).__name__}: {e}"[:300])
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(n, 3, image, image, device=device, generator=g).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 1000, (n,), device=device, generator=g)
        steps = []
        for name, se, m in built:
            if mode == "inference":
                m.eval()

                def step(m=m):
                    with torch.inference_mode():
                        return m(x)
            else:
                m.train()
                opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

                def step(m=m, opt=opt):
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(m(x), target)
                    loss.backward()
                    opt.step()
            try:
                for _ in range(warmup):  # cudnn.benchmark's search, allocator, momentum
                    step()
                sync()
                steps.append((name, se, step))
            except Exception as e:  # noqa: BLE001
                skipped.append(f"{name} ({se}) {mode}: {type(e).__name__}: {e}"[:300])
                sync()
        times: list[list[float]] = [[] for _ in steps]
        mode_end = time.monotonic() + max(0.0, (t_end - time.monotonic()) * share)
        while steps and (time.monotonic() < mode_end or len(times[0]) < min_steps):
            for i, (_, _, step) in enumerate(steps):  # round-robin: drift hits all alike
                if cuda:
                    s, e = (torch.cuda.Event(enable_timing=True),
                            torch.cuda.Event(enable_timing=True))
                    s.record()
                    step()
                    e.record()
                    e.synchronize()
                    times[i].append(s.elapsed_time(e))
                else:
                    t0 = time.perf_counter()
                    step()
                    times[i].append((time.perf_counter() - t0) * 1e3)
        for (name, se, _), ts in zip(steps, times):
            med, iqr = summarize(ts)
            rows.append(dict(model=name, se=se, mode=mode, N=n, dtype="bf16", image=image,
                             layout="channels_last", median_ms=med, iqr_ms=iqr, steps=len(ts),
                             images_per_s=n / med * 1e3))
        del built, steps, x
        if cuda:
            torch.cuda.empty_cache()
    headline_ratios(rows)
    return rows, skipped


# ---- output ---------------------------------------------------------------------------------

def write_json(path: Path | None, doc: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def table(rows: list[OpRow]) -> str:
    """One line per (stage, N, layout, direction): each impl's time, the floor, the
    predictions."""
    impls = sorted({r.impl for r in rows}, key=(FUSED + BASELINES).index)
    by = {(r.impl, r.stage, r.N, r.layout, r.direction): r for r in rows}
    head = (f"{'stage':<8}{'N':>4} {'lay':<5}{'dir':<4}{'floor':>8}"
            + "".join(f"{i:>9}" for i in impls)
            + "".join(f"{'pred:' + b:>12}" for b in FUSED)
            + "   (us, bf16, SE block, biases, no residual)")
    lines = [head]
    for stage in STAGES:
        for n in BATCHES:
            for lay in LAYOUTS:
                for d in DIRECTIONS:
                    rs = [by.get((i, stage, n, lay, d)) for i in impls]
                    floor = next((r.floor_us for r in rs if r and r.floor_us), None)
                    cells = "".join(f"{_fmt(r.measured_us) if r else '-':>9}" for r in rs)
                    pr = [by.get((b, stage, n, lay, d)) for b in FUSED]
                    preds = "".join(f"{_fmt(p.predicted_us) if p else '-':>12}" for p in pr)
                    lines.append(f"{stage:<8}{n:>4} {lay:<5}{d:<4}{_fmt(floor):>8}{cells}{preds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--budget-s", type=float, default=140.0,
                    help="stop starting new measurements after this many seconds")
    ap.add_argument("--headline-s", type=float, default=60.0,
                    help="time for the ResNet-50 / SE-ResNet-50 headline (warm-up included)")
    ap.add_argument("--predictions", type=Path, default=ROOT / "benchmarks" / "predictions")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile rows")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan with floors (at 4.3 TB/s) and predictions; no GPU")
    a = ap.parse_args(argv)

    t_start = time.monotonic()
    rows = plan(FUSED + BASELINES if not a.no_compile else FUSED + ("eager",))
    preds, problems = load_predictions(a.predictions)
    doc: dict = {"probe": "tools/gpu_probe.py", "schema": 1, "prediction_problems": problems}

    if a.dry_run:
        set_floor(rows, H200_COPY_BPS)
        join(rows, preds)
        print(f"{len(rows)} op rows (4 stages x N {BATCHES} x {LAYOUTS} x {DIRECTIONS} x "
              f"{sorted({r.impl for r in rows})}), headline: ResNet-50 vs SE-ResNet-50, "
              f"{a.headline_s:.0f} s; budget {a.budget_s:.0f} s")
        print(f"predictions: {sum(r.predicted_us is not None for r in rows)} of "
              f"{sum(r.impl in FUSED for r in rows)} fused rows "
              f"({'; '.join(problems[:4]) or 'all files read'})")
        print(table(rows))
        doc.update(provenance=provenance(["tools/gpu_probe.py"] + argv), dry_run=True,
                   copy_bandwidth_Bps=H200_COPY_BPS, ops=[asdict(r) for r in rows])
        write_json(a.json, doc)
        return 0

    import torch

    import se_kernels

    if not torch.cuda.is_available():
        print("gpu_probe: no CUDA device (use --dry-run on a machine without one)",
              file=sys.stderr)
        return 2
    budget = Budget(a.budget_s - (time.monotonic() - t_start))
    doc["provenance"] = provenance(["tools/gpu_probe.py"] + argv)
    timer = CudaTimer(torch)
    bw = copy_bandwidth(torch, timer)
    doc["copy_bandwidth_Bps"] = bw
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    set_floor(rows, bw)
    join(rows, preds)
    doc["ops"] = [asdict(r) for r in rows]
    write_json(a.json, doc)
    maker = OpMaker(torch, se_kernels)

    def progress(r: OpRow):  # and the JSON after every row: a probe cut short keeps it
        doc["ops"] = [asdict(r) for r in rows]
        write_json(a.json, doc)
        print(f"  {r.impl:<8}{r.stage:<8}N={r.N:<4}{r.layout:<5}{r.direction:<4}"
              f"{r.status:<12}{_fmt(r.measured_us):>9} us  floor {_fmt(r.floor_us)}"
              f"{'  ' + r.error[:120] if r.error else ''}", flush=True)

    def section(impls, reserve, order=None):
        todo = [r for r in rows if r.impl in impls]
        run_rows(sorted(todo, key=order) if order else todo, maker, timer, budget,
                 reserve=reserve, on_row=progress)
        torch.cuda.empty_cache()
        doc["ops"] = [asdict(r) for r in rows]
        write_json(a.json, doc)

    section(FUSED + ("eager",), reserve=a.headline_s * 0.5)
    t0 = time.monotonic()
    try:
        hl_budget = max(0.0, min(a.headline_s, budget.left() - 5))
        doc["headline"], doc["headline_skipped"] = headline(torch, se_kernels, hl_budget)
    except Exception as e:  # noqa: BLE001 - the op rows stand without it
        doc["headline"], doc["headline_skipped"] = [], [f"{type(e).__name__}: {e}"[:500]]
    doc["headline_seconds"] = round(time.monotonic() - t0, 1)
    write_json(a.json, doc)
    for r in doc["headline"]:
        print(f"  {r['model']:<12}{r['se']:<14}{r['mode']:<10}N={r['N']:<4}"
              f"{r['median_ms']:8.2f} ms  x{r.get('ratio_vs_resnet50', float('nan')):.3f}"
              f" of ResNet-50", flush=True)
    if not a.no_compile:
        # each shape compiles (seconds): N = 256 and NHWC first, the rows that matter most
        # a compile row takes ~5-15 s: none is started with less than 15 s left
        section(("compile",), reserve=15, order=compile_order)
    try:
        doc["copy_bandwidth_end_Bps"] = copy_bandwidth(torch, timer)
    except Exception as e:  # noqa: BLE001
        doc["copy_bandwidth_end_Bps"] = f"{type(e).__name__}: {e}"
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    write_json(a.json, doc)
    print(table(rows))
    ok = sum(r.status == "ok" for r in rows)
    print(f"gpu_probe: {ok} of {len(rows)} op rows timed, "
          f"{sum(r.status == 'error' for r in rows)} errors, "
          f"{sum(r.status == 'not reached' for r in rows)} not reached; headline "
          f"{len(doc['headline'])} rows; {doc['seconds']} s")
    return 0 if ok and not any(r.status == "error" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Op level: every se_kernels backend against the eager SE module and torch.compile of it.

For each case (shape, batch, dtype, layout, pass, residual, CPU threads) every implementation
runs on the same inputs and the same parameters:

    eager                 ``EagerSE``: the SE module as timm / torchvision write it
    compile               torch.compile(EagerSE, fullgraph=True, dynamic=False)
    compile-max-autotune  the same with mode="max-autotune-no-cudagraphs" (GPU default,
                          forward only): the kernels max-autotune picks, without CUDA graphs,
                          which would copy each fresh input into the graph's buffer (2|x| more
                          traffic than in a model) and apply to our ops just as well
    reference, cpu, ...   se_kernels.SqueezeExcitation(backend=...) on EagerSE's parameters

The implementations of a case are built and warmed up (compiled) first, then timed in turns
(``timing.time_interleaved``). Metrics: median latency and IQR; the bytes floor of DESIGN.md
section 3 and the effective bandwidth against it (floor bytes / median); that bandwidth in %
of the device's copy bandwidth measured in the same run; GFLOP/s (``flops`` below); speedup
over eager and over compile.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import se_kernels
from se_kernels import ops as se_ops
from se_kernels.bench import timing
from se_kernels.bench.config import DTYPES, LAYOUTS, BenchConfig
from se_kernels.bench.progress import Progress
from se_kernels.bench.shapes import Shape

ROUNDS = 3  # timing rounds per case: the implementations take turns (timing.time_interleaved)
_GATES = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


class EagerSE(nn.Module):
    """The SE block as timm's ``SEModule`` and torchvision's ``ops.SqueezeExcitation`` write
    it: mean over H, W (keepdim), 1x1 conv with bias, ReLU, 1x1 conv with bias, gate, multiply;
    with ``residual``, the SE-ResNet bottleneck tail ``out += shortcut; relu(out)`` (in place,
    as both libraries write it). Six kernels forward (eight with the residual)."""

    def __init__(self, channels: int, reduced: int, gate: str = "sigmoid") -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = _GATES[gate]()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        out = x * self.gate(s)
        if residual is None:
            return out
        out += residual
        return F.relu(out, inplace=True)


# ---- what the numbers are measured against --------------------------------------------------

def floor_bytes(mode: str, n: int, c: int, h: int, w: int, cr: int, residual: bool,
                elem: int) -> int:
    """DESIGN.md section 3. X = |x|, W = |W1| + |W2| + |b1| + |b2|.
    forward: read x once, write y: 2X + W (+X to read the residual).
    backward: read dy and x, write dx: 3X + 2W (read W, write dW); with the residual, also
    read the saved y (the relu mask) and write d(residual): 5X + 2W.
    fwd+bwd: the sum."""
    x = n * c * h * w * elem
    wb = (2 * c * cr + c + cr) * elem
    fwd = 2 * x + wb + (x if residual else 0)
    if mode == "fwd":
        return fwd
    return fwd + (5 * x if residual else 3 * x) + 2 * wb


def flops(mode: str, n: int, c: int, h: int, w: int, cr: int, residual: bool) -> int:
    """Arithmetic of the block, elementwise O(N*C) terms left out. forward: pool (1 add per
    element), two FCs (2 per weight per sample), scale (1 mul per element), residual (add and
    relu: 2 per element). backward: ds = sum(g*x) (2 per element), dx = g*s + dz/HW (2 per
    element), the FCs' three products (dW1, dW2, dh, dz: 8*C*Cr per sample), relu mask (1)."""
    e = n * c * h * w
    fwd = 2 * e + 4 * n * c * cr + (2 * e if residual else 0)
    if mode == "fwd":
        return fwd
    return fwd + 4 * e + 8 * n * c * cr + (e if residual else 0)


# ---- rows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpCase:
    shape: Shape
    n: int
    dtype: str
    layout: str
    mode: str          # "fwd" or "fwd+bwd"
    residual: bool
    threads: int | None

    def label(self) -> str:
        thr = f" t{self.threads}" if self.threads else ""
        res = " +res" if self.residual else ""
        return (f"{self.shape.name} N={self.n} {self.dtype} {self.layout} {self.mode}{res}{thr}")


@dataclass
class OpRow:
    """One implementation on one case. Times in microseconds, bandwidth in GB/s (1e9 B/s)."""
    suite: str
    family: str
    shape: str
    n: int
    c: int
    h: int
    w: int
    cr: int
    gate: str
    dtype: str
    layout: str
    mode: str
    residual: bool
    threads: int | None
    device: str
    cache: str
    impl: str
    kind: str                  # "baseline" or "backend"
    median_us: float
    iqr_us: float
    min_us: float
    runs: int
    floor_bytes: int
    gbps: float                # floor_bytes / median
    pct_copy_bw: float         # gbps / the copy bandwidth measured in this run, in %
    gflops: float
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    agrees: bool               # forward output matches eager's (1e-4 fp32/64, 2e-2 fp16/bf16)


# ---- implementations ------------------------------------------------------------------------

def runnable_backends(device: torch.device) -> tuple[list[str], list[str]]:
    """(backends to time on device, notes on the ones left out)."""
    names, notes = [], []
    for name in se_kernels.available_backends():
        why = se_ops._unavailable_reason(name, device.type)
        if why is None and name == "triton" and device.type == "cpu":
            why = "runs on CPU tensors only under the Triton interpreter: not timed"
        if why is None:
            names.append(name)
        else:
            notes.append(f"backend {name}: {why}")
    return names, notes


def default_impls(device: torch.device) -> list[str]:
    baselines = ["eager", "compile"] + (["compile-max-autotune"] if device.type == "cuda" else [])
    return baselines + runnable_backends(device)[0]


def _forward_of(impl: str, eager: EagerSE, gate: str) -> Callable:
    if impl == "eager":
        return eager
    if impl in ("compile", "compile-max-autotune"):
        mode = None if impl == "compile" else "max-autotune-no-cudagraphs"
        return torch.compile(eager, fullgraph=True, dynamic=False, mode=mode)
    return se_kernels.SqueezeExcitation.from_parameters(
        eager.fc1.weight, eager.fc2.weight, eager.fc1.bias, eager.fc2.bias, gate=gate,
        backend=impl)


def _input_sets(case: OpCase, device: torch.device, count: int, grad: bool, gen: torch.Generator):
    dtype, fmt = DTYPES[case.dtype], LAYOUTS[case.layout]
    s = case.shape
    shape = (case.n, s.c, s.h, s.w)

    def make():
        t = torch.randn(shape, generator=gen, device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt).requires_grad_(grad)

    sets = []
    for _ in range(count):
        x = make()
        r = make() if case.residual else None
        dy = make().detach() if grad else None
        sets.append((x, r, dy))
    return sets


def _make_fn(forward: Callable, sets, params: list[torch.Tensor], mode: str) -> Callable:
    order = itertools.cycle(range(len(sets)))
    if mode == "fwd":
        if len(sets) == 1:
            x, r, _ = sets[0]
            return lambda: forward(x, r)

        def fwd():
            x, r, _ = sets[next(order)]
            return forward(x, r)
        return fwd
    leaves = [[t for t in (x, r) if t is not None] + params for x, r, _ in sets]

    def fwd_bwd():
        i = next(order)
        x, r, dy = sets[i]
        return torch.autograd.grad(forward(x, r), leaves[i], dy)
    return fwd_bwd


def _agrees(y: torch.Tensor, ref: torch.Tensor, dtype: str) -> bool:
    tol = 2e-2 if dtype in ("float16", "bfloat16") else 1e-4
    y, ref = y.detach().float(), ref.detach().float()
    scale = ref.abs().max().item() or 1.0
    return bool(torch.isfinite(y).all()) and (y - ref).abs().max().item() <= tol * scale


def cases(cfg: BenchConfig) -> list[OpCase]:
    """Every case, pass-major (all forward cases first), then residual, dtype, layout, shape,
    batch: if the time budget runs out, what is left out is the end of that order."""
    out = []
    for mode, res, dtype, layout in itertools.product(cfg.modes, cfg.residual, cfg.dtypes,
                                                      cfg.layouts):
        for shape in cfg.shapes:
            for n in ((shape.n,) if shape.n else cfg.batches):
                out.append(OpCase(shape, n, dtype, layout, mode, res, None))
    return out


def _rotation_count(case: OpCase, device: torch.device, cache: str) -> int:
    """How many input sets to cycle through: 1, or on the CPU with cache="cold" enough to
    sweep min(2 x LLC, 1 GiB) (at most 256 sets). On the GPU L2 is flushed instead."""
    if cache != "cold" or device.type != "cpu":
        return 1
    s = case.shape
    per_set = case.n * s.c * s.h * s.w * torch.tensor([], dtype=DTYPES[case.dtype]).element_size()
    per_set *= 1 + case.residual + (case.mode != "fwd")
    target = min(2 * (timing.llc_bytes() or (32 << 20)), 1 << 30)
    return max(1, min(256, math.ceil(target / per_set)))


def run(cfg: BenchConfig, device: torch.device, copy_bw: dict, *, progress: bool = True):
    """Runs the op suite; returns (rows as dicts, skipped entries)."""
    impls = list(cfg.impls) if cfg.impls is not None else default_impls(device)
    backends, notes = runnable_backends(device)
    skipped = [{"suite": "op", "what": n.split(":")[0], "reason": n.split(": ", 1)[1]}
               for n in notes]
    for impl in list(impls):
        if impl not in ("eager", "compile", "compile-max-autotune") and impl not in backends:
            why = (se_ops._unavailable_reason(impl, device.type)
                   if impl in ("reference", "cpu", "triton", "cuda") else "unknown implementation")
            skipped.append({"suite": "op", "what": impl, "reason": why or "not runnable here"})
            impls.remove(impl)
    thread_counts = cfg.threads if device.type == "cpu" else (None,)
    all_cases = [OpCase(c.shape, c.n, c.dtype, c.layout, c.mode, c.residual, t)
                 for t in thread_counts for c in cases(cfg)]
    rows: list[dict] = []
    gen = torch.Generator(device=device).manual_seed(0)
    prev_threads = torch.get_num_threads()
    bar = Progress(len(all_cases) * (len(impls) + ROUNDS), "op", enabled=progress)
    t0 = time.perf_counter()
    try:
        for i, case in enumerate(all_cases):
            if cfg.op_budget and time.perf_counter() - t0 > cfg.op_budget:
                left = all_cases[i:]
                skipped.append({"suite": "op", "what": f"{len(left)} of {len(all_cases)} cases",
                                "reason": f"the op suite's time budget (--op-budget "
                                          f"{cfg.op_budget:g} s) ran out; first left out: "
                                          f"{left[0].label()}"})
                break
            if case.threads:
                torch.set_num_threads(case.threads)
            case_impls = impls
            if cfg.impls is None and case.mode != "fwd":
                # max-autotune's compile of the backward graph costs minutes: by default it is
                # a forward baseline (ask for it with --impls to time it on fwd+bwd too)
                case_impls = [i for i in impls if i != "compile-max-autotune"]
            rows += _run_case(case, case_impls, cfg, device, copy_bw, gen, bar, skipped)
    finally:
        bar.close()
        torch.set_num_threads(prev_threads)
    return rows, skipped


def _run_case(case: OpCase, impls: list[str], cfg: BenchConfig, device: torch.device,
              copy_bw: dict, gen: torch.Generator, bar: Progress, skipped: list) -> list[dict]:
    s = case.shape
    grad = case.mode != "fwd"
    torch.manual_seed(0)
    eager = EagerSE(s.c, s.cr, s.gate).to(device=device, dtype=DTYPES[case.dtype])
    eager.requires_grad_(grad)
    params = list(eager.parameters())
    sets = _input_sets(case, device, _rotation_count(case, device, cfg.cache), grad, gen)
    with torch.no_grad():
        x0, r0, _ = sets[0]
        y_ref = eager(x0.detach(), None if r0 is None else r0.detach().clone())
    elem = x0.element_size()
    floor = floor_bytes(case.mode, case.n, s.c, s.h, s.w, s.cr, case.residual, elem)
    work = flops(case.mode, case.n, s.c, s.h, s.w, s.cr, case.residual)
    bw = copy_bw.get(case.threads if device.type == "cpu" else "device")
    cache = cfg.cache if device.type == "cpu" else ("flushed" if cfg.cache == "cold" else "hot")
    fns: dict[str, Callable] = {}
    agrees: dict[str, bool] = {}
    torch._dynamo.reset()  # fresh static compiles for this case (and this thread count)
    for impl in impls:
        try:
            forward = _forward_of(impl, eager, s.gate)
            fn = _make_fn(forward, sets, params, case.mode)
            timing.warm_up(fn, calls=3)  # compiles, if it is a compiled impl
            y = forward(x0, None if r0 is None else r0.clone())
            agrees[impl] = _agrees(y, y_ref, case.dtype)
            fns[impl] = fn
            del y
        except Exception as e:  # a failing implementation is reported, the run goes on
            skipped.append({"suite": "op", "what": f"{impl} {case.label()}",
                            "reason": f"{type(e).__name__}: {e}"[:400]})
        bar.step(f"{case.label()} {impl} (warm-up)")
    timings, errors = timing.time_interleaved(
        fns, device=device, threads=case.threads, min_run_time=cfg.min_run_time,
        flush=cfg.cache == "cold", rounds=ROUNDS,
        on_round=lambda r: bar.step(f"{case.label()} round {r + 1}/{ROUNDS}"))
    for impl, why in errors.items():
        skipped.append({"suite": "op", "what": f"{impl} {case.label()}", "reason": why})
    measured = {impl: (t, agrees[impl]) for impl, t in timings.items()}
    rows = []
    for impl, (t, ok) in measured.items():
        eager_t = measured.get("eager", (None,))[0]
        comp_t = measured.get("compile", (None,))[0]
        gbps = floor / t.median / 1e9
        rows.append(OpRow(
            suite="op", family=s.family, shape=s.name, n=case.n, c=s.c, h=s.h, w=s.w, cr=s.cr,
            gate=s.gate, dtype=case.dtype, layout=case.layout, mode=case.mode,
            residual=case.residual, threads=case.threads, device=device.type, cache=cache,
            impl=impl, kind="baseline" if impl in ("eager", "compile", "compile-max-autotune")
            else "backend",
            median_us=t.median * 1e6, iqr_us=t.iqr * 1e6, min_us=t.min * 1e6, runs=t.runs,
            floor_bytes=floor, gbps=gbps, pct_copy_bw=100 * gbps * 1e9 / bw,
            gflops=work / t.median / 1e9,
            speedup_vs_eager=eager_t.median / t.median if eager_t else None,
            speedup_vs_compile=comp_t.median / t.median if comp_t else None,
            agrees=ok).__dict__)
    return rows

"""Model level: ResNet-50 vs SE-ResNet-50 with the reference SE and with the fused SE.

Inference (eval mode, ``torch.inference_mode``) and a training step (forward, cross-entropy,
backward, SGD with momentum). Steps are timed with ``time.perf_counter`` on the CPU and CUDA
events on the GPU, in rounds: each round times one step of every model, in an order that
rotates from round to round, so that a machine whose load drifts (ours are shared) shifts all
of them alike: the SE overhead is a difference of a few % and a sequential A-then-B run would
show the drift instead.

Each SE model's overhead over the plain one is estimated from the rounds as pairs: the mean of
the per-round log ratios (a geometric mean of the ratios), with a 95 % percentile bootstrap
interval over rounds. Rounds go on until every interval's half-width is at most
``TARGET_HALF_WIDTH`` points (after at least ``MIN_ROUNDS`` rounds) or the time budget ends;
a result whose interval spans 0 is "within noise" and is reported as such, not as a finding.
On the GPU, cudnn.benchmark is on (as convnets are run there). The paper's figures: +1.8 % CPU
inference (164 -> 167 ms, batch 1) and +10 % per training step (190 -> 209 ms, batch 256 on
8 GPUs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from se_kernels import ops as se_ops
from se_kernels.bench import timing
from se_kernels.bench.config import DTYPES, LAYOUTS, BenchConfig
from se_kernels.bench.progress import Progress

PAPER_RATIO = {"inference": 167 / 164, "train": 209 / 190}
PAPER_SOURCE = {"inference": "CPU, batch 1: 164 -> 167 ms",
                "train": "8 GPUs, batch 256: 190 -> 209 ms"}
TARGET_HALF_WIDTH = 1.0   # percentage points: rounds stop once every interval is this narrow
MIN_ROUNDS = 5            # rounds before an interval may count as narrow enough
FLOOR_ROUNDS = 3          # rounds timed even past the budget
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class ModelRow:
    """One model in one mode. Times in milliseconds per step."""
    suite: str
    model: str
    se: str                 # "none", "reference" or "fused:<backend>"
    mode: str               # "inference" or "train"
    n: int
    image_size: int
    dtype: str
    layout: str
    threads: int | None
    device: str
    median_ms: float
    iqr_ms: float
    min_ms: float
    runs: int
    images_per_s: float
    ratio_vs_plain: float | None    # median / ResNet-50's median in the same mode
    paper_ratio: float
    # SE overhead over the plain model from the paired rounds (None for the plain model):
    overhead_pct: float | None      # 100 * (geometric mean of the per-round ratios - 1)
    overhead_low_pct: float | None  # 95 % bootstrap interval over rounds
    overhead_high_pct: float | None
    within_noise: bool | None       # the interval spans 0: no overhead shown either way
    rounds: int                     # rounds timed (each: one step of every model)
    stop: str                       # "converged" (half-width <= 1 point) or "budget"


@dataclass(frozen=True)
class Overhead:
    """The overhead of one model over another, in percent, from paired rounds."""
    pct: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high


# Student's t, 0.975 quantile, by degrees of freedom (1..30); beyond, 1.96 + 2.4 / dof
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _t975(dof: int) -> float:
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof


def overhead(base: Sequence[float], other: Sequence[float], *,
             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Overhead:
    """``other``'s overhead over ``base`` (per-round step times, paired by index): the mean
    of the per-round log ratios, with a 95 % interval: a percentile bootstrap that resamples
    rounds (pairs stay together, so a load that shifts both members of a pair cancels),
    widened to Student's t interval of the mean where that is wider (with a handful of rounds
    the bootstrap alone is too narrow: three pairs that happen to agree would give a point)."""
    if len(base) != len(other) or not base:
        raise ValueError(f"need equally many rounds, at least 1 (got {len(base)}, {len(other)})")
    d = np.log(np.asarray(other, dtype=np.float64) / np.asarray(base, dtype=np.float64))
    n, mean = len(d), float(d.mean())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = (float(v) for v in np.quantile(means, [alpha, 1 - alpha]))
    if n > 1:
        half = _t975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
        lo, hi = min(lo, mean - half), max(hi, mean + half)
    else:
        lo, hi = -math.inf, math.inf  # one round says nothing about the noise
    pct = lambda v: 100 * math.expm1(v)  # noqa: E731
    return Overhead(pct(mean), pct(lo), pct(hi))


def interleaved_rounds(count: int, timed_step: Callable[[int], float], *, budget_s: float,
                       pairs: Sequence[tuple[int, int]],
                       clock: Callable[[], float] = time.perf_counter,
                       target_half_width: float = TARGET_HALF_WIDTH,
                       min_rounds: int = MIN_ROUNDS, floor_rounds: int = FLOOR_ROUNDS,
                       max_rounds: int = 100_000) -> tuple[list[list[float]], str]:
    """Times ``count`` models in rounds: each round calls ``timed_step(i)`` (one timed step
    of model i, in seconds) for every i, starting at a model that rotates from round to round.
    Stops when every (base, other) pair of ``pairs`` has an overhead interval no wider than
    ``target_half_width`` points (after ``min_rounds``), or when ``budget_s`` seconds of
    ``clock`` have passed (after ``floor_rounds``). Returns (per-model times, "converged" or
    "budget")."""
    times: list[list[float]] = [[] for _ in range(count)]
    t_end = clock() + budget_s
    for r in range(max_rounds):
        for k in range(count):
            i = (r + k) % count
            times[i].append(timed_step(i))
        rounds = r + 1
        if rounds >= min_rounds and all(
                overhead(times[b], times[o]).half_width <= target_half_width for b, o in pairs):
            return times, "converged"
        if rounds >= floor_rounds and clock() >= t_end:
            return times, "budget"
    return times, "budget"


def _models_api():
    """(se_kernels.models, None) or (None, why it is not usable)."""
    try:
        from se_kernels import models
    except ImportError as e:
        return None, f"se_kernels.models is not available ({e})"
    missing = [f for f in ("resnet50", "se_resnet50") if not hasattr(models, f)]
    if missing:
        return None, f"se_kernels.models lacks {', '.join(missing)}"
    return models, None


def variants(models, device: torch.device) -> tuple[list[tuple[str, str, Callable]], list[dict]]:
    """[(model, se, constructor)], skipped entries."""
    out = [("resnet50", "none", lambda: models.resnet50()),
           ("se_resnet50", "reference", lambda: models.se_resnet50(backend="reference"))]
    skipped = []
    fused = se_ops._select_backend("auto", device.type)
    if fused == "reference":
        skipped.append({"suite": "model", "what": "se_resnet50 fused",
                        "reason": "no fused backend runs here (auto picks reference)"})
    else:
        out.append(("se_resnet50", f"fused:{fused}",
                    lambda: models.se_resnet50(backend=fused)))
    return out, skipped


def _step_fn(model, mode: str, x: torch.Tensor, target: torch.Tensor) -> Callable:
    if mode == "inference":
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)
        return infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss
    return train_step


def _timed_call(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cfg: BenchConfig, device: torch.device, *, progress: bool = True):
    """Runs the model suite; returns (rows as dicts, skipped entries)."""
    models, why = _models_api()
    if models is None:
        return [], [{"suite": "model", "what": "model suite", "reason": why}]
    todo, skipped = variants(models, device)
    dtype, fmt = DTYPES[cfg.model_dtype], LAYOUTS[cfg.model_layout]
    prev_threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.model_threads:
        torch.set_num_threads(cfg.model_threads)
    prev_cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as convnets are trained and served on GPUs
    rows: list[dict] = []
    modes = [(m, n) for m, n in (("inference", cfg.model_batch_infer),
                                 ("train", cfg.model_batch_train)) if n > 0]
    bar = Progress(len(todo) + len(modes) * len(todo), "model", enabled=progress)
    try:
        built = []  # each model is built once and serves both modes
        for name, se, ctor in todo:
            try:
                torch.manual_seed(0)
                built.append((name, se, ctor().to(device=device, dtype=dtype, memory_format=fmt)))
            except Exception as e:
                skipped.append({"suite": "model", "what": f"{name} ({se})",
                                "reason": f"{type(e).__name__}: {e}"[:400]})
            bar.step(f"build {name} ({se})")
        for mode, n in modes:
            gen = torch.Generator().manual_seed(0)
            s = cfg.model_image_size
            x = torch.randn(n, 3, s, s, generator=gen).to(device=device, dtype=dtype)
            x = x.contiguous(memory_format=fmt)
            target = torch.randint(0, 1000, (n,), generator=gen).to(device)
            fns, names = [], []
            for name, se, model in built:
                try:
                    fn = _step_fn(model, mode, x, target)
                    # CPU training steps take seconds: one warm-up step (allocations, momentum)
                    timing.warm_up(fn, calls=3 if device.type == "cuda" else
                                   2 if mode == "inference" else 1)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    fns.append(fn)
                    names.append((name, se))
                except Exception as e:
                    skipped.append({"suite": "model", "what": f"{name} ({se}) {mode}",
                                    "reason": f"{type(e).__name__}: {e}"[:400]})
                bar.step(f"{mode} {name} ({se}) warm-up")
            if not fns:
                continue
            base = next((i for i, (_, se) in enumerate(names) if se == "none"), None)
            pairs = [(base, i) for i in range(len(fns)) if base is not None and i != base]
            times, stop = interleaved_rounds(
                len(fns), lambda i: _timed_call(fns[i], device),
                budget_s=cfg.model_seconds * len(fns), pairs=pairs)
            plain = None
            for i, ((name, se), ts) in enumerate(zip(names, times)):
                t = timing.summarize(ts)
                if se == "none":
                    plain = t.median
                o = overhead(times[base], ts) if base is not None and i != base else None
                rows.append(ModelRow(
                    suite="model", model=name, se=se, mode=mode, n=n, image_size=s,
                    dtype=cfg.model_dtype, layout=cfg.model_layout,
                    threads=torch.get_num_threads() if device.type == "cpu" else None,
                    device=device.type, median_ms=t.median * 1e3, iqr_ms=t.iqr * 1e3,
                    min_ms=t.min * 1e3, runs=t.runs, images_per_s=n / t.median,
                    ratio_vs_plain=t.median / plain if plain else None,
                    paper_ratio=PAPER_RATIO[mode],
                    overhead_pct=o.pct if o else None, overhead_low_pct=o.low if o else None,
                    overhead_high_pct=o.high if o else None,
                    within_noise=o.within_noise if o else None,
                    rounds=len(ts), stop=stop).__dict__)
            del fns
        del built
    finally:
        bar.close()
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_cudnn
    return rows, skipped

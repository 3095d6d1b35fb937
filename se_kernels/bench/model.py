"""Model level: ResNet-50 vs SE-ResNet-50 with the reference SE and with the fused SE.

Inference (eval mode, ``torch.inference_mode``) and a training step (forward, cross-entropy,
backward, SGD with momentum). Per-step latency is the median over steps, timed with
``time.perf_counter`` on the CPU and CUDA events on the GPU, the models taking turns step by
step (round-robin), so that a machine whose load drifts (ours are shared) shifts all of them
alike: the SE overhead is a difference of a few % and a sequential A-then-B run would show the
drift instead. On the GPU, cudnn.benchmark is on (as convnets are run there). The paper's
figures: +1.8 % CPU inference (164 -> 167 ms, batch 1) and +10 % per training step
(190 -> 209 ms, batch 256 on 8 GPUs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from se_kernels import ops as se_ops
from se_kernels.bench import timing
from se_kernels.bench.config import DTYPES, LAYOUTS, BenchConfig
from se_kernels.bench.progress import Progress

PAPER_RATIO = {"inference": 167 / 164, "train": 209 / 190}
PAPER_SOURCE = {"inference": "CPU, batch 1: 164 -> 167 ms",
                "train": "8 GPUs, batch 256: 190 -> 209 ms"}


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
            times: list[list[float]] = [[] for _ in fns]
            t_end = time.perf_counter() + cfg.model_seconds * len(fns)
            while fns and (time.perf_counter() < t_end or len(times[0]) < 3):
                for i, fn in enumerate(fns):  # round-robin: one step of each model in turn
                    times[i].append(_timed_call(fn, device))
            plain = None
            for (name, se), ts in zip(names, times):
                t = timing.summarize(ts)
                if se == "none":
                    plain = t.median
                rows.append(ModelRow(
                    suite="model", model=name, se=se, mode=mode, n=n, image_size=s,
                    dtype=cfg.model_dtype, layout=cfg.model_layout,
                    threads=torch.get_num_threads() if device.type == "cpu" else None,
                    device=device.type, median_ms=t.median * 1e3, iqr_ms=t.iqr * 1e3,
                    min_ms=t.min * 1e3, runs=t.runs, images_per_s=n / t.median,
                    ratio_vs_plain=t.median / plain if plain else None,
                    paper_ratio=PAPER_RATIO[mode]).__dict__)
            del fns
        del built
    finally:
        bar.close()
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_cudnn
    return rows, skipped

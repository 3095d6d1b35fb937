"""``BenchConfig``: one benchmark run's settings, with the defaults resolved for the device."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from se_kernels.bench.shapes import Shape

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64, "fp64": torch.float64}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
MODES = ("fwd", "fwd+bwd")
SUITES = ("op", "model", "complexity")
BASELINES = ("eager", "compile", "compile-max-autotune")


def canonical_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return str(DTYPES[name]).removeprefix("torch.")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run measures. ``resolve`` fills the per-device defaults."""
    device: str                                   # "cpu" or "cuda"
    suites: tuple[str, ...]
    # op level
    shapes: tuple[Shape, ...]
    batches: tuple[int, ...]                      # for preset shapes; custom shapes carry N
    dtypes: tuple[str, ...]
    layouts: tuple[str, ...]
    modes: tuple[str, ...]
    residual: tuple[bool, ...]
    threads: tuple[int, ...]                      # CPU thread counts; () on GPU
    impls: tuple[str, ...] | None                 # None: every baseline and runnable backend
    cache: str                                    # "hot" or "cold" (GPU: L2 flushed per call)
    min_run_time: float                           # CPU: seconds per measurement
    op_budget: float | None                       # seconds; the op cases left are skipped
    # model level
    model_batch_infer: int
    model_batch_train: int
    model_image_size: int
    model_dtype: str
    model_layout: str
    model_threads: int | None
    model_seconds: float                          # per model and mode, after warm-up
    # complexity
    complexity_models: tuple[str, ...] | None     # None: every model in list_models()
    output: str = "out/bench"
    plot: bool = True
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        d = asdict(self)
        d["shapes"] = [asdict(s) for s in self.shapes]
        return d

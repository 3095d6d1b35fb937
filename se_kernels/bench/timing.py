"""Timers and the device's copy bandwidth.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of calls sized so the timer's
own cost is < 0.1 %; median and IQR over the blocks), after explicit warm-up calls.

GPU: CUDA events around each call, median and IQR over the calls, warm-up excluded. Before
each timed call a buffer twice the size of L2 is zeroed (as ``triton.testing.do_bench`` does),
so no input is found in L2 from the previous call, and the memset ahead of the call lets the
CPU enqueue the call before the GPU reaches it: the time is the GPU's, not Python's launch
overhead (which a real model hides the same way).

``time_interleaved`` times several implementations in rounds, each taking its turn in every
round, so that a load that drifts (our machines are shared) does not favour one of them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call."""
    median: float
    iqr: float       # interquartile range of the per-block (CPU) or per-call (GPU) times
    min: float
    runs: int        # calls timed (warm-up excluded)


def _quantile(sorted_xs: list[float], q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(times: list[float], runs: int | None = None) -> Timing:
    """Timing of a list of per-call times (seconds)."""
    xs = sorted(times)
    return Timing(median=statistics.median(xs), iqr=_quantile(xs, 0.75) - _quantile(xs, 0.25),
                  min=xs[0], runs=runs if runs is not None else len(xs))


def warm_up(fn: Callable[[], object], calls: int = 3, seconds: float = 0.0) -> float:
    """Calls fn at least ``calls`` times and until ``seconds`` have passed; returns the time
    of the last call (a first estimate)."""
    t_end = time.perf_counter() + seconds
    last, i = 0.0, 0
    while i < calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        last = time.perf_counter() - t0
        i += 1
    return last


def cpu_times(fn: Callable[[], object], *, threads: int, min_run_time: float
              ) -> tuple[list[float], int]:
    """torch.utils.benchmark timing of fn on ``threads`` threads (fn already warmed up):
    (seconds per call of each block, calls timed)."""
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
    return list(m.times), len(m.times) * m.number_per_run


def time_cpu(fn: Callable[[], object], *, threads: int, min_run_time: float) -> Timing:
    times, runs = cpu_times(fn, threads=threads, min_run_time=min_run_time)
    return summarize(times, runs)


def l2_flush_bytes(device: torch.device) -> int:
    """Twice the GPU's L2 (256 MiB if torch does not say)."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
    return 2 * l2 if l2 > 0 else 256 << 20


def cuda_times(fn: Callable[[], object], *, device: torch.device, flush: bool = True,
               target_seconds: float = 0.1, min_reps: int = 10, max_reps: int = 1000
               ) -> list[float]:
    """CUDA-event times (seconds) of calls of fn on the current stream (fn warmed up)."""
    flush_buf = torch.empty(l2_flush_bytes(device) if flush else 0, dtype=torch.int8,
                            device=device)
    torch.cuda.synchronize(device)
    # estimate one call (with its flush) to size the repetitions
    t0 = time.perf_counter()
    for _ in range(3):
        if flush:
            flush_buf.zero_()
        fn()
    torch.cuda.synchronize(device)
    est = (time.perf_counter() - t0) / 3
    reps = int(min(max_reps, max(min_reps, target_seconds / max(est, 1e-7))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush:
            flush_buf.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


def time_cuda(fn: Callable[[], object], **kwargs) -> Timing:
    return summarize(cuda_times(fn, **kwargs))


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: torch.device,
                     threads: int | None, min_run_time: float, flush: bool, rounds: int = 3,
                     on_round: Callable[[int], None] | None = None
                     ) -> tuple[dict[str, Timing], dict[str, str]]:
    """Times every fn in ``rounds`` rounds, each round timing each fn in turn for
    ``min_run_time / rounds`` seconds (CPU) or ~0.1 s / rounds (GPU): a load that drifts
    (a shared machine) shifts every fn alike instead of the one that happened to run then.
    Returns ({name: Timing over all rounds}, {name: error} for fns that raised)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    runs: dict[str, int] = {k: 0 for k in fns}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                if device.type == "cuda":
                    ts = cuda_times(fn, device=device, flush=flush, target_seconds=0.1 / rounds,
                                    min_reps=max(3, 10 // rounds))
                    n = len(ts)
                else:
                    ts, n = cpu_times(fn, threads=threads or torch.get_num_threads(),
                                      min_run_time=min_run_time / rounds)
            except Exception as e:  # reported by the caller; the other fns go on
                errors[name] = f"{type(e).__name__}: {e}"[:400]
                continue
            times[name] += ts
            runs[name] += n
        if on_round is not None:
            on_round(r)
    return {k: summarize(v, runs[k]) for k, v in times.items() if k not in errors}, errors


def copy_bandwidth(device: torch.device, *, threads: int | None = None,
                   nbytes: int | None = None) -> float:
    """The device's copy bandwidth in bytes/s: ``dst.copy_(src)`` of a buffer far larger than
    the caches, counting the bytes read plus the bytes written. On the CPU, on ``threads``
    threads (copy bandwidth depends on them)."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else cpu_copy_bytes()
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    prev = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        warm_up(fn, calls=2)
        if device.type == "cuda":
            t = time_cuda(fn, device=device, flush=False, target_seconds=0.2, min_reps=5)
        else:
            t = time_cpu(fn, threads=threads or prev, min_run_time=0.5)
    finally:
        torch.set_num_threads(prev)
    return 2 * src.numel() * src.element_size() / t.median


def llc_bytes() -> int | None:
    """The CPU's last-level cache as Linux reports it (per socket, often more than a VM's
    share), or None."""
    import glob

    best = None
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{d}/level") as f:
                level = int(f.read())
            with open(f"{d}/size") as f:
                s = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
        size = int(s.rstrip("KMG")) * mult
        if best is None or level > best[0]:
            best = (level, size)
    return best[1] if best else None


def cpu_copy_bytes() -> int:
    """Size of the CPU copy-bandwidth buffer: 2x the LLC, at least 256 MiB, at most 512 MiB
    (a VM often reports its host's whole LLC: 2x of it would be gigabytes)."""
    llc = llc_bytes() or 0
    return int(min(512 << 20, max(256 << 20, 2 * llc)))

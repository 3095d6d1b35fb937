"""Host (Python) time per call of the Triton ops, launches patched out (issue 13, item 7).

Runs on the CPU, without a GPU and without the interpreter: the ops' bodies run as on a GPU
(the plan for an H200, the launch-configuration caches, the output and scratch
allocations), but every kernel launch is replaced by a no-op, so what is timed is the
Python and allocation work a call costs before its launches. CPU tensors stand in for CUDA
ones (a CPU allocation of a small uninitialised tensor costs about what the CUDA caching
allocator's does, ~1-2 us). At N = 256 the CPU allocates y (forward), dx and dres
(backward) of 25-200 MB each with an mmap and frees them with an munmap, which the caching
allocator's reuse of its blocks does not cost: those rows overstate the GPU's host time by
a few us per such tensor (meta tensors are no better stand-in: their factory functions run
Python reference code, ~10 us each). Triton's own launcher (argument binding and
specialisation, a few us per launch, GPU only) is not counted.

Reported per shape: the median over --repeat x --calls calls of each call's CPU time
(time.thread_time_ns around each call, less the timer's own median cost): time the thread
spends descheduled on a shared machine is not counted, and the median ignores the calls
that an interrupt or a cache flush disturbed.

    body      the op's Python body (triton_op's _init_fn): what this project controls
    dispatch  torch.ops.se_kernels.triton_se_{forward,backward}: the body plus the
              dispatcher and torch.library's custom-op wrapper
    fused_se  forward through the public se_kernels.fused_se (argument checks included),
              with torch.no_grad

With --launcher it also times the Python part of Triton's launcher for each launch of the
N = 1 shapes: JITFunction.run's argument binder (one native_specialize_impl per argument:
~0.3 us per tensor, ~0.1 us per int here) and its cache-key lookup, built for an sm_90
target without a GPU (Triton 3.8 here; the C launcher and the driver call come on top).

    .venv/bin/python tools/host_time_triton.py [--profile] [--launcher]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)           # the GPU code path, not the interpreter
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import se_kernels  # noqa: E402,F401
from se_kernels.triton import config, ops  # noqa: E402

H200 = config.gpu_device(132)

SHAPES = {  # name: (N, C, H, W, Cr)
    "conv2_x N=1": (1, 256, 56, 56, 16),
    "conv5_x N=1": (1, 2048, 7, 7, 128),
    "conv3_x N=256": (256, 512, 28, 28, 32),
    "conv5_x N=256": (256, 2048, 7, 7, 128),
    "C=8 4096^2 N=1": (1, 8, 4096, 4096, 1),
}


class _NoLaunch:
    """wrap_triton stand-in: kernel[grid](*args, **kwargs) does nothing."""

    def __init__(self, kernel):
        pass

    def __getitem__(self, grid):
        return _noop


def _noop(*args, **kwargs):
    return None


def _patch():
    ops.wrap_triton = _NoLaunch
    ops.device_of = lambda x: H200
    ops._launches = lambda x: True
    # fused_se(backend="triton") accepts CPU tensors only under the interpreter
    select = se_kernels.ops._select_backend
    se_kernels.ops._select_backend = lambda b, d: "triton" if b == "triton" else select(b, d)


def _inputs(n, c, h, w, cr, dtype=torch.bfloat16, residual=True):
    x = torch.empty(n, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w1, w2 = torch.empty(cr, c, dtype=dtype), torch.empty(c, cr, dtype=dtype)
    b1, b2 = torch.empty(cr, dtype=dtype), torch.empty(c, dtype=dtype)
    res = torch.empty_like(x) if residual else None
    return x, w1, w2, b1, b2, res


def _time(fn, calls: int, repeat: int) -> float:
    """The median CPU time of one call over repeat x calls calls, less the timer's own
    median cost, in us."""
    clock = time.thread_time_ns
    for _ in range(min(calls, 50)):
        fn()
    times, empty = [], []
    for _ in range(repeat):
        for _ in range(calls):
            t0 = clock()
            fn()
            times.append(clock() - t0)
            t0 = clock()
            empty.append(clock() - t0)
    return (statistics.median(times) - statistics.median(empty)) / 1e3


def measure(shape, calls: int, repeat: int) -> dict:
    x, w1, w2, b1, b2, res = _inputs(*shape)
    fwd_args = (x, w1, w2, b1, b2, res, 0, 0, 0)
    y, z, hpre, gpre = ops.triton_se_forward._init_fn(*fwd_args)
    bwd_args = (torch.empty_like(y), x, w1, w2, y, z, hpre, gpre, 0, 0, 0)
    fwd_op = torch.ops.se_kernels.triton_se_forward.default
    bwd_op = torch.ops.se_kernels.triton_se_backward.default
    out = {}
    out["fwd body"] = _time(lambda: ops.triton_se_forward._init_fn(*fwd_args), calls, repeat)
    out["fwd dispatch"] = _time(lambda: fwd_op(*fwd_args), calls, repeat)
    out["bwd body"] = _time(lambda: ops.triton_se_backward._init_fn(*bwd_args), calls, repeat)
    out["bwd dispatch"] = _time(lambda: bwd_op(*bwd_args), calls, repeat)

    def public():
        with torch.no_grad():
            se_kernels.fused_se(x, w1, w2, b1, b2, residual=res, backend="triton")
    out["fused_se"] = _time(public, calls, repeat)
    return out


def launcher(shape, calls: int, repeat: int) -> list[tuple[str, int, float]]:
    """(kernel, arguments, us) per launch of one forward and one backward call: the binder
    and cache key of Triton's JITFunction.run for an sm_90 target (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    launches = []

    class Rec:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    saved, ops.wrap_triton = ops.wrap_triton, Rec
    try:
        x, w1, w2, b1, b2, res = _inputs(*shape)
        y, z, hpre, gpre = ops.triton_se_forward._init_fn(x, w1, w2, b1, b2, res, 0, 0, 0)
        ops.triton_se_backward._init_fn(torch.empty_like(y), x, w1, w2, y, z, hpre, gpre,
                                        0, 0, 0)
    finally:
        ops.wrap_triton = saved
    backend = make_backend(GPUTarget("cuda", 90, 32))
    out = []
    for kernel, args, kwargs in launches:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        keys = {}

        def bind():   # JITFunction.run up to its kernel-cache lookup
            kw = dict(kwargs, debug=False, instrumentation_mode="")
            _, spec, options = binder(*args, **kw)
            return compute_cache_key(keys, spec, options)
        out.append((kernel.__name__, len(args) + len(kwargs), _time(bind, calls, repeat)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the forward and backward bodies at conv2_x N=1")
    ap.add_argument("--launcher", action="store_true",
                    help="time Triton's launcher binder per launch at the N = 1 shapes")
    a = ap.parse_args()
    _patch()
    torch.set_num_threads(1)
    cols = ["fwd body", "fwd dispatch", "bwd body", "bwd dispatch", "fused_se"]
    print(f"{'shape':<16}" + "".join(f"{c:>14}" for c in cols) + "   (us per call)")
    for name, shape in SHAPES.items():
        r = measure(shape, a.calls, a.repeat)
        print(f"{name:<16}" + "".join(f"{r[c]:>14.1f}" for c in cols))
    if a.launcher:
        print("\nTriton launcher (binder + cache key, sm_90 target), us per launch:")
        for name, shape in SHAPES.items():
            if shape[0] == 1:
                for kernel, nargs, us in launcher(shape, a.calls, a.repeat):
                    print(f"{name:<16}{kernel:<24}{nargs:>4} args {us:>8.1f}")
    if a.profile:
        x, w1, w2, b1, b2, res = _inputs(*SHAPES["conv2_x N=1"])
        fwd_args = (x, w1, w2, b1, b2, res, 0, 0, 0)
        y, z, hpre, gpre = ops.triton_se_forward._init_fn(*fwd_args)
        bwd_args = (torch.empty_like(y), x, w1, w2, y, z, hpre, gpre, 0, 0, 0)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            ops.triton_se_forward._init_fn(*fwd_args)
            ops.triton_se_backward._init_fn(*bwd_args)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()

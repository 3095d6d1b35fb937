"""The smoke selection of the first GPU call (``pytest -m smoke``; tools/gpu_check.sh first):
is every kernel path correct at the shapes that matter, in about a minute?

* every forced path -- cuda ``persistent`` and ``cluster`` (sm_90), triton ``fused`` and
  ``split`` -- and each backend's own choice (``auto``, bfloat16 only);
* the four SE-ResNet-50 stages at N = 1 and 256, bfloat16 and float32, NCHW and NHWC, the
  output and every gradient, against the float64 reference computed on the GPU, outputs
  poisoned (NaN-filled allocations);
* avg and max squeeze, with and without the fused residual tail: for each (path, stage, N)
  the four (layout, dtype) cells take the four (squeeze, residual) combinations, so every
  path sees every combination at every stage and batch;
* once per backend: opcheck of both ops, torch.compile(fullgraph=True) of a bottleneck, and a
  CUDA-graph capture and replay.

The rest of the GPU suite (the full option matrix, odd shapes, misaligned storage, fuzzing)
runs in ``tools/gpu_check.sh more``. Everything here is collected on any machine (the dry run
counts it) and skips, saying why, without a CUDA device or without the backend.

The N = 256 cases of conv2_x and conv3_x hold up to ~25 GB each (float64 oracle): they share
one pytest-xdist group (``--dist loadgroup``), so that no two run at once, and every test
hands its cached GPU memory back to the driver when it ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import zlib

import pytest
import torch

import se_kernels
from helpers import (TOLERANCES, Bottleneck, assert_compile_matches_eager, gpu_skip_reason,
                     op_args, opcheck_backward)

pytestmark = pytest.mark.smoke  # the checker's own CPU tests below included

STAGES = {"conv2_x": (256, 56, 16), "conv3_x": (512, 28, 32), "conv4_x": (1024, 14, 64),
          "conv5_x": (2048, 7, 128)}  # C, H = W, Cr
COMBOS = [("avg", True), ("max", False), ("max", True), ("avg", False)]  # squeeze, residual
LAYOUTS = ("nchw", "nhwc")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PATHS = [("cuda", "persistent"), ("cuda", "cluster"), ("triton", "fused"), ("triton", "split"),
         ("cuda", "auto"), ("triton", "auto")]


@pytest.fixture(autouse=True)
def _release_gpu_memory():
    """Each xdist worker's caching allocator would otherwise keep its largest case's memory
    reserved for the rest of the run (8 workers x 25 GB)."""
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def forced_path(backend: str, path: str, c: int):
    """The forward/backward path of ``backend`` forced for the block ('auto': its own)."""
    if backend == "cuda":
        prev = os.environ.get("SE_KERNELS_CUDA_PATH")
        os.environ["SE_KERNELS_CUDA_PATH"] = path
        try:
            yield
        finally:
            if prev is None:
                os.environ.pop("SE_KERNELS_CUDA_PATH", None)
            else:
                os.environ["SE_KERNELS_CUDA_PATH"] = prev
        return
    from se_kernels.triton import config

    if path == "auto":
        yield
    elif path == "fused":
        with config.forced(split=False):
            yield
    else:  # four channel chunks per sample group: launch 2 sums four partial FC1 results
        with config.forced(split=True, chunk=max(16, c // 4)):
            yield


def gpu_assert_close(out, ref, dtype, what, baseline=None):
    """||out - ref|| / ||ref|| <= the dtype's tolerance (or twice the same-precision
    reference backend's error), no NaN where ref has none, and at most one element in 10^5
    off by more than 20x the tolerance of the largest magnitude; computed on the GPU (these
    tensors have up to 2 * 10^8 elements)."""
    tol = TOLERANCES[dtype]
    ref = ref.detach().double()
    den = ref.norm().item() or 1.0

    def err(a):
        return (a.detach().double() - ref).norm().item() / den

    if baseline is not None:
        tol = max(tol, 2 * err(baseline))
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not out.isnan().any().item(), f"{what}: NaN (an element left unwritten?)"
    e = err(out)
    assert e <= tol, f"{what}: relative error {e:.3e} > {tol:.1e} ({dtype})"
    scale = ref.abs().max().clamp_min(1e-30)
    far = int(((out.detach().double() - ref).abs() / scale > 20 * tol).sum().item())
    assert far <= max(1, ref.numel() // 100_000), f"{what}: {far} elements far off"


# ---- once per backend: opcheck, torch.compile, CUDA graphs (first in the file: xdist starts
# them first, so that Inductor's compilation overlaps the stage cases) --------------------------

OPS = {"cuda": ("se_forward", "se_backward"), "triton": ("triton_se_forward", "triton_se_backward")}


@pytest.mark.parametrize("backend", list(OPS))
def test_smoke_opcheck(backend):
    why = gpu_skip_reason(backend)
    if why:
        pytest.skip(why)
    fwd, bwd = (getattr(torch.ops.se_kernels, name) for name in OPS[backend])
    for layout in ("contiguous", "channels_last"):
        torch.library.opcheck(fwd.default, op_args(2, 16, 3, 5, 4, layout=layout,
                                                   device="cuda"))
    opcheck_backward(fwd, bwd.default, True, device="cuda")


@pytest.mark.timeout(100)  # Inductor compiles a bottleneck's convs and its own kernels
@pytest.mark.parametrize("backend", list(OPS))
def test_smoke_compile_fullgraph(backend):
    why = gpu_skip_reason(backend)
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    model = Bottleneck(c=64, backend=backend).cuda()
    x = torch.randn(4, 64, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    assert_compile_matches_eager(model, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", list(OPS))
def test_smoke_cuda_graph_replay(backend):
    """Capture forward and backward once, replay on fresh inputs copied into the static
    ones: the replays give the eager results (a launcher that synchronises, allocates
    outside the graph's pool or caches a pointer fails here)."""
    why = gpu_skip_reason(backend)
    if why:
        pytest.skip(why)
    n, c, hw, cr = 8, 256, 14, 16

    def fresh(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return [torch.randn(*s, device="cuda", generator=g) * k for s, k in
                (((n, c, hw, hw), 1), ((cr, c), c ** -0.5), ((c, cr), cr ** -0.5), ((cr,), .5),
                 ((c,), .5), ((n, c, hw, hw), 1), ((n, c, hw, hw), 1))]

    static = [t.requires_grad_(i < 6) for i, t in enumerate(fresh(0))]

    def step():
        y = se_kernels.fused_se(*static[:5], residual=static[5], backend=backend)
        return (y, *torch.autograd.grad(y, static[:6], static[6]))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off capture: Triton compiles, allocator settles
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for seed in (1, 2):
        new = fresh(seed)
        with torch.no_grad():
            for s, f in zip(static, new):
                s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        leaves = [t.requires_grad_(i < 6) for i, t in enumerate(new)]
        y = se_kernels.fused_se(*leaves[:5], residual=leaves[5], backend=backend)
        want = (y, *torch.autograd.grad(y, leaves[:6], leaves[6]))
        for name, a, b in zip(["y", "dx", "dw1", "dw2", "db1", "db2", "dres"], outs, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name: f"replay {seed}, {name}: {m}")


def _cases():
    out = []
    for (backend, path) in PATHS:
        dtypes = ["bf16"] if path == "auto" else list(DTYPES)
        for si, stage in enumerate(STAGES):
            for ni, n in enumerate((1, 256)):
                for li, layout in enumerate(LAYOUTS):
                    for di, dt in enumerate(dtypes):
                        squeeze, res = COMBOS[(li + 2 * di + ni) % 4]
                        marks = []
                        if n == 256 and stage in ("conv2_x", "conv3_x"):
                            marks.append(pytest.mark.xdist_group("smoke-big"))
                        ident = (f"{backend}-{path}-{stage}-N{n}-{layout}-{dt}-{squeeze}"
                                 f"{'-res' if res else ''}")
                        out.append(pytest.param(backend, path, stage, n, layout, dt, squeeze,
                                                res, marks=marks, id=ident))
    return out


@pytest.mark.parametrize("backend,path,stage,n,layout,dt,squeeze,res", _cases())
def test_smoke_stage(backend, path, stage, n, layout, dt, squeeze, res, poison):
    """y and every gradient of one SE-ResNet-50 stage shape on one forced path."""
    why = gpu_skip_reason(backend)
    if why:
        pytest.skip(why)
    if path == "cluster" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the cluster path needs sm_90")
    c, hw, cr = STAGES[stage]
    check_stage(backend, path, "cuda", n, c, hw, cr, layout, DTYPES[dt], squeeze, res,
                seed=zlib.crc32(f"{stage}{n}{layout}{dt}".encode()))


def check_stage(backend, path, device, n, c, hw, cr, layout, dtype, squeeze, res, *, seed):
    """fused_se on ``backend`` with ``path`` forced: y and every gradient against the float64
    reference (and the flash-attention rule against the reference backend at ``dtype``)."""
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, device=device, generator=g) * std).to(dtype)

    x = rnd(n, c, hw, hw).contiguous(memory_format=fmt)
    r = rnd(n, c, hw, hw).contiguous(memory_format=fmt) if res else None
    w1, w2 = rnd(cr, c, std=2 / c ** 0.5), rnd(c, cr, std=2 / cr ** 0.5)
    b1, b2 = rnd(cr, std=0.5), rnd(c, std=0.5)
    leaves = [t.requires_grad_(True) for t in (x, w1, w2, b1, b2, r) if t is not None]
    dy = rnd(n, c, hw, hw).contiguous(memory_format=fmt)

    def run(which, ts):
        y = se_kernels.fused_se(*ts[:5], residual=ts[5] if res else None, squeeze=squeeze,
                                backend=which)
        return y, torch.autograd.grad(y, ts, dy.to(y.dtype))

    with forced_path(backend, path, c):
        try:
            y, grads = run(backend, leaves)
        except RuntimeError as e:  # e.g. an fp32 conv2_x slab larger than a cluster's memory
            if path == "cluster" and "cluster path cannot run" in str(e):
                pytest.skip(f"forced cluster path refused this shape: {e}"[:300])
            raise
    if device == "cuda":
        torch.cuda.synchronize()
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    base_y, base_g = run("reference", leaves)
    ref_y, ref_g = run("reference", [t.detach().double().requires_grad_(True) for t in leaves])
    gpu_assert_close(y, ref_y, dtype, "y", base_y)
    names = ["dx", "dw1", "dw2", "db1", "db2", "dresidual"]
    assert len(grads) == len(leaves)
    for name, a, b, base in zip(names, grads, ref_g, base_g):
        assert a.dtype == dtype, name
        gpu_assert_close(a, b, dtype, name, base)


# ---- the checker itself, on the CPU (Triton under the interpreter) -----------------------------

@pytest.mark.parametrize("path", ["auto", "fused", "split"])
@pytest.mark.parametrize("layout,dt,squeeze,res", [("nchw", "fp32", "max", True),
                                                   ("nhwc", "bf16", "avg", False)])
def test_check_stage_on_cpu(path, layout, dt, squeeze, res, poison):
    """check_stage at a small shape on the CPU: triton (interpreted) with the forced plans."""
    if "triton" not in se_kernels.available_backends() or torch.cuda.is_available():
        pytest.skip("runs the Triton interpreter on CPU tensors (no GPU, TRITON_INTERPRET=1)")
    check_stage("triton", path, "cpu", 3, 64, 5, 4, layout, DTYPES[dt], squeeze, res, seed=1)


def test_gpu_assert_close_catches_errors():
    ref = torch.randn(4, 64, 7, 7, dtype=torch.float64)
    gpu_assert_close(ref.float(), ref, torch.float32, "exact")
    with pytest.raises(AssertionError, match="relative error"):
        gpu_assert_close((ref * 1.001).float(), ref, torch.float32, "scaled")
    with pytest.raises(AssertionError, match="NaN"):
        bad = ref.float().clone()
        bad[0, 0, 0, 0] = float("nan")
        gpu_assert_close(bad, ref, torch.float32, "unwritten")
    with pytest.raises(AssertionError, match="far off"):
        big = torch.randn(16, 64, 7, 7, dtype=torch.float64).clamp(-3, 3)
        bad = big.clone()
        bad.view(-1)[:3] += 1.2  # three elements, within bf16's norm tolerance: 0.009 < 0.01
        gpu_assert_close(bad, big, torch.bfloat16, "some")


def triton_compile_cases():
    """The Triton launches of this selection, of tests/test_stress.py and of
    tools/gpu_probe.py, as tools/compile_triton_kernels.py's cases (``--set first``), so that
    the first GPU call compiles exactly these, in parallel, before pytest starts."""
    for backend, path, stage, n, layout, dt, squeeze, res in (p.values for p in _cases()):
        if backend != "triton":
            continue
        c, hw, cr = STAGES[stage]
        forced = ({} if path == "auto" else {"split": False} if path == "fused" else
                  {"split": True, "chunk": max(16, c // 4)})
        yield (n, c, hw, hw, cr, dt, layout == "nhwc",
               ({"avg": 0, "max": 1}[squeeze], 0, 0, True, res), forced)
    # the stress test and the probe: bf16, N = 256 (and 1; 128: the headline's training
    # step), the heuristic's own plans
    for (c, hw, cr), n, cl in itertools.product(STAGES.values(), (1, 128, 256), (False, True)):
        yield (n, c, hw, hw, cr, "bf16", cl, (0, 0, 0, True, True), {})
    # opcheck, compile and graph tests
    for cl in (False, True):
        yield (2, 16, 3, 5, 4, "fp32", cl, (0, 1, 0, True, True), {})
    yield (2, 6, 3, 5, 2, "fp32", False, (0, 1, 0, True, True), {})
    yield (4, 64, 14, 14, 16, "fp32", True, (0, 0, 0, True, True), {})
    yield (8, 256, 14, 14, 16, "fp32", False, (0, 0, 0, True, True), {})

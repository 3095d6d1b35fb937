"""The CUDA C++ backend on a GPU, against the float64 reference: every option, dtype and layout,
forward and all gradients, outputs poisoned; each forward path forced in turn
(SE_KERNELS_CUDA_PATH=auto | persistent | cluster, the last on sm_90 only); the SE-ResNet-50
stage shapes at N = 1 and 256; misaligned storage (the scalar paths); determinism; streams;
more than 2**31 elements; torch.compile(fullgraph=True); opcheck.

Every test skips, with the reason, on a machine without a CUDA device or without the CUDA
kernels. Nothing touches the GPU at import or collection.
"""

import zlib

import pytest
import torch
import torch.nn.functional as F

import se_kernels
from helpers import (LAYOUTS, TOLERANCES, Bottleneck, SEInputs, assert_compile_matches_eager,
                     check_backend, make_inputs, op_args, opcheck_backward, option_id,
                     option_matrix, reference64, rel_err)


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA device (none visible)"
    why = se_kernels.ops._unavailable_reason("cuda", "cuda")
    return None if why is None else f"the cuda backend cannot run: {why}"


_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

PATHS = ["auto", "persistent", "cluster"]


def _cluster_capable() -> bool:
    return torch.cuda.get_device_capability() >= (9, 0)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Forces a forward path for the test (the launcher reads the variable at every call)."""
    if request.param == "cluster" and not _cluster_capable():
        pytest.skip("the cluster path needs sm_90")
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", request.param)
    return request.param


def _skip_unsupported(path, dtype):
    if path == "cluster" and dtype == torch.float64:
        pytest.skip("no float64 cluster kernel (float64 takes the persistent path)")


def _cuda(inp: SEInputs) -> SEInputs:
    """The same inputs on the GPU, as leaves that require grad."""
    out = SEInputs(*(None if t is None else t.detach().cuda() for t in  # keeps dense layouts
                     (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual)))
    for t in out.tensors():
        t.requires_grad_(True)
    return out


def _make(n, c, h, w, cr, *, seed, **kw) -> SEInputs:
    gen = torch.Generator().manual_seed(seed)
    inp = make_inputs(n, c, h, w, cr, generator=gen, **kw)
    return _cuda(inp) if kw.get("layout") != "strided" else _cuda_strided(inp)


def _cuda_strided(inp: SEInputs) -> SEInputs:
    """Strided views stay strided on the GPU (fused_se must copy them to a dense layout)."""
    def move(t):
        if t is None:
            return None
        wide = torch.cat([t.detach(), torch.zeros_like(t)], dim=3).cuda()
        return wide[..., : t.shape[3]]
    out = SEInputs(move(inp.x), inp.w1.detach().cuda(), inp.w2.detach().cuda(),
                   None if inp.b1 is None else inp.b1.detach().cuda(),
                   None if inp.b2 is None else inp.b2.detach().cuda(), move(inp.residual))
    for t in out.tensors():
        t.requires_grad_(True)
    return out


# ---- the matrix of test_cpu.py, on the GPU, per path ---------------------------------------

@pytest.mark.parametrize("shape", [(3, 19, 5, 7, 4), (2, 64, 8, 8, 8)], ids=str)
@pytest.mark.parametrize("opts", option_matrix(), ids=option_id)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_every_option(shape, opts, dtype, layout, path, poison):
    """(3, 19, 5, 7, 4): odd sizes, the scalar paths; (2, 64, 8, 8, 8): the vector paths."""
    _skip_unsupported(path, dtype)
    squeeze, act, gate, bias, res = opts
    n, c, h, w, cr = shape
    inp = _make(n, c, h, w, cr, seed=zlib.crc32(repr((shape, opts, str(dtype), layout)).encode()),
                dtype=dtype, layout=layout, bias=bias, residual=res)
    check_backend("cuda", inp, squeeze, act, gate)


# N in {0, 1, 3, 64}; C in {1, 3, 16, 100, 2048}; H*W in {1x1, 7x7, 13x17, 56x56}; plus
# shapes that make the persistent kernels split rows (112x112), use several channel blocks
# (C = 2048 NHWC), several FC groups with a short last one (N = 9, C = 2048) and a long
# schedule (N = 64).
SHAPES = [
    (0, 16, 7, 7, 4), (1, 1, 1, 1, 1), (1, 3, 13, 17, 2), (3, 16, 1, 1, 4), (3, 100, 13, 17, 7),
    (64, 3, 7, 7, 1), (1, 2048, 7, 7, 128), (2, 256, 56, 56, 16), (3, 64, 56, 56, 4),
    (2, 37, 9, 11, 5), (4, 130, 3, 3, 9), (1, 16, 112, 112, 4), (9, 2048, 7, 7, 128),
    (64, 64, 7, 7, 8),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_cuda_shapes(shape, layout, dtype, squeeze, path, poison):
    n, c, h, w, cr = shape
    inp = _make(n, c, h, w, cr, seed=sum(shape), dtype=dtype, layout=layout, bias=True,
                residual=True)
    check_backend("cuda", inp, squeeze, "relu", "sigmoid")


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values, in storage starting one element past a 16-byte boundary, same layout."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
    if t.is_contiguous():
        out = buf.view(t.shape)
    else:
        n, c, h, w = t.shape
        out = buf.view(n, h, w, c).permute(0, 3, 1, 2)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_cuda_misaligned_storage(layout, dtype, squeeze, path, poison):
    """Sizes that allow 16-byte vectors, in storage that does not: the scalar paths."""
    inp = _make(2, 64, 8, 8, 8, seed=7, dtype=dtype, layout=layout, bias=True, residual=True)
    inp = SEInputs(*(t if t is None or t.dim() != 4 else _misaligned(t.detach())
                     for t in (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual)))
    for t in inp.tensors():
        t.requires_grad_(True)
    check_backend("cuda", inp, squeeze, "silu", "hardsigmoid")


def test_cuda_max_ties_split_evenly():
    x = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]]]], device="cuda", requires_grad=True)
    w1 = torch.tensor([[0.5]], device="cuda")
    w2 = torch.tensor([[0.25]], device="cuda")
    grads = {}
    for backend in ("cuda", "reference"):
        y = se_kernels.fused_se(x, w1, w2, squeeze="max", backend=backend)
        (grads[backend],) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grads["cuda"], grads["reference"])


# ---- the SE-ResNet-50 stages ---------------------------------------------------------------

STAGES = [(256, 56, 16), (512, 28, 32), (1024, 14, 64), (2048, 7, 128)]  # C, H = W, Cr


def _gpu_close(out, ref, dtype, what, baseline=None):
    """helpers.assert_close, computed on the GPU (these tensors have up to 2 * 10^8 elements)."""
    tol = TOLERANCES[dtype]
    out, ref = out.detach().double(), ref.detach().double()

    def err(a):
        d = ref.norm().item()
        return (a.double() - ref).norm().item() / (d if d > 0 else 1.0)

    if baseline is not None:
        tol = max(tol, 2 * err(baseline.detach()))
    e = err(out)
    assert e <= tol, f"{what}: relative error {e:.3e} > {tol:.1e} ({dtype})"
    scale = ref.abs().max().clamp_min(1e-30)
    far = int(((out - ref).abs() / scale > 20 * tol).sum().item())
    assert far <= max(1, ref.numel() // 100_000), f"{what}: {far} elements far off"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"C{s[0]}-{s[1]}x{s[1]}")
@pytest.mark.parametrize("n", [1, 256])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_seresnet50_stage(stage, n, layout, path):
    """bfloat16, the SE-ResNet block tail (biases, residual): y and every gradient."""
    c, hw, cr = stage
    torch.manual_seed(n + c)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dt = torch.bfloat16
    x = torch.randn(n, c, hw, hw, device="cuda", dtype=dt).contiguous(memory_format=fmt)
    r = torch.randn(n, c, hw, hw, device="cuda", dtype=dt).contiguous(memory_format=fmt)
    w1 = (torch.randn(cr, c, device="cuda") * 2 / c ** 0.5).to(dt)
    w2 = (torch.randn(c, cr, device="cuda") * 2 / cr ** 0.5).to(dt)
    b1 = (torch.randn(cr, device="cuda") * 0.5).to(dt)
    b2 = (torch.randn(c, device="cuda") * 0.5).to(dt)
    leaves = [t.requires_grad_(True) for t in (x, w1, w2, b1, b2, r)]
    dy = torch.randn(x.shape, device="cuda", dtype=dt).contiguous(memory_format=fmt)

    def run(backend, ts):
        y = se_kernels.fused_se(*ts[:5], residual=ts[5], backend=backend)
        return y, torch.autograd.grad(y, ts, dy.to(y.dtype))

    y, grads = run("cuda", leaves)
    assert y.is_contiguous(memory_format=fmt)
    base_y, base_g = run("reference", leaves)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref_y, ref_g = run("reference", ref_leaves)
    _gpu_close(y, ref_y, dt, "y", base_y)
    for name, a, b, base in zip(["dx", "dw1", "dw2", "db1", "db2", "dresidual"], grads, ref_g,
                                base_g):
        _gpu_close(a, b, dt, name, base)


# ---- determinism, streams, devices, sizes --------------------------------------------------

@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_bitwise_deterministic(squeeze, layout, path):
    """Outputs and gradients are bitwise identical across runs (no floating-point atomics)."""
    inp = _make(24, 256, 14, 14, 16, seed=3, dtype=torch.bfloat16, layout=layout, bias=True,
                residual=True)
    dy = torch.randn(inp.x.shape, device="cuda").to(inp.x.dtype)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                    backend="cuda")
            runs.append((y, *torch.autograd.grad(y, inp.tensors(), dy)))
    finally:
        torch.use_deterministic_algorithms(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_cuda_current_stream(path):
    """Kernels and their counter reset run on the current stream: work queued before them on a
    non-default stream (behind a long sleep) is complete when they read it."""
    inp = _make(8, 256, 28, 28, 16, seed=5, dtype=torch.float32, layout="channels_last",
                bias=True, residual=True)
    with torch.no_grad():
        want = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="cuda")
        x = inp.x.detach()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(100_000_000)  # ~0.05-0.1 s of GPU time before x2 exists
            x2 = x * 1.0
            got = se_kernels.fused_se(x2, *inp.args()[1:], residual=inp.residual.detach(),
                                      backend="cuda")
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA devices")
def test_cuda_device_guard():
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on the tensors' device."""
    inp = _make(4, 64, 9, 9, 8, seed=9, dtype=torch.float32, layout="contiguous", bias=True,
                residual=True)
    inp = SEInputs(*(None if t is None else t.detach().to("cuda:1").requires_grad_(True)
                     for t in (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual)))
    with torch.cuda.device(0):
        check_backend("cuda", inp, "avg", "relu", "sigmoid")


@pytest.mark.huge
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_more_than_2_31_elements(layout):
    """2 x 16 x 8192 x 8200 bfloat16 (2^31 + 2^19 elements): 64-bit offsets, forward and dx.
    x, y, dy, dx (4.3 GB each) and the per-sample float32 check (~5 x 4.3 GB) need ~40 GB of
    FREE memory: another process (or xdist worker) may hold much of the total."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:
        pytest.skip(f"needs 48 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    n, c, h, w, cr = 2, 16, 8192, 8200, 4
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16, generator=g)
    x = x.contiguous(memory_format=fmt)
    assert x.numel() > 2**31
    w1 = (torch.randn(cr, c, device="cuda", generator=g) / 2).to(torch.bfloat16)
    w2 = (torch.randn(c, cr, device="cuda", generator=g) / 2).to(torch.bfloat16)
    x.requires_grad_(True)
    y = se_kernels.fused_se(x, w1, w2, backend="cuda")
    dy = torch.randn(x.shape, device="cuda", dtype=torch.bfloat16, generator=g)
    dy = dy.contiguous(memory_format=fmt)
    (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.detach()
    for i in range(n):  # sample by sample in float32: the reference would need too much memory
        xi = xd[i].float()
        z = xi.mean(dim=(1, 2)).double().requires_grad_(True)
        s = torch.sigmoid(F.linear(F.relu(F.linear(z, w1.double())), w2.double()))
        want = (xi * s.float()[:, None, None]).to(torch.bfloat16).float()
        torch.testing.assert_close(y[i].float(), want, rtol=1e-2, atol=1e-2)
        gi = dy[i].float()
        ds = (gi * xi).sum(dim=(1, 2)).double()
        (dz,) = torch.autograd.grad(s, z, ds)
        want = gi * s.float()[:, None, None] + (dz / (h * w)).float()[:, None, None]
        del xi
        err = ((dx[i].float() - want).norm() / want.norm()).item()
        assert err < 1e-2, f"dx of sample {i}: relative error {err:.3e}"


def test_cuda_shared_memory_limit_survives_a_smaller_shape():
    """A kernel's dynamic shared-memory limit is one attribute per kernel: a call that needs
    less (but more than 48 KiB) must not lower it under what an earlier shape needs, or the
    next call of that shape fails to launch. float64 backward (persistent, any GPU): 96 KiB
    (G = 8), 84 KiB (G = 5), 96 KiB (issue 12c's FC weight stage, 64 KiB in float64, plus G
    staged rows of 512); bfloat16 forward on sm_90 (cluster, K = 16): 98 KiB
    (conv2_x), 49 KiB (conv3_x), 98 KiB."""
    cases = [((16, 256, 2, 2, 64), torch.float64), ((5, 256, 2, 2, 64), torch.float64),
             ((16, 256, 2, 2, 64), torch.float64), ((1, 256, 56, 56, 16), torch.bfloat16),
             ((1, 512, 28, 28, 32), torch.bfloat16), ((1, 256, 56, 56, 16), torch.bfloat16)]
    for i, (shape, dtype) in enumerate(cases):
        inp = _make(*shape, seed=i, dtype=dtype, layout="contiguous", bias=True, residual=True)
        check_backend("cuda", inp, "avg", "relu", "sigmoid")


def test_cuda_forcing_an_unavailable_path_raises(monkeypatch):
    """Forcing the cluster path where it cannot run is an error that says why (float64 has no
    cluster kernel on any device)."""
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "cluster")
    inp = _make(2, 8, 5, 5, 2, seed=1, dtype=torch.float64, layout="contiguous")
    with pytest.raises(RuntimeError, match="cluster path cannot run"):
        se_kernels.fused_se(*inp.args(), backend="cuda")
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "sideways")
    with pytest.raises(RuntimeError, match="SE_KERNELS_CUDA_PATH"):
        se_kernels.fused_se(*inp.args(), backend="cuda")


@pytest.mark.parametrize("shape", [(2, 19, 5, 7, 4), (4, 64, 8, 8, 8)], ids=str)
def test_cuda_paths_agree(shape, monkeypatch):
    """Every forward path gives the same y up to float32 rounding."""
    n, c, h, w, cr = shape
    inp = _make(n, c, h, w, cr, seed=13, dtype=torch.float32, layout="channels_last",
                bias=True, residual=True)
    ys = []
    for p in ["persistent", "cluster"] if _cluster_capable() else ["persistent"]:
        monkeypatch.setenv("SE_KERNELS_CUDA_PATH", p)
        with torch.no_grad():
            ys.append(se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="cuda"))
    y_ref, _ = reference64(inp, "avg", "relu", "sigmoid")
    for y in ys:
        assert rel_err(y, y_ref) < 1e-5


# ---- issue 12: paths nothing else reaches --------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_cuda_hidden_wider_than_a_chunk(layout, dtype, squeeze, path, poison):
    """Cr = 520 > kFcChunk (512) and C = 1040 > 512: the FCs staged in chunks (the persistent
    forward's second FC accumulates over two chunks of h; the backward's dz = dhpre W1 runs
    cols_dot_staged over two chunks of rows), and FC groups of G = 2 and 3 (padded to 2 and
    4)."""
    for n in (2, 3):
        inp = _make(n, 1040, 3, 3, 520, seed=n, dtype=dtype, layout=layout, bias=True,
                    residual=True)
        check_backend("cuda", inp, squeeze, "silu", "sigmoid")


def test_cuda_nhwc_short_last_channel_tile(path, poison):
    """NHWC, C = 1032 bfloat16: 16-byte channel vectors (C % 8 == 0) and persistent tiles of
    1024 + 8 channels, the last tile one vector column wide."""
    for squeeze in ("avg", "max"):
        inp = _make(3, 1032, 5, 5, 8, seed=1032, dtype=torch.bfloat16, layout="channels_last",
                    bias=True, residual=True)
        check_backend("cuda", inp, squeeze, "relu", "sigmoid")


# ---- issue 12a: the persistent kernels' FC items ------------------------------------------

# (N, C, H, W, Cr, FC item bytes or None): conv5_x with G = 8 and a short last group (N = 9:
# 8 + 1), its FC spread over 16 + 16 items (bf16) or more (float); conv2_x-like with G = 1
# (one item per FC, and with 2 KiB items several); Cr = 520 > 512 (the chunked second FC and
# dz over two chunks of rows) with tiny items (a block of 1..4 rows/columns each)
# (n, c, h, w, cr, SE_KERNELS_CUDA_FC_BYTES). (5, 104, 5, 5, 56, 8192): a short last block in
# all four stages (forward and backward, bf16 and float), rows 16-byte aligned; (3, 37, 5, 5,
# 13, 256): odd C and Cr, so the element-load path, over several blocks (review of 12a).
# (9, 2048, 7, 7, 128, 65536): backward items of 64 KiB (bf16: 16 columns x 2048 rows; float:
# 8 x 2048), twice fc.cuh's weight stage, so cols_dot_staged copies each block in two stages
# of 1024 rows, each read against two chunks of v (issue 12c).
FC_ITEM_SHAPES = [(9, 2048, 7, 7, 128, None), (3, 256, 28, 28, 16, None),
                  (3, 256, 28, 28, 16, 2048), (5, 1040, 3, 3, 520, 4096),
                  (5, 104, 5, 5, 56, 8192), (3, 37, 5, 5, 13, 256),
                  (9, 2048, 7, 7, 128, 65536),
                  # backward items of 24 (bf16) / 12 (float) columns over C = 2000 rows: weight
                  # stages of 682 rows (not a multiple of 4: the quad loop's tail) and a short
                  # last stage (636 rows)
                  (3, 2000, 3, 3, 40, 96000)]


def _fc_env(monkeypatch, grid, item_bytes):
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    for name, v in (("SE_KERNELS_CUDA_GRID", grid), ("SE_KERNELS_CUDA_FC_BYTES", item_bytes)):
        if v is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(v))


@pytest.mark.parametrize("shape", FC_ITEM_SHAPES, ids=str)
@pytest.mark.parametrize("grid", [1, 2, 3, None], ids=lambda g: f"grid{g or '-full'}")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_persistent_fc_items(shape, grid, layout, monkeypatch, poison):
    """The persistent forward and backward with the excitation cut into FC items (row blocks
    of W1 / W2 forward, column blocks backward), on grids of 1, 2, 3 CTAs (every item order
    must finish: an item waits only for smaller tickets) and the full grid, against the
    float64 reference: G = 8 with a short last group, G = 1, Cr > 512, bf16 and float, avg and
    max squeeze."""
    n, c, h, w, cr, item_bytes = shape
    _fc_env(monkeypatch, grid, item_bytes)
    for dtype, squeeze in ((torch.bfloat16, "avg"), (torch.float32, "max")):
        inp = _make(n, c, h, w, cr, seed=n + c, dtype=dtype, layout=layout, bias=True,
                    residual=True)
        check_backend("cuda", inp, squeeze, "silu", "sigmoid")


@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_persistent_fc_items_same_bits_on_every_grid(squeeze, layout, monkeypatch):
    """Each FC output is computed by one item in a fixed order, whichever CTA runs it: y and
    every gradient are bitwise equal on grids of 1, 2, 3 CTAs and the full grid."""
    n, c, h, w, cr, _ = FC_ITEM_SHAPES[0]
    inp = _make(n, c, h, w, cr, seed=12, dtype=torch.bfloat16, layout=layout, bias=True,
                residual=True)
    dy = torch.randn(inp.x.shape, device="cuda").to(inp.x.dtype)
    runs = []
    for grid in (None, 1, 2, 3):
        _fc_env(monkeypatch, grid, None)
        y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                backend="cuda")
        runs.append((y, *torch.autograd.grad(y, inp.tensors(), dy)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t that starts one element past an allocation's start: rows of
    16-bit, float or double weights are then not 16-byte aligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t.detach())
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out.requires_grad_(True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=str)
@pytest.mark.parametrize("grid", [1, None], ids=lambda g: f"grid{g or '-full'}")
def test_cuda_persistent_fc_items_unaligned_weights(dtype, grid, monkeypatch, poison):
    """W1 and W2 one element past a 16-byte boundary (contiguous, so fused_se passes them as
    they are): the backward FC items copy their weight blocks element by element instead of
    16-byte cp.async (fc.cuh cols_dot_staged), the forward loads them element by element;
    both squeezes, against the float64 reference; conv5_x-like (G = 8, 32 KiB items) and
    conv2_x-like (G = 1, one item a stage)."""
    _fc_env(monkeypatch, grid, None)
    for n, c, h, w, cr in ((9, 2048, 7, 7, 128), (3, 256, 6, 6, 16)):
        inp = _make(n, c, h, w, cr, seed=c + n, dtype=dtype, layout="contiguous", bias=True,
                    residual=True)
        inp.w1, inp.w2 = _unaligned(inp.w1), _unaligned(inp.w2)
        for squeeze in ("avg", "max"):
            check_backend("cuda", inp, squeeze, "silu", "sigmoid")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("item_bytes", [None, 65536], ids=lambda b: f"fc{b or '-default'}")
def test_cuda_persistent_fc_items_copy_path_same_bits(dtype, item_bytes, monkeypatch):
    """The sum order of the backward FC items does not depend on how the weights reach shared
    memory: with W1 and W2 16-byte aligned (cp.async copies) and one element off (element
    copies), y and every gradient are bitwise equal; one and two weight stages."""
    _fc_env(monkeypatch, None, item_bytes)
    n, c, h, w, cr, _ = FC_ITEM_SHAPES[0]
    inp = _make(n, c, h, w, cr, seed=21, dtype=dtype, layout="contiguous", bias=True,
                residual=True)
    assert inp.w1.data_ptr() % 16 == 0 and inp.w2.data_ptr() % 16 == 0
    dy = torch.randn(inp.x.shape, device="cuda").to(inp.x.dtype)
    runs = []
    for unaligned in (False, True):
        if unaligned:
            inp.w1, inp.w2 = _unaligned(inp.w1), _unaligned(inp.w2)
        for squeeze in ("avg", "max"):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                    backend="cuda")
            runs.append((y, *torch.autograd.grad(y, inp.tensors(), dy)))
    half = len(runs) // 2
    for aligned, unaligned in zip(runs[:half], runs[half:]):
        for a, b in zip(aligned, unaligned):
            assert torch.equal(a, b)


# ---- issue 12e: where the stage-2 FC items sit in the ticket order --------------------------

# (N, C, H, W, Cr, SE_KERNELS_CUDA_LAG in samples or None). G = 8 at C = 2048, 7 x 7, Cr = 128
# (N = 1: one group of 1, lag 1, so defer 0 whatever is asked; N = 9 = G + 1: a short last
# group, lag 1 group (the stage-2 items of the last group right before its apply items) and 2
# groups (defer 1 puts them in the last, apply-only block)); G = 2 at C = 256, 6 x 6, Cr = 16
# (N = 7: 4 groups, the last of 1 sample; lag 1, 2 and 4 groups, defers up to 3).
DEFER_SHAPES = [(1, 2048, 7, 7, 128, None), (9, 2048, 7, 7, 128, 1), (9, 2048, 7, 7, 128, 16),
                (7, 256, 6, 6, 16, 1), (7, 256, 6, 6, 16, 4), (7, 256, 6, 6, 16, 8)]


@pytest.mark.parametrize("shape", DEFER_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_persistent_fc2_defer(shape, layout, monkeypatch, poison):
    """The stage-2 FC items of group g sit `defer` groups after its stage-1 items
    (cuda_plan::Schedule; SE_KERNELS_CUDA_FC2_DEFER, clamped to lag - 1). The persistent
    forward and backward with the default defer (lag / 2), 0 (the order before issue 12e), 1
    and 3, each on grids of 1, 2, 3 CTAs and the full grid: every run finishes (an item waits
    only for smaller tickets, whatever the defer), the first matches the float64 reference,
    and y and every gradient of every other run are bitwise equal to the first (each output is
    one item's fixed-order sum, wherever the item sits)."""
    n, c, h, w, cr, lag = shape
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    monkeypatch.delenv("SE_KERNELS_CUDA_FC_BYTES", raising=False)
    if lag is None:
        monkeypatch.delenv("SE_KERNELS_CUDA_LAG", raising=False)
    else:
        monkeypatch.setenv("SE_KERNELS_CUDA_LAG", str(lag))
    inp = _make(n, c, h, w, cr, seed=n * c + (lag or 0), dtype=torch.bfloat16, layout=layout,
                bias=True, residual=True)
    dy = torch.randn(inp.x.shape, device="cuda").to(inp.x.dtype)
    first = None
    for defer in (None, 0, 1, 3):
        for grid in (None, 1, 2, 3):
            for name, v in (("SE_KERNELS_CUDA_FC2_DEFER", defer), ("SE_KERNELS_CUDA_GRID", grid)):
                if v is None:
                    monkeypatch.delenv(name, raising=False)
                else:
                    monkeypatch.setenv(name, str(v))
            if first is None:
                check_backend("cuda", inp, "avg", "silu", "sigmoid")
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, activation="silu",
                                    backend="cuda")
            run = (y, *torch.autograd.grad(y, inp.tensors(), dy))
            if first is None:
                first = run
                continue
            for a, b in zip(first, run):
                assert torch.equal(a, b), f"defer={defer} grid={grid}"


# (N, C, H, W, Cr): the forward FC items' staging (issue 12e): bf16 stages up to 2048 inputs
# a row with 16-byte cp.async copies when the rows are 16-byte aligned (C % 4 == 0), element
# by element otherwise; half and float keep chunks of 512. C = 2048: one chunk of the whole K
# (G = 8, short last group); C = 2056: two chunks, the second of 8; C = 2050: two chunks,
# element loads (odd rows); Cr = 2052 > 2048: the stage-2 items' K over two chunks.
STAGING_SHAPES = [(9, 2048, 7, 7, 128), (3, 2056, 2, 2, 24), (3, 2050, 2, 2, 24),
                  (2, 64, 3, 3, 2052)]


@pytest.mark.parametrize("shape", STAGING_SHAPES, ids=str)
@pytest.mark.parametrize("grid", [1, None], ids=lambda g: f"grid{g or '-full'}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=str)
def test_cuda_persistent_fc_staging(shape, grid, dtype, monkeypatch, poison):
    """The persistent forward's FC items over the staging paths (whole K, several chunks,
    cp.async and element copies, the activation of stage 2's inputs; float64 copies 2
    elements a cp.async) against the float64 reference, on one CTA and the full grid, with
    bias and residual."""
    n, c, h, w, cr = shape
    _fc_env(monkeypatch, grid, None)
    for squeeze, act in (("avg", "silu"), ("max", "gelu")):
        inp = _make(n, c, h, w, cr, seed=c + cr, dtype=dtype, layout="contiguous", bias=True,
                    residual=True)
        check_backend("cuda", inp, squeeze, act, "sigmoid")


def test_cuda_fc2_defer_env_checked(monkeypatch):
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    monkeypatch.setenv("SE_KERNELS_CUDA_FC2_DEFER", "-1")
    inp = _make(2, 16, 4, 4, 4, seed=0, dtype=torch.float32, layout="contiguous")
    with pytest.raises(RuntimeError, match="SE_KERNELS_CUDA_FC2_DEFER"):
        se_kernels.fused_se(*inp.args(), backend="cuda")


def test_cuda_fc_item_env_checked(monkeypatch):
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    inp = _make(2, 16, 4, 4, 4, seed=0, dtype=torch.float32, layout="contiguous")
    for name in ("SE_KERNELS_CUDA_GRID", "SE_KERNELS_CUDA_FC_BYTES"):
        monkeypatch.setenv(name, "0")
        with pytest.raises(RuntimeError, match=name):
            se_kernels.fused_se(*inp.args(), backend="cuda")
        monkeypatch.delenv(name)


@pytest.mark.parametrize("kg", ["3,1", "5,2", "7,3", "9,1", "13,2"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_forced_odd_cluster_sizes(kg, layout, monkeypatch, poison):
    """SE_KERNELS_CUDA_CLUSTER=K,G with odd K (more than 8: the non-portable sizes): channels
    split unevenly (the last CTA's share is short), groups with a short last one (N = 7).
    C = 200 splits into K shares of 16-byte multiples for these K (not for K = 11: 10 x 24
    channels would leave the last CTA none; the planner refuses such a K)."""
    if not _cluster_capable():
        pytest.skip("the cluster path needs sm_90")
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "cluster")
    monkeypatch.setenv("SE_KERNELS_CUDA_CLUSTER", kg)
    inp = _make(7, 200, 6, 6, 12, seed=len(kg), dtype=torch.bfloat16, layout=layout,
                bias=True, residual=True)
    check_backend("cuda", inp, "avg", "relu", "sigmoid")


@pytest.mark.parametrize("cap", ["16", "8"])
def test_cuda_cluster_cap_16_to_8(cap, monkeypatch, poison):
    """N = 1, C = 2048, 14 x 14 bfloat16: the planner takes K = 16 (50 KiB of slab a CTA);
    SE_KERNELS_CUDA_MAX_CLUSTER=8 plans as a device that refuses non-portable clusters does
    (the 16 -> 8 fallback), K = 8 (100 KiB a CTA). Both give the reference's answer."""
    if not _cluster_capable():
        pytest.skip("the cluster path needs sm_90")
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "cluster")
    monkeypatch.setenv("SE_KERNELS_CUDA_MAX_CLUSTER", cap)
    inp = _make(1, 2048, 14, 14, 128, seed=int(cap), dtype=torch.bfloat16,
                layout="contiguous", bias=True, residual=True)
    check_backend("cuda", inp, "avg", "relu", "sigmoid")


def test_cuda_cluster_cap_env_checked(monkeypatch):
    monkeypatch.setenv("SE_KERNELS_CUDA_MAX_CLUSTER", "17")
    inp = _make(1, 16, 4, 4, 4, seed=0, dtype=torch.float32, layout="contiguous")
    if not _cluster_capable():
        pytest.skip("the variable is read by the cluster planner (sm_90)")
    with pytest.raises(RuntimeError, match="SE_KERNELS_CUDA_MAX_CLUSTER"):
        se_kernels.fused_se(*inp.args(), backend="cuda")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_max_squeeze_2_pow_24_plus_1_ties(layout):
    """2^24 + 1 tied maxima in one channel (float32, 24929 x 673 pixels, every x equal): the
    tie count is a uint32 summed over many tiles and CTAs, each tied x gets dy * s + dz / count.
    Checks that every pixel gets the same gradient and that it matches the float64 reference
    to 1e-6. A count that wraps, saturates or misses a tile is off by far more than that; a
    float count rounded to 2^24 differs by 2^-24 relative, below float32 resolution of dx, so
    no test of dx can see that one (the uint32 count is there so that it cannot happen)."""
    h, w = 24929, 673
    assert h * w == 2 ** 24 + 1
    x = torch.full((1, 1, h, w), 0.75, device="cuda")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w1 = torch.tensor([[0.5]], device="cuda")
    w2 = torch.tensor([[-1.25]], device="cuda")
    grads = {}
    for backend in ("cuda", "reference"):
        xs = x if backend == "cuda" else x.detach().double().requires_grad_(True)
        ws = [w1, w2] if backend == "cuda" else [w1.double(), w2.double()]
        y = se_kernels.fused_se(xs, *ws, squeeze="max", backend=backend)
        dy = torch.full_like(y, 2.0 ** -20)  # ds = dy * sum(x), about 12: dz / count ~ 1e-7
        (grads[backend],) = torch.autograd.grad(y, xs, dy)
    dx, ref = grads["cuda"], grads["reference"]
    assert torch.all(dx == dx.flatten()[0]), "tied maxima got different gradients"
    got, want = dx.flatten()[0].double().item(), ref.flatten()[0].item()
    assert abs(got - want) <= 1e-6 * abs(want), (got, want)


# ---- issue 12b: the NCHW span reduce, graph capture ---------------------------------------

def _quantize_(inp: SEInputs) -> SEInputs:
    """x (and the residual) rounded to multiples of 1/4 in [-2, 2]: many tied maxima per
    channel, so a tie count that misses or double-counts an element changes dx."""
    with torch.no_grad():
        for t in (inp.x, inp.residual):
            if t is not None:
                t.copy_((t * 4).round().clamp(-8, 8) / 4)
    return inp


@pytest.mark.parametrize("tile", ["default", "192"])
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (7, 1), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("c", [64, 37])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_cuda_span_reduce(tile, hw, c, dtype, squeeze, monkeypatch, poison):
    """Issue 12 item 3: NCHW with H*W % (16 / element size) != 0 (49, 196, 7, 1), forced
    persistent path: the forward squeeze and the backward sums (and the max-squeeze tie counts)
    read each tile as one span of 16-byte vectors (tiles.cuh reduce_span, grad_reduce_span).
    C = 64: tiles of whole rows, 16-byte aligned spans; C = 37 (odd): spans that start and end
    inside a vector (the element-wise head and tail). SE_KERNELS_CUDA_TILE=192 bytes: tiles of
    a few rows, so spans start at many offsets; at H*W = 1 a vector holds up to 8 rows. With
    and without the residual (the y mask: a third tensor in the span). Inputs quantized so that
    max squeeze has many ties; outputs poisoned; float64 reference."""
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    if tile != "default":
        monkeypatch.setenv("SE_KERNELS_CUDA_TILE", tile)
    h, w = hw
    for n, res in ((3, True), (5, False)):
        seed = zlib.crc32(repr((tile, hw, c, str(dtype), squeeze, n)).encode())
        inp = _make(n, c, h, w, 8, seed=seed, dtype=dtype, layout="contiguous", bias=True,
                    residual=res)
        check_backend("cuda", _quantize_(inp), squeeze, "relu", "sigmoid")


@pytest.mark.parametrize("tile", ["default", "192"])
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (7, 1), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("c", [64, 37])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("squeeze", [0, 1], ids=["avg", "max"])
def test_cuda_span_reduce_squeeze_exact(tile, hw, c, dtype, squeeze, monkeypatch):
    """The span reduce's squeeze z, element by element: x quantized to multiples of 1/4 makes
    every float32 partial sum exact, so z must equal the float64 mean (one rounding of the
    division) or max to 2^-23 relative. An element counted twice or missed in any single row
    (a head or tail vector, one sample) moves that z by >= 1/(4 HW): the end-to-end tests
    above can dilute that below their 1e-2 tolerance, this one cannot (review of 12b)."""
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    if tile != "default":
        monkeypatch.setenv("SE_KERNELS_CUDA_TILE", tile)
    h, w = hw
    seed = zlib.crc32(repr(("exact", tile, hw, c, str(dtype), squeeze)).encode())
    inp = _quantize_(_make(5, c, h, w, 8, seed=seed, dtype=dtype, layout="contiguous",
                           bias=True))
    with torch.no_grad():
        _, z, _, _ = torch.ops.se_kernels.se_forward(inp.x, inp.w1, inp.w2, inp.b1, inp.b2,
                                                     None, squeeze, 0, 0)
    xd = inp.x.double().flatten(2)
    ref = xd.amax(2) if squeeze else xd.mean(2)
    torch.testing.assert_close(z.double(), ref.to(z.dtype).double(), rtol=2.0**-23, atol=0)


@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("c", [1024, 37])
def test_cuda_span_reduce_bitwise_repeatable(squeeze, c, monkeypatch):
    """The span reduce sums in a fixed order: the same call twice gives the same bits, with
    the default tiles and with tiles of a few rows (different partial sums, each repeatable)."""
    monkeypatch.setenv("SE_KERNELS_CUDA_PATH", "persistent")
    for tile in (None, "192"):
        if tile is not None:
            monkeypatch.setenv("SE_KERNELS_CUDA_TILE", tile)
        inp = _make(6, c, 14, 14, 16, seed=c, dtype=torch.bfloat16, layout="contiguous",
                    bias=True, residual=True)
        dy = torch.randn(inp.x.shape, device="cuda").to(inp.x.dtype)
        runs = []
        for _ in range(2):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                    backend="cuda")
            runs.append((y, *torch.autograd.grad(y, inp.tensors(), dy)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


_CAPTURE_SCRIPT = r"""
import os, torch, se_kernels
torch.manual_seed(0)
dt = torch.bfloat16
x = torch.randn(1, 2048, 14, 14, device="cuda", dtype=dt)
w1 = (torch.randn(128, 2048, device="cuda") / 45).to(dt)
w2 = (torch.randn(2048, 128, device="cuda") / 11).to(dt)
def fwd():
    with torch.no_grad():
        return se_kernels.fused_se(x, w1, w2, backend="cuda")
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
graphs = []
for i in range(2):  # the first capture comes before any eager call of this process
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=side):
        y = fwd()
    graphs.append((g, y))
    if i == 0:
        torch.cuda.synchronize()
        eager_auto = fwd()  # the cluster path, eagerly: remembered for the next capture
for g, _ in graphs:
    g.replay()
torch.cuda.synchronize()
os.environ["SE_KERNELS_CUDA_PATH"] = "persistent"
eager_persistent = fwd()
torch.cuda.synchronize()
ref = se_kernels.fused_se(x.double(), w1.double(), w2.double(), backend="reference")
for name, (g, y) in zip(["first", "second"], graphs):
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < 2e-2, (name, err)
assert torch.equal(graphs[0][1], eager_persistent), "first capture: not the persistent path"
assert torch.equal(graphs[1][1], eager_auto), "second capture: not the eager (cluster) result"
print("capture ok", torch.equal(eager_auto, eager_persistent))
"""


def test_cuda_first_call_under_graph_capture():
    """Review point (1) of issue 12: a fresh process whose first se_forward is inside CUDA
    graph capture takes the persistent path (no cluster launch has succeeded eagerly on the
    device yet, and a refused one would probably invalidate the capture); after an eager
    cluster launch, a capture of the same shape records the cluster path. Both graphs replay
    to the float64 reference, the first bitwise equal to the eager persistent result, the
    second to the eager auto (cluster on sm_90) result. A subprocess: the process state
    (what was launched) is what is under test."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SE_KERNELS_CUDA_")}
    r = subprocess.run([sys.executable, "-c", _CAPTURE_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "capture ok" in r.stdout
    # where the cluster path exists (sm_90), the first capture fell back and said so once
    warned = r.stderr.count("persistent path inside this CUDA graph capture")
    assert warned == (1 if torch.cuda.get_device_capability() >= (9, 0) else 0), r.stderr


# ---- torch.library: compile, opcheck -------------------------------------------------------

def test_cuda_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = Bottleneck(c=64, backend="cuda").cuda()
    assert_compile_matches_eager(model, torch.randn(4, 64, 14, 14, device="cuda"), rtol=1e-4,
                                 atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias,residual,squeeze", [(True, True, 0), (False, False, 1),
                                                   (True, False, 1)])
def test_cuda_opcheck_se_forward(layout, bias, residual, squeeze):
    args = op_args(2, 16, 3, 5, 4, bias=bias, residual=residual, layout=layout,
                   squeeze=squeeze, device="cuda")
    torch.library.opcheck(torch.ops.se_kernels.se_forward.default, args)


@pytest.mark.parametrize("with_y", [False, True])
def test_cuda_opcheck_se_backward(with_y):
    opcheck_backward(torch.ops.se_kernels.se_forward, torch.ops.se_kernels.se_backward.default,
                     with_y, device="cuda")


@pytest.mark.parametrize("act", range(6), ids=["relu", "silu", "hardswish", "relu6", "gelu",
                                               "gelu_tanh"])
def test_cuda_opcheck_every_activation(act):
    """Each activation code through opcheck, forward and backward (the tests above use silu)."""
    torch.library.opcheck(torch.ops.se_kernels.se_forward.default,
                          op_args(2, 16, 3, 5, 4, act=act, gate=act % 4, squeeze=act % 2,
                                  device="cuda"))
    opcheck_backward(torch.ops.se_kernels.se_forward, torch.ops.se_kernels.se_backward.default,
                     act % 2 == 0, device="cuda", act=act)

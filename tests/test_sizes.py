"""Sizes that break naive indexing and launch configurations, on every backend and device.

C = 1, H*W = 1, N beyond a CUDA grid's y/z limit (65535) with tiny slabs, a channel longer
than a thread block's loop, and on a GPU tensors of more than 2^31 elements: in total across
samples (a sample offset that overflows int32), and within one channel (an H*W index that
overflows int32).
"""

import pytest
import torch

import se_kernels
from helpers import check_backend, make_inputs, requires_cuda
from se_kernels.ops import _unavailable_reason


def _backend_devices(include_reference=False):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [pytest.param(b, d, id=f"{b}-{d}") for b in se_kernels.available_backends()
            if include_reference or b != "reference"
            for d in devices if _unavailable_reason(b, d) is None]


def _slow_in_interpreter(backend, device, elems, n=1):
    """The Triton interpreter runs every program instance in Python, one after another."""
    if backend == "triton" and device == "cpu" and (elems > 50_000 or n > 512):
        pytest.skip("too large for the Triton interpreter; runs on the GPU")


# (n, c, h, w, cr)
EDGE_SHAPES = {
    "c1": (4, 1, 9, 11, 1),
    "c1_big_hw": (2, 1, 300, 301, 1),
    "hw1": (5, 300, 1, 1, 19),
    "hw1_c4096": (2, 4096, 1, 1, 256),
    "n_70000_tiny_slabs": (70_000, 2, 1, 1, 1),
    "n_70000_c1_hw3": (70_000, 1, 1, 3, 1),
    "n_4096_c3_hw4": (4096, 3, 2, 2, 2),
    "odd_everything": (3, 7, 13, 17, 3),
    "cr_equals_c": (2, 5, 4, 4, 5),
    "cr_above_c": (2, 4, 3, 3, 9),
}


@pytest.mark.parametrize("backend,device", _backend_devices())
@pytest.mark.parametrize("shape", list(EDGE_SHAPES.values()), ids=list(EDGE_SHAPES))
@pytest.mark.parametrize("layout,squeeze", [("contiguous", "avg"), ("channels_last", "max")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_edge_sizes(backend, device, shape, layout, squeeze, dtype, poison):
    """float64 (tight tolerance) and bfloat16 (the low-precision load/store paths). Not
    float32: these shapes reduce 10^5 terms of random sign (over H*W, or over N for the
    weight gradients), where float32 accumulation loses ~1e-5 to cancellation in PyTorch and
    the kernels alike, which says nothing about indexing (the fuzz suite measures float32
    errors against each term's magnitude)."""
    n, c, h, w, cr = shape
    _slow_in_interpreter(backend, device, n * c * h * w, n)
    gen = torch.Generator().manual_seed(n + c + h + w)
    inp = make_inputs(n, c, h, w, cr, dtype=dtype, layout=layout, bias=True, residual=True,
                      device=device, generator=gen, requires_grad=True)
    torch.manual_seed(n + c)  # check_backend draws the upstream gradient from the global RNG
    check_backend(backend, inp, squeeze, "relu", "sigmoid")


@pytest.mark.parametrize("backend,device", _backend_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tiny_slabs_low_precision(backend, device, dtype):
    _slow_in_interpreter(backend, device, 140_000, 70_000)
    torch.manual_seed(0)
    inp = make_inputs(70_000, 1, 1, 2, 1, dtype=dtype, bias=True, device=device,
                      generator=torch.Generator().manual_seed(3), requires_grad=True)
    check_backend(backend, inp, "avg", "silu", "hardsigmoid")


# ---- more than 2^31 elements, on a GPU ------------------------------------------------------

def _need_gpu_memory(gib: float):
    free, _ = torch.cuda.mem_get_info()
    if free < gib * 2**30:
        pytest.skip(f"needs {gib:.0f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


class _ChunkedError:
    """||out - ref|| / ||ref|| and the largest element error, accumulated chunk by chunk in
    float64 on the GPU (a whole >2^31-element tensor in float64 would not fit)."""

    def __init__(self, what):
        self.what, self.num, self.den, self.worst, self.scale = what, 0.0, 0.0, 0.0, 0.0

    def add(self, out, ref):
        d = out.float() - ref.float()
        self.num += d.square().sum(dtype=torch.float64).item()
        self.den += ref.float().square().sum(dtype=torch.float64).item()
        self.worst = max(self.worst, d.abs().max().item())
        self.scale = max(self.scale, ref.float().abs().max().item())

    def check(self, tol=1e-2):
        err = (self.num / max(self.den, 1e-300)) ** 0.5
        assert err <= tol, f"{self.what}: relative error {err:.3e} > {tol:.1e}"
        assert self.worst <= 20 * tol * self.scale, (
            f"{self.what}: an element is off by {self.worst:.3e} (scale {self.scale:.3e})")


def check_chunked(backend, device, n, c, h, w, cr, rows, *, seed=0):
    """fused_se forward and backward (bfloat16, biases, fused residual tail) against a
    float32/float64 reference computed in chunks of ``rows`` rows, so that the check itself
    never holds more than a chunk in float32; the last elements of y are checked on their
    own too."""
    hw = h * w
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(torch.bfloat16)

    x, r = rnd(n, c, h, w), rnd(n, c, h, w)
    w1, w2 = rnd(cr, c, scale=2 / c**0.5), rnd(c, cr, scale=2 / cr**0.5)
    b1, b2 = rnd(cr, scale=0.5), rnd(c, scale=0.5)
    leaves = [t.requires_grad_(True) for t in (x, w1, w2, b1, b2, r)]
    y = se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, backend=backend)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    dy = rnd(n, c, h, w)
    dx, dw1, dw2, db1, db2, dres = torch.autograd.grad(y, leaves, dy)
    if device == "cuda":
        torch.cuda.synchronize()
    x, r, y = x.detach(), r.detach(), y.detach()

    chunks = [(i, slice(r0, min(h, r0 + rows))) for i in range(n) for r0 in range(0, h, rows)]
    with torch.no_grad():  # z = mean over H*W, from the chunks, in float64
        zsum = torch.zeros(n, c, dtype=torch.float64, device=device)
        for i, rs in chunks:
            zsum[i] += x[i, :, rs].float().sum(dim=(1, 2), dtype=torch.float64)
    z = (zsum / hw).requires_grad_(True)
    p = [t.detach().double().requires_grad_(True) for t in (w1, w2, b1, b2)]
    s = torch.sigmoid(torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(z, p[0], p[2])), p[1], p[3]))  # (N, C)
    s32 = s.detach().float()

    def tail_of(i, rs):  # t = x*s + r and the relu-masked upstream gradient, float32
        t = x[i, :, rs].float() * s32[i, :, None, None] + r[i, :, rs].float()
        return t, dy[i, :, rs].float() * (t > 0)

    err_y, err_dres = _ChunkedError("y"), _ChunkedError("dresidual")
    ds = torch.zeros(n, c, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i, rs in chunks:
            t, g = tail_of(i, rs)
            err_y.add(y[i, :, rs], torch.relu(t).to(torch.bfloat16))
            err_dres.add(dres[i, :, rs], g.to(torch.bfloat16))
            ds[i] += (g * x[i, :, rs].float()).sum(dim=(1, 2), dtype=torch.float64)
            del t, g
    err_y.check()
    err_dres.check()
    dz, *wgrads = torch.autograd.grad(s, [z] + p, ds)
    err_dx = _ChunkedError("dx")
    with torch.no_grad():
        for i, rs in chunks:
            _, g = tail_of(i, rs)
            want = g * s32[i, :, None, None] + (dz[i].float() / hw)[:, None, None]
            err_dx.add(dx[i, :, rs], want.to(torch.bfloat16))
            del g, want
    err_dx.check()
    for name, got, want in zip(["dw1", "dw2", "db1", "db2"], [dw1, dw2, db1, db2], wgrads):
        e = _ChunkedError(name)
        e.add(got, want)
        e.check()
    # The very end of y (one channel of the last sample), where a wrapped 32-bit offset
    # would have written elsewhere.
    k = min(4096, w)
    want = torch.relu(x.reshape(-1)[-k:].float() * s32[-1, -1] + r.reshape(-1)[-k:].float())
    got = y.reshape(-1)[-k:].float()
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend,device", _backend_devices(include_reference=True))
def test_chunked_check_small(backend, device):
    """The checker of the >2^31 test, on a small problem (so that its logic is tested on
    every machine), chunked by 3 rows."""
    _slow_in_interpreter(backend, device, 10**6)
    check_chunked(backend, device, 3, 5, 7, 6, 2, rows=3)


@requires_cuda
@pytest.mark.huge
@pytest.mark.parametrize("backend", [b for b in se_kernels.available_backends()
                                     if b != "reference"] or ["none"])
@pytest.mark.parametrize("case", ["samples_total", "one_channel"])
def test_more_than_2_31_elements(backend, case):
    """bfloat16 x with > 2^31 elements: 'samples_total' has 9 samples of 2^28 (a sample offset
    overflows int32 from the 9th on); 'one_channel' has one channel of 46341^2 > 2^31 pixels
    (an H*W index overflows int32)."""
    if backend == "none" or _unavailable_reason(backend, "cuda") is not None:
        pytest.skip(f"no CUDA backend to test ({backend})")
    if case == "samples_total":
        n, c, h, w, cr, rows = 9, 256, 1024, 1024, 16, 1024
    else:
        n, c, h, w, cr, rows = 1, 1, 46341, 46341, 1, 4096
    numel = n * c * h * w
    assert numel > 2**31
    torch.cuda.empty_cache()
    # x, r, y, dy, dx, dres in bfloat16, and a few float32 chunks of the reference
    _need_gpu_memory(6 * numel * 2 / 2**30 + 6 * c * rows * w * 4 / 2**30 + 1)
    check_chunked(backend, "cuda", n, c, h, w, cr, rows)

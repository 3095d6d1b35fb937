"""64-bit addressing of the Triton kernels (issue 13, item 1).

Triton's index arithmetic is int32 (the shapes arrive as i32), so offsets such as
c * H*W + hw wrap once a sample holds >= 2^31 elements (N = 1, C = 64, 5800 x 5800 fits on
an H200), and row offsets n * C once N*C >= 2^31. The kernels compute an int64 base per
tile (kernels._act_offset, kernels._row_offset) and keep only the offsets inside a tile
int32, bounded by config.make_plan.

On CPU a full-size run is out of reach (the interpreter would need 4+ GB per tensor and
hours), so test_tile_addresses_are_exact_beyond_2_31 runs the kernels' own addressing code
-- the helpers plus the same per-tile pointer step and in-tile offsets the pixel loops use --
in a tiny kernel at those sizes and compares every address with exact Python integers.
With the addressing of commit 23a97b5 (int32 c * SC + hw * SH) it fails: the offsets wrap
negative. The GPU test runs the real op at that size.
"""

import pytest
import torch

import se_kernels
from helpers import requires_cuda
from se_kernels.triton import config

pytestmark = pytest.mark.skipif(
    "triton" not in se_kernels.available_backends(),
    reason="the triton backend cannot run here (no CUDA device and TRITON_INTERPRET unset, "
           "or Triton missing)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from se_kernels.triton.kernels import _act_offset, _row_offset  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU = config.Device(sms=132, tile=4096, fc_tile=4096, min_group=1, interpret=False)


@triton.jit
def _addresses_kernel(out_ptr, n, c0, k, C, HW, BC: tl.constexpr, BHW: tl.constexpr,
                      STEP: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """out[i, j] = the element offset the pixel loops of kernels.py address for channel
    c0 + i, pixel k*STEP + j of sample n; out[BC * BHW] = the row offset of row n of an
    (N, C) scratch tensor. The same code as the kernels' loops: int64 tile base, k pointer
    steps of STEP * SH (STEP = the tile's BHW there; a multiple of it here, fewer
    interpreted steps), int32 in-tile offsets."""
    if CHANNELS_LAST:
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    cl = tl.arange(0, BC)
    hl = tl.arange(0, BHW)
    off = cl[:, None] * SC + hl[None, :] * SH
    t = _act_offset(n, c0, C, HW, CHANNELS_LAST)
    for _ in range(0, k):
        t += STEP * SH
    tl.store(out_ptr + cl[:, None] * BHW + hl[None, :], t + off)
    tl.store(out_ptr + BC * BHW, _row_offset(n, C))


@triton.jit
def _old_addresses_kernel(out_ptr, n, c0, k, C, HW, BC: tl.constexpr, BHW: tl.constexpr,
                          STEP: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """The same offsets as the kernels of commit 23a97b5 computed them: an int64 sample base
    plus int32 cs * SC + hws * SH, and int32 n * C rows (the negative control)."""
    if CHANNELS_LAST:
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    cs = c0 + tl.arange(0, BC)
    hws = k * STEP + tl.arange(0, BHW)
    t = tl.cast(n, tl.int64) * C * HW + (cs[:, None] * SC + hws[None, :] * SH)
    tl.store(out_ptr + tl.arange(0, BC)[:, None] * BHW + tl.arange(0, BHW)[None, :], t)
    tl.store(out_ptr + BC * BHW, n * C)


CASES = [(0, 64, 5800 * 5800),        # C*HW > 2^31 in one sample
         (3, 2048, (1 << 20) + 1000),  # per sample just over 2^31
         ((1 << 21) + 5, 1024, 49)]    # N*C*HW > 2^31, N*C > 2^31
CASE_IDS = ["sample", "sample-2^31", "batch"]


def _addresses(kernel, n, c, hw, channels_last):
    """(offsets the kernel computes, exact offsets) for a corner of the last tile of sample
    n (its last channel block and last pixel block) at the plan's tile sizes."""
    plan = config.make_plan(n + 1, c, hw, 4, 2, channels_last, GPU)
    bc, bhw = min(plan.BC, 16), min(plan.BHW, 64)   # a corner of the tile keeps it small
    c0 = c - plan.BC                                 # the last channel block
    step = plan.BHW                                  # steps of whole tiles, at most ~512
    while (hw - 1) // step > 512 and 2 * step * (c if channels_last else 1) < 2**31:
        step *= 2
    k = (hw - 1) // step                             # the last pixel block
    out = torch.full((bc * bhw + 1,), -1, dtype=torch.int64, device=DEVICE)
    kernel[(1,)](out, n, c0, k, c, hw, BC=bc, BHW=bhw, STEP=step, CHANNELS_LAST=channels_last)
    got = out.cpu()
    cs = torch.arange(bc, dtype=torch.int64)[:, None] + c0
    ps = torch.arange(bhw, dtype=torch.int64)[None, :] + k * step
    if channels_last:
        want = (n * hw + ps) * c + cs
    else:
        want = (n * c + cs) * hw + ps
    assert want.max() >= 2**31 or n * c >= 2**31, "the case must reach beyond int32"
    return got, torch.cat([want.flatten(), torch.tensor([n * c])])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("n,c,hw", CASES, ids=CASE_IDS)
def test_old_addressing_wraps(n, c, hw, channels_last):
    """Negative control: the int32 addressing the kernels had before issue 13 gets these
    cases wrong, so the test below can fail."""
    got, want = _addresses(_old_addresses_kernel, n, c, hw, channels_last)
    assert not torch.equal(got, want)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("n,c,hw", CASES, ids=CASE_IDS)
def test_tile_addresses_are_exact_beyond_2_31(n, c, hw, channels_last):
    """The last tile of sample n (its last channel block and last pixel block), at the tile
    sizes the plan gives for that shape, addressed exactly."""
    got, want = _addresses(_addresses_kernel, n, c, hw, channels_last)
    assert torch.equal(got, want), "offsets wrapped"


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c,hw", [(64, 5800 * 5800), (1 << 22, 600), (3, 1 << 30),
                                  (1 << 24, 1)])
def test_plan_keeps_in_tile_offsets_int32(c, hw, channels_last):
    """The int32 offsets inside a tile and the per-tile pointer step stay below 2^31."""
    p = config.make_plan(1, c, hw, 4, 2, channels_last, GPU)
    if channels_last:
        biggest, step = (p.BC - 1) + (p.BHW - 1) * c, p.BHW * c
    else:
        biggest, step = (p.BC - 1) * hw + p.BHW - 1, p.BHW
    assert biggest < 2**31 and step < 2**31, p


def _total_memory():
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0


@requires_cuda
@pytest.mark.skipif(torch.cuda.is_available() and _total_memory() < 70 * 2**30,
                    reason="needs ~60 GB of GPU memory (4.3 GB bf16 tensors, float32 checks)")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_beyond_2_31_elements_per_sample(layout):
    """N = 1, C = 64, 5800 x 5800 bf16 (2.15e9 elements per sample): forward and backward
    against float32 eager, every output element written (NaN-poisoned first), the last
    channels checked in full."""
    torch.manual_seed(0)
    n, c, h, w, cr = 1, 64, 5800, 5800, 4
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16).to(memory_format=fmt)
    w1 = (torch.randn(cr, c, device="cuda") / c ** 0.5).bfloat16()
    w2 = (torch.randn(c, cr, device="cuda") / cr ** 0.5).bfloat16()
    y, z, hpre, gpre = se_kernels.triton.se_forward(x, w1, w2, None, None, None, 0, 0, 0)
    zr = x.mean((2, 3), dtype=torch.float32)
    torch.testing.assert_close(z, zr, rtol=1e-4, atol=1e-6)
    hr = zr @ w1.float().t()
    torch.testing.assert_close(hpre, hr, rtol=1e-4, atol=1e-5)
    s = torch.sigmoid(gpre)
    dy = torch.randn_like(x)
    dx, dw1, dw2, db1, db2, _ = se_kernels.triton.se_backward(dy, x, w1, w2, None, z, hpre,
                                                             gpre, 0, 0, 0)
    ds = torch.stack([(dy[:, i].float() * x[:, i].float()).sum((1, 2)) for i in range(c)], 1)
    dpre = ds * s * (1 - s)
    dh = (dpre @ w2.float()) * (hpre > 0)
    dz = dh @ w1.float()
    torch.testing.assert_close(dw2, (dpre.t() @ torch.relu(hpre)).bfloat16(), rtol=2e-2,
                               atol=1e-3)
    torch.testing.assert_close(dw1, (dh.t() @ z).bfloat16(), rtol=2e-2, atol=1e-3)
    for i in list(range(0, c, 9)) + [c - 2, c - 1]:   # the far end above 2^31 in full
        xi = x[:, i].float()
        torch.testing.assert_close(y[:, i].float(), xi * s[:, i, None, None], rtol=1e-2,
                                   atol=1e-2)
        want = dy[:, i].float() * s[:, i, None, None] + dz[:, i, None, None] / (h * w)
        torch.testing.assert_close(dx[:, i].float(), want, rtol=1e-2, atol=1e-2)
    assert not y.isnan().any() and not dx.isnan().any()

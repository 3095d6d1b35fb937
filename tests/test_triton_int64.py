"""64-bit addressing of the Triton kernels (issue 13, item 1).

Triton's index arithmetic is int32 (the shapes arrive as i32), so offsets such as
c * H*W + hw wrap once a sample holds >= 2^31 elements (N = 1, C = 64, 5800 x 5800 fits on
an H200), and row offsets n * C once N*C >= 2^31. The kernels compute an int64 base per
tile (kernels._tile_base, kernels._row_offset) and keep only the offsets inside a tile
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
from helpers import requires_cuda, requires_triton
from se_kernels.triton import config

pytestmark = requires_triton

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from se_kernels.triton.kernels import _row_offset, _tile_base  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU = config.gpu_device(132)


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
    t = _tile_base(n, c0, 0, C, HW, CHANNELS_LAST)
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


@requires_cuda
@pytest.mark.huge
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_beyond_2_31_elements_per_sample(layout, poison):
    """N = 1, C = 1024, 1450 x 1450 bf16 (2.15e9 elements in one sample, so in-sample
    offsets pass 2^31): forward and backward against float32 eager on every channel, every
    output NaN-poisoned first (the ``poison`` fixture), so an unwritten element fails. The
    shape keeps ~128 programs busy (a few seconds on an H100/H200), where 64 x 5800 x 5800
    gave the plan only 4-8 programs."""
    free = torch.cuda.mem_get_info()[0]
    if free < 30 * 2**30:
        pytest.skip(f"needs ~30 GB of free GPU memory (4.3 GB bf16 tensors), {free / 2**30:.1f} GB free")
    torch.manual_seed(0)
    n, c, h, w, cr = 1, 1024, 1450, 1450, 16
    assert c * h * w >= 2**31
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16).to(memory_format=fmt)
    w1 = (torch.randn(cr, c, device="cuda") / c ** 0.5).bfloat16()
    w2 = (torch.randn(c, cr, device="cuda") / cr ** 0.5).bfloat16()
    y, z, hpre, gpre = se_kernels.triton.se_forward(x, w1, w2, None, None, None, 0, 0, 0)
    zr = x.mean((2, 3), dtype=torch.float32)
    torch.testing.assert_close(z, zr, rtol=1e-4, atol=1e-6)
    hr = zr @ w1.float().t()
    torch.testing.assert_close(hpre, hr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpre, torch.relu(hr) @ w2.float().t(), rtol=1e-3, atol=1e-4)
    s = torch.sigmoid(gpre)
    dy = torch.randn_like(x)
    dx, dw1, dw2, db1, db2, _ = se_kernels.triton.se_backward(dy, x, w1, w2, None, z, hpre,
                                                             gpre, 0, 0, 0)
    blocks = [range(i, min(i + 64, c)) for i in range(0, c, 64)]   # float32 in 0.5 GB blocks
    ds = torch.cat([(dy[:, b.start:b.stop].float() * x[:, b.start:b.stop].float()).sum((2, 3))
                    for b in blocks], 1)
    dpre = ds * s * (1 - s)
    dh = (dpre @ w2.float()) * (hpre > 0)
    dz = dh @ w1.float()
    torch.testing.assert_close(dw2, (dpre.t() @ torch.relu(hpre)).bfloat16(), rtol=2e-2,
                               atol=1e-3)
    torch.testing.assert_close(dw1, (dh.t() @ z).bfloat16(), rtol=2e-2, atol=1e-3)
    for b in blocks:   # every channel, the far end above 2^31 included
        sl = slice(b.start, b.stop)
        xb = x[:, sl].float()
        torch.testing.assert_close(y[:, sl].float(), xb * s[:, sl, None, None], rtol=1e-2,
                                   atol=1e-2)
        want = dy[:, sl].float() * s[:, sl, None, None] + dz[:, sl, None, None] / (h * w)
        torch.testing.assert_close(dx[:, sl].float(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [2**31 - 100, 2**31 - 3000, 2**31 - 2])
def test_plan_keeps_loop_counters_int32(hw, channels_last):
    """The compiled pixel loop counts in int32 while H*W < 2^31, and the pipeliner reaches
    two tiles ahead: hw0 + 2 BHW must stay <= 2^31 - 1 (it wrapped negative, an endless
    loop past the tensor, for H*W within two tiles of 2^31). Same for the channel loop."""
    p = config.make_plan(1, 2, hw, 1, 2, channels_last, GPU)
    assert hw - 1 + 2 * p.BHW <= 2**31 - 1 or p.BHW == 1, p
    p = config.make_plan(1, hw, 1, 1, 2, channels_last, GPU)
    assert hw - 1 + 2 * p.BC <= 2**31 - 1 or p.BC == 1, p


def test_forced_plans_never_stay_cached():
    """A plan cached while a test forced fields (another thread's call racing the block)
    is dropped when the block ends: the next unforced call gets the heuristic's plan."""
    args = (64, 256, 3136, 16, 2, False, GPU)
    want = config._make_plan(*args)
    with config.forced(split=True, chunk=16, BHW=32):
        config._cached_plan(*args, True)   # what a racing thread's unforced call would cache
        assert config.make_plan(*args).BHW == 32
    assert config.make_plan(*args) == want


@pytest.mark.parametrize("elem", [2, 4, 8])
def test_plan_tiles_fit_the_pipeline_buffers(elem):
    """GPU plans (forced tiles too) hold at most TILE_BYTES per streamed tensor's tile, so
    3 streams x 2 buffered tiles fit an A100's shared memory."""
    for args in [(256, 256, 3136, 16), (1, 1024, 196, 64), (256, 2048, 49, 128), (3, 37, 99, 5)]:
        for cl in (False, True):
            p = config.make_plan(*args, elem, cl, GPU)
            assert p.BC * p.BHW * elem <= config.TILE_BYTES, p
    with config.forced(BC=32, BHW=128):
        p = config.make_plan(1, 1024, 196, 64, elem, False, GPU)
        assert p.BC * p.BHW * elem <= config.TILE_BYTES, p


def test_weights_beyond_int32_offsets_are_refused():
    """The weights are addressed with int32 offsets (js * C + ks, and rows of 2*C*Cr + Cr + C
    in the weight gradients' partial sums): both ops refuse larger weights with a
    ValueError naming them, before any kernel runs or any weight is copied (zero-stride
    weight views of 2^30 elements: nothing large is allocated)."""
    c, cr = 1 << 15, 1 << 15
    assert 2 * c * cr + c + cr >= 2**31
    x = torch.zeros(1, device=DEVICE, dtype=torch.bfloat16).expand(1, c, 1, 1)
    w1 = torch.zeros(1, device=DEVICE, dtype=torch.bfloat16).expand(cr, c)
    w2 = torch.zeros(1, device=DEVICE, dtype=torch.bfloat16).expand(c, cr)
    with pytest.raises(ValueError, match=r"weights w1 \(\d+, \d+\) and w2 .* 32-bit offsets"):
        torch.ops.se_kernels.triton_se_forward(x, w1, w2, None, None, None, 0, 0, 0)
    z = torch.zeros(1, device=DEVICE).expand(1, c)
    h = torch.zeros(1, device=DEVICE).expand(1, cr)
    with pytest.raises(ValueError, match=r"weights w1 .* and w2 .* 32-bit offsets"):
        torch.ops.se_kernels.triton_se_backward(x, x, w1, w2, None, z, h, z, 0, 0, 0)
    # an empty batch too (review 13b #4: N = 0 returned before the check)
    x0 = x[:0]
    with pytest.raises(ValueError, match=r"weights w1 .* and w2 .* 32-bit offsets"):
        torch.ops.se_kernels.triton_se_forward(x0, w1, w2, None, None, None, 0, 0, 0)
    with pytest.raises(ValueError, match=r"weights w1 .* and w2 .* 32-bit offsets"):
        torch.ops.se_kernels.triton_se_backward(x0, x0, w1, w2, None, z[:0], h[:0], z[:0],
                                                0, 0, 0)


def test_weights_just_inside_int32_offsets_are_accepted():
    """The bound is exact: weights just inside it pass the check, one more hidden unit
    does not."""
    from se_kernels.triton import ops
    c, cr = 46340, 23170                  # 2*C*Cr + C + Cr = 2,147,363,110 < 2^31
    assert 2 * c * cr + c + cr < 2**31
    ops._check_weight_size(c, cr)
    with pytest.raises(ValueError):
        ops._check_weight_size(c, cr + 1)

"""Pixel splits of the Triton kernels (issue 13, item 4): the pixels of one sample spread
over S programs when the grid is too small (N = 1 with few, huge channels).

Each split-path program owns a (sample group, channel chunk, pixel split) triple. FC1 is
linear in z, so for the mean squeeze each program's share of FC1 from its partial mean adds
up to W1 z through the existing partial-sum machinery (P*S shares per sample, summed in a
fixed order); the max squeeze's forward does not split (the plan keeps S = 1 there: a max
over the splits would be needed before W1). The backward splits for both squeezes: its
pixel reduction is a sum, and the gate derivative is linear in it.

Under the interpreter the heuristic never splits (it plans for one SM), so these tests force
splits (config.forced) at odd sizes and compare forward and every gradient with the float64
reference, outputs NaN-poisoned; the heuristic's own GPU plans are checked without running.
"""

import itertools

import pytest
import torch

import se_kernels
from helpers import check_backend, make_inputs, requires_triton
from se_kernels.triton import config

pytestmark = requires_triton

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from se_kernels.triton.kernels import _tile_base  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H200 = config.gpu_device(132)

# Forced split plans: tiny pixel tiles so that every split has several tiles and a partial
# last one; "s5-g2" also groups 2 samples per program, sums the split rows 2 at a time
# (SB = 2 < S: several [.., SB, ..] tiles and a partial last one) and splits the weight
# gradients into 2 sample slices (the summing launch); "s2" sets only S (split follows
# from S > 1).
PLANS = {
    "s3": dict(split=True, S=3, BHW=16, chunk=2, BC=2, BJH=1, BC2=2),
    "s5-g2": dict(split=True, S=5, SB=2, G=2, BHW=16, chunk=4, BC=4, BN=1, WS=2, BJW=1,
                  BCW=2),
    "s2": dict(S=2, BHW=32),
}
FACTORS = {
    "hw": [(7, 7), (13, 17), (64, 64)],
    "c": [1, 3, 8],
    "n": [1, 2, 3],
    "layout": ["contiguous", "channels_last"],
    "dtype": [torch.float32, torch.float16, torch.bfloat16],
    "squeeze": ["avg", "max"],
    "residual": [False, True],
    "plan": list(PLANS),
}
CR = {1: 1, 3: 2, 8: 3}


def _pairwise_cases():
    """A deterministic greedy covering array: every pair of values of any two factors
    occurs in some case (far fewer cases than the full product of 1296)."""
    names = list(FACTORS)
    idx = [range(len(FACTORS[k])) for k in names]
    todo = {(f, a, g, b) for f, g in itertools.combinations(range(len(names)), 2)
            for a in idx[f] for b in idx[g]}
    cases = []
    while todo:
        best, gain = None, -1
        for cand in itertools.product(*idx):
            k = sum((f, cand[f], g, cand[g]) in todo
                    for f, g in itertools.combinations(range(len(names)), 2))
            if k > gain:
                best, gain = cand, k
        todo -= {(f, best[f], g, best[g]) for f, g in itertools.combinations(range(len(names)), 2)}
        cases.append({k: FACTORS[k][i] for k, i in zip(names, best)})
    return cases


CASES = _pairwise_cases()


def _case_id(case):
    h, w = case["hw"]
    return (f"{case['n']}x{case['c']}x{h}x{w}-{case['layout'][:4]}-{str(case['dtype'])[6:]}-"
            f"{case['squeeze']}-{'res' if case['residual'] else 'nores'}-{case['plan']}")


def _inputs(case, seed):
    h, w = case["hw"]
    gen = torch.Generator().manual_seed(seed)
    return make_inputs(case["n"], case["c"], h, w, CR[case["c"]], dtype=case["dtype"],
                       layout=case["layout"], bias=True, residual=case["residual"],
                       generator=gen, requires_grad=True, device=DEVICE)


def _plans(case, x):
    """(forward plan, backward plan) the ops make for this case under the forced fields."""
    h, w = case["hw"]
    args = (case["n"], case["c"], h * w, CR[case["c"]], x.element_size(),
            case["layout"] == "channels_last", config.device_of(x))
    return (config.make_plan(*args, hw_split=case["squeeze"] == "avg"),
            config.make_plan(*args, hw_split=True))


def test_pairwise_design_covers_every_pair():
    names = list(FACTORS)
    for f, g in itertools.combinations(names, 2):
        seen = {(repr(c[f]), repr(c[g])) for c in CASES}
        assert len(seen) == len(FACTORS[f]) * len(FACTORS[g]), (f, g)
    assert len(CASES) < 40


@pytest.mark.parametrize("i", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_triton_pixel_splits_match_reference(i, poison):
    """Forward and every gradient against the float64 oracle, with the pixels split."""
    case = CASES[i]
    inp = _inputs(case, 7000 + i)
    with config.forced(**PLANS[case["plan"]]):
        fwd, bwd = _plans(case, inp.x)
        assert bwd.split and bwd.S > 1 and bwd.HWC % bwd.BHW == 0, bwd
        assert (bwd.S - 1) * bwd.HWC < case["hw"][0] * case["hw"][1] <= bwd.S * bwd.HWC
        assert (fwd.S > 1) == (case["squeeze"] == "avg"), fwd   # max: the forward keeps S = 1
        check_backend("triton", inp, case["squeeze"], "silu", "sigmoid")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_pixel_split_forward_outputs(layout, poison):
    """z, hpre and gpre (the forward's saved tensors) with the pixels split 4 ways: z is
    the sum of the partial means, written once per sample and channel."""
    inp = make_inputs(2, 5, 9, 11, 3, layout=layout, bias=True, device=DEVICE,
                      dtype=torch.float64)
    with config.forced(split=True, S=4, chunk=2, BHW=4, BC=2):
        y, z, hpre, gpre = torch.ops.se_kernels.triton_se_forward(
            inp.x, inp.w1, inp.w2, inp.b1, inp.b2, None, 0, 1, 0)
    zr = inp.x.mean((2, 3))
    hr = zr @ inp.w1.t() + inp.b1
    gr = torch.nn.functional.silu(hr) @ inp.w2.t() + inp.b2
    torch.testing.assert_close(z, zr)
    torch.testing.assert_close(hpre, hr)
    torch.testing.assert_close(gpre, gr)
    torch.testing.assert_close(y, inp.x * torch.sigmoid(gr)[:, :, None, None])


@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_triton_pixel_splits_are_deterministic(squeeze):
    """Bitwise identical outputs and gradients from run to run with the pixels split."""
    case = dict(hw=(13, 17), c=3, n=2, layout="channels_last", dtype=torch.float32,
                squeeze=squeeze, residual=True, plan="s3")
    results = []
    for _ in range(2):
        inp = _inputs(case, 99)
        with config.forced(**PLANS["s3"]):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                    activation="silu", backend="triton")
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
            results.append([y.detach()] + list(torch.autograd.grad(y, inp.tensors(), dy)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---- the heuristic's GPU plans (no run) -----------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_plan_splits_pixels_for_few_huge_channels(channels_last):
    """N = 1, C = 8, 4096 x 4096: 1 program before issue 13, 8 (one per channel) after its
    first round; now ~4 programs per SM of an H200 through pixel splits (a split is a
    whole number of tiles, so S can come out a few below the 4 * 132 / P asked for)."""
    hw = 4096 * 4096
    p = config.make_plan(1, 8, hw, 1, 2, channels_last, H200)
    assert p.split and p.S > 1 and 0.95 * 4 * H200.sms <= p.groups(1) * p.Q <= 4 * H200.sms, p
    assert p.HWC % p.BHW == 0 and (p.S - 1) * p.HWC < hw <= p.S * p.HWC
    assert p.P_PAD == config._pow2(p.Q)
    # the max squeeze's forward does not split the pixels; its backward does
    pm = config.make_plan(1, 8, hw, 1, 2, channels_last, H200, hw_split=False)
    assert pm.S == 1 and pm.HWC == 0


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("side", [46340, 46000, 40000])
def test_plan_pixel_split_bounds_stay_int32(side, channels_last):
    """Review 13b #1: at 1 x 1 x 46340 x 46340 (H*W < 2^31) the plan had S = 528, HWC =
    4,067,328, S * HWC = 2^31 + 65536: the last split's int32 `hw_lo + HWC` wrapped and its
    pixel loop was empty. Now S * HWC <= INT32_MAX and the splits still cover H*W."""
    hw = side * side
    for hw_split in (True, False):
        p = config.make_plan(1, 1, hw, 1, 2, channels_last, H200, hw_split=hw_split)
        if p.S > 1:
            assert p.S * p.HWC <= config.INT32_MAX, p
            assert p.HWC % p.BHW == 0 and (p.S - 1) * p.HWC < hw <= p.S * p.HWC, p


@pytest.mark.parametrize("n,c,hw,cr,channels_last,programs", [
    (1, 256, 3136, 16, True, 64),      # conv2_x N = 1 NHWC: 16 chunks x 4 splits (was 16)
    (1, 64, 112 * 112, 4, True, 64),   # a stem-sized SE block at N = 1 (was 4)
    (2, 3, 1024 * 1024, 1, False, 500),
])
def test_plan_pixel_splits_fill_the_device(n, c, hw, cr, channels_last, programs):
    p = config.make_plan(n, c, hw, cr, 2, channels_last, H200)
    assert p.S > 1 and p.groups(n) * p.Q >= programs, p


@pytest.mark.parametrize("n,c,hw,cr", [(256, 256, 3136, 16), (1, 2048, 49, 128),
                                       (1, 1024, 196, 64), (64, 2048, 1, 128)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_plan_does_not_split_pixels_needlessly(n, c, hw, cr, channels_last):
    """No pixel splits where the chunks fill the device, where a split would stream less
    than MIN_SPLIT_BYTES, or where re-reading the weights would cost more than 1/4 of
    the activation bytes (conv5_x: |W| is 5x the slab)."""
    p = config.make_plan(n, c, hw, cr, 2, channels_last, H200)
    assert p.S == 1 and p.HWC == 0, p


def test_plans_made_under_forced_fields_are_not_cached():
    args = (1, 8, 64 * 64, 1, 4, False, H200)
    with config.forced(S=3, BHW=64):
        assert config.make_plan(*args).S == 3
    assert config.make_plan(*args) == config._make_plan(*args)


# ---- 64-bit pixel-split bases ---------------------------------------------------------------

@triton.jit
def _split_base_kernel(out_ptr, n, c0, hw0, C, HW, CHANNELS_LAST: tl.constexpr):
    tl.store(out_ptr, _tile_base(n, c0, hw0, C, HW, CHANNELS_LAST))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("n,c,c0,hw,hw0", [
    (0, 64, 63, 5800 * 5800, 5800 * 5800 - 1000),   # C*HW > 2^31 in one sample
    (0, 256, 255, 4096 * 4096, 4096 * 4096 - 64),   # hw0 * C > 2^31 in NHWC
    (3, 2048, 5, (1 << 20) + 1000, 1 << 20),        # per sample just over 2^31
])
def test_split_tile_base_is_exact_beyond_2_31(n, c, c0, hw, hw0, channels_last):
    """The int64 base of a tile that starts inside a pixel split (kernels._tile_base, as
    the four streaming phases use it), against exact integers."""
    out = torch.full((1,), -1, dtype=torch.int64, device=DEVICE)
    _split_base_kernel[(1,)](out, n, c0, hw0, c, hw, CHANNELS_LAST=channels_last)
    want = (n * hw + hw0) * c + c0 if channels_last else (n * c + c0) * hw + hw0
    assert want >= 2**31
    assert int(out.item()) == want


# ---- pixel splits x flat NCHW tiles (config rule 6) -------------------------------------------
# A flat tile covers all of HW while a pixel split covers only part of it, so the two never
# meet: flat == 0 wherever S > 1 (config asserts it), and the kernels' flat branch (which
# ignores the split's pixel range) runs only unsplit, with the per-split scratch rows.

GPU_DEVS = [H200, config.gpu_device(108)]  # an H200 and an A100


def test_flat_tiles_never_combine_with_pixel_splits():
    """Over many heuristic plans (both layouts, every element size, N from 1 to 256, maps
    from 1x1 to 4096x4096, both hw_split settings) and forced ones: never flat with S > 1;
    flat wherever rule 6 applies and the plan has no split; S > 1 only where HW > BHW."""
    seen = {"flat": 0, "split": 0}
    sizes = [(1, 8, 1, 1), (1, 64, 7 * 7, 4), (1, 8, 64 * 64, 1), (2, 3, 1024 * 1024, 1),
             (1, 256, 56 * 56, 16), (1, 512, 28 * 28, 32), (1, 1024, 14 * 14, 64),
             (1, 2048, 7 * 7, 128), (1, 64, 112 * 112, 4), (1, 16, 512 * 512, 1),
             (1, 8, 4096 * 4096, 1), (4, 32, 96 * 96, 2), (8, 100, 7 * 7, 7)]
    for (n0, c, hw, cr), n_mul, elem, cl, hws, dev in itertools.product(
            sizes, (1, 4, 256), (1, 2, 4, 8), (False, True), (False, True), GPU_DEVS):
        n = n0 * n_mul
        p = config.make_plan(n, c, hw, cr, elem, cl, dev, hw_split=hws)
        assert not (p.flat and p.S > 1), p
        assert p.S == 1 or hw > p.BHW, p
        assert (p.flat > 0) == (not cl and hw <= p.BHW and p.S == 1), p
        seen["flat"] += p.flat > 0
        seen["split"] += p.S > 1
    # forced: splits asked at maps a single tile covers collapse to S = 1 (and flat tiles)
    for hw, bhw, s in [(49, 64, 3), (49, 8, 3), (196, 256, 4), (196, 64, 4), (7, 8, 2)]:
        with config.forced(split=True, S=s, BHW=bhw, chunk=4, BC=4):
            p = config.make_plan(1, 8, hw, 2, 2, False, H200)
        assert not (p.flat and p.S > 1), p
        assert (p.S > 1) == (hw > bhw) and (p.flat > 0) == (hw <= bhw), p
    assert seen["flat"] > 50 and seen["split"] > 50, seen


# Forced interpreter plans at the two features' edges, vs the float64 oracle with poisoned
# outputs: (a) pixel splits in NCHW at a small map (7x7 split into 8-pixel tiles: flat
# must be off, the pixel loops run the splits); (b) a split asked where one tile covers the
# map (it collapses to S = 1 and the flat tiles run); (c) flat NCHW at N = 1 unsplit, on
# the split path (channel chunks) and the fused path.
EDGE_PLANS = {
    "split-small-hw": (dict(split=True, S=3, BHW=8, chunk=4, BC=4, BJH=2, BC2=4), 3, False),
    "split-small-hw-g2": (dict(split=True, S=4, SB=2, G=2, BHW=8, chunk=8, BC=4, BN=1, WS=2,
                               BJW=1, BCW=4), 4, False),
    "split-collapses-flat": (dict(split=True, S=3, BHW=64, chunk=4, BC=4, BJH=2, BC2=4), 1,
                             True),
    "flat-n1-split": (dict(split=True, chunk=8, BC=4, BHW=64, BJ=4, BK=8, BJH=4, BJ2=4,
                           BC2=8), 1, True),
    "flat-n1-fused": (dict(split=False, BC=8, BHW=64, BJ=4, BK=16, BJH=4, BJ2=4, BC2=16),
                      1, True),
}
EDGE_CASES = [(plan, n, sq, dt) for plan, n, sq, dt in itertools.product(
    EDGE_PLANS, (1, 3), ("avg", "max"), (torch.float32, torch.bfloat16))
    if not (plan.startswith("flat-n1") and n != 1)]


@pytest.mark.parametrize("plan,n,squeeze,dtype", EDGE_CASES,
                         ids=[f"{p}-n{n}-{sq}-{str(dt)[6:]}" for p, n, sq, dt in EDGE_CASES])
def test_triton_split_and_flat_edges_match_reference(plan, n, squeeze, dtype, poison):
    forced, want_s, want_flat = EDGE_PLANS[plan]
    c, cr = 19, 3                                   # an odd C: partial chunks and blocks
    inp = make_inputs(n, c, 7, 7, cr, dtype=dtype, bias=True, residual=True,
                      requires_grad=True, device=DEVICE,
                      generator=torch.Generator().manual_seed(len(plan) + n))
    elem = inp.x.element_size()
    with config.forced(**forced):
        bwd = config.make_plan(n, c, 49, cr, elem, False, config.device_of(inp.x))
        fwd = config.make_plan(n, c, 49, cr, elem, False, config.device_of(inp.x),
                               hw_split=squeeze == "avg")
        assert bwd.S == want_s and (bwd.flat > 0) == want_flat, bwd
        assert fwd.S == (want_s if squeeze == "avg" else 1), fwd
        assert not (fwd.flat and fwd.S > 1) and not (bwd.flat and bwd.S > 1)
        check_backend("triton", inp, squeeze, "silu", "sigmoid")

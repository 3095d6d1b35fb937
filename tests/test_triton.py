"""The Triton backend against the float64 reference: every option, fp32 and bf16 (fp16 and
fp64 on a subset), both layouts and a strided view, both launch paths, outputs poisoned.

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py). The
interpreter's cost is per Triton operation, so the option matrix is crossed with the shapes,
layouts and launch paths pairwise rather than in full: every (squeeze, activation, gate,
bias, residual) combination runs forward and all gradients in fp32 and in bf16, and every
pair of values of (N, C, HxW, layout, path) occurs in some case. With a GPU the same tests
run on CUDA tensors, plus the SE-ResNet-50 stage shapes at N = 1 and 256.
"""

import itertools

import pytest
import torch

import se_kernels
from helpers import (TOLERANCES, Bottleneck, assert_compile_matches_eager, assert_no_graph_break,
                     check_backend, make_inputs, op_args, opcheck_backward, option_id,
                     option_matrix, requires_cuda, requires_triton)
from se_kernels._options import ACTIVATIONS
from se_kernels.triton import config

pytestmark = requires_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = DEVICE == "cpu"

NS = (1, 3, 8)
CS = {3: 2, 64: 4, 100: 7}                 # C -> Cr
HWS = ((1, 1), (7, 7), (13, 17))
LAYOUTS = ("contiguous", "channels_last", "strided")
# Launch paths: the heuristic's own plan, and two forced plans with small tiles so that
# every loop (channel blocks, pixel blocks, hidden blocks, sample groups with a partial last
# group, channel chunks, weight-gradient sample blocks) runs more than once.
PATHS = {
    "auto": {},
    "split": dict(split=True, G=4, chunk=32, BC=32, BHW=128, BJ=4, BK=16, BJH=2, BJ2=4,
                  BC2=8, BCW=32, BN=2, BJW=4, WS=3),
    "fused-g2": dict(split=False, G=2, BC=32, BHW=64, BJ=4, BK=32, BJH=4, BJ2=2, BC2=16,
                     BCW=64, BN=4, BJW=8),
}


def pairwise_case(i: int):
    """(N, C, HW, layout, path) for case i: (a, b) = the base-3 digits of i % 9 give an L9
    orthogonal array over four factors, and the path rotates with i // 9, so that over the
    64 option combinations every pair of factor values occurs."""
    a, b = divmod(i % 9, 3)
    k = i // 9
    return (NS[a], list(CS)[b], HWS[(a + b) % 3], LAYOUTS[(a + 2 * b) % 3],
            list(PATHS)[(k + a + 2 * b) % 3])


def run_case(i, opts, dtype, *, grads=True):
    squeeze, act, gate, bias, res = opts
    n, c, (h, w), layout, path = pairwise_case(i)
    gen = torch.Generator().manual_seed(1000 * i + list(TOLERANCES).index(dtype))
    inp = make_inputs(n, c, h, w, CS[c], dtype=dtype, layout=layout, bias=bias, residual=res,
                      generator=gen, requires_grad=True, device=DEVICE)
    with config.forced(**PATHS[path]):
        check_backend("triton", inp, squeeze, act, gate, grads=grads)


def test_pairwise_design_covers_every_pair():
    cases = [pairwise_case(i) for i in range(len(option_matrix()))]
    levels = [NS, list(CS), HWS, LAYOUTS, list(PATHS)]
    for f, g in itertools.combinations(range(5), 2):
        seen = {(case[f], case[g]) for case in cases}
        assert len(seen) == len(levels[f]) * len(levels[g]), (f, g)


OPTIONS = list(enumerate(option_matrix()))


@pytest.mark.parametrize("i,opts", OPTIONS, ids=[option_id(o) for _, o in OPTIONS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_every_option(i, opts, dtype, poison):
    run_case(i, opts, dtype)


# fp16 and fp64: one case in four of the option matrix (every squeeze, activation and gate).
SUBSET = OPTIONS[::4] + OPTIONS[1::16]


@pytest.mark.parametrize("i,opts", SUBSET, ids=[option_id(o) for _, o in SUBSET])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_triton_other_dtypes(i, opts, dtype, poison):
    run_case(i, opts, dtype)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_empty_batch(path, layout, poison):
    inp = make_inputs(0, 16, 5, 5, 4, layout=layout, bias=True, residual=True,
                      requires_grad=True, device=DEVICE)
    with config.forced(**PATHS[path]):
        y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="triton")
        assert y.shape == inp.x.shape
        grads = torch.autograd.grad(y.sum(), inp.tensors(), allow_unused=True)
    for g, t in zip(grads, inp.tensors()):
        assert g.shape == t.shape and not g.isnan().any() and (g == 0).all()


def test_triton_odd_sizes(poison):
    """Cr = 1, C = 1, H*W = 1 and a prime H*W in one program, avg and max."""
    for squeeze, (n, c, h, w, cr) in itertools.product(("avg", "max"), [(2, 1, 1, 1, 1),
                                                                        (2, 5, 1, 31, 1)]):
        inp = make_inputs(n, c, h, w, cr, bias=True, residual=True, requires_grad=True,
                          device=DEVICE)
        check_backend("triton", inp, squeeze, "silu", "hardsigmoid")


# the backward's pixel splits (review 13b #2): S = 4 splits of 2 pixels over a 2 x 4 image,
# two split rows summed per tile load, so the tie counts of three splits must be summed
TIE_SPLIT = dict(split=True, S=4, SB=2, BHW=2, chunk=1, BC=1)


@pytest.mark.parametrize("path", list(PATHS) + ["split-s4"])
def test_triton_max_ties_split_evenly(path):
    """With tied maxima the gradient is shared between them, as torch.amax's is; on the
    split-s4 path the three maxima lie in three different pixel splits (the summed tie
    count: 1 per split instead would give each tie the whole gradient)."""
    forced = TIE_SPLIT if path == "split-s4" else PATHS[path]

    def max_squeeze_grad(x):
        """dx of the triton backend, checked against the reference's."""
        w1 = torch.tensor([[0.5]], device=DEVICE)
        w2 = torch.tensor([[0.25]], device=DEVICE)
        grads = {}
        for backend in ("triton", "reference"):
            with config.forced(**forced):
                y = se_kernels.fused_se(x, w1, w2, squeeze="max", backend=backend)
                (grads[backend],) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grads["triton"], grads["reference"])
        return grads["triton"]

    if path == "split-s4":
        x = torch.tensor([[[[3.0, 1.0, 3.0, 2.0], [0.0, 3.0, 1.0, 2.0]]]], device=DEVICE,
                         requires_grad=True)
        with config.forced(**forced):
            plan = config.make_plan(1, 1, 8, 1, 4, False, config.device_of(x))
        assert plan.S == 4 and plan.HWC == 2, plan
        dx = max_squeeze_grad(x)
        pooled = (dx - dx[0, 0, 0, 1]).flatten()  # x = 1: no tie
        ties = pooled[[0, 2, 5]]
        assert (ties == ties[0]).all() and ties[0] != 0, pooled
        assert (pooled[[1, 3, 4, 6, 7]] == 0).all(), pooled
        return
    x = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]]]], device=DEVICE, requires_grad=True)
    dx = max_squeeze_grad(x)
    pooled = dx - dx[0, 0, 0, 0]  # the pooling term
    assert pooled[0, 0, 0, 1] == pooled[0, 0, 1, 0] != 0 and pooled[0, 0, 1, 1] == 0


def test_triton_nan_propagates_like_reference():
    """A NaN in x reaches y and the gradients where it does in the reference (amax and relu
    let NaN through)."""
    for squeeze in ("avg", "max"):
        inp = make_inputs(2, 6, 3, 3, 2, residual=True, requires_grad=True, device=DEVICE)
        with torch.no_grad():
            inp.x[1, 2, 1, 1] = float("nan")
        outs = {}
        for backend in ("triton", "reference"):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                    backend=backend)
            dx, = torch.autograd.grad(y.sum(), inp.x)
            outs[backend] = (y.isnan(), dx.isnan())
        assert torch.equal(outs["triton"][0], outs["reference"][0])
        assert torch.equal(outs["triton"][1], outs["reference"][1])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_grads_bitwise_reproducible(path, deterministic):
    """No atomics anywhere: every run gives bitwise the same gradients, with or without
    torch.use_deterministic_algorithms."""
    gen = torch.Generator().manual_seed(11)
    inp = make_inputs(8, 64, 7, 7, 4, dtype=torch.float32, bias=True, residual=True,
                      generator=gen, requires_grad=True, device=DEVICE)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        grads = []
        for _ in range(3):
            with config.forced(**PATHS[path]):
                y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="triton")
                grads.append(torch.autograd.grad(y.square().sum(), inp.tensors()))
    finally:
        torch.use_deterministic_algorithms(prev)
    for g in grads[1:]:
        for a, b in zip(grads[0], g):
            assert torch.equal(a, b)


# Flat NCHW tiles (config rule 6: one tile covers HW, the (sample, channel block) loop is
# pipelined and each tile is one contiguous span of whole channels): forced small plans so
# that partial channel blocks, several blocks per sample and several samples per program
# run, against the same plans with the pixel loop (flat=False).
FLAT_PLANS = {
    "split": dict(split=True, G=2, chunk=24, BC=8, BJ=4, BK=8, BJH=4, BJ2=4, BC2=8, BCW=16,
                  BN=2, BJW=4, WS=2),
    "fused-g3": dict(split=False, G=3, BC=4, BJ=4, BK=16, BJH=4, BJ2=4, BC2=16, BCW=32, BN=4,
                     BJW=8),
}
FLAT_CASES = [(hw, sq, dt) for hw in ((7, 7), (14, 14), (1, 7), (1, 1))
              for sq in ("avg", "max") for dt in (torch.float32, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("hw,squeeze,dtype", FLAT_CASES,
                         ids=[f"{h}x{w}-{sq}-{str(dt)[6:]}" for (h, w), sq, dt in FLAT_CASES])
def test_triton_flat_tiles(hw, squeeze, dtype, poison):
    """Odd C (37), H*W = 49, 196, 7, 1, both layouts and both forced paths (rotating with
    the case), avg and max, with bias and residual, against the float64 oracle."""
    k = FLAT_CASES.index((hw, squeeze, dtype))
    path = list(FLAT_PLANS)[k % 2]
    layout = ("contiguous", "channels_last")[(k // 2) % 2]
    h, w = hw
    n, c, cr = 5, 37, 3
    forced = dict(FLAT_PLANS[path], BHW=1 << max(0, (h * w - 1).bit_length()))
    inp = make_inputs(n, c, h, w, cr, dtype=dtype, layout=layout, bias=True, residual=True,
                      requires_grad=True, device=DEVICE)
    elem = torch.empty((), dtype=dtype).element_size()
    for flat in (True, False):
        with config.forced(**forced, **({} if flat else {"flat": False})):
            plan = config.make_plan(n, c, h * w, cr, elem, layout == "channels_last",
                                    config.device_of(inp.x))
            # flat tiles exactly where rule 6 says, aligned to what C*HW allows
            assert (plan.flat > 0) == (flat and layout == "contiguous"), plan
            assert (c * h * w) % max(1, plan.flat) == 0 and plan.flat * elem <= 16, plan
            check_backend("triton", inp, squeeze, "silu", "tanh")


@pytest.mark.parametrize("path,dtype", [("split", torch.float32), ("fused-g3", torch.float32),
                                        ("split", torch.bfloat16)])
def test_triton_flat_tiles_max_of_zero_or_negative_channels(path, dtype, poison):
    """Max squeeze on flat tiles with HW = 49 < BHW = 64 (review 13a #3): channels that are
    all 0 (the max 0 equals the 15 padded lanes' value, should the tie count drop its `m &`),
    all negative (a padded lane's `other` must be -inf, not 0) and relu(randn) (max >= 0
    with many zeros), in both layouts' worth of channel blocks, against the float64 oracle."""
    n, c, h, w, cr = 3, 12, 7, 7, 3
    gen = torch.Generator().manual_seed(1313)
    inp = make_inputs(n, c, h, w, cr, dtype=dtype, bias=True, residual=True,
                      requires_grad=True, generator=gen, device=DEVICE)
    with torch.no_grad():
        x = inp.x
        x[:, 0::3] = 0.0
        x[:, 1::3] = -(x[:, 1::3].abs() + 0.25)
        x[:, 2::3] = x[:, 2::3].relu()
    with config.forced(**FLAT_PLANS[path], BHW=64):
        plan = config.make_plan(n, c, h * w, cr, x.element_size(), False,
                                config.device_of(x))
        assert plan.flat > 0 and plan.BHW == 64, plan
        check_backend("triton", inp, "max", "silu", "tanh")


@pytest.mark.skipif(not INTERPRET, reason="tl.device_assert runs under the interpreter "
                    "(on a GPU only with TRITON_DEBUG=1)")
def test_triton_flat_alignment_is_asserted(monkeypatch):
    """The flat tiles' tl.multiple_of(t, FLAT) / (span, FLAT) hints are checked by a
    tl.device_assert on every tile (review 13a #1): a plan with a FLAT that C*HW does not
    allow (C = 37, HW = 49: FLAT must be 1; forced 2) fails instead of loading misaligned."""
    real = config._flat_tiles

    def wrong(plan, c, hw, elem, channels_last):
        plan = real(plan, c, hw, elem, channels_last)
        return plan if not plan.flat else config.dataclasses.replace(plan, flat=2 * plan.flat)

    inp = make_inputs(2, 37, 7, 7, 3, dtype=torch.float32, device=DEVICE)
    y_ok = se_kernels.fused_se(*inp.args(), backend="triton")   # the true FLAT passes
    monkeypatch.setattr(config, "_flat_tiles", wrong)
    with config.forced(**FLAT_PLANS["split"], BHW=64):
        assert config.make_plan(2, 37, 49, 3, 4, False, config.device_of(inp.x)).flat == 2
        with pytest.raises(BaseException, match="multiple of FLAT"):
            se_kernels.fused_se(*inp.args(), backend="triton")
    assert y_ok.isfinite().all()


def test_triton_flat_tiles_bitwise_reproducible():
    """The flat path (gathers through shared memory on a GPU) is deterministic too."""
    inp = make_inputs(6, 40, 7, 7, 4, dtype=torch.float32, bias=True, residual=True,
                      requires_grad=True, device=DEVICE)
    outs = []
    for _ in range(2):
        with config.forced(**FLAT_PLANS["split"], BHW=64):
            y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="triton")
            outs.append((y,) + torch.autograd.grad(y.square().sum(), inp.tensors()))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_triton_does_not_modify_inputs():
    inp = make_inputs(3, 8, 5, 5, 2, bias=True, residual=True, requires_grad=True,
                      device=DEVICE)
    before = [t.detach().clone() for t in inp.tensors()]
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="triton")
    y.sum().backward()
    for a, b in zip(inp.tensors(), before):
        assert torch.equal(a.detach(), b)


# ---- the config heuristic (pure Python) ------------------------------------------------------

H100 = config.gpu_device(132)
SE_RESNET50 = [(256, 56 * 56, 16), (512, 28 * 28, 32), (1024, 14 * 14, 64), (2048, 7 * 7, 128)]


@pytest.mark.parametrize("n", [1, 8, 64, 256])
@pytest.mark.parametrize("c,hw,cr", SE_RESNET50 + [(3, 1, 1), (100, 221, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_plan_is_consistent(n, c, hw, cr, channels_last):
    p = config.make_plan(n, c, hw, cr, 2, channels_last, H100)
    assert 1 <= p.G <= 16 and p.P * p.chunk >= c > (p.P - 1) * p.chunk
    assert p.split == (p.Q > 1)   # channel chunks x pixel splits
    for v in (p.BC, p.BHW, p.BJ, p.BK, p.BJH, p.BJ2, p.BC2, p.BCW, p.BN, p.BJW):
        assert v >= 1 and v & (v - 1) == 0, p
    assert p.BC * p.BHW <= H100.tile
    assert p.G_PAD * p.BJ * p.BK <= H100.fc_tile and p.G_PAD * p.BJ2 * p.BC2 <= H100.fc_tile
    assert p.G_PAD * p.P_PAD * p.BJH <= H100.fc_tile
    assert p.BN * p.BCW * p.BJW <= H100.fc_tile and p.BN * p.P_PAD * p.BJW <= H100.fc_tile
    # FC2 rows of W2 are read in whole 32-byte sectors (issue 13, item 3)
    assert p.BJ2 >= min(16, cr)
    ws, wsn = p.wslices(n)
    assert 1 <= ws <= max(1, p.WS) and (ws - 1) * wsn < n <= ws * wsn
    # weights never cost more than the activations, unless capped by G <= 16 or by N
    assert 2 * c * cr <= p.G * c * hw or p.G == 16 or p.G >= n


def test_plan_conv5_amortises_weights():
    """conv5_x at N=256: |W| is 5x the slab, so samples are grouped (G=8) and, with only 32
    groups for 132 SMs, split over channel chunks."""
    p = config.make_plan(256, 2048, 49, 128, 2, True, H100)
    assert p.G == 8 and p.split and p.P > 1
    p = config.make_plan(256, 256, 3136, 16, 2, True, H100)
    assert p.G == 1


@pytest.mark.parametrize("elem,flat", [(2, 8), (4, 4), (8, 2)])
def test_plan_flat_tiles_where_one_tile_covers_hw(elem, flat):
    """Rule 6: NCHW conv4_x/conv5_x (one pixel tile) get flat tiles aligned to 16 bytes;
    NHWC, maps longer than a tile, and odd C*HW do not (or only to 1 element)."""
    for n, (c, hw, cr) in itertools.product((1, 256), SE_RESNET50):
        p = config.make_plan(n, c, hw, cr, elem, False, H100)
        assert p.flat == (flat if hw <= p.BHW else 0), p
        assert p.flat > 0 or hw > 196, p     # conv4_x, conv5_x are flat (N = 1: conv3_x too)
        assert config.make_plan(n, c, hw, cr, elem, True, H100).flat == 0
    assert config.make_plan(256, 37, 49, 3, 2, False, H100).flat == 1
    assert config.make_plan(256, 38, 49, 3, 2, False, H100).flat == 2


@pytest.mark.parametrize("n,c,hw,cr,channels_last,programs", [
    (256, 256, 3136, 16, True, 512),    # conv2_x, N = 256: split, no longer 256 programs
    (256, 256, 3136, 16, False, 512),
    (64, 2048, 1, 128, True, 16),       # HW = 1: |W| / G counted in the P cap (was 4)
    (1, 256, 3136, 16, False, 64),      # NCHW chunks of < 8 channels where rows are >= 4 KB
    (1, 8, 4096 * 4096, 1, False, 8),   # chunks of 1 channel (was 1 program)
])
def test_plan_fills_the_device(n, c, hw, cr, channels_last, programs):
    """Issue 13, item 4: ~4 programs per SM where the shape allows it."""
    p = config.make_plan(n, c, hw, cr, 2, channels_last, H100)
    assert p.groups(n) * p.P >= programs, p


# ---- torch.library: opcheck and torch.compile -----------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("squeeze,residual", [(0, True), (1, False)])
def test_opcheck_triton_se_forward(layout, squeeze, residual):
    torch.library.opcheck(torch.ops.se_kernels.triton_se_forward.default,
                          op_args(residual=residual, layout=layout, squeeze=squeeze,
                                  device=DEVICE))


@pytest.mark.parametrize("with_y", [False, True])
def test_opcheck_triton_se_backward(with_y):
    opcheck_backward(torch.ops.se_kernels.triton_se_forward,
                     torch.ops.se_kernels.triton_se_backward.default, with_y, device=DEVICE)


@pytest.mark.parametrize("act", range(len(ACTIVATIONS)), ids=list(ACTIVATIONS))
def test_opcheck_triton_every_activation(act):
    """Each activation code through opcheck, forward and backward (the tests above use silu)."""
    torch.library.opcheck(torch.ops.se_kernels.triton_se_forward.default,
                          op_args(act=act, gate=act % 4, squeeze=act % 2, device=DEVICE))
    opcheck_backward(torch.ops.se_kernels.triton_se_forward,
                     torch.ops.se_kernels.triton_se_backward.default, act % 2 == 0,
                     device=DEVICE, act=act)


def test_compile_fullgraph_matches_eager():
    """On CUDA Inductor traces into the kernels (triton_op's decomposition); under the
    interpreter the ops stay opaque custom ops (se_kernels/triton/ops.py says why), which
    still checks the fake kernels, autograd and fullgraph tracing."""
    torch.manual_seed(0)
    model = Bottleneck(backend="triton").to(DEVICE)
    assert_compile_matches_eager(model, torch.randn(2, 16, 9, 9, device=DEVICE))


def test_compile_has_no_graph_break():
    model = Bottleneck(backend="triton").to(DEVICE)
    assert_no_graph_break(model, torch.randn(2, 16, 9, 9, device=DEVICE))


@requires_cuda
def test_compile_inductor_sees_the_kernels():
    """On CUDA the compiled graph calls the user-defined Triton kernels directly."""
    from torch._inductor.utils import run_and_get_code

    model = Bottleneck(backend="triton").cuda()
    x = torch.randn(2, 16, 9, 9, device="cuda")
    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(model, fullgraph=True), x)
    assert any("se_fwd_" in code for code in codes), "no Triton SE kernel in the compiled code"


# ---- GPU: real sizes ------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("c,hw,cr", SE_RESNET50, ids=["conv2", "conv3", "conv4", "conv5"])
@pytest.mark.parametrize("n,dtype", [(1, torch.float32), (1, torch.bfloat16),
                                     (256, torch.bfloat16)], ids=["1-fp32", "1-bf16", "256-bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_se_resnet50_stages(c, hw, cr, n, dtype, layout, poison):
    """The four stage shapes at N = 1 (split path) and N = 256 (fused path, split for conv5);
    fp32 at N = 256 is left out only because the float64 oracle's host-side comparison of
    ~200M-element tensors takes minutes per case."""
    side = int(hw ** 0.5)
    gen = torch.Generator().manual_seed(c + n)
    inp = make_inputs(n, c, side, side, cr, dtype=dtype, layout=layout, bias=True,
                      residual=True, generator=gen, requires_grad=True, device="cuda")
    check_backend("triton", inp, "avg", "relu", "sigmoid")


@requires_cuda
@pytest.mark.parametrize("shape", [(2, 64, 112, 112, 4), (3, 37, 9, 11, 5), (64, 3, 7, 7, 1),
                                   (5, 2048, 1, 1, 128), (1, 130, 3, 3, 9)], ids=str)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_triton_gpu_odd_shapes(shape, path, squeeze, poison):
    n, c, h, w, cr = shape
    inp = make_inputs(n, c, h, w, cr, dtype=torch.bfloat16, layout="channels_last",
                      bias=True, residual=True, requires_grad=True, device="cuda")
    with config.forced(**PATHS[path]):
        check_backend("triton", inp, squeeze, "silu", "tanh")

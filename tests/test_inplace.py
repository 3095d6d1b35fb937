"""fused_se(inplace=True) and SqueezeExcitation(inplace=True): y written into x, for inference.

The cpu backend writes y in its kernel (se_kernels::se_forward_inplace); every other case
(other backends, autocast, strided x, a residual overlapping x) computes y out of place and
copies it into x. Each is checked against the float64 reference and, where the kernel runs,
bitwise against the out-of-place cpu op."""

import zlib

import pytest
import torch

import se_kernels
from helpers import (LAYOUTS, TOLERANCES, assert_close, make_inputs, option_id, option_matrix,
                     reference64)

HAS_CPU = "cpu" in se_kernels.available_backends()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"the cpu backend is not built: "
                               f"{se_kernels.EXTENSION_LOAD_ERROR}")
CPU_BACKENDS = [b for b in ("cpu", "reference") if b in se_kernels.available_backends()]


def _inputs(opts, dtype, layout, shape=(3, 19, 5, 7, 4)):
    squeeze, act, gate, bias, res = opts
    gen = torch.Generator().manual_seed(zlib.crc32(repr((opts, dtype, layout, shape)).encode()))
    return make_inputs(*shape, dtype=dtype, layout=layout, bias=bias, residual=res,
                       generator=gen)


def _check_inplace(backend, inp, squeeze, act, gate):
    """Runs the in-place op on a copy of x; checks identity, layout, untouched inputs and the
    values against the float64 oracle (and bitwise against the out-of-place op)."""
    x = inp.x.clone() if inp.x.is_contiguous() or inp.x.is_contiguous(
        memory_format=torch.channels_last) else _strided_copy(inp.x)
    others = [t.clone() for t in (inp.w1, inp.w2, inp.b1, inp.b2, inp.residual) if t is not None]
    strides = x.stride()
    with torch.no_grad():
        out = se_kernels.fused_se(x, inp.w1, inp.w2, inp.b1, inp.b2, residual=inp.residual,
                                  squeeze=squeeze, activation=act, gate=gate, backend=backend,
                                  inplace=True)
    assert out is x and x.stride() == strides
    for before, t in zip(others, (t for t in (inp.w1, inp.w2, inp.b1, inp.b2, inp.residual)
                                  if t is not None)):
        assert torch.equal(before, t), "an input other than x was modified"
    y_ref, _ = reference64(inp, squeeze, act, gate)
    assert_close(out, y_ref, inp.x.dtype, "y (in place)")
    with torch.no_grad():
        y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                                activation=act, gate=gate, backend=backend)
    assert torch.equal(out, y), "in place differs from out of place"


def _strided_copy(t):
    wide = torch.cat([t, torch.randn_like(t)], dim=3)
    view = wide[..., : t.shape[3]]
    view.copy_(t)
    return view


@needs_cpu
@pytest.mark.parametrize("opts", option_matrix(), ids=option_id)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_inplace_every_option(opts, dtype, layout):
    _check_inplace("cpu", _inputs(opts, dtype, layout), *opts[:3])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 256, 56, 56, 16), (3, 100, 13, 17, 7),
                                   (1, 2048, 7, 7, 128), (0, 8, 3, 3, 2)], ids=str)
def test_inplace_shapes_and_layouts(backend, layout, shape):
    """Large slabs (several sample groups and reverse-order chunks), odd sizes, N = 0, and
    the strided view (copied back through the view)."""
    _check_inplace(backend, _inputs(("avg", "relu", "sigmoid", True, True), torch.float32,
                                    layout, shape), "avg", "relu", "sigmoid")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inplace_residual_is_x(backend):
    """relu(x * s + x) with residual=x itself: each element is read before it is written."""
    inp = _inputs(("max", "silu", "sigmoid", False, False), torch.float32, "contiguous")
    x = inp.x.clone()
    expected = se_kernels.fused_se(x, inp.w1, inp.w2, residual=x, squeeze="max",
                                   activation="silu", backend=backend)
    with torch.no_grad():
        out = se_kernels.fused_se(x, inp.w1, inp.w2, residual=x, squeeze="max",
                                  activation="silu", backend=backend, inplace=True)
    assert out is x
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inplace_residual_overlapping_x(backend):
    """A residual that is a shifted view of x's memory is read before x is overwritten."""
    base = torch.randn(2 * 8 * 5 * 5 + 7)
    x = base[:400].view(2, 8, 5, 5)
    residual = base[7:407].view(2, 8, 5, 5)
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    expected = se_kernels.fused_se(x.clone(), w1, w2, residual=residual.clone(), backend=backend)
    with torch.no_grad():
        out = se_kernels.fused_se(x, w1, w2, residual=residual, backend=backend, inplace=True)
    assert out is x
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inplace_refuses_autograd(backend):
    inp = make_inputs(2, 8, 3, 3, 2, bias=True, requires_grad=True)
    before = inp.x.detach().clone()
    with pytest.raises(RuntimeError, match=r"inplace=True cannot record a backward.*"
                                           r"x, w1, w2, b1, b2 require grad"):
        se_kernels.fused_se(*inp.args(), backend=backend, inplace=True)
    assert torch.equal(inp.x.detach(), before)
    w1 = inp.w1.detach().requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"but w1 requires grad"):
        se_kernels.fused_se(before.clone(), w1, inp.w2.detach(), backend=backend, inplace=True)
    with torch.no_grad():  # fine without autograd
        se_kernels.fused_se(*inp.args(), backend=backend, inplace=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inplace_bad_input_leaves_x_alone(backend):
    x = torch.randn(2, 8, 3, 3)
    before = x.clone()
    with pytest.raises(TypeError, match=r"inplace must be a bool, got str \('yes'\)"):
        se_kernels.fused_se(x, torch.randn(2, 8), torch.randn(8, 2), inplace="yes")
    with torch.no_grad(), pytest.raises(ValueError, match="w1"):
        se_kernels.fused_se(x, torch.randn(2, 7), torch.randn(8, 2), backend=backend,
                            inplace=True)
    assert torch.equal(x, before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inplace_under_autocast_keeps_x_dtype(backend):
    """Under autocast y is computed in bfloat16, as out of place, and copied into the float32
    x."""
    inp = make_inputs(2, 16, 5, 5, 4, bias=True, residual=True)
    x = inp.x.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend=backend)
        with torch.no_grad():
            out = se_kernels.fused_se(x, inp.w1, inp.w2, inp.b1, inp.b2, residual=inp.residual,
                                      backend=backend, inplace=True)
    assert out is x and x.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(out, y.float(), rtol=0, atol=0)


@needs_cpu
def test_opcheck_se_forward_inplace():
    for layout, res in (("contiguous", True), ("channels_last", False)):
        inp = make_inputs(2, 6, 3, 5, 2, bias=True, residual=res, layout=layout)
        torch.library.opcheck(torch.ops.se_kernels.se_forward_inplace.default,
                              (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual, 0, 1, 0))


@needs_cpu
def test_inplace_compile_fullgraph():
    """Compiled, on an intermediate and on a graph input (which must be updated)."""
    def f(x, w1, w2, r):
        return se_kernels.fused_se(x * 2, w1, w2, residual=r, backend="cpu", inplace=True)

    def g(x, w1, w2):
        se_kernels.fused_se(x, w1, w2, backend="cpu", inplace=True)
        return x + 1

    inp = make_inputs(2, 16, 5, 5, 4, residual=True)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(f, fullgraph=True)(inp.x, inp.w1, inp.w2, inp.residual)
        expected = se_kernels.fused_se(inp.x * 2, inp.w1, inp.w2, residual=inp.residual)
        torch.testing.assert_close(out, expected)
        x = inp.x.clone()
        out = torch.compile(g, fullgraph=True)(x, inp.w1, inp.w2)
        y = se_kernels.fused_se(inp.x, inp.w1, inp.w2)
    torch.testing.assert_close(x, y)
    torch.testing.assert_close(out, y + 1)


@needs_cpu
def test_inplace_bumps_the_version_of_x():
    """A graph that saved x (here w * x) raises at backward after x was overwritten, instead
    of differentiating the new values."""
    x = torch.randn(2, 8, 3, 3)
    w = torch.randn(2, 8, 3, 3, requires_grad=True)
    p = (w * x).sum()
    version = x._version
    se_kernels.fused_se(x, torch.randn(2, 8), torch.randn(8, 2), backend="cpu", inplace=True)
    assert x._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        p.backward()


@needs_cpu
def test_inplace_op_refuses_hazards_itself():
    """torch.ops.se_kernels.se_forward_inplace called directly (no fused_se checks): a leaf
    that requires grad, and a residual overlapping x without being x, are errors."""
    op = torch.ops.se_kernels.se_forward_inplace
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    leaf = torch.randn(2, 8, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="se_forward_inplace is not differentiable"):
        op(leaf, w1, w2, None, None, None, 0, 0, 0)
    base = torch.randn(2 * 8 * 9 + 8)
    x, residual = base[:144].view(2, 8, 3, 3), base[8:152].view(2, 8, 3, 3)
    before = base.clone()
    with pytest.raises(RuntimeError, match="residual overlaps x without being x"):
        op(x, w1, w2, None, None, residual, 0, 0, 0)
    assert torch.equal(base, before)


def test_inplace_on_an_inference_tensor_outside_inference_mode():
    with torch.inference_mode():
        x = torch.randn(2, 8, 3, 3)
    for backend in CPU_BACKENDS:
        with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
            se_kernels.fused_se(x, torch.randn(2, 8), torch.randn(8, 2), backend=backend,
                                inplace=True)


@needs_cpu
def test_module_inplace_only_without_autograd():
    """SqueezeExcitation(inplace=True) overwrites its input under no_grad, and computes out of
    place (input untouched, gradients right) when autograd is recording."""
    backend = "cpu"
    se = se_kernels.SqueezeExcitation(16, reduction=4, backend=backend, inplace=True)
    assert "inplace=True" in repr(se)
    x = torch.randn(2, 16, 5, 5)
    r = torch.randn_like(x)
    ref = se_kernels.SqueezeExcitation.from_parameters(se.fc1_weight, se.fc2_weight, se.fc1_bias,
                                                       se.fc2_bias, backend=backend)
    expected = ref(x, r).detach()

    xg = x.clone().requires_grad_(True)
    y = se(xg, r)  # parameters require grad: out of place
    assert y.data_ptr() != xg.data_ptr() and torch.equal(xg.detach(), x)
    y.sum().backward()
    assert xg.grad is not None and se.fc1_weight.grad is not None

    x2 = x.clone()
    with torch.no_grad():
        out = se(x2, r)
    assert out is x2
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_modules_built_around_init_are_not_in_place():
    """ConvertedSE and old pickles never ran __init__'s ``inplace``: the class default."""
    se = se_kernels.SqueezeExcitation(8, reduction=4)
    del se.__dict__["inplace"]
    assert se.inplace is False and "inplace" not in repr(se)
    with torch.no_grad():
        x = torch.randn(1, 8, 2, 2)
        assert se(x) is not x


@needs_cpu
def test_module_stays_out_of_place_under_autocast():
    """Under autocast the in-place op would copy into x's dtype: the module keeps the
    autocast dtype whatever the grad mode."""
    se = se_kernels.SqueezeExcitation(8, reduction=4, backend="cpu", inplace=True)
    x = torch.randn(2, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not se_kernels.ops.writes_in_place(x, "cpu")
        with torch.no_grad():
            out = se(x)
    assert out.dtype == torch.bfloat16 and out is not x


def test_module_inplace_only_where_the_kernel_writes_in_place():
    """On a backend that would copy y into x (reference here), the module stays out of
    place: the copy would cost a pass more than in place saves."""
    se = se_kernels.SqueezeExcitation(8, reduction=4, backend="reference", inplace=True)
    assert not se_kernels.ops.writes_in_place(torch.randn(1, 8, 2, 2), "reference")
    assert not se_kernels.ops.writes_in_place(torch.randn(1, 8, 2, 2), "no-such-backend")
    x = torch.randn(2, 8, 3, 3)
    before = x.clone()
    with torch.no_grad():
        out = se(x)
    assert out is not x and torch.equal(x, before)
    if HAS_CPU:
        assert se_kernels.ops.writes_in_place(x, "auto")

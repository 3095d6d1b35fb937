"""The reference backend against an independent float64 computation (NumPy), and its
gradients against finite differences (torch.autograd.gradcheck)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import se_kernels
from se_kernels import reference
from helpers import (LAYOUTS, TOLERANCES, assert_close, make_inputs, option_id, option_matrix)

NP_ACT = {
    "relu": lambda v: np.maximum(v, 0.0),
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "hardswish": lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0,
    "relu6": lambda v: np.clip(v, 0.0, 6.0),
    "gelu": np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))),
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                    * (v + 0.044715 * v ** 3))),
}
NP_GATE = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "hardsigmoid": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0.0),
}


def numpy_se(x, w1, w2, b1, b2, residual, squeeze, activation, gate):
    """DESIGN.md section 1, written sample by sample in float64 NumPy."""
    x = x.detach().double().cpu().numpy()
    w1, w2 = w1.detach().double().numpy(), w2.detach().double().numpy()
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        slab = x[n].reshape(x.shape[1], -1)                      # (C, HW)
        z = slab.mean(axis=1) if squeeze == "avg" else slab.max(axis=1)
        h = w1 @ z + (0 if b1 is None else b1.detach().double().numpy())
        s = NP_GATE[gate](w2 @ NP_ACT[activation](h) + (0 if b2 is None else b2.detach().double().numpy()))
        y[n] = x[n] * s[:, None, None]
    if residual is not None:
        y = np.maximum(y + residual.detach().double().numpy(), 0.0)
    return torch.from_numpy(y)


@pytest.mark.parametrize("opts", option_matrix(), ids=option_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_matches_numpy_every_option(opts, layout):
    squeeze, act, gate, bias, res = opts
    gen = torch.Generator().manual_seed(1234)
    inp = make_inputs(5, 13, 7, 9, 3, layout=layout, bias=bias, residual=res, generator=gen,
                      dtype=torch.float64)
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                            activation=act, gate=gate, backend="reference")
    ref = numpy_se(*inp.args(), inp.residual, squeeze, act, gate)
    assert_close(y, ref, torch.float64)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(0, 3, 5, 5, 1), (1, 3, 1, 1, 2), (5, 17, 13, 17, 4),
                                   (1, 100, 7, 7, 6)], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_reference_dtypes_layouts_shapes(dtype, layout, shape, squeeze):
    n, c, h, w, cr = shape
    gen = torch.Generator().manual_seed(7)
    inp = make_inputs(n, c, h, w, cr, dtype=dtype, layout=layout, bias=True, residual=True,
                      generator=gen)
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                            backend="reference")
    assert y.dtype == dtype and y.shape == inp.x.shape
    fmt = se_kernels.ops.memory_format_of(inp.x)
    assert y.is_contiguous(memory_format=fmt)
    ref = numpy_se(*inp.args(), inp.residual, squeeze, "relu", "sigmoid")
    if n == 0:
        assert y.numel() == 0
    else:
        assert_close(y, ref, dtype)


@pytest.mark.parametrize("opts", option_matrix(), ids=option_id)
def test_reference_gradcheck(opts):
    squeeze, act, gate, bias, res = opts
    gen = torch.Generator().manual_seed(99)
    inp = make_inputs(2, 5, 3, 4, 3, dtype=torch.float64, bias=bias, residual=res, generator=gen,
                      requires_grad=True)
    if squeeze == "max":  # keep maxima apart so that finite differences see one argmax
        with torch.no_grad():
            inp.x.add_(torch.arange(inp.x[0, 0].numel(), dtype=torch.float64).view(3, 4) * 0.5)

    def f(*ts):
        it = iter(ts)
        x, w1, w2 = next(it), next(it), next(it)
        b1, b2 = (next(it), next(it)) if bias else (None, None)
        r = next(it) if res else None
        return se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, squeeze=squeeze,
                                   activation=act, gate=gate, backend="reference")

    assert torch.autograd.gradcheck(f, tuple(inp.tensors()), eps=1e-6, atol=1e-5)


TORCH_ACT = {
    "relu": F.relu, "silu": F.silu, "hardswish": F.hardswish, "relu6": F.relu6, "gelu": F.gelu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
}


@pytest.mark.parametrize("act", list(TORCH_ACT))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_activations_are_torchs(act, dtype):
    """The reference's activations have the values and gradients of PyTorch's own on finite
    inputs, the kinks (-3, 0, 3, 6) included; at the specials: values as PyTorch's (but
    gelu(+inf) = +inf, where float32 F.gelu gives NaN), and the piecewise gradients select:
    an inf/NaN upstream gradient stops where the activation is flat, a NaN input passes g."""
    v = torch.cat([torch.linspace(-9, 9, 181, dtype=dtype),
                   torch.tensor([-3.0, 0.0, 3.0, 6.0, -1e-30, 1e-30], dtype=dtype)])
    g = torch.randn(v.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    ours, theirs = reference._ACTIVATIONS[act], TORCH_ACT[act]
    vo, vt = v.clone().requires_grad_(), v.double().requires_grad_()
    yo, yt = ours(vo), theirs(vt)  # against PyTorch's in float64 (its float32 gelu is less
    (go,), (gt,) = torch.autograd.grad(yo, vo, g), torch.autograd.grad(yt, vt, g.double())
    tol = dict(rtol=1e-6, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(yo.double(), yt, **tol)  # accurate in the lower tail than ours)
    torch.testing.assert_close(go.double(), gt, **tol)
    specials = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype)
    y = ours(specials)
    want = TORCH_ACT[act](specials.double()).to(dtype)  # float64: gelu(+inf) = +inf
    torch.testing.assert_close(y, want, equal_nan=True)
    if act in ("relu", "hardswish", "relu6"):
        flat = torch.tensor({"relu": [-1.0, 0.0], "hardswish": [-4.0, -3.0],
                             "relu6": [-1.0, 0.0, 6.0, 7.0, math.inf]}[act], dtype=dtype)
        for up in (math.inf, math.nan):
            x = flat.clone().requires_grad_()
            (gx,) = torch.autograd.grad(ours(x), x, torch.full_like(flat, up))
            assert (gx == 0).all(), (act, up, gx)
        x = torch.tensor([math.nan], dtype=dtype, requires_grad=True)
        (gx,) = torch.autograd.grad(ours(x), x, torch.full_like(x, 2.0))
        assert gx.item() == 2.0 or act == "relu" and math.isnan(gx.item())

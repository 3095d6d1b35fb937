"""The fused C++ CPU backend against the float64 reference: every option, dtype and layout,
forward and all gradients, outputs poisoned before each run."""

import zlib

import pytest
import torch

import se_kernels
from helpers import LAYOUTS, TOLERANCES, check_backend, make_inputs, option_id, option_matrix

pytestmark = pytest.mark.skipif(
    "cpu" not in se_kernels.available_backends(),
    reason=f"the cpu backend is not built: {se_kernels.EXTENSION_LOAD_ERROR}")


@pytest.mark.parametrize("opts", option_matrix(), ids=option_id)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_every_option(opts, dtype, layout, poison):
    squeeze, act, gate, bias, res = opts
    gen = torch.Generator().manual_seed(zlib.crc32(repr((opts, dtype, layout)).encode()))
    inp = make_inputs(3, 19, 5, 7, 4, dtype=dtype, layout=layout, bias=bias, residual=res,
                      generator=gen, requires_grad=True)
    check_backend("cpu", inp, squeeze, act, gate)


# N in {0, 1, 3, 64}; C in {1, 3, 16, 100, 2048}; H*W in {1x1, 7x7, 13x17, 56x56}.
SHAPES = [
    (0, 16, 7, 7, 4), (1, 1, 1, 1, 1), (1, 3, 13, 17, 2), (3, 16, 1, 1, 4), (3, 100, 13, 17, 7),
    (64, 3, 7, 7, 1), (1, 2048, 7, 7, 128), (2, 256, 56, 56, 16), (3, 64, 56, 56, 4),
    (2, 37, 9, 11, 5), (4, 130, 3, 3, 9),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_cpu_shapes(shape, layout, dtype, squeeze, poison):
    n, c, h, w, cr = shape
    gen = torch.Generator().manual_seed(sum(shape))
    inp = make_inputs(n, c, h, w, cr, dtype=dtype, layout=layout, bias=True, residual=True,
                      generator=gen, requires_grad=True)
    check_backend("cpu", inp, squeeze, "relu", "sigmoid")


def test_cpu_large_group_path():
    """Enough samples that the kernel processes several cache-sized groups."""
    gen = torch.Generator().manual_seed(5)
    inp = make_inputs(24, 256, 28, 28, 16, dtype=torch.float32, layout="channels_last",
                      residual=True, generator=gen, requires_grad=True)
    check_backend("cpu", inp, "avg", "relu", "sigmoid")


def test_cpu_max_ties_split_evenly():
    """With tied maxima the gradient is shared between them, as torch.amax's is."""
    x = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]]]], requires_grad=True)  # two maxima
    w1 = torch.tensor([[0.5]])
    w2 = torch.tensor([[0.25]])
    grads = {}
    for backend in ("cpu", "reference"):
        y = se_kernels.fused_se(x, w1, w2, squeeze="max", backend=backend)
        (grads[backend],) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grads["cpu"], grads["reference"])
    pooled = grads["cpu"] - grads["cpu"][0, 0, 0, 0]  # the pooling term, on the maxima only
    assert pooled[0, 0, 0, 1] == pooled[0, 0, 1, 0] != 0 and pooled[0, 0, 1, 1] == 0


def test_cpu_weight_grads_deterministic():
    gen = torch.Generator().manual_seed(11)
    inp = make_inputs(16, 64, 9, 9, 8, bias=True, residual=True, generator=gen,
                      requires_grad=True)
    grads = []
    for _ in range(3):
        y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="cpu")
        grads.append(torch.autograd.grad(y.square().sum(), inp.tensors()))
    for g in grads[1:]:
        for a, b in zip(grads[0], g):
            assert torch.equal(a, b)


def test_cpu_does_not_modify_inputs():
    gen = torch.Generator().manual_seed(3)
    inp = make_inputs(2, 8, 5, 5, 2, bias=True, residual=True, generator=gen, requires_grad=True)
    before = [t.detach().clone() for t in inp.tensors()]
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, backend="cpu")
    y.sum().backward()
    for a, b in zip(inp.tensors(), before):
        assert torch.equal(a.detach(), b)

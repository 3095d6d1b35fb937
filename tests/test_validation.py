"""Bad input raises a clear Python exception naming the argument, before any kernel runs."""

import pytest
import torch

import se_kernels
from se_kernels import fused_se

BACKENDS = se_kernels.available_backends()


def good(dtype=torch.float32, n=2, c=8, cr=2):
    return (torch.randn(n, c, 5, 5, dtype=dtype), torch.randn(cr, c, dtype=dtype),
            torch.randn(c, cr, dtype=dtype))


def bad(exc, match, *args, **kwargs):
    for backend in BACKENDS:
        with pytest.raises(exc, match=match):
            fused_se(*args, backend=backend, **kwargs)


def test_wrong_ndim():
    x, w1, w2 = good()
    bad(ValueError, r"x must be 4-D \(N, C, H, W\), got 3-D", x[0], w1, w2)
    bad(ValueError, r"x must be 4-D .* 5-D", x[None], w1, w2)


def test_empty_channels_or_spatial():
    x, w1, w2 = good()
    bad(ValueError, r"x must have C > 0 and H\*W > 0", x[:, :, :0], w1, w2)


def test_channel_mismatch_w1():
    x, w1, w2 = good()
    bad(ValueError, r"w1 must have shape \(Cr, C\) with C = x.shape\[1\] = 8, got \(2, 7\)",
        x, w1[:, :7], w2)


def test_channel_mismatch_w2():
    x, w1, w2 = good()
    bad(ValueError, r"w2 must have shape \(C, Cr\) with C = x.shape\[1\] = 8, got \(7, 2\)",
        x, w1, w2[:7])


def test_cr_mismatch():
    x, w1, w2 = good()
    bad(ValueError, r"w2 must have shape \(C, Cr\) with Cr = w1.shape\[0\] = 2, got \(8, 3\)",
        x, w1, torch.randn(8, 3))


def test_weight_ndim():
    x, w1, w2 = good()
    bad(ValueError, r"w1 must have shape \(Cr, C\) or \(Cr, C, 1, 1\), got \(2, 8, 3, 3\)",
        x, torch.randn(2, 8, 3, 3), w2)
    bad(ValueError, r"w2 must have shape \(C, Cr\) or \(C, Cr, 1, 1\), got \(16,\)",
        x, w1, torch.randn(16))


def test_bias_shapes():
    x, w1, w2 = good()
    bad(ValueError, r"b1 must have shape \(Cr,\) = \(2,\), got \(8,\)", x, w1, w2, torch.randn(8))
    bad(ValueError, r"b2 must have shape \(C,\) = \(8,\), got \(2,\)", x, w1, w2, None,
        torch.randn(2))


def test_residual_shape():
    x, w1, w2 = good()
    bad(ValueError, r"residual must have the shape of x \(2, 8, 5, 5\), got \(2, 8, 5, 4\)",
        x, w1, w2, residual=torch.randn(2, 8, 5, 4))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_bad_dtype_x(dtype):
    x, w1, w2 = good()
    bad(TypeError, r"x must be a floating-point tensor .* got dtype", x.to(dtype), w1, w2)


def test_dtype_mismatch_names_argument():
    x, w1, w2 = good()
    bad(TypeError, r"w1 must have the dtype of x \(torch.float32\), got torch.float64",
        x, w1.double(), w2)
    bad(TypeError, r"w2 must have the dtype of x", x, w1, w2.to(torch.int64))
    bad(TypeError, r"residual must have the dtype of x", x, w1, w2, residual=x.half())
    bad(TypeError, r"b1 must have the dtype of x", x, w1, w2, torch.randn(2).double())


def test_not_a_tensor():
    x, w1, w2 = good()
    bad(TypeError, r"x must be a torch.Tensor, got list", [[1.0]], w1, w2)
    bad(TypeError, r"w2 must be a torch.Tensor, got ndarray", x, w1, w2.numpy())


def test_different_devices():
    x, w1, w2 = good()
    with pytest.raises(RuntimeError, match=r"w1 must be on the device of x \(cpu\), got meta"):
        fused_se(x, w1.to("meta"), w2)


@pytest.mark.parametrize("arg,value,exc,match", [
    ("squeeze", "mean", ValueError, r"squeeze must be one of \['avg', 'max'\], got 'mean'"),
    ("activation", "elu", ValueError,
     r"activation must be one of \['gelu', 'gelu_tanh', 'hardswish', 'relu', 'relu6', 'silu'\]"),
    ("gate", "softmax", ValueError, r"gate must be one of \['hardsigmoid', 'relu', 'sigmoid', "),
    ("gate", 3, TypeError, r"gate must be a string"),
    ("backend", "cudnn", ValueError, r"backend must be one of \['auto', 'cpu', 'cuda', "),
])
def test_unknown_options(arg, value, exc, match):
    x, w1, w2 = good()
    with pytest.raises(exc, match=match):
        fused_se(x, w1, w2, **{arg: value})


def test_unavailable_backend_says_why():
    x, w1, w2 = good()
    with pytest.raises(se_kernels.BackendUnavailableError, match=r"backend='cuda' cannot run: "):
        fused_se(x, w1, w2, backend="cuda")
    assert issubclass(se_kernels.BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_zero_gives_empty_result(backend):
    x, w1, w2 = good(n=0)
    x.requires_grad_(True)
    w1.requires_grad_(True)
    y = fused_se(x, w1, w2, backend=backend)
    assert y.shape == (0, 8, 5, 5)
    (g,) = torch.autograd.grad(y.sum(), w1)
    assert torch.equal(g, torch.zeros_like(w1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_never_modified(backend):
    x, w1, w2 = good()
    b1, b2, r = torch.randn(2), torch.randn(8), torch.randn_like(x)
    ins = [x, w1, w2, b1, b2, r]
    before = [t.clone() for t in ins]
    fused_se(x, w1, w2, b1, b2, residual=r, backend=backend)
    for a, b in zip(ins, before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_shaped_weights(backend):
    x, w1, w2 = good()
    y2 = fused_se(x, w1, w2, backend=backend)
    y4 = fused_se(x, w1[:, :, None, None], w2[:, :, None, None], backend=backend)
    torch.testing.assert_close(y2, y4)

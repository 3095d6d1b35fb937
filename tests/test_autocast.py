"""torch.autocast: fused_se is a lower-precision op, like linear and conv.

Under autocast (bfloat16 or float16, CPU or CUDA) x, the weights, the biases and the residual
are cast to the autocast dtype (float64 tensors are left alone, as autocast leaves them), the
kernel runs with autocast off, y has the autocast dtype and gradients flow back to the
original dtypes. Outside autocast, mixed dtypes stay an error.
"""

import pytest
import torch
from torch import nn

import se_kernels
from helpers import assert_close, requires_cuda
from se_kernels.ops import _unavailable_reason

AMP_DTYPES = (torch.bfloat16, torch.float16)


def _backend_devices():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [pytest.param(b, d, id=f"{b}-{d}") for b in se_kernels.available_backends()
            for d in devices if _unavailable_reason(b, d) is None]


BACKEND_DEVICES = _backend_devices()


def _inputs(device, x_dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 24, 5, 7, generator=g).to(x_dtype)
    params = [torch.randn(6, 24, generator=g) / 3, torch.randn(24, 6, generator=g) / 2,
              torch.randn(6, generator=g) / 2, torch.randn(24, generator=g) / 2]
    residual = torch.randn(3, 24, 5, 7, generator=g)  # float32, as an identity branch may be
    leaves = [t.to(device).requires_grad_(True) for t in [x] + params + [residual]]
    return leaves


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_autocast_casts_like_linear(backend, device, amp_dtype, x_dtype, squeeze):
    leaves = _inputs(device, x_dtype)
    x, w1, w2, b1, b2, r = leaves
    opts = dict(squeeze=squeeze, activation="silu", gate="hardsigmoid", backend=backend)
    with torch.autocast(device, dtype=amp_dtype):
        y = se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, **opts)
        lin = nn.functional.linear(x.mean((2, 3)), w2.t())  # what autocast makes of linear
    assert y.dtype == amp_dtype == lin.dtype
    assert y.shape == x.shape and y.device == x.device
    dy = torch.randn(y.shape, device=device).to(amp_dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    for t, g in zip(leaves, grads):
        assert g.dtype == t.dtype and g.shape == t.shape

    # Exactly the explicit casts, outside autocast.
    y_cast = se_kernels.fused_se(*(t.to(amp_dtype) for t in (x, w1, w2, b1, b2)),
                                 residual=r.to(amp_dtype), **opts)
    assert torch.equal(y, y_cast)
    for g, g_cast in zip(grads, torch.autograd.grad(y_cast, leaves, dy)):
        assert torch.equal(g, g_cast)

    # And the float64 reference of the cast inputs.
    ref_leaves = [t.detach().to(amp_dtype).double().requires_grad_(True) for t in leaves]
    rx, rw1, rw2, rb1, rb2, rr = ref_leaves
    y_ref = se_kernels.se_reference(rx, rw1, rw2, rb1, rb2, rr, squeeze, "silu", "hardsigmoid")
    assert_close(y, y_ref, amp_dtype, "y")
    for name, g, g_ref in zip(["dx", "dw1", "dw2", "db1", "db2", "dres"], grads,
                              torch.autograd.grad(y_ref, ref_leaves, dy.double())):
        assert_close(g, g_ref, amp_dtype, name)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_autocast_leaves_float64_alone(backend, device):
    x, w1, w2, b1, b2, r = _inputs(device, torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = se_kernels.fused_se(x, w1.double(), w2.double(), backend=backend)
        assert y.dtype == torch.float64
        # float64 x with float32 weights: autocast casts the weights only, and the mismatch
        # is reported as it is outside autocast (linear fails the same way).
        with pytest.raises(TypeError, match=r"w1 must have the dtype of x \(torch.float64\), "
                                            r"got torch.bfloat16"):
            se_kernels.fused_se(x, w1, w2, backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixed_dtypes_outside_autocast_still_rejected(backend, device):
    x, w1, w2, *_ = _inputs(device, torch.bfloat16)
    with pytest.raises(TypeError, match=r"w1 must have the dtype of x \(torch.bfloat16\)"):
        se_kernels.fused_se(x, w1, w2, backend=backend)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=False):
        with pytest.raises(TypeError, match=r"w1 must have the dtype of x"):
            se_kernels.fused_se(x, w1, w2, backend=backend)


class Block(nn.Module):
    """conv -> SE with the residual tail, as in an SE-ResNet block."""

    def __init__(self, backend):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.se = se_kernels.SqueezeExcitation(16, reduction=4, backend=backend)

    def forward(self, x):
        return self.se(self.conv(x), residual=x)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES, ids=str)
def test_module_under_autocast_trains_fp32_parameters(backend, device, amp_dtype):
    torch.manual_seed(0)
    block = Block(backend).to(device)
    x = torch.randn(2, 16, 6, 6, device=device)
    with torch.autocast(device, dtype=amp_dtype):
        y = block(x)  # conv gives amp_dtype, the identity x is float32
    assert y.dtype == amp_dtype
    y.float().square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_autocast_under_torch_compile(backend, device, compiler):
    """torch.compile(fullgraph=True) traces the autocast path without a graph break and gives
    the eager result (aot_eager: our tracing and autograd; inductor: also its lowering, for
    the default backend of the device only, to keep CI short)."""
    if device == "cpu" and backend not in ("reference", "cpu"):
        pytest.skip(f"backend {backend!r} is compiled in the GPU run")
    if compiler == "inductor" and backend != se_kernels.ops._select_backend("auto", device):
        pytest.skip("inductor runs with the device's default backend only")
    torch.manual_seed(0)
    block = Block(backend).to(device)
    x = torch.randn(2, 16, 6, 6, device=device, requires_grad=True)

    def step(inp):
        with torch.autocast(device, dtype=torch.bfloat16):
            return block(inp)

    eager = step(x)
    (g_eager,) = torch.autograd.grad(eager.float().sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    out = compiled(x)
    (g_comp,) = torch.autograd.grad(out.float().sum(), x)
    assert out.dtype == torch.bfloat16
    # Inductor may fuse the conv's cast differently: bfloat16 rounding apart, equal.
    torch.testing.assert_close(out, eager, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g_comp, g_eager, rtol=2e-2, atol=2e-2)


@requires_cuda
def test_cuda_autocast_ignores_cpu_autocast():
    """Autocast is per device: CPU autocast does not touch CUDA tensors and vice versa."""
    x, w1, w2, *_ = _inputs("cuda", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert se_kernels.fused_se(x, w1, w2).dtype == torch.float32
    xc, w1c, w2c, *_ = _inputs("cpu", torch.float32)
    with torch.autocast("cuda", dtype=torch.float16):
        assert se_kernels.fused_se(xc, w1c, w2c).dtype == torch.float32
        assert se_kernels.fused_se(x, w1, w2).dtype == torch.float16

"""torch.library registration: opcheck on every op, torch.compile(fullgraph=True) with no graph
break, available_backends, and an import that survives a missing extension."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import se_kernels
from helpers import make_inputs

HAS_C = se_kernels.EXTENSION_LOAD_ERROR is None
needs_c = pytest.mark.skipif(not HAS_C, reason=f"se_kernels._C not loaded: "
                             f"{se_kernels.EXTENSION_LOAD_ERROR}")


def op_args(n=2, c=6, h=3, w=5, cr=2, *, bias=True, residual=True, layout="contiguous",
            squeeze=0, act=1, gate=0, dtype=torch.float32, device="cpu"):
    inp = make_inputs(n, c, h, w, cr, bias=bias, residual=residual, layout=layout,
                      requires_grad=True, dtype=dtype, device=device)
    return (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual, squeeze, act, gate)


@needs_c
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias,residual,squeeze", [(True, True, 0), (False, False, 1),
                                                   (True, False, 1)])
def test_opcheck_se_forward_cpu(layout, bias, residual, squeeze):
    args = op_args(bias=bias, residual=residual, layout=layout, squeeze=squeeze)
    torch.library.opcheck(torch.ops.se_kernels.se_forward.default, args)


@needs_c
@pytest.mark.parametrize("with_y", [False, True])
def test_opcheck_se_backward_cpu(with_y):
    x, w1, w2, b1, b2, r, sq, act, gate = op_args(residual=with_y)
    y, z, hpre, gpre = torch.ops.se_kernels.se_forward(x, w1, w2, b1, b2, r, sq, act, gate)
    args = (torch.randn_like(y), x.detach(), w1.detach(), w2.detach(),
            y.detach() if with_y else None, z, hpre, gpre, sq, act, gate)
    torch.library.opcheck(torch.ops.se_kernels.se_backward.default, args)


class Bottleneck(nn.Module):
    """A small SE-ResNet bottleneck whose SE block and residual tail are one fused_se."""

    def __init__(self, c=16, backend="auto"):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(c // 2, c // 2, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(c // 2, c, 1, bias=False)
        self.se = se_kernels.SqueezeExcitation(c, reduction=4, backend=backend)

    def forward(self, x):
        out = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.se(self.conv3(out), residual=x)


@pytest.mark.parametrize("backend", se_kernels.available_backends())
def test_compile_fullgraph_matches_eager(backend):
    if backend not in ("reference", "cpu"):
        pytest.skip(f"backend {backend!r} runs on CUDA tensors here; see the GPU tests")
    torch.manual_seed(0)
    model = Bottleneck(backend=backend)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    eager = model(x)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    (g_comp,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-5, atol=1e-5)


def test_compile_has_no_graph_break():
    model = Bottleneck()
    x = torch.randn(2, 16, 9, 9)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_available_backends():
    names = se_kernels.available_backends()
    assert names[0] == "reference"
    assert set(names) <= {"reference", "cpu", "triton", "cuda"}
    assert ("cpu" in names) == HAS_C
    if not torch.cuda.is_available():
        assert "cuda" not in names


def test_import_without_extension():
    """Blocking se_kernels._C leaves a working package with the reference backend."""
    code = (
        "import sys; sys.modules['se_kernels._C'] = None\n"
        "import torch, se_kernels\n"
        "assert se_kernels.EXTENSION_LOAD_ERROR, 'expected a load error'\n"
        "assert 'cpu' not in se_kernels.available_backends()\n"
        "x = torch.randn(1, 4, 3, 3); w1 = torch.randn(2, 4); w2 = torch.randn(4, 2)\n"
        "y = se_kernels.fused_se(x, w1, w2)\n"
        "try:\n"
        "    se_kernels.fused_se(x, w1, w2, backend='cpu')\n"
        "except se_kernels.BackendUnavailableError as e:\n"
        "    assert 'se_kernels._C' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('cpu backend should be unavailable')\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

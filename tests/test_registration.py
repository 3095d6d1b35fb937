"""torch.library registration: opcheck on every op, torch.compile(fullgraph=True) with no graph
break, available_backends, and an import that survives a missing extension."""

import os
import subprocess
import sys

import pytest
import torch

import se_kernels
from se_kernels._options import ACTIVATIONS
from helpers import (Bottleneck, assert_compile_matches_eager, assert_no_graph_break, op_args,
                     opcheck_backward)

HAS_C = se_kernels.EXTENSION_LOAD_ERROR is None
needs_c = pytest.mark.skipif(not HAS_C, reason=f"se_kernels._C not loaded: "
                             f"{se_kernels.EXTENSION_LOAD_ERROR}")


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
    opcheck_backward(torch.ops.se_kernels.se_forward, torch.ops.se_kernels.se_backward.default,
                     with_y)


@needs_c
@pytest.mark.parametrize("act", range(len(ACTIVATIONS)), ids=list(ACTIVATIONS))
def test_opcheck_every_activation_cpu(act):
    """Each activation code through opcheck, forward and backward (the tests above use silu)."""
    torch.library.opcheck(torch.ops.se_kernels.se_forward.default,
                          op_args(act=act, gate=act % 4, squeeze=act % 2))
    opcheck_backward(torch.ops.se_kernels.se_forward, torch.ops.se_kernels.se_backward.default,
                     act % 2 == 0, act=act)


@pytest.mark.parametrize("backend", se_kernels.available_backends())
def test_compile_fullgraph_matches_eager(backend):
    if backend not in ("reference", "cpu"):
        pytest.skip(f"backend {backend!r} runs on CUDA tensors here; see the GPU tests")
    torch.manual_seed(0)
    assert_compile_matches_eager(Bottleneck(backend=backend), torch.randn(2, 16, 9, 9))


def test_compile_has_no_graph_break():
    assert_no_graph_break(Bottleneck(), torch.randn(2, 16, 9, 9))


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

"""pytest-benchmark micro-benchmarks of the SE block on the CPU, apart from the test suite:

    pytest benchmarks/                                   # all (about a minute)
    pytest benchmarks/ -k "conv5_x and fwd" --benchmark-columns=median,iqr,ops
    pytest benchmarks/ --benchmark-save=cpu --benchmark-compare   # keep and compare runs

SE-ResNet-50's four stage shapes at N = 1, float32, NCHW and NHWC, forward and
forward+backward: the eager SE module (timm / torchvision style), the reference backend and
the fused cpu backend, on the same parameters. Grouped per shape, layout and pass, so
pytest-benchmark's table compares the implementations. Threads: torch's default
(torch.set_num_threads / OMP_NUM_THREADS). The full comparison with torch.compile, bandwidth
and speedup columns is `se-kernels bench`.
"""

from __future__ import annotations

import pytest
import torch

import se_kernels
from se_kernels.bench.op import EagerSE
from se_kernels.bench.shapes import PRESETS

SHAPES = PRESETS["se-resnet50"]
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def _impl(name: str, eager: EagerSE):
    if name == "eager":
        return eager
    if name not in se_kernels.available_backends():
        pytest.skip(f"backend {name!r} is not available here")
    return se_kernels.SqueezeExcitation.from_parameters(
        eager.fc1.weight, eager.fc2.weight, eager.fc1.bias, eager.fc2.bias, backend=name)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("layout", list(FORMATS))
@pytest.mark.parametrize("impl", ["eager", "reference", "cpu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_se_block(benchmark, shape, impl, layout, mode):
    torch.manual_seed(0)
    grad = mode == "fwd+bwd"
    eager = EagerSE(shape.c, shape.cr).requires_grad_(grad)
    se = _impl(impl, eager)
    x = torch.randn(1, shape.c, shape.h, shape.w).contiguous(memory_format=FORMATS[layout])
    x.requires_grad_(grad)
    leaves = [x, *eager.parameters()]
    dy = torch.randn_like(x)
    benchmark.group = f"{shape.label} N=1 {layout} {mode}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), impl=impl)
    if grad:
        grads = benchmark(lambda: torch.autograd.grad(se(x), leaves, dy))
        expected = torch.autograd.grad(eager(x), leaves, dy)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    else:
        y = benchmark(se, x)
        torch.testing.assert_close(y, eager(x), rtol=1e-4, atol=1e-5)

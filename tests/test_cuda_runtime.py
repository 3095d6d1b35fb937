"""The op inside the CUDA runtime: CUDA graph capture and replay (forward, and a training step
through torch.cuda.make_graphed_callables), a non-default device (cuda:1 while cuda:0 is
current, and the reverse), non-default streams (the kernels must run on the current stream),
and no host synchronisation (which would also break graph capture). Every backend that runs
on CUDA tensors, the reference included. All skip without a CUDA device.
"""

import copy

import pytest
import torch

import se_kernels
from helpers import requires_cuda
from se_kernels.ops import _unavailable_reason

pytestmark = requires_cuda

CUDA_BACKENDS = [b for b in se_kernels.available_backends()
                 if torch.cuda.is_available() and _unavailable_reason(b, "cuda") is None]
OPTS = dict(squeeze="avg", activation="relu", gate="sigmoid")


def _inputs(device, *, n=8, c=64, h=14, w=14, cr=16, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    ts = [torch.randn(n, c, h, w, generator=gen),
          torch.randn(cr, c, generator=gen) / c**0.5, torch.randn(c, cr, generator=gen) / cr**0.5,
          torch.randn(cr, generator=gen) / 2, torch.randn(c, generator=gen) / 2,
          torch.randn(n, c, h, w, generator=gen)]
    return [t.to(device).requires_grad_(requires_grad) for t in ts]


def _call(args, backend):
    x, w1, w2, b1, b2, r = args
    return se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, backend=backend, **OPTS)


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_graph_capture_and_replay_forward(backend):
    static = _inputs("cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (Triton compiles, allocator settles) off-capture
        for _ in range(3):
            _call(static, backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = _call(static, backend)
    for seed in (1, 2, 3):
        fresh = _inputs("cuda", seed=seed)
        for s, f in zip(static, fresh):
            s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        _close(y_static, _call(fresh, backend), f"replay {seed}")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_graph_training_step(backend):
    """make_graphed_callables captures forward and backward of the module; replays give the
    eager outputs and gradients (inputs, residual and parameters)."""
    torch.manual_seed(0)
    se = se_kernels.SqueezeExcitation(64, reduction=4, backend=backend).cuda()
    eager = copy.deepcopy(se)
    x, *_, r = _inputs("cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(se, (x, r))
    for seed in (1, 2, 3):
        xs, *_, rs = _inputs("cuda", seed=seed, requires_grad=True)
        dy = torch.randn_like(xs)
        se.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)
        y = graphed(xs, rs)
        y.backward(dy)
        xe, re = xs.detach().clone().requires_grad_(True), rs.detach().clone().requires_grad_(True)
        ye = eager(xe, re)
        ye.backward(dy)
        torch.cuda.synchronize()
        _close(y, ye, "y")
        _close(xs.grad, xe.grad, "dx")
        _close(rs.grad, re.grad, "dresidual")
        for (name, p), pe in zip(se.named_parameters(), eager.parameters()):
            _close(p.grad, pe.grad, f"d{name}")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("data,current", [(1, 0), (0, 1)])
def test_non_default_device(backend, data, current):
    """Tensors on cuda:{data} while cuda:{current} is the current device: the op must guard
    the device (launch on the tensors' device, allocate there) and leave the other alone."""
    dev = f"cuda:{data}"
    args = _inputs(dev, requires_grad=True)
    ref_args = [t.detach().clone().requires_grad_(True) for t in args]
    dy = torch.randn(args[0].shape, device=dev)
    torch.cuda.synchronize(current)
    before = torch.cuda.memory_allocated(current)
    with torch.cuda.device(current):
        y = _call(args, backend)
        grads = torch.autograd.grad(y, args, dy)
        torch.cuda.synchronize(data)
    assert torch.cuda.memory_allocated(current) == before, "allocated on the current device"
    assert y.device == torch.device(dev) and all(g.device == y.device for g in grads)
    with torch.cuda.device(data):
        y_ref = _call(ref_args, "reference")
        grads_ref = torch.autograd.grad(y_ref, ref_args, dy)
    _close(y, y_ref, "y")
    for name, g, gr in zip(["dx", "dw1", "dw2", "db1", "db2", "dres"], grads, grads_ref):
        _close(g, gr, name)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_non_default_stream(backend):
    """On a side stream, x (and later dy) are written after a long sleep kernel; an op that
    launched on any other stream would read them before they are written (they hold NaN
    until then) instead of waiting."""
    args = _inputs("cuda", requires_grad=True)
    x_src, dy_src = args[0].detach().clone(), torch.randn_like(args[0])
    x_late = torch.full_like(x_src, float("nan")).requires_grad_(True)
    dy_late = torch.full_like(dy_src, float("nan"))
    leaves = [x_late] + args[1:]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time before x is written
        with torch.no_grad():
            x_late.copy_(x_src)
        y = _call(leaves, backend)
        torch.cuda._sleep(100_000_000)
        dy_late.copy_(dy_src)
        grads = torch.autograd.grad(y, leaves, dy_late)
    torch.cuda.synchronize()
    ref_leaves = [x_src.clone().requires_grad_(True)] + [
        t.detach().clone().requires_grad_(True) for t in args[1:]]
    y_ref = _call(ref_leaves, "reference")
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy_src)
    _close(y, y_ref, "y")
    for name, g, gr in zip(["dx", "dw1", "dw2", "db1", "db2", "dres"], grads, grads_ref):
        _close(g, gr, name)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_no_host_synchronisation(backend):
    """Forward and backward never wait for the GPU (no .item(), no blocking copies)."""
    args = _inputs("cuda", requires_grad=True)
    y = _call(args, backend)  # first calls: compilation, allocator and autograd warm-up
    torch.autograd.grad(y, args, torch.ones_like(y))
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = _call(args, backend)
        torch.autograd.grad(y, args, torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode(prev)

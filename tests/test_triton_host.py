"""Host work per call of the Triton ops, checked without timing (issue 13, item 7).

Timed tests are banned (a loaded CI machine makes them flaky), so the host-time cuts are
held by what they changed: how many tensors one call allocates (one flat scratch tensor
per call instead of one per scratch buffer, config.py/ops.py), and the safety of that
change: the outputs are tensors of their own (never the scratch, never shared between two
calls), and what autograd saved from one call stays valid after later calls.
tools/host_time_triton.py measures the time itself (docs/perf-notes.md).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import se_kernels
from helpers import assert_close, make_inputs, reference64, requires_triton
from se_kernels.triton import config, ops

pytestmark = requires_triton

aten = torch.ops.aten
# ops that return a tensor with storage of its own
ALLOCATING = {aten.empty.memory_format, aten.empty_like.default, aten.new_empty.default,
              aten.empty_strided.default, aten.new_empty_strided.default,
              aten.empty_permuted.default, aten.zeros.default, aten.zeros_like.default,
              aten.new_zeros.default, aten.full.default, aten.new_full.default,
              aten.clone.default, aten._to_copy.default}


class _CountAllocations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in ALLOCATING:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _Record:
    """wrap_triton stand-in: records kernel[grid](*args) instead of launching."""

    def __init__(self, launches):
        self.launches = launches

    def __call__(self, kernel):
        def getitem(grid):
            return lambda *args, **kwargs: self.launches.append((kernel, args))
        return type("K", (), {"__getitem__": lambda _, grid: getitem(grid)})()


@pytest.fixture
def no_launch(monkeypatch):
    """The ops' bodies as on an H200 (its plans), CPU tensors, launches recorded, not run:
    the host work of a GPU call."""
    launches = []
    monkeypatch.setattr(ops, "wrap_triton", _Record(launches))
    monkeypatch.setattr(ops, "device_of", lambda x: config.gpu_device(132))
    monkeypatch.setattr(ops, "_launches", lambda x: True)
    return launches


# (name, N, C, H, W, Cr, forced plan fields): the H200 plans of SE-ResNet-50 conv2_x and
# conv5_x at N = 1 (split; conv2_x NHWC with 4 pixel splits for the mean), and forced
# fused / split / weight-gradient-slice plans
SHAPES = [
    ("conv2_x-n1", 1, 256, 56, 56, 16, {}),
    ("conv5_x-n1", 1, 2048, 7, 7, 128, {}),
    ("fused", 4, 64, 7, 7, 4, dict(split=False)),
    ("split-s3", 2, 16, 13, 17, 4, dict(split=True, S=3, BHW=16, chunk=8)),
    ("split-ws2", 4, 32, 7, 7, 4, dict(split=True, chunk=16, WS=2, BN=1)),
]


def _inputs(n, c, h, w, cr, residual, layout=torch.channels_last):
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, h, w, generator=g).to(torch.bfloat16).contiguous(
        memory_format=layout)
    w1 = torch.randn(cr, c, generator=g).to(torch.bfloat16)
    w2 = torch.randn(c, cr, generator=g).to(torch.bfloat16)
    b1 = torch.randn(cr, generator=g).to(torch.bfloat16)
    b2 = torch.randn(c, generator=g).to(torch.bfloat16)
    r = torch.randn_like(x) if residual else None
    return x, w1, w2, b1, b2, r


@pytest.mark.parametrize("squeeze", [0, 1], ids=["avg", "max"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_allocations_per_call(shape, residual, squeeze, no_launch):
    """A forward call allocates its 4 outputs and one scratch tensor, a backward call its 6
    outputs and one scratch tensor, on every path (fused, split, pixel splits, weight-
    gradient slices; mean and max; with and without the residual): 8 and 11 before the
    flat scratch. Every scratch pointer of the launches is that one tensor, and none of
    them is an output."""
    _, n, c, h, w, cr, forced = shape
    x, w1, w2, b1, b2, r = _inputs(n, c, h, w, cr, residual)
    dev = config.gpu_device(132)
    with config.forced(**forced):
        fplan = config.make_plan(n, c, h * w, cr, 2, True, dev, hw_split=squeeze == 0)
        bplan = config.make_plan(n, c, h * w, cr, 2, True, dev)
        with _CountAllocations() as count:
            y, z, hpre, gpre = ops.triton_se_forward._init_fn(x, w1, w2, b1, b2, r, squeeze,
                                                              1, 0)
        assert len(count.ops) == 5, count.ops
        fwd = list(no_launch)
        no_launch.clear()
        dy = torch.randn_like(y)
        with _CountAllocations() as count:
            grads = ops.triton_se_backward._init_fn(dy, x, w1, w2, y if residual else None,
                                                    z, hpre, gpre, squeeze, 1, 0)
        assert len(count.ops) == 7, count.ops
    bwd = list(no_launch)
    assert len(fwd) == (2 if fplan.split else 1)
    assert len(bwd) == (3 if bplan.wslices(n)[0] > 1 else 2)
    if "S" in forced or shape[0] == "conv2_x-n1":
        assert bplan.S > 1   # the pixel-split path (zp, gq; split rows) is covered
    if "WS" in forced:
        assert bplan.wslices(n)[0] > 1   # pw in the scratch is covered
    known = {id(t) for t in (x, w1, w2, b1, b2, r, dy, y, z, hpre, gpre, *grads)}
    inputs = {id(t) for t in (x, w1, w2, b1, b2, r, dy)}
    for _, args in fwd + bwd:  # only read-only inputs may be passed twice (dummy pointers)
        ids = [id(a) for a in args if isinstance(a, torch.Tensor) and id(a) not in inputs]
        assert len(ids) == len(set(ids)), "a tensor the call allocates is passed twice"

    def scratch(launches):
        """The launches' tensor arguments that are neither an input nor an output."""
        return {id(a) for _, args in launches for a in args
                if isinstance(a, torch.Tensor)} - known
    assert len(scratch(fwd)) == 1 and len(scratch(bwd)) == 1
    assert scratch(fwd) != scratch(bwd)


def test_scratch_regions_are_disjoint_and_aligned():
    """ops._regions lays regions out back to back at multiples of 16 elements (Triton then
    specialises the offsets as divisible by 16: aligned loads as from a tensor of their
    own); a size of 0 is a dummy at offset 0."""
    sizes = [5, 0, 16, 1, 33, 0, 7]
    total, offs = ops._regions(*sizes)
    spans = [(o, o + s) for o, s in zip(offs, sizes) if s]
    assert all(o % 16 == 0 for o in offs)
    assert all(hi <= total for _, hi in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert [o for o, s in zip(offs, sizes) if not s] == [0, 0]
    assert ops._regions(0, 0) == (1, (0, 0))


def _storages(*ts):
    return [t.untyped_storage().data_ptr() for t in ts if t is not None and t.numel()]


@pytest.mark.parametrize("forced", [dict(split=True, S=3, BHW=16, chunk=4, BC=4),
                                    dict(split=False, G=2)], ids=["split-s3", "fused"])
def test_outputs_are_their_own_across_calls(forced, poison):
    """Two calls in a row (same shapes, so the same cached launch configuration): the
    outputs of each are distinct tensors, none shares storage with another output of
    either call, and the first call's outputs are unchanged by the second."""
    x1, w1, w2, b1, b2, r1 = _inputs(3, 8, 13, 17, 4, True, torch.contiguous_format)
    x2, _, _, _, _, r2 = _inputs(3, 8, 13, 17, 4, True, torch.contiguous_format)
    x2, r2 = x2 * 2, r2 - 1
    with config.forced(**forced):
        out1 = ops.forward_op(x1, w1, w2, b1, b2, r1, 0, 1, 0)
        keep = [t.clone() for t in out1]
        dy = torch.randn_like(x1)
        g1 = ops.backward_op(dy, x1, w1, w2, out1[0], *out1[1:], 0, 1, 0)
        keep_g = [t.clone() for t in g1]
        out2 = ops.forward_op(x2, w1, w2, b1, b2, r2, 0, 1, 0)
        g2 = ops.backward_op(dy, x2, w1, w2, out2[0], *out2[1:], 0, 1, 0)
    ptrs = _storages(*out1, *g1, *out2, *g2)
    assert len(ptrs) == len(set(ptrs)) == 20
    for a, b in zip(out1 + g1, keep + keep_g):
        assert torch.equal(a, b)
    assert not torch.equal(out1[0], out2[0])   # the second call did compute something else


@pytest.mark.parametrize("forced", [dict(split=True, S=3, BHW=16, chunk=4, BC=4, WS=2, BN=1),
                                    dict(split=False, G=2)], ids=["split-s3-ws2", "fused"])
def test_saved_tensors_survive_later_calls(forced, poison):
    """Autograd saves x, the weights, y, z, hpre and gpre from the forward: two forwards,
    then both backwards in reverse order, each against the float64 oracle."""
    inps = [make_inputs(3, 8, 13, 17, 4, bias=True, residual=True, requires_grad=True,
                        generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    with config.forced(**forced):
        ys = [se_kernels.fused_se(*i.args(), residual=i.residual, activation="silu",
                                  backend="triton") for i in inps]
        for inp, y in reversed(list(zip(inps, ys))):
            dy = torch.randn(y.shape, dtype=torch.float64).to(y.dtype).double()
            grads = torch.autograd.grad(y, inp.tensors(), dy.to(y.dtype))
            y_ref, g_ref = reference64(inp, "avg", "silu", "sigmoid", grad_out=dy)
            assert_close(y, y_ref, torch.float32, "y")
            for name, a, b in zip(["dx", "dw1", "dw2", "db1", "db2", "dres"], grads, g_ref):
                assert_close(a, b, torch.float32, name)

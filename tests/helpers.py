"""Shared test helpers: input makers, the float64 oracle, error metrics and tolerances."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

import se_kernels
from se_kernels import se_reference

# (dtype, tolerance on ||out - ref|| / ||ref||): DESIGN.md section 5. float64 is not 1e-12:
# PyTorch's own hardsigmoid backward multiplies by the float constant 1.0f/6.0f, a 3e-8
# relative error in the float64 oracle's gradient.
TOLERANCES = {
    torch.float64: 1e-7,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}
LOW_PRECISION = (torch.float16, torch.bfloat16)

SQUEEZES = ("avg", "max")
ACTIVATIONS = ("relu", "silu", "hardswish", "relu6", "gelu", "gelu_tanh")
GATES = ("sigmoid", "hardsigmoid", "tanh", "relu")
LAYOUTS = ("contiguous", "channels_last", "strided")


def option_matrix():
    """(squeeze, activation, gate, bias, residual) combinations: all of them for relu and silu
    (64), then, for each later activation, each (squeeze, gate) with (bias, residual) rotating
    (8 each), so that every pair of option values occurs without tripling every option test."""
    full = list(itertools.product(SQUEEZES, ACTIVATIONS[:2], GATES, (False, True), (False, True)))
    flags = list(itertools.product((False, True), (False, True)))
    more = [(squeeze, act, gate, *flags[(i + j + 2 * k) % 4])
            for k, act in enumerate(ACTIVATIONS[2:])
            for i, squeeze in enumerate(SQUEEZES) for j, gate in enumerate(GATES)]
    return full + more


def option_id(opts) -> str:
    squeeze, act, gate, bias, res = opts
    return f"{squeeze}-{act}-{gate}{'-bias' if bias else ''}{'-res' if res else ''}"


@dataclass
class SEInputs:
    x: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    b1: torch.Tensor | None
    b2: torch.Tensor | None
    residual: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.w1, self.w2, self.b1, self.b2, self.residual)
                if t is not None]

    def args(self):
        return (self.x, self.w1, self.w2, self.b1, self.b2)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: the left half of a wider tensor
        wide = torch.cat([t, torch.randn_like(t)], dim=3)
        return wide[..., : t.shape[3]]
    raise ValueError(layout)


def make_inputs(n, c, h, w, cr, *, dtype=torch.float32, layout="contiguous", bias=False,
                residual=False, device="cpu", generator=None, requires_grad=False,
                scale=1.0) -> SEInputs:
    """Fresh random inputs (never zeros). Weights have nn.Linear's scale (1/sqrt(fan_in)), so
    gates stay in their interesting range instead of saturating to exactly 0 or 1."""
    g = generator

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std)

    x = _layout((rnd(n, c, h, w) * scale).to(dtype), layout)
    w1 = (rnd(cr, c, std=1 / c ** 0.5) * 2).to(dtype)
    w2 = (rnd(c, cr, std=1 / cr ** 0.5) * 2).to(dtype)
    b1 = (rnd(cr, std=0.5)).to(dtype) if bias else None
    b2 = (rnd(c, std=0.5)).to(dtype) if bias else None
    r = _layout(rnd(n, c, h, w).to(dtype), layout) if residual else None
    out = SEInputs(*(None if t is None else t.to(device) for t in (x, w1, w2, b1, b2, r)))
    if requires_grad:
        for t in out.tensors():
            t.requires_grad_(True)
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN if out has NaN where ref does not)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    nan_out, nan_ref = torch.isnan(out), torch.isnan(ref)
    if not torch.equal(nan_out, nan_ref):
        return float("nan")
    out, ref = out.masked_fill(nan_ref, 0), ref.masked_fill(nan_ref, 0)
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output",
                 baseline: torch.Tensor | None = None):
    """||out - ref|| / ||ref|| <= the dtype's tolerance, and no element far off.

    With a ``baseline`` (the reference backend's result at the same precision), the
    flash-attention rule applies as well: out may be off by up to twice the baseline's error,
    since rounding to 8 or 11 bits, or cancellation in a float32 sum, is not the kernel's fault.
    """
    tol = TOLERANCES[dtype]
    if baseline is not None:
        tol = max(tol, 2 * rel_err(baseline, ref))
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"
    # Element-wise: within 20x tol of the largest magnitude, except for a few elements (one
    # in 10^5): an element sitting on a relu kink (x*s + residual within float32 rounding of
    # 0) legitimately takes the other branch than the float64 oracle.
    ref64 = ref.detach().double().cpu()
    finite = torch.isfinite(ref64)
    if finite.any():
        scale = ref64[finite].abs().max().clamp_min(1e-30)
        errs = (out.detach().double().cpu() - ref64)[finite].abs() / scale
        allowed = max(1, errs.numel() // 100_000) if errs.numel() > 1000 else 0
        far = int((errs > 20 * tol).sum())
        assert far <= allowed, (f"{what}: {far} elements off by more than {20 * tol:.1e} "
                                f"(max {errs.max().item():.3e})")


def reference64(inp: SEInputs, squeeze, activation, gate, *, grad_out=None):
    """The oracle: se_reference on float64 copies. Returns y (and the input gradients for
    grad_out if given, in the order of inp.tensors())."""
    leaves = [t.detach().double().requires_grad_(grad_out is not None) for t in inp.tensors()]
    it = iter(leaves)
    x, w1, w2 = next(it), next(it), next(it)
    b1 = next(it) if inp.b1 is not None else None
    b2 = next(it) if inp.b2 is not None else None
    r = next(it) if inp.residual is not None else None
    y = se_reference(x, w1, w2, b1, b2, r, squeeze, activation, gate)
    if grad_out is None:
        return y, None
    grads = torch.autograd.grad(y, leaves, grad_out.double())
    return y, grads


def _run(backend, inp: SEInputs, squeeze, activation, gate, grad_out):
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                            activation=activation, gate=gate, backend=backend)
    if grad_out is None:
        return y, None
    return y, torch.autograd.grad(y, inp.tensors(), grad_out.to(y.dtype).to(y.device))


def check_backend(backend: str, inp: SEInputs, squeeze: str, activation: str, gate: str,
                  *, grads: bool = True):
    """Runs fused_se on ``backend`` and compares y (and every gradient) with the float64
    oracle; below float64 the reference backend at the same precision is the baseline of the
    flash-attention rule."""
    x = inp.x
    # grad_out is rounded to x's dtype first, so that the oracle differentiates at exactly the
    # values the kernel sees (rounding it inside the comparison would be amplified by
    # cancellation in the sums over H*W and blamed on the kernel).
    grad_out = (torch.randn(x.shape, dtype=torch.float64).to(x.dtype).double().to(x.device)
                if grads else None)
    y, g = _run(backend, inp, squeeze, activation, gate, grad_out)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    fmt = se_kernels.ops.memory_format_of(x)
    assert y.is_contiguous(memory_format=fmt), f"y lost the layout of x: {y.stride()}"
    y_ref, g_ref = reference64(inp, squeeze, activation, gate, grad_out=grad_out)
    y_base, g_base = (None, [None] * 6)
    if x.dtype != torch.float64 and backend != "reference":
        y_base, g_base = _run("reference", inp, squeeze, activation, gate, grad_out)
    assert_close(y, y_ref, x.dtype, "y", y_base)
    if grads:
        names = ["dx", "dw1", "dw2"] + (["db1", "db2"] if inp.b1 is not None else []) + (
            ["dresidual"] if inp.residual is not None else [])
        for name, a, b, base, t in zip(names, g, g_ref, g_base, inp.tensors()):
            assert a.dtype == t.dtype and a.shape == t.shape, name
            assert_close(a, b, x.dtype, name, base)
    return y


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device (none visible)")
requires_triton = pytest.mark.skipif(
    "triton" not in se_kernels.available_backends(),
    reason="the triton backend cannot run here (no CUDA device and TRITON_INTERPRET unset, "
           "or Triton missing)")


# ---- torch.library: opcheck and torch.compile, shared by the per-backend test files ----------

def op_args(n=2, c=6, h=3, w=5, cr=2, *, bias=True, residual=True, layout="contiguous",
            squeeze=0, act=1, gate=0, dtype=torch.float32, device="cpu"):
    """Positional arguments of the ``se_forward`` schemas (options as their integer codes)."""
    inp = make_inputs(n, c, h, w, cr, bias=bias, residual=residual, layout=layout,
                      requires_grad=True, dtype=dtype, device=device)
    return (inp.x, inp.w1, inp.w2, inp.b1, inp.b2, inp.residual, squeeze, act, gate)


def opcheck_backward(forward_op, backward_op, with_y: bool, device="cpu", act=1):
    """opcheck on a backward op, fed with what its forward op saved (y only with the residual
    tail, where the backward needs its relu mask)."""
    x, w1, w2, b1, b2, r, sq, act, gate = op_args(residual=with_y, device=device, act=act)
    y, z, hpre, gpre = forward_op(x, w1, w2, b1, b2, r, sq, act, gate)
    args = (torch.randn_like(y), x.detach(), w1.detach(), w2.detach(),
            y.detach() if with_y else None, z, hpre, gpre, sq, act, gate)
    torch.library.opcheck(backward_op, args)


class Bottleneck(torch.nn.Module):
    """A small SE-ResNet bottleneck whose SE block and residual tail are one fused_se."""

    def __init__(self, c=16, backend="auto"):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c // 2, 1, bias=False)
        self.conv2 = torch.nn.Conv2d(c // 2, c // 2, 3, padding=1, bias=False)
        self.conv3 = torch.nn.Conv2d(c // 2, c, 1, bias=False)
        self.se = se_kernels.SqueezeExcitation(c, reduction=4, backend=backend)

    def forward(self, x):
        out = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.se(self.conv3(out), residual=x)


def assert_compile_matches_eager(model, x, *, rtol=1e-5, atol=1e-5):
    """torch.compile(fullgraph=True) of ``model`` gives eager's output and input gradient.

    No TF32 in the convs on CUDA: Inductor may run them in another layout (its channels_last
    layout optimisation) with another cuDNN algorithm, and TF32 differences (~1e-3) between
    the two would swamp the tolerance the SE kernels are checked at."""
    x = x.detach().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        eager = model(x)
        (g_eager,) = torch.autograd.grad(eager.sum(), x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        out = compiled(x)
        (g_comp,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_comp, g_eager, rtol=rtol, atol=atol)


def assert_no_graph_break(model, x):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics and affine parameters, so that a comparison of a whole
    network sees every layer (fresh ones, some zero-initialised, leave outputs near 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.affine:
                m.weight.data = torch.rand(n, generator=g) + 0.5
                m.bias.data = torch.randn(n, generator=g) * 0.1
            if m.track_running_stats:
                m.running_mean = torch.randn(n, generator=g) * 0.1
                m.running_var = torch.rand(n, generator=g) + 0.5
    return model


def gpu_skip_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on a CUDA device here (None when it can): no device, the
    backend not built or not importable."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (none visible)"
    if backend not in se_kernels.available_backends():
        return f"the {backend} backend is not available here"
    why = se_kernels.ops._unavailable_reason(backend, "cuda")
    return None if why is None else f"the {backend} backend cannot run: {why}"

"""Property-based fuzzing (hypothesis) of every backend against the reference, forward and
backward.

Each example draws a shape, dtype, options, a layout for x and for the residual (contiguous,
channels_last, sliced, permuted, zero-stride expanded views), a weight form (2-D, 1x1-conv,
transposed storage), a value regime (normal, tiny, huge, denormal, NaN/inf injected into x and
the residual) and the layout of the upstream gradient. Gradients are taken for the leaves the
views are made from, so the views' own backward is checked too.

Values: y and every gradient against the float64 oracle (``se_reference`` on float64 copies of
the same rounded inputs, with derivatives of the gates that do not cancel: ``accurate_gates``).
Errors are measured against the sum over samples of each sample's contribution (so a weight
gradient whose per-sample terms cancel is not asked for more than its terms allow), and the
tolerance is the dtype's or, by the flash-attention rule, twice the error of the reference
backend at the same dtype, run as is and with every dimension reversed (all sums in another
order).

Non-finite values, judged by the reference backend at the same dtype:

* forward: NaN, +inf and -inf sit exactly where the reference puts them;
* backward: every element the reference makes NaN is non-finite in the backend too (no finite
  gradient where the reference has NaN). The backend may give inf where the reference has NaN:
  the kernels compute sigmoid' as sigma(v) sigma(-v) and tanh' as sech^2(v), which stay
  non-zero where PyTorch's (1 - y) y and 1 - y^2 round to 0 (so inf * 0 = NaN in PyTorch and
  inf in the kernel); which of the two non-finite values appears is not a property we fix;
* backward, stricter (``test_fuzz_special_gradients_finite_where_reference_finite``, and always
  outside the NaN/inf regime): the backend is finite wherever the reference is.

Profiles (tests/conftest.py): "ci" (the default: bounded, derandomised, so CI sees the same
examples every run) and "gpu" (many more random examples): ``HYPOTHESIS_PROFILE=gpu``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import currently_in_test_context, given, note, settings
from hypothesis import strategies as st

import se_kernels
from helpers import ACTIVATIONS, TOLERANCES
from se_kernels import reference, se_reference
from se_kernels.ops import _unavailable_reason


def _backend_devices():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(b, d) for b in se_kernels.available_backends() if b != "reference"
            for d in devices if _unavailable_reason(b, d) is None]


BACKEND_DEVICES = _backend_devices()
_IDS = [f"{b}-{d}" for b, d in BACKEND_DEVICES]

def _backend_params():
    params = [pytest.param(b, d, id=i) for (b, d), i in zip(BACKEND_DEVICES, _IDS)]
    if not params:
        params.append(pytest.param(None, None, marks=pytest.mark.skip(
            reason="no backend besides the reference is available")))
    return params


# ---- the cases ------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# x / residual layouts: how the (float64) base tensor is made and viewed. The base is the leaf
# that gradients are taken for, so a view's backward (e.g. the sum over an expanded dimension)
# is part of what is checked.
LAYOUTS = ("contiguous", "channels_last", "sliced_w", "sliced_c", "channels_last_sliced_c",
           "permuted", "expand_hw", "expand_n", "expand_c", "expand_all")
# Value regimes of x (and residual): the scale of randn, by dtype, and whether NaN/inf are
# injected. "huge" keeps float32 sums in range (so every backend overflows at the same place)
# and makes float16 outputs overflow.
REGIMES = ("normal", "tiny", "huge", "denormal", "special")
_SCALES = {
    "normal": {torch.float64: 1.0, torch.float32: 1.0, torch.bfloat16: 1.0, torch.float16: 1.0},
    "tiny": {torch.float64: 1e-3, torch.float32: 1e-3, torch.bfloat16: 1e-3,
             torch.float16: 1e-3},
    "huge": {torch.float64: 1e60, torch.float32: 1e15, torch.bfloat16: 1e15,
             torch.float16: 1e3},
    "denormal": {torch.float64: 1e-308, torch.float32: 1e-38, torch.bfloat16: 1e-38,
                 torch.float16: 1e-5},
    "special": {torch.float64: 1.0, torch.float32: 1.0, torch.bfloat16: 1.0, torch.float16: 1.0},
}
WEIGHT_FORMS = ("2d", "conv1x1", "transposed")
GRAD_FORMS = ("contiguous", "channels_last", "expanded")


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    h: int
    w: int
    cr: int
    dtype: torch.dtype
    x_layout: str
    residual_layout: str | None
    weight_form: str
    bias: bool
    squeeze: str
    activation: str
    gate: str
    regime: str
    grad_form: str
    seed: int


@st.composite
def cases(draw, regimes=REGIMES):
    n = draw(st.integers(0, 5) | st.just(1))
    c = draw(st.integers(1, 40) | st.sampled_from([1, 64]))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    return Case(
        n=n, c=c, h=h, w=w, cr=draw(st.integers(1, 8)),
        dtype=draw(st.sampled_from(DTYPES)),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        residual_layout=draw(st.none() | st.sampled_from(LAYOUTS)),
        weight_form=draw(st.sampled_from(WEIGHT_FORMS)),
        bias=draw(st.booleans()),
        squeeze=draw(st.sampled_from(("avg", "max"))),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        gate=draw(st.sampled_from(("sigmoid", "hardsigmoid", "tanh", "relu"))),
        regime=draw(st.sampled_from(regimes)),
        grad_form=draw(st.sampled_from(GRAD_FORMS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _base_shape(layout: str, n, c, h, w):
    return {"sliced_w": (n, c, h, w + 3), "sliced_c": (n, 2 * c, h, w),
            "channels_last_sliced_c": (n, c + 3, h, w), "permuted": (n, h, c, w),
            "expand_hw": (n, c, 1, w), "expand_n": (1, c, h, w), "expand_c": (n, 1, h, w),
            "expand_all": (1, 1, 1, 1)}.get(layout, (n, c, h, w))


def _make_base(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The leaf tensor in its storage layout (channels_last bases are stored channels_last)."""
    if layout in ("channels_last", "channels_last_sliced_c"):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _view(base: torch.Tensor, layout: str, n, c, h, w) -> torch.Tensor:
    """The (n, c, h, w) tensor fused_se sees, a view of base."""
    if layout in ("contiguous", "channels_last"):
        return base
    if layout == "sliced_w":
        return base[..., 1:w + 1]
    if layout == "sliced_c":
        return base[:, ::2]
    if layout == "channels_last_sliced_c":
        return base[:, 2:c + 2]
    if layout == "permuted":
        return base.permute(0, 2, 1, 3)
    return base.expand(n, c, h, w)  # the expand_* layouts: zero strides


def _values(shape, regime, dtype, gen) -> torch.Tensor:
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * _SCALES[regime][dtype]
    if regime == "special" and t.numel() > 0:
        k = int(torch.randint(1, 4, (), generator=gen))
        idx = torch.randint(0, t.numel(), (k,), generator=gen)
        specials = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        t.view(-1)[idx] = specials[torch.randint(0, 3, (k,), generator=gen)]
    return t


@dataclass
class Materialised:
    """float64 copies of a case's leaves, already rounded to the case's dtype."""
    leaves: dict  # name -> float64 tensor (x, residual in their base shapes)
    grad_out: torch.Tensor  # (n, c, h, w), rounded to dtype


def materialise(case: Case) -> Materialised:
    gen = torch.Generator().manual_seed(case.seed)
    n, c, h, w, cr = case.n, case.c, case.h, case.w, case.cr

    def rounded(t):
        return t.to(case.dtype).double()

    leaves = {"x": rounded(_values(_base_shape(case.x_layout, n, c, h, w), case.regime,
                                   case.dtype, gen))}
    # Weights at nn.Linear's scale times 2, so that gates sit in their interesting range.
    leaves["w1"] = rounded(torch.randn(cr, c, generator=gen, dtype=torch.float64) * 2 / c ** 0.5)
    leaves["w2"] = rounded(torch.randn(c, cr, generator=gen, dtype=torch.float64) * 2 / cr ** 0.5)
    if case.bias:
        leaves["b1"] = rounded(torch.randn(cr, generator=gen, dtype=torch.float64) * 0.5)
        leaves["b2"] = rounded(torch.randn(c, generator=gen, dtype=torch.float64) * 0.5)
    if case.residual_layout is not None:
        shape = _base_shape(case.residual_layout, n, c, h, w)
        leaves["residual"] = rounded(_values(shape, case.regime, case.dtype, gen))
    grad_out = rounded(torch.randn(n, c, h, w, generator=gen, dtype=torch.float64))
    return Materialised(leaves, grad_out)


def _weight(t: torch.Tensor, form: str) -> torch.Tensor:
    if form == "conv1x1":
        return t[:, :, None, None]
    if form == "transposed":  # same values, transposed storage: a non-contiguous (rows, cols)
        return t.t().contiguous().t()
    return t


def _grad_out(g: torch.Tensor, form: str) -> torch.Tensor:
    if form == "channels_last":
        return g.contiguous(memory_format=torch.channels_last)
    if form == "expanded" and g.numel() > 0:  # what y.sum() hands backward: zero strides
        return g.reshape(-1)[:1].reshape(1, 1, 1, 1).expand(g.shape)
    return g


class _Sigmoid(torch.autograd.Function):
    """sigmoid whose derivative is sigma(v) sigma(-v): no cancellation where sigma(v) -> 1."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.sigmoid(v)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g * (torch.sigmoid(v) * torch.sigmoid(-v))


class _Tanh(torch.autograd.Function):
    """tanh whose derivative is sech^2(v): no cancellation where tanh(v) -> +-1."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.tanh(v)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g * (1 / torch.cosh(v).square())


class _HardSigmoid(torch.autograd.Function):
    """hardsigmoid whose derivative is exactly 1/6 on (-3, 3) (PyTorch multiplies by the float
    constant 1.0f / 6.0f, a 3e-8 relative error even in float64); 0 elsewhere, selected."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.nn.functional.hardsigmoid(v)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return torch.where((v > -3) & (v < 3), g / 6, torch.zeros_like(g))


@contextlib.contextmanager
def accurate_gates():
    """The float64 oracle's gates. Autograd differentiates torch.sigmoid as (1 - y) y and
    torch.tanh as 1 - y^2, which round to exactly 0 in float64 once |v| > ~37 (sigmoid) or
    ~19 (tanh), while the true derivative (and the kernels' sigma(v) sigma(-v), sech^2) is
    ~e^-|v|: a kernel that is right would be blamed for a non-zero gradient. Likewise
    hardsigmoid's 1/6. The values are se_reference's; only the rounding of the derivatives
    differs."""
    saved = dict(reference._GATES)
    reference._GATES.update(sigmoid=_Sigmoid.apply, tanh=_Tanh.apply,
                            hardsigmoid=_HardSigmoid.apply)
    try:
        yield
    finally:
        reference._GATES.update(saved)


def run(case: Case, m: Materialised, *, backend: str | None, dtype, device, flip=False,
        grad_out=None):
    """fused_se (or, with backend=None, se_reference) on the case's inputs in dtype on device.
    Returns (y, {leaf name: gradient}), in float64 on the CPU.

    flip=True runs the same problem with N, C, Cr, H and W all reversed (and the result
    reversed back): the same values, every sum in another order, which is how the
    same-precision baseline samples its rounding noise."""
    n, c, h, w = case.n, case.c, case.h, case.w
    leaves = {k: _make_base(v.to(device=device, dtype=dtype),
                            {"x": case.x_layout, "residual": case.residual_layout}.get(k, ""))
              .requires_grad_(True) for k, v in m.leaves.items()}
    x = _view(leaves["x"], case.x_layout, n, c, h, w)
    r = leaves.get("residual")
    if r is not None:
        r = _view(r, case.residual_layout, n, c, h, w)
    w1 = _weight(leaves["w1"], case.weight_form)
    w2 = _weight(leaves["w2"], case.weight_form)
    b1, b2 = leaves.get("b1"), leaves.get("b2")
    dy = (m.grad_out if grad_out is None else grad_out).to(device=device, dtype=dtype)
    if flip:
        assert backend is None
        x, dy = x.flip(0, 1, 2, 3), dy.flip(0, 1, 2, 3)
        r = None if r is None else r.flip(0, 1, 2, 3)
        w1, w2 = w1.flip(0, 1), w2.flip(0, 1)
        b1 = None if b1 is None else b1.flip(0)
        b2 = None if b2 is None else b2.flip(0)
    if backend is None:
        w1, w2 = w1.reshape(w1.shape[:2]), w2.reshape(w2.shape[:2])
    if backend is None and r is not None and dtype != case.dtype:
        # The oracle of the residual tail. The ops take the relu mask of backward from y as
        # stored, in x's dtype (se_backward's y argument): where x*s + r > 0 rounds to 0
        # (below float16's smallest subnormal, 6e-8), the gradient stops, as it would in
        # PyTorch computing in float16. The reference masks before rounding; the oracle
        # follows the ops' contract.
        t = se_reference(x, w1, w2, b1, b2, None, case.squeeze, case.activation,
                         case.gate) + r
        with torch.no_grad():
            off = t.to(case.dtype).to(dtype) <= 0
        y = t.masked_fill(off, 0)
    elif backend is None:
        y = se_reference(x, w1, w2, b1, b2, r, case.squeeze, case.activation, case.gate)
    else:
        y = se_kernels.fused_se(x, w1, w2, b1, b2, residual=r, squeeze=case.squeeze,
                                activation=case.activation, gate=case.gate, backend=backend)
        assert y.dtype == dtype and y.shape == (n, c, h, w) and y.device.type == device
        fmt = se_kernels.ops.memory_format_of(x)
        assert y.is_contiguous(memory_format=fmt), f"y lost the layout of x: {y.stride()}"
    names = list(leaves)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], _grad_out(dy, case.grad_form),
                                allow_unused=True)
    if flip:
        y = y.flip(0, 1, 2, 3)
    out = {}
    for k, g in zip(names, grads):
        assert g is not None, f"no gradient for {k}"
        assert g.dtype == dtype and g.shape == leaves[k].shape, k
        out[k] = g.detach().double().cpu()
    return y.detach().double().cpu(), out


def oracle(case: Case, m: Materialised):
    """The float64 oracle, and the scale each result's error is measured against: the sum
    over samples of the magnitudes of each sample's contribution, so that a weight gradient
    whose per-sample terms cancel is not held to a relative error its terms cannot give."""
    with accurate_gates():
        y, g = run(case, m, backend=None, dtype=torch.float64, device="cpu")
        scale = {k: torch.zeros_like(v) for k, v in g.items()}
        if case.n <= 1 or case.grad_form == "expanded":
            scale = {k: v.abs() for k, v in g.items()}
        else:
            for i in range(case.n):
                dy = torch.zeros_like(m.grad_out)
                dy[i] = m.grad_out[i]
                _, gi = run(case, m, backend=None, dtype=torch.float64, device="cpu",
                            grad_out=dy)
                for k, v in gi.items():
                    scale[k] += v.abs()
    return y, g, y.abs(), scale


def _masked(t, mask):
    return t.masked_fill(~mask, 0)


def _norm(t: torch.Tensor) -> float:
    """The 2-norm without overflow or underflow of the squares (values of 1e-200 or 1e200)."""
    big = t.abs().max().item() if t.numel() else 0.0
    return big * (t / big).norm().item() if big > 0 else 0.0


def check_values(what, out, ref, scale, baselines, dtype):
    """Where everything is finite: ||out - ref|| <= tol ||scale||, and no element off by more
    than 20 tol max(scale). tol is the dtype's (helpers.TOLERANCES) or, by the flash-attention
    rule, twice the error of the same-precision reference in either summation order."""
    mask = torch.isfinite(ref) & torch.isfinite(out) & torch.isfinite(scale)
    for b in baselines:
        mask &= torch.isfinite(b)
    out, ref, scale = _masked(out, mask), _masked(ref, mask), _masked(scale, mask)
    denom = max(_norm(scale), _norm(ref), 1e-300)

    def err(t):
        return _norm(t - ref) / denom

    tol = max([TOLERANCES[dtype]] + [2 * err(_masked(b, mask)) for b in baselines])
    e = err(out)
    assert e <= tol, f"{what}: relative error {e:.3e} > {tol:.1e} ({dtype})"
    if out.numel() > 0:
        worst = ((out - ref).abs().max() / max(scale.max().item(), ref.abs().max().item(),
                                               1e-300)).item()
        assert worst <= 20 * tol, f"{what}: an element is off by {worst:.3e} > {20 * tol:.1e}"


def check_forward_specials(out, base):
    """NaN, +inf and -inf exactly where the reference at the same dtype has them."""
    for name, f in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = f(out), f(base)
        assert torch.equal(got, want), (
            f"y: {name} at {int((got & ~want).sum())} elements where the reference has none, "
            f"missing at {int((want & ~got).sum())}")


def check_no_finite_where_nan(what, out, base):
    bad = torch.isnan(base) & torch.isfinite(out)
    assert not bad.any(), (f"{what}: finite at {int(bad.sum())} elements where the reference "
                           f"has NaN, e.g. index {bad.nonzero()[0].tolist()}")


def check_finite_where_finite(what, out, base):
    bad = torch.isfinite(base) & ~torch.isfinite(out)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: non-finite at {int(bad.sum())} elements where the "
                             f"reference is finite, e.g. {what}{list(i)} = {out[i].item()}, "
                             f"reference {base[i].item()}")


def compare(case: Case, backend: str, device: str, *, strict_finite: bool = False):
    if currently_in_test_context():
        note(repr(case))
    m = materialise(case)
    y, g = run(case, m, backend=backend, dtype=case.dtype, device=device)
    y_base, g_base = run(case, m, backend=None, dtype=case.dtype, device=device)
    y_flip, g_flip = run(case, m, backend=None, dtype=case.dtype, device=device, flip=True)
    y_ref, g_ref, y_scale, g_scale = oracle(case, m)
    check_forward_specials(y, y_base)
    check_values("y", y, y_ref, y_scale, [y_base, y_flip], case.dtype)
    for k in g:
        what = f"d{k}"
        check_no_finite_where_nan(what, g[k], g_base[k])
        if strict_finite or case.regime != "special":
            check_finite_where_finite(what, g[k], g_base[k])
        check_values(what, g[k], g_ref[k], g_scale[k], [g_base[k], g_flip[k]], case.dtype)


# ---- the properties -------------------------------------------------------------------------

def _settings(backend, device):
    """The profile's settings; a fifth of the examples where Triton runs in its interpreter."""
    if backend == "triton" and device == "cpu":
        return settings(max_examples=max(10, settings.default.max_examples // 5))
    return settings()


@pytest.mark.parametrize("backend,device", _backend_params())
def test_fuzz_against_reference(backend, device, poison):
    """Every drawn case: y and all gradients match the float64 oracle, specials as above."""

    @_settings(backend, device)
    @given(case=cases())
    def prop(case):
        compare(case, backend, device)

    prop()


@pytest.mark.parametrize("backend,device", _backend_params())
def test_fuzz_special_gradients_finite_where_reference_finite(backend, device):
    """NaN/inf in x or the residual: the backend's gradients are finite wherever the
    reference's are (an inactive relu or a saturated hardsigmoid stops a NaN/inf gradient)."""

    @_settings(backend, device)
    @given(case=cases(regimes=("special",)))
    def prop(case):
        compare(case, backend, device, strict_finite=True)

    prop()


@pytest.mark.parametrize("backend,device", _backend_params())
@pytest.mark.parametrize("gate,w1", [("sigmoid", -1.0), ("hardsigmoid", 1.0)])
def test_nan_gradient_stops_at_inactive_relu(backend, device, gate, w1):
    """The smallest case of the divergence: x = [[[[inf]]]], C = Cr = 1.

    sigmoid: hpre = w1 * inf = -inf, so relu is off and h = 0, s = 0.5, y = inf. Backward:
    ds = dy * x = inf, dh = inf, and PyTorch's relu backward selects 0 for the inactive
    unit, so dz = 0 and dx = dy * s = 0.5. hardsigmoid: hpre = +inf, h = inf, gpre = inf is
    outside (-3, 3) and PyTorch's hardsigmoid backward selects 0 there: dx = dy * s = 1.
    """
    x = torch.full((1, 1, 1, 1), math.inf, device=device, requires_grad=True)
    w1_ = torch.full((1, 1), w1, device=device)
    w2_ = torch.ones(1, 1, device=device)
    dx = {}
    for b in (backend, "reference"):
        y = se_kernels.fused_se(x, w1_, w2_, gate=gate, backend=b)
        (dx[b],) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(dx["reference"]).all()
    assert torch.equal(dx[backend], dx["reference"]), (
        f"dx: {backend} gives {dx[backend].item()}, the reference {dx['reference'].item()}")


@pytest.mark.parametrize("backend,device", _backend_params())
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_all_nan_and_all_inf_slabs(backend, device, dtype):
    """A whole sample of NaN, +inf or -inf, next to a finite sample that must stay finite."""
    torch.manual_seed(0)
    for fill in (math.nan, math.inf, -math.inf):
        for squeeze in ("avg", "max"):
            x = torch.randn(2, 5, 3, 4, dtype=dtype, device=device)
            x[0] = fill
            w1 = torch.randn(2, 5, dtype=dtype, device=device)
            w2 = torch.randn(5, 2, dtype=dtype, device=device)
            y = se_kernels.fused_se(x, w1, w2, squeeze=squeeze, backend=backend)
            y_ref = se_kernels.fused_se(x, w1, w2, squeeze=squeeze, backend="reference")
            check_forward_specials(y.double().cpu(), y_ref.double().cpu())
            assert torch.isfinite(y[1]).all()


@pytest.mark.skipif("cpu" not in se_kernels.available_backends(),
                    reason=f"the cpu backend is not built: {se_kernels.EXTENSION_LOAD_ERROR}")
def test_fuzz_inplace_equals_out_of_place():
    """fused_se(inplace=True) under no_grad, on every drawn case (any layout, value regime and
    residual view; expanded x is refused, as any in-place write to it): x afterwards is
    bitwise the out-of-place y, NaN where it has NaN; the other inputs are untouched."""

    @settings()
    @given(case=cases())
    def prop(case):
        m = materialise(case)
        n, c, h, w = case.n, case.c, case.h, case.w
        leaves = {k: _make_base(v.to(case.dtype), {"x": case.x_layout,
                                                   "residual": case.residual_layout}.get(k, ""))
                  for k, v in m.leaves.items()}
        x = _view(leaves["x"], case.x_layout, n, c, h, w)
        r = leaves.get("residual")
        if r is not None:
            r = _view(r, case.residual_layout, n, c, h, w)
        args = (_weight(leaves["w1"], case.weight_form), _weight(leaves["w2"], case.weight_form),
                leaves.get("b1"), leaves.get("b2"))
        opts = dict(residual=r, squeeze=case.squeeze, activation=case.activation,
                    gate=case.gate, backend="cpu")
        with torch.no_grad():
            y = se_kernels.fused_se(x, *args, **opts)
            others = [t.clone() for t in (*args, r) if t is not None]
            if x.numel() and any(st_ == 0 and d > 1 for st_, d in zip(x.stride(), x.shape)):
                with pytest.raises(RuntimeError, match="single memory location"):
                    se_kernels.fused_se(x, *args, **opts, inplace=True)
                return
            out = se_kernels.fused_se(x, *args, **opts, inplace=True)
        assert out is x
        torch.testing.assert_close(out, y, rtol=0, atol=0, equal_nan=True)
        for before, t in zip(others, (t for t in (*args, r) if t is not None)):
            torch.testing.assert_close(t, before, rtol=0, atol=0, equal_nan=True)

    prop()

"""se_kernels.convert: torchvision and timm SE modules become FusedSE modules sharing their
parameters; outputs, gradients and state dicts are unchanged; the rest is left alone."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import se_kernels
from se_kernels.convert import ConvertedSE

from helpers import randomize_bn as randomize, rel_err

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

HAS_CPU = "cpu" in se_kernels.available_backends()
FUSED = "cpu" if HAS_CPU else "reference"


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(lib: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if lib == "torchvision":
        return getattr(torchvision.models, name)()
    return timm.create_model(name, pretrained=False)


CASES = [  # (library, model, SE modules, activation, gate)
    ("torchvision", "efficientnet_b0", 16, "silu", "sigmoid"),
    ("torchvision", "mobilenet_v3_large", 8, "relu", "hardsigmoid"),
    ("torchvision", "regnet_y_400mf", 16, "relu", "sigmoid"),
    ("timm", "seresnet50", 16, "relu", "sigmoid"),
    ("timm", "efficientnet_b0", 16, "silu", "sigmoid"),
    ("timm", "fbnetv3_b", 18, "hardswish", "hardsigmoid"),   # hard-swish SE activation
    ("timm", "rexnet_100", 13, "relu", "sigmoid"),           # BatchNorm between the FCs, folded
]
# Models whose random-weight float32 outputs are too chaotic to compare (fbnetv3_b: even the
# reference backend is off by ~1%, the float32 model by more from its float64 self): compared
# in float64, where they match to ~1e-13.
FLOAT64 = {"fbnetv3_b"}


@pytest.mark.parametrize("lib,name,count,act,gate", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_convert_model(lib, name, count, act, gate):
    dtype = torch.float64 if name in FLOAT64 else torch.float32
    model = randomize(_build(lib, name)).eval().to(dtype)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        before = model(x)
    out = se_kernels.convert(model, backend=FUSED)
    assert out is model
    report = model.se_conversion
    assert len(report.replaced) == count and not report.skipped
    assert {(r.activation, r.gate) for r in report.replaced} == {(act, gate)}
    converted = [m for m in model.modules() if isinstance(m, ConvertedSE)]
    assert len(converted) == count
    assert all(isinstance(m, se_kernels.FusedSE) and m.backend == FUSED for m in converted)
    # the same Parameter objects under the same names, the same state-dict keys
    assert {n: p for n, p in model.named_parameters()} == params
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        after = model(x)
    assert rel_err(after, before) <= 1e-5, rel_err(after, before)
    assert str(report).startswith(f"se_kernels.convert: replaced {count} SE module(s)")
    assert "ConvertedSE" in repr(model)  # extra_repr of the replacements
    assert se_kernels.convert(model).se_conversion.replaced == []  # nothing left to do


def test_gradients_unchanged():
    """Training a converted model is training the original: same loss and gradients."""
    torch.manual_seed(0)
    a = randomize(torchvision.models.mobilenet_v3_small(num_classes=10)).eval()  # no dropout
    b = randomize(torchvision.models.mobilenet_v3_small(num_classes=10)).eval()
    b.load_state_dict(a.state_dict())
    se_kernels.convert(b, backend=FUSED)
    x, t = torch.randn(4, 3, 48, 48), torch.tensor([1, 2, 3, 4])
    for m in (a, b):
        nn.functional.cross_entropy(m(x), t).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert rel_err(pb.grad, pa.grad) <= 1e-4, name
    opt = torch.optim.SGD(b.parameters(), lr=0.1)  # an optimiser made before convert works too
    opt.step()


def _module_check(module: nn.Module, x: torch.Tensor, *, act: str, gate: str):
    wrapper = nn.Sequential(module)
    with torch.no_grad():
        ref = wrapper(x)
    se_kernels.convert(wrapper, backend=FUSED)
    (r,) = wrapper.se_conversion.replaced
    assert (r.activation, r.gate) == (act, gate)
    assert isinstance(wrapper[0], ConvertedSE)
    with torch.no_grad():
        out = wrapper(x)
    assert rel_err(out, ref) <= 1e-6
    return wrapper[0], out, ref


def test_timm_layers_and_legacy_modules():
    from timm.layers import SEModule
    from timm.layers.squeeze_excite import SqueezeExciteCl
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models.senet import SEModule as LegacySE

    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 7)
    _module_check(SEModule(32, gate_layer="hard_sigmoid"), x, act="relu", gate="hardsigmoid")
    _module_check(SEModule(32, act_layer=nn.SiLU, gate_layer="tanh"), x, act="silu",
                  gate="tanh")
    _module_check(SEModule(32, bias=False), x, act="relu", gate="sigmoid")
    _module_check(SqueezeExcite(32, act_layer=nn.SiLU), x, act="silu", gate="sigmoid")
    _module_check(LegacySE(32, reduction=4), x, act="relu", gate="sigmoid")
    # channels-last (N, H, W, C) tensors: viewed in place as NCHW channels_last
    m, out, _ = _module_check(SqueezeExciteCl(32), x.permute(0, 2, 3, 1).contiguous(),
                              act="relu", gate="sigmoid")
    assert out.shape == (2, 5, 7, 32) and m.channels_last_input


def test_effective_se_single_fc_is_exact():
    """One FC, no bottleneck: W1 = [W; -W], ReLU, W2 = [I, -I] reproduces it exactly."""
    from timm.layers import EffectiveSEModule
    from timm.models.hgnet import EseModule

    torch.manual_seed(0)
    x = torch.randn(2, 24, 6, 6, dtype=torch.float64)
    ese = EffectiveSEModule(24).double()
    m, out, ref = _module_check(ese, x, act="relu", gate="hardsigmoid")
    assert m.single_fc and m.reduced_channels == 48 and m.fc.weight is ese.fc.weight
    assert list(m.state_dict()) == ["fc.weight", "fc.bias"]
    _module_check(EseModule(24).double(), x, act="relu", gate="sigmoid")
    # gradients reach the shared single FC's parameters
    xr = x.clone().requires_grad_()
    nn.Sequential(m)(xr).sum().backward()
    assert ese.fc.weight.grad is not None and ese.fc.weight.grad.abs().sum() > 0


def test_converted_compiles_without_graph_breaks():
    from timm.layers import EffectiveSEModule, SEModule

    model = nn.Sequential(SEModule(16), EffectiveSEModule(16)).eval()
    se_kernels.convert(model, backend=FUSED)
    x = torch.randn(2, 16, 4, 4)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


def test_left_alone_with_reasons():
    from timm.layers import EffectiveSEModule, SEModule

    model = nn.Sequential(
        SEModule(32, norm_layer=nn.BatchNorm2d),      # ReXNet's norm, but in training mode
        SEModule(32, add_maxpool=True),               # avg + max squeeze
        SEModule(32, act_layer="mish"),               # activation fused_se does not have
        SEModule(32, gate_layer="hard_swish"),        # not a gate fused_se has
        EffectiveSEModule(32, add_maxpool=True),
        SEModule(32, norm_layer=lambda c, **dd: nn.GroupNorm(4, c, **dd)),  # does not fold
        SEModule(32),                                 # this one is converted
    ).eval()
    model[0].train()
    se_kernels.convert(model, backend=FUSED)
    report = model.se_conversion
    assert [r.name for r in report.replaced] == ["6"]
    reasons = [s.reason for s in report.skipped]
    assert [s.name for s in report.skipped] == ["0", "1", "2", "3", "4", "5"]
    assert "training mode" in reasons[0] and "add_maxpool" in reasons[1]
    assert "Mish" in reasons[2] and "Hardswish" in reasons[3] and "add_maxpool" in reasons[4]
    assert "GroupNorm between the FCs" in reasons[5]
    assert ([type(m).__name__ for m in model][:6]
            == ["SEModule"] * 4 + ["EffectiveSEModule", "SEModule"])


ACT_CASES = [  # (act_layer given to timm's SEModule, activation fused_se runs)
    ("hard_swish", "hardswish"), (nn.Hardswish, "hardswish"), ("relu6", "relu6"),
    ("gelu", "gelu"), ("gelu_tanh", "gelu_tanh"), ("swish", "silu"),
    (lambda inplace=False: nn.GELU(), "gelu"),
    (lambda inplace=False: nn.GELU(approximate="tanh"), "gelu_tanh"),
    (lambda inplace=False: nn.Hardtanh(0.0, 6.0), "relu6"),
]


@pytest.mark.parametrize("act_layer,act", ACT_CASES, ids=[c[1] + str(i) for i, c in
                                                          enumerate(ACT_CASES)])
def test_new_activations_convert(act_layer, act):
    """hardswish, relu6, gelu and gelu_tanh: the torch classes, timm's own and what timm's
    create_act_layer makes of their names, each in the module that uses them."""
    from timm.layers import SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite

    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 7)
    _module_check(SEModule(32, act_layer=act_layer, gate_layer="hard_sigmoid"), x, act=act,
                  gate="hardsigmoid")
    _module_check(SqueezeExcite(32, act_layer=act_layer), x, act=act, gate="sigmoid")


def test_timm_and_torchvision_activation_classes():
    from timm.layers.activations import GELU, GELUTanh, HardSwish
    from timm.layers.activations_me import HardSwishMe
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 7)
    for cls, act in ((HardSwish, "hardswish"), (HardSwishMe, "hardswish"), (GELU, "gelu"),
                     (GELUTanh, "gelu_tanh"), (nn.ReLU6, "relu6")):
        _module_check(SqueezeExcitation(32, 8, activation=cls), x, act=act, gate="sigmoid")
    # a Hardtanh other than (0, 6) is not relu6
    model = nn.Sequential(SqueezeExcitation(32, 8, activation=lambda: nn.Hardtanh(-1.0, 1.0)))
    se_kernels.convert(model, backend=FUSED)
    assert "Hardtanh is not one of" in model.se_conversion.skipped[0].reason


def _rexnet_se(bias=True, affine=True, dtype=torch.float64):
    from timm.layers import SEModule

    torch.manual_seed(0)
    m = SEModule(32, rd_channels=8, bias=bias,
                 norm_layer=lambda c, **dd: nn.BatchNorm2d(c, affine=affine, **dd))
    randomize(m, seed=3).to(dtype)
    with torch.no_grad():
        m.bn.running_mean.mul_(10)  # statistics far from (0, 1): the fold must matter
        m.bn.running_var.mul_(3)
    return m


@pytest.mark.parametrize("bias,affine", [(True, True), (False, True), (True, False)])
def test_batchnorm_between_fcs_folds_exactly(bias, affine):
    """Eval mode: W1' = (gamma / sigma) W1, b1' = gamma (b1 - mu) / sigma + beta; the BatchNorm
    stays a child, so parameters, buffers and state-dict keys are unchanged."""
    se = _rexnet_se(bias, affine).eval()
    keys = list(se.state_dict())
    params = dict(se.named_parameters())
    x = torch.randn(3, 32, 5, 7, dtype=torch.float64)
    m, out, ref = _module_check(se, x, act="relu", gate="sigmoid")
    assert rel_err(out, ref) <= 1e-12
    assert list(m.state_dict()) == keys and dict(m.named_parameters()) == params
    assert m.bn is se.bn and m.fc1 is se.fc1
    bn = se.bn
    sigma = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if affine else torch.ones_like(sigma)
    beta = bn.bias if affine else torch.zeros_like(sigma)
    b1 = se.fc1.bias if bias else torch.zeros_like(sigma)
    torch.testing.assert_close(m.fc1_weight, (gamma / sigma)[:, None, None, None] * se.fc1.weight)
    torch.testing.assert_close(m.fc1_bias, gamma * (b1 - bn.running_mean) / sigma + beta)
    # gradients of the eval-mode module reach W1, b1, gamma and beta through the fold
    xr = x.clone().requires_grad_()
    wrapped = nn.Sequential(_rexnet_se(bias, affine).eval())
    g_ref = torch.autograd.grad(wrapped(xr).square().sum(), [xr] + list(wrapped.parameters()))
    se_kernels.convert(wrapped, backend=FUSED)
    assert wrapped.se_conversion.replaced[0].folded_norm == "bn"
    assert "BatchNorm folded into FC1" in str(wrapped.se_conversion)
    g = torch.autograd.grad(wrapped(xr).square().sum(), [xr] + list(wrapped.parameters()))
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) <= 1e-10


def test_folded_batchnorm_unfolds_in_training_mode():
    """.train() after conversion unfolds: the original module's forward (batch statistics,
    running-statistics updates); .eval() fuses again with the updated statistics."""
    import copy

    orig = _rexnet_se()
    model = nn.Sequential(copy.deepcopy(orig)).eval()
    se_kernels.convert(model, backend=FUSED)
    conv = model[0]
    assert isinstance(conv, ConvertedSE) and not conv.training
    x = torch.randn(4, 32, 5, 7, dtype=torch.float64)
    model.train()
    orig.train()
    for _ in range(2):
        y, y_ref = model(x), orig(x)
        assert torch.equal(y, y_ref)  # the very same computation
    for k, v in orig.state_dict().items():
        assert torch.equal(model[0].state_dict()[k], v), k
    assert model[0].bn.num_batches_tracked.item() == 2
    model.eval()
    orig.eval()
    with torch.no_grad():
        assert rel_err(model(x), orig(x)) <= 1e-12
        calls = []
        h = conv.fc1.register_forward_hook(lambda *a: calls.append(1))
        model(x)  # fused: the FC modules themselves do not run
        h.remove()
        assert calls == []


def test_root_module_and_complexity():
    tv_se = torchvision.ops.SqueezeExcitation(64, 16)
    new = se_kernels.convert(tv_se)
    assert isinstance(new, ConvertedSE) and new.se_conversion.replaced[0].name == ""
    assert se_kernels.complexity(new, (64, 8, 8))["macs"] == 2 * 64 * 16 + 64 * 64


def test_convert_imports_neither_library():
    code = ("import sys, torch, se_kernels\n"
            "m = se_kernels.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))\n"
            "assert m.se_conversion.replaced == []\n"
            "bad = [k for k in ('torchvision', 'timm') if k in sys.modules]\n"
            "assert not bad, bad\n"
            "import se_kernels.models\n"
            "m = se_kernels.models.se_resnet18(); se_kernels.complexity(m, (3, 8, 8))\n"
            "bad = [k for k in ('torchvision', 'timm') if k in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        se_kernels.convert(nn.Identity(), backend="gpu")

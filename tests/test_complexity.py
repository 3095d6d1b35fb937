"""se_kernels.complexity: exact counts of every network and ablation, the paper's figures
(reproduced to the printed digits, or the documented difference), and the SE FLOP formula."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import se_kernels
from se_kernels import complexity, models
from se_kernels._options import ACTIVATIONS
from se_kernels.complexity import complexity_breakdown, se_flops
from se_kernels.models.paper import FIGURES, UNPRINTED

HAS_CPU = "cpu" in se_kernels.available_backends()


pytestmark = pytest.mark.usefixtures("one_thread")


# (constructor, keywords) -> (params, MACs, MACs with count_additions=True), at 224x224
# (299x299 for Inception-ResNet-v2). Recorded from this implementation; docs/models.md.
EXACT = {
    ("resnet50", ()): (25557032, 3857973248, 3863492608),
    ("se_resnet50", ()): (28088024, 3866007552, 3871526912),
    ("resnet101", ()): (44549160, 7570194432, 7579125760),
    ("se_resnet101", ()): (49326872, 7583868928, 7592800256),
    ("resnet152", ()): (60192808, 11282415616, 11295561728),
    ("se_resnet152", ()): (66821848, 11302139904, 11315286016),
    ("resnext50_32x4d", ()): (25028904, 4230479872, 4235999232),
    ("se_resnext50_32x4d", ()): (27559896, 4238514176, 4244033536),
    ("resnext101_32x4d", ()): (44177704, 7969996800, 7978928128),
    ("se_resnext101_32x4d", ()): (48955416, 7983671296, 7992602624),
    ("vgg16_bn", ()): (138365992, 15470264320, 15470264320),
    ("se_vgg16_bn", ()): (138596784, 15484038144, 15484038144),
    ("bn_inception", ()): (11285224, 2032600064, 2032600064),
    ("se_bn_inception", ()): (11931622, 2034420128, 2034420128),
    ("inception_resnet_v2", ()): (55843464, 13155794016, 13167333856),
    ("se_inception_resnet_v2", ()): (65092718, 13177370336, 13188910176),
    ("mobilenet_v1", ()): (4231976, 568740352, 568740352),
    ("se_mobilenet_v1", ()): (4718044, 571929600, 571929600),
    ("shufflenet_v1", ()): (1865728, 137460672, 138824832),
    ("se_shufflenet_v1", ()): (2441923, 139393632, 140757792),
    ("se_resnet50", (("bias", False), ("reduction", 2))): (45676584, 3883612160, 3889131520),
    ("se_resnet50", (("bias", False), ("reduction", 4))): (35616808, 3873552384, 3879071744),
    ("se_resnet50", (("bias", False), ("reduction", 8))): (30586920, 3868522496, 3874041856),
    ("se_resnet50", (("bias", False), ("reduction", 16))): (28071976, 3866007552, 3871526912),
    ("se_resnet50", (("bias", False), ("reduction", 32))): (26814504, 3864750080, 3870269440),
    ("se_resnet50", (("bias", False), ("se_stages", (2,)))): (25581608, 3860406272, 3865925632),
    ("se_resnet50", (("bias", False), ("se_stages", (3,)))): (25688104, 3859709952, 3865229312),
    ("se_resnet50", (("bias", False), ("se_stages", (4,)))): (26343464, 3859963904, 3865483264),
    ("se_resnet50", (("bias", False),)): (28071976, 3866007552, 3871526912),
    ("se_resnet50", (("bias", False), ("integration", "3x3"))): (25714216, 3859510272,
                                                                  3865029632),
    ("se_resnet50", (("bias", False), ("squeeze", "none"))): (28071976, 4269015040, 4274534400),
    ("se_resnet50", (("bias", False), ("squeeze", "max"))): (28071976, 3866007552, 3871526912),
    ("se_resnet50", (("bias", False), ("gate", "relu"))): (28071976, 3866007552, 3871526912),
    ("se_resnet50", (("bias", False), ("gate", "tanh"))): (28071976, 3866007552, 3871526912),
    ("se_resnet50", (("bias", False), ("integration", "pre"))): (27548200, 3865584128,
                                                                  3871103488),
    ("se_resnet50", (("bias", False), ("integration", "post"))): (28071976, 3866007552,
                                                                   3871526912),
    ("se_resnet50", (("bias", False), ("integration", "identity"))): (28071976, 3866007552,
                                                                       3871526912),
    ("senet154", ()): (115088984, 20701509632, 20714655744),
    ("senet154_plain", ()): (108459944, 20681785344, 20694931456),
    ("se_resnet18", ()): (11778592, 1814913024, 1815665664),
    ("resnet18", ()): (11689512, 1814073344, 1814825984),
    ("se_resnet34", ()): (21958868, 3665298432, 3666678272),
    ("resnet34", ()): (21797672, 3663761408, 3665141248),
    ("resnet50", (("stem_pool", "pad"), ("stride_in_1x1", False))): (25557032, 4089184256,
                                                                      4094703616),
    ("se_resnet50", (("stem_pool", "pad"), ("stride_in_1x1", False))): (28088024, 4097218560,
                                                                         4102737920),
}

# How each paper figure compares (docs/models.md explains every entry that is not "yes"):
# "yes": our default count prints as the paper; "additions": only with count_additions=True;
# "no": neither.
STATUS = {
    ("Table 2", "ResNet-101"): "additions", ("Table 2", "SE-ResNet-101"): "no",
    ("Table 2", "ResNet-152"): "additions", ("Table 2", "SE-ResNet-152"): "additions",
    ("Table 2", "ResNeXt-50"): "additions", ("Table 2", "SE-ResNeXt-50"): "no",
    ("Table 2", "ResNeXt-101"): "no", ("Table 2", "SE-ResNeXt-101"): "no",
    ("Table 2", "SE-BN-Inception"): "no",
    ("Table 2", "Inception-ResNet-v2"): "no", ("Table 2", "SE-Inception-ResNet-v2"): "no",
    ("Table 3", "ShuffleNet"): "no", ("Table 3", "SE-ShuffleNet"): "no",
    ("Table 10", "r = 4"): "no", ("Table 10", "r = 8"): "no", ("Table 10", "r = 32"): "no",
    ("Table 13", "SE_Stage_4"): "no", ("Table 15", "SE_3x3"): "no",
}


def _key(fig):
    return fig.model, tuple(sorted(fig.kwargs.items()))


_counted: dict = {}


def counted(fig):
    """(params, MACs, MACs with additions) of a figure's network, built on the meta device."""
    key = _key(fig)
    if key not in _counted:
        with torch.device("meta"):
            net = models.get_model(fig.model, **fig.kwargs)
        c = complexity_breakdown(net, fig.input_size)
        _counted[key] = (c["params"], c["macs"], c["macs"] + c["additions"])
    return _counted[key]


def test_headline_resnet50():
    """The issue's numbers: 3.86 / 3.87 GMACs, 25.6M / 28.1M parameters (stride in the 1x1)."""
    r = complexity(models.resnet50())
    s = complexity(models.se_resnet50())
    assert (r["params"], r["macs"]) == (25557032, 3857973248)
    assert (s["params"], s["macs"]) == (28088024, 3866007552)
    assert f"{r['macs'] / 1e9:.2f}" == "3.86" and f"{s['macs'] / 1e9:.2f}" == "3.87"
    assert f"{r['params'] / 1e6:.1f}" == "25.6" and f"{s['params'] / 1e6:.1f}" == "28.1"


@pytest.mark.parametrize("fig", FIGURES + UNPRINTED,
                         ids=[f"{f.source}-{f.label}".replace(" ", "") for f in
                              FIGURES + UNPRINTED])
def test_exact_counts(fig):
    assert counted(fig) == EXACT[_key(fig)]


@pytest.mark.parametrize("fig", FIGURES,
                         ids=[f"{f.source}-{f.label}".replace(" ", "") for f in FIGURES])
def test_paper_figure(fig):
    params, macs, macs_add = counted(fig)
    status = ("yes" if fig.matches(macs, params)
              else "additions" if fig.matches(macs_add, params) else "no")
    assert status == STATUS.get((fig.source, fig.label), "yes")


def test_section4_parameter_increase():
    """"SE-ResNet-50 introduces ~2.5 million additional parameters ... ~10%"; without the
    last stage's SE blocks "~4%" (the paper's ablation configuration: no FC biases)."""
    base = 25557032
    with torch.device("meta"):
        full = complexity(models.se_resnet50(bias=False))["params"] - base
        three = complexity(models.se_resnet50(bias=False, se_stages=(2, 3, 4)))["params"] - base
    assert full == 2514944 and round(full / base, 2) == 0.10
    assert three == 942080 and round(full / base * 100) == 10 and round(three / base * 100) == 4


def test_se_formula_and_registration():
    """One SE op: 2*C*Cr + C*H*W MACs, whichever backend; a plain FlopCounterMode counts the
    registered se_kernels ops with the same formula (forward and backward)."""
    se = se_kernels.SqueezeExcitation(256, 16)
    x = torch.randn(2, 256, 14, 14)
    want = 2 * (2 * 256 * 16 + 256 * 196)
    assert se_flops(2, 256, 16, 196) == 2 * want
    for backend in se_kernels.available_backends():
        if backend in ("cuda", "triton"):
            continue
        se.backend = backend
        assert complexity(se, (256, 14, 14), batch_size=2)["macs"] == want
    if HAS_CPU:
        se.backend = "cpu"
        xr = x.clone().requires_grad_()
        with FlopCounterMode(display=False) as counter:
            se(xr).sum().backward()
        assert counter.get_total_flops() == se_flops(2, 256, 16, 196) + se_flops(
            2, 256, 16, 196, backward=True)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_se_formula_every_activation(activation):
    """The activation is elementwise over N*Cr values and counts nothing (like ReLU in the
    paper's counts and in torch.utils.flop_counter), so the formula is the same for all six;
    the reference backend's composite ops (erf, where, ...) add nothing either."""
    want = 2 * 256 * 16 + 256 * 49
    for backend in [b for b in se_kernels.available_backends() if b in ("reference", "cpu")]:
        se = se_kernels.SqueezeExcitation(256, 16, activation=activation, backend=backend)
        assert complexity(se, (256, 7, 7))["macs"] == want
        with FlopCounterMode(display=False) as counter:
            se(torch.randn(1, 256, 7, 7))
        assert counter.get_total_flops() == (se_flops(1, 256, 16, 49) if backend == "cpu"
                                             else 2 * 2 * 256 * 16)  # reference: the FCs


def test_fused_residual_addition_counted_only_on_request():
    se = se_kernels.SqueezeExcitation(64, 16)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.se = se

        def forward(self, x):
            return self.se(x, residual=x)

    n = 64 * 8 * 8
    assert complexity(Block(), (64, 8, 8))["macs"] == 2 * 64 * 4 + n
    assert complexity(Block(), (64, 8, 8), count_additions=True)["macs"] == 2 * 64 * 4 + 2 * n


def test_real_and_meta_agree_and_model_untouched():
    net = models.se_resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    real = complexity(net, (3, 64, 64))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with torch.device("meta"):
        meta = complexity(models.se_resnet18(num_classes=10), (3, 64, 64))
    assert real == meta and isinstance(real["macs"], int)


def test_nosqueeze_counts_its_convolutions():
    """NoSqueeze (Table 16): the FCs run at every position; 2*C*Cr*H*W MACs per block."""
    with torch.device("meta"):
        ns = complexity(models.se_resnet50(bias=False, squeeze="none"))["macs"]
    per_stage = [(256, 3, 56), (512, 4, 28), (1024, 6, 14), (2048, 3, 7)]
    extra = sum(2 * c * (c // 16) * s * s * n for c, n, s in per_stage)
    assert ns == 3857973248 + extra


def test_counts_whatever_the_backend():
    """A network built for a backend that cannot run here is still counted (SE blocks run on
    "auto" while counting) and keeps its backend."""
    net = models.se_resnet18(num_classes=10, backend="cuda")
    ref = models.se_resnet18(num_classes=10, backend="reference")
    assert complexity(net, (3, 32, 32)) == complexity(ref, (3, 32, 32))
    assert {m.backend for m in models.se_modules(net)} == {"cuda"}

"""se_kernels.models: every network builds and runs, the fused SE blocks inside match the
reference SE, the ablation options do what the paper describes, and timm/torchvision weights
load through the documented mapping with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import se_kernels
from se_kernels import models
from se_kernels.models.weights import from_timm, from_torchvision, map_state_dict

from helpers import rel_err

HAS_CPU = "cpu" in se_kernels.available_backends()
FUSED = "cpu" if HAS_CPU else "reference"

ALL = models.list_models()
SE_MODELS = models.list_models(se=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_size(name: str) -> int:
    """The smallest input each network takes (see docs/models.md)."""
    if "inception_resnet" in name:
        return 75
    if "vgg" in name or "bn_inception" in name:
        return 32
    return 8


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics, so that eval-mode outputs
    depend on every layer (fresh BNs are identities and zero-init layers hide branches)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model


def test_registry():
    assert set(ALL) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152",
        "resnext50_32x4d", "resnext101_32x4d", "se_resnext50_32x4d", "se_resnext101_32x4d",
        "senet154", "senet154_plain", "vgg16_bn", "se_vgg16_bn", "bn_inception",
        "se_bn_inception", "inception_resnet_v2", "se_inception_resnet_v2", "mobilenet_v1",
        "se_mobilenet_v1", "shufflenet_v1", "se_shufflenet_v1"}
    for name in SE_MODELS:
        assert models.baseline_of(name) in models.list_models(se=False)
    assert models.baseline_of("resnet50") is None
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("resnet51")


@pytest.mark.parametrize("name", ALL)
def test_small_input(name):
    """Every network at its smallest input, 10 classes; SE networks: the fused backend equals
    the reference SE (the same weights, switched with set_backend)."""
    torch.manual_seed(0)
    net = randomize_bn(models.get_model(name, num_classes=10)).eval()
    s = small_size(name)
    x = torch.randn(2 if s < 32 else 1, 3, s, s)
    models.set_backend(net, FUSED)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (x.shape[0], 10) and torch.isfinite(y).all()
        if name in SE_MODELS:
            assert len(models.se_modules(net)) > 0
            assert all(m.backend == FUSED for m in models.se_modules(net))
            y_ref = models.set_backend(net, "reference")(x)
            assert rel_err(y, y_ref) <= 1e-5, name


@pytest.mark.parametrize("name", ["se_resnet18", "se_resnet50", "se_mobilenet_v1",
                                  "se_shufflenet_v1"])
def test_trains_on_8x8_digits(name):
    """8x8 single-channel images, 10 classes (what the reliability tests train on): SGD steps
    on one batch lower its loss; every parameter gets a gradient."""
    torch.manual_seed(0)
    net = models.get_model(name, num_classes=10, in_channels=1, backend=FUSED)
    x, t = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), t)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(p.grad is not None for p in net.parameters())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("integration", ["standard", "pre", "post", "identity", "3x3"])
@pytest.mark.parametrize("squeeze,gate", [("avg", "sigmoid"), ("max", "tanh"), ("avg", "relu"),
                                          ("none", "sigmoid")])
def test_ablation_options(integration, squeeze, gate):
    """Fig. 5 / Tables 11, 12, 14-16 on SE-ResNet-50: fused equals reference, gradients too."""
    torch.manual_seed(0)
    net = randomize_bn(models.se_resnet50(num_classes=10, integration=integration,
                                          squeeze=squeeze, gate=gate, bias=False))
    net.eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = models.set_backend(net, FUSED)(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    y_ref = models.set_backend(net, "reference")(x)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(gx, gx_ref) <= 1e-4
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    kinds = {type(b.se).__name__ for b in blocks}
    assert kinds == ({"NoSqueeze"} if squeeze == "none" else {"SqueezeExcitation"})
    first = net.layer1[0].se
    expected_c = {"standard": 256, "post": 256, "identity": 256, "pre": 64, "3x3": 64}
    assert first.channels == expected_c[integration]
    if squeeze != "none":
        assert (first.squeeze, first.gate, first.fc1_bias) == (squeeze, gate, None)


def test_integrations_differ():
    """The five integrations are five different functions of the same weights."""
    torch.manual_seed(0)
    base = randomize_bn(models.se_resnet50(num_classes=10)).eval()
    x = torch.randn(1, 3, 16, 16)
    outs = {}
    for integ in ("standard", "post", "identity"):  # same parameter shapes as standard
        net = models.se_resnet50(num_classes=10, integration=integ).eval()
        net.load_state_dict(base.state_dict())
        outs[integ] = net(x)
    assert not torch.allclose(outs["standard"], outs["post"])
    assert not torch.allclose(outs["standard"], outs["identity"])


def test_se_stages_and_options():
    net = models.se_resnet50(se_stages=(3, 5), reduction=8, bias=False)
    have = [layer[0].se is not None for layer in (net.layer1, net.layer2, net.layer3,
                                                  net.layer4)]
    assert have == [False, True, False, True]
    assert net.layer2[0].se.reduced_channels == 512 // 8
    with pytest.raises(ValueError, match="se_stages"):
        models.se_resnet50(se_stages=(1,))
    with pytest.raises(ValueError, match="integration"):
        models.se_resnet50(integration="middle")
    with pytest.raises(ValueError, match="gate"):
        models.se_resnet50(gate="softmax")
    with pytest.raises(TypeError, match="plain network"):
        models.resnet50(gate="tanh")
    models.resnet50(backend="cpu" if HAS_CPU else "reference", reduction=8)  # accepted


def test_downsampling_style():
    """Stride in the first 1x1 (Caffe, the SE-ResNet default) or the 3x3 (torchvision,
    ResNeXt/SENet-154 default); SENet-154's 3x3 stride-2 projections and halved first 1x1."""
    r = models.se_resnet50()
    assert r.layer2[0].conv1.stride == (2, 2) and r.layer2[0].conv2.stride == (1, 1)
    t = models.se_resnet50(stride_in_1x1=False)
    assert t.layer2[0].conv1.stride == (1, 1) and t.layer2[0].conv2.stride == (2, 2)
    x = models.se_resnext50_32x4d()
    assert x.layer2[0].conv2.stride == (2, 2) and x.layer2[0].conv2.groups == 32
    with torch.device("meta"):
        s = models.senet154()
    assert [type(m).__name__ for m in s.stem][:9:3] == ["Conv2d"] * 3
    assert s.layer2[0].downsample[0].kernel_size == (3, 3)
    assert s.layer1[0].downsample[0].kernel_size == (1, 1)
    assert s.layer1[0].conv1.out_channels == 128 and s.layer1[0].conv2.groups == 64
    assert s.dropout.p == 0.2 and s.stem.conv3.out_channels == 128


def test_fused_residual_tail_is_used(monkeypatch):
    """SE-ResNet blocks hand the identity to the SE op (one fused call per block)."""
    calls = []
    real = se_kernels.nn.fused_se

    def spy(*args, **kwargs):
        calls.append(kwargs.get("residual") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(se_kernels.nn, "fused_se", spy)
    net = models.se_resnet50(num_classes=10).eval()
    with torch.no_grad():
        net(torch.randn(1, 3, 8, 8))
    assert calls == [True] * 16


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces an SE network, fused residual tails included."""
    torch.manual_seed(0)
    net = models.se_resnet18(num_classes=10, backend=FUSED).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), net(x))


# ---- weights ---------------------------------------------------------------------------------

def _check_timm(name: str, size: int = 32, via=None, tmp_path=None, dtype=torch.float32):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(name, pretrained=False)).eval()
    sd = theirs.state_dict()
    if via == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        sd = path
    elif via == "torch":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd}, path)
        sd = path
    ours = from_timm(name, sd, backend=FUSED).eval().to(dtype)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    with torch.no_grad():
        a, b = theirs.to(dtype)(x), ours(x)
    assert rel_err(b, a) <= 1e-5, name
    return ours


def test_timm_legacy_seresnet50_safetensors(tmp_path):
    _check_timm("legacy_seresnet50", via="safetensors", tmp_path=tmp_path)


def test_timm_legacy_seresnet18_torch_file(tmp_path):
    ours = _check_timm("legacy_seresnet18", via="torch", tmp_path=tmp_path)
    assert ours.layer1[0].branch_relu


@pytest.mark.parametrize("name", ["legacy_seresnext50_32x4d", "seresnet50",
                                  "seresnext50_32x4d"])
def test_timm_weights(name):
    _check_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy_senet154", "senet154", "legacy_seresnet101",
                                  "legacy_seresnet152", "legacy_seresnext101_32x4d",
                                  "seresnext101_32x8d", "legacy_seresnet34"])
def test_timm_weights_large(name):
    # float64: with random BN statistics the deepest networks amplify rounding by ~1e9
    # (legacy_seresnet152's logits reach 1e5; float32 ends 40% off, float64 6e-7), while a
    # wrong mapping is off by O(1) whatever the precision
    _check_timm(name, size=64, dtype=torch.float64)


def test_torchvision_resnet50_weights():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = randomize_bn(tv.models.resnet50()).eval()
    ours = from_torchvision("resnet50", theirs.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))


def test_map_state_dict_keys():
    sd = {"layer0.conv1.weight": torch.zeros(1), "layer0.bn1.running_mean": torch.zeros(1),
          "layer1.0.se_module.fc1.weight": torch.zeros(4, 64, 1, 1),
          "layer1.0.se_module.fc2.bias": torch.zeros(64), "last_linear.weight": torch.zeros(1),
          "layer2.0.downsample.0.weight": torch.zeros(1)}
    out = map_state_dict(sd)
    assert set(out) == {"stem.conv1.weight", "stem.bn1.running_mean", "layer1.0.se.fc1_weight",
                        "layer1.0.se.fc2_bias", "fc.weight", "layer2.0.downsample.0.weight"}
    assert out["layer1.0.se.fc1_weight"].shape == (4, 64)
    deep = map_state_dict({"conv1.0.weight": 0, "conv1.1.weight": 0, "conv1.3.weight": 0,
                           "conv1.4.weight": 0, "conv1.6.weight": 0, "bn1.weight": 0})
    assert set(deep) == {"stem.conv1.weight", "stem.bn1.weight", "stem.conv2.weight",
                         "stem.bn2.weight", "stem.conv3.weight", "stem.bn3.weight"}


@pytest.mark.slow
def test_inception_resnet_v2_is_timms():
    """Our Inception-ResNet-v2 is timm's: its state dict loads strictly, outputs are equal."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model("inception_resnet_v2", pretrained=False)).eval()
    ours = models.inception_resnet_v2().eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_imagenet_size(name):
    """Every network at its ImageNet input size (299 for Inception-ResNet-v2)."""
    net = models.get_model(name).eval()
    s = 299 if "inception_resnet" in name else 224
    with torch.no_grad():
        y = net(torch.randn(1, 3, s, s))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()

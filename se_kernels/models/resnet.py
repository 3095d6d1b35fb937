"""ResNet, ResNeXt and SENet-154, plain and with SE blocks (the paper's Table 1 and appendix).

The residual block's tail ``relu(se(branch) + identity)`` is a single ``fused_se`` call with
``residual=identity``. Options that the paper's ablations vary:

- ``se_stages`` (Table 13): the stages that get SE blocks, numbered as the paper (2..5 =
  conv2_x..conv5_x = ``layer1``..``layer4``).
- ``integration`` (Fig. 5, Tables 14, 15): where the SE block sits in each residual unit:
  "standard" (on the branch, before the sum), "pre" (on the unit's input, branch side only),
  "post" (after the sum and its ReLU), "identity" (on the identity path, in parallel with the
  branch), "3x3" (inside the branch, after the 3x3 convolution and its ReLU; for basic blocks
  after the first 3x3).
- the ``SEConfig`` options (reduction, squeeze incl. NoSqueeze, gate, activation, bias).
- ``stride_in_1x1``: down-sampling in the first 1x1 conv of a bottleneck (the original Caffe
  ResNets, the SE-ResNets' default) or in the 3x3 conv (torchvision, ResNeXt, SENet-154).

Module names follow torchvision (``layer1.0.conv1``, ``downsample.0``, ``fc``) except that the
stem is ``stem.conv1``/``stem.bn1``/``...``/``stem.pool``; ``se_kernels.models.weights`` maps
torchvision's and timm's keys onto these.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "INTEGRATIONS"]

INTEGRATIONS = ("standard", "pre", "post", "identity", "3x3")


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class _Block(nn.Module):
    """What both residual blocks share: the identity path and where the SE block goes."""

    expansion = 1

    def _setup_se(self, se: SEConfig | None, integration: str, inplanes: int, out: int,
                  inner: int) -> None:
        self.integration = integration
        channels = {"standard": out, "post": out, "identity": out, "pre": inplanes,
                    "3x3": inner}[integration]
        # "standard": the SE block's input is the branch's last BN output, read by nothing
        # else, so in inference it may become the block's output (as torchvision's
        # ``out += identity`` does for the plain block).
        self.se = se.make(channels, inplace=integration == "standard") if se is not None else None

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        se, where = self.se, self.integration
        out = self._branch(se(x) if se is not None and where == "pre" else x)
        if se is not None and where == "standard":
            return se(out, residual=identity)      # relu(out * s + identity), one kernel
        if se is not None and where == "identity":
            return se(identity, residual=out)      # relu(identity * s + out), one kernel
        # In place, as torchvision's ``out += identity``, unless autograd saved the branch's
        # output (the in-place ReLU that ends a ``branch_relu`` branch).
        if getattr(self, "branch_relu", False) or out.dtype != identity.dtype:
            out = out + identity
        else:
            out += identity
        out = self.relu(out)
        if se is not None and where == "post":
            out = se(out)
        return out


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34). ``branch_relu``: a ReLU at the end of the branch, before
    the SE block (timm's legacy_seresnet18/34 have it; the paper's ResNets do not)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, *, se: SEConfig | None = None,
                 integration: str = "standard", branch_relu: bool = False, **_unused) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.branch_relu = branch_relu
        self.downsample = downsample
        self._setup_se(se, integration, inplanes, planes, planes)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.se is not None and self.integration == "3x3":
            out = self.se(out)
        out = self.bn2(self.conv2(out))
        return self.relu(out) if self.branch_relu else out


class Bottleneck(_Block):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, expansion 4.

    The 3x3 conv has ``width = planes * width_per_group / 64 * groups`` channels; the first 1x1
    has ``width // reduce_first`` (SENet-154 halves it). The stride sits in the first 1x1
    (``stride_in_1x1``, Caffe) or in the 3x3 (torchvision).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, *, se: SEConfig | None = None,
                 integration: str = "standard", groups: int = 1, width_per_group: int = 64,
                 reduce_first: int = 1, stride_in_1x1: bool = True, **_unused) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        first = width // reduce_first
        out = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(inplanes, first, 1, s1)
        self.bn1 = nn.BatchNorm2d(first)
        self.conv2 = _conv(first, width, 3, s3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, out, 1)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._setup_se(se, integration, inplanes, out, width)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.se is not None and self.integration == "3x3":
            out = self.se(out)
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """ResNet / ResNeXt / SENet-154 with optional SE blocks.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage (conv2_x..conv5_x), e.g. (3, 4, 6, 3).
        num_classes: outputs of the classifier.
        se: ``SEConfig`` of the SE blocks, or None for the plain network.
        se_stages: the stages (2..5) that get SE blocks (Table 13); default all.
        integration: "standard", "pre", "post", "identity" or "3x3" (Fig. 5, Tables 14-15).
        groups, width_per_group: ResNeXt cardinality and bottleneck width (32, 4 for 32x4d).
        stride_in_1x1: stride-2 in the first 1x1 conv (Caffe) or in the 3x3 (torchvision).
        stem: "7x7" (one 7x7/2 conv) or "3x3" (three 3x3 convs, the first stride 2: SENet-154).
        stem_width: channels out of the stem (64; 128 for SENet-154).
        stem_pool: "ceil" (max-pool 3x3/2 without padding, ceil mode: the Caffe models, timm's
            legacy_* models) or "pad" (padding 1, floor: torchvision, timm's resnet.py).
        downsample_kernel: kernel of the stride-2 projection shortcuts (1; 3 for SENet-154).
        reduce_first: divides the channels of the bottleneck's first 1x1 (2 for SENet-154).
        drop_rate: dropout before the classifier (0.2 for SENet-154).
        branch_relu: basic blocks only, see ``BasicBlock``.
        in_channels: image channels.

    Works at any input size from 8x8 up (the stem and each stage halve it, rounding up).
    """

    def __init__(self, block: type[_Block], layers: Sequence[int], num_classes: int = 1000, *,
                 se: SEConfig | None = None, se_stages: Sequence[int] = (2, 3, 4, 5),
                 integration: str = "standard", groups: int = 1, width_per_group: int = 64,
                 stride_in_1x1: bool = True, stem: str = "7x7", stem_width: int = 64,
                 stem_pool: str = "ceil", downsample_kernel: int = 1, reduce_first: int = 1,
                 drop_rate: float = 0.0, branch_relu: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        if integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {list(INTEGRATIONS)}, got "
                             f"{integration!r}")
        if not set(se_stages) <= {2, 3, 4, 5}:
            raise ValueError(f"se_stages must be a subset of (2, 3, 4, 5), got {se_stages!r}")
        if stem not in ("7x7", "3x3") or stem_pool not in ("ceil", "pad"):
            raise ValueError(f"stem must be '7x7' or '3x3' and stem_pool 'ceil' or 'pad', got "
                             f"{stem!r}, {stem_pool!r}")
        if block is BasicBlock and (groups != 1 or width_per_group != 64 or reduce_first != 1):
            raise ValueError("BasicBlock supports groups=1, width_per_group=64, reduce_first=1")
        self.se_config = se
        self.se_stages = tuple(sorted(se_stages))
        self.integration = integration
        self.stem = self._make_stem(stem, in_channels, stem_width, stem_pool)
        self.inplanes = stem_width
        common = dict(integration=integration, groups=groups, width_per_group=width_per_group,
                      reduce_first=reduce_first, stride_in_1x1=stride_in_1x1,
                      branch_relu=branch_relu)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage_se = se if (i + 2) in self.se_stages else None
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(
                block, planes, n, stride, downsample_kernel if stride > 1 else 1,
                se=stage_se, **common))
        self.num_features = 512 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stem(stem: str, in_channels: int, width: int, pool: str) -> nn.Sequential:
        if stem == "7x7":
            mods = [("conv1", _conv(in_channels, width, 7, 2)), ("bn1", nn.BatchNorm2d(width)),
                    ("relu1", nn.ReLU(inplace=True))]
        else:
            chans = (in_channels, 64, 64, width)
            mods = []
            for i in range(3):
                mods += [(f"conv{i + 1}", _conv(chans[i], chans[i + 1], 3, 2 if i == 0 else 1)),
                         (f"bn{i + 1}", nn.BatchNorm2d(chans[i + 1])),
                         (f"relu{i + 1}", nn.ReLU(inplace=True))]
        mods.append(("pool", nn.MaxPool2d(3, 2, ceil_mode=True) if pool == "ceil"
                     else nn.MaxPool2d(3, 2, padding=1)))
        return nn.Sequential(OrderedDict(mods))

    def _make_layer(self, block, planes, n, stride, down_k, **kw) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(_conv(self.inplanes, out, down_k, stride),
                                       nn.BatchNorm2d(out))
        blocks = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = out
        blocks += [block(out, planes, **kw) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


# ---- constructors ---------------------------------------------------------------------------

def _build(block, layers, num_classes, *, se: bool, **kwargs) -> ResNet:
    return ResNet(block, layers, num_classes, se=pop_se_config(se, kwargs), **kwargs)


_RESNETS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
            50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
            152: (Bottleneck, (3, 8, 36, 3))}
_RESNEXT = dict(groups=32, width_per_group=4, stride_in_1x1=False)
_SENET154 = dict(groups=64, width_per_group=4, stride_in_1x1=False, stem="3x3",
                 stem_width=128, downsample_kernel=3, reduce_first=2, drop_rate=0.2)


@register()
def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18. Keywords as ``ResNet``."""
    return _build(*_RESNETS[18], num_classes, se=False, **kwargs)


@register()
def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34. Keywords as ``ResNet``."""
    return _build(*_RESNETS[34], num_classes, se=False, **kwargs)


@register()
def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50 with the stride in the first 1x1 conv, as the paper's Caffe model (3.86
    GMACs); ``stride_in_1x1=False, stem_pool="pad"`` gives torchvision's (4.09 GMACs)."""
    return _build(*_RESNETS[50], num_classes, se=False, **kwargs)


@register()
def resnet101(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-101 (stride in the first 1x1 conv)."""
    return _build(*_RESNETS[101], num_classes, se=False, **kwargs)


@register()
def resnet152(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-152 (stride in the first 1x1 conv)."""
    return _build(*_RESNETS[152], num_classes, se=False, **kwargs)


@register(baseline="resnet18")
def se_resnet18(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                **kwargs) -> ResNet:
    """SE-ResNet-18. SE options (squeeze, activation, gate, bias) and the other keywords as
    ``SEConfig`` and ``ResNet``."""
    return _build(*_RESNETS[18], num_classes, se=True, backend=backend, reduction=reduction,
                  **kwargs)


@register(baseline="resnet34")
def se_resnet34(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                **kwargs) -> ResNet:
    """SE-ResNet-34. Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[34], num_classes, se=True, backend=backend, reduction=reduction,
                  **kwargs)


@register(baseline="resnet50")
def se_resnet50(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                **kwargs) -> ResNet:
    """SE-ResNet-50 (Table 1, middle; stride in the first 1x1 conv). Keywords as
    ``se_resnet18``."""
    return _build(*_RESNETS[50], num_classes, se=True, backend=backend, reduction=reduction,
                  **kwargs)


@register(baseline="resnet101")
def se_resnet101(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                 **kwargs) -> ResNet:
    """SE-ResNet-101. Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[101], num_classes, se=True, backend=backend, reduction=reduction,
                  **kwargs)


@register(baseline="resnet152")
def se_resnet152(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                 **kwargs) -> ResNet:
    """SE-ResNet-152. Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[152], num_classes, se=True, backend=backend, reduction=reduction,
                  **kwargs)


@register()
def resnext50_32x4d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNeXt-50 (32x4d), stride in the 3x3 conv as the original ResNeXt."""
    return _build(*_RESNETS[50], num_classes, se=False, **{**_RESNEXT, **kwargs})


@register()
def resnext101_32x4d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNeXt-101 (32x4d), stride in the 3x3 conv."""
    return _build(*_RESNETS[101], num_classes, se=False, **{**_RESNEXT, **kwargs})


@register(baseline="resnext50_32x4d")
def se_resnext50_32x4d(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                       **kwargs) -> ResNet:
    """SE-ResNeXt-50 (32x4d) (Table 1, right). Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[50], num_classes, se=True, backend=backend, reduction=reduction,
                  **{**_RESNEXT, **kwargs})


@register(baseline="resnext101_32x4d")
def se_resnext101_32x4d(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                        **kwargs) -> ResNet:
    """SE-ResNeXt-101 (32x4d). Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[101], num_classes, se=True, backend=backend, reduction=reduction,
                  **{**_RESNEXT, **kwargs})


@register()
def senet154_plain(num_classes: int = 1000, **kwargs) -> ResNet:
    """SENet-154 without its SE blocks: the modified 64x4d ResNeXt-152 of the appendix."""
    return _build(*_RESNETS[152], num_classes, se=False, **{**_SENET154, **kwargs})


@register(baseline="senet154_plain")
def senet154(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
             **kwargs) -> ResNet:
    """SENet-154 (appendix): SE blocks in a 64x4d ResNeXt-152 whose first 1x1 convs are
    halved, with a stem of three 3x3 convs, 3x3 stride-2 projection shortcuts and dropout 0.2
    before the classifier. Keywords as ``se_resnet18``."""
    return _build(*_RESNETS[152], num_classes, se=True, backend=backend, reduction=reduction,
                  **{**_SENET154, **kwargs})

"""MobileNet (v1, Howard et al. 2017; "1.0 MobileNet-224") and SE-MobileNet: an SE block after
each of the 13 depthwise-separable blocks (on the pointwise conv's output, after its ReLU).
"""

from __future__ import annotations

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config

__all__ = ["MobileNetV1"]

# (output channels, stride) of the 13 depthwise-separable blocks
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, 1x1 conv-BN-ReLU, then the SE block (if any)."""

    def __init__(self, cin: int, cout: int, stride: int, se: SEConfig | None) -> None:
        super().__init__()
        self.dw = _conv_bn(cin, cin, 3, stride, groups=cin)
        self.pw = _conv_bn(cin, cout, 1)
        self.se = se.make(cout) if se is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(x))
        return self.se(x) if self.se is not None else x


class MobileNetV1(nn.Module):
    """MobileNet v1 with optional SE blocks.

    Args: num_classes; se: ``SEConfig`` or None; width_mult: the width multiplier alpha (1.0);
    dropout: before the classifier (0); in_channels. Works from 8x8 inputs up.
    """

    def __init__(self, num_classes: int = 1000, *, se: SEConfig | None = None,
                 width_mult: float = 1.0, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        c = int(32 * width_mult)
        self.stem = _conv_bn(in_channels, c, 3, 2)
        blocks = []
        for cout, stride in BLOCKS:
            cout = int(cout * width_mult)
            blocks.append(DepthwiseSeparable(c, cout, stride, se))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


@register()
def mobilenet_v1(num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """MobileNet v1 1.0-224 (the paper's baseline)."""
    return MobileNetV1(num_classes, se=pop_se_config(False, kwargs), **kwargs)


@register(baseline="mobilenet_v1")
def se_mobilenet_v1(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                    **kwargs) -> MobileNetV1:
    """SE-MobileNet: an SE block after each depthwise-separable block. SE options as
    ``SEConfig``."""
    kwargs.update(backend=backend, reduction=reduction)
    return MobileNetV1(num_classes, se=pop_se_config(True, kwargs), **kwargs)

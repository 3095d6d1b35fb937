"""BN-Inception (Ioffe & Szegedy, 2015) and SE-BN-Inception: an SE block on the output of
every Inception module (Fig. 2 of the paper: the whole module is the transformation F_tr).

The widths are those of the BN-Inception Caffe model that SE-BN-Inception was built on (the
table of the BN-Inception paper; modules 4c and 4d are 608 wide, 4e 1056): 10 Inception
modules, 3c and 4e of them stride 2 with a max-pooling pass-through branch.
"""

from __future__ import annotations

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config

__all__ = ["BNInception", "ConvBNReLU"]


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride: int = 1, padding=0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.relu = nn.ReLU(inplace=True)


# name: (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool proj, stride)
# pool proj 0 with stride 2: the pooled input passes through (max pooling).
MODULES = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


class InceptionModule(nn.Module):
    """One BN-Inception module: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool(-1x1), concatenated, then
    the SE block (if any) on the concatenation."""

    def __init__(self, cin: int, n1, n3r, n3, nd3r, nd3, pool, proj, stride,
                 se: SEConfig | None) -> None:
        super().__init__()
        self.b1x1 = ConvBNReLU(cin, n1, 1) if n1 else None
        self.b3x3 = nn.Sequential(ConvBNReLU(cin, n3r, 1), ConvBNReLU(n3r, n3, 3, stride, 1))
        self.b3x3dbl = nn.Sequential(ConvBNReLU(cin, nd3r, 1), ConvBNReLU(nd3r, nd3, 3, 1, 1),
                                     ConvBNReLU(nd3, nd3, 3, stride, 1))
        if stride == 2:
            pool_layer = nn.MaxPool2d(3, 2, ceil_mode=True)
        elif pool == "avg":
            pool_layer = nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True)
        else:
            pool_layer = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        self.bpool = nn.Sequential(pool_layer, *([ConvBNReLU(cin, proj, 1)] if proj else []))
        self.out_channels = n1 + n3 + nd3 + (proj or cin)
        self.se = se.make(self.out_channels) if se is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.b3x3(x), self.b3x3dbl(x), self.bpool(x)]
        if self.b1x1 is not None:
            out.insert(0, self.b1x1(x))
        y = torch.cat(out, 1)
        return self.se(y) if self.se is not None else y


class BNInception(nn.Module):
    """BN-Inception, optionally with an SE block on each Inception module's output.

    Args:
        num_classes; se: ``SEConfig`` or None; dropout: before the classifier (0, as the
        Caffe model); in_channels.

    Input at least 32x32 (224x224 for ImageNet); five stride-2 stages round up (ceil mode).
    """

    def __init__(self, num_classes: int = 1000, *, se: SEConfig | None = None,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
            ConvBNReLU(64, 64, 1), ConvBNReLU(64, 192, 3, 1, 1),
            nn.MaxPool2d(3, 2, ceil_mode=True))
        blocks, c = {}, 192
        for name, *spec in MODULES:
            blocks[name] = InceptionModule(c, *spec, se=se)
            c = blocks[name].out_channels
        self.blocks = nn.ModuleDict(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks.values():
            x = block(x)
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


@register()
def bn_inception(num_classes: int = 1000, **kwargs) -> BNInception:
    """BN-Inception (the paper's baseline)."""
    return BNInception(num_classes, se=pop_se_config(False, kwargs), **kwargs)


@register(baseline="bn_inception")
def se_bn_inception(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                    **kwargs) -> BNInception:
    """SE-BN-Inception: an SE block on each of the 10 Inception modules. SE options as
    ``SEConfig``."""
    kwargs.update(backend=backend, reduction=reduction)
    return BNInception(num_classes, se=pop_se_config(True, kwargs), **kwargs)

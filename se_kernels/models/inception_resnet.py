"""Inception-ResNet-v2 (Szegedy et al., 2016) and SE-Inception-ResNet-v2.

The architecture is the released one (TF-slim's, also timm's ``inception_resnet_v2``): stem to
35x35x192, Mixed_5b (320), 10 x Block35, Mixed_6a (1088), 20 x Block17, Mixed_7a (2080),
10 x Block8 (the last without ReLU), 1x1 conv to 1536. Module names are timm's, so timm's
state dict loads into the plain network as it is.

SE-Inception-ResNet-v2 puts an SE block on every Inception module (Fig. 2): on the output of
the three non-residual modules (Mixed_5b/6a/7a) and, in each residual module, on the
non-identity branch (as SE-ResNet), i.e. on the scaled branch ``scale * conv(concat)`` just
before the addition, so the tail ``relu(se(branch) + x)`` is one ``fused_se`` call.
"""

from __future__ import annotations

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config
from se_kernels.models.inception import ConvBNReLU

__all__ = ["InceptionResNetV2"]


def _conv(cin, cout, k, stride=1, padding=0) -> ConvBNReLU:
    return ConvBNReLU(cin, cout, k, stride, padding, eps=1e-3)  # TF's BN epsilon


class _Concat(nn.Module):
    """Branches applied to the same input and concatenated; an SE block on the result."""

    def __init__(self, *branches: nn.Module, channels: int, se: SEConfig | None) -> None:
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)
        self.n = len(branches)
        self.se = se.make(channels) if se is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)], 1)
        return self.se(y) if self.se is not None else y


def mixed_5b(se):
    return _Concat(_conv(192, 96, 1),
                   nn.Sequential(_conv(192, 48, 1), _conv(48, 64, 5, padding=2)),
                   nn.Sequential(_conv(192, 64, 1), _conv(64, 96, 3, padding=1),
                                 _conv(96, 96, 3, padding=1)),
                   nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                 _conv(192, 64, 1)),
                   channels=320, se=se)


def mixed_6a(se):
    return _Concat(_conv(320, 384, 3, 2),
                   nn.Sequential(_conv(320, 256, 1), _conv(256, 256, 3, padding=1),
                                 _conv(256, 384, 3, 2)),
                   nn.MaxPool2d(3, 2),
                   channels=1088, se=se)


def mixed_7a(se):
    return _Concat(nn.Sequential(_conv(1088, 256, 1), _conv(256, 384, 3, 2)),
                   nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, 2)),
                   nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, padding=1),
                                 _conv(288, 320, 3, 2)),
                   nn.MaxPool2d(3, 2),
                   channels=2080, se=se)


class _Residual(nn.Module):
    """x + scale * conv1x1(concat(branches)), then ReLU (unless ``relu=False``)."""

    def __init__(self, branches, concat: int, channels: int, scale: float, relu: bool,
                 se: SEConfig | None) -> None:
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)
        self.n = len(branches)
        self.conv2d = nn.Conv2d(concat, channels, 1)
        self.scale, self.relu = scale, relu
        self.se = se.make(channels) if se is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)], 1)
        y = self.conv2d(y) * self.scale
        if self.se is not None:
            return self.se(y, residual=x) if self.relu else self.se(y) + x
        y = y + x
        return torch.relu(y) if self.relu else y


def block35(se, scale=0.17):
    return _Residual([_conv(320, 32, 1),
                      nn.Sequential(_conv(320, 32, 1), _conv(32, 32, 3, padding=1)),
                      nn.Sequential(_conv(320, 32, 1), _conv(32, 48, 3, padding=1),
                                    _conv(48, 64, 3, padding=1))],
                     128, 320, scale, True, se)


def block17(se, scale=0.10):
    return _Residual([_conv(1088, 192, 1),
                      nn.Sequential(_conv(1088, 128, 1), _conv(128, 160, (1, 7), padding=(0, 3)),
                                    _conv(160, 192, (7, 1), padding=(3, 0)))],
                     384, 1088, scale, True, se)


def block8(se, scale=0.20, relu=True):
    return _Residual([_conv(2080, 192, 1),
                      nn.Sequential(_conv(2080, 192, 1), _conv(192, 224, (1, 3), padding=(0, 1)),
                                    _conv(224, 256, (3, 1), padding=(1, 0)))],
                     448, 2080, scale, relu, se)


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2 with optional SE blocks (see the module docstring).

    Args: num_classes; se: ``SEConfig`` or None; dropout: before the classifier (0);
    in_channels. Input at least 75x75 (299x299 for ImageNet).
    """

    def __init__(self, num_classes: int = 1000, *, se: SEConfig | None = None,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.conv2d_1a = _conv(in_channels, 32, 3, 2)
        self.conv2d_2a = _conv(32, 32, 3)
        self.conv2d_2b = _conv(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, 2)
        self.conv2d_3b = _conv(64, 80, 1)
        self.conv2d_4a = _conv(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, 2)
        self.mixed_5b = mixed_5b(se)
        self.repeat = nn.Sequential(*[block35(se) for _ in range(10)])
        self.mixed_6a = mixed_6a(se)
        self.repeat_1 = nn.Sequential(*[block17(se) for _ in range(20)])
        self.mixed_7a = mixed_7a(se)
        self.repeat_2 = nn.Sequential(*[block8(se) for _ in range(9)])
        self.block8 = block8(se, scale=1.0, relu=False)
        self.conv2d_7b = _conv(2080, 1536, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classif = nn.Linear(1536, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b",
                     "conv2d_4a", "maxpool_5a", "mixed_5b", "repeat", "mixed_6a", "repeat_1",
                     "mixed_7a", "repeat_2", "block8", "conv2d_7b"):
            x = getattr(self, name)(x)
        return self.classif(self.dropout(self.avgpool(x).flatten(1)))


@register()
def inception_resnet_v2(num_classes: int = 1000, **kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2 (the paper's baseline; 299x299 input)."""
    return InceptionResNetV2(num_classes, se=pop_se_config(False, kwargs), **kwargs)


@register(baseline="inception_resnet_v2")
def se_inception_resnet_v2(num_classes: int = 1000, *, backend: str = "auto",
                           reduction: int = 16, **kwargs) -> InceptionResNetV2:
    """SE-Inception-ResNet-v2: SE blocks on all 43 Inception modules. SE options as
    ``SEConfig``."""
    kwargs.update(backend=backend, reduction=reduction)
    return InceptionResNetV2(num_classes, se=pop_se_config(True, kwargs), **kwargs)

"""VGG-16 with batch normalization, plain and with an SE block after the ReLU of every
convolution (Section 3.3: "insertion after the non-linearity following each convolution").

Layer names follow torchvision's ``vgg16_bn`` (``features.<i>``, ``classifier.<i>``) where the
plain network's indices allow: the SE network inserts one module after each ReLU, so its
``features`` indices differ.
"""

from __future__ import annotations

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config

__all__ = ["VGG"]

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with batch normalization.

    Args:
        cfg: conv widths and "M" (2x2 max pooling) in order; ``VGG16`` by default.
        num_classes: outputs of the classifier.
        se: ``SEConfig`` of the SE blocks (one after each conv's ReLU), or None.
        dropout: of the two 4096-wide FC layers (0.5).
        in_channels: image channels.

    The pools round up (ceil mode), which changes nothing at 224x224 and lets inputs down to
    8x8 through; the classifier sees a 7x7 map (adaptive average pooling) as torchvision's.
    """

    def __init__(self, cfg=VGG16, num_classes: int = 1000, *, se: SEConfig | None = None,
                 dropout: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            if se is not None:
                layers.append(se.make(v))
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


@register()
def vgg16_bn(num_classes: int = 1000, **kwargs) -> VGG:
    """VGG-16 with batch normalization (the paper's baseline)."""
    return VGG(VGG16, num_classes, se=pop_se_config(False, kwargs), **kwargs)


@register(baseline="vgg16_bn")
def se_vgg16_bn(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                **kwargs) -> VGG:
    """SE-VGG-16 (with batch normalization): an SE block after each of the 13 conv ReLUs.
    SE options (squeeze, activation, gate, bias) as ``SEConfig``."""
    kwargs.update(backend=backend, reduction=reduction)
    return VGG(VGG16, num_classes, se=pop_se_config(True, kwargs), **kwargs)

"""ShuffleNet (v1, Zhang et al. 2018; "ShuffleNet 1x (g=3)") and SE-ShuffleNet.

A ShuffleNet unit: 1x1 group conv (bottleneck = a quarter of the unit's output width; not
grouped in the first unit, whose input has only 24 channels) -> BN-ReLU -> channel shuffle ->
3x3 depthwise conv (the unit's stride) -> BN -> 1x1 group conv -> BN; stride 1: added to the
input, then ReLU; stride 2: concatenated with the 3x3/2 average-pooled input, then ReLU.

SE-ShuffleNet puts the SE block on the residual branch before the addition, as SE-ResNet
(so ``relu(se(branch) + x)`` is one ``fused_se`` call). The down-sampling units, whose branch
is concatenated rather than added, get none by default: that is the placement whose parameter
count matches the paper's 2.4M (an SE block on their branch as well gives 2.5M); pass
``se_downsampling=True`` to add them (docs/models.md).
"""

from __future__ import annotations

import torch
from torch import nn

from se_kernels.models._registry import register
from se_kernels.models._se import SEConfig, pop_se_config

__all__ = ["ShuffleNetV1"]

WIDTHS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
          8: (384, 768, 1536)}  # stage output widths per group count (Table 1, 1x)
REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_grouped: bool,
                 se: SEConfig | None) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout
        g1 = groups if first_grouped else 1
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle_groups = g1
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.se = se.make(branch_out) if se is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.pool is None:
            if self.se is not None:
                return self.se(out, residual=x)   # relu(out * s + x), one kernel
            return self.relu(out + x)
        if self.se is not None:
            out = self.se(out)
        return self.relu(torch.cat([self.pool(x), out], 1))


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 (1x) with optional SE blocks.

    Args: num_classes; se: ``SEConfig`` or None; groups: 1, 2, 3 (default), 4 or 8;
    se_downsampling: SE blocks in the three stride-2 units too; in_channels.
    Works from 8x8 inputs up.
    """

    def __init__(self, num_classes: int = 1000, *, se: SEConfig | None = None, groups: int = 3,
                 se_downsampling: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        if groups not in WIDTHS:
            raise ValueError(f"groups must be one of {sorted(WIDTHS)}, got {groups}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(24), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        c, stages = 24, []
        for i, (cout, n) in enumerate(zip(WIDTHS[groups], REPEATS)):
            units = []
            for j in range(n):
                stride = 2 if j == 0 else 1
                unit_se = se if (stride == 1 or se_downsampling) else None
                units.append(ShuffleUnit(c, cout, stride, groups, first_grouped=(i, j) != (0, 0),
                                         se=unit_se))
                c = cout
            stages.append(nn.Sequential(*units))
        self.stage2, self.stage3, self.stage4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register()
def shufflenet_v1(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
    """ShuffleNet 1x (g=3) (the paper's baseline)."""
    return ShuffleNetV1(num_classes, se=pop_se_config(False, kwargs), **kwargs)


@register(baseline="shufflenet_v1")
def se_shufflenet_v1(num_classes: int = 1000, *, backend: str = "auto", reduction: int = 16,
                     **kwargs) -> ShuffleNetV1:
    """SE-ShuffleNet 1x (g=3): an SE block on the residual branch of every stride-1 unit (see
    the module docstring). SE options as ``SEConfig``."""
    kwargs.update(backend=backend, reduction=reduction)
    return ShuffleNetV1(num_classes, se=pop_se_config(True, kwargs), **kwargs)

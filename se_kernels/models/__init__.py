"""The paper's networks and their plain baselines, with every SE block computed by
``se_kernels.fused_se``.

    from se_kernels import models
    models.list_models()                     # every constructor's name
    net = models.se_resnet50(num_classes=1000, backend="auto", reduction=16)
    plain = models.get_model(models.baseline_of("se_resnet50"))

Files: ``resnet.py`` (ResNet, ResNeXt, SENet-154), ``_se.py`` (the SE options and the
NoSqueeze variant), ``_registry.py``.
"""

from se_kernels.models._registry import baseline_of, get_model, list_models
from se_kernels.models._se import NoSqueeze, SEConfig, se_modules, set_backend
from se_kernels.models.resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x4d,
    se_resnet18,
    se_resnet34,
    se_resnet50,
    se_resnet101,
    se_resnet152,
    se_resnext50_32x4d,
    se_resnext101_32x4d,
    senet154,
    senet154_plain,
)

__all__ = [
    "list_models", "get_model", "baseline_of", "SEConfig", "NoSqueeze", "set_backend",
    "se_modules", "ResNet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "se_resnext50_32x4d", "se_resnext101_32x4d",
    "senet154_plain", "senet154",
]

"""The paper's networks and their plain baselines, with every SE block computed by
``se_kernels.fused_se``.

    from se_kernels import models
    models.list_models()                     # every constructor's name
    net = models.se_resnet50(num_classes=1000, backend="auto", reduction=16)
    plain = models.get_model(models.baseline_of("se_resnet50"))

Every constructor takes ``num_classes`` and ``in_channels``; the SE ones also the SE options of
``SEConfig`` (``backend``, ``reduction``, ``squeeze`` incl. "none" = NoSqueeze, ``activation``,
``gate``, ``bias``), and the plain ones accept ``backend``/``reduction`` and ignore them, so the
same call builds either network of a pair. The ResNet family also takes ``se_stages``,
``integration`` and ``stride_in_1x1`` (see ``resnet.py``).

Files: ``resnet.py`` (ResNet, ResNeXt, SENet-154), ``vgg.py``, ``inception.py``
(BN-Inception), ``inception_resnet.py``, ``mobilenet.py``, ``shufflenet.py``; ``_se.py`` (the
SE options and the NoSqueeze variant), ``weights.py`` (loading timm/torchvision state dicts),
``_registry.py``.
"""

from se_kernels.models._registry import baseline_of, get_model, list_models
from se_kernels.models._se import NoSqueeze, SEConfig, se_modules, set_backend
from se_kernels.models.inception import BNInception, bn_inception, se_bn_inception
from se_kernels.models.inception_resnet import (
    InceptionResNetV2,
    inception_resnet_v2,
    se_inception_resnet_v2,
)
from se_kernels.models.mobilenet import MobileNetV1, mobilenet_v1, se_mobilenet_v1
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
from se_kernels.models.shufflenet import ShuffleNetV1, se_shufflenet_v1, shufflenet_v1
from se_kernels.models.vgg import VGG, se_vgg16_bn, vgg16_bn
from se_kernels.models.weights import from_timm, from_torchvision

__all__ = [
    "list_models", "get_model", "baseline_of", "SEConfig", "NoSqueeze", "set_backend",
    "se_modules", "from_timm", "from_torchvision",
    "ResNet", "VGG", "BNInception", "InceptionResNetV2", "MobileNetV1", "ShuffleNetV1",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "se_resnext50_32x4d", "se_resnext101_32x4d",
    "senet154_plain", "senet154",
    "vgg16_bn", "se_vgg16_bn", "bn_inception", "se_bn_inception",
    "inception_resnet_v2", "se_inception_resnet_v2",
    "mobilenet_v1", "se_mobilenet_v1", "shufflenet_v1", "se_shufflenet_v1",
]

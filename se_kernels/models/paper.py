"""The paper's complexity figures, as data: which network (and options) each one describes.

``FIGURES`` lists every multiply-add and parameter figure of Tables 2, 3, 10, 13, 15, 16 and
Section 4, with the constructor and keywords that build that network here. The tests compare
``se_kernels.complexity`` with them and ``tools/models_table.py`` renders docs/models.md.
Ablation networks (Section 6: "removing the biases of the FC layers ... we use this
configuration in the following experiments") have ``bias=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    source: str             # where the paper prints it
    label: str              # the paper's row name
    model: str              # our constructor
    kwargs: dict = field(default_factory=dict)
    gmacs: float | None = None   # the paper's "GFLOPs" (multiply-adds), as printed
    mparams: float | None = None  # the paper's parameters in millions, as printed
    input_size: tuple = (3, 224, 224)

    @property
    def gdigits(self) -> int:
        """Decimals the paper prints, in GMACs (Table 3 prints integer MFLOPs)."""
        return 3 if self.source == "Table 3" else 2

    def matches(self, macs: int | None = None, params: int | None = None) -> bool:
        """Whether counts round to the printed figures (those the paper prints)."""
        ok = True
        if macs is not None and self.gmacs is not None:
            ok &= f"{macs / 1e9:.{self.gdigits}f}" == f"{self.gmacs:.{self.gdigits}f}"
        if params is not None and self.mparams is not None:
            ok &= f"{params / 1e6:.1f}" == f"{self.mparams:.1f}"
        return ok


_ABL = {"bias": False}  # Section 6 ablations: SE FCs without biases

FIGURES: tuple[Figure, ...] = (
    # Table 2 (GFLOPs at 224x224; 299x299 for Inception-ResNet-v2)
    Figure("Table 2", "ResNet-50", "resnet50", gmacs=3.86),
    Figure("Table 2", "SE-ResNet-50", "se_resnet50", gmacs=3.87),
    Figure("Table 2", "ResNet-101", "resnet101", gmacs=7.58),
    Figure("Table 2", "SE-ResNet-101", "se_resnet101", gmacs=7.60),
    Figure("Table 2", "ResNet-152", "resnet152", gmacs=11.30),
    Figure("Table 2", "SE-ResNet-152", "se_resnet152", gmacs=11.32),
    Figure("Table 2", "ResNeXt-50", "resnext50_32x4d", gmacs=4.24),
    Figure("Table 2", "SE-ResNeXt-50", "se_resnext50_32x4d", gmacs=4.25),
    Figure("Table 2", "ResNeXt-101", "resnext101_32x4d", gmacs=7.99),
    Figure("Table 2", "SE-ResNeXt-101", "se_resnext101_32x4d", gmacs=8.00),
    Figure("Table 2", "VGG-16", "vgg16_bn", gmacs=15.47),
    Figure("Table 2", "SE-VGG-16", "se_vgg16_bn", gmacs=15.48),
    Figure("Table 2", "BN-Inception", "bn_inception", gmacs=2.03),
    Figure("Table 2", "SE-BN-Inception", "se_bn_inception", gmacs=2.04),
    Figure("Table 2", "Inception-ResNet-v2", "inception_resnet_v2", gmacs=11.75,
           input_size=(3, 299, 299)),
    Figure("Table 2", "SE-Inception-ResNet-v2", "se_inception_resnet_v2", gmacs=11.76,
           input_size=(3, 299, 299)),
    # Table 3 (MFLOPs, params)
    Figure("Table 3", "MobileNet", "mobilenet_v1", gmacs=0.569, mparams=4.2),
    Figure("Table 3", "SE-MobileNet", "se_mobilenet_v1", gmacs=0.572, mparams=4.7),
    Figure("Table 3", "ShuffleNet", "shufflenet_v1", gmacs=0.140, mparams=1.8),
    Figure("Table 3", "SE-ShuffleNet", "se_shufflenet_v1", gmacs=0.142, mparams=2.4),
    # Table 10 (params vs reduction ratio r)
    Figure("Table 10", "r = 2", "se_resnet50", {**_ABL, "reduction": 2}, mparams=45.7),
    Figure("Table 10", "r = 4", "se_resnet50", {**_ABL, "reduction": 4}, mparams=35.7),
    Figure("Table 10", "r = 8", "se_resnet50", {**_ABL, "reduction": 8}, mparams=30.7),
    Figure("Table 10", "r = 16", "se_resnet50", {**_ABL, "reduction": 16}, mparams=28.1),
    Figure("Table 10", "r = 32", "se_resnet50", {**_ABL, "reduction": 32}, mparams=26.9),
    Figure("Table 10", "original", "resnet50", mparams=25.6),
    # Table 13 (SE blocks in one stage)
    Figure("Table 13", "ResNet-50", "resnet50", gmacs=3.86, mparams=25.6),
    Figure("Table 13", "SE_Stage_2", "se_resnet50", {**_ABL, "se_stages": (2,)}, 3.86, 25.6),
    Figure("Table 13", "SE_Stage_3", "se_resnet50", {**_ABL, "se_stages": (3,)}, 3.86, 25.7),
    Figure("Table 13", "SE_Stage_4", "se_resnet50", {**_ABL, "se_stages": (4,)}, 3.86, 26.4),
    Figure("Table 13", "SE_All", "se_resnet50", _ABL, 3.87, 28.1),
    # Table 15 (SE after the 3x3 conv)
    Figure("Table 15", "SE", "se_resnet50", _ABL, 3.87, 28.1),
    Figure("Table 15", "SE_3x3", "se_resnet50", {**_ABL, "integration": "3x3"}, 3.86, 25.8),
    # Table 16 (NoSqueeze)
    Figure("Table 16", "ResNet-50", "resnet50", gmacs=3.86, mparams=25.6),
    Figure("Table 16", "NoSqueeze", "se_resnet50", {**_ABL, "squeeze": "none"}, 4.27, 28.1),
    Figure("Table 16", "SE", "se_resnet50", _ABL, 3.87, 28.1),
)

# Ablations with no complexity figure in the paper (Tables 11, 12, 14): built and counted too.
UNPRINTED: tuple[Figure, ...] = (
    Figure("Table 11", "Max squeeze", "se_resnet50", {**_ABL, "squeeze": "max"}),
    Figure("Table 12", "ReLU gate", "se_resnet50", {**_ABL, "gate": "relu"}),
    Figure("Table 12", "Tanh gate", "se_resnet50", {**_ABL, "gate": "tanh"}),
    Figure("Table 14", "SE-PRE", "se_resnet50", {**_ABL, "integration": "pre"}),
    Figure("Table 14", "SE-POST", "se_resnet50", {**_ABL, "integration": "post"}),
    Figure("Table 14", "SE-Identity", "se_resnet50", {**_ABL, "integration": "identity"}),
    Figure("Table 8", "SENet-154", "senet154"),
    Figure("Table 8", "SENet-154 without SE", "senet154_plain"),
    Figure("-", "SE-ResNet-18", "se_resnet18"),
    Figure("-", "ResNet-18", "resnet18"),
    Figure("-", "SE-ResNet-34", "se_resnet34"),
    Figure("-", "ResNet-34", "resnet34"),
    Figure("-", "ResNet-50 (torchvision stride)", "resnet50",
           {"stride_in_1x1": False, "stem_pool": "pad"}),
    Figure("-", "SE-ResNet-50 (torchvision stride)", "se_resnet50",
           {"stride_in_1x1": False, "stem_pool": "pad"}),
)

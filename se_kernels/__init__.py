"""se_kernels: the Squeeze-and-Excitation block fused into single kernels.

    import se_kernels
    y = se_kernels.fused_se(x, w1, w2)          # x: (N, C, H, W), w1: (Cr, C), w2: (C, Cr)
    se = se_kernels.SqueezeExcitation(256)      # an nn.Module over fused_se
    se_kernels.available_backends()             # e.g. ['reference', 'cpu']
    se_kernels.models.se_resnet50()             # the paper's networks (loaded on first use)
    se_kernels.complexity(net)                  # {"params": ..., "macs": ...}, SE ops counted
    se_kernels.convert(torchvision_or_timm_net) # their SE modules -> FusedSE, in place
    torch.onnx.export(net, (x,), dynamo=True,   # ONNX: the ops' translations, passed
                      custom_translation_table=se_kernels.onnx_translation_table())
"""

from se_kernels._extension import LOAD_ERROR as EXTENSION_LOAD_ERROR
from se_kernels.complexity import complexity
from se_kernels.convert import convert
from se_kernels.nn import FusedSE, SqueezeExcitation
from se_kernels.onnx import onnx_translation_table
from se_kernels.ops import BackendUnavailableError, available_backends, fused_se
from se_kernels.reference import se_reference

__version__ = "0.1.0"

__all__ = [
    "fused_se",
    "available_backends",
    "BackendUnavailableError",
    "SqueezeExcitation",
    "FusedSE",
    "se_reference",
    "EXTENSION_LOAD_ERROR",
    "models",
    "complexity",
    "convert",
    "onnx_translation_table",
]


def __getattr__(name: str):
    # Loaded on first use, so `import se_kernels` stays as cheap as the op itself.
    if name == "models":
        import importlib

        return importlib.import_module("se_kernels.models")
    raise AttributeError(f"module 'se_kernels' has no attribute {name!r}")

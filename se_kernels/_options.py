"""Option names of ``fused_se`` and the integer codes the ops take.

The codes must match ``csrc/include/se_kernels/options.h``.
"""

import torch

SQUEEZES = {"avg": 0, "max": 1}
# gelu is exact (erf); gelu_tanh is GELU(approximate="tanh").
ACTIVATIONS = {"relu": 0, "silu": 1, "hardswish": 2, "relu6": 3, "gelu": 4, "gelu_tanh": 5}
GATES = {"sigmoid": 0, "hardsigmoid": 1, "tanh": 2, "relu": 3}
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

# Accepted dtypes: float16/bfloat16/float32 accumulate in float32, float64 in float64.
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32

"""The reference SE block: plain PyTorch, kept simple and obviously right.

It is the oracle every kernel is tested against (evaluated on float64 copies of the inputs)
and the ``backend="reference"`` implementation. It computes in float32 (float64 for float64
inputs) and casts once at the end; autograd differentiates it through PyTorch's own ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from se_kernels._options import acc_dtype

_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh,
          "relu": F.relu}


def se_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 b1: torch.Tensor | None = None, b2: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, squeeze: str = "avg",
                 activation: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """SE block of DESIGN.md section 1. x: (N, C, H, W); w1: (Cr, C); w2: (C, Cr);
    b1: (Cr,); b2: (C,); residual: like x. Returns y with x's dtype and memory format.

    Max squeeze uses ``amax``, whose gradient is split evenly between tied maxima.
    """
    acc = acc_dtype(x.dtype)
    xf = x.to(acc)
    z = xf.mean(dim=(2, 3)) if squeeze == "avg" else xf.amax(dim=(2, 3))  # (N, C)
    h = _ACTIVATIONS[activation](F.linear(z, w1.to(acc), None if b1 is None else b1.to(acc)))
    s = _GATES[gate](F.linear(h, w2.to(acc), None if b2 is None else b2.to(acc)))  # (N, C)
    y = xf * s[:, :, None, None]
    if residual is not None:
        y = F.relu(y + residual.to(acc))
    return y.to(x.dtype)

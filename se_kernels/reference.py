"""The reference SE block: plain PyTorch, kept simple and obviously right.

It is the oracle every kernel is tested against (evaluated on float64 copies of the inputs)
and the ``backend="reference"`` implementation. It computes in float32 (float64 for float64
inputs) and casts once at the end; autograd differentiates it through PyTorch's own ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from se_kernels._options import acc_dtype


class _HardSwish(torch.autograd.Function):
    """F.hardswish, differentiated by the rule of PyTorch's scalar and CUDA hardswish_backward
    (0 where v <= -3, selected; g (v/3 + 1/2) where v < 3; else g, NaN v included). PyTorch's
    vectorised CPU path gives NaN at a NaN v instead, so which rule autograd applies depends
    on the tensor's size; the oracle needs one."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return F.hardswish(v)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return torch.where(v <= -3, torch.zeros_like(g), torch.where(v < 3, g * (v / 3 + 0.5), g))


def _relu6(v: torch.Tensor) -> torch.Tensor:
    """F.relu6's values; its gradient selects 0 where v <= 0 or v >= 6 and passes g elsewhere,
    NaN v included (hardtanh_backward's scalar/CUDA rule: the vectorised CPU path gives 0 at a
    NaN v, so F.relu6's own gradient there depends on the tensor's size)."""
    return torch.where(v >= 6, 6.0, F.relu(v))


def _gelu(v: torch.Tensor) -> torch.Tensor:
    """Exact GELU, v Phi(v) = v erfc(-v / sqrt 2) / 2 (no cancellation in the lower tail),
    written out: F.gelu in float32 on the CPU gives NaN at v = +inf, where the value is +inf."""
    return 0.5 * v * torch.erfc(v * -0.7071067811865476)


_ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "hardswish": _HardSwish.apply, "relu6": _relu6,
                "gelu": _gelu, "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}
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

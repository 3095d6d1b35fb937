"""The SE options every network shares, and the block variants of the paper's ablations.

``SEConfig`` holds what Tables 10-12 and 16 vary (reduction ratio, squeeze operator, gate,
the NoSqueeze variant) plus the FC bias and the backend; ``SEConfig.make(C)`` builds the
module. Standard SE blocks are ``se_kernels.SqueezeExcitation`` (one ``fused_se`` call);
``NoSqueeze`` is the Table 16 control, which has no pooling and so no fused form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from se_kernels._options import ACTIVATIONS, BACKENDS, GATES
from se_kernels.nn import SqueezeExcitation
from se_kernels.reference import _ACTIVATIONS as _REFERENCE_ACTIVATIONS

__all__ = ["SEConfig", "NoSqueeze", "set_backend", "se_modules", "pop_se_config"]

SQUEEZE_CHOICES = ("avg", "max", "none")  # "none": the NoSqueeze variant (Table 16)


@dataclass(frozen=True)
class SEConfig:
    """Options of every SE block of a network.

    reduction: r of Table 10; the bottleneck has ``max(1, C // r)`` channels.
    squeeze: "avg" (default), "max" (Table 11) or "none" (NoSqueeze, Table 16: the two FCs
        become 1x1 convolutions over every position and nothing is pooled).
    activation: after the first FC, "relu" (the paper), "silu", "hardswish", "relu6", "gelu"
        or "gelu_tanh".
    gate: "sigmoid" (the paper), "tanh", "relu" (Table 12) or "hardsigmoid".
    bias: FC biases (the released models have them; the ablations of Section 6 do not).
    backend: the ``fused_se`` backend: "auto", "reference", "cpu", "triton" or "cuda".
    """

    reduction: int = 16
    squeeze: str = "avg"
    activation: str = "relu"
    gate: str = "sigmoid"
    bias: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"reduction must be an int >= 1, got {self.reduction!r}")
        for name, value, choices in (("squeeze", self.squeeze, SQUEEZE_CHOICES),
                                     ("activation", self.activation, tuple(ACTIVATIONS)),
                                     ("gate", self.gate, tuple(GATES)),
                                     ("backend", self.backend, BACKENDS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")

    def make(self, channels: int, inplace: bool = False) -> nn.Module:
        """The SE block for ``channels`` channels: ``forward(x, residual=None)``. ``inplace``:
        the block may overwrite its input when no gradient is needed (``SqueezeExcitation``);
        only for an input that nothing reads afterwards."""
        if self.squeeze == "none":
            return NoSqueeze(channels, self.reduction, bias=self.bias,
                             activation=self.activation, gate=self.gate)
        return SqueezeExcitation(channels, self.reduction, bias=self.bias, squeeze=self.squeeze,
                                 activation=self.activation, gate=self.gate,
                                 backend=self.backend, inplace=inplace)


SE_OPTIONS = ("backend", "reduction", "squeeze", "activation", "gate", "bias")


def pop_se_config(with_se: bool, kwargs: dict) -> SEConfig | None:
    """Removes the SE options from a constructor's ``kwargs``; returns their ``SEConfig``, or
    None for a plain network. A plain network accepts (and ignores) ``backend`` and
    ``reduction``, so one call builds either network of a pair; other SE options are an error
    there."""
    options = {k: kwargs.pop(k) for k in SE_OPTIONS if k in kwargs}
    config = SEConfig(**options)  # validates them either way
    if with_se:
        return config
    extra = sorted(set(options) - {"backend", "reduction"})
    if extra:
        raise TypeError(f"a plain network takes no SE options, got {extra}")
    return None


_ACT = _REFERENCE_ACTIVATIONS  # relu, silu, hardswish, relu6, gelu, gelu_tanh
_GATE = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh,
         "relu": F.relu}


class NoSqueeze(nn.Module):
    """The NoSqueeze control of Table 16: the SE block without the global pooling.

    ``s = gate(conv1x1(act(conv1x1(x))))`` is computed at every position, so ``s`` has x's
    shape (N, C, H, W) and each channel is rescaled by a function of its own position only.
    Parameters as ``SqueezeExcitation``'s (``fc1_weight`` (Cr, C), ``fc2_weight`` (C, Cr),
    optional biases), so both variants have the same parameter count, as in Table 16.
    ``forward(x, residual=None)`` returns ``x * s`` or ``relu(x * s + residual)``.
    """

    def __init__(self, channels: int, reduction: int = 16, *, bias: bool = True,
                 activation: str = "relu", gate: str = "sigmoid") -> None:
        super().__init__()
        cr = max(1, channels // reduction)
        self.channels, self.reduced_channels = channels, cr
        self.activation, self.gate = activation, gate
        self.fc1_weight = nn.Parameter(torch.empty(cr, channels))
        self.fc2_weight = nn.Parameter(torch.empty(channels, cr))
        self.fc1_bias = nn.Parameter(torch.empty(cr)) if bias else None
        self.fc2_bias = nn.Parameter(torch.empty(channels)) if bias else None
        for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if b is not None:
                nn.init.uniform_(b, -1 / math.sqrt(w.shape[1]), 1 / math.sqrt(w.shape[1]))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = _ACT[self.activation](F.conv2d(x, self.fc1_weight[:, :, None, None], self.fc1_bias))
        s = _GATE[self.gate](F.conv2d(h, self.fc2_weight[:, :, None, None], self.fc2_bias))
        y = x * s
        return y if residual is None else F.relu(y + residual)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, reduced_channels={self.reduced_channels}, "
                f"bias={self.fc1_bias is not None}, activation={self.activation!r}, "
                f"gate={self.gate!r}")


def se_modules(model: nn.Module) -> list[SqueezeExcitation]:
    """The ``SqueezeExcitation`` (``FusedSE``) modules of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, SqueezeExcitation)]


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets the ``fused_se`` backend of every SE block of ``model``; returns ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    for m in se_modules(model):
        m.backend = backend
    return model

"""``SqueezeExcitation`` (alias ``FusedSE``): the SE block as an nn.Module over ``fused_se``."""

from __future__ import annotations

import math

import torch
from torch import nn

from se_kernels.ops import fused_se, writes_in_place

__all__ = ["SqueezeExcitation", "FusedSE"]


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation block (Hu et al.) computed by ``se_kernels.fused_se``.

    Args:
        channels: C, the channels of the input.
        reduction: r; the bottleneck has ``max(1, C // r)`` channels unless ``reduced_channels``
            is given.
        reduced_channels: Cr, overriding ``reduction``.
        bias: whether the two FC layers have biases.
        squeeze, activation, gate, backend: as in ``fused_se``.
        inplace: write the result into the input x, like ``nn.ReLU(inplace=True)``,
            whenever no gradient is needed (under ``torch.no_grad()``/``inference_mode()``,
            or with nothing requiring grad) and the backend does so in its kernel (``cpu``,
            dense x, no autocast); otherwise it computes out of place as usual (copying y into
            x would cost a pass more than it saves). Only for an x that nothing else reads
            afterwards (a ResNet block's branch output).

    ``forward(x, residual=None)``: x is (N, C, H, W); with ``residual`` the block computes the
    SE-ResNet tail ``relu(se(x) + residual)`` in the same kernel.

    Parameters ``fc1_weight`` (Cr, C), ``fc2_weight`` (C, Cr) and the optional ``fc1_bias``
    (Cr,), ``fc2_bias`` (C,). ``from_parameters`` builds the module around existing parameters
    (any shape ``fused_se`` accepts, e.g. 1x1-conv weights), sharing them.
    """

    inplace = False  # the default for modules built around __init__ (ConvertedSE, pickles)

    def __init__(self, channels: int, reduction: int = 16, *, reduced_channels: int | None = None,
                 bias: bool = True, squeeze: str = "avg", activation: str = "relu",
                 gate: str = "sigmoid", backend: str = "auto", inplace: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"SqueezeExcitation: channels must be >= 1, got {channels}")
        if reduced_channels is None:
            if reduction < 1:
                raise ValueError(f"SqueezeExcitation: reduction must be >= 1, got {reduction}")
            reduced_channels = max(1, channels // reduction)
        if reduced_channels < 1:
            raise ValueError(
                f"SqueezeExcitation: reduced_channels must be >= 1, got {reduced_channels}")
        factory = {"device": device, "dtype": dtype}
        self.channels, self.reduced_channels = channels, reduced_channels
        self.squeeze, self.activation, self.gate, self.backend = squeeze, activation, gate, backend
        self.inplace = inplace
        self.fc1_weight = nn.Parameter(torch.empty(reduced_channels, channels, **factory))
        self.fc2_weight = nn.Parameter(torch.empty(channels, reduced_channels, **factory))
        self.fc1_bias = nn.Parameter(torch.empty(reduced_channels, **factory)) if bias else None
        self.fc2_bias = nn.Parameter(torch.empty(channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation for both FCs."""
        for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if b is not None:
                fan_in = w.shape[1]
                nn.init.uniform_(b, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    @classmethod
    def from_parameters(cls, fc1_weight: nn.Parameter, fc2_weight: nn.Parameter,
                        fc1_bias: nn.Parameter | None = None, fc2_bias: nn.Parameter | None = None,
                        **options) -> "SqueezeExcitation":
        """A module that uses (shares, does not copy) the given parameters."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.reduced_channels, module.channels = fc1_weight.shape[0], fc1_weight.shape[1]
        module.squeeze = options.pop("squeeze", "avg")
        module.activation = options.pop("activation", "relu")
        module.gate = options.pop("gate", "sigmoid")
        module.backend = options.pop("backend", "auto")
        module.inplace = options.pop("inplace", False)
        if options:
            raise TypeError(f"from_parameters: unexpected options {sorted(options)}")
        module.fc1_weight, module.fc2_weight = fc1_weight, fc2_weight
        module.fc1_bias, module.fc2_bias = fc1_bias, fc2_bias
        return module

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        inplace = (self.inplace and writes_in_place(x, self.backend)
                   and not (torch.is_grad_enabled() and any(
                       t is not None and t.requires_grad
                       for t in (x, residual, self.fc1_weight, self.fc2_weight, self.fc1_bias,
                                 self.fc2_bias))))
        return fused_se(x, self.fc1_weight, self.fc2_weight, self.fc1_bias, self.fc2_bias,
                        residual=residual, squeeze=self.squeeze, activation=self.activation,
                        gate=self.gate, backend=self.backend, inplace=inplace)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, reduced_channels={self.reduced_channels}, "
                f"bias={self.fc1_bias is not None}, squeeze={self.squeeze!r}, "
                f"activation={self.activation!r}, gate={self.gate!r}, backend={self.backend!r}"
                + (", inplace=True" if self.inplace else ""))


FusedSE = SqueezeExcitation

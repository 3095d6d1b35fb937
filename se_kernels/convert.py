"""``convert(model)``: swaps the SE modules of torchvision and timm models for fused ones.

Each recognised module is replaced in place by a ``ConvertedSE`` (a ``se_kernels.FusedSE``)
that keeps the original parameter-holding submodules under their original names, so the
replacement shares the very ``Parameter`` objects (optimisers keep working) and the state-dict
keys do not change (checkpoints of the unconverted model load into the converted one and back).

Recognised, when exactly representable (``type(m) is cls``, no subclasses):

====================================================  ===========================================
torchvision ``ops.misc.SqueezeExcitation``             EfficientNet (SiLU), MobileNetV3
                                                       (Hardsigmoid gate), RegNetY, MaxViT
timm ``layers.SEModule`` (= ``SqueezeExcite``)         ResNet/ResNeXt "se" variants, RegNet,
                                                       TResNet, ByobNet, FastViT, ...
timm ``layers.SqueezeExciteCl``                        channels-last (N, H, W, C) tensors
timm ``models._efficientnet_blocks.SqueezeExcite``     EfficientNet, MobileNetV3, GhostNet, ...
timm ``models.senet.SEModule``                         legacy_seresnet*, legacy_senet154
timm ``layers.EffectiveSEModule``, ``hgnet.EseModule`` one FC, no bottleneck (see below)
====================================================  ===========================================

Activations: ReLU, SiLU (nn.SiLU, timm Swish/SwishMe), hard-swish (nn.Hardswish, timm
HardSwish/HardSwishMe), ReLU6 (nn.ReLU6, nn.Hardtanh(0, 6)), GELU (nn.GELU, timm GELU) and its
tanh approximation (nn.GELU(approximate="tanh"), timm GELUTanh) -- what timm's
``create_act_layer`` returns for those names; gates: Sigmoid, Hardsigmoid (nn and timm's
HardSigmoid/HardSigmoidMe), Tanh, ReLU. Left alone (and listed in the report's ``skipped``):
``add_maxpool=True``, any other activation or gate (Mish, QuickGELU, PReLU ...), FCs that are
not plain 1x1 convolutions, a norm between the FCs other than an eval-mode BatchNorm (below).
Modules of other types are not looked at.

A BatchNorm between the FCs (timm ``SEModule(norm_layer=nn.BatchNorm2d)``: ReXNet) is folded
into FC1 when the model is converted in eval mode, exactly: ``W1' = (gamma / sigma) W1``,
``b1' = gamma (b1 - mu) / sigma + beta`` with ``sigma = sqrt(running_var + eps)``, computed
from the live parameters and running statistics at each call (gradients reach W1, b1, gamma
and beta; a checkpoint loaded later is honoured). The BatchNorm stays a child under its own
name, so parameters, buffers and state-dict keys are unchanged. In training mode a BatchNorm
normalises with batch statistics, which no fold can express: a module found in training mode
is left alone, with that reason. A folded module switched back to ``.train()`` *unfolds*: its
forward is then the original module's own (batch statistics, running-statistics updates, the
same autograd graph), and ``.eval()`` fuses it again.

The one-FC "effective SE" form ``x * gate(W mean(x) + b)`` has no hidden layer. It is mapped
exactly onto ``fused_se`` with ``W1 = [W; -W]``, ``b1 = [b; -b]``, ReLU, ``W2 = [I, -I]``:
``relu(u) - relu(-u) = u`` bit for bit, since one of the two terms is exactly 0. The stacked
weights are built from the shared ``fc`` parameters at each call (gradients flow back to them);
the FCs cost 4x the MACs of the single FC, still a small part of the op (its pooling and
scaling are the same).

torchvision and timm are never imported here: a class is only looked for if its module is
already imported (it must be, for a model to contain one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from se_kernels.nn import SqueezeExcitation
from se_kernels.ops import fused_se

__all__ = ["convert", "ConvertedSE", "ConversionReport"]


# ---- the report -----------------------------------------------------------------------------

@dataclass
class Replaced:
    name: str        # the module's qualified name in the model
    source: str      # the class replaced, e.g. "torchvision.ops.misc.SqueezeExcitation"
    channels: int
    reduced_channels: int
    activation: str
    gate: str
    bias: bool
    folded_norm: str | None = None  # the BatchNorm folded into FC1 (its attribute name)


@dataclass
class Skipped:
    name: str
    source: str
    reason: str


@dataclass
class ConversionReport:
    """What ``convert`` did: ``replaced`` and ``skipped`` (recognised but not representable)."""

    backend: str
    replaced: list[Replaced] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"se_kernels.convert: replaced {len(self.replaced)} SE module(s) "
                 f"(backend={self.backend!r}), left {len(self.skipped)} alone"]
        counts: dict[tuple, int] = {}
        for r in self.replaced:
            key = (r.source, r.activation, r.gate, r.folded_norm is not None)
            counts[key] = counts.get(key, 0) + 1
        for (source, act, gate, folded), n in counts.items():
            lines.append(f"  {n} x {source} (activation={act}, gate={gate}"
                         f"{', BatchNorm folded into FC1' if folded else ''})")
        for s in self.skipped:
            lines.append(f"  left alone: {s.name} ({s.source}): {s.reason}")
        return "\n".join(lines)


# ---- the replacement module -----------------------------------------------------------------

class ConvertedSE(SqueezeExcitation):
    """A ``FusedSE`` over the parameters of the module it replaced.

    The original FC submodules stay children under their original names (``fc1``/``fc2``,
    ``conv_reduce``/``conv_expand``, ``fc`` ...), so parameters and state-dict keys are
    unchanged. ``fc1_weight`` & co. are read from them at each call. ``single_fc``: the
    effective-SE form (see the module docstring). ``channels_last_input``: x is (N, H, W, C)
    (timm's ``SqueezeExciteCl``); it is viewed as NCHW with channels-last strides, no copy.
    """

    def __init__(self, fcs: dict[str, nn.Module], *, activation: str, gate: str, backend: str,
                 source: str, single_fc: bool = False, channels_last_input: bool = False,
                 norm: tuple[str, nn.Module] | None = None, original: nn.Module | None = None):
        nn.Module.__init__(self)
        names = list(fcs)
        for name, module in fcs.items():
            self.add_module(name, module)
            if norm is not None and name == names[0]:  # keep the original's child order
                self.add_module(norm[0], norm[1])
        self._fc_names = tuple(fcs)
        self._norm_name = None if norm is None else norm[0]
        # The module replaced, kept outside the module tree (it shares the children above, so
        # no parameter or state-dict key is added): the forward of a folded module in training
        # mode. Only set when a norm is folded.
        self.__dict__["_original"] = original if norm is not None else None
        if original is not None:
            self.train(original.training)  # the mode of the module replaced
        self.single_fc = single_fc
        self.channels_last_input = channels_last_input
        first = fcs[self._fc_names[0]]
        cr, c = first.weight.shape[:2]
        self.channels = c
        self.reduced_channels = 2 * cr if single_fc else cr
        self.squeeze, self.activation, self.gate, self.backend = "avg", activation, gate, backend
        self.source = source
        if single_fc:
            eye = torch.eye(c, dtype=first.weight.dtype, device=first.weight.device)
            self.register_buffer("_fc2_single", torch.cat([eye, -eye], 1), persistent=False)

    def reset_parameters(self) -> None:
        """Re-initialises the original FC (and norm) submodules (as their own classes do)."""
        for name in self._fc_names + ((self._norm_name,) if self._norm_name else ()):
            getattr(self, name).reset_parameters()

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(gamma / sigma, beta, -mu) of the folded BatchNorm (gamma = 1 and beta = None when it
        is not affine), in float32 (float64 for float64 statistics)."""
        bn = getattr(self, self._norm_name)
        acc = torch.float64 if bn.running_var.dtype == torch.float64 else torch.float32
        scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
        shift = -bn.running_mean.to(acc)
        if bn.weight is not None:
            scale = scale * bn.weight.to(acc)
        if bn.bias is not None:
            return scale, bn.bias.to(acc), shift
        return scale, None, shift

    # SqueezeExcitation reads these four
    @property
    def fc1_weight(self) -> torch.Tensor:
        w = getattr(self, self._fc_names[0]).weight
        if self._norm_name is not None:  # W1' = (gamma / sigma) W1
            scale = self._fold()[0]
            return (w.to(scale.dtype) * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        return torch.cat([w, -w]) if self.single_fc else w

    @property
    def fc1_bias(self) -> torch.Tensor | None:
        b = getattr(self, self._fc_names[0]).bias
        if self._norm_name is not None:  # b1' = gamma (b1 - mu) / sigma + beta
            scale, beta, shift = self._fold()
            dtype = getattr(self, self._fc_names[0]).weight.dtype
            centred = shift if b is None else b.to(scale.dtype) + shift
            out = scale * centred
            return (out if beta is None else out + beta).to(dtype)
        return torch.cat([b, -b]) if self.single_fc and b is not None else b

    @property
    def fc2_weight(self) -> torch.Tensor:
        if self.single_fc:
            return self._fc2_single
        return getattr(self, self._fc_names[1]).weight

    @property
    def fc2_bias(self) -> torch.Tensor | None:
        return None if self.single_fc else getattr(self, self._fc_names[1]).bias

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self._original is not None:
            # A folded BatchNorm in training mode: unfold (the original module's forward).
            if residual is not None:
                raise ValueError("ConvertedSE: residual is not supported while a folded norm "
                                 "is unfolded in training mode")
            return self._original(x)
        if self.channels_last_input:
            x = x.permute(0, 3, 1, 2)
            if residual is not None:
                residual = residual.permute(0, 3, 1, 2)
        y = fused_se(x, self.fc1_weight, self.fc2_weight, self.fc1_bias, self.fc2_bias,
                     residual=residual, squeeze="avg", activation=self.activation,
                     gate=self.gate, backend=self.backend)
        return y.permute(0, 2, 3, 1) if self.channels_last_input else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, source={self.source!r}" + (
            ", single_fc=True" if self.single_fc else "") + (
            f", folded_norm={self._norm_name!r}" if self._norm_name else "")


# ---- recognising modules --------------------------------------------------------------------

def _cls(module: str, name: str):
    """The class ``module.name`` if that module is already imported, else None."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _classes(*paths: str) -> tuple[type, ...]:
    out = []
    for path in paths:
        module, _, name = path.rpartition(".")
        c = _cls(module, name)
        if isinstance(c, type):
            out.append(c)
    return tuple(out)


def _activation_name(m: nn.Module) -> str | None:
    t = type(m)
    if t in (nn.ReLU,):
        return "relu"
    if t in (nn.SiLU,) + _classes("timm.layers.activations.Swish",
                                  "timm.layers.activations_me.SwishMe"):
        return "silu"
    if t in (nn.Hardswish,) + _classes("timm.layers.activations.HardSwish",
                                        "timm.layers.activations_me.HardSwishMe"):
        return "hardswish"
    if t is nn.ReLU6 or (t is nn.Hardtanh and (m.min_val, m.max_val) == (0.0, 6.0)):
        return "relu6"
    if t is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(m.approximate)
    if t in _classes("timm.layers.activations.GELU"):
        return "gelu"
    if t in _classes("timm.layers.activations.GELUTanh"):
        return "gelu_tanh"
    return None


def _gate_name(m: nn.Module) -> str | None:
    t = type(m)
    if t in (nn.Sigmoid,) + _classes("timm.layers.activations.Sigmoid"):
        return "sigmoid"
    if t in (nn.Hardsigmoid,) + _classes("timm.layers.activations.HardSigmoid",
                                          "timm.layers.activations_me.HardSigmoidMe"):
        return "hardsigmoid"
    if t in (nn.Tanh,) + _classes("timm.layers.activations.Tanh"):
        return "tanh"
    if t is nn.ReLU:
        return "relu"
    return None


def _fc_problem(fc: nn.Module, cin: int | None = None) -> str | None:
    """Why ``fc`` is not a plain FC over channels (None if it is)."""
    if isinstance(fc, nn.Conv2d):
        if (fc.kernel_size != (1, 1) or fc.stride != (1, 1) or fc.padding not in ((0, 0), 0)
                or fc.dilation != (1, 1) or fc.groups != 1):
            return f"{fc} is not a plain 1x1 convolution"
        return None
    if isinstance(fc, nn.Linear):
        return None
    return f"FC of type {type(fc).__name__}"


@dataclass
class _Spec:
    """How to read one SE class: the FC attribute names and where activation/gate live."""

    path: str                  # module path + class name
    fcs: tuple[str, ...]       # parameter-holding FCs, in order
    act: str | None            # attribute of the activation (None: single-FC form)
    gate: str
    channels_last: bool = False
    checks: tuple = ()         # (attribute, predicate, reason if the predicate fails)
    norm: str | None = None    # attribute of a norm between the FCs (Identity when absent)


def _is_identity(m) -> bool:
    return isinstance(m, nn.Identity)


def _norm_problem(bn: nn.Module) -> str | None:
    """Why the norm between the FCs cannot be folded into FC1 (None if it can)."""
    if type(bn) is not nn.BatchNorm2d:
        return f"a {type(bn).__name__} between the FCs (only an eval-mode BatchNorm folds)"
    if not bn.track_running_stats or bn.running_mean is None:
        return ("a BatchNorm between the FCs without running statistics (it always normalises "
                "with batch statistics, which no fold can express)")
    if bn.training:
        return ("a BatchNorm between the FCs in training mode (it normalises with batch "
                "statistics); convert the model in eval mode to fold it into FC1")
    return None


def _pool_is_global(m) -> bool:
    return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))


SPECS = (
    _Spec("torchvision.ops.misc.SqueezeExcitation", ("fc1", "fc2"), "activation",
          "scale_activation", checks=(("avgpool", _pool_is_global, "pooling is not global"),)),
    _Spec("timm.layers.squeeze_excite.SEModule", ("fc1", "fc2"), "act", "gate",
          checks=(("add_maxpool", lambda v: not v, "add_maxpool=True (avg+max squeeze)"),),
          norm="bn"),
    _Spec("timm.layers.squeeze_excite.SqueezeExciteCl", ("fc1", "fc2"), "act", "gate",
          channels_last=True),
    _Spec("timm.models._efficientnet_blocks.SqueezeExcite", ("conv_reduce", "conv_expand"),
          "act1", "gate"),
    _Spec("timm.models.senet.SEModule", ("fc1", "fc2"), "relu", "sigmoid"),
    _Spec("timm.layers.squeeze_excite.EffectiveSEModule", ("fc",), None, "gate",
          checks=(("add_maxpool", lambda v: not v, "add_maxpool=True (avg+max squeeze)"),)),
    _Spec("timm.models.hgnet.EseModule", ("conv",), None, "sigmoid"),
)


def _plan(m: nn.Module, spec: _Spec, backend: str) -> ConvertedSE | str:
    """The replacement for ``m``, or why there is none."""
    for attr, ok, reason in spec.checks:
        if not ok(getattr(m, attr, None)):
            return reason
    fcs = {name: getattr(m, name) for name in spec.fcs}
    for fc in fcs.values():
        why = _fc_problem(fc)
        if why:
            return why
    norm = None
    if spec.norm is not None and not _is_identity(getattr(m, spec.norm, None)):
        bn = getattr(m, spec.norm)
        why = _norm_problem(bn)
        if why:
            return why
        norm = (spec.norm, bn)
    act = "relu" if spec.act is None else _activation_name(getattr(m, spec.act))
    if act is None:
        return (f"activation {type(getattr(m, spec.act)).__name__} is not one of "
                "relu, silu, hardswish, relu6, gelu, gelu_tanh")
    gate = _gate_name(getattr(m, spec.gate))
    if gate is None:
        return (f"gate {type(getattr(m, spec.gate)).__name__} is not sigmoid, hardsigmoid, "
                "tanh or relu")
    biases = [fc.bias is not None for fc in fcs.values()]
    if len(set(biases)) > 1:
        return "one FC has a bias and the other not"
    return ConvertedSE(fcs, activation=act, gate=gate, backend=backend, source=spec.path,
                       single_fc=spec.act is None, channels_last_input=spec.channels_last,
                       norm=norm, original=m)


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replaces, in place, every torchvision/timm SE module of ``model`` that ``fused_se`` can
    compute exactly by a ``ConvertedSE`` (a ``se_kernels.FusedSE``) sharing its parameters.

    Returns the model (the replacement itself if ``model`` is an SE module). What was done is
    in ``model.se_conversion``, a ``ConversionReport`` (``.replaced``, ``.skipped``; ``print``
    it for a summary). Outputs are unchanged up to float rounding of the fused reductions.
    Converting twice is harmless (nothing is left to replace).
    """
    from se_kernels._options import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"convert: backend must be one of {list(BACKENDS)}, got {backend!r}")
    specs = [(c, s) for s in SPECS for c in _classes(s.path)]
    report = ConversionReport(backend=backend)
    replacements: list[tuple[str, ConvertedSE]] = []
    for name, m in model.named_modules():
        spec = next((s for c, s in specs if type(m) is c), None)
        if spec is None:
            continue
        new = _plan(m, spec, backend)
        if isinstance(new, str):
            report.skipped.append(Skipped(name, spec.path, new))
            continue
        replacements.append((name, new))
        report.replaced.append(Replaced(name, spec.path, new.channels, new.reduced_channels
                                        // (2 if new.single_fc else 1), new.activation,
                                        new.gate, getattr(new, new._fc_names[0]).bias is not None,
                                        new._norm_name))
    root = model
    for name, new in replacements:
        if not name:
            root = new
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    root.se_conversion = report
    return root

"""Loading timm's and torchvision's (SE-)ResNet/ResNeXt/SENet-154 weights into our networks.

    net = from_timm("legacy_seresnet50", "seresnet50.safetensors")   # or a state dict
    net = from_torchvision("resnet50", torch.load(path, weights_only=True))

``from_timm`` builds our network configured as timm's (``TIMM_ARCHS``: the constructor and the
keywords that make the architectures identical) and loads the mapped state dict strictly, so
the outputs are those of the timm model. Files are read with safetensors or
``torch.load(weights_only=True)``, never unrestricted pickle.

The key mapping (``map_state_dict``; every other key is unchanged):

==========================================  ===================================  ==============
timm / torchvision                          ours                                 note
==========================================  ===================================  ==============
``layer0.{conv,bn}{1,2,3}.*``               ``stem.{conv,bn}{1,2,3}.*``          timm legacy_*
``conv1.*``, ``bn1.*``                      ``stem.conv1.*``, ``stem.bn1.*``     7x7 stem
``conv1.{0,1,3,4,6}.*``, ``bn1.*``          ``stem.{conv1,bn1,conv2,bn2,conv3}``,  deep stem
                                            ``stem.bn3.*``                       (senet154)
``*.se_module.fc{1,2}.{weight,bias}``       ``*.se.fc{1,2}_{weight,bias}``       legacy; 1x1
``*.se.fc{1,2}.{weight,bias}``              ``*.se.fc{1,2}_{weight,bias}``       conv weights
                                                                                  reshaped 2-D
``last_linear.*``                           ``fc.*``                             legacy
==========================================  ===================================  ==============

Architecture differences the keywords take care of: timm's legacy_* models (ported from the
Caffe SENets) max-pool the stem with ceil mode and no padding (our default ``stem_pool="ceil"``)
and their SE-ResNets stride in the first 1x1 (our default); timm's resnet.py models and
torchvision pad the pool (``stem_pool="pad"``) and stride in the 3x3 (``stride_in_1x1=False``).
timm's legacy_seresnet18/34 apply a ReLU to the residual branch before the SE block
(``branch_relu=True``). timm's seresnet18/34 (rounding Cr up to a multiple of 8) are not
mapped.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import torch
from torch import nn

from se_kernels.models._registry import get_model

__all__ = ["TIMM_ARCHS", "TORCHVISION_ARCHS", "map_state_dict", "read_checkpoint",
           "from_timm", "from_torchvision", "load_mapped"]

_PAD = {"stem_pool": "pad"}
_TV = {"stem_pool": "pad", "stride_in_1x1": False}

TIMM_ARCHS: dict[str, tuple[str, dict]] = {
    "legacy_seresnet18": ("se_resnet18", {"branch_relu": True}),
    "legacy_seresnet34": ("se_resnet34", {"branch_relu": True}),
    "legacy_seresnet50": ("se_resnet50", {}),
    "legacy_seresnet101": ("se_resnet101", {}),
    "legacy_seresnet152": ("se_resnet152", {}),
    "legacy_seresnext50_32x4d": ("se_resnext50_32x4d", {}),
    "legacy_seresnext101_32x4d": ("se_resnext101_32x4d", {}),
    "legacy_senet154": ("senet154", {}),
    "seresnet50": ("se_resnet50", _TV),
    "seresnet101": ("se_resnet101", _TV),
    "seresnet152": ("se_resnet152", _TV),
    "seresnext50_32x4d": ("se_resnext50_32x4d", _PAD),
    "seresnext101_32x4d": ("se_resnext101_32x4d", _PAD),
    "seresnext101_32x8d": ("se_resnext101_32x4d", {**_PAD, "width_per_group": 8}),
    "senet154": ("senet154", _PAD),
    "resnet50": ("resnet50", _TV),
    "resnext50_32x4d": ("resnext50_32x4d", _PAD),
}

TORCHVISION_ARCHS: dict[str, tuple[str, dict]] = {
    "resnet18": ("resnet18", _TV),
    "resnet34": ("resnet34", _TV),
    "resnet50": ("resnet50", _TV),
    "resnet101": ("resnet101", _TV),
    "resnet152": ("resnet152", _TV),
    "resnext50_32x4d": ("resnext50_32x4d", _PAD),
    "resnext101_32x8d": ("resnext101_32x4d", {**_PAD, "width_per_group": 8}),
}

_RULES = (  # (pattern, replacement), applied in order, first match wins
    (r"^layer0\.(conv|bn)([123])\.", r"stem.\1\2."),
    (r"^conv1\.0\.", "stem.conv1."), (r"^conv1\.1\.", "stem.bn1."),
    (r"^conv1\.3\.", "stem.conv2."), (r"^conv1\.4\.", "stem.bn2."),
    (r"^conv1\.6\.", "stem.conv3."),
    (r"^last_linear\.", "fc."),
)
_SE_KEY = re.compile(r"^(.*)\.(?:se_module|se)\.fc([12])\.(weight|bias)$")


def map_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm/torchvision ResNet-family keys -> ours (the table of the module docstring)."""
    deep_stem = any(k.startswith("conv1.0.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        new = key
        m = _SE_KEY.match(key)
        if m:
            new = f"{m.group(1)}.se.fc{m.group(2)}_{m.group(3)}"
            if value.dim() == 4:
                value = value.reshape(value.shape[0], value.shape[1])
        elif key.startswith("bn1."):
            new = ("stem.bn3." if deep_stem else "stem.bn1.") + key[4:]
        elif key.startswith("conv1.") and not deep_stem:
            new = "stem." + key
        else:
            for pattern, repl in _RULES:
                new, n = re.subn(pattern, repl, key)
                if n:
                    break
        out[new] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file read with ``weights_only=True``
    (unwrapping a "state_dict" or "model" entry)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return obj


def load_mapped(model: nn.Module, checkpoint, *, strict: bool = True):
    """Loads a timm/torchvision state dict (or a path to one) into ``model`` through
    ``map_state_dict``; returns ``load_state_dict``'s result."""
    sd = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    return model.load_state_dict(map_state_dict(sd), strict=strict)


def _build(table: dict, name: str, checkpoint, kwargs) -> nn.Module:
    if name not in table:
        raise ValueError(f"no mapping for {name!r}; known: {', '.join(sorted(table))}")
    ours, arch = table[name]
    model = get_model(ours, **{**arch, **kwargs})
    if checkpoint is not None:
        load_mapped(model, checkpoint)
    return model


def from_timm(name: str, checkpoint=None, **kwargs) -> nn.Module:
    """Our network configured as timm's ``name`` (a key of ``TIMM_ARCHS``), with the weights
    of ``checkpoint`` (a timm state dict or a path to one) if given. ``kwargs`` go to our
    constructor (e.g. ``backend``, ``num_classes``)."""
    return _build(TIMM_ARCHS, name, checkpoint, kwargs)


def from_torchvision(name: str, checkpoint=None, **kwargs) -> nn.Module:
    """As ``from_timm`` for torchvision's ResNets/ResNeXts (``TORCHVISION_ARCHS``)."""
    return _build(TORCHVISION_ARCHS, name, checkpoint, kwargs)

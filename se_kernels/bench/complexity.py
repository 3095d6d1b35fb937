"""Complexity: params and multiply-adds of the paper's models beside the paper's Table 2/3.

The paper's "GFLOPs" are multiply-adds at 224x224 (ResNet-50: 3.86, SE-ResNet-50: 3.87).
Uses ``se_kernels.complexity(model, input_size)`` and ``se_kernels.models.list_models()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from se_kernels.bench.progress import Progress

# Hu et al., Squeeze-and-Excitation Networks (TPAMI), Table 2 (GFLOPs = GMACs at 224x224) and
# Table 3 (MobileNet, ShuffleNet: MFLOPs and params); the text gives ResNet-50's params
# (~25 M, "+~2.5 M" for SE-ResNet-50: approximate). None where the paper gives no figure (as for
# SENet-154).
PAPER = {  # normalised name: (GMACs, params in millions)
    "resnet50": (3.86, 25.0), "seresnet50": (3.87, 27.5),
    "resnet101": (7.58, None), "seresnet101": (7.60, None),
    "resnet152": (11.30, None), "seresnet152": (11.32, None),
    "resnext50": (4.24, None), "seresnext50": (4.25, None),
    "resnext101": (7.99, None), "seresnext101": (8.00, None),
    "vgg16": (15.47, None), "sevgg16": (15.48, None),
    "bninception": (2.03, None), "sebninception": (2.04, None),
    "inceptionresnetv2": (11.75, None), "seinceptionresnetv2": (11.76, None),
    "mobilenet": (0.569, 4.2), "semobilenet": (0.572, 4.7),
    "shufflenet": (0.140, 1.8), "seshufflenet": (0.142, 2.4),
}


# se_kernels.models names whose paper entry has another name
_ALIASES = {"mobilenetv1": "mobilenet", "shufflenetv1": "shufflenet", "vgg16bn": "vgg16"}


def paper_entry(name: str) -> tuple[float | None, float | None]:
    """The paper's (GMACs, M params) for a model name such as "se_resnext50_32x4d"."""
    key = re.sub(r"_\d+x\d+d$", "", name.lower())  # resnext50_32x4d -> resnext50
    key = re.sub(r"[^a-z0-9]", "", key)
    se = key.startswith("se") and not key.startswith("senet")
    base = key[2:] if se else key
    key = ("se" if se else "") + _ALIASES.get(base, base)
    return PAPER.get(key, (None, None))


def _count(models, name: str, complexity) -> dict:
    """complexity() of the model built on the meta device (no memory, no weight init: a
    SENet-154 in a fraction of a second), or built for real if that fails."""
    get = getattr(models, "get_model", None) or (lambda n: getattr(models, n)())
    try:
        with torch.device("meta"):
            model = get(name)
        return complexity(model, input_size=(3, 224, 224))
    except Exception:
        with torch.no_grad():
            return complexity(get(name), input_size=(3, 224, 224))


def _baseline_of(models, name: str) -> str | None:
    fn = getattr(models, "baseline_of", None)
    try:
        return fn(name) if fn else None
    except ValueError:
        return None


@dataclass
class ComplexityRow:
    suite: str
    model: str
    baseline: str | None    # the plain network an SE model adds SE blocks to
    input_size: str
    params: int
    macs: int
    params_m: float
    gmacs: float
    paper_params_m: float | None
    paper_gmacs: float | None


def run(names: tuple[str, ...] | None, *, progress: bool = True):
    """Returns (rows as dicts, skipped entries)."""
    try:
        import se_kernels
        from se_kernels import models
        complexity = se_kernels.complexity
        all_names = list(models.list_models())
    except (ImportError, AttributeError) as e:
        return [], [{"suite": "complexity", "what": "complexity suite",
                     "reason": f"se_kernels.models / se_kernels.complexity not available ({e})"}]
    todo = list(names) if names else all_names
    rows, skipped = [], []
    bar = Progress(len(todo), "complexity", enabled=progress)
    try:
        for name in todo:
            try:
                if name not in all_names:
                    raise ValueError(f"not in se_kernels.models.list_models(): {all_names}")
                c = _count(models, name, complexity)
                paper_g, paper_p = paper_entry(name)
                rows.append(ComplexityRow(
                    suite="complexity", model=name, baseline=_baseline_of(models, name),
                    input_size="3x224x224",
                    params=int(c["params"]), macs=int(c["macs"]), params_m=c["params"] / 1e6,
                    gmacs=c["macs"] / 1e9, paper_params_m=paper_p, paper_gmacs=paper_g).__dict__)
            except Exception as e:
                skipped.append({"suite": "complexity", "what": name,
                                "reason": f"{type(e).__name__}: {e}"[:400]})
            bar.step(name)
    finally:
        bar.close()
    return rows, skipped

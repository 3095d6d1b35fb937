"""Complexity: params and multiply-adds of the paper's models beside the paper's figures.

Each network is counted at its own input size: 224x224, and 299x299 for Inception-ResNet-v2
and SE-Inception-ResNet-v2 (the size the paper's 11.75 / 11.76 GFLOPs are for). The paper's
figures come from ``se_kernels.models.paper.FIGURES`` (its "GFLOPs" are multiply-adds):
Table 2 and 3 for multiply-adds, and parameter counts wherever the paper prints them for
the network as built here (Table 3; Tables 10, 13 and 16 for ResNet-50 and SE-ResNet-50,
whose SE FCs there have no biases: 15 k parameters less than ours, the same 0.1 M figure).
Uses ``se_kernels.complexity(model, input_size)`` and ``se_kernels.models.list_models()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from se_kernels.bench.progress import Progress

DEFAULT_INPUT_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class PaperEntry:
    gmacs: float | None
    mparams: float | None
    input_size: tuple[int, int, int]
    source: str | None      # e.g. "Table 2; params: Table 10 (SE FCs without biases)"


def paper_figures(name: str) -> PaperEntry:
    """The paper's multiply-adds and parameters for the model ``name`` of
    ``se_kernels.models`` as built by default (None where the paper prints no figure), and
    the input size the multiply-adds are for (the network's own: 299x299 for the
    Inception-ResNet-v2 pair)."""
    from se_kernels.models.paper import FIGURES

    mine = [f for f in FIGURES if f.model == name]
    macs = next((f for f in mine if not f.kwargs and f.gmacs is not None), None)
    # parameters: the default network, else the same network with bias-free SE FCs (the
    # paper's ablation setting), which differs from ours by the FC biases only
    params = next((f for f in mine if not f.kwargs and f.mparams is not None), None)
    no_bias = params is None
    if no_bias:
        params = next((f for f in mine if f.kwargs == {"bias": False}
                       and f.mparams is not None), None)
    size = macs.input_size if macs else next(
        (f.input_size for f in mine), DEFAULT_INPUT_SIZE)
    sources = []
    if macs:
        sources.append(macs.source)
    if params and (macs is None or params.source != macs.source):
        sources.append(f"params: {params.source}"
                       + (" (SE FCs without biases)" if no_bias else ""))
    return PaperEntry(macs.gmacs if macs else None, params.mparams if params else None,
                      tuple(size), "; ".join(sources) or None)


def paper_entry(name: str) -> tuple[float | None, float | None]:
    """The paper's (GMACs, M params) for a model name such as "se_resnext50_32x4d"."""
    e = paper_figures(name)
    return e.gmacs, e.mparams


def _count(models, name: str, complexity, input_size) -> dict:
    """complexity() of the model built on the meta device (no memory, no weight init: a
    SENet-154 in a fraction of a second), or built for real if that fails."""
    get = getattr(models, "get_model", None) or (lambda n: getattr(models, n)())
    try:
        with torch.device("meta"):
            model = get(name)
        return complexity(model, input_size=input_size)
    except Exception:
        with torch.no_grad():
            return complexity(get(name), input_size=input_size)


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
    input_size: str         # CxHxW counted at: the network's own input size
    params: int
    macs: int
    params_m: float
    gmacs: float
    paper_params_m: float | None
    paper_gmacs: float | None
    paper_source: str | None


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
                paper = paper_figures(name)
                c = _count(models, name, complexity, paper.input_size)
                rows.append(ComplexityRow(
                    suite="complexity", model=name, baseline=_baseline_of(models, name),
                    input_size="x".join(map(str, paper.input_size)),
                    params=int(c["params"]), macs=int(c["macs"]), params_m=c["params"] / 1e6,
                    gmacs=c["macs"] / 1e9, paper_params_m=paper.mparams,
                    paper_gmacs=paper.gmacs, paper_source=paper.source).__dict__)
            except Exception as e:
                skipped.append({"suite": "complexity", "what": name,
                                "reason": f"{type(e).__name__}: {e}"[:400]})
            bar.step(name)
    finally:
        bar.close()
    return rows, skipped

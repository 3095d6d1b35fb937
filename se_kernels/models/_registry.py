"""The model registry: every constructor of ``se_kernels.models`` by name, with its baseline."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_BASELINE: dict[str, str] = {}  # SE model -> its plain baseline


def register(baseline: str | None = None):
    """Decorator: registers a constructor under its function name (with ``baseline``, the name
    of the plain network it adds SE blocks to)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _MODELS[fn.__name__] = fn
        if baseline is not None:
            _BASELINE[fn.__name__] = baseline
        return fn

    return wrap


def list_models(se: bool | None = None) -> list[str]:
    """Names of the constructors, sorted; ``se=True`` only SE networks, ``se=False`` only
    the plain baselines."""
    names = sorted(_MODELS)
    if se is None:
        return names
    return [n for n in names if (n in _BASELINE) == se]


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the model ``name`` (one of ``list_models()``) with ``kwargs``."""
    try:
        fn = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}") from None
    return fn(**kwargs)


def baseline_of(name: str) -> str | None:
    """The plain network an SE model adds SE blocks to (None for a baseline)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}")
    return _BASELINE.get(name)

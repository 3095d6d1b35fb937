"""The Triton backend of fused_se: se_kernels::triton_se_forward / triton_se_backward.

    kernels.py  the @triton.jit kernels (forward: fused or split; backward)
    config.py   the launch heuristic (samples per program, fused or split, tile sizes)
    ops.py      the torch.library.triton_op definitions that launch them

``LOAD_ERROR`` is None when the backend imported, else why not. ``se_forward`` is the
forward op (se_forward's signature), with autograd registered.

Import order: se_kernels.ops imports this package while it is itself being imported, before
it has defined ``register_autograd``; it reads ``se_forward`` at its very end, after. So the
ops are defined here at import, and autograd is registered on the first access to
``se_forward`` (a module ``__getattr__``), which se_kernels.ops makes during its own import:
by the time ``import se_kernels`` returns, the op is fully registered.
"""

from __future__ import annotations

LOAD_ERROR: str | None = None
try:
    from se_kernels.triton import ops as _ops
except Exception as e:  # import must never break se_kernels
    LOAD_ERROR = f"the Triton backend failed to load ({type(e).__name__}: {e})"

_autograd_registered = False


def _forward_op():
    global _autograd_registered
    if LOAD_ERROR is not None:
        raise RuntimeError(LOAD_ERROR)
    if not _autograd_registered:
        from se_kernels.ops import register_autograd

        register_autograd("se_kernels::triton_se_forward", _ops.backward_op)
        _autograd_registered = True
    return _ops.forward_op


def __getattr__(name: str):
    if name == "se_forward":
        return _forward_op()
    if name == "se_backward":
        if LOAD_ERROR is not None:
            raise RuntimeError(LOAD_ERROR)
        return _ops.backward_op
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

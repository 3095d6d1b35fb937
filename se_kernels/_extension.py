"""Loads ``se_kernels._C`` (the C++ op schemas, CPU and CUDA kernels) if it was built.

Importing se_kernels never fails because of the extension: when it is missing or cannot be
loaded, ``LOAD_ERROR`` says why, and only the backends that need it are unavailable.
Nothing here touches a GPU.
"""

from __future__ import annotations

import platform

import torch

LOAD_ERROR: str | None = None


def _load() -> str | None:
    if platform.machine().lower() in ("x86_64", "amd64"):
        cap = torch.backends.cpu.get_cpu_capability()
        if cap in ("DEFAULT", "NO AVX"):
            return (f"this CPU lacks AVX2 (torch reports {cap!r}) and se_kernels._C is built "
                    "with AVX2 code")
    try:
        from se_kernels import _C  # noqa: F401  (registers the ops on import)
    except ImportError as e:
        return (f"se_kernels._C could not be imported ({e}); build it with "
                "`pip install --no-build-isolation -e .`")
    except OSError as e:  # e.g. a library built against another torch
        return f"se_kernels._C failed to load ({e}); rebuild it against this torch"
    return None


LOAD_ERROR = _load()


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether op (e.g. "se_kernels::se_forward") has a kernel for dispatch_key ("CPU")."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)
    except RuntimeError:  # the op does not exist
        return False


HAS_CPU_KERNELS = LOAD_ERROR is None and has_kernel("se_kernels::se_forward", "CPU")
HAS_CUDA_KERNELS = LOAD_ERROR is None and has_kernel("se_kernels::se_forward", "CUDA")

"""The Triton backend of fused_se: se_kernels::triton_se_forward / triton_se_backward.

    kernels.py  the @triton.jit kernels (forward: fused or split; backward)
    config.py   the launch heuristic (samples per program, fused or split, tile sizes)
    ops.py      the torch.library.triton_op definitions that launch them

``LOAD_ERROR`` is None when the backend imported, else why not. ``se_forward`` and
``se_backward`` are the two ops (the signatures of se_kernels::se_forward / se_backward);
se_kernels.ops registers their autograd, as it does for every Python-defined op.
"""

from __future__ import annotations

LOAD_ERROR: str | None = None
try:
    from se_kernels.triton.ops import backward_op as se_backward
    from se_kernels.triton.ops import forward_op as se_forward
except Exception as e:  # import must never break se_kernels
    LOAD_ERROR = f"the Triton backend failed to load ({type(e).__name__}: {e})"
    se_forward = se_backward = None

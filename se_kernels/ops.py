"""``fused_se``: validation, backend choice, and the torch.library glue of the C++ ops.

A call flows: validate (friendly errors, before any kernel) -> normalise weights to 2-D and
x/residual to one of the two layouts the kernels read in place -> pick the backend -> call
``torch.ops.se_kernels.se_forward`` (cpu, cuda), the Triton op, or the reference.
Autograd is registered once per op family with ``torch.library.register_autograd``.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from se_kernels import _extension
from se_kernels._options import ACTIVATIONS, BACKENDS, DTYPES, GATES, SQUEEZES, acc_dtype
from se_kernels.reference import se_reference

__all__ = ["fused_se", "available_backends", "writes_in_place", "BackendUnavailableError"]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


# ---- backends -------------------------------------------------------------------------------

_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"Triton is not installed ({e})"
    from se_kernels import triton as _se_triton

    return _se_triton.LOAD_ERROR


_TRITON_ERROR = _triton_import_error()


def _unavailable_reason(name: str, device_type: str) -> str | None:
    """Why backend ``name`` cannot run on tensors of ``device_type``, or None if it can."""
    if name == "reference":
        return None
    if name == "cpu":
        if _extension.LOAD_ERROR:
            return _extension.LOAD_ERROR
        if not _extension.HAS_CPU_KERNELS:
            return "se_kernels._C has no CPU kernels"
        if device_type != "cpu":
            return f"it runs on CPU tensors and x is on {device_type}"
        return None
    if name == "cuda":
        if _extension.LOAD_ERROR:
            return _extension.LOAD_ERROR
        if not _extension.HAS_CUDA_KERNELS:
            return ("se_kernels._C was built without CUDA kernels (no CUDA toolkit or a CPU "
                    "build of torch at build time, or SE_KERNELS_SKIP_CUDA=1)")
        if device_type != "cuda":
            return f"it runs on CUDA tensors and x is on {device_type}"
        return None
    if name == "triton":
        if _TRITON_ERROR:
            return _TRITON_ERROR
        if device_type == "cuda" or (device_type == "cpu" and _TRITON_INTERPRET):
            return None
        return (f"it runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) and x is "
                f"on {device_type}")
    raise AssertionError(name)


def available_backends() -> list[str]:
    """The backends usable in this process, e.g. ``["reference", "cpu", "triton", "cuda"]``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [name for name in BACKENDS[1:]
            if any(_unavailable_reason(name, d) is None for d in devices)]


def _select_backend(backend: str, device_type: str) -> str:
    if backend == "auto":
        preferred = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}.get(device_type, ())
        for name in preferred:
            if _unavailable_reason(name, device_type) is None:
                return name
        return "reference"
    why = _unavailable_reason(backend, device_type)
    if why is not None:
        raise BackendUnavailableError(f"fused_se: backend={backend!r} cannot run: {why}")
    return backend


# ---- validation -----------------------------------------------------------------------------

def _check_tensor(t, name: str, x: torch.Tensor | None = None, *, optional: bool = False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fused_se: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x is None:
        if t.dtype not in DTYPES:
            raise TypeError(f"fused_se: {name} must be a floating-point tensor (float16, "
                            f"bfloat16, float32 or float64), got dtype {t.dtype}")
        return
    if t.dtype != x.dtype:
        raise TypeError(f"fused_se: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    if t.device != x.device:
        raise RuntimeError(f"fused_se: {name} must be on the device of x ({x.device}), got "
                           f"{t.device}")


def _check_option(value, name: str, choices) -> None:
    if not isinstance(value, str):
        raise TypeError(f"fused_se: {name} must be a string, one of {sorted(choices)}, got "
                        f"{type(value).__name__}")
    if value not in choices:
        raise ValueError(f"fused_se: {name} must be one of {sorted(choices)}, got {value!r}")


def _weight_2d(w: torch.Tensor, name: str, rows_name: str, cols_name: str) -> torch.Tensor:
    if w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1:
        return w.reshape(w.shape[0], w.shape[1])
    if w.dim() != 2:
        raise ValueError(f"fused_se: {name} must have shape ({rows_name}, {cols_name}) or "
                         f"({rows_name}, {cols_name}, 1, 1), got {tuple(w.shape)}")
    return w


def _validate(x, w1, w2, b1, b2, residual, squeeze, activation, gate, backend):
    """Checks every argument; returns the weights as 2-D (Cr, C) and (C, Cr) views."""
    _check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"fused_se: x must be 4-D (N, C, H, W), got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    n, c, h, w = x.shape
    if c == 0 or h * w == 0:
        raise ValueError(f"fused_se: x must have C > 0 and H*W > 0, got shape {tuple(x.shape)}")
    for t, name, opt in ((w1, "w1", False), (w2, "w2", False), (b1, "b1", True),
                         (b2, "b2", True), (residual, "residual", True)):
        _check_tensor(t, name, x, optional=opt)
    w1 = _weight_2d(w1, "w1", "Cr", "C")
    w2 = _weight_2d(w2, "w2", "C", "Cr")
    cr = w1.shape[0]
    if w1.shape[1] != c:
        raise ValueError(f"fused_se: w1 must have shape (Cr, C) with C = x.shape[1] = {c}, got "
                         f"{tuple(w1.shape)}")
    if cr == 0:
        raise ValueError("fused_se: w1 must have Cr > 0 rows, got shape (0, C)")
    if w2.shape[0] != c:
        raise ValueError(f"fused_se: w2 must have shape (C, Cr) with C = x.shape[1] = {c}, got "
                         f"{tuple(w2.shape)}")
    if w2.shape[1] != cr:
        raise ValueError(f"fused_se: w2 must have shape (C, Cr) with Cr = w1.shape[0] = {cr}, "
                         f"got {tuple(w2.shape)}")
    if b1 is not None and tuple(b1.shape) != (cr,):
        raise ValueError(f"fused_se: b1 must have shape (Cr,) = ({cr},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (c,):
        raise ValueError(f"fused_se: b2 must have shape (C,) = ({c},), got {tuple(b2.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"fused_se: residual must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(residual.shape)}")
    _check_option(squeeze, "squeeze", SQUEEZES)
    _check_option(activation, "activation", ACTIVATIONS)
    _check_option(gate, "gate", GATES)
    _check_option(backend, "backend", BACKENDS)
    return w1, w2


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels use for x: NCHW, or NHWC when x is channels_last (or a strided
    view whose channel stride is the smallest, as channels_last slices are)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    s = x.stride()
    return torch.channels_last if s[1] < s[2] and s[1] < s[3] else torch.contiguous_format


# ---- autocast -------------------------------------------------------------------------------

def _autocast_dtype(x) -> torch.dtype | None:
    """The dtype torch.autocast runs lower-precision ops in on x's device (CPU or CUDA), or
    None when autocast is off there."""
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(x.device.type):
        return None
    return torch.get_autocast_dtype(x.device.type)


def _autocast_cast(t, dtype: torch.dtype):
    """Autocast's rule for the inputs of a lower-precision op (linear, conv): floating-point
    tensors other than float64 are cast to the autocast dtype; anything else is left alone
    (and validated as usual)."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in (
            torch.float64, dtype):
        return t.to(dtype)
    return t


# ---- the op ---------------------------------------------------------------------------------

_FORWARD_OPS: dict[str, Callable] = {}  # backend name -> forward op; filled below


def fused_se(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, b1: torch.Tensor | None = None,
             b2: torch.Tensor | None = None, *, residual: torch.Tensor | None = None,
             squeeze: str = "avg", activation: str = "relu", gate: str = "sigmoid",
             backend: str = "auto", inplace: bool = False) -> torch.Tensor:
    """The Squeeze-and-Excitation block, fused.

    ::

        z = squeeze(x)                  # (N, C): mean ("avg") or amax ("max") over H, W
        h = activation(z @ w1.T + b1)   # (N, Cr): "relu", "silu", "hardswish", "relu6",
                                        #   "gelu" (exact) or "gelu_tanh" (tanh approximation)
        s = gate(h @ w2.T + b2)         # (N, C): "sigmoid", "hardsigmoid", "tanh" or "relu"
        y = s[:, :, None, None] * x     # (N, C, H, W)
        y = relu(y + residual)          # only when residual is given

    Args:
        x: (N, C, H, W), float16, bfloat16, float32 or float64; contiguous, channels_last or
            any strided view.
        w1: (Cr, C) or (Cr, C, 1, 1), x's dtype and device.
        w2: (C, Cr) or (C, Cr, 1, 1).
        b1: (Cr,) or None.  b2: (C,) or None.
        residual: like x, or None: fuses the SE-ResNet block tail ``relu(y + residual)``.
        backend: "auto" (cuda > triton on CUDA tensors, cpu > reference on CPU tensors),
            "reference", "cpu", "triton" or "cuda".
        inplace: write y into x and return x, for inference: an error if autograd is
            recording and an input requires grad, and x's version counter is bumped (a graph
            that saved x raises at backward). The ``cpu`` backend does this in its kernel for
            a dense x, so y needs no new memory (the saving that ``out += identity`` makes in
            a ResNet); otherwise (other backends, a strided x, autocast) y is computed as
            usual and copied into x, in x's dtype.

    Returns:
        y, (N, C, H, W) in x's dtype and memory format. Reductions accumulate in float32
        (float64 for float64 inputs). Differentiable in x, w1, w2, b1, b2 and residual.

    Under ``torch.autocast`` (CPU or CUDA), fused_se is a lower-precision op like linear and
    conv: x, the weights, the biases and the residual are cast to the autocast dtype (float64
    tensors are left alone), the op runs with autocast off, and y has the autocast dtype.
    Gradients flow back to the original dtypes. Outside autocast, mixed dtypes are an error.
    """
    if not isinstance(inplace, bool):
        raise TypeError(f"fused_se: inplace must be a bool, got {type(inplace).__name__} "
                        f"({inplace!r})")
    if inplace:
        return _fused_se_inplace(x, w1, w2, b1, b2, residual, squeeze, activation, gate, backend)
    amp_dtype = _autocast_dtype(x)
    if amp_dtype is not None:
        x, w1, w2, b1, b2, residual = (_autocast_cast(t, amp_dtype)
                                       for t in (x, w1, w2, b1, b2, residual))
        with torch.autocast(x.device.type, enabled=False):
            return fused_se(x, w1, w2, b1, b2, residual=residual, squeeze=squeeze,
                            activation=activation, gate=gate, backend=backend)
    w1, w2 = _validate(x, w1, w2, b1, b2, residual, squeeze, activation, gate, backend)
    name = _select_backend(backend, x.device.type)
    if name == "reference":
        return se_reference(x, w1, w2, b1, b2, residual, squeeze, activation, gate)
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
    y, _, _, _ = _FORWARD_OPS[name](
        x, w1.contiguous(), w2.contiguous(),
        None if b1 is None else b1.contiguous(), None if b2 is None else b2.contiguous(),
        residual, SQUEEZES[squeeze], ACTIVATIONS[activation], GATES[gate])
    return y


def _fused_se_inplace(x, w1, w2, b1, b2, residual, squeeze, activation, gate, backend):
    if torch.is_grad_enabled():
        needs = [name for name, t in (("x", x), ("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2),
                                      ("residual", residual))
                 if isinstance(t, torch.Tensor) and t.requires_grad]
        if needs:
            raise RuntimeError(
                f"fused_se: inplace=True cannot record a backward (it overwrites x), but "
                f"{', '.join(needs)} require{'s' if len(needs) == 1 else ''} grad; use "
                f"inplace=False, or run under torch.no_grad() / torch.inference_mode()")
    w1, w2 = _validate(x, w1, w2, b1, b2, residual, squeeze, activation, gate, backend)
    if residual is not None:
        residual = residual.contiguous(memory_format=memory_format_of(x))
    direct = writes_in_place(x, backend) and not _overlaps_unlike(residual, x)
    if not direct:  # y from the unmodified inputs first, then into x
        y = fused_se(x, w1, w2, b1, b2, residual=residual, squeeze=squeeze,
                     activation=activation, gate=gate, backend=backend)
        return x.copy_(y)
    torch.ops.se_kernels.se_forward_inplace(
        x, w1.contiguous(), w2.contiguous(),
        None if b1 is None else b1.contiguous(), None if b2 is None else b2.contiguous(),
        residual, SQUEEZES[squeeze], ACTIVATIONS[activation], GATES[gate])
    return x


def writes_in_place(x, backend: str = "auto") -> bool:
    """Whether ``fused_se(x, ..., backend=backend, inplace=True)`` writes y into x in its
    kernel (the ``cpu`` backend, x dense in its layout, no autocast, not inside
    ``torch.onnx.export``), rather than computing y and copying it into x."""
    if not isinstance(x, torch.Tensor) or backend not in ("auto", "cpu") or x.dim() != 4:
        return False  # fused_se itself reports a bad backend name or shape
    return (_unavailable_reason("cpu", x.device.type) is None and _autocast_dtype(x) is None
            and x.is_contiguous(memory_format=memory_format_of(x)) and not _in_onnx_export())


def _in_onnx_export() -> bool:
    """Whether torch.onnx.export is tracing. ONNX has no in-place ops, and torch.onnx cannot
    translate the functionalised form of a mutating custom op (``auto_functionalized_v2``):
    there the in-place op is not used (se_kernels/onnx.py translates the out-of-place one).
    ``is_exporting`` first: it is cheap, ``is_in_onnx_export`` costs microseconds."""
    return torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export()


def _overlaps_unlike(residual: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether residual shares x's memory without being the same view of it (then the
    in-place kernel would read residual elements that it has already overwritten). Dynamo
    cannot trace storage pointers: compiled code leaves this to the kernel's own check, an
    error at run time."""
    if residual is None or residual is x or torch.compiler.is_compiling():
        return False
    if type(x) is not torch.Tensor or type(residual) is not torch.Tensor:
        return False  # fake tensors (complexity(), tracing) have no pointers to compare
    if residual.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
        return False
    return residual.data_ptr() != x.data_ptr() or residual.stride() != x.stride()


# ---- torch.library glue shared by the op families -------------------------------------------

def forward_fake(x, w1, w2, b1, b2, residual, squeeze, act, gate):
    """Fake (meta) kernel of every se_forward op: y like x, z/hpre/gpre in the acc dtype."""
    torch._check(x.dim() == 4, lambda: f"se_forward: x must be 4-D, got {x.dim()}-D")
    n, c = x.shape[0], x.shape[1]
    cr = w1.shape[0]
    acc = acc_dtype(x.dtype)
    return (torch.empty_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, cr), dtype=acc),
            x.new_empty((n, c), dtype=acc))


def forward_inplace_fake(x, w1, w2, b1, b2, residual, squeeze, act, gate):
    """Fake kernel of se_forward_inplace: it only mutates x."""
    torch._check(x.dim() == 4, lambda: f"se_forward_inplace: x must be 4-D, got {x.dim()}-D")


def backward_fake(dy, x, w1, w2, y, z, hpre, gpre, squeeze, act, gate):
    """Fake (meta) kernel of every se_backward op."""
    dres = torch.empty_like(x) if y is not None else x.new_empty((0,))
    return (torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2),
            w1.new_empty((w1.shape[0],)), w2.new_empty((w2.shape[0],)), dres)


def register_autograd(forward_op_name: str, backward_op: Callable) -> None:
    """Registers the autograd formula of a se_forward-shaped op whose gradients come from
    ``backward_op`` (an se_backward-shaped op). Used for the Python-defined (Triton) ops; the
    C++ ops register the same formula in csrc/autograd.cpp."""

    def setup_context(ctx, inputs, output):
        x, w1, w2, b1, b2, residual, squeeze, act, gate = inputs
        y, z, hpre, gpre = output
        ctx.save_for_backward(x, w1, w2, y if residual is not None else None, z, hpre, gpre)
        ctx.options = (squeeze, act, gate)
        ctx.has_input = (b1 is not None, b2 is not None, residual is not None)
        ctx.mark_non_differentiable(z, hpre, gpre)
        ctx.set_materialize_grads(False)

    def backward(ctx, dy, _dz, _dhpre, _dgpre):
        x, w1, w2, y, z, hpre, gpre = ctx.saved_tensors
        if dy is None:
            return (None,) * 9
        dy = dy.contiguous(memory_format=memory_format_of(x))
        dx, dw1, dw2, db1, db2, dres = backward_op(dy, x, w1, w2, y, z, hpre, gpre, *ctx.options)
        has_b1, has_b2, has_res = ctx.has_input
        return (dx, dw1, dw2, db1 if has_b1 else None, db2 if has_b2 else None,
                dres if has_res else None, None, None, None)

    torch.library.register_autograd(forward_op_name, backward, setup_context=setup_context)


if _extension.LOAD_ERROR is None:
    # The C++ ops' autograd is registered in C++ (csrc/autograd.cpp): the same formula, without
    # the Python overhead of register_autograd on every call.
    torch.library.register_fake("se_kernels::se_forward")(forward_fake)
    torch.library.register_fake("se_kernels::se_backward")(backward_fake)
    torch.library.register_fake("se_kernels::se_forward_inplace")(forward_inplace_fake)
    _FORWARD_OPS["cpu"] = _FORWARD_OPS["cuda"] = torch.ops.se_kernels.se_forward.default

if _TRITON_ERROR is None:
    from se_kernels import triton as _se_triton

    register_autograd("se_kernels::triton_se_forward", _se_triton.se_backward)
    _FORWARD_OPS["triton"] = _se_triton.se_forward

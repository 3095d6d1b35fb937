"""ONNX translations of the se_kernels ops, for ``torch.onnx.export(..., dynamo=True)``.

::

    import se_kernels
    onnx_program = torch.onnx.export(
        model, (x,), dynamo=True,
        custom_translation_table=se_kernels.onnx_translation_table())

torch.onnx has no public registry that a library could add to on import, so the table is
passed explicitly (merge it with your own entries if you have some). Each se_kernels op that
can appear in an inference graph is decomposed into standard ONNX ops (opset 18)::

    z    = ReduceMean(x, axes=[2, 3]) | ReduceMax(...)      # (N, C), float32 (float64)
    hpre = Gemm(z, W1, b1, transB=1)                        # (N, Cr)
    gpre = Gemm(act(hpre), W2, b2, transB=1)                # (N, C)
    y    = Mul(x, Unsqueeze(gate(gpre), [2, 3]))            # (N, C, H, W)
    y    = Relu(Add(y, residual))                           # with a residual

with every activation (relu, silu, hardswish, relu6, gelu, gelu_tanh) and gate (sigmoid,
hardsigmoid, tanh, relu) of ``fused_se``, in ops that ONNX Runtime runs in float32 and
float64 (hard-sigmoid and hard-swish as PyTorch's formula relu6(v + 3) / 6, not the
HardSigmoid/HardSwish ops, which it has in float32 only). Like the kernels, the translation
computes in float32 (float64 for float64 inputs; GELU's Erf in float32 always, as ONNX
Runtime has no float64 Erf) and casts y back to x's dtype.

Covered: ``se_forward`` (the cpu and cuda backends) and ``triton_se_forward`` (the Triton
backend). The ``reference`` backend is plain PyTorch and needs no entry. The backward ops never
appear in an inference graph. ``se_forward_inplace`` (``inplace=True``, e.g. the SE-ResNets'
blocks under ``torch.no_grad()``) is not used while ``torch.onnx.export`` traces: ONNX has no
in-place ops, and torch.onnx cannot translate a functionalised mutating custom op
(``auto_functionalized_v2``), so ``fused_se`` computes y out of place there (see
``se_kernels.ops.writes_in_place``). An ExportedProgram traced by ``torch.export`` outside
``torch.onnx.export`` under ``torch.no_grad()`` may hold that op; export the model instead.

onnxscript is needed only when the table is built (it is a test extra, not a dependency).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from se_kernels._options import GATES, SQUEEZES

__all__ = ["onnx_translation_table"]

# The activation codes every backend shares (csrc/include/se_kernels/options.h), all
# translated even where _options.ACTIVATIONS does not list them all yet (tests/test_onnx.py
# checks that the two agree).
_ACTIVATION_CODES = ("relu", "silu", "hardswish", "relu6", "gelu", "gelu_tanh")


def _ops():
    try:
        import onnx_ir  # noqa: F401  (onnxscript's IR, one of its dependencies)
        from onnxscript import opset18
    except ImportError as e:
        raise ImportError(
            f"se_kernels.onnx_translation_table needs onnxscript (pip install onnxscript "
            f"onnx onnxruntime): {e}") from e
    return opset18


def _make_translation(op) -> Callable:
    """The translation of the se_forward ops, built over the onnxscript opset ``op``.

    It is traced by the exporter (plain Python over onnxscript ops): tensor parameters
    are ONNX values (None when an optional input is absent), the ``int`` parameters are the
    op's option codes, known when the graph is built, so the branches below pick one
    subgraph each.
    """
    import onnx_ir as ir

    def const(value: float, like):
        return op.CastLike(op.Constant(value_float=value), like)

    def silu(h):
        return op.Mul(h, op.Sigmoid(h))

    def relu6(h):
        return op.Clip(h, const(0.0, h), const(6.0, h))

    def hardsigmoid(g):
        # torch's formula, relu6(g + 3) / 6: ONNX Runtime's HardSigmoid and HardSwish
        # kernels are float32 only
        return op.Div(op.Clip(op.Add(g, const(3.0, g)), const(0.0, g), const(6.0, g)),
                      const(6.0, g))

    def gelu(h):  # exact: h * Phi(h) = 0.5 h (1 + erf(h / sqrt 2))
        # Erf in float32 (a no-op cast for float32 models): ONNX Runtime has no float64 Erf
        u = op.Cast(op.Mul(h, const(1.0 / math.sqrt(2.0), h)), to=ir.DataType.FLOAT)
        erf = op.CastLike(op.Erf(u), h)
        return op.Mul(op.Mul(h, const(0.5, h)), op.Add(erf, const(1.0, h)))

    def gelu_tanh(h):  # 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
        cube = op.Mul(op.Mul(h, h), h)
        inner = op.Mul(op.Add(h, op.Mul(cube, const(0.044715, h))),
                       const(math.sqrt(2.0 / math.pi), h))
        return op.Mul(op.Mul(h, const(0.5, h)), op.Add(op.Tanh(inner), const(1.0, h)))

    activations = {
        "relu": op.Relu,
        "silu": silu,
        "hardswish": lambda h: op.Mul(h, hardsigmoid(h)),
        "relu6": relu6,
        "gelu": gelu,
        "gelu_tanh": gelu_tanh,
    }
    gates = {
        "sigmoid": op.Sigmoid,
        "hardsigmoid": hardsigmoid,
        "tanh": op.Tanh,
        "relu": op.Relu,
    }
    act_by_code = {code: activations[name] for code, name in enumerate(_ACTIVATION_CODES)}
    gate_by_code = {code: gates[name] for name, code in GATES.items()}

    def forward(x, w1, w2, b1=None, b2=None, residual=None, squeeze: int = 0, act: int = 0,
                gate: int = 0):
        """se_forward: (y, z, hpre, gpre) of csrc/ops.cpp's schema."""
        if squeeze not in (SQUEEZES["avg"], SQUEEZES["max"]):
            raise ValueError(f"se_kernels ONNX translation: unknown squeeze code {squeeze}")
        if act not in act_by_code:
            raise ValueError(f"se_kernels ONNX translation: unknown activation code {act}")
        if gate not in gate_by_code:
            raise ValueError(f"se_kernels ONNX translation: unknown gate code {gate}")
        x_type = x.dtype
        acc_type = ir.DataType.DOUBLE if x_type == ir.DataType.DOUBLE else ir.DataType.FLOAT

        def acc(t):
            return t if t.dtype == acc_type else op.Cast(t, to=acc_type)

        xa = acc(x)
        axes = op.Constant(value_ints=[2, 3])
        reduce = op.ReduceMean if squeeze == SQUEEZES["avg"] else op.ReduceMax
        z = reduce(xa, axes, keepdims=0)                                     # (N, C)
        hpre = (op.Gemm(z, acc(w1), transB=1) if b1 is None                  # (N, Cr)
                else op.Gemm(z, acc(w1), acc(b1), transB=1))
        h = act_by_code[act](hpre)
        gpre = (op.Gemm(h, acc(w2), transB=1) if b2 is None                  # (N, C)
                else op.Gemm(h, acc(w2), acc(b2), transB=1))
        s = gate_by_code[gate](gpre)
        y = op.Mul(xa, op.Unsqueeze(s, axes))                                # (N, C, H, W)
        if residual is not None:
            y = op.Relu(op.Add(y, acc(residual)))
        if acc_type != x_type:
            y = op.Cast(y, to=x_type)
        return y, z, hpre, gpre

    return forward


def onnx_translation_table() -> dict[Callable, Callable]:
    """``{se_kernels op: onnxscript translation}`` for ``torch.onnx.export(...,
    dynamo=True, custom_translation_table=...)``. Needs onnxscript; raises ImportError
    saying so otherwise. The ops of backends not built here are left out (a graph cannot
    contain them)."""
    forward = _make_translation(_ops())
    table: dict[Callable, Callable] = {}
    ns = torch.ops.se_kernels
    for name in ("se_forward", "triton_se_forward"):
        try:
            packet = getattr(ns, name)
        except (AttributeError, RuntimeError):  # the extension or Triton is not loaded
            continue
        table[packet.default] = forward
    return table

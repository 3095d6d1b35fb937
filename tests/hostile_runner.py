"""The hostile cases of tests/test_hostile.py, and the child process that runs them.

``python hostile_runner.py START`` runs CASES[START:] in order. For each case it prints a JSON
line {"index", "status": "start"} before running it and one with the outcome after
("raised" with the exception's type and message, "returned", or "skipped"), flushing each, so
that the parent knows which case was running if the process dies.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

RAISES_VALUE = ("ValueError",)
RAISES_TYPE = ("TypeError",)
RAISES_RUNTIME = ("RuntimeError",)
# Schema mismatches in a direct op call: the dispatcher raises TypeError or RuntimeError.
# An expected type matches the raised type or any of its bases (NotImplementedError, which a
# build without CUDA kernels raises for CUDA tensors, is a RuntimeError).
RAISES_SCHEMA = ("TypeError", "RuntimeError")


@dataclass(frozen=True)
class Case:
    name: str
    code: str                      # run with the names of PRELUDE in scope
    expect: tuple | str            # exception type names, or "returns"
    match: str = ""                # regex the message must match
    needs: str | None = None       # None, "ext" (se_kernels._C), "cuda", "cuda2"


PRELUDE = '''
import math
import torch
import se_kernels
from se_kernels import fused_se

op = torch.ops.se_kernels if se_kernels.EXTENSION_LOAD_ERROR is None else None


def good(n=2, c=8, h=5, w=5, cr=2, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).to(dtype=dtype, device=device)
    return t(n, c, h, w), t(cr, c), t(c, cr)


def fwd_args(n=2, c=8, h=5, w=5, cr=2, dtype=torch.float32, device="cpu"):
    """The arguments of a good se_forward call: x, w1, w2, b1, b2, residual, codes."""
    x, w1, w2 = good(n, c, h, w, cr, dtype, device)
    return [x, w1, w2, torch.zeros(cr, dtype=dtype, device=device),
            torch.zeros(c, dtype=dtype, device=device), torch.randn_like(x), 0, 0, 0]


def bwd_args(residual=True, **kw):
    """The arguments of a good se_backward call: dy, x, w1, w2, y, z, hpre, gpre, codes."""
    a = fwd_args(**kw)
    if not residual:
        a[5] = None
    y, z, hpre, gpre = op.se_forward(*a)
    return [torch.randn_like(y), a[0], a[1], a[2], y if residual else None, z, hpre, gpre,
            0, 0, 0]
'''

CASES = [
    # ---- fused_se: shapes -----------------------------------------------------------------
    Case("x_3d", "x, w1, w2 = good(); fused_se(x[0], w1, w2)", RAISES_VALUE,
         r"x must be 4-D \(N, C, H, W\), got 3-D"),
    Case("x_5d", "x, w1, w2 = good(); fused_se(x[None], w1, w2)", RAISES_VALUE, r"x must be 4-D"),
    Case("x_0d", "x, w1, w2 = good(); fused_se(torch.tensor(1.0), w1, w2)", RAISES_VALUE,
         r"x must be 4-D"),
    Case("c_zero", "x, w1, w2 = good(); fused_se(x[:, :0], w1[:, :0], w2[:0])", RAISES_VALUE,
         r"C > 0 and H\*W > 0"),
    Case("hw_zero", "x, w1, w2 = good(); fused_se(x[:, :, :0], w1, w2)", RAISES_VALUE,
         r"C > 0 and H\*W > 0"),
    Case("w1_wrong_c", "x, w1, w2 = good(); fused_se(x, w1[:, :7], w2)", RAISES_VALUE,
         r"w1 must have shape \(Cr, C\) with C = x.shape\[1\] = 8"),
    Case("w1_cr_zero", "x, w1, w2 = good(); fused_se(x, w1[:0], w2[:, :0])", RAISES_VALUE,
         r"w1 must have Cr > 0"),
    Case("w2_wrong_cr", "x, w1, w2 = good(); fused_se(x, w1, torch.randn(8, 3))", RAISES_VALUE,
         r"w2 must have shape \(C, Cr\) with Cr = w1.shape\[0\] = 2"),
    Case("w1_3x3_conv", "x, w1, w2 = good(); fused_se(x, torch.randn(2, 8, 3, 3), w2)",
         RAISES_VALUE, r"w1 must have shape \(Cr, C\) or \(Cr, C, 1, 1\)"),
    Case("b1_wrong", "x, w1, w2 = good(); fused_se(x, w1, w2, torch.randn(8))", RAISES_VALUE,
         r"b1 must have shape \(Cr,\) = \(2,\)"),
    Case("residual_wrong", "x, w1, w2 = good(); fused_se(x, w1, w2, residual=x[:, :, :4])",
         RAISES_VALUE, r"residual must have the shape of x"),
    # ---- fused_se: dtypes, types, options --------------------------------------------------
    Case("x_int", "x, w1, w2 = good(); fused_se(x.int(), w1, w2)", RAISES_TYPE,
         r"x must be a floating-point tensor"),
    Case("x_complex", "x, w1, w2 = good(); fused_se(x.to(torch.complex64), w1, w2)",
         RAISES_TYPE, r"x must be a floating-point tensor"),
    Case("x_bool", "x, w1, w2 = good(); fused_se(x > 0, w1, w2)", RAISES_TYPE,
         r"x must be a floating-point tensor"),
    Case("x_float8", "x, w1, w2 = good(); fused_se(x.to(torch.float8_e4m3fn), w1, w2)",
         RAISES_TYPE, r"x must be a floating-point tensor"),
    Case("w1_dtype", "x, w1, w2 = good(); fused_se(x, w1.double(), w2)", RAISES_TYPE,
         r"w1 must have the dtype of x \(torch.float32\), got torch.float64"),
    Case("residual_dtype", "x, w1, w2 = good(); fused_se(x, w1, w2, residual=x.half())",
         RAISES_TYPE, r"residual must have the dtype of x"),
    Case("x_list", "x, w1, w2 = good(); fused_se(x.tolist(), w1, w2)", RAISES_TYPE,
         r"x must be a torch.Tensor, got list"),
    Case("w2_numpy", "x, w1, w2 = good(); fused_se(x, w1, w2.numpy())", RAISES_TYPE,
         r"w2 must be a torch.Tensor, got ndarray"),
    Case("squeeze_unknown", "x, w1, w2 = good(); fused_se(x, w1, w2, squeeze='mean')",
         RAISES_VALUE, r"squeeze must be one of \['avg', 'max'\], got 'mean'"),
    Case("gate_not_str", "x, w1, w2 = good(); fused_se(x, w1, w2, gate=0)", RAISES_TYPE,
         r"gate must be a string"),
    Case("backend_unknown", "x, w1, w2 = good(); fused_se(x, w1, w2, backend='gpu')",
         RAISES_VALUE, r"backend must be one of"),
    Case("backend_cuda_on_cpu_tensors", "x, w1, w2 = good(); fused_se(x, w1, w2, backend='cuda')",
         ("BackendUnavailableError",), r"backend='cuda' cannot run: "),
    # ---- fused_se: devices -----------------------------------------------------------------
    Case("w1_on_meta", "x, w1, w2 = good(); fused_se(x, w1.to('meta'), w2)", RAISES_RUNTIME,
         r"w1 must be on the device of x \(cpu\), got meta"),
    Case("cpu_backend_on_meta", "x, w1, w2 = good(device='meta'); fused_se(x, w1, w2, "
         "backend='cpu')", ("BackendUnavailableError",), r"runs on CPU tensors and x is on meta"),
    Case("weights_on_cpu_x_on_cuda", "x, w1, w2 = good(); fused_se(x.cuda(), w1, w2)",
         RAISES_RUNTIME, r"w1 must be on the device of x \(cuda:0\), got cpu", needs="cuda"),
    Case("cpu_backend_on_cuda", "x, w1, w2 = good(device='cuda'); fused_se(x, w1, w2, "
         "backend='cpu')", ("BackendUnavailableError",), r"runs on CPU tensors and x is on cuda",
         needs="cuda"),
    Case("weights_on_other_gpu", "x, w1, w2 = good(device='cuda:0'); "
         "fused_se(x, w1.to('cuda:1'), w2.to('cuda:1'))", RAISES_RUNTIME,
         r"w1 must be on the device of x \(cuda:0\), got cuda:1", needs="cuda2"),
    # ---- fused_se: values and sizes that must simply work ----------------------------------
    Case("x_all_nan", "x, w1, w2 = good(); y = fused_se(torch.full_like(x, math.nan), w1, w2)\n"
         "assert y.isnan().all()", "returns"),
    Case("x_inf_max", "x, w1, w2 = good(); x[0, 0, 0, 0] = math.inf\n"
         "y = fused_se(x, w1, w2, squeeze='max'); y.sum()", "returns"),
    Case("x_all_minus_inf_backward", "x, w1, w2 = good(); x = torch.full_like(x, -math.inf)"
         ".requires_grad_()\ny = fused_se(x, w1, w2, squeeze='max'); y.sum().backward()",
         "returns"),
    Case("n_zero_backward", "x, w1, w2 = good(n=0); x.requires_grad_()\n"
         "fused_se(x, w1, w2).sum().backward(); assert x.grad.shape == x.shape", "returns"),
    Case("meta_huge", "x = torch.empty(2**20, 2**16, 2**12, 2**12, device='meta')\n"
         "y = fused_se(x, torch.empty(4, 2**16, device='meta'), torch.empty(2**16, 4, "
         "device='meta'))\nassert y.shape == x.shape and y.device.type == 'meta'", "returns"),
    # ---- fused_se: sizes too large to materialise: a clean allocation error ----------------
    Case("huge_expanded_x", "x = torch.zeros(1, 1, 1, 1).expand(2**50, 1, 1, 1)\n"
         "fused_se(x, torch.ones(1, 1), torch.ones(1, 1))", RAISES_RUNTIME,
         r"(?i)alloc|memory"),
    Case("huge_expanded_x_cuda", "x = torch.zeros(1, 1, 1, 1, device='cuda')"
         ".expand(2**50, 1, 1, 1)\nfused_se(x, torch.ones(1, 1, device='cuda'), "
         "torch.ones(1, 1, device='cuda'))", ("OutOfMemoryError", "RuntimeError"),
         r"(?i)out of memory|alloc", needs="cuda"),
    # ---- direct op calls: se_forward -------------------------------------------------------
    Case("op_x_3d", "a = fwd_args(); a[0] = a[0][0]; op.se_forward(*a)", RAISES_RUNTIME,
         r"se_kernels: x must be 4-D", needs="ext"),
    Case("op_x_int", "a = fwd_args(); a[0] = a[0].int(); op.se_forward(*a)", RAISES_RUNTIME,
         r"se_kernels: x must be float16, bfloat16, float32 or float64", needs="ext"),
    Case("op_x_c_zero", "a = fwd_args(); a[0] = a[0][:, :0]; a[5] = None; op.se_forward(*a)",
         RAISES_RUNTIME, r"x must have C > 0 and H\*W > 0", needs="ext"),
    Case("op_x_transposed", "a = fwd_args(); a[0] = a[0].transpose(2, 3); a[5] = None\n"
         "op.se_forward(*a)", RAISES_RUNTIME, r"x must be contiguous or channels_last",
         needs="ext"),
    Case("op_x_expanded", "a = fwd_args(); a[0] = a[0][:, :, :1].expand(2, 8, 5, 5); "
         "a[5] = None\nop.se_forward(*a)", RAISES_RUNTIME,
         r"x must be contiguous or channels_last", needs="ext"),
    Case("op_w1_3d", "a = fwd_args(); a[1] = a[1][None]; op.se_forward(*a)", RAISES_RUNTIME,
         r"w1 must be 2-D \(Cr, C\)", needs="ext"),
    Case("op_w1_wrong_c", "a = fwd_args(); a[1] = a[1][:, :7]; op.se_forward(*a)",
         RAISES_RUNTIME, r"w1 must have shape \(2, 8\)", needs="ext"),
    Case("op_w1_cr_zero", "a = fwd_args(); a[1] = a[1][:0]; op.se_forward(*a)", RAISES_RUNTIME,
         r"w1 must be 2-D \(Cr, C\) with Cr > 0", needs="ext"),
    Case("op_w2_wrong", "a = fwd_args(); a[2] = a[2][:, :1]; op.se_forward(*a)",
         RAISES_RUNTIME, r"w2 must have shape \(8, 2\)", needs="ext"),
    Case("op_w1_noncontiguous", "a = fwd_args(); a[1] = torch.randn(8, 2).t()\n"
         "op.se_forward(*a)", RAISES_RUNTIME,
         r"w1 must be contiguous", needs="ext"),
    Case("op_w2_dtype", "a = fwd_args(); a[2] = a[2].double(); op.se_forward(*a)",
         RAISES_RUNTIME, r"w2 must have the dtype of x", needs="ext"),
    Case("op_b1_dtype", "a = fwd_args(); a[3] = a[3].half(); op.se_forward(*a)",
         RAISES_RUNTIME, r"b1 must have dtype Float", needs="ext"),
    Case("op_b2_length", "a = fwd_args(); a[4] = a[4][:3]; op.se_forward(*a)",
         RAISES_RUNTIME, r"b2 must have shape \(8,\)", needs="ext"),
    Case("op_b1_2d", "a = fwd_args(); a[3] = a[3][None]; op.se_forward(*a)",
         RAISES_RUNTIME, r"b1 must have shape \(2,\)", needs="ext"),
    Case("op_residual_shape", "a = fwd_args(); a[5] = a[5][:1]; op.se_forward(*a)",
         RAISES_RUNTIME, r"residual must have the shape of x", needs="ext"),
    Case("op_residual_layout", "a = fwd_args(); a[5] = a[5].contiguous("
         "memory_format=torch.channels_last); op.se_forward(*a)", RAISES_RUNTIME,
         r"residual must be contiguous like x", needs="ext"),
    Case("op_residual_dtype", "a = fwd_args(); a[5] = a[5].double(); op.se_forward(*a)",
         RAISES_RUNTIME, r"residual must have the dtype of x", needs="ext"),
    Case("op_squeeze_code", "a = fwd_args(); a[6] = 2; op.se_forward(*a)", RAISES_RUNTIME,
         r"squeeze code must be 0 \(avg\) or 1 \(max\), got 2", needs="ext"),
    Case("op_act_code", "a = fwd_args(); a[7] = -1; op.se_forward(*a)", RAISES_RUNTIME,
         r"activation code must be in 0\.\.5 \(relu, silu, .*\), got -1", needs="ext"),
    Case("op_gate_code", "a = fwd_args(); a[8] = 2**40; op.se_forward(*a)", RAISES_RUNTIME,
         r"gate code must be in 0..3", needs="ext"),
    Case("op_code_float", "a = fwd_args(); a[8] = 0.5; op.se_forward(*a)", RAISES_SCHEMA,
         r"gate|int", needs="ext"),
    Case("op_missing_args", "a = fwd_args(); op.se_forward(*a[:4])", RAISES_SCHEMA,
         r"se_forward|argument", needs="ext"),
    Case("op_none_weight", "a = fwd_args(); a[1] = None; op.se_forward(*a)", RAISES_SCHEMA,
         r"w1", needs="ext"),
    Case("op_n_zero", "a = fwd_args(n=0); y, z, hpre, gpre = op.se_forward(*a)\n"
         "assert y.shape == (0, 8, 5, 5) and z.shape == (0, 8)", "returns", needs="ext"),
    Case("op_nan", "a = fwd_args(); a[0][0] = math.nan; y = op.se_forward(*a)[0]\n"
         "assert y[0].isnan().all() and not y[1].isnan().any()", "returns", needs="ext"),
    Case("op_meta_huge", "a = [torch.empty(2**20, 2**16, 2**12, 2**12, device='meta'), "
         "torch.empty(4, 2**16, device='meta'), torch.empty(2**16, 4, device='meta'), None, None, "
         "None, 0, 0, 0]\ny = op.se_forward(*a)[0]; assert y.shape == a[0].shape", "returns",
         needs="ext"),
    # ---- direct op calls: se_backward ------------------------------------------------------
    Case("op_bwd_dy_shape", "a = bwd_args(); a[0] = a[0][:1]; op.se_backward(*a)",
         RAISES_RUNTIME, r"dy must have the shape of x", needs="ext"),
    Case("op_bwd_dy_dtype", "a = bwd_args(); a[0] = a[0].double(); op.se_backward(*a)",
         RAISES_RUNTIME, r"dy must have the dtype of x", needs="ext"),
    Case("op_bwd_dy_layout", "a = bwd_args(); a[0] = a[0].contiguous("
         "memory_format=torch.channels_last); op.se_backward(*a)", RAISES_RUNTIME,
         r"dy must be contiguous like x", needs="ext"),
    Case("op_bwd_dy_expanded", "a = bwd_args(); a[0] = torch.ones(()).expand(a[1].shape)\n"
         "op.se_backward(*a)", RAISES_RUNTIME, r"dy must be contiguous like x", needs="ext"),
    Case("op_bwd_y_shape", "a = bwd_args(); a[4] = a[4][:, :4]; op.se_backward(*a)",
         RAISES_RUNTIME, r"y must have the shape of x", needs="ext"),
    Case("op_bwd_z_shape", "a = bwd_args(); a[5] = a[5][:1]; op.se_backward(*a)",
         RAISES_RUNTIME, r"z must have shape \(2, 8\)", needs="ext"),
    Case("op_bwd_z_dtype", "a = bwd_args(); a[5] = a[5].double(); op.se_backward(*a)",
         RAISES_RUNTIME, r"z must have dtype Float", needs="ext"),
    Case("op_bwd_hpre_cr", "a = bwd_args(); a[6] = torch.zeros(2, 3); op.se_backward(*a)",
         RAISES_RUNTIME, r"hpre must have shape \(2, 2\)", needs="ext"),
    Case("op_bwd_gpre_noncontiguous", "a = bwd_args(); a[7] = torch.zeros(8, 2).t()\n"
         "op.se_backward(*a)", RAISES_RUNTIME, r"gpre must be a contiguous tensor", needs="ext"),
    Case("op_bwd_saved_half_for_float", "a = bwd_args(); a[6] = a[6].half(); op.se_backward(*a)",
         RAISES_RUNTIME, r"hpre must have dtype Float", needs="ext"),
    Case("op_bwd_x_transposed", "a = bwd_args(residual=False); a[1] = a[1].transpose(2, 3)\n"
         "op.se_backward(*a)", RAISES_RUNTIME, r"contiguous or channels_last", needs="ext"),
    Case("op_bwd_codes", "a = bwd_args(); a[10] = 7; op.se_backward(*a)", RAISES_RUNTIME,
         r"gate code must be in 0..3 .*, got 7", needs="ext"),
    Case("op_bwd_w2_wrong", "a = bwd_args(); a[3] = a[3][:4]; op.se_backward(*a)",
         RAISES_RUNTIME, r"w2 must have shape \(8, 2\)", needs="ext"),
    Case("op_bwd_n_zero", "a = bwd_args(n=0); dx = op.se_backward(*a)[0]\n"
         "assert dx.shape == (0, 8, 5, 5)", "returns", needs="ext"),
    # ---- direct op calls on CUDA -----------------------------------------------------------
    Case("op_cuda_x_cpu_weights", "a = fwd_args(); a[0] = a[0].cuda(); a[5] = a[5].cuda()\n"
         "op.se_forward(*a)", RAISES_RUNTIME,
         r"must be on cuda:0, got cpu|device|Could not run",
         needs="cuda"),
    Case("op_cuda_residual_cpu", "a = fwd_args(device='cuda'); a[5] = a[5].cpu()\n"
         "op.se_forward(*a)", RAISES_RUNTIME,
         r"residual must be on cuda:0|device|Could not run",
         needs="cuda"),
    Case("op_cuda_bwd_z_cpu", "a = bwd_args(device='cuda'); a[5] = a[5].cpu()\n"
         "op.se_backward(*a)", RAISES_RUNTIME,
         r"z must be a contiguous tensor on cuda|device|Could not run",
         needs="cuda"),
    Case("op_cuda_two_devices", "a = fwd_args(device='cuda:0'); a[1] = a[1].to('cuda:1')\n"
         "op.se_forward(*a)", RAISES_RUNTIME,
         r"w1 must be on cuda:0, got cuda:1|device|Could not run",
         needs="cuda2"),
]


def _skip_reason(case: Case, ns: dict) -> str | None:
    torch = ns["torch"]
    if case.needs == "ext" and ns["op"] is None:
        return "se_kernels._C not loaded"
    if case.needs == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if case.needs == "cuda2" and torch.cuda.device_count() < 2:
        return "fewer than two CUDA devices"
    return None


def _emit(rec: dict) -> None:
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def main(argv) -> None:
    start = int(argv[0]) if argv else 0
    ns: dict = {}
    exec(PRELUDE, ns)
    for i in range(start, len(CASES)):
        case = CASES[i]
        _emit({"index": i, "status": "start"})
        why = _skip_reason(case, ns)
        if why:
            _emit({"index": i, "status": "skipped", "reason": why})
            continue
        try:
            exec(case.code, dict(ns))
        except BaseException as e:  # noqa: BLE001 - reporting every exception is the point
            _emit({"index": i, "status": "raised", "type": type(e).__name__,
                   "types": [c.__name__ for c in type(e).__mro__],
                   "message": str(e)[:2000]})
        else:
            _emit({"index": i, "status": "returned"})


if __name__ == "__main__":
    main(sys.argv[1:])

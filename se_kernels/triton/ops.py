"""The Triton ops: se_kernels::triton_se_forward and se_kernels::triton_se_backward.

Same signatures and semantics as se_kernels::se_forward / se_backward (csrc/ops.cpp),
registered with torch.library.triton_op and launching through torch.library.wrap_triton, so
torch.compile traces into the kernels. Autograd is registered by se_kernels/triton/__init__.py
(through se_kernels.ops.register_autograd, once that exists).

Launches per call (the plan comes from config.make_plan; kernels in kernels.py):

    forward, fused (cdiv(N, G) >= #SMs)   1 launch:  se_fwd_fused_kernel, a program per group
        of G samples pools them, runs both FCs with each weight tile read once for the group,
        and rescales, re-reading the group's slabs (from L2 when the resident groups' slabs
        fit in it).
    forward, split (small N)              2 launches: se_fwd_pool_kernel then
        se_fwd_excite_kernel over (group, channel chunk) programs. The gate of a channel
        needs FC1 over *all* channels of its sample, which other programs pool; Triton has
        no grid-wide barrier (a spin-wait on a counter would deadlock the interpreter, which
        runs programs one after another, and needs co-residency guarantees on the GPU), so
        the launch boundary is the barrier. Launch 1 writes each chunk's share of FC1,
        launch 2 sums the P shares in a fixed order: deterministic, no atomics, no memset.
        With pixel splits (plan.S > 1, mean squeeze) the grid is (group, chunk x split)
        and the shares are per (chunk, split): partial means in a (N, S, C) scratch, summed
        into z by each chunk's split-0 program.
    backward, either path                 2 launches: dx needs dz, which needs the FC backward
        over all channels, and the weight gradients need every sample: both are grid-wide
        dependencies. Fused: launch 1 = se_bwd_reduce_kernel(WRITE_DX) reduces, runs the FC
        backward and writes dx per sample group; launch 2 = se_bwd_finish_kernel computes
        dW1, dW2, db1, db2. Split: launch 1 reduces per (group, chunk) and writes FC2-backward
        shares; launch 2 writes dx (per (group, chunk)) and the weight gradients (separate
        programs of the same grid; with pixel splits, dpre and the tie counts are (N, S, C)
        partial rows, summed in split order where read). When the plan splits the weight
        gradients into WS > 1 sample slices, launch 3 (se_bwd_wsum_kernel) adds the
        slices' partial sums.

Weight and bias gradients are summed over the batch by programs that each own a block of
output elements (channels x hidden units) of one sample slice and loop over its samples in
order; the slices' partial sums are added in slice order: no atomics, so every backward is
deterministic (bitwise reproducible), and the same path serves
torch.are_deterministic_algorithms_enabled().
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
from torch.library import triton_op

from se_kernels._options import acc_dtype
from se_kernels.triton.config import _CACHES, _FORCED_STATE, device_of, make_plan
from se_kernels.triton.kernels import (se_bwd_finish_kernel, se_bwd_reduce_kernel,
                                       se_bwd_wsum_kernel, se_fwd_excite_kernel,
                                       se_fwd_fused_kernel, se_fwd_pool_kernel)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    def wrap_triton(kernel):
        """Interpreted kernels cannot be traced into a graph (and torch < 2.12's wrap_triton
        rejects them): launch them directly. The calls keep the name wrap_triton so that
        torch's source scan (triton_op's kernel list, used in compile cache keys) finds
        the kernels either way."""
        return kernel
else:
    from torch.library import wrap_triton


def _layout(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """t as NCHW-contiguous (False) or channels_last (True), copying only if it is neither
    (ops.py never passes such a tensor)."""
    if t.is_contiguous():
        return t, False
    if t.is_contiguous(memory_format=torch.channels_last):
        return t, True
    return t.contiguous(), False


def _like(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


def _launches(x: torch.Tensor) -> bool:
    """False when the kernels must not run: meta tensors, or fake tensors under the
    interpreter (there wrap_triton returns the raw interpreted kernel, which would read the
    fake tensors' data; the outputs' metadata is all a fake kernel owes)."""
    if x.device.type == "meta":
        return False
    if INTERPRET:
        from torch._subclasses.fake_tensor import is_fake
        return not is_fake(x)
    return True


def _device_guard(x: torch.Tensor):
    """Triton launches on the *current* CUDA device, and a Python custom op gets no device
    guard from the dispatcher: x on cuda:1 while cuda:0 is current would run the kernels on
    the wrong device. Switch only when needed (a no-op on one GPU)."""
    if x.device.type == "cuda" and x.device.index not in (None, torch.cuda.current_device()):
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()



INT32_MAX = 2**31 - 1


def _check_weight_size(c, cr) -> None:
    """The kernels address the weights (js * C + ks) and the weight gradients' per-slice
    partial sums (rows of 2*C*Cr + Cr + C) with int32 offsets: refuse weights beyond that
    (over 1G elements per matrix) with an error naming them, not a wrapped address."""
    if 2 * c * cr + cr + c > INT32_MAX:
        raise ValueError(
            f"triton backend: the weights w1 ({cr}, {c}) and w2 ({c}, {cr}) are too large: "
            f"its kernels address them with 32-bit offsets, which needs 2*C*Cr + C + Cr < "
            f"2^31 (here {2 * c * cr + cr + c}); use another backend")


def _launch_config(fn):
    """Caches fn's result by its (hashable) arguments, the shape key, except while a test
    forces plan fields (config.forced): the host cost of a call is then a dict lookup, not
    the plan heuristic and the launch-argument dicts (issue 13, item 7)."""
    cached = functools.lru_cache(maxsize=4096)(fn)
    _CACHES.append(cached.cache_clear)

    @functools.wraps(fn)
    def get(*key):
        # key = (n, c, hw, cr, elem, ...): only the sizes can be symbolic (SymInts under
        # torch.compile with dynamic shapes); the rest are ints, bools and a Device
        n, c, hw, cr = key[:4]
        if (_FORCED_STATE.fields or type(n) is not int or type(c) is not int
                or type(hw) is not int or type(cr) is not int):
            return fn(*key)   # forced plans; symbolic sizes
        return cached(*key)
    return get


@_launch_config
def _forward_config(n, c, hw, cr, elem, cl, dev, squeeze, act, gate, has_b1, has_b2, has_res):
    """(plan, fused launch or None, pool launch or None, excite launch or None): each launch
    a (grid, constexpr kwargs). Checks the weights' size (once per shape key)."""
    _check_weight_size(c, cr)
    # pixel splits only for the mean: FC1 is linear in the partial means, not in a max
    plan = make_plan(n, c, hw, cr, elem, cl, dev, hw_split=squeeze != 1)
    groups = plan.groups(n)
    common = dict(G=plan.G, G_PAD=plan.G_PAD, BC=plan.BC, BHW=plan.BHW,
                  CHANNELS_LAST=cl, FLAT=plan.flat, num_warps=plan.num_warps)
    opts = dict(ACT=act, GATE=gate, HAS_B1=has_b1, HAS_B2=has_b2, HAS_RES=has_res)
    if not plan.split:
        return plan, ((groups,), dict(BJ=plan.BJ, BK=plan.BK, BJH=plan.BJH, BJ2=plan.BJ2,
                                      BC2=plan.BC2, SQUEEZE=squeeze, **opts, **common)), \
            None, None
    return (plan, None,
            ((groups, plan.Q), dict(BJ=plan.BJ, BK=plan.BK, SQUEEZE=squeeze, **common)),
            ((groups, plan.Q), dict(P_PAD=plan.P_PAD, BJH=plan.BJH, BJ2=plan.BJ2,
                                    BC2=plan.BC2, SB=plan.SB, **opts, **common)))


@_launch_config
def _backward_config(n, c, hw, cr, elem, cl, dev, squeeze, act, gate, has_res):
    """(plan, reduce launch, finish launch, NW, (WS, WSN), wsum launch or None): each
    launch a (grid, kwargs). Checks the weights' size (once per shape key)."""
    _check_weight_size(c, cr)
    plan = make_plan(n, c, hw, cr, elem, cl, dev)
    groups = plan.groups(n)
    nw = -(-c // plan.BCW) * -(-cr // plan.BJW)         # weight-gradient blocks per slice
    common = dict(G=plan.G, G_PAD=plan.G_PAD, BC=plan.BC, BHW=plan.BHW, SQUEEZE=squeeze,
                  ACT=act, GATE=gate, HAS_RES=has_res, CHANNELS_LAST=cl, FLAT=plan.flat,
                  num_warps=plan.num_warps)
    fc = dict(BJH=plan.BJH, BJ2=plan.BJ2, BC2=plan.BC2)
    reduce = ((groups, plan.Q), dict(BJ=plan.BJ, BK=plan.BK, WRITE_DX=not plan.split,
                                     **fc, **common))
    ws, wsn = plan.wslices(n)
    finish = ((nw * ws + (groups * plan.Q if plan.split else 0),),
              dict(P_PAD=plan.P_PAD, BCW=plan.BCW, BN=plan.BN, BJW=plan.BJW, SB=plan.SB,
                   WRITE_DX=plan.split, PARTIAL=ws > 1, **fc, **common))
    wsum = None
    if ws > 1:
        wsum = ((-(-(2 * c * cr + cr + c) // 1024),), dict(BLK=1024, num_warps=4))
    return plan, reduce, finish, nw, (ws, wsn), wsum


@triton_op("se_kernels::triton_se_forward", mutates_args=())
def triton_se_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                      b1: Optional[torch.Tensor], b2: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], squeeze: int, act: int,
                      gate: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor]:
    """se_forward in Triton. x: (N, C, H, W) contiguous or channels_last; w1: (Cr, C);
    w2: (C, Cr); b1: (Cr,) or None; b2: (C,) or None; residual: like x or None.
    Returns y (like x, x's memory format), z (N, C), hpre (N, Cr), gpre (N, C) in float32
    (float64 for float64 x)."""
    x, cl = _layout(x)
    n, c, h, w = x.shape
    cr = w1.shape[0]
    acc = acc_dtype(x.dtype)
    y = torch.empty_like(x)
    z = x.new_empty((n, c), dtype=acc)
    hpre = x.new_empty((n, cr), dtype=acc)
    gpre = x.new_empty((n, c), dtype=acc)
    _check_weight_size(c, cr)   # also for N = 0 (review 13b #4)
    if n == 0:
        return y, z, hpre, gpre
    hw = h * w
    plan, fused, pool, excite = _forward_config(     # first: it checks the weights' size
        n, c, hw, cr, x.element_size(), cl, device_of(x), squeeze, act, gate,
        b1 is not None, b2 is not None, residual is not None)
    w1, w2 = w1.contiguous(), w2.contiguous()
    b1_ = w1 if b1 is None else b1.contiguous()       # dummy pointers when absent
    b2_ = w2 if b2 is None else b2.contiguous()
    res = x if residual is None else _like(residual, cl)
    part = x.new_empty((n, plan.Q, cr), dtype=acc)     # FC1 shares, one per program
    hs = x.new_empty((n, plan.Q, cr), dtype=acc)       # act(hpre), one copy per program
    if plan.S > 1:  # pixel splits: partial means and a gate row per split
        zp = x.new_empty((n, plan.S, c), dtype=acc)
        gq = x.new_empty((n, plan.S, c), dtype=acc)
    else:
        zp, gq = z, gpre
    hwc = plan.HWC if plan.S > 1 else hw
    if not _launches(x):
        return y, z, hpre, gpre
    with _device_guard(x):
        if fused is not None:
            wrap_triton(se_fwd_fused_kernel)[fused[0]](
                x, w1, w2, b1_, b2_, res, y, z, hpre, gpre, part, hs, n, c, hw, cr,
                **fused[1])
        else:
            wrap_triton(se_fwd_pool_kernel)[pool[0]](
                x, w1, zp, part, n, c, hw, cr, plan.chunk, plan.S, hwc, **pool[1])
            wrap_triton(se_fwd_excite_kernel)[excite[0]](
                x, w2, b1_, b2_, res, y, hpre, gpre, part, hs, zp, z, gq, n, c, hw, cr,
                plan.chunk, plan.S, hwc, **excite[1])
    return y, z, hpre, gpre


@triton_op("se_kernels::triton_se_backward", mutates_args=())
def triton_se_backward(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       y: Optional[torch.Tensor], z: torch.Tensor, hpre: torch.Tensor,
                       gpre: torch.Tensor, squeeze: int, act: int,
                       gate: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor, torch.Tensor, torch.Tensor]:
    """se_backward in Triton. dy, x: (N, C, H, W); y: the forward output, given exactly when
    the residual was fused; z, gpre: (N, C), hpre: (N, Cr) from the forward. Returns
    dx (like x), dw1 (Cr, C), dw2 (C, Cr), db1 (Cr,), db2 (C,), dresidual (like x, or empty
    (0,) when y is None)."""
    x, cl = _layout(x)
    n, c, h, w = x.shape
    cr = w1.shape[0]
    acc = acc_dtype(x.dtype)
    has_res = y is not None
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if has_res else x.new_empty((0,))
    _check_weight_size(c, cr)   # also for N = 0 (review 13b #4), before zeros_like(w1)
    if n == 0:  # sums over an empty batch
        return (dx, torch.zeros_like(w1), torch.zeros_like(w2), w1.new_zeros((cr,)),
                w2.new_zeros((c,)), dres)
    hw = h * w
    plan, reduce, finish, nw, (ws, wsn), wsum = _backward_config(   # checks the weights
        n, c, hw, cr, x.element_size(), cl, device_of(x), squeeze, act, gate, has_res)
    dw1 = torch.empty_like(w1, memory_format=torch.contiguous_format)
    dw2 = torch.empty_like(w2, memory_format=torch.contiguous_format)
    db1 = w1.new_empty((cr,))
    db2 = w2.new_empty((c,))
    dy = _like(dy, cl)
    y_ = _like(y, cl) if has_res else x                 # dummy pointer when absent
    w1, w2 = w1.contiguous(), w2.contiguous()
    z, hpre, gpre = z.contiguous(), hpre.contiguous(), gpre.contiguous()
    S = plan.S                                          # pixel splits (partial rows)
    dpre = x.new_empty((n, S, c), dtype=acc)            # dL/dgpre (S partial rows)
    # tie counts (max); for the mean a dummy pointer that aliases dpre (real scratch the
    # kernels write): it must stay unaccessed, which the SQUEEZE constexpr guarantees (every
    # cnt access is under SQUEEZE == 1); never read or write cnt on the mean path
    cnt = x.new_empty((n, S, c), dtype=acc) if squeeze == 1 else dpre
    dpart = x.new_empty((n, plan.Q, cr), dtype=acc)     # FC2-backward shares per program
    dres_ = dres if has_res else x.new_empty((1,))      # dummy pointer, never written
    dhs = x.new_empty((n, plan.Q, cr), dtype=acc)       # dL/dhpre, one copy per program
    dzs = x.new_empty((n, S, c), dtype=acc)             # dL/dz (/ HW or / ties), per split
    hwc = plan.HWC if S > 1 else hw
    # per-slice weight-gradient partial sums (WS > 1), [dW2 | dW1 | db1 | db2] per row; with
    # one slice a dummy pointer aliasing dpre (real scratch): it must stay unaccessed, which
    # the PARTIAL constexpr guarantees (every pw access is under PARTIAL, i.e. WS > 1)
    pw = x.new_empty((ws, 2 * c * cr + cr + c), dtype=acc) if ws > 1 else dpre
    if not _launches(x):
        return dx, dw1, dw2, db1, db2, dres
    with _device_guard(x):
        wrap_triton(se_bwd_reduce_kernel)[reduce[0]](
            dy, x, y_, w1, w2, z, hpre, gpre, dpre, cnt, dpart, dx, dres_, dhs, dzs, n, c, hw,
            cr, plan.chunk, S, hwc, **reduce[1])
        wrap_triton(se_bwd_finish_kernel)[finish[0]](
            dy, x, y_, w1, z, hpre, gpre, cnt, dpre, dpart, dx, dres_, dhs, dzs, dw1, dw2, db1,
            db2, pw, n, c, hw, cr, plan.chunk, plan.Q, nw, ws, wsn, S, hwc, **finish[1])
        if wsum is not None:
            wrap_triton(se_bwd_wsum_kernel)[wsum[0]](pw, dw1, dw2, db1, db2, c, cr, ws,
                                                     **wsum[1])
    return dx, dw1, dw2, db1, db2, dres


forward_op = torch.ops.se_kernels.triton_se_forward.default
backward_op = torch.ops.se_kernels.triton_se_backward.default

if INTERPRET:
    # Under the interpreter wrap_triton cannot put interpreted kernels into a graph, so the
    # functionalising decomposition that triton_op registers (which lets Inductor see the
    # kernels on CUDA) would trace a graph without them. Keep the ops opaque there instead:
    # torch.compile then calls them as ordinary custom ops.
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def _opaque(mode, op, types, args, kwargs):
        return mode.__torch_dispatch__(op, types, args, kwargs)

    triton_se_forward.register_torch_dispatch(FunctionalTensorMode, _opaque)
    triton_se_backward.register_torch_dispatch(FunctionalTensorMode, _opaque)

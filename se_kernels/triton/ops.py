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
from se_kernels.triton.config import (_CACHES, _FORCED_STATE, INT32_MAX, device_of,
                                      make_plan)
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
    return t.contiguous(memory_format=_FORMATS[channels_last])


_FORMATS = (torch.contiguous_format, torch.channels_last)   # by channels_last


def _launches(x: torch.Tensor) -> bool:
    """False when the kernels must not run: meta tensors, or fake tensors under the
    interpreter (there wrap_triton returns the raw interpreted kernel, which would read the
    fake tensors' data; the outputs' metadata is all a fake kernel owes)."""
    if x.is_meta:
        return False
    if INTERPRET:
        from torch._subclasses.fake_tensor import is_fake
        return not is_fake(x)
    return True


def _device_guard(x: torch.Tensor):
    """Triton launches on the *current* CUDA device, and a Python custom op gets no device
    guard from the dispatcher: x on cuda:1 while cuda:0 is current would run the kernels on
    the wrong device. Switch only when needed (a no-op on one GPU)."""
    if x.is_cuda and x.get_device() != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return _NO_GUARD


_NO_GUARD = contextlib.nullcontext()   # reusable: one object, not one per call (host time)


def _regions(*sizes: int) -> tuple[int, tuple[int, ...]]:
    """(total, offsets) of scratch regions of the given sizes (elements) laid out one after
    another in one flat tensor, each starting at a multiple of 16 elements: one allocation
    per call instead of one per scratch tensor (host time), and offsets that Triton
    specialises as divisible by 16, so that a region's pointer keeps the 16-byte alignment
    of a tensor of its own (64 bytes in fp32). A size of 0 gets offset 0 (a dummy that
    aliases the first region and must stay unaccessed)."""
    offs, total = [], 0
    for size in sizes:
        offs.append(total if size else 0)
        total += -(-size // 16) * 16
    return max(total, 1), tuple(offs)


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
    """(plan, fused launch or None, pool launch or None, excite launch or None, scratch
    elements): each launch a (grid, constexpr kwargs, scratch offsets). The scratch is one
    flat tensor of regions [part | hs | zp | gq] (zp, gq only with pixel splits; else they
    are z and gpre, offset 0). Checks the weights' size (once per shape key)."""
    _check_weight_size(c, cr)
    # pixel splits only for the mean: FC1 is linear in the partial means, not in a max
    plan = make_plan(n, c, hw, cr, elem, cl, dev, hw_split=squeeze != 1)
    groups = plan.groups(n)
    split_rows = n * plan.S * c if plan.S > 1 else 0
    total, (_, hs_off, zp_off, gq_off) = _regions(n * plan.Q * cr, n * plan.Q * cr,
                                                  split_rows, split_rows)
    common = dict(G=plan.G, G_PAD=plan.G_PAD, BC=plan.BC, BHW=plan.BHW,
                  CHANNELS_LAST=cl, FLAT=plan.flat, num_warps=plan.num_warps)
    opts = dict(ACT=act, GATE=gate, HAS_B1=has_b1, HAS_B2=has_b2, HAS_RES=has_res)
    if not plan.split:
        return plan, ((groups,), dict(BJ=plan.BJ, BK=plan.BK, BJH=plan.BJH, BJ2=plan.BJ2,
                                      BC2=plan.BC2, SQUEEZE=squeeze, **opts, **common),
                      (hs_off,)), None, None, total
    return (plan, None,
            ((groups, plan.Q), dict(BJ=plan.BJ, BK=plan.BK, SQUEEZE=squeeze, **common),
             (zp_off,)),
            ((groups, plan.Q), dict(P_PAD=plan.P_PAD, BJH=plan.BJH, BJ2=plan.BJ2,
                                    BC2=plan.BC2, SB=plan.SB, **opts, **common),
             (hs_off, zp_off, gq_off)), total)


@_launch_config
def _backward_config(n, c, hw, cr, elem, cl, dev, squeeze, act, gate, has_res):
    """(plan, reduce launch, finish launch, NW, (WS, WSN), wsum launch or None, scratch
    elements): each launch a (grid, kwargs, scratch offsets). The scratch is one flat tensor
    of regions [dpre | dpart | dhs | dzs | cnt | pw]: cnt (tie counts) only for the max
    squeeze, pw (the weight gradients' per-slice partial sums) only with WS > 1; else they
    are dummies at offset 0 (aliasing dpre, never accessed: the SQUEEZE and PARTIAL
    constexprs remove every access). Checks the weights' size (once per shape key)."""
    _check_weight_size(c, cr)
    plan = make_plan(n, c, hw, cr, elem, cl, dev)
    groups = plan.groups(n)
    ws, wsn = plan.wslices(n)
    rows = n * plan.S * c                                # (N, S, C): S split rows
    total, (_, dpart_off, dhs_off, dzs_off, cnt_off, pw_off) = _regions(
        rows, n * plan.Q * cr, n * plan.Q * cr, rows, rows if squeeze == 1 else 0,
        ws * (2 * c * cr + cr + c) if ws > 1 else 0)
    nw = -(-c // plan.BCW) * -(-cr // plan.BJW)         # weight-gradient blocks per slice
    common = dict(G=plan.G, G_PAD=plan.G_PAD, BC=plan.BC, BHW=plan.BHW, SQUEEZE=squeeze,
                  ACT=act, GATE=gate, HAS_RES=has_res, CHANNELS_LAST=cl, FLAT=plan.flat,
                  num_warps=plan.num_warps)
    fc = dict(BJH=plan.BJH, BJ2=plan.BJ2, BC2=plan.BC2)
    reduce = ((groups, plan.Q), dict(BJ=plan.BJ, BK=plan.BK, WRITE_DX=not plan.split,
                                     **fc, **common), (cnt_off, dpart_off, dhs_off, dzs_off))
    finish = ((nw * ws + (groups * plan.Q if plan.split else 0),),
              dict(P_PAD=plan.P_PAD, BCW=plan.BCW, BN=plan.BN, BJW=plan.BJW, SB=plan.SB,
                   WRITE_DX=plan.split, PARTIAL=ws > 1, **fc, **common),
              (cnt_off, dpart_off, dhs_off, dzs_off, pw_off))
    wsum = None
    if ws > 1:
        wsum = ((-(-(2 * c * cr + cr + c) // 1024),), dict(BLK=1024, num_warps=4), (pw_off,))
    return plan, reduce, finish, nw, (ws, wsn), wsum, total


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
    # new_empty(n, c), not new_empty((n, c)): the tuple costs ~1 us more per call in
    # torch's argument parser (host time)
    y = torch.empty_like(x)
    z = x.new_empty(n, c, dtype=acc)
    hpre = x.new_empty(n, cr, dtype=acc)
    gpre = x.new_empty(n, c, dtype=acc)
    if n == 0:
        _check_weight_size(c, cr)   # for N = 0 too (review 13b #4); else in the config
        return y, z, hpre, gpre
    hw = h * w
    plan, fused, pool, excite, scratch = _forward_config(   # checks the weights' size
        n, c, hw, cr, x.element_size(), cl, device_of(x), squeeze, act, gate,
        b1 is not None, b2 is not None, residual is not None)
    w1, w2 = w1.contiguous(), w2.contiguous()
    b1_ = w1 if b1 is None else b1.contiguous()       # dummy pointers when absent
    b2_ = w2 if b2 is None else b2.contiguous()
    res = x if residual is None else _like(residual, cl)
    # One flat scratch tensor, fresh per call (the caching allocator keeps it stream-safe):
    # part (N, P*S, Cr) FC1 shares, hs (N, P*S, Cr) act(hpre) per program and, with pixel
    # splits, zp, gq (N, S, C) partial means and gate rows (else z and gpre); the kernels
    # take it once and make the region pointers from the offsets in the config's launch
    # tuples. Never returned: the outputs are tensors of their own.
    scr = x.new_empty(scratch, dtype=acc)
    hwc = plan.HWC if plan.S > 1 else hw
    if not _launches(x):
        return y, z, hpre, gpre
    with _device_guard(x):
        if fused is not None:
            wrap_triton(se_fwd_fused_kernel)[fused[0]](
                x, w1, w2, b1_, b2_, res, y, z, hpre, gpre, scr, n, c, hw, cr, *fused[2],
                **fused[1])
        else:
            wrap_triton(se_fwd_pool_kernel)[pool[0]](
                x, w1, z, scr, n, c, hw, cr, plan.chunk, plan.S, hwc, *pool[2], **pool[1])
            wrap_triton(se_fwd_excite_kernel)[excite[0]](
                x, w2, b1_, b2_, res, y, hpre, gpre, scr, z, n, c, hw, cr, plan.chunk,
                plan.S, hwc, *excite[2], **excite[1])
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
    dres = torch.empty_like(x) if has_res else x.new_empty(0)
    if n == 0:  # sums over an empty batch
        _check_weight_size(c, cr)   # for N = 0 too (review 13b #4), before zeros_like(w1)
        return (dx, torch.zeros_like(w1), torch.zeros_like(w2), w1.new_zeros((cr,)),
                w2.new_zeros((c,)), dres)
    hw = h * w
    # the cached launch configuration (it checks the weights' size)
    plan, reduce, finish, nw, (ws, wsn), wsum, scratch = _backward_config(
        n, c, hw, cr, x.element_size(), cl, device_of(x), squeeze, act, gate, has_res)
    dw1 = torch.empty_like(w1, memory_format=torch.contiguous_format)
    dw2 = torch.empty_like(w2, memory_format=torch.contiguous_format)
    db1 = w1.new_empty(cr)
    db2 = w2.new_empty(c)
    dy = _like(dy, cl)
    y_ = _like(y, cl) if has_res else x                 # dummy pointer when absent
    w1, w2 = w1.contiguous(), w2.contiguous()
    z, hpre, gpre = z.contiguous(), hpre.contiguous(), gpre.contiguous()
    S = plan.S                                          # pixel splits (partial rows)
    # One flat scratch tensor, fresh per call (never returned): dpre (N, S, C) dL/dgpre
    # partial rows, dpart (N, P*S, Cr) FC2-backward shares, dhs (N, P*S, Cr) dL/dhpre per
    # program, dzs (N, S, C) dL/dz (/ HW or / ties) per split, cnt (N, S, C) tie counts
    # (max only) and pw (WS, 2*C*Cr + Cr + C) per-slice weight-gradient partial sums
    # [dW2 | dW1 | db1 | db2] (WS > 1 only); the kernels take it once and make the region
    # pointers from the offsets in the config's launch tuples. cnt on the mean path and pw
    # with one slice are dummies at offset 0 (aliasing dpre, real scratch the kernels
    # write): they must stay unaccessed, which the SQUEEZE and PARTIAL constexprs guarantee.
    scr = x.new_empty(scratch, dtype=acc)
    # the no-residual dummy is x: read-only, so no written tensor is passed twice (under
    # torch.compile a kernel whose writes cannot be analysed gets every argument cloned and
    # copied back in order; a dx passed again as dres would be overwritten by its clone)
    dres_ = dres if has_res else x                      # dummy pointer, never accessed
    hwc = plan.HWC if S > 1 else hw
    if not _launches(x):
        return dx, dw1, dw2, db1, db2, dres
    with _device_guard(x):
        wrap_triton(se_bwd_reduce_kernel)[reduce[0]](
            dy, x, y_, w1, w2, z, hpre, gpre, scr, dx, dres_, n, c, hw, cr, plan.chunk, S,
            hwc, *reduce[2], **reduce[1])
        wrap_triton(se_bwd_finish_kernel)[finish[0]](
            dy, x, y_, w1, z, hpre, gpre, scr, dx, dres_, dw1, dw2, db1, db2, n, c, hw, cr,
            plan.chunk, plan.Q, nw, ws, wsn, S, hwc, *finish[2], **finish[1])
        if wsum is not None:
            wrap_triton(se_bwd_wsum_kernel)[wsum[0]](scr, dw1, dw2, db1, db2, c, cr, ws,
                                                     *wsum[2], **wsum[1])
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

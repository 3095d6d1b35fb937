"""The Triton kernels of the SE block, forward and backward.

Every kernel works on a *sample group* (G consecutive samples, rows n0 .. n0+G-1) and a
*channel chunk* (channels c_lo .. c_hi-1). The building blocks are four phases, each a
``@triton.jit`` helper, and six kernels that compose them (see ops.py for which path uses
which and why):

    forward   _pool_phase       z = squeeze(x); part[n, p, :] = W1[:, chunk] z[n, chunk]
              _excite_phase     hpre = sum_p part + b1 (once per program, act(hpre) kept in
                                scratch hs); gpre = W2[chunk] act(hpre) + b2;
                                y = gate(gpre) x [relu(y + residual)]
    backward  _reduce_phase     ds = sum_hw g x (tie counts for max); dpre = ds gate'(gpre);
                                dpart[n, p, :] = dpre[n, chunk] W2[chunk]; dres = g
              _write_phase      dhpre = act'(hpre) sum_p dpart; dz = dhpre W1[:, chunk] / HW
                                (or / ties); dx = g s + dz [on the maxima], g read back
                                from dres when the residual was fused
              _wgrad_phase      dW2, db2, dW1, db1 for a block of channels x hidden units,
                                summed over a slice of the batch in a fixed order; the
                                slices' partial sums added in slice order by
                                se_bwd_wsum_kernel (deterministic, no atomics)

Where one NCHW pixel tile covers H*W (config rule 6, FLAT > 0), the streaming part of each
phase loops over (sample, channel block) pairs instead of pixel tiles, each tile one
contiguous span of whole channels loaded with 16-byte vectors (_flat_tile); y, dx and dres
are computed and stored in that flat layout (16-byte stores), only the per-channel sums
rearrange it into [BC, BHW] rows.

g is dy, masked by y > 0 when the residual tail was fused. Each weight tile a phase touches
is loaded once per sample group: the FCs run as [G, J, K] broadcast products, so a program
owning G samples reads each weight byte once for all G (DESIGN.md section 3, the conv5_x
trap). FCs use broadcast multiply + sum, not tl.dot: G is often below tl.dot's minimum of 16,
fp32 must stay fp32 (no tf32), and float64 works the same way.

Tensors are addressed from their shapes: x, residual, y, dy, dx, dres are (N, C, H, W),
contiguous (NCHW, CHANNELS_LAST=False) or channels_last (NHWC, CHANNELS_LAST=True), read in
place; every tile's base offset is int64 and only the offsets inside a tile are int32 (see
"addressing" below), so tensors of >= 2^31 elements are addressed correctly. z, hpre, gpre,
part, dpre, cnt, dpart are row-major scratch/outputs in the accumulation type ACC (float32;
float64 for float64 x), which every kernel takes from z's element type. Python float
literals are float32 in Triton, so the maths below divides by small exact integers instead
of multiplying by fractions.

Option codes (constexpr): SQUEEZE 0 avg, 1 max; ACT 0 relu, 1 silu, 2 hardswish, 3 relu6,
4 gelu (exact, erf), 5 gelu_tanh; GATE 0 sigmoid,
1 hardsigmoid, 2 tanh, 3 relu -- as in csrc/include/se_kernels/options.h, whose NaN
conventions and cancellation-free derivatives these follow.
"""

import triton
import triton.language as tl

# Software pipelining depth of the pixel loops: Triton (3.6+) pipelines a loop without
# tl.dot only when the loop sets num_stages; the loads of the next two tiles are then in
# flight (cp.async into shared memory on sm_80+) while the current one is reduced or
# rescaled. tools/compile_triton_kernels.py reports the cp.async count per variant.
_STAGES = tl.constexpr(3)

# The FC step loops (FC1 in _pool_phase, FC2 in _excite_phase, the FC2 backward in
# _reduce_phase, the FC1 backward in _write_phase) walk (hidden block, channel block) steps
# of one weight tile each, L2-resident; at conv5_x, G = 8, ~64 steps per program of a
# [16, 32] W2 tile (1 KB bf16) and an [8, 16] fp32 row block: latency-bound, one L2 round
# trip per num_stages - 1 steps. _fc_stages: where a step's weight tile is small (<= 1024
# elements) 1 + 4096 / elements stages, at most `most` (FC2 / FC1-backward: 8, 7 steps in
# flight at conv5_x; 3 before), else `floor` (_STAGES for those, as before). FC1 and the FC2
# backward (not pipelined before) are 4 deep where G_PAD >= 8 (BK = FC tile / (G_PAD BJ) is
# small: many steps), else still 1: deeper, or at every G, they cost registers or spills
# (Triton 3.6, the GPU machines' version: the conv5_x pool 64 -> 181-229 registers at 8
# stages, 101-127 at 4; 3.8, sm_90: the NHWC reduce's 4096-element dpart tiles 128 -> 167,
# fp64 pool / reduce 12-24 bytes of spills). A stage costs one step's tiles of shared
# memory (~1.5 KB at conv5_x bf16), inside the pixel loops' buffers, which Triton reuses.
# The order of additions is the loop's whatever the depth, so the results do not depend
# on it.


# The streaming loops (the pixel loops and the flat (sample, channel block) loops) keep
# num_stages - 1 tiles of each streamed tensor in flight, in shared memory (cp.async on
# sm_80+). At 3 stages (2 ahead; 13e: every streaming loop before) the conv4_x / conv5_x
# NCHW flat loops kept ~24 KB per SM in flight (two programs, 6.3 KB spans), below the
# ~32 KB that 4.3 TB/s x ~1 us of loaded HBM latency needs per SM. _stream_stages: as many
# tiles ahead as fit `budget` bytes of pipeline buffers for the loop's streamed tensors
# (48 KB: what the bf16 residual reduce, 3 tensors x 2 x 8 KB, had at 3 stages), 3 to 5
# stages: with bf16 8 KB tiles a loop streaming one tensor is 5 deep, two (x and dy, x and
# the residual) 4, three 3 as before; fp32 16 KB tiles 4 / 3. So two programs' buffers
# stay inside an A100's 164 KB of shared memory. The order of additions is the loop's
# whatever the depth, so the results do not depend on it.


@triton.constexpr_function
def _stream_stages(tile_elems, elem_bits, streams):
    """num_stages of a streaming loop over tiles of tile_elems elements of elem_bits bits in
    `streams` tensors. Constants written here (Triton's kernel cache keys on this source)."""
    budget, floor, most = 49152, 3, 5
    tile = max(1, int(tile_elems) * int(elem_bits) // 8)
    return max(floor, min(most, 1 + budget // (tile * max(1, int(streams)))))


@triton.constexpr_function
def _fc_stages(step_elems, floor, deep=True, most=8):
    """num_stages of an FC step loop whose weight tile has step_elems elements. The
    constants are written here, not as module globals, so that a change to them changes
    this source, which Triton's kernel cache keys on."""
    ahead, small = 4096, 1024
    if not deep or step_elems > small:
        return int(floor)
    return max(int(floor), min(most, 1 + ahead // max(1, int(step_elems))))


# ---- scalar maths (elementwise on tensors of ACC) --------------------------------------------
# Leaf functions (no nested @triton.jit calls) and none inside the per-tile loops: the
# interpreter re-patches triton.language on every nested jit call (milliseconds each), so the
# per-tile code below is written out inline.


# The GELU constants are made in v's own type (tl.full): a bare literal is float32, which would
# cost float64 inputs ~3e-8 of relative error. 1/sqrt(2), 1/sqrt(2 pi), 2 sqrt(2/pi), 0.044715.
# Exact gelu uses erf (Triton has no erfc outside libdevice, which the interpreter lacks), so
# far in the lower tail (v < -4) its relative error grows; the absolute error stays < 1e-6 |v|.
@triton.jit
def _act_fwd(v, ACT: tl.constexpr):
    if ACT == 1:  # silu = v sigma(v)
        return v / (1.0 + tl.exp(-v))
    elif ACT == 2:  # hardswish = v relu6(v + 3) / 6, NaN passing
        t = v + 3.0
        return v * tl.where(t < 0.0, 0.0, tl.where(t > 6.0, 6.0, t)) / 6.0
    elif ACT == 3:  # relu6, NaN passing
        return tl.where(v < 0.0, 0.0, tl.where(v > 6.0, 6.0, v))
    elif ACT == 4:  # gelu, exact: v (1 + erf(v / sqrt 2)) / 2
        return 0.5 * v * (1.0 + tl.math.erf(v * tl.full([], 0.70710678118654752440, v.dtype)))
    elif ACT == 5:  # gelu_tanh = v (1 + tanh u) / 2 = v sigma(2u), u = sqrt(2/pi) (v + k v^3)
        u2 = tl.full([], 1.59576912160573071176, v.dtype) * (
            v + tl.full([], 0.044715, v.dtype) * v * v * v)
        return v / (1.0 + tl.exp(-u2))
    else:  # relu, NaN passing
        return tl.where(v < 0.0, 0.0, v)


@triton.jit
def _act_backward(v, g, ACT: tl.constexpr):
    """g * act'(v). The piecewise ones select: relu (threshold_backward) 0 where v <= 0;
    hardswish 0 where v <= -3, g (v/3 + 1/2) where v < 3, else g; relu6 (hardtanh_backward) 0
    where v <= 0 or v >= 6, else g; so an inf/NaN g stops where the activation is flat."""
    if ACT == 1:  # sigma(v) (1 + v sigma(-v)): no 1 - sigma cancellation
        return g * ((1.0 + v / (1.0 + tl.exp(v))) / (1.0 + tl.exp(-v)))
    elif ACT == 2:
        return tl.where(v <= -3.0, 0.0, tl.where(v < 3.0, g * (v / 3.0 + 0.5), g))
    elif ACT == 3:
        return tl.where((v <= 0.0) | (v >= 6.0), 0.0, g)
    elif ACT == 4:  # Phi(v) + v phi(v)
        cdf = 0.5 * (1.0 + tl.math.erf(v * tl.full([], 0.70710678118654752440, v.dtype)))
        pdf = tl.exp(-0.5 * v * v) * tl.full([], 0.39894228040143267794, v.dtype)
        return g * (cdf + v * pdf)
    elif ACT == 5:  # sigma(2u) + v sigma(2u) sigma(-2u) (2u)'
        c = tl.full([], 1.59576912160573071176, v.dtype)
        k = tl.full([], 0.044715, v.dtype)
        u2 = c * (v + k * v * v * v)
        sp = 1.0 / (1.0 + tl.exp(-u2))
        sm = 1.0 / (1.0 + tl.exp(u2))
        return g * (sp + v * (sp * sm) * (c * (1.0 + 3.0 * k * v * v)))
    else:
        return tl.where(v <= 0.0, 0.0, g)


@triton.jit
def _gate_fwd(v, GATE: tl.constexpr):
    if GATE == 1:  # hardsigmoid = relu6(v + 3) / 6, NaN passing
        t = v + 3.0
        return tl.where(t < 0.0, 0.0, tl.where(t > 6.0, 6.0, t)) / 6.0
    elif GATE == 2:
        # tanh without cancellation near 0: a degree-9 Taylor polynomial for |v| < 1/8
        # (relative error < 1e-11), (1 - e) / (1 + e) with e = exp(-2|v|) elsewhere.
        a = tl.abs(v)
        e = tl.exp(-2.0 * a)
        big = (1.0 - e) / (1.0 + e)
        v2 = v * v
        poly = v * (2835.0 + v2 * (-945.0 + v2 * (378.0 + v2 * (-153.0 + v2 * 62.0)))) / 2835.0
        return tl.where(a < 0.125, poly, tl.where(v < 0.0, -big, big))
    elif GATE == 3:  # relu, NaN passing
        return tl.where(v < 0.0, 0.0, v)
    else:  # sigmoid
        return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _gate_backward(v, g, GATE: tl.constexpr):
    """g * gate'(v); hardsigmoid and relu select, like PyTorch's backward kernels, so an
    inf/NaN g stops where the gate is flat."""
    if GATE == 1:  # g / 6 on the open interval (-3, 3)
        return tl.where((v > -3.0) & (v < 3.0), g / 6.0, 0.0)
    elif GATE == 2:  # sech^2 v = 4e / (1 + e)^2, e = exp(-2|v|): no 1 - tanh^2 cancellation
        e = tl.exp(-2.0 * tl.abs(v))
        return g * (4.0 * e / ((1.0 + e) * (1.0 + e)))
    elif GATE == 3:  # threshold_backward
        return tl.where(v <= 0.0, 0.0, g)
    else:  # sigma(v) sigma(-v): no sigma (1 - sigma) cancellation
        return g / ((1.0 + tl.exp(-v)) * (1.0 + tl.exp(v)))


# ---- addressing -----------------------------------------------------------------------------
# 64-bit safety: an activation tensor can hold >= 2^31 elements per sample (N = 1, C = 64,
# 5800 x 5800) and N * C can reach 2^31, while Triton's index arithmetic is int32 (the
# shapes are passed as i32). So every tile's base is an int64 element offset t (a scalar:
# _tile_base once per sample x channel block, at the first pixel of the program's pixel
# split, then t += BHW * SH per pixel tile; the flat tiles' span starts are _tile_base at
# pixel 0; _row_offset for scratch rows), and only the offsets *inside* a tile are int32:
# arange(BC) * SC + arange(BHW) * SH, bounded by BC * HW (NCHW) or BHW * C (NHWC), which
# config.make_plan keeps below 2^31. The tile's offsets are formed as t + (int32 offsets)
# once per tile and shared by every tensor of that layout: forming ptr + t + offsets per
# tensor instead cost the NCHW fp32 backward ~1.5 KB of register spills (sm_90).


@triton.jit
def _tile_base(n, c0, hw0, C, HW, CHANNELS_LAST: tl.constexpr):
    """int64 element offset of x[n, c0, hw0] (hw0: the first pixel of a pixel split), x
    NCHW- or NHWC-contiguous, all in int64. The pixel loops then step the tile pointer by
    BHW * SH (< 2^31, config.make_plan) per tile."""
    n64 = tl.cast(n, tl.int64)
    h64 = tl.cast(hw0, tl.int64)
    if CHANNELS_LAST:
        return (n64 * HW + h64) * C + c0
    else:
        return (n64 * C + c0) * HW + h64


@triton.jit
def _row_offset(n, R):
    """int64 element offset of row n of a row-major (N, R) scratch/output tensor."""
    return tl.cast(n, tl.int64) * R


@triton.jit
def _sum_parts(part_ptr, n0, gs, gm, js, jm, P, CR, P_PAD: tl.constexpr):
    """sum_p part[n0 + gs, p, js] -> [G_PAD, BJ]; part: (N, P, CR). One [G_PAD, P_PAD, BJ]
    tile load and a tl.sum over p (a fixed reduction order, so deterministic), not P
    dependent loads."""
    ps = tl.arange(0, P_PAD)
    m = gm[:, None, None] & (ps < P)[None, :, None] & jm[None, None, :]
    off = (gs[:, None, None] * P + ps[None, :, None]) * CR + js[None, None, :]
    return tl.sum(tl.load(part_ptr + _row_offset(n0, P * CR) + off, mask=m, other=0.0),
                  axis=1)


@triton.jit
def _flat_tile(ptr, t, span, fi, gidx, BC: tl.constexpr, BHW: tl.constexpr,
               OTHER: tl.constexpr):
    """The [BC, BHW] tile of whole NCHW channels c0 .. c0+BC-1 whose pixels start at element t
    (one tile covers HW): loaded as the flat, contiguous span t .. t+span-1 (span = channels
    x HW; 16-byte vector loads and cp.async copies where t is a multiple of the vector, which
    the caller asserts with tl.multiple_of), then rearranged into rows of HW pixels by
    gidx = c * HW + hw (tl.gather, through shared memory on a GPU). Elements outside the
    span (channels past the chunk) and the padding hw >= HW (gidx = BC * BHW - 1, past any
    span since BC * HW < BC * BHW there) read OTHER."""
    v = tl.load(ptr + t + fi, mask=fi < span, other=OTHER)
    return tl.reshape(tl.gather(v, gidx, 0), [BC, BHW])


@triton.jit
def _flat_index(HW, BC: tl.constexpr, BHW: tl.constexpr):
    """The loop-invariant int32 indices of the flat tiles: channels cc [BC], valid pixels hv
    [BHW], in-tile offsets offs = c * HW + hw [BC, BHW] (only gidx's source: y, dx and
    dres are stored from the flat layout), the gather index gidx [BC * BHW] (offs, with the
    padding hw >= HW at BC * BHW - 1) and the flat lanes fi [BC * BHW]."""
    cc = tl.arange(0, BC)
    hh = tl.arange(0, BHW)
    hv = hh < HW
    offs = cc[:, None] * HW + hh[None, :]
    gidx = tl.reshape(tl.where(hv[None, :], offs, BC * BHW - 1), [BC * BHW])
    return cc, hv, offs, gidx, tl.arange(0, BC * BHW)


@triton.jit
def _flat_step(it, nb, n0, c_lo, c_hi, C, HW, cc, hv, BC: tl.constexpr, FLAT: tl.constexpr):
    """Step it of a flat (sample, channel block) loop, nb channel blocks per sample: sample
    g (of the group at n0), its channels cs and their mask cm, the tile mask m, the span
    (channels x HW elements) and the span's int64 start t (_tile_base at pixel 0), a
    multiple of FLAT elements (config rule 6), which tl.multiple_of tells the compiler
    (16-byte vectors). A flat tile covers all of HW, so the flat loops run only where the
    program has no pixel split (S = 1, hw_lo = 0: config asserts flat == 0 wherever S > 1);
    their scratch rows (z, gq, dpre, cnt, dzs) are still addressed per split, n*S + sp."""
    g = it // nb
    c0 = c_lo + (it - g * nb) * BC
    cs = c0 + cc
    cm = cs < c_hi
    # the hints written on the expressions themselves (review 13a #1: a tl.multiple_of on
    # the result of a helper call, _tile_base, was dropped by the inliner, so only C and CHUNK
    # specialised as multiples of 16 gave 16-byte loads). Both are sound: t = (n*C + c0)*HW
    # and span = (chunk or C - p*chunk - k*BC or BC)*HW are multiples of FLAT by rule 6;
    # the device_assert checks that on every tile (the interpreter, or TRITON_DEBUG=1)
    span = tl.multiple_of(tl.minimum(c_hi - c0, BC) * HW, FLAT)
    t = tl.multiple_of((tl.cast(n0 + g, tl.int64) * C + c0) * HW, FLAT)
    tl.device_assert((t % FLAT == 0) & (span % FLAT == 0),
                     "flat tile start/span not a multiple of FLAT (config rule 6)")
    return g, cs, cm, cm[:, None] & hv[None, :], span, t


@triton.jit
def _sum_splits(ptr, base, rs, rm, cs, cm, S, C, SB: tl.constexpr):
    """sum_k ptr[base + (rs * S + k) * C + cs] over the S pixel-split rows -> [R, BX]
    (rs: R rows, cs: BX channels; base int64): one [R, SB, BX] tile load per SB splits and
    a tl.sum over them (a fixed order, so deterministic), not S dependent loads."""
    ks = tl.arange(0, SB)
    m = rm[:, None, None] & cm[None, None, :]
    off = rs[:, None, None] * (S * C) + cs[None, None, :]
    acc = tl.sum(tl.load(ptr + base + off + ks[None, :, None] * C,
                         mask=m & (ks < S)[None, :, None], other=0.0), axis=1)
    for k0 in range(SB, S, SB):
        kk = k0 + ks
        acc += tl.sum(tl.load(ptr + base + off + kk[None, :, None] * C,
                              mask=m & (kk < S)[None, :, None], other=0.0), axis=1)
    return acc


# ---- forward phases -------------------------------------------------------------------------


@triton.jit
def _pool_phase(x_ptr, w1_ptr, z_ptr, part_ptr, n0, p, c_lo, c_hi, N, C, HW, CR, P,
                sp, S, hw_lo, hw_hi,
                G: tl.constexpr, G_PAD: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
                BJ: tl.constexpr, BK: tl.constexpr, SQUEEZE: tl.constexpr,
                CHANNELS_LAST: tl.constexpr, FLAT: tl.constexpr, FUSED: tl.constexpr):
    """z[n, c] for the group's samples and the chunk's channels, then the chunk's share of FC1:
    part[n, p, :] = sum_{c in chunk} W1[:, c] z[n, c]. With pixel splits (S > 1, mean only)
    the program pools pixels [hw_lo, hw_hi): z_ptr is then the (N, S, C) scratch of partial
    means, this program's rows n*S + sp, and p its share index (chunk, split): FC1 is linear
    in z, so the shares of the partial means add up to W1 z."""
    ACC = z_ptr.dtype.element_ty
    # the streaming loops' depth (_stream_stages), from the tile's bytes; 3 in the fused
    # kernel, which config picks for many programs per SM (deeper doubled its registers:
    # review of 13e)
    STAGES: tl.constexpr = 3 if FUSED else _stream_stages(
        BC * BHW, x_ptr.dtype.element_ty.primitive_bitwidth, 1)
    if CHANNELS_LAST:  # tile offsets: c * SC + hw * SH
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    g_count = tl.minimum(N - n0, G)
    ZR = S * C                                              # z row stride per sample
    zs = z_ptr + _row_offset(n0, ZR) + sp * C               # the group's rows of z
    if FLAT > 0:
        # NCHW, one tile covers HW (config rule 6): the (sample, channel block) loop is
        # the pipelined one, each tile a contiguous span of whole channels
        cc, hv, offs, gidx, fi = _flat_index(HW, BC, BHW)
        nb = tl.cdiv(c_hi - c_lo, BC)
        for it in tl.range(0, g_count * nb, num_stages=STAGES):
            g, cs, cm, m, span, t = _flat_step(it, nb, n0, c_lo, c_hi, C, HW, cc, hv, BC, FLAT)
            if SQUEEZE == 1:  # max that propagates NaN, as torch.amax does
                v = _flat_tile(x_ptr, t, span, fi, gidx, BC, BHW, float("-inf")).to(ACC)
                nans = tl.sum((v != v).to(tl.int32), axis=1)
                z = tl.where(nans > 0, float("nan"), tl.max(v, axis=1))
            else:
                z = tl.sum(_flat_tile(x_ptr, t, span, fi, gidx, BC, BHW, 0.0).to(ACC),
                           axis=1) / HW
            tl.store(zs + g * ZR + cs, z, mask=cm)
    else:
        for g in range(0, g_count):
            for c0 in range(c_lo, c_hi, BC):
                cs = c0 + tl.arange(0, BC)
                cm = cs < c_hi
                t = _tile_base(n0 + g, c0, hw_lo, C, HW, CHANNELS_LAST)    # int64 tile base
                if SQUEEZE == 1:
                    acc = tl.full([BC, BHW], float("-inf"), ACC)
                else:
                    acc = tl.zeros([BC, BHW], ACC)
                for hw0 in tl.range(hw_lo, hw_hi, BHW, num_stages=STAGES):
                    m = cm[:, None] & (hw0 + tl.arange(0, BHW) < hw_hi)[None, :]
                    off = t + (tl.arange(0, BC)[:, None] * SC + tl.arange(0, BHW)[None, :] * SH)
                    if SQUEEZE == 1:  # max that propagates NaN, as torch.amax does
                        v = tl.load(x_ptr + off, mask=m, other=float("-inf")).to(ACC)
                        acc = tl.where((acc > v) | (acc != acc), acc, v)
                    else:
                        acc += tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
                    t += BHW * SH
                if SQUEEZE == 1:
                    nans = tl.sum((acc != acc).to(tl.int32), axis=1)
                    z = tl.where(nans > 0, float("nan"), tl.max(acc, axis=1))
                else:
                    z = tl.sum(acc, axis=1) / HW
                tl.store(zs + g * ZR + cs, z, mask=cm)
    tl.debug_barrier()  # z is read back below by other threads of this program
    gs = tl.arange(0, G_PAD)
    gm = gs < g_count
    for j0 in range(0, CR, BJ):
        js = j0 + tl.arange(0, BJ)
        jm = js < CR
        acc1 = tl.zeros([G_PAD, BJ], ACC)
        # the channel steps pipelined where G >= 8 makes them many and small (_fc_stages)
        for k0 in tl.range(c_lo, c_hi, BK, num_stages=_fc_stages(BJ * BK, 1, G_PAD >= 8, 4)):
            ks = k0 + tl.arange(0, BK)
            km = ks < c_hi
            zt = tl.load(zs + gs[:, None] * ZR + ks[None, :],
                         mask=gm[:, None] & km[None, :], other=0.0)                # [G, BK]
            wt = tl.load(w1_ptr + js[:, None] * C + ks[None, :],
                         mask=jm[:, None] & km[None, :], other=0.0).to(ACC)        # [BJ, BK]
            acc1 += tl.sum(zt[:, None, :] * wt[None, :, :], axis=2)
        tl.store(part_ptr + _row_offset(n0, P * CR) + (gs[:, None] * P + p) * CR + js[None, :],
                 acc1, mask=gm[:, None] & jm[None, :])


@triton.jit
def _excite_phase(x_ptr, w2_ptr, b1_ptr, b2_ptr, res_ptr, y_ptr, hpre_ptr, gpre_ptr, part_ptr,
                  hs_ptr, zp_ptr, z_ptr, gq_ptr, n0, p, c_lo, c_hi, N, C, HW, CR, P,
                  sp, S, hw_lo, hw_hi,
                  G: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr, BC: tl.constexpr,
                  BHW: tl.constexpr, BJH: tl.constexpr, BJ2: tl.constexpr, BC2: tl.constexpr,
                  SB: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
                  HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_RES: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr, FLAT: tl.constexpr, FUSED: tl.constexpr):
    """hpre (stored by the chunk-0 program), gpre for the chunk, and y for the chunk's
    channels of the group's samples. Three steps, each once per program: (a) act(hpre) for
    the group from [G_PAD, P_PAD, BJH] tiles of part, into this program's rows of hs
    (N, P, CR); (b) gpre for the chunk in [G_PAD, BJ2, BC2] FC2 sub-tiles (BJ2 >= 16: whole
    sectors of W2 rows), stored; (c) the rescale, its gate read back from gpre.
    With pixel splits (S > 1) p is the share index (chunk, split sp), the rescale covers
    pixels [hw_lo, hw_hi), the split-0 program also writes z (the sum of the S partial
    means in zp (N, S, C), in split order) and gpre, and each program keeps its gate in
    its own rows n*S + sp of gq (N, S, C), so no two programs write the same address
    (S = 1: gq is gpre, zp and z are z)."""
    ACC = hpre_ptr.dtype.element_ty
    # the streaming loops' depth (_stream_stages), from the tile's bytes; 3 in the fused
    # kernel (as _pool_phase)
    STAGES: tl.constexpr = 3 if FUSED else _stream_stages(
        BC * BHW, x_ptr.dtype.element_ty.primitive_bitwidth, 1 + HAS_RES)
    if CHANNELS_LAST:
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    g_count = tl.minimum(N - n0, G)
    gs = tl.arange(0, G_PAD)
    gm = gs < g_count
    QR = S * C                                              # gq / zp row stride per sample
    qrow0 = _row_offset(n0, QR) + sp * C                    # this program's gq rows
    if (S > 1) & (sp == 0):  # z = sum of the partial means, in split order
        for c0 in range(c_lo, c_hi, BC2):
            cs = c0 + tl.arange(0, BC2)
            cm = cs < c_hi
            zacc = _sum_splits(zp_ptr, _row_offset(n0, QR), gs, gm, cs, cm, S, C, SB)
            tl.store(z_ptr + _row_offset(n0, C) + gs[:, None] * C + cs[None, :], zacc,
                     mask=gm[:, None] & cm[None, :])
    hrow = _row_offset(n0, P * CR) + (gs[:, None] * P + p) * CR     # this program's hs rows
    for j0 in range(0, CR, BJH):
        js = j0 + tl.arange(0, BJH)
        jm = js < CR
        gj = gm[:, None] & jm[None, :]
        h = _sum_parts(part_ptr, n0, gs, gm, js, jm, P, CR, P_PAD)
        if HAS_B1:
            h += tl.load(b1_ptr + js, mask=jm, other=0.0).to(ACC)[None, :]
        if p == 0:
            tl.store(hpre_ptr + _row_offset(n0, CR) + gs[:, None] * CR + js[None, :], h,
                     mask=gj)
        tl.store(hs_ptr + hrow + js[None, :], _act_fwd(h, ACT), mask=gj)
    tl.debug_barrier()  # hs is read back below by other threads of this program
    row0 = _row_offset(n0, C)                               # the group's rows of (N, C)
    # one pipelined loop over (channel block, hidden block) steps, so that the next two
    # steps' hs and W2 tiles are in flight across channel blocks too; the sum restarts at a
    # block's first hidden step and is stored at its last (the same order of additions as
    # a loop nest, so the same bits)
    nj = tl.cdiv(CR, BJ2)
    acc = tl.zeros([G_PAD, BC2], ACC)
    for it in tl.range(0, tl.cdiv(c_hi - c_lo, BC2) * nj,
                       num_stages=_fc_stages(BJ2 * BC2, _STAGES)):
        cb = it // nj
        j0 = (it - cb * nj) * BJ2
        cs = c_lo + cb * BC2 + tl.arange(0, BC2)
        cm = cs < c_hi
        js = j0 + tl.arange(0, BJ2)
        jm = js < CR
        h = tl.load(hs_ptr + hrow + js[None, :], mask=gm[:, None] & jm[None, :],
                    other=0.0)                                                     # [G, BJ2]
        wt = tl.load(w2_ptr + cs[None, :] * CR + js[:, None],
                     mask=jm[:, None] & cm[None, :], other=0.0).to(ACC)            # [BJ2, BC2]
        acc = tl.where(j0 == 0, 0.0, acc) + tl.sum(h[:, :, None] * wt[None, :, :], axis=1)
        last = j0 + BJ2 >= CR
        out = acc
        if HAS_B2:
            out += tl.load(b2_ptr + cs, mask=cm & last, other=0.0).to(ACC)[None, :]
        tl.store(gq_ptr + qrow0 + gs[:, None] * QR + cs[None, :], out,
                 mask=gm[:, None] & cm[None, :] & last)
        if (S > 1) & (sp == 0):
            tl.store(gpre_ptr + row0 + gs[:, None] * C + cs[None, :], out,
                     mask=gm[:, None] & cm[None, :] & last)
    tl.debug_barrier()  # gq is read back below by other threads of this program
    if FLAT > 0:
        # NCHW, one tile covers HW (config rule 6): the (sample, channel block) loop is
        # the pipelined one, each tile a contiguous span of whole channels, rescaled and
        # stored in that flat layout (16-byte stores, no gather: review 13a #4); each
        # lane's gate comes from the block's BC gates by its channel, fch = fi // HW
        cc, hv, offs, gidx, fi = _flat_index(HW, BC, BHW)
        fch = tl.minimum(fi // HW, BC - 1)    # lanes past the span: masked, any channel
        nb = tl.cdiv(c_hi - c_lo, BC)
        for it in tl.range(0, g_count * nb, num_stages=STAGES):
            g, cs, cm, m, span, t = _flat_step(it, nb, n0, c_lo, c_hi, C, HW, cc, hv, BC, FLAT)
            s = _gate_fwd(tl.load(gq_ptr + qrow0 + g * QR + cs, mask=cm, other=0.0),
                          GATE)                                                    # [BC]
            fm = fi < span
            v = tl.load(x_ptr + t + fi, mask=fm, other=0.0).to(ACC) * tl.gather(s, fch, 0)
            if HAS_RES:  # relu(y + residual), NaN passing
                v += tl.load(res_ptr + t + fi, mask=fm, other=0.0).to(ACC)
                v = tl.where(v < 0.0, 0.0, v)
            tl.store(y_ptr + t + fi, v.to(y_ptr.dtype.element_ty), mask=fm)
    else:
        for c0 in range(c_lo, c_hi, BC):
            cs = c0 + tl.arange(0, BC)
            cm = cs < c_hi
            s = _gate_fwd(tl.load(gq_ptr + qrow0 + gs[:, None] * QR + cs[None, :],
                                  mask=gm[:, None] & cm[None, :], other=0.0), GATE)   # [G, BC]
            for g in range(0, g_count):
                # row g of s (a select, so that other rows' NaNs stay out)
                s_g = tl.sum(tl.where(gs[:, None] == g, s, 0.0), axis=0)[:, None]
                t = _tile_base(n0 + g, c0, hw_lo, C, HW, CHANNELS_LAST)    # int64 tile base
                for hw0 in tl.range(hw_lo, hw_hi, BHW, num_stages=STAGES):
                    m = cm[:, None] & (hw0 + tl.arange(0, BHW) < hw_hi)[None, :]
                    off = t + (tl.arange(0, BC)[:, None] * SC + tl.arange(0, BHW)[None, :] * SH)
                    v = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC) * s_g
                    if HAS_RES:  # relu(y + residual), NaN passing
                        v += tl.load(res_ptr + off, mask=m, other=0.0).to(ACC)
                        v = tl.where(v < 0.0, 0.0, v)
                    tl.store(y_ptr + off, v.to(y_ptr.dtype.element_ty), mask=m)
                    t += BHW * SH


# ---- backward phases ------------------------------------------------------------------------


@triton.jit
def _reduce_phase(dy_ptr, x_ptr, y_ptr, w2_ptr, z_ptr, gpre_ptr, dpre_ptr, cnt_ptr, dpart_ptr,
                  dres_ptr, n0, p, c_lo, c_hi, N, C, HW, CR, P, sp, S, hw_lo, hw_hi,
                  G: tl.constexpr, G_PAD: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
                  BJ: tl.constexpr, BK: tl.constexpr, SQUEEZE: tl.constexpr,
                  GATE: tl.constexpr, HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                  FLAT: tl.constexpr):
    """dpre = (sum_hw g x) gate'(gpre) and the tie counts (max) for the chunk, then the chunk's
    share of the FC2 backward: dpart[n, p, :] = sum_{c in chunk} dpre[n, c] W2[c, :]. With
    the residual fused, g (dy masked by y > 0) is also dres, stored here so that the dx
    phase reads dres instead of dy and y (6|x| of traffic instead of 7|x|).
    With pixel splits (S > 1) the program reduces pixels [hw_lo, hw_hi) and p is its share
    index (chunk, split sp): dpre and cnt are then (N, S, C) partial rows n*S + sp. The
    gate derivative is linear in the pixel sum for every gate (a product, or a select that
    does not depend on it), so the shares of the partial dpre add up to the FC2 backward;
    the weight gradients and the dx phase sum the S partial rows in split order."""
    ACC = z_ptr.dtype.element_ty
    # the streaming loops' depth (_stream_stages), from the tile's bytes
    STAGES: tl.constexpr = _stream_stages(BC * BHW, x_ptr.dtype.element_ty.primitive_bitwidth,
                                          2 + HAS_RES)
    if CHANNELS_LAST:
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    g_count = tl.minimum(N - n0, G)
    row0 = _row_offset(n0, C)                               # the group's rows of (N, C)
    QR = S * C                                              # dpre / cnt row stride
    qrow0 = _row_offset(n0, QR) + sp * C                    # this program's dpre/cnt rows
    # qrow0 again, as another expression for the cnt stores below: with cnt_ptr = scr_ptr +
    # CNT_OFF (one scratch tensor), the same expression lets LLVM form the cnt rows as the
    # dpre rows' address + 4 CNT_OFF, and ptxas then took 168 registers instead of 128 for
    # the NHWC conv2_x N = 1 plan (S > 1; 1 program per SM instead of 2). This form keeps the
    # cnt rows' own base, as with a separate cnt pointer before the single scratch.
    crow0 = (_row_offset(n0, S) + sp) * C
    if FLAT > 0:
        # NCHW, one tile covers HW (config rule 6): the (sample, channel block) loop is
        # the pipelined one, each tile a contiguous span of whole channels
        cc, hv, offs, gidx, fi = _flat_index(HW, BC, BHW)
        nb = tl.cdiv(c_hi - c_lo, BC)
        for it in tl.range(0, g_count * nb, num_stages=STAGES):
            g, cs, cm, m, span, t = _flat_step(it, nb, n0, c_lo, c_hi, C, HW, cc, hv, BC, FLAT)
            xv = _flat_tile(x_ptr, t, span, fi, gidx, BC, BHW, 0.0).to(ACC)
            if HAS_RES:  # the fused relu's mask: 0 where y <= 0 (NaN y passing), applied
                # and stored (dres) in the flat layout (16-byte stores), then gathered
                fm = fi < span
                gf = tl.where(tl.load(y_ptr + t + fi, mask=fm, other=0.0).to(ACC) <= 0.0, 0.0,
                              tl.load(dy_ptr + t + fi, mask=fm, other=0.0).to(ACC))
                tl.store(dres_ptr + t + fi, gf.to(dres_ptr.dtype.element_ty), mask=fm)
                gv = tl.reshape(tl.gather(gf, gidx, 0), [BC, BHW])
            else:
                gv = _flat_tile(dy_ptr, t, span, fi, gidx, BC, BHW, 0.0).to(ACC)
            rows = row0 + g * C + cs
            qrows = qrow0 + g * QR + cs                     # this split's dpre/cnt row
            gp = tl.load(gpre_ptr + rows, mask=cm, other=0.0)
            tl.store(dpre_ptr + qrows, _gate_backward(gp, tl.sum(gv * xv, axis=1), GATE),
                     mask=cm)
            if SQUEEZE == 1:
                zc = tl.load(z_ptr + rows, mask=cm, other=0.0)[:, None]
                tl.store(cnt_ptr + qrows,
                         tl.sum(tl.where(m & (xv == zc), 1.0, 0.0).to(ACC), axis=1), mask=cm)
    else:
        for g in range(0, g_count):
            for c0 in range(c_lo, c_hi, BC):
                cs = c0 + tl.arange(0, BC)
                cm = cs < c_hi
                acc = tl.zeros([BC, BHW], ACC)
                ties = tl.zeros([BC, BHW], ACC)
                if SQUEEZE == 1:
                    zc = tl.load(z_ptr + row0 + g * C + cs, mask=cm, other=0.0)[:, None]
                t = _tile_base(n0 + g, c0, hw_lo, C, HW, CHANNELS_LAST)    # int64 tile base
                for hw0 in tl.range(hw_lo, hw_hi, BHW, num_stages=STAGES):
                    m = cm[:, None] & (hw0 + tl.arange(0, BHW) < hw_hi)[None, :]
                    off = t + (tl.arange(0, BC)[:, None] * SC + tl.arange(0, BHW)[None, :] * SH)
                    xv = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
                    gv = tl.load(dy_ptr + off, mask=m, other=0.0).to(ACC)
                    if HAS_RES:  # the fused relu's mask: 0 where y <= 0 (NaN y passing)
                        yv = tl.load(y_ptr + off, mask=m, other=0.0).to(ACC)
                        gv = tl.where(yv <= 0.0, 0.0, gv)
                        tl.store(dres_ptr + off, gv.to(dres_ptr.dtype.element_ty), mask=m)
                    acc += gv * xv
                    if SQUEEZE == 1:
                        ties += tl.where(m & (xv == zc), 1.0, 0.0)
                    t += BHW * SH
                gp = tl.load(gpre_ptr + row0 + g * C + cs, mask=cm, other=0.0)
                tl.store(dpre_ptr + qrow0 + g * QR + cs,
                         _gate_backward(gp, tl.sum(acc, axis=1), GATE), mask=cm)
                if SQUEEZE == 1:
                    tl.store(cnt_ptr + crow0 + g * QR + cs, tl.sum(ties, axis=1), mask=cm)
    tl.debug_barrier()  # dpre is read back below by other threads of this program
    gs = tl.arange(0, G_PAD)
    gm = gs < g_count
    for j0 in range(0, CR, BJ):
        js = j0 + tl.arange(0, BJ)
        jm = js < CR
        acc1 = tl.zeros([G_PAD, BJ], ACC)
        # the channel steps pipelined where G >= 8 makes them many and small (_fc_stages)
        for k0 in tl.range(c_lo, c_hi, BK, num_stages=_fc_stages(BJ * BK, 1, G_PAD >= 8, 4)):
            ks = k0 + tl.arange(0, BK)
            km = ks < c_hi
            dp = tl.load(dpre_ptr + qrow0 + gs[:, None] * QR + ks[None, :],
                         mask=gm[:, None] & km[None, :], other=0.0)                # [G, BK]
            wt = tl.load(w2_ptr + ks[None, :] * CR + js[:, None],
                         mask=jm[:, None] & km[None, :], other=0.0).to(ACC)        # [BJ, BK]
            acc1 += tl.sum(dp[:, None, :] * wt[None, :, :], axis=2)
        tl.store(dpart_ptr + _row_offset(n0, P * CR) + (gs[:, None] * P + p) * CR + js[None, :],
                 acc1, mask=gm[:, None] & jm[None, :])


@triton.jit
def _write_phase(dy_ptr, x_ptr, y_ptr, w1_ptr, z_ptr, hpre_ptr, gpre_ptr, cnt_ptr, dpart_ptr,
                 dx_ptr, dres_ptr, dhs_ptr, dzs_ptr, n0, p, c_lo, c_hi, N, C, HW, CR, P,
                 sp, S, hw_lo, hw_hi,
                 G: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr, BC: tl.constexpr,
                 BHW: tl.constexpr, BJH: tl.constexpr, BJ2: tl.constexpr, BC2: tl.constexpr,
                 SB: tl.constexpr, SQUEEZE: tl.constexpr, ACT: tl.constexpr,
                 GATE: tl.constexpr, HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                 FLAT: tl.constexpr):
    """dz for the chunk from the full dpart, then dx for the chunk's channels of the group's
    samples (g from dres, which the reduce phase stored, when the residual was fused). As
    in the excite phase, each step once per program: (a) dhpre for the group from
    [G_PAD, P_PAD, BJH] tiles of dpart into this program's rows of dhs (N, P, CR); (b) the
    chunk's dz coefficient (dz / HW, or / ties) in [G_PAD, BJ2, BC2] sub-tiles into dzs
    (N, C); (c) dx, reading the coefficient and the gate back. With pixel splits (S > 1)
    p is the share index (chunk, split sp), dx covers pixels [hw_lo, hw_hi), the tie counts
    are the sum of the S partial rows of cnt (N, S, C), and dzs (N, S, C) has a row per
    split, n*S + sp, so no two programs write the same address."""
    ACC = z_ptr.dtype.element_ty
    # the streaming loops' depth (_stream_stages), from the tile's bytes
    STAGES: tl.constexpr = _stream_stages(BC * BHW, x_ptr.dtype.element_ty.primitive_bitwidth,
                                          1 + (SQUEEZE == 1) + HAS_RES)
    if CHANNELS_LAST:
        SC = 1
        SH = C
    else:
        SC = HW
        SH = 1
    g_count = tl.minimum(N - n0, G)
    gs = tl.arange(0, G_PAD)
    gm = gs < g_count
    row0 = _row_offset(n0, C)                               # the group's rows of (N, C)
    QR = S * C                                              # cnt / dzs row stride
    qrow0 = _row_offset(n0, QR) + sp * C                    # this program's dzs rows
    hrow = _row_offset(n0, P * CR) + (gs[:, None] * P + p) * CR     # this program's dhs rows
    for j0 in range(0, CR, BJH):
        js = j0 + tl.arange(0, BJH)
        jm = js < CR
        gj = gm[:, None] & jm[None, :]
        hp = tl.load(hpre_ptr + _row_offset(n0, CR) + gs[:, None] * CR + js[None, :],
                     mask=gj, other=0.0)
        dh = _act_backward(hp, _sum_parts(dpart_ptr, n0, gs, gm, js, jm, P, CR, P_PAD), ACT)
        tl.store(dhs_ptr + hrow + js[None, :], dh, mask=gj)
    tl.debug_barrier()  # dhs is read back below by other threads of this program
    # one pipelined loop over (channel block, hidden block) steps, as in the excite phase
    nj = tl.cdiv(CR, BJ2)
    acc = tl.zeros([G_PAD, BC2], ACC)
    for it in tl.range(0, tl.cdiv(c_hi - c_lo, BC2) * nj,
                       num_stages=_fc_stages(BJ2 * BC2, _STAGES)):
        cb = it // nj
        j0 = (it - cb * nj) * BJ2
        cs = c_lo + cb * BC2 + tl.arange(0, BC2)
        cm = cs < c_hi
        js = j0 + tl.arange(0, BJ2)
        jm = js < CR
        dh = tl.load(dhs_ptr + hrow + js[None, :], mask=gm[:, None] & jm[None, :],
                     other=0.0)                                                    # [G, BJ2]
        wt = tl.load(w1_ptr + js[:, None] * C + cs[None, :],
                     mask=jm[:, None] & cm[None, :], other=0.0).to(ACC)            # [BJ2, BC2]
        acc = tl.where(j0 == 0, 0.0, acc) + tl.sum(dh[:, :, None] * wt[None, :, :], axis=1)
        last = j0 + BJ2 >= CR
        gc = gm[:, None] & cm[None, :] & last
        rows = gs[:, None] * C + cs[None, :]                # int32; + row0 (int64) below
        qrows = gs[:, None] * QR + cs[None, :]              # int32; + qrow0 (int64)
        if SQUEEZE == 1:  # shared evenly by the tied maxima, as amax's gradient is
            if S == 1:
                coef = acc / tl.load(cnt_ptr + row0 + rows, mask=gc, other=1.0)
            else:  # the splits' tie counts (exact small integers); 1 in masked lanes;
                # loaded at a block's last hidden step only (cm & last), as the S = 1 load
                ties = _sum_splits(cnt_ptr, _row_offset(n0, QR), gs, gm, cs, cm & last, S, C,
                                   SB)
                coef = acc / tl.where(gc, ties, 1.0)
        else:
            coef = acc / HW
        tl.store(dzs_ptr + qrow0 + qrows, coef, mask=gc)
    tl.debug_barrier()  # dzs is read back below by other threads of this program
    if FLAT > 0:
        # NCHW, one tile covers HW (config rule 6): the (sample, channel block) loop is
        # the pipelined one, each tile a contiguous span of whole channels
        # dx computed and stored in the flat layout (16-byte stores, no gather), as y in
        # the excite phase: each lane's per-channel values by its channel fch = fi // HW
        cc, hv, offs, gidx, fi = _flat_index(HW, BC, BHW)
        fch = tl.minimum(fi // HW, BC - 1)    # lanes past the span: masked, any channel
        nb = tl.cdiv(c_hi - c_lo, BC)
        for it in tl.range(0, g_count * nb, num_stages=STAGES):
            g, cs, cm, m, span, t = _flat_step(it, nb, n0, c_lo, c_hi, C, HW, cc, hv, BC, FLAT)
            rows = row0 + g * C + cs
            fm = fi < span
            coef = tl.gather(tl.load(dzs_ptr + qrow0 + g * QR + cs, mask=cm, other=0.0), fch, 0)
            s = tl.gather(_gate_fwd(tl.load(gpre_ptr + rows, mask=cm, other=0.0), GATE), fch, 0)
            if HAS_RES and dres_ptr.dtype == dy_ptr.dtype:
                # dres = dy masked by y > 0, stored by the reduce phase (exact: same dtype)
                gv = tl.load(dres_ptr + t + fi, mask=fm, other=0.0).to(ACC)
            else:
                gv = tl.load(dy_ptr + t + fi, mask=fm, other=0.0).to(ACC)
                if HAS_RES:
                    yv = tl.load(y_ptr + t + fi, mask=fm, other=0.0).to(ACC)
                    gv = tl.where(yv <= 0.0, 0.0, gv)
            if SQUEEZE == 1:  # mask * coef as arithmetic: 0 * inf is NaN, as in the reference
                zc = tl.gather(tl.load(z_ptr + rows, mask=cm, other=0.0), fch, 0)
                xv = tl.load(x_ptr + t + fi, mask=fm, other=0.0).to(ACC)
                d = gv * s + tl.where(xv == zc, 1.0, 0.0) * coef
            else:
                d = gv * s + coef
            tl.store(dx_ptr + t + fi, d.to(dx_ptr.dtype.element_ty), mask=fm)
    else:
        for c0 in range(c_lo, c_hi, BC):
            cs = c0 + tl.arange(0, BC)
            cm = cs < c_hi
            gc = gm[:, None] & cm[None, :]
            rows = gs[:, None] * C + cs[None, :]
            coef = tl.load(dzs_ptr + qrow0 + gs[:, None] * QR + cs[None, :], mask=gc, other=0.0)
            s = _gate_fwd(tl.load(gpre_ptr + row0 + rows, mask=gc, other=0.0), GATE)
            for g in range(0, g_count):
                s_g = tl.sum(tl.where(gs[:, None] == g, s, 0.0), axis=0)[:, None]      # row g
                coef_g = tl.sum(tl.where(gs[:, None] == g, coef, 0.0), axis=0)[:, None]
                if SQUEEZE == 1:
                    zc = tl.load(z_ptr + row0 + g * C + cs, mask=cm, other=0.0)[:, None]
                t = _tile_base(n0 + g, c0, hw_lo, C, HW, CHANNELS_LAST)    # int64 tile base
                for hw0 in tl.range(hw_lo, hw_hi, BHW, num_stages=STAGES):
                    m = cm[:, None] & (hw0 + tl.arange(0, BHW) < hw_hi)[None, :]
                    off = t + (tl.arange(0, BC)[:, None] * SC + tl.arange(0, BHW)[None, :] * SH)
                    if HAS_RES and dres_ptr.dtype == dy_ptr.dtype:
                        # dres = dy masked by y > 0, stored by the reduce phase (exact: same dtype)
                        gv = tl.load(dres_ptr + off, mask=m, other=0.0).to(ACC)
                    else:
                        gv = tl.load(dy_ptr + off, mask=m, other=0.0).to(ACC)
                        if HAS_RES:
                            yv = tl.load(y_ptr + off, mask=m, other=0.0).to(ACC)
                            gv = tl.where(yv <= 0.0, 0.0, gv)
                    if SQUEEZE == 1:  # mask * coef as arithmetic: 0 * inf is NaN, as in the reference
                        xv = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
                        d = gv * s_g + tl.where(xv == zc, 1.0, 0.0) * coef_g
                    else:
                        d = gv * s_g + coef_g
                    tl.store(dx_ptr + off, d.to(dx_ptr.dtype.element_ty), mask=m)
                    t += BHW * SH


@triton.jit
def _wgrad_phase(z_ptr, hpre_ptr, dpre_ptr, dpart_ptr, dw1_ptr, dw2_ptr, db1_ptr, db2_ptr,
                 pw_ptr, wpid, jb, ws, n_lo, n_hi, C, CR, P, S,
                 BCW: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, P_PAD: tl.constexpr,
                 SB: tl.constexpr, ACT: tl.constexpr, PARTIAL: tl.constexpr):
    """For channels cs = block wpid, hidden units js = block jb and samples [n_lo, n_hi)
    (slice ws): dW2[cs, js] = sum_n dpre[n, cs]^T act(hpre[n, js]),
    dW1[js, cs] = sum_n dhpre[n, js]^T z[n, cs]; hidden block 0 also writes
    db2[cs] = sum_n dpre[n, cs], channel block 0 db1[js] = sum_n dhpre[n, js].
    One program owns each output element of its slice and sums n in order. Without PARTIAL
    (one slice) it writes the outputs; with PARTIAL it writes row ws of pw (WS, L), laid out
    [dW2 (C*CR) | dW1 (CR*C) | db1 (CR) | db2 (C)], which se_bwd_wsum_kernel sums over the
    slices in order: deterministic without atomics, and no zero-initialised outputs.
    dpre is (N, S, C): with pixel splits (S > 1) dpre[n] is the sum of its S partial rows
    (_sum_splits, SB at a time)."""
    ACC = z_ptr.dtype.element_ty
    if PARTIAL:
        L = 2 * C * CR + CR + C
        row = pw_ptr + tl.cast(ws, tl.int64) * L
        o_dw2 = row
        o_dw1 = row + C * CR
        o_db1 = row + 2 * C * CR
        o_db2 = row + 2 * C * CR + CR
    else:
        o_dw2 = dw2_ptr
        o_dw1 = dw1_ptr
        o_db1 = db1_ptr
        o_db2 = db2_ptr
    cs = wpid * BCW + tl.arange(0, BCW)
    cm = cs < C
    bl = tl.arange(0, BN)
    if jb == 0:
        db2 = tl.zeros([BCW], ACC)
        for nb in range(n_lo, n_hi, BN):
            ns = nb + bl
            if S == 1:
                dp = tl.load(dpre_ptr + _row_offset(nb, C) + bl[:, None] * C + cs[None, :],
                             mask=(ns < n_hi)[:, None] & cm[None, :], other=0.0)
            else:  # the splits' partial dpre
                dp = _sum_splits(dpre_ptr, _row_offset(nb, S * C), bl, ns < n_hi, cs, cm, S,
                                 C, SB)
            db2 += tl.sum(dp, axis=0)
        tl.store(o_db2 + cs, db2.to(o_db2.dtype.element_ty), mask=cm)
    # one hidden block per program (the blocks were a loop of one program before)
    js = jb * BJ + tl.arange(0, BJ)
    jm = js < CR
    acc2 = tl.zeros([BCW, BJ], ACC)   # dW2[cs, js]
    acc1 = tl.zeros([BJ, BCW], ACC)   # dW1[js, cs]
    db1 = tl.zeros([BJ], ACC)
    for nb in range(n_lo, n_hi, BN):
        ns = nb + bl
        nm = ns < n_hi
        nc = nm[:, None] & cm[None, :]
        nj = nm[:, None] & jm[None, :]
        rb = _row_offset(nb, C)                             # int64 block base
        rc = bl[:, None] * C + cs[None, :]                  # int32, inside the block
        if S == 1:
            dp = tl.load(dpre_ptr + rb + rc, mask=nc, other=0.0)
        else:  # the splits' partial dpre
            dp = _sum_splits(dpre_ptr, _row_offset(nb, S * C), bl, nm, cs, cm, S, C, SB)
        zt = tl.load(z_ptr + rb + rc, mask=nc, other=0.0)
        hp = tl.load(hpre_ptr + _row_offset(nb, CR) + bl[:, None] * CR + js[None, :],
                     mask=nj, other=0.0)
        dh = _sum_parts(dpart_ptr, nb, bl, nm, js, jm, P, CR, P_PAD)
        dh = _act_backward(hp, dh, ACT)                                           # [BN, BJ]
        acc2 += tl.sum(dp[:, :, None] * _act_fwd(hp, ACT)[:, None, :], axis=0)
        acc1 += tl.sum(dh[:, :, None] * zt[:, None, :], axis=0)
        db1 += tl.sum(dh, axis=0)
    tl.store(o_dw2 + cs[:, None] * CR + js[None, :], acc2.to(o_dw2.dtype.element_ty),
             mask=cm[:, None] & jm[None, :])
    tl.store(o_dw1 + js[:, None] * C + cs[None, :], acc1.to(o_dw1.dtype.element_ty),
             mask=jm[:, None] & cm[None, :])
    if wpid == 0:
        tl.store(o_db1 + js, db1.to(o_db1.dtype.element_ty), mask=jm)


# ---- kernels --------------------------------------------------------------------------------
# Pointer arguments, shapes: x, res, y, dy, dx, dres (N, C, H, W) NCHW or NHWC; w1, dw1 (CR, C);
# w2, dw2 (C, CR); b1, db1 (CR,); b2, db2 (C,); z, gpre (N, C) ACC; dpre, cnt, dzs and the
# forward's zp, gq (N, S, C) ACC (S pixel splits, 1 unless split); hpre (N, CR) ACC; part,
# dpart, hs, dhs (N, P*S, CR) ACC; pw (WS, 2*C*CR + CR + C) ACC (a dummy when
# WS == 1). Absent optional tensors are passed as a dummy pointer with their HAS_* flag False.
# scr: the call's scratch, one flat ACC tensor (ops.py, host time) whose regions are those
# scratch tensors at the element offsets *_OFF (multiples of 16; part and dpre at 0): the
# kernels take it once and make the region pointers at the top, so that no two pointer
# arguments alias (torch.compile clones each mutated argument apart) and Triton's launcher
# specialises one tensor, not up to six. zp, gq are z, gpre where S == 1; an offset of 0
# for cnt (mean) or pw (WS == 1) is a dummy that aliases dpre and is never accessed.


@triton.jit
def se_fwd_fused_kernel(x_ptr, w1_ptr, w2_ptr, b1_ptr, b2_ptr, res_ptr, y_ptr, z_ptr, hpre_ptr,
                        gpre_ptr, scr_ptr, N, C, HW, CR, HS_OFF,
                        G: tl.constexpr, G_PAD: tl.constexpr, BC: tl.constexpr,
                        BHW: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                        BJH: tl.constexpr, BJ2: tl.constexpr, BC2: tl.constexpr,
                        SQUEEZE: tl.constexpr, ACT: tl.constexpr,
                        GATE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
                        HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        FLAT: tl.constexpr):
    """The whole forward for samples [pid*G, pid*G + G), all channels: grid (cdiv(N, G),)."""
    part_ptr = scr_ptr  # the scratch's regions
    hs_ptr = scr_ptr + HS_OFF
    n0 = tl.program_id(0) * G
    _pool_phase(x_ptr, w1_ptr, z_ptr, part_ptr, n0, 0, 0, C, N, C, HW, CR, 1, 0, 1, 0, HW,
                G, G_PAD, BC, BHW, BJ, BK, SQUEEZE, CHANNELS_LAST, FLAT, True)
    tl.debug_barrier()  # part is read back by other threads
    _excite_phase(x_ptr, w2_ptr, b1_ptr, b2_ptr, res_ptr, y_ptr, hpre_ptr, gpre_ptr, part_ptr,
                  hs_ptr, z_ptr, z_ptr, gpre_ptr, n0, 0, 0, C, N, C, HW, CR, 1, 0, 1, 0, HW,
                  G, G_PAD, 1, BC, BHW, BJH, BJ2, BC2, 1,
                  ACT, GATE, HAS_B1, HAS_B2, HAS_RES, CHANNELS_LAST, FLAT, True)


@triton.jit
def se_fwd_pool_kernel(x_ptr, w1_ptr, z_ptr, scr_ptr, N, C, HW, CR, CHUNK, S, HWC, ZP_OFF,
                       G: tl.constexpr, G_PAD: tl.constexpr, BC: tl.constexpr,
                       BHW: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                       SQUEEZE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       FLAT: tl.constexpr):
    """Split forward, launch 1: grid (cdiv(N, G), P*S); program (i, q), q = p*S + sp, pools
    channels [p*CHUNK, p*CHUNK + CHUNK) and pixels [sp*HWC, sp*HWC + HWC) of samples
    [i*G, i*G + G) and writes their share q of FC1. S > 1 (mean only): the pool writes the
    (N, S, C) partial means (the scratch's zp region) instead of z."""
    part_ptr = scr_ptr  # the scratch's regions
    if S > 1:
        z_ptr = scr_ptr + ZP_OFF
    n0 = tl.program_id(0) * G
    q = tl.program_id(1)
    p = q // S
    sp = q % S
    c_lo = p * CHUNK
    hw_lo = sp * HWC
    _pool_phase(x_ptr, w1_ptr, z_ptr, part_ptr, n0, q, c_lo, tl.minimum(c_lo + CHUNK, C),
                N, C, HW, CR, tl.num_programs(1), sp, S, hw_lo, hw_lo + tl.minimum(HWC, HW - hw_lo),
                G, G_PAD, BC, BHW, BJ, BK, SQUEEZE, CHANNELS_LAST, FLAT, False)


@triton.jit
def se_fwd_excite_kernel(x_ptr, w2_ptr, b1_ptr, b2_ptr, res_ptr, y_ptr, hpre_ptr, gpre_ptr,
                         scr_ptr, z_ptr, N, C, HW, CR, CHUNK, S, HWC, HS_OFF, ZP_OFF, GQ_OFF,
                         G: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr,
                         BC: tl.constexpr, BHW: tl.constexpr, BJH: tl.constexpr,
                         BJ2: tl.constexpr, BC2: tl.constexpr, SB: tl.constexpr,
                         ACT: tl.constexpr, GATE: tl.constexpr, HAS_B1: tl.constexpr,
                         HAS_B2: tl.constexpr, HAS_RES: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, FLAT: tl.constexpr):
    """Split forward, launch 2: same grid; program (i, q) finishes FC1 from all P*S shares,
    computes the gate of its channels and writes their y for its pixels. S > 1: zp is the
    (N, S, C) scratch of partial means (z written from it by the sp = 0 programs), gq an
    (N, S, C) gate scratch; S = 1: zp and z are z, gq is gpre."""
    part_ptr = scr_ptr  # the scratch's regions
    hs_ptr = scr_ptr + HS_OFF
    zp_ptr = z_ptr
    gq_ptr = gpre_ptr
    if S > 1:
        zp_ptr = scr_ptr + ZP_OFF
        gq_ptr = scr_ptr + GQ_OFF
    n0 = tl.program_id(0) * G
    q = tl.program_id(1)
    p = q // S
    sp = q % S
    c_lo = p * CHUNK
    hw_lo = sp * HWC
    _excite_phase(x_ptr, w2_ptr, b1_ptr, b2_ptr, res_ptr, y_ptr, hpre_ptr, gpre_ptr, part_ptr,
                  hs_ptr, zp_ptr, z_ptr, gq_ptr, n0, q, c_lo, tl.minimum(c_lo + CHUNK, C), N,
                  C, HW, CR, tl.num_programs(1), sp, S, hw_lo, hw_lo + tl.minimum(HWC, HW - hw_lo),
                  G, G_PAD, P_PAD, BC, BHW, BJH, BJ2, BC2, SB, ACT, GATE,
                  HAS_B1, HAS_B2, HAS_RES, CHANNELS_LAST, FLAT, False)


@triton.jit
def se_bwd_reduce_kernel(dy_ptr, x_ptr, y_ptr, w1_ptr, w2_ptr, z_ptr, hpre_ptr, gpre_ptr,
                         scr_ptr, dx_ptr, dres_ptr,
                         N, C, HW, CR, CHUNK, S, HWC, CNT_OFF, DPART_OFF, DHS_OFF, DZS_OFF,
                         G: tl.constexpr, G_PAD: tl.constexpr, BC: tl.constexpr,
                         BHW: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                         BJH: tl.constexpr, BJ2: tl.constexpr, BC2: tl.constexpr,
                         SQUEEZE: tl.constexpr, ACT: tl.constexpr,
                         GATE: tl.constexpr, HAS_RES: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, WRITE_DX: tl.constexpr,
                         FLAT: tl.constexpr):
    """Backward, launch 1: grid (cdiv(N, G), P*S). Program (i, q), q = p*S + sp, reduces
    channels [p*CHUNK, p*CHUNK + CHUNK) and pixels [sp*HWC, sp*HWC + HWC) of samples
    [i*G, i*G + G) and writes its share q of the FC2 backward (dpre, cnt: (N, S, C) rows).
    With WRITE_DX (P == S == 1, the program owns whole samples) it goes on to write dx for
    its samples while their slabs may still be in L2."""
    dpre_ptr = scr_ptr  # the scratch's regions (cnt: offset 0, a dummy, for the mean)
    cnt_ptr = scr_ptr + CNT_OFF
    dpart_ptr = scr_ptr + DPART_OFF
    dhs_ptr = scr_ptr + DHS_OFF
    dzs_ptr = scr_ptr + DZS_OFF
    n0 = tl.program_id(0) * G
    q = tl.program_id(1)
    p = q // S
    sp = q % S
    c_lo = p * CHUNK
    c_hi = tl.minimum(c_lo + CHUNK, C)
    hw_lo = sp * HWC
    P = tl.num_programs(1)
    _reduce_phase(dy_ptr, x_ptr, y_ptr, w2_ptr, z_ptr, gpre_ptr, dpre_ptr, cnt_ptr, dpart_ptr,
                  dres_ptr, n0, q, c_lo, c_hi, N, C, HW, CR, P, sp, S, hw_lo,
                  hw_lo + tl.minimum(HWC, HW - hw_lo), G, G_PAD, BC, BHW, BJ, BK, SQUEEZE,
                  GATE, HAS_RES, CHANNELS_LAST, FLAT)
    if WRITE_DX:
        tl.debug_barrier()  # dpart and cnt are read back by other threads
        _write_phase(dy_ptr, x_ptr, y_ptr, w1_ptr, z_ptr, hpre_ptr, gpre_ptr, cnt_ptr,
                     dpart_ptr, dx_ptr, dres_ptr, dhs_ptr, dzs_ptr, n0, 0, c_lo, c_hi, N, C,
                     HW, CR, 1, 0, 1, 0, HW, G, G_PAD, 1, BC, BHW, BJH, BJ2, BC2, 1, SQUEEZE,
                     ACT, GATE, HAS_RES, CHANNELS_LAST, FLAT)


@triton.jit
def se_bwd_finish_kernel(dy_ptr, x_ptr, y_ptr, w1_ptr, z_ptr, hpre_ptr, gpre_ptr, scr_ptr,
                         dx_ptr, dres_ptr, dw1_ptr, dw2_ptr, db1_ptr, db2_ptr,
                         N, C, HW, CR, CHUNK, P, NW, WS,
                         WSN, S, HWC, CNT_OFF, DPART_OFF, DHS_OFF, DZS_OFF, PW_OFF,
                         G: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr,
                         BC: tl.constexpr, BHW: tl.constexpr, BJH: tl.constexpr,
                         BJ2: tl.constexpr, BC2: tl.constexpr, BCW: tl.constexpr,
                         BN: tl.constexpr, BJW: tl.constexpr, SB: tl.constexpr,
                         SQUEEZE: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
                         HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         WRITE_DX: tl.constexpr, PARTIAL: tl.constexpr,
                         FLAT: tl.constexpr):
    """Backward, launch 2: 1-D grid. Programs [0, NW * WS) compute the weight and bias
    gradients, one (BCW channels, BJW hidden units) block over one slice of WSN samples
    each: NW = cdiv(C, BCW) * cdiv(CR, BJW) blocks per slice, (slice, channel block, hidden
    block) from pid in that order (first, so that these longer programs start early); with
    PARTIAL (WS > 1) into per-slice partial sums pw that se_bwd_wsum_kernel adds up. With
    WRITE_DX the next cdiv(N, G) * P programs write dx for (group, share q) =
    divmod(pid - NW * WS, P); P counts the shares, chunks x pixel splits, q = p*S + sp."""
    dpre_ptr = scr_ptr  # the scratch's regions (cnt, pw: offset 0, a dummy, if unused)
    cnt_ptr = scr_ptr + CNT_OFF
    dpart_ptr = scr_ptr + DPART_OFF
    dhs_ptr = scr_ptr + DHS_OFF
    dzs_ptr = scr_ptr + DZS_OFF
    pw_ptr = scr_ptr + PW_OFF
    pid = tl.program_id(0)
    if pid < NW * WS:
        ws = pid // NW
        nj = tl.cdiv(CR, BJW)
        n_lo = ws * WSN
        _wgrad_phase(z_ptr, hpre_ptr, dpre_ptr, dpart_ptr, dw1_ptr, dw2_ptr, db1_ptr, db2_ptr,
                     pw_ptr, (pid % NW) // nj, (pid % NW) % nj, ws, n_lo,
                     tl.minimum(n_lo + WSN, N), C, CR, P, S, BCW, BN, BJW, P_PAD, SB, ACT,
                     PARTIAL)
    elif WRITE_DX:
        i = (pid - NW * WS) // P
        q = (pid - NW * WS) % P
        sp = q % S
        c_lo = (q // S) * CHUNK
        hw_lo = sp * HWC
        _write_phase(dy_ptr, x_ptr, y_ptr, w1_ptr, z_ptr, hpre_ptr, gpre_ptr, cnt_ptr,
                     dpart_ptr, dx_ptr, dres_ptr, dhs_ptr, dzs_ptr, i * G, q, c_lo,
                     tl.minimum(c_lo + CHUNK, C), N, C, HW, CR, P, sp, S, hw_lo,
                     hw_lo + tl.minimum(HWC, HW - hw_lo), G, G_PAD, P_PAD, BC, BHW,
                     BJH, BJ2, BC2, SB, SQUEEZE, ACT, GATE, HAS_RES, CHANNELS_LAST,
                     FLAT)


@triton.jit
def se_bwd_wsum_kernel(pw_ptr, dw1_ptr, dw2_ptr, db1_ptr, db2_ptr, C, CR, WS, PW_OFF,
                       BLK: tl.constexpr):
    """Backward, launch 3 (only when the weight gradients were split into WS > 1 sample
    slices): out = sum_s pw[s, :] in slice order (deterministic), pw (WS, L) laid out
    [dW2 (C*CR) | dW1 (CR*C) | db1 (CR) | db2 (C)]; grid (cdiv(L, BLK),)."""
    pw_ptr += PW_OFF  # pw's region of the backward's scratch tensor
    ACC = pw_ptr.dtype.element_ty
    L = 2 * C * CR + CR + C
    offs = tl.program_id(0) * BLK + tl.arange(0, BLK)
    m = offs < L
    acc = tl.zeros([BLK], ACC)
    row = pw_ptr
    for s in range(0, WS):  # slice order: deterministic
        acc += tl.load(row + offs, mask=m, other=0.0)
        row += L
    W = C * CR
    in2 = m & (offs < W)
    in1 = m & (offs >= W) & (offs < 2 * W)
    inb1 = m & (offs >= 2 * W) & (offs < 2 * W + CR)
    inb2 = m & (offs >= 2 * W + CR)
    tl.store(dw2_ptr + tl.where(in2, offs, 0), acc.to(dw2_ptr.dtype.element_ty), mask=in2)
    tl.store(dw1_ptr + tl.where(in1, offs - W, 0), acc.to(dw1_ptr.dtype.element_ty), mask=in1)
    tl.store(db1_ptr + tl.where(inb1, offs - 2 * W, 0), acc.to(db1_ptr.dtype.element_ty),
             mask=inb1)
    tl.store(db2_ptr + tl.where(inb2, offs - 2 * W - CR, 0), acc.to(db2_ptr.dtype.element_ty),
             mask=inb2)

"""Launch configurations of the Triton SE kernels: a small heuristic, no autotuning.

The choices, in order (each a function of N, C, H*W, Cr, the layout and the element size):

1. G, samples per program. A program reads each weight tile once for its G samples, so the
   weights cost |W| / G per sample. G is the smallest power of two with |W| / G <= the
   sample's slab C*H*W*elem (weights never cost more than the activations they rescale: the
   conv5_x trap of DESIGN.md section 3), capped at 16 and at N.
2. Fused or split. With cdiv(N, G) sample groups, one program per group (the fused path, one
   forward launch) is used when the groups fill the device (>= 4 programs per SM on a GPU:
   at large N the resident slabs exceed L2 anyway, so fusing saves no bytes and more
   programs keep more loads in flight). Below that, each group's channels are split into P
   chunks (the split path, two forward launches), P chosen to give ~4 programs per SM. The
   split path's launch 2 sums the P partial FC1 results per sample (P*Cr values, read by
   each of the P programs), so P is capped where those re-reads reach ~1/4 of the bytes a
   sample costs, its slab plus its share of the weights: P^2 * Cr * 4 <= (slab + |W|/G) / 4.
   NCHW chunks go down to 1 channel where one channel's row is >= 4 KB (NHWC: 16 channels,
   32-byte rows). Where the (group, chunk) programs are still at most half of those wanted
   (N = 1 with few, huge channels), the pixels of each chunk are split S ways too: a
   program per (group, chunk, pixel split), P*S shares of FC1 per sample under the same
   cap as P, each split >= MIN_SPLIT_BYTES of activations, and the S-fold weight reads
   within 1/4 of the activation bytes. Mean squeeze only in the forward (FC1 is linear in
   the partial means, not in a max over splits; the max forward keeps S = 1); the backward
   splits for both squeezes (its pixel reduction is a sum). N = 1, C = 8, 4096 x 4096:
   528 programs (8 chunks x 66 splits; 1 before issue 13).
3. Tiles. The activation tile [BC channels, BHW pixels] has ~TILE = 4096 elements (16 per
   thread at 8 warps), its long side along the contiguous dimension (pixels in NCHW, up to
   1024, the power of two >= 128 that pads HW least; channels in NHWC, up to 128). The FC
   broadcast products [G, BJ, BK], [G, BJ2, BC2] (BJ2 >= 16, sized apart from the
   activation tile), the partial-sum reductions [G, P_PAD, BJH] and the weight-gradient
   products [BN, BCW, BJW] are capped at FC_TILE = 4096 elements, so that they stay in
   registers. Weight-gradient programs own a block of BCW >= 16 channels x BJW hidden units
   of one of WS sample slices; WS gives ~4 programs per SM, slices of >= BN samples, and
   partial sums moving at most 1/4 of the activation bytes. num_warps: 8 for full
   activation tiles, 4 for small ones.
4. 64-bit safety: the activation tile is shrunk, for tensors of ~2^31 elements per sample,
   so that the kernels' int32 in-tile offsets cannot wrap (_int32_tiles); tile bases are
   int64 in the kernels. The compiled loops count pixels and channels in int32 (i64 only
   once H*W or C reaches 2^31), and the pipeliner adds up to 2 tiles to the counter, so the
   tile is also shrunk where H*W or C comes within two tiles of 2^31.
5. Shared memory (GPU plans, forced ones included): the pipelined streaming loops keep
   num_stages - 1 tiles of each streamed tensor in shared memory, at least 2 (x, dy, y in
   the backward's reduce: 3 tensors), more where they fit 48 KB (kernels._stream_stages),
   so a tile is capped at 16 KB (4096 bf16/fp32 elements, 1024 fp64): at most
   max(48 KB, 3 x 2 x 16 KB) = 96 KB, inside an A100's 163 KB as well as an H100's 227 KB.
6. Flat tiles (``Plan.flat``): in NCHW where one pixel tile covers H*W (HW <= BHW: conv4_x,
   conv5_x, any small map), the pixel loop would have a single trip, so nothing would be
   pipelined, and rows of HW = 196 or 49 pixels start at addresses that only allow 2-byte
   loads. There the kernels loop over (sample, channel block) pairs with
   tl.range(num_stages) instead, and load each tile of BC whole channels as one contiguous
   span of BC*HW elements (rearranged into [BC, BHW] rows in registers): flat > 0 is the
   alignment, in elements, that every such span's start has (the largest power of two
   <= 16 bytes dividing C*HW, chunk*HW and BC*HW), which the kernels assert to the compiler
   (tl.multiple_of) so that the loads become 16-byte vectors. flat = 0: the pixel loop.
   Flat tiles and pixel splits (rule 2) never meet: a split's HWC pixels are whole BHW
   tiles, so HW <= BHW leaves S = 1, and flat stays 0 wherever S > 1 (asserted).

On CUDA the device's SM count is read from its properties; under TRITON_INTERPRET=1 (CPU
tensors) the plan is made for a virtual one-SM device with large tiles and G = 16: the
interpreter runs programs one after another and its cost is per Triton operation (and per
nested jit call), so fewer, larger programs are faster. The tests force the other
configurations (config.forced) to cover the GPU's paths. Nothing here depends on timing, so
the interpreter runs exactly the configurations the heuristic gives.

Plans are cached by their shape key (make_plan's arguments; not while a test forces fields).

The numbers (TILE, FC_TILE, the weight rule, the 1/4 cap, 4 per SM) are first guesses, to be
measured on an H100 (docs/perf-notes.md, "Triton backend").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass

import torch


def _pow2(v: int) -> int:
    """The smallest power of two >= v (1 for v <= 1)."""
    return 1 if v <= 1 else 1 << (int(v) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Device:
    sms: int           # programs per wave
    tile: int          # elements of an activation tile
    fc_tile: int       # elements of an FC broadcast tile [G, BJ, BK]
    min_group: int     # smallest G (samples per program)
    interpret: bool


def gpu_device(sms: int = 132) -> Device:
    """The plan inputs of a CUDA device with `sms` SMs (132: an H100/H200), as device_of gives
    them: for plan tests and tools on a machine without that GPU."""
    return Device(sms=sms, tile=4096, fc_tile=4096, min_group=1, interpret=False)


@functools.lru_cache(maxsize=None)
def _cuda_device(index: int) -> Device:
    return gpu_device(torch.cuda.get_device_properties(index).multi_processor_count)


# The plan inputs under TRITON_INTERPRET=1 (CPU tensors): one object, not one per call
INTERPRET_DEVICE = Device(sms=1, tile=1 << 15, fc_tile=1 << 15, min_group=16, interpret=True)


def device_of(x: torch.Tensor) -> Device:
    if x.is_cuda:   # no x.device: each access builds a torch.device object (host time)
        return _cuda_device(x.get_device())
    return INTERPRET_DEVICE


@dataclass(frozen=True)
class Plan:
    """How one forward or backward call is launched.

    split: False -> programs own whole samples (forward: 1 launch; backward: dx in launch 1);
    True -> programs own (group, channel chunk) pairs (forward: 2 launches; backward: dx in
    launch 2). groups = cdiv(N, G) and P = cdiv(C, chunk) give the grid.
    """
    split: bool
    G: int             # samples per program
    chunk: int         # channels per program (C on the fused path)
    P: int             # channel chunks per sample group (1 on the fused path)
    BC: int            # activation tile: channels
    BHW: int           # activation tile: pixels
    BJ: int            # FC1 / FC2-backward tile: hidden units  ([G, BJ, BK])
    BK: int            # FC1 / FC2-backward tile: channels
    BJH: int           # hidden units per step of the partial-sum reduction ([G, P_PAD, BJH])
    BJ2: int           # FC2 / FC1-backward tile: hidden units  ([G, BJ2, BC2]), >= 16 or Cr
    BC2: int           # FC2 / FC1-backward tile: channels
    BCW: int           # weight-gradient programs: channels per program
    BN: int            # weight-gradient tile: samples ([BN, BCW, BJW])
    BJW: int           # weight-gradient tile: hidden units
    WS: int            # weight-gradient sample slices (partial sums, then a fixed-order sum)
    num_warps: int
    S: int = 1         # pixel splits per (group, chunk) (split path only; issue 13, item 4)
    HWC: int = 0       # pixels per split, a multiple of BHW (0: all of HW, S = 1)
    SB: int = 1        # split rows summed per tile load ([G, SB, BC2], [BN, SB, BCW])
    flat: int = 0      # NCHW with HW <= BHW, S = 1: alignment (elements) of the flat tiles;
                       # 0 = off (always 0 with pixel splits: a flat tile covers all of HW)

    @property
    def G_PAD(self) -> int:
        return _pow2(self.G)

    @property
    def P_PAD(self) -> int:
        """Padded count of FC shares per sample: one per (channel chunk, pixel split)."""
        return _pow2(self.P * self.S)

    @property
    def Q(self) -> int:
        """Programs per sample group on the split path, (chunk, pixel split) pairs; the FC
        shares per sample (part, dpart, hs, dhs rows)."""
        return self.P * self.S

    def groups(self, n: int) -> int:
        return _cdiv(n, self.G)

    def wslices(self, n: int) -> tuple[int, int]:
        """(slices, samples per slice) of the weight gradients: WS capped by N."""
        wsn = _cdiv(max(n, 1), max(1, min(self.WS, n)))
        return _cdiv(max(n, 1), wsn), wsn


class _ForcedState:
    fields: dict | None = None


_FORCED_STATE = _ForcedState()   # read by ops.py's launch-configuration cache


@contextlib.contextmanager
def forced(**fields):
    """Test hook: override fields of every Plan made inside the block, e.g.
    ``forced(split=True, chunk=16, BHW=32)`` (P follows from chunk; any block sizes work,
    the kernels mask every edge; ``flat=False`` keeps the pixel loop where rule 6 would
    flatten). Plans made inside the block are not cached. Not
    thread-safe."""
    prev, _FORCED_STATE.fields = _FORCED_STATE.fields, fields
    _clear_caches()
    try:
        yield
    finally:
        _FORCED_STATE.fields = prev
        # A call that checked the (unforced) state just before another thread entered the
        # block may have cached a forced plan under its shape key: drop every cached plan.
        _clear_caches()


_CACHES: list = []   # cache_clear functions of the plan and launch-configuration caches


def _clear_caches() -> None:
    for clear in _CACHES:
        clear()


INT32_MAX = 2**31 - 1


def _pow2_floor(v: int) -> int:
    """The largest power of two <= v (1 for v <= 1)."""
    return 1 if v <= 1 else 1 << (int(v).bit_length() - 1)


def make_plan(n: int, c: int, hw: int, cr: int, elem: int, channels_last: bool,
              dev: Device, hw_split: bool = True) -> Plan:
    """The plan for one call; cached by its shape key (the arguments), except while a test
    forces fields (``forced``), so that the host cost per call is a dict lookup.
    hw_split=False keeps S = 1 (the max-squeeze forward: FC1 is not linear in a max over
    pixel splits)."""
    if _FORCED_STATE.fields or not all(type(v) is int for v in (n, c, hw, cr, elem)):
        return _make_plan(n, c, hw, cr, elem, channels_last, dev, hw_split)  # forced/SymInts
    return _cached_plan(n, c, hw, cr, elem, channels_last, dev, hw_split)


@functools.lru_cache(maxsize=4096)
def _cached_plan(n, c, hw, cr, elem, channels_last, dev, hw_split):
    return _make_plan(n, c, hw, cr, elem, channels_last, dev, hw_split)


_CACHES.append(_cached_plan.cache_clear)


# Smallest activation bytes one pixel split streams (issue 13, item 4): below that a
# program's fixed costs (its FC share, the sum over the shares) outweigh its loads.
MIN_SPLIT_BYTES = 16384


def _make_plan(n: int, c: int, hw: int, cr: int, elem: int, channels_last: bool,
               dev: Device, hw_split: bool = True) -> Plan:
    slab = max(1, c * hw * elem)
    wbytes = 2 * c * cr * elem
    g = dev.min_group
    while g < 16 and wbytes > g * slab:
        g *= 2
    g = max(1, min(g, _pow2(n)))
    groups = _cdiv(max(n, 1), g)

    # NHWC rows of >= 32 bytes; NCHW rows are HW pixels: chunks of 1-2 channels when a
    # channel's row is >= 4 KB, of up to 8 for short rows
    min_chunk = 16 if channels_last else min(8, _pow2(_cdiv(4096, max(1, hw * elem))))
    wave = dev.sms if dev.interpret else 4 * dev.sms   # programs wanted (interpreter: 1 SM)
    c_pow2 = _pow2(c)
    split = groups < wave
    chunk = c
    s_split = 1
    if split:
        p_target = _cdiv(wave, groups)
        # P^2 * Cr * 4 <= (slab + |W| / G) / 4
        p_cap = max(1, int(((slab + wbytes / g) / (16 * cr)) ** 0.5))
        p_want = max(1, min(p_target, p_cap))
        chunk = min(c_pow2, max(min_chunk, _pow2(_cdiv(c, p_want))))
        if hw_split:
            # Pixel splits where the chunks leave the device short of programs (at most
            # half of those wanted; at N = 256, 512 programs for 528 stay unsplit): the
            # Q = P*S shares obey the same cap as P (each program re-reads all Q shares),
            # each split streams >= MIN_SPLIT_BYTES, and the S-fold weight reads stay within
            # 1/4 of the group's activation bytes: (S - 1) |W| <= G slab / 4.
            p0 = _cdiv(c, chunk)
            s_split = max(1, min(wave // (groups * p0), p_cap // p0,
                                 hw // max(1, _cdiv(MIN_SPLIT_BYTES, min(chunk, c) * elem)),
                                 1 + (g * slab) // (4 * max(1, wbytes))))
        if chunk >= c and s_split == 1:
            split, chunk = False, c
        chunk = min(chunk, c)

    _FORCED = _FORCED_STATE.fields
    if _FORCED:
        s_split = _FORCED.get("S", s_split)
        split = _FORCED.get("split", split or s_split > 1)
        g = _FORCED.get("G", g)
        chunk = _FORCED.get("chunk", chunk if split else c)
        if not split:
            chunk = c
    if not split or not hw_split:
        s_split = 1
    p = _cdiv(c, chunk) if split else 1

    # activation tile
    chunk_pow2 = _pow2(chunk)
    hw_pow2 = _pow2(hw)
    if channels_last:
        bc = min(chunk_pow2, 128 if not dev.interpret else 1024)
        bhw = max(1, min(hw_pow2, dev.tile // bc))
    else:
        bhw = min(hw_pow2, 1024 if not dev.interpret else dev.tile)
        if not dev.interpret:
            # the pixel tile that pads HW least (ties: the longer), rows >= 128 pixels and
            # long enough that the chunk's channels still fill the tile: HW = 3136 -> 128
            # (2 % idle lanes, was 23 % at 1024), 784 -> 128 (7 tiles, so the pixel loop
            # has tiles to pipeline; was one tile of 1024), where the chunk has >= 32
            # channels
            shortest = max(128, dev.tile // chunk_pow2)
            cands = [b for b in (1024, 512, 256, 128) if shortest <= b <= bhw] or [bhw]
            bhw = min(cands, key=lambda b: (_cdiv(hw, b) * b, -b))
        bc = max(1, min(chunk_pow2, dev.tile // bhw))
    g_pad = _pow2(g)
    bc = max(1, min(bc, dev.fc_tile // g_pad))  # the [G, BC] gate tile of the FC2 phase
    cr_pow2 = _pow2(cr)
    bj = min(cr_pow2, 32 if not dev.interpret else 256)
    bk = max(1, min(chunk_pow2, dev.fc_tile // (g_pad * bj)))
    # The partial sums (P shares of FC1 / the FC2 backward per sample) are reduced once per
    # program in [G, P_PAD, BJH] tiles; the FC2 (and FC1-backward) products [G, BJ2, BC2]
    # are sized apart from the activation tile: a square-ish split of the FC budget with
    # BJ2 >= 16, so that each W2 row segment is >= 32 bytes (a whole sector in bf16).
    p_pad = _pow2(p * s_split)   # the FC shares per sample: (chunk, pixel split) pairs
    bjh = max(1, min(cr_pow2, dev.fc_tile // (g_pad * p_pad)))
    side = _pow2_floor(max(1, math.isqrt(dev.fc_tile // g_pad)))
    bj2 = min(cr_pow2, max(16, side))
    bc2 = max(1, min(chunk_pow2, dev.fc_tile // (g_pad * bj2)))
    # weight gradients: ~2 programs per SM over C, each at least 16 channels
    bcw = min(c_pow2, max(16, _pow2(_cdiv(c, 2 * dev.sms))))
    bjw = min(cr_pow2, 32 if not dev.interpret else 256)
    bn = max(1, min(_pow2(max(n, 1)), dev.fc_tile // (bcw * bjw),
                    dev.fc_tile // (p_pad * bjw)))
    # Weight gradients over WS sample slices (issue 13, item 5), a program per (channel
    # block, hidden block, slice): ~4 programs per SM, each
    # slice >= BN samples, and the partial sums' traffic (written and read once, fp32,
    # 8 * WS * |W| elements' bytes) at most 1/4 of the activation bytes.
    nw = _cdiv(c, bcw) * _cdiv(cr, bjw)       # (channel block, hidden block) programs
    wlen = 2 * c * cr + cr + c
    ws = min(_cdiv(4 * dev.sms, nw), _cdiv(max(n, 1), bn),
             max(1, (max(n, 1) * slab) // (32 * wlen)))
    ws = max(1, ws)
    warps = 8 if bc * bhw >= 4096 else 4

    plan = Plan(split=split, G=g, chunk=chunk, P=p, BC=bc, BHW=bhw, BJ=bj, BK=bk, BJH=bjh,
                BJ2=bj2, BC2=bc2, BCW=bcw, BN=bn, BJW=bjw, WS=ws, num_warps=warps,
                S=s_split)
    if _FORCED:
        tiles = {k: v for k, v in _FORCED.items() if k in ("BC", "BHW", "BJ", "BK", "BJH", "BJ2",
                                                           "BC2", "BCW", "BN", "BJW",
                                                           "WS", "num_warps")}
        plan = dataclasses.replace(plan, **tiles)
        if "num_warps" not in tiles:  # the same rule for forced tiles as for the heuristic's
            plan = dataclasses.replace(plan, num_warps=8 if plan.BC * plan.BHW >= 4096 else 4)
    if not dev.interpret:
        plan = _smem_tiles(plan, elem, 0 if channels_last else hw)
    plan = _pixel_splits(_int32_tiles(plan, c, hw, channels_last), hw, dev.fc_tile, elem)
    if not (_FORCED and not _FORCED.get("flat", True)):
        plan = _flat_tiles(plan, c, hw, elem, channels_last)
    # a flat tile covers all of HW, a pixel split only part of it: never both (the kernels'
    # flat branch ignores the split's pixel range)
    assert not (plan.flat and plan.S > 1), plan
    return plan


def _pixel_splits(plan: Plan, hw: int, fc_tile: int, elem: int) -> Plan:
    """The final pixel split, after the tile is settled: HWC pixels per split, a whole
    number of BHW tiles (so the pipelined tiles never straddle two programs), and S =
    cdiv(HW, HWC) <= the S asked for (P_PAD and the tile caps made from it stay valid).
    SB: the split rows (partial means, dpre, tie counts) summed per tile load, the
    [G_PAD, SB, BC2] and [BN, SB, BCW] tiles within fc_tile. Where one pixel tile covers
    HW (HW <= BHW) this leaves S = 1, which is where rule 6's flat tiles apply."""
    if plan.S <= 1:
        return plan if (plan.S, plan.SB) == (1, 1) else dataclasses.replace(plan, S=1, SB=1)
    hwc = _cdiv(_cdiv(hw, plan.S), plan.BHW) * plan.BHW
    s = _cdiv(hw, hwc)
    # S * HWC must stay an int32 (review 13b #1: the kernels' sp * HWC and pixel bounds are
    # int32; at H*W = 46340^2, S = 528 gave S * HWC = 2^31 + 65536): fewer, longer splits
    # until it fits (S = 1 if none does)
    while s > 1 and s * hwc > INT32_MAX:
        hwc = _cdiv(_cdiv(hw, s - 1), plan.BHW) * plan.BHW
        s = _cdiv(hw, hwc)
    if s <= 1:
        return dataclasses.replace(plan, S=1, SB=1)
    # in fp32 elements' bytes: the fp64 kernels sum the split rows in fp64 (review 13b #3:
    # SB = 512 x BC2 = 8 fp64 spilled in the excite kernel on sm_80)
    fc = fc_tile * 4 // max(4, elem)
    sb = max(1, min(_pow2(s), fc // (plan.G_PAD * plan.BC2), fc // (plan.BN * plan.BCW)))
    sb = _FORCED_STATE.fields.get("SB", sb) if _FORCED_STATE.fields else sb
    return dataclasses.replace(plan, S=s, HWC=hwc, SB=sb)


def _flat_tiles(plan: Plan, c: int, hw: int, elem: int, channels_last: bool) -> Plan:
    """Rule 6: plan.flat = the alignment of the flat NCHW tiles where one tile covers HW
    (never with pixel splits, S > 1: a split covers only part of HW)."""
    if channels_last or hw > plan.BHW or plan.S > 1:
        return plan
    align = max(1, 16 // elem)
    while align > 1 and any(v % align for v in (c * hw, plan.chunk * hw, plan.BC * hw)):
        align //= 2
    return dataclasses.replace(plan, flat=align)


TILE_BYTES = 16384   # the most bytes of one streamed tensor's tile (rule 5 above)


def _smem_tiles(plan: Plan, elem: int, nchw_hw: int = 0) -> Plan:
    """Halves the activation tile (pixels first, down to 1, then channels) until it holds at
    most TILE_BYTES: fp64 tiles of 4096 elements needed 192 KB of pipeline buffers in the
    backward's reduce (above an A100's 163 KB). Where one NCHW pixel tile covers all
    nchw_hw pixels, channels go first, so that the tile stays flat (rule 6)."""
    bc, bhw = plan.BC, plan.BHW
    # fp64 tiles at half the bytes (1024 elements): the fp64 backward's reduce at 2048
    # elements (BC = 8 x BHW = 256) needed 255 registers and spilled (review 13b #3)
    limit = TILE_BYTES // 2 if elem >= 8 else TILE_BYTES
    while bc * bhw * elem > limit:
        if bhw > 1 and not (bc > 1 and bhw >= nchw_hw > 0):
            bhw //= 2
        else:
            bc //= 2
    if (bc, bhw) == (plan.BC, plan.BHW):
        return plan
    return dataclasses.replace(plan, BC=bc, BHW=bhw, num_warps=8 if bc * bhw >= 4096 else 4)


def _int32_tiles(plan: Plan, c: int, hw: int, channels_last: bool) -> Plan:
    """Shrinks the activation tile so that the int32 offsets inside it (kernels.py,
    "addressing") and the per-tile pointer step BHW * SH stay below 2^31: NHWC offsets reach
    (BC - 1) + (BHW - 1) * C and the step is BHW * C; NCHW offsets reach (BC - 1) * HW +
    BHW - 1 with BHW < 2 HW, below (BC + 1) * HW. Only tensors of ~2^31 elements per
    sample reach these caps; the tile bases are int64 either way."""
    if channels_last:
        bhw = min(plan.BHW, _pow2_floor(INT32_MAX // max(c, 1) - 1))
        bc = plan.BC
    else:
        bhw = plan.BHW
        bc = min(plan.BC, _pow2_floor(INT32_MAX // max(hw, 1) - 1))
    # the int32 loop counters: hw0 + 2 BHW (and c0 + 2 BC) must not pass 2^31 - 1
    if hw < 2**31:
        bhw = min(bhw, max(1, _pow2_floor((INT32_MAX - hw) // 2)))
    if c < 2**31:
        bc = min(bc, max(1, _pow2_floor((INT32_MAX - c) // 2)))
    if (bc, bhw) != (plan.BC, plan.BHW):
        plan = dataclasses.replace(plan, BC=max(1, bc), BHW=max(1, bhw))
    return plan

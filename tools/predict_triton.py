#!/usr/bin/env python3
"""Predicted H200 times of the Triton backend per SE-ResNet-50 stage (bf16; N = 1 and 256;
NCHW and NHWC; forward and backward), written before any GPU measures them (issue 13).

    python tools/predict_triton.py [--json benchmarks/predictions/triton.json] [--markdown]

The model follows ../shared/DESIGN.md (4.3 TB/s copy bandwidth, ~0.7 us HBM latency,
132 SMs) and uses the plan config.make_plan really makes for each row (sample groups G,
channel chunks P, the activation tile, the streaming depth kernels._stream_stages):

* bytes: what the kernels move to and from HBM (avg squeeze, no fused residual, biases):
  forward 3|x| + |W| (x read by the pool phase and again by the rescale, y written) when
  the resident slabs exceed L2 (N = 256), 2|x| + |W| when x stays in L2 (N = 1); backward
  4|x| + 2|W| (x and dy read by the reduce phase, dy re-read, dx written; W read, dW
  written), 3|x| + 2|W| when dy stays in L2. This backend's own bytes bound is the same
  count (issue 13's definition), so floor_us = bytes / 4.3 TB/s.
* bandwidth: Little's law. A program keeps min(depth - 1, trips - 1) tiles of each
  streamed tensor in flight (1 when its loop has a single trip): trips = the pixel tiles of
  a channel block, or, with flat NCHW tiles (config rule 6: one tile covers HW), the
  program's G x cdiv(chunk, BC) (sample, channel block) pairs, each tile then BC x HW
  elements (the flat span; padded lanes load nothing); at most 2 programs per SM
  are resident (8-warp programs of 60-220 registers, tools/compile_triton_kernels.py), so
  bytes in flight per SM = tile bytes x streams x tiles ahead x programs per SM, and the
  achieved bandwidth is min(4.3 TB/s, busy SMs x in flight per SM / 1.0 us) -- 1.0 us being
  the HBM latency under load (0.7 us idle).
* serial FC costs per program, ~0.5 us of dependent L2 round trip per step: the partial
  sums reduced once per program (cdiv(Cr, BJH) steps of [G, P_PAD, BJH] tiles; item 3),
  then FC2 (backward: FC1) over cdiv(chunk, BC2) x cdiv(Cr, BJ2) steps, and FC1 (backward:
  the FC2 backward, dpart) over cdiv(Cr, BJ) hidden blocks of cdiv(chunk, BK) channel steps
  (fc_steps_us; this FC1 term was left out of the model before the FC step pipelining).
  A step loop pipelined `depth` = num_stages deep (kernels._fc_stages: FC2 3 to 8 by the
  step's weight tile; FC1 4 at G = 8, else 1) keeps depth - 1 steps in flight, so it
  costs a round trip per depth - 1 steps (2 steps, STAGES - 1, for FC2 and 1 for FC1
  before), an unpipelined one a round trip per step; the FC1 loop restarts at every hidden
  block. The weight gradients walk their slice of cdiv(N, WS) samples in blocks of BN, one
  hidden block per program (item 5), plus, when WS > 1, a third launch summing the WS
  partial rows.
* 2 us per launch (launch gap and ramp).

These are first-order numbers to be checked on a GPU (tools/gpu_check.sh); the JSON rows
follow the shared schema (backend, path, stage, N, layout, direction, dtype, bytes,
floor_us, predicted_us, in_flight_kb_per_sm, note).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BW = 4.3e12            # bytes/s, H200 copy bandwidth
LAT = 1.0e-6           # s, HBM latency under load
SMS = 132
LAUNCH_US = 2.0
L2_ROUND_US = 0.5      # one dependent L2 round trip inside an FC loop step
LEGACY_FC = False      # --legacy-fc: the FC step depths before the FC step pipelining
RESIDENT = 2           # programs per SM at most (the plans' 8-warp programs)
# registers and shared memory of the compiled streaming kernels (sm_90, bf16, heaviest
# options: upper bounds), from tools/compile_triton_kernels.py --set smoke (review 13a #6):
# the programs resident per SM are min(RESIDENT, 64 K registers / (regs x threads),
# 228 KB / shared memory) of the launch's tightest kernel; RESIDENT where not compiled
COMPILE_REPORT = ROOT / "benchmarks" / "predictions" / "triton_compile_sm90.json"
REGS_PER_SM = 65536
SMEM_PER_SM = 233472
KERNELS = {"fwd": ("se_fwd_fused_kernel", "se_fwd_pool_kernel", "se_fwd_excite_kernel"),
           "bwd": ("se_bwd_reduce_kernel", "se_bwd_finish_kernel")}
_REPORT = None


def resident(n, c, hw, channels_last, direction):
    """(programs per SM, why) for one row, from the compile report."""
    global _REPORT
    if _REPORT is None:
        _REPORT = json.loads(COMPILE_REPORT.read_text())["rows"] if COMPILE_REPORT.exists() else []
    layout = "nhwc" if channels_last else "nchw"
    rows = [r for r in _REPORT if (r["N"], r["C"], r["HW"], r["layout"]) == (n, c, hw, layout)
            and r["kernel"] in KERNELS[direction]]
    if not rows:
        return RESIDENT, "not compiled"
    best = (RESIDENT, "")
    for r in rows:
        regs = _cdiv(r["regs"], 8) * 8
        k = min(RESIDENT, REGS_PER_SM // (regs * 32 * r["num_warps"]),
                SMEM_PER_SM // max(1, r["shared"] + 1024))
        if k < best[0] or not best[1]:
            best = (max(1, k), f"{r['kernel'][3:-7]} {r['regs']} regs x {32 * r['num_warps']}"
                               f" threads, {r['shared'] // 1024} KB smem")
    return best
STAGES = [("conv2_x", 256, 56 * 56, 16), ("conv3_x", 512, 28 * 28, 32),
          ("conv4_x", 1024, 14 * 14, 64), ("conv5_x", 2048, 7 * 7, 128)]


def _cdiv(a, b):
    return -(-a // b)


LEGACY_STREAM = False  # --legacy-stream: the streaming loops 3 deep, before 13e's depths


def stream_ahead(p, streams, trips):
    """Tiles ahead of one streaming loop (num_stages - 1, at most trips - 1, at least 1):
    kernels._stream_stages from the bf16 tile (BC x BHW elements, the pipeline buffer) and
    the loop's streamed tensors (13e; _STAGES = 3 for all of them before, --legacy-stream;
    the fused kernel keeps 3)."""
    from se_kernels.triton.kernels import _STAGES, _stream_stages

    legacy = LEGACY_STREAM or not p.split
    depth = int(_STAGES) if legacy else _stream_stages(p.BC * p.BHW, 16, streams)
    return max(1, min(depth - 1, trips - 1)), depth


def fc_steps_us(p, cr, chunk, legacy=False, bias=False):
    """Serial FC steps per program, in us (one L2 round trip, L2_ROUND_US, per step that is
    not in flight): the partial-sum reduction (cdiv(Cr, BJH) steps, not pipelined), the FC2
    (backward: FC1) step loop over cdiv(chunk, BC2) x cdiv(Cr, BJ2) steps pipelined
    depth2 deep, i.e. depth2 - 1 steps in flight (it was 2, STAGES - 1, before the FC step
    pipelining), and the FC1 (backward: dpart) loop, cdiv(Cr, BJ) hidden blocks of
    cdiv(chunk, BK) channel steps pipelined depth1 deep (1: not pipelined, one round trip per
    step; else one to fill each hidden block's loop, then one per depth1 - 1 steps).
    legacy=True: the code before the FC step pipelining (depth2 = STAGES, depth1 = 1), for
    the before/after table. bias=True (the forward with b2, as torchvision and timm build
    SE): the b2 load at a channel block's last FC2 step is a plain 2-byte load that the
    pipeliner leaves in the loop body (sm_90 TTGIR, review of 13c), so each channel block
    waits one more round trip (counted whole; not in the legacy rows, which never had it).
    Returns (us, depth2, depth1)."""
    from se_kernels.triton.kernels import _STAGES, _fc_stages

    depth2 = int(_STAGES) if legacy else _fc_stages(p.BJ2 * p.BC2, int(_STAGES))
    # FC1 and the backward's dpart loop: 4 deep at G >= 8, else 1 (as kernels.py calls it)
    depth1 = 1 if legacy else _fc_stages(p.BJ * p.BK, 1, p.G_PAD >= 8, 4)
    partial = _cdiv(cr, p.BJH)
    fc2 = _cdiv(chunk, p.BC2) * _cdiv(cr, p.BJ2) / max(1, depth2 - 1)
    if bias and not legacy:
        fc2 += _cdiv(chunk, p.BC2)
    nk = _cdiv(chunk, p.BK)   # per hidden block: a round trip to fill, then one per depth - 1
    fc1 = _cdiv(cr, p.BJ) * (nk if depth1 <= 1 else 1 + (nk - 1) / (depth1 - 1))
    return (partial + fc2 + fc1) * L2_ROUND_US, depth2, depth1


def _row(p, stage, n, channels_last, direction, nbytes, t, inflight, note):
    """One prediction row (the schema of benchmarks/predictions/*.json)."""
    return dict(backend="triton", path="split" if p.split else "fused", stage=stage, N=n,
                layout="nhwc" if channels_last else "nchw", direction=direction,
                dtype="bf16", bytes=int(nbytes), floor_us=round(nbytes / BW * 1e6, 2),
                predicted_us=round(t * 1e6, 1),
                in_flight_kb_per_sm=round(max(inflight) / 1024, 1),
                note="; ".join(note))


def predict(stage, c, hw, cr, n, channels_last, direction):
    from se_kernels.triton import config

    dev = config.gpu_device(SMS)
    p = config.make_plan(n, c, hw, cr, 2, channels_last, dev)
    x = n * c * hw * 2
    w = 2 * c * cr * 2
    in_l2 = n == 1
    if direction == "fwd":
        nbytes = (2 if in_l2 else 3) * x + w
        streams = [1, 1]                      # pool: x; rescale: x (y is a store)
        launches = 1 if not p.split else 2
    else:
        nbytes = (3 if in_l2 else 4) * x + 2 * w
        streams = [2, 1]                      # reduce: x, dy; dx phase: dy
        launches = 2
    programs = p.groups(n) * p.Q
    if p.flat:   # the pipelined loop walks (sample, channel block) pairs of whole channels
        trips = min(p.G, n) * _cdiv(p.chunk, p.BC)
        tile_bytes = min(p.BC, p.chunk) * hw * 2
    else:        # the pipelined loop walks the pixel tiles of one channel block
        trips = _cdiv(hw, p.BHW)
        tile_bytes = p.BC * p.BHW * 2
    res, why = resident(n, c, hw, channels_last, direction)
    per_sm = min(res, programs / SMS) if programs < SMS * res else res
    busy = min(SMS, programs)
    # the two streaming phases, each moving about half the activation bytes
    t = 0.0
    inflight = []
    depths = []
    for k, s in enumerate(streams):
        ahead, depth = stream_ahead(p, s, trips)
        depths.append(depth)
        fl = tile_bytes * s * ahead * max(1.0, per_sm)
        inflight.append(fl)
        bw = min(BW, busy * fl / LAT)
        share = (nbytes - (w if direction == "fwd" else 2 * w)) * (s / sum(streams))
        t += share / bw
    t += (w if direction == "fwd" else 2 * w) / BW
    # serial FC costs per program (the longest program)
    fc_us, depth2, depth1 = fc_steps_us(p, cr, p.chunk, LEGACY_FC, direction == "fwd")
    fc2 = fc_us * 1e-6
    t += fc2
    note = [f"plan: {'split' if p.split else 'fused'} G={p.G} P={p.P} BC={p.BC} BHW={p.BHW} "
            f"{'flat ' if p.flat else ''}"
            f"BJH={p.BJH} BJ2={p.BJ2} BC2={p.BC2}, {programs} programs, {res}/SM ({why})",
            f"streaming loops {'/'.join(map(str, depths))} stages over {trips} trips"]
    if direction == "bwd":
        ws, wsn = p.wslices(n)
        wgrad = _cdiv(wsn, p.BN) * L2_ROUND_US * 1e-6
        wprog = _cdiv(c, p.BCW) * _cdiv(cr, p.BJW) * ws
        if ws > 1:   # the partial rows: written, read by the summing launch
            wlen = 2 * c * cr + cr + c
            wgrad += 2 * ws * wlen * 4 / BW + LAUNCH_US * 1e-6
        t += wgrad
        note.append(f"weight gradients ~{wgrad * 1e6:.0f} us: {ws} sample slice(s) of {wsn}, "
                    f"{wprog} programs")
    t += launches * LAUNCH_US * 1e-6
    note.append(f"partial sums + FC steps ~{fc2 * 1e6:.0f} us per program (FC2 loop "
                f"{depth2} stages, FC1 loop {depth1})")
    return _row(p, stage, n, channels_last, direction, nbytes, t, inflight, note)


# Host time per call at N = 1 (issue 13, item 7), us: the ops' Python bodies as
# tools/host_time_triton.py measures them on this CPU with the launches patched out
# (forward ~12, backward ~14 after 13d's cuts; 19 and 23 before), torch's custom-op
# dispatch on top (~11), and Triton's launcher per kernel launch: its Python binder and
# cache key as `host_time_triton.py --launcher` measures them for an sm_90 target (pool
# 5.4, excite 9.0, reduce 9.7, finish 12.5 us: ~0.3 us per tensor argument, ~0.1 per
# int or constexpr) plus ~3 us for the C launcher and the driver call (estimated: not
# measurable without a GPU).
HOST_BODY_US = {"fwd": 12.0, "bwd": 14.0}
HOST_DISPATCH_US = 11.0
HOST_LAUNCH_US = {"fwd": 10.0, "bwd": 14.0}


def predict_small_n(stage, c, hw, cr, n, channels_last, direction):
    """The N = 1 rows (issue 13, item 4's pixel splits; item 7's host time): the same
    bytes and Little's-law model as predict(), with the plan's pixel splits -- P*S
    programs, each streaming cdiv(HWC, BHW) tiles of its split, or, unsplit with flat NCHW
    tiles, its (sample, channel block) pairs -- and the serial costs the
    splits add: the partial-sum reduction over P_PAD = pow2(P*S) shares, and the sum of the
    S partial rows (z in the forward's split-0 programs, dpre in the weight-gradient
    programs), one dependent L2 round trip per SB rows. x (and dy) stay in L2 between the
    two passes. The note adds the host time per call, which at N = 1 exceeds the GPU time:
    back-to-back calls run at the host's pace unless captured in a CUDA graph."""
    from se_kernels.triton import config

    dev = config.gpu_device(SMS)
    p = config.make_plan(n, c, hw, cr, 2, channels_last, dev, hw_split=True)
    x = n * c * hw * 2
    w = 2 * c * cr * 2
    wb = w if direction == "fwd" else 2 * w
    if direction == "fwd":
        nbytes = 2 * x + w
        streams = [1, 1]                      # pool: x; rescale: x (y is a store)
        launches = 1 if not p.split else 2
    else:
        nbytes = 3 * x + 2 * w
        streams = [2, 1]                      # reduce: x, dy; dx phase: dy
        launches = 2
    programs = p.groups(n) * p.Q
    hwc = p.HWC if p.S > 1 else hw
    chunk = p.chunk if p.split else c
    if p.flat:   # flat NCHW tiles (S = 1 there): (sample, channel block) pairs, as predict()
        trips = min(p.G, n) * _cdiv(chunk, p.BC)
        tile_bytes = min(p.BC, chunk) * hw * 2
    else:        # the pixel tiles of one channel block within the program's split
        trips = _cdiv(hwc, p.BHW)
        tile_bytes = p.BC * p.BHW * 2
    res, why = resident(n, c, hw, channels_last, direction)
    per_sm = min(res, programs / SMS)
    busy = min(SMS, programs)
    t = 0.0
    inflight = []
    depths = []
    for s in streams:
        ahead, depth = stream_ahead(p, s, trips)
        depths.append(depth)
        fl = tile_bytes * s * ahead * max(1.0, per_sm)
        inflight.append(fl)
        bw = min(BW, busy * fl / LAT)
        t += (nbytes - wb) * (s / sum(streams)) / bw
    t += wb * p.S / BW / max(1, busy / 8)     # weights: read once per split, from L2 mostly
    # the FC step loops as predict() (fc_steps_us)
    fc_us, depth2, depth1 = fc_steps_us(p, cr, chunk, LEGACY_FC, direction == "fwd")
    fc = fc_us * 1e-6
    split_sum = (_cdiv(p.S, p.SB) if p.S > 1 else 0) * L2_ROUND_US * 1e-6 * _cdiv(chunk, p.BC2)
    t += fc + split_sum
    if direction == "bwd":
        ws, wsn = p.wslices(n)
        t += _cdiv(wsn, p.BN) * _cdiv(p.S, p.SB) * L2_ROUND_US * 1e-6   # dpre split rows
    t += launches * LAUNCH_US * 1e-6
    host = HOST_BODY_US[direction] + HOST_DISPATCH_US + HOST_LAUNCH_US[direction] * launches
    note = [f"plan: {'split' if p.split else 'fused'} G={p.G} P={p.P} S={p.S} "
            f"HWC={hwc} SB={p.SB} BC={p.BC} BHW={p.BHW} {'flat ' if p.flat else ''}"
            f"BJH={p.BJH} BJ2={p.BJ2} BC2={p.BC2}, "
            f"{programs} programs, {res}/SM ({why})",
            f"streaming loops {'/'.join(map(str, depths))} stages over {trips} trips",
            f"partial sums + FC steps ~{fc * 1e6:.1f} us (FC2 loop {depth2} stages, FC1 "
            f"loop {depth1}), split sums ~{split_sum * 1e6:.1f} us per program",
            f"host ~{host:.0f} us per call (body {HOST_BODY_US[direction]:.0f} + dispatch "
            f"{HOST_DISPATCH_US:.0f} + {launches} x {HOST_LAUNCH_US[direction]:.0f} "
            f"launcher): "
            f"host-bound unless graph-captured"]
    return _row(p, stage, n, channels_last, direction, nbytes, t, inflight, note)


def rows():
    out = []
    for (stage, c, hw, cr) in STAGES:
        for n in (1, 256):
            for cl in (False, True):
                for d in ("fwd", "bwd"):
                    model = predict_small_n if n == 1 else predict
                    out.append(model(stage, c, hw, cr, n, cl, d))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--legacy-fc", action="store_true",
                    help="model the FC step loops as before their pipelining (FC2 3 stages, "
                    "FC1 not pipelined): the 'before' column of the perf notes")
    ap.add_argument("--legacy-stream", action="store_true",
                    help="model the streaming loops 3 deep, as before 13e's depths")
    a = ap.parse_args()
    global LEGACY_FC, LEGACY_STREAM
    LEGACY_FC = a.legacy_fc
    LEGACY_STREAM = a.legacy_stream
    rs = rows()
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rs, indent=1) + "\n")
    if a.markdown:
        print("| stage | N | layout | dir | path | MB moved | floor µs | predicted µs | "
              "% of bound | in flight KB/SM |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            print(f"| {r['stage']} | {r['N']} | {r['layout']} | {r['direction']} | "
                  f"{r['path']} | {r['bytes'] / 1e6:.2f} | {r['floor_us']:.1f} | "
                  f"{r['predicted_us']:.1f} | "
                  f"{100 * r['floor_us'] / r['predicted_us']:.0f}% | "
                  f"{r['in_flight_kb_per_sm']:.0f} |")
    else:
        for r in rs:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Predicted H200 times of the Triton backend per SE-ResNet-50 stage (bf16; N = 1 and 256;
NCHW and NHWC; forward and backward), written before any GPU measures them (issue 13).

    python tools/predict_triton.py [--json benchmarks/predictions/triton.json] [--markdown]

The model follows ../shared/DESIGN.md (4.3 TB/s copy bandwidth, ~0.7 us HBM latency,
132 SMs) and uses the plan config.make_plan really makes for each row (sample groups G,
channel chunks P, the activation tile, the pipeline depth kernels._STAGES):

* bytes: what the kernels move to and from HBM (avg squeeze, no fused residual, biases):
  forward 3|x| + |W| (x read by the pool phase and again by the rescale, y written) when
  the resident slabs exceed L2 (N = 256), 2|x| + |W| when x stays in L2 (N = 1); backward
  4|x| + 2|W| (x and dy read by the reduce phase, dy re-read, dx written; W read, dW
  written), 3|x| + 2|W| when dy stays in L2. This backend's own bytes bound is the same
  count (issue 13's definition), so floor_us = bytes / 4.3 TB/s.
* bandwidth: Little's law. A program keeps min(STAGES - 1, trips - 1) tiles of each
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
  then FC2 (backward: FC1) over cdiv(chunk, BC2) x cdiv(Cr, BJ2) steps, which one loop
  pipelines STAGES - 1 = 2 steps ahead (a round trip per 2 steps, 0.25 us each); the weight
  gradients walk their slice of cdiv(N, WS) samples in blocks of BN, one hidden block per
  program (item 5), plus, when WS > 1, a third launch summing the WS partial rows.
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
RESIDENT = 2           # programs per SM (registers of the 8-warp programs)
STAGES = [("conv2_x", 256, 56 * 56, 16), ("conv3_x", 512, 28 * 28, 32),
          ("conv4_x", 1024, 14 * 14, 64), ("conv5_x", 2048, 7 * 7, 128)]


def _cdiv(a, b):
    return -(-a // b)


def predict(stage, c, hw, cr, n, channels_last, direction):
    from se_kernels.triton import config
    from se_kernels.triton.kernels import _STAGES

    dev = config.Device(sms=SMS, tile=4096, fc_tile=4096, min_group=1, interpret=False)
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
    programs = p.groups(n) * p.P
    if p.flat:   # the pipelined loop walks (sample, channel block) pairs of whole channels
        trips = min(p.G, n) * _cdiv(p.chunk, p.BC)
        tile_bytes = min(p.BC, p.chunk) * hw * 2
    else:        # the pipelined loop walks the pixel tiles of one channel block
        trips = _cdiv(hw, p.BHW)
        tile_bytes = p.BC * p.BHW * 2
    ahead = max(1, min(int(_STAGES) - 1, trips - 1))
    per_sm = min(RESIDENT, programs / SMS) if programs < SMS * RESIDENT else RESIDENT
    busy = min(SMS, programs)
    # the two streaming phases, each moving about half the activation bytes
    t = 0.0
    inflight = []
    for k, s in enumerate(streams):
        fl = tile_bytes * s * ahead * max(1.0, per_sm)
        inflight.append(fl)
        bw = min(BW, busy * fl / LAT)
        share = (nbytes - (w if direction == "fwd" else 2 * w)) * (s / sum(streams))
        t += share / bw
    t += (w if direction == "fwd" else 2 * w) / BW
    # serial FC costs per program (the longest program)
    chunk_blocks = _cdiv(p.chunk, p.BC)
    del chunk_blocks
    fc2 = (_cdiv(cr, p.BJH) + _cdiv(p.chunk, p.BC2) * _cdiv(cr, p.BJ2) / (int(_STAGES) - 1)
           ) * L2_ROUND_US * 1e-6
    t += fc2
    note = [f"plan: {'split' if p.split else 'fused'} G={p.G} P={p.P} BC={p.BC} BHW={p.BHW} "
            f"{'flat ' if p.flat else ''}"
            f"BJH={p.BJH} BJ2={p.BJ2} BC2={p.BC2}, {programs} programs"]
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
    note.append(f"partial sums + FC2 ~{fc2 * 1e6:.0f} us per program")
    floor = nbytes / BW
    return dict(backend="triton", path="split" if p.split else "fused", stage=stage, N=n,
                layout="nhwc" if channels_last else "nchw", direction=direction,
                dtype="bf16", bytes=int(nbytes), floor_us=round(floor * 1e6, 2),
                predicted_us=round(t * 1e6, 1),
                in_flight_kb_per_sm=round(max(inflight) / 1024, 1),
                note="; ".join(note))


def rows():
    out = []
    for (stage, c, hw, cr) in STAGES:
        for n in (1, 256):
            for cl in (False, True):
                for d in ("fwd", "bwd"):
                    out.append(predict(stage, c, hw, cr, n, cl, d))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = ap.parse_args()
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

#!/usr/bin/env python3
"""Predictions for the CUDA backend on an H200 (bf16, SE-ResNet-50 stages), written before any
GPU measures them (issue 12). Prints the markdown table of docs/perf-notes.md ("Issue 12:
predictions") and, with --json PATH, writes the rows of benchmarks/predictions/cuda.json.

The model (Little's law; every constant is named below):
  * HBM: 4.3 TB/s copy bandwidth, ~0.7 us latency, 132 SMs: full bandwidth needs about
    4.3e12 * 0.7e-6 = 3 MB in flight, ~23 KB per SM. A stream with B bytes in flight per SM
    runs at min(1, B / 23 KB) of the bandwidth.
  * bytes in flight per SM of a streaming pass = CTAs per SM x threads x loads in flight per
    thread x bytes per load (the unroll of the hot loop, read from csrc/cuda/tiles.cuh and
    fc.cuh; the cluster kernel's cp.async slab copy has its whole share in flight).
  * weights (FCs) are read from L2 after the first group: ~0.6 us latency, so one CTA streams
    them at (bytes in flight per CTA) / 0.6 us, at most ~100 GB/s (one SM's L2 share).
  * persistent kernels: the FC of the last group runs on one CTA after its reduce items and
    before its apply items: its time is added (the tail); the other groups' FCs overlap the
    streaming of other CTAs (their CTA time is divided by the grid).
  * backward tail: the weight gradients (dW1, dW2: N x C x Cr each) from L2, ~5 us at N = 256.
  * launch + grid drain: 3 us (persistent), 2.5 us (cluster).
"before" is the code of commit 23a97b5; "after" is issue 12 as merged (2ca7a7b: the cluster
FC vectorised, the persistent FCs unchanged); "after 12a" adds the persistent kernels' FC
items (issue 12a, below). The floor is the bytes a single pass must move over the HBM
bandwidth: forward 2|x| + |W|, backward 3|x| + 2|W|.

The FC items (issue 12a; cuda_plan::FcItems, fc.cuh rows_dot_padded / cols_dot): a group's
excitation is cut into items of ~32 KiB of weights, stage 1 then stage 2, spread over the
grid. An item's time, from L2 (every latency L2_LAT, a round = every lane's loads in flight
answered once):
  * forward (rows_dot_padded): chunks of 512 inputs are staged (one L2 round each); per
    chunk, ceil(vectors per lane / 4) rounds of 16-byte loads for the first pass of 2
    samples, and the further passes (G > 2) re-read the item's weights from L1 (L1_LAT);
  * backward (cols_dot, 2-byte loads, 2 rows in flight per thread): per chunk of 512 rows,
    one staging round, then ceil(rows per thread / 2) rounds;
  * plus ITEM_FIXED per item (ticket, the acquire poll of the flag, the release).
The last group's squeeze combine and its two stages are on the critical path; every other
group's items overlap the streaming (their CTA time divided by the grid, as before), where a
stage-2 item's CTA time includes its spin while stage 1 runs.
"after 12c" replaces the backward item's time with issue 12c's
loop (fc.cuh cols_dot_staged: the weight block copied to shared memory by 16-byte cp.async;
bwd_item_time_staged); bwd_item_time stays as 12a's "before". --bwd-items prints both.

"12e" (fc_items_time_12e): the stage-2 items of group g sit `defer` blocks after its
stage-1 items in the ticket order (cuda_plan::Schedule; defer = lag // 2 groups, lag from
plan_lag_groups, the planner's rule). A block (the reduce items of one group and the apply
items of an older one) takes the grid T_BLOCK = its HBM bytes / the streaming bandwidth
(forward: x read, y written, 2 G slabs; backward: dy and x read, dx written, 3 G slabs), so a
stage-2 item spins max(0, t1 - defer T_BLOCK) instead of t1, and an apply item max(0, t2 -
(lag - defer) T_BLOCK) (0 at every stage shape). On the critical path, the last group's
stage-2 items are handed out after `defer` blocks of apply items only (G slabs written each):
max(t1, defer T_EPI) replaces t1. The forward items' own time (fwd_item_time_12e): bfloat16
stages up to 2048 inputs a row at once (cp.async, one round), and the weight loop's lanes
cover the whole chunk. On main 12e runs with 12c's backward items, so its backward item
times are bwd_item_time_staged's; --json writes the "12e" rows.
"""

from __future__ import annotations

import argparse
import json
import math

BW = 4.3e12          # bytes/s
HBM_LAT = 0.7e-6     # s
L2_LAT = 0.6e-6      # s
SMS = 132
NEED = BW * HBM_LAT / SMS  # bytes in flight per SM for full bandwidth (~23 KB)
CTA_L2_MAX = 100e9   # bytes/s one CTA can pull from L2
THREADS = 512
ESIZE = 2            # bf16
STAGES = {"conv2_x": (256, 56 * 56, 16), "conv3_x": (512, 28 * 28, 32),
          "conv4_x": (1024, 14 * 14, 64), "conv5_x": (2048, 7 * 7, 128)}
LAUNCH = {"persistent": 3e-6, "cluster": 2.5e-6}
L1_LAT = 0.1e-6      # s: a re-read of an item's weights from L1 (further sample passes)
ITEM_FIXED = 1.0e-6  # s: per FC item, ticket + flag poll + release
SQUEEZE = 2.0e-6     # s: the squeeze combine of a group (one CTA, from L2)
FC_ITEM_BYTES = 32 << 10
FC_CHUNK = 512


def lanes_for(n):
    """cuda_plan::lanes_for: lanes (a power of two <= 32) sharing a row of n vectors."""
    lanes = 1
    while lanes < 32 and lanes * 4 < n:
        lanes *= 2
    return lanes


def fc_block(outputs, k, align):
    """cuda_plan::fc_block: outputs per item."""
    b = max(1, FC_ITEM_BYTES // max(k * ESIZE, 1))
    if b < outputs:
        b = math.ceil(b / align) * align
    return min(b, THREADS, max(outputs, 1))


def fc_item_lanes(rows, k, chunk=FC_CHUNK):
    """fc.cuh fc_item_lanes (bf16: 8 elements a vector; chunk: inputs staged at once)."""
    nv = math.ceil(min(k, chunk) / 8)
    lanes = lanes_for(nv)
    while lanes > 1 and rows * (lanes // 2) >= THREADS:
        lanes //= 2
    while lanes < 32 and rows * lanes < THREADS and 2 * lanes * 4 <= nv:  # kFcItemUnroll
        lanes *= 2
    return lanes


def fwd_item_time(rows, k, G):
    """One forward FC item: `rows` rows of k inputs, G samples (passes of 2)."""
    lanes = fc_item_lanes(rows, k)
    passes = max(1, math.ceil(max(G, 2) / 2)) if G > 1 else 1
    t = 0.0
    for k0 in range(0, k, FC_CHUNK):
        kc = min(FC_CHUNK, k - k0)
        vpl = math.ceil(kc / 8 / lanes)  # vectors per lane per row (rows <= groups of lanes)
        row_rounds = math.ceil(rows / (THREADS // lanes))
        rounds = row_rounds * math.ceil(vpl / 4)
        t += L2_LAT + rounds * (L2_LAT + (passes - 1) * L1_LAT)
    return t + ITEM_FIXED


def bwd_item_time(cols, rows):
    """One backward FC item of 12a (cols_dot, since replaced by cols_dot_staged): `cols`
    columns of `rows` rows, 2-byte loads."""
    slices = THREADS // cols
    t = 0.0
    for r0 in range(0, rows, FC_CHUNK):
        nr = min(FC_CHUNK, rows - r0)
        t += L2_LAT + math.ceil(math.ceil(nr / slices) / 2) * L2_LAT
    return t + ITEM_FIXED


# Issue 12c: the backward items' loop is fc.cuh cols_dot_staged (see bwd_item_time_staged).
SM_CLK = 1.755e9       # Hz, H200 SM clock (boost ~1.98 GHz; the lower figure under load)
FC_STAGE_ELEMS = 16384  # bf16 elements of cols_dot_staged's weight stage (kFcStageElems floats)
V_LOADS = 4            # v loads in flight per thread while staging (kVLoads)
SMEM_LAT_CLK = 30      # clk, one shared-memory load's latency (the slice sums)
FADD_CLK = 4           # clk per dependent float add (the slice sums' chain)


def bwd_item_time_staged(cols, rows, G):
    """One backward FC item (issue 12c, fc.cuh cols_dot_staged): `cols` columns of `rows`
    rows, G samples. Per weight stage (the whole block for the plan's 32 KiB items) one L2
    round trip for the 16-byte cp.async copies, all in flight (plus the bytes at one CTA's L2
    rate), overlapped with the first chunk's v staging; per chunk of 512 rows the v staging
    (G x nr floats, 4 loads in flight per thread: ceil(G nr / 2048) round trips) and the
    compute from shared memory: each thread adds row quads, per quad 4 shared reads of w and G
    16-byte reads of v (one wavefront each: broadcasts / contiguous) and 4 G FMAs (4 warp
    instructions a clock per SM); then the sum over the `slices` partials of a column: a
    thread per (sample, column), ceil(G cols / 512) rounds, each one shared-read latency (the
    `slices` reads are independent) and a chain of `slices` dependent adds, or the active
    warps' shared reads at one a clock if more; plus ITEM_FIXED."""
    srows = FC_STAGE_ELEMS // cols
    slices = THREADS // cols
    warps = THREADS // 32
    t = 0.0
    for s0 in range(0, rows, srows):
        ns = min(srows, rows - s0)
        t_w = L2_LAT + ns * cols * ESIZE / CTA_L2_MAX
        for r0 in range(0, ns, FC_CHUNK):
            nr = min(FC_CHUNK, ns - r0)
            t_v = max(math.ceil(G * nr / (THREADS * V_LOADS)) * L2_LAT, G * nr * 4 / CTA_L2_MAX)
            t += max(t_w, t_v) if r0 == 0 else t_v
            quads = math.ceil(math.ceil(nr / 4) / slices)
            t += warps * quads * ((4 + G) + G) / SM_CLK  # shared reads + FMA instructions
    sums = G * cols
    warps_active = math.ceil(min(sums, THREADS) / 32)
    t_sum = math.ceil(sums / THREADS) * max(SMEM_LAT_CLK + slices * FADD_CLK,
                                             warps_active * slices) / SM_CLK
    return t + t_sum + ITEM_FIXED


def fc_items(C, Cr, direction):
    """(n1, n2, b1, b2): cuda_plan::make_fc_items (bf16; the backward's blocks are 8-column
    runs)."""
    align = 1 if direction == "fwd" else 8
    b1, b2 = fc_block(Cr, C, align), fc_block(C, Cr, align)
    return math.ceil(Cr / b1), math.ceil(C / b2), b1, b2


def fc_items_time(C, Cr, G, direction, staged=False):
    """(critical path of one group's FC, CTA time of one group's FC items, item count).
    staged: the backward items of issue 12c (cols_dot_staged) instead of 12a's cols_dot."""
    n1, n2, b1, b2 = fc_items(C, Cr, direction)
    if direction == "fwd":
        t1, t2 = fwd_item_time(b1, C, G), fwd_item_time(b2, Cr, G)
    elif staged:
        t1, t2 = bwd_item_time_staged(b1, C, G), bwd_item_time_staged(b2, Cr, G)
    else:
        t1, t2 = bwd_item_time(b1, C), bwd_item_time(b2, Cr)
    # CTA time: the items, plus the stage-2 items' spin while stage 1 runs (they are handed
    # out right after the stage-1 items and wait for them)
    return SQUEEZE + t1 + t2, SQUEEZE + n1 * t1 + n2 * (t1 + t2), n1 + n2


L2_BYTES = 60 << 20  # H200 (prop.l2CacheSize)


def plan_lag_groups(C, HW, Cr, N, direction):
    """cuda_plan::plan_persistent_shape's lag (no residual), in groups, clamped as
    make_schedule does: the larger of 40% of L2 over the re-read streams and G + the samples
    in flight (2 CTAs per SM, default tiles)."""
    slab = C * HW * ESIZE
    G = group(C, HW, Cr, N)
    ctas = 2 * SMS
    tile = min(max(N * slab // (16 * SMS), 8 << 10), 64 << 10)
    tile = max(8 << 10, min(tile, (L2_BYTES * 3 // 20) // ctas))
    streams = 1 if direction == "fwd" else 2
    lag = max(max(1, (L2_BYTES * 2 // 5) // (slab * streams)), G + math.ceil(ctas * tile / slab))
    groups = math.ceil(N / G)
    return min(max(math.ceil(lag / G), 1), max(groups, 1))


FC_ITEM_CHUNK_12E = 2048  # cuda_plan::fc_item_chunk (16-bit types): inputs staged at once


def fc_item_lanes_12e(rows, k):
    """fc.cuh fc_item_lanes after issue 12e: the chunk is fc_item_chunk (2048 in bf16)."""
    return fc_item_lanes(rows, k, FC_ITEM_CHUNK_12E)


def fwd_item_time_12e(rows, k, G):
    """One forward FC item after issue 12e: chunks of 2048 inputs staged by cp.async (one L2
    round each, every copy in flight), then per chunk the rounds of 4 16-byte weight loads a
    lane for the first pass of 2 samples, the further passes from L1."""
    lanes = fc_item_lanes_12e(rows, k)
    passes = max(1, math.ceil(max(G, 2) / 2)) if G > 1 else 1
    t = 0.0
    for k0 in range(0, k, FC_ITEM_CHUNK_12E):
        kc = min(FC_ITEM_CHUNK_12E, k - k0)
        vpl = math.ceil(kc / 8 / lanes)
        row_rounds = math.ceil(rows / (THREADS // lanes))
        rounds = row_rounds * math.ceil(vpl / 4)
        t += L2_LAT + rounds * (L2_LAT + (passes - 1) * L1_LAT)
    return t + ITEM_FIXED


def fc_items_time_12e(C, HW, Cr, N, direction, eff):
    """(critical path of the last group's FC, CTA time of one group's FC items, item count,
    defer, stage-2 spin) with the stage-2 items `defer` blocks after the stage-1 items."""
    n1, n2, b1, b2 = fc_items(C, Cr, direction)
    G = group(C, HW, Cr, N)
    if direction == "fwd":
        t1, t2 = fwd_item_time_12e(b1, C, G), fwd_item_time_12e(b2, Cr, G)
    else:
        # 12c's items (cols_dot_staged), merged with 12e
        t1, t2 = bwd_item_time_staged(b1, C, G), bwd_item_time_staged(b2, Cr, G)
    lag = plan_lag_groups(C, HW, Cr, N, direction)
    defer = min(lag // 2, lag - 1)
    slab = C * HW * ESIZE
    t_block = (2 if direction == "fwd" else 3) * G * slab / (BW * eff)
    t_epi = G * slab / (BW * eff)
    spin2 = max(0.0, t1 - defer * t_block)
    spin_apply = max(0.0, t2 - (lag - defer) * t_block) * G  # per group: G samples' tiles, ~1 each
    crit = SQUEEZE + max(t1, defer * t_epi) + t2
    cta = SQUEEZE + n1 * t1 + n2 * (spin2 + t2) + spin_apply
    return crit, cta, n1 + n2, defer, spin2


def group(C, HW, Cr, N):
    w = 2 * C * Cr * ESIZE
    return min(8, max(1, math.ceil(2 * w / (C * HW * ESIZE))), N)


def cta_l2_rate(inflight_cta):
    return min(CTA_L2_MAX, inflight_cta / L2_LAT)


def fc_inflight_cta(version, direction, G, path="cluster"):
    """Bytes of weight loads in flight per CTA in the FCs."""
    if version == "before" or path == "persistent":  # one CTA per group's FC (12a: items)
        # rows_dot / cols_dot: one 2-byte load a step, unrolled 2x (the reading: 1-2
        # loads in flight; 2 taken)
        return THREADS * 2 * 2
    if direction == "fwd":  # rows_dot: 16-byte loads, fc_unroll<GP, bf16>
        gp = 1 if G <= 1 else 2 if G <= 2 else 4 if G <= 4 else 8
        u = 4 if gp <= 2 else 2
        return THREADS * u * 16
    return THREADS * 2 * 2  # cols_dot (backward) is unchanged: 2-byte loads, unrolled 2x


def span_reduce_inflight_sm(direction, HW):
    """Issue 12 item 3 (tiles.cuh reduce_span, grad_reduce_span): NCHW rows whose length is not
    a multiple of 8 (bf16) read as one span of 16-byte vectors. A row overlaps 1 + (HW - 1) / 8
    vectors on average; L lanes share it; each lane has up to U vectors of each tensor in flight
    (U = 2 forward, both loads always issued; U = 1 backward, over dy and x). Only the row's own bytes count
    (a vector straddling two rows is read by both, the second time mostly from L1)."""
    vec = 8
    per_row = 1 + (HW - 1) / vec
    per_lane = per_row / lanes_for(math.ceil(HW / vec) + 1)
    u, tensors = (2, 1) if direction == "fwd" else (1, 2)
    useful = HW / (per_row * vec)
    return 2 * THREADS * min(u, per_lane) * tensors * 16 * useful


def stream_inflight_sm(path, direction, layout, HW, version):
    """Bytes in flight per SM in the streaming (tile) passes."""
    if path == "cluster":
        return 64e3  # cp.async of the whole slab share (>= 40 KB a CTA, 2 CTAs/SM)
    vec = layout == "nhwc" or HW % 8 == 0
    if direction == "fwd":
        # reduce_rows / reduce_nhwc: unroll 4 x 16 B (scale passes: flat, unroll 2 x 16 B x 2)
        per_thread = 4 * 16 if vec else 2 * 16  # NCHW HW % 8 != 0: the flat 16-byte passes
        # forward NCHW with HW % 8 != 0 reduces rows with scalar loads (unroll 4 x 2 B) but
        # scales flat (16 B); the reduce reads x from HBM, so it sets the pace
        if not vec:
            if version in ("after", "12a", "12c", "12e"):  # issue 12 item 3: the span reduce
                return span_reduce_inflight_sm(direction, HW)
            per_thread = 4 * 2
        return 2 * THREADS * per_thread
    # backward reduce: dy, x (and y) per step, unroll 2
    if vec:
        return 2 * THREADS * 2 * 2 * 16
    if version in ("after", "12a", "12c", "12e"):  # issue 12 item 3: the span reduce
        return span_reduce_inflight_sm(direction, HW)
    return 2 * THREADS * 2 * 2 * 2  # scalar 2-byte loads (23a97b5)


def predict(path, stage, N, layout, direction, version):
    C, HW, Cr = STAGES[stage]
    x = N * C * HW * ESIZE
    W = 2 * C * Cr * ESIZE
    floor_bytes = 2 * x + W if direction == "fwd" else 3 * x + 2 * W
    floor = floor_bytes / BW
    G = group(C, HW, Cr, N)
    groups = math.ceil(N / G)
    inflight = stream_inflight_sm(path, direction, layout, HW, version)
    eff = min(1.0, inflight / NEED)
    note = []
    if path == "cluster":
        # HBM: x in, y out; weights once per cluster (L2). Phases of one CTA serialise
        # (copy, squeeze, FC, cluster barrier, scale): two CTAs per SM overlap them, ~85%.
        t_stream = (2 * x) / (BW * eff * 0.85)
        # FC slice per CTA from L2, overlapped with the other CTA of the SM except in the last
        # wave: counted once
        K = 16
        wpc = W / K
        t_fc = wpc / cta_l2_rate(fc_inflight_cta(version, "fwd", G))
        t = LAUNCH["cluster"] + t_stream + t_fc
        if N == 1:
            # latency chain on K SMs: copy (HBM latency + the share at what one SM's bytes in
            # flight allow), FC slice, store
            per_sm = min(BW / K, inflight / 2 / HBM_LAT)  # one CTA per SM at N = 1
            t = LAUNCH["cluster"] + 2 * HBM_LAT + (x / K) / per_sm * 2 + t_fc
        rate = cta_l2_rate(fc_inflight_cta(version, "fwd", G))
        note.append(f"FC slice {wpc / 1024:.0f} KiB/CTA at {rate / 1e9:.0f} GB/s")
    else:
        t_stream = (2 * x if direction == "fwd" else 3 * x) / (BW * eff)
        fc_bytes = W  # forward: W1 and W2 once per group; backward: the same (dh, dz)
        if version in ("12a", "12c"):  # FC items spread over the grid (critical path, CTA time)
            t_fc, t_fc_cta, nitems = fc_items_time(C, Cr, G, direction, version == "12c")
        elif version == "12e":  # the items, the stage-2 items deferred (with 12c's backward)
            t_fc, t_fc_cta, nitems, defer, spin2 = fc_items_time_12e(C, HW, Cr, N, direction,
                                                                     eff)
        else:  # the group's FC on one CTA
            t_fc = fc_bytes / cta_l2_rate(fc_inflight_cta(version, direction, G, path))
            t_fc_cta = t_fc
        grid = 2 * SMS
        t_fc_overlap = (groups - 1) * t_fc_cta / grid
        t = LAUNCH["persistent"] + t_stream + t_fc + t_fc_overlap
        if direction == "bwd":
            t += 5e-6 * (N / 256) + 1e-6  # weight-gradient tail
        if N == 1:
            t = LAUNCH["persistent"] + 2 * HBM_LAT + t_stream + t_fc
            t += 2e-6 if direction == "bwd" else 0
        if version == "12e":
            note.append(f"G={G}, FC in {nitems} items a group, stage 2 deferred {defer} "
                        f"groups (spin {spin2 * 1e6:.1f} us an item): last group's FC "
                        f"{t_fc * 1e6:.1f} us on the critical path, "
                        f"{t_fc_cta * 1e6:.0f} us CTA time a group")
        elif version in ("12a", "12c"):
            note.append(f"G={G}, FC in {nitems} items a group: last group's FC "
                        f"{t_fc * 1e6:.1f} us on the critical path, "
                        f"{t_fc_cta * 1e6:.0f} us CTA time a group")
        else:
            note.append(f"G={G}, FC of a group on one CTA: {t_fc * 1e6:.1f} us")
    if eff < 1:
        note.append(f"stream {eff:.0%} of bandwidth")
    return {
        "backend": "cuda", "path": path, "stage": stage, "N": N, "layout": layout,
        "direction": direction, "dtype": "bf16", "bytes": int(floor_bytes),
        "floor_us": round(floor * 1e6, 2), "predicted_us": round(t * 1e6, 1),
        "in_flight_kb_per_sm": round(inflight / 1e3, 1), "note": "; ".join(note),
    }


def rows(version):
    out = []
    for stage in STAGES:
        for N in (1, 256):
            for layout in ("nchw", "nhwc"):
                out.append(predict("cluster", stage, N, layout, "fwd", version))
                out.append(predict("persistent", stage, N, layout, "fwd", version))
                out.append(predict("persistent", stage, N, layout, "bwd", version))
    return out


def print_span_reduce_rows():
    """The rows issue 12 item 3 changes (NCHW, H*W % 8 != 0: conv4_x and conv5_x, persistent
    forward and backward), with the streaming part of each prediction on its own: the FC of
    the persistent kernels (issue 12 item 1, another branch) dominates the totals."""
    print("| stage | N | dir | floor us | in flight KB/SM before -> after | stream us before -> "
          "after | total us before -> after (% floor) |")
    print("|---|---|---|---|---|---|---|")
    for stage in ("conv4_x", "conv5_x"):
        C, HW, Cr = STAGES[stage]
        for N in (1, 256):
            for direction in ("fwd", "bwd"):
                b = predict("persistent", stage, N, "nchw", direction, "before")
                a = predict("persistent", stage, N, "nchw", direction, "after")
                x = N * C * HW * ESIZE
                moved = 2 * x if direction == "fwd" else 3 * x
                ts = [moved / (BW * min(1.0, r["in_flight_kb_per_sm"] * 1e3 / NEED)) * 1e6
                      for r in (b, a)]
                print(f"| {stage} | {N} | {direction} | {a['floor_us']:.1f} | "
                      f"{b['in_flight_kb_per_sm']:.0f} -> {a['in_flight_kb_per_sm']:.0f} | "
                      f"{ts[0]:.1f} -> {ts[1]:.1f} | {b['predicted_us']:.1f} -> "
                      f"{a['predicted_us']:.1f} ({100 * a['floor_us'] / a['predicted_us']:.0f}%) |")


def print_bwd_item_rows():
    """Issue 12c: the persistent backward rows, 12a's items (cols_dot) against 12c's
    (cols_dot_staged), with the two items' times of each stage."""
    print("| stage | N | layout | floor us | stage-1 / stage-2 item us, 12a -> 12c | "
          "after 12a us (% floor) | after 12c us (% floor) |")
    print("|---|---|---|---|---|---|---|")
    for stage, (C, HW, Cr) in STAGES.items():
        _, _, b1, b2 = fc_items(C, Cr, "bwd")
        for N in (1, 256):
            G = group(C, HW, Cr, N)
            old = (bwd_item_time(b1, C), bwd_item_time(b2, Cr))
            new = (bwd_item_time_staged(b1, C, G), bwd_item_time_staged(b2, Cr, G))
            for layout in ("nchw", "nhwc"):
                a = predict("persistent", stage, N, layout, "bwd", "12a")
                c = predict("persistent", stage, N, layout, "bwd", "12c")
                print(f"| {stage} | {N} | {layout} | {a['floor_us']:.1f} | "
                      f"{old[0] * 1e6:.1f} / {old[1] * 1e6:.1f} -> "
                      f"{new[0] * 1e6:.1f} / {new[1] * 1e6:.1f} | "
                      f"{a['predicted_us']:.1f} ({100 * a['floor_us'] / a['predicted_us']:.0f}%) | "
                      f"{c['predicted_us']:.1f} ({100 * c['floor_us'] / c['predicted_us']:.0f}%) |")


def print_fc2_defer_rows():
    """The persistent rows before and after issue 12e (the stage-2 FC items deferred):
    docs/perf-notes.md, "Issue 12: stage-2 placement and forward staging (12e; predictions)"."""
    print("| stage | N | layout | dir | floor us | lag, defer (groups) | 12a us (% floor) | "
          "12e us (% floor) | 12e: stage-2 spin an item |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a, e in zip(rows("12a"), rows("12e")):
        if a["path"] != "persistent":
            continue
        C, HW, Cr = STAGES[a["stage"]]
        lag = plan_lag_groups(C, HW, Cr, a["N"], a["direction"])
        spin = e["note"].split("(spin ")[1].split(" an item")[0]
        print(f"| {a['stage']} | {a['N']} | {a['layout']} | {a['direction']} | "
              f"{a['floor_us']:.1f} | {lag}, {min(lag // 2, lag - 1)} | "
              f"{a['predicted_us']:.1f} ({100 * a['floor_us'] / a['predicted_us']:.0f}%) | "
              f"{e['predicted_us']:.1f} ({100 * e['floor_us'] / e['predicted_us']:.0f}%) | "
              f"{spin} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the latest rows (after 12e, with 12c's backward "
                    "items) here")
    ap.add_argument("--span-reduce", action="store_true",
                    help="print only the rows of issue 12 item 3 (the NCHW span reduce)")
    ap.add_argument("--bwd-items", action="store_true",
                    help="print only the persistent backward rows, 12a's FC items against 12c's")
    ap.add_argument("--fc2-defer", action="store_true",
                    help="print only the persistent rows before and after issue 12e")
    args = ap.parse_args()
    if args.span_reduce:
        print_span_reduce_rows()
        return
    if args.bwd_items:
        print_bwd_item_rows()
        return
    if args.fc2_defer:
        print_fc2_defer_rows()
        return
    before, after, after12a = rows("before"), rows("after"), rows("12a")
    print("| path | stage | N | layout | dir | MB moved | floor us | in flight KB/SM | "
          "before us (% floor) | after us (% floor) | after 12a us (% floor) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for b, a, c in zip(before, after, after12a):
        pb = 100 * a["floor_us"] / b["predicted_us"]
        pa = 100 * a["floor_us"] / a["predicted_us"]
        pc = 100 * c["floor_us"] / c["predicted_us"]
        print(f"| {a['path']} | {a['stage']} | {a['N']} | {a['layout']} | {a['direction']} | "
              f"{a['bytes'] / 1e6:.1f} | {a['floor_us']:.1f} | {a['in_flight_kb_per_sm']:.0f} | "
              f"{b['predicted_us']:.1f} ({pb:.0f}%) | {a['predicted_us']:.1f} ({pa:.0f}%) | "
              f"{c['predicted_us']:.1f} ({pc:.0f}%) |")
    after = rows("12e")  # the stage-2 items deferred (12e), 12c's backward items
    if args.json:
        # one row per (backend, stage, N, layout, direction): the path `auto` takes on an
        # H200 in bf16 (the cluster forward fits every stage; the backward is persistent)
        keep = [r for r in after if (r["direction"] == "fwd") == (r["path"] == "cluster")]
        with open(args.json, "w") as f:
            json.dump(keep, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()

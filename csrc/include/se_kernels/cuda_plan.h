// How the CUDA kernels cut the work: tiles, the ticket order of the persistent kernels, the
// shared-memory carve-up of the cluster kernel, and the choice of cluster shape.
//
// Plain C++ usable from host and device code, with no CUDA header, so that the C++ test
// program (csrc/tests/test_kernels.cpp) checks these invariants on any machine: every work
// item is handed out exactly once, no apply item is handed out before all the reduce items
// it waits for (the deadlock-freedom argument of the persistent kernels), tiles cover every
// element once, and a planned cluster fits in shared memory.
#pragma once

#include <cstdint>

#include "se_kernels/options.h"

namespace se_kernels {
namespace cuda_plan {

constexpr int kThreads = 512;           // threads per CTA, every kernel
constexpr int kMaxGroup = 8;            // samples per FC group (register accumulators)
constexpr int kFcChunk = 512;           // FC input vectors are staged in chunks of this length
// The backward FC items' weight stage in shared memory (fc.cuh cols_dot_staged), in elements
// of the accumulation type: 32 KiB in float (an item's ~kFcItemBytes of 16-bit or float
// weights in one stage), 64 KiB in double; it also holds the items' column partials after.
constexpr int kFcStageElems = 8192;
constexpr int64_t kMaxTileChannels = 1024;  // widest NHWC tile of the persistent kernels
// Most channels in an NCHW tile of whole rows: the backward keeps 3 values per channel of a
// tile in shared memory (48 KiB in float at this cap; uncapped, H*W = 1 in 16-bit types would
// take 32768 channels, 384 KiB, more than any GPU's shared memory: a failed call).
constexpr int64_t kMaxRowTileChannels = 4096;
constexpr int kGemmTile = 64;           // weight-gradient output tile (kGemmTile x kGemmTile)
constexpr int kGemmK = 32;              // batch rows staged per step of the weight gradients
constexpr int kMaxCluster = 16;         // CTAs per cluster (more than 8 is non-portable)

SE_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
SE_HOST_DEVICE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
SE_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
SE_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
SE_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Shared memory a block gets without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize):
// 48 KiB for the kernel's static and dynamic shared memory together. The persistent kernels
// have a few bytes of static shared memory (the ticket), so a 48 KiB dynamic plan (the
// backward's at conv5_x, G = 8) needs the opt-in although it is not above 48 KiB.
constexpr int64_t kDefaultBlockSmem = 48 << 10;
SE_HOST_DEVICE bool smem_needs_opt_in(int64_t static_bytes, int64_t dynamic_bytes) {
  return dynamic_bytes > 0 && static_bytes + dynamic_bytes > kDefaultBlockSmem;
}

// Samples per pass of the FC loop in the persistent kernels' FC items (fc.cuh), and the rows
// those items stage: G rounded up to whole passes (rows G.. zero-filled; G = 5 stages 6 rows
// in 3 passes, not 8 in 4).
constexpr int kFcPass = 2;
SE_HOST_DEVICE int64_t fc_item_rows(int64_t G) { return round_up(G < 1 ? 1 : G, kFcPass); }

// Lanes (a power of two <= 32) that share one row of `n` vectors: about 4 vectors per lane.
SE_HOST_DEVICE int lanes_for(int64_t n) {
  int l = 1;
  while (l < 32 && int64_t(l) * 4 < n) l *= 2;
  return l;
}

// The NHWC reductions (tiles.cuh): a tile of nc channels is V = nc / vec vector columns.
// With V <= 32 a warp holds 32 / Vp pixel phases of Vp >= V columns (Vp the power of two),
// adds them with shuffles and leaves one row of partials per warp; with V > 32 a thread owns
// column tid % V of phase tid / V, one row per phase. Rows of nc | 1 (odd) elements.
SE_HOST_DEVICE int64_t nhwc_vectors(int64_t nc, int64_t vec) { return nc / vec; }
SE_HOST_DEVICE int64_t nhwc_rows(int64_t nc, int64_t vec) {
  const int64_t V = nhwc_vectors(nc, vec);
  return V <= 32 ? kThreads / 32 : kThreads / V;
}
// Shared-memory elements (accumulation type) of one array of NHWC partials for nc channels.
SE_HOST_DEVICE int64_t nhwc_scratch_elems(int64_t nc, int64_t vec) {
  return nc <= 0 ? 0 : nhwc_rows(nc, vec) * (nc | 1);
}
// The same for tiles of width `width` whose last one may be narrower (`last`).
SE_HOST_DEVICE int64_t nhwc_scratch_elems2(int64_t width, int64_t last, int64_t vec) {
  const int64_t a = nhwc_scratch_elems(width, vec), b = nhwc_scratch_elems(last, vec);
  return a > b ? a : b;
}

// The NCHW span passes (tiles.cuh reduce_span, grad_reduce_span): a tile of `rows` rows of
// `len` elements back to back is one span, whose first element sits m elements (m < vec)
// past a 16-byte boundary. Vector k covers elements [k vec, k vec + vec) counted from that
// boundary; vectors [kf, ke) lie wholly inside the span (only they are loaded 16 bytes at a
// time). Row r is elements [a0, a0 + len), a0 = m + r len: vectors kb = a0 / vec .. k1 =
// (a0 + len - 1) / vec, of which [lo, hi) are whole; kb and k1 are the only ones that can be
// partial (the span's first and last vectors).
struct Span {
  int m, kf, ke;
};
SE_HOST_DEVICE Span make_span(int m, int rows, int len, int vec) {
  return Span{m, (m + vec - 1) / vec, (m + rows * len) / vec};
}
SE_HOST_DEVICE void span_row_whole(const Span& s, int a0, int len, int vec, int& lo, int& hi) {
  const int kb = a0 / vec, k1 = (a0 + len - 1) / vec;
  lo = kb > s.kf ? kb : s.kf;
  hi = k1 + 1 < s.ke ? k1 + 1 : s.ke;
}
// The span's partial vectors that overlap the row, each once: which = 0 (the row's first
// vector) and 1 (its last); -1 when that one is whole or already given.
SE_HOST_DEVICE int span_row_partial(const Span& s, int a0, int len, int vec, int which) {
  const int kb = a0 / vec, k1 = (a0 + len - 1) / vec;
  if (which == 0) return kb < s.kf ? kb : -1;
  return (k1 >= s.ke && !(k1 == kb && kb < s.kf)) ? k1 : -1;
}
// Lanes that share a row of the span passes: its vectors, at most ceil(len / vec) + 1.
SE_HOST_DEVICE int span_lanes(int len, int vec) { return lanes_for((len + vec - 1) / vec + 1); }

// ---- tiles ---------------------------------------------------------------------------------

// A sample's slab (C channels x HW pixels) cut into tiles of tc channels x tp pixels. Tiles
// are numbered in memory order: channel-block-major for NCHW, pixel-block-major for NHWC.
struct Tiles {
  int64_t C, HW;
  int64_t tc, tp;    // tile extent: channels, pixels
  int64_t ncb, npb;  // channel blocks, pixel blocks
  bool nhwc;

  SE_HOST_DEVICE int64_t count() const { return ncb * npb; }
  // Tile t: channels [c0, c0 + nc), pixels [p0, p0 + np), pixel block pb.
  SE_HOST_DEVICE void get(int64_t t, int64_t& c0, int64_t& nc, int64_t& p0, int64_t& np,
                          int64_t& pb) const {
    int64_t cb;
    if (nhwc) {
      pb = t / ncb;
      cb = t % ncb;
    } else {
      cb = t / npb;
      pb = t % npb;
    }
    c0 = cb * tc;
    nc = min64(tc, C - c0);
    p0 = pb * tp;
    np = min64(tp, HW - p0);
  }
};

// Tiles of about `target` elements. `vec` is the vector width in elements the kernel will use
// (1 on the scalar path): tile widths along the contiguous dimension stay multiples of it, and
// an NHWC tile is at most kThreads * vec channels wide (one vector column per thread).
// `row_align`: NCHW tiles of whole rows hold a multiple of this many channels (where C allows),
// so that each tile is a 16-byte aligned span for the flat passes.
inline Tiles make_tiles(int64_t C, int64_t HW, bool nhwc, int64_t target, int64_t vec,
                        int64_t row_align = 1) {
  Tiles t{};
  t.C = C;
  t.HW = HW;
  t.nhwc = nhwc;
  target = max64(target, 1);
  if (nhwc) {
    t.tc = min64(C, min64(kMaxTileChannels, int64_t(kThreads) * vec));
    t.tp = clamp64(target / t.tc, 1, HW);
  } else if (HW <= max64(target, vec)) {  // whole rows (a split would leave rows whole anyway)
    t.tp = HW;
    t.tc = clamp64(target / HW, 1, min64(C, kMaxRowTileChannels));
    if (t.tc < C && row_align > 1) t.tc = min64(C, max64(row_align, t.tc / row_align * row_align));
  } else {
    t.tc = 1;
    t.tp = min64(HW, max64(vec, target / vec * vec));
  }
  t.ncb = ceil_div(C, t.tc);
  t.npb = ceil_div(HW, t.tp);
  return t;
}

// ---- the ticket order of the persistent kernels --------------------------------------------

enum ItemKind : int { kItemReduce = 0, kItemApply = 1, kItemTail = 2, kItemFc = 3 };

struct Item {
  int kind;
  int64_t sample;  // reduce / apply: the sample; FC: the first sample of the FC group
  int64_t index;   // reduce / apply: the tile; FC: the item of the group (FcItems); tail:
                   // the index among the tail items
};

// Samples of FC group g (groups of G samples; the last may be short).
SE_HOST_DEVICE int64_t group_size(int64_t N, int64_t G, int64_t g) { return min64(G, N - g * G); }

// Work items of a persistent kernel, in the order tickets hand them out, by FC group of G
// samples (group g: samples [g G, g G + G), the last group may be short). Every sample has
// `tiles` reduce items and `tiles` apply items; every group has fc = fc1 + fc2 FC items (the
// group's excitation cut into blocks, FcItems: fc1 of stage 1, fc2 of stage 2). The tickets
// come in blocks b = 0, 1, ..., ngroups + lag - 1; block b is
//   R(b) FC1(b) A(b - lag) FC2(b - defer)
// where R(g) are the reduce items of group g, FC1(g) / FC2(g) its stage-1 / stage-2 FC items,
// A(g) its apply items, and a part whose group is not in [0, ngroups) is empty. Then come
// `tail` items (the weight gradients of the backward kernel) that need every sample. `lag`
// counts groups (1 <= lag <= ngroups), `defer` too (0 <= defer < lag). R(g), A(g):
// sample-major, tile-minor.
//   * A group's apply items trail its reduce items by `lag` blocks (lag groups of x stay in
//     L2 for the re-read).
//   * Its stage-2 items trail its stage-1 items by `defer` blocks (issue 12e): a stage-2 item
//     waits for every stage-1 item of its group, which take longer than the grid needs to
//     hand out a block, so stage-2 items handed out right behind them (defer = 0, the order
//     before 12e) spun for most of a stage-1 item. With defer >= 1 the CTAs take the reduce
//     and apply items of `defer` blocks meanwhile. defer < lag keeps FC2(g) a whole block
//     before A(g), so that the apply items do not spin for the stage-2 items either.
//   * After the last group's R and FC1 (block ngroups - 1), the blocks hold only the apply
//     items of the last `lag` groups and the stage-2 items of the last `defer` groups.
// defer = 0 is the order before issue 12e: R(g) FC1(g) A(g - lag) FC2(g).
//
// Dependencies (what an item waits for): a stage-1 FC item of group g waits for the reduce
// items of g (through the "squeezed" flag the last of them raises), a stage-2 item for every
// stage-1 item of g; an apply item of g waits for every stage-2 item of g; a tail item for
// every stage-2 item. Each of them has a smaller ticket:
//   * FC1(g) follows R(g) in block g;
//   * FC2(g) is in block g + defer: after FC1(g) in block g when defer = 0, in a later block
//     otherwise;
//   * A(g) is in block g + lag > g + defer (defer < lag): a later block than FC2(g);
//   * the tail items come after every block.
// Deadlock-free for any grid: tickets are handed out in order, only running CTAs take them,
// and a CTA takes its next ticket only when its item is done (it never holds an unstarted
// ticket while it spins; no ticket prefetch). So the smallest ticket whose item is not done
// has been handed to a running CTA, and everything it waits for has a smaller ticket, so is
// done: it completes. By induction every item completes. (Reduce items never wait.) The grid
// is still capped at what is co-resident: CTAs that wait for a slot would only take tickets
// late. The C++ test program (check_schedule) checks every ticket of small schedules, the
// order above, and a simulation of 1, 2, 3 and 7 CTAs; orders that break it must fail there.
//
// Decoding: blocks come in five runs of equal-sized blocks, b in [0, defer): R FC1;
// [defer, lag): R FC1 FC2; [lag, ngroups): R FC1 A FC2; [ngroups, ngroups + defer): A FC2;
// [ngroups + defer, ngroups + lag): A. The runs are laid out as if every group were full
// ("virtual" tickets; v1..v4 end the first four runs); the short last group's R (in block
// ngroups - 1) and A (the very last block) are shorter by `skip` tickets: real tickets from
// skip_at on are shifted by skip, and virtual tickets from tail_at on are the tail. Computed on the host (make_schedule):
// kernel parameters, read from the constant bank (no registers held across the item loop).
struct Schedule {
  int64_t N, tiles, G, lag, tail, fc;
  int64_t fc1;      // stage-1 FC items of a group (the first fc1 of the fc)
  int64_t ngroups;  // ceil(N / G), kept (a kernel parameter, not a register)
  int64_t defer;    // blocks between a group's stage-1 and stage-2 items (0 <= defer < lag)
  int64_t v1, v2, v3, v4;  // virtual tickets: ends of the first four runs of blocks
  int64_t skip_at, skip;   // real tickets >= skip_at are virtual ticket + skip
  int64_t tail_at;         // virtual ticket of the first tail item
  int64_t ntotal;          // total(), kept (a kernel parameter, not a register)

  SE_HOST_DEVICE int64_t groups() const { return ngroups; }
  SE_HOST_DEVICE int64_t total() const { return ntotal; }
  // Tickets of group g's reduce items (equally, of its apply items).
  SE_HOST_DEVICE int64_t group_items(int64_t g) const { return group_size(N, G, g) * tiles; }

  SE_HOST_DEVICE Item decode(int64_t t) const {
    const int64_t T = tiles, full = G * T;  // reduce (or apply) items of a full group
    if (t >= skip_at) t += skip;
    if (t >= tail_at) return Item{kItemTail, 0, t - tail_at};
    // the run of blocks that holds t: its first ticket and block, and its block size
    int64_t start, b, size;
    if (t < v1) {
      start = 0, b = 0, size = full + fc1;                        // R FC1
    } else if (t < v2) {
      start = v1, b = defer, size = full + fc;                    // R FC1 FC2
    } else if (t < v3) {
      start = v2, b = lag, size = 2 * full + fc;                  // R FC1 A FC2
    } else if (t < v4) {
      start = v3, b = ngroups, size = full + fc - fc1;            // A FC2
    } else {
      start = v4, b = ngroups + defer, size = full;               // A
    }
    t -= start;
    const int64_t k = t / size;
    b += k;
    t -= k * size;
    // t is inside block b: R(b) FC1(b) when b < ngroups, A(b - lag) when b >= lag, FC2(b -
    // defer) when defer <= b < ngroups + defer (a run without FC2 has blocks that end before
    // it, so t never reaches the last line there)
    if (b < ngroups) {
      if (t < full) return Item{kItemReduce, b * G + t / T, t % T};
      t -= full;
      if (t < fc1) return Item{kItemFc, b * G, t};
      t -= fc1;
    }
    if (b >= lag) {
      if (t < full) return Item{kItemApply, (b - lag) * G + t / T, t % T};
      t -= full;
    }
    return Item{kItemFc, (b - defer) * G, fc1 + t};
  }
};

// The default `defer` (in groups) for a schedule whose lag is `lag` groups: halfway, lag / 2,
// so that the stage-1 -> stage-2 gap and the stage-2 -> apply gap are both about lag / 2
// blocks. lag is sized so that lag groups of re-read data fill 40% of L2 (plan_persistent_shape;
// ~24 MB on an H200): lag blocks read that much from HBM and write as much, ~11 us at 4.3 TB/s,
// so lag / 2 blocks are ~5 us, about a forward stage-1 item at conv5_x (tools/predict_cuda.py).
// Shorter where lag is clamped to the groups (small N). At lag = 1 it is 0 (the order before
// issue 12e).
SE_HOST_DEVICE int64_t default_defer(int64_t lag) { return lag / 2; }

// lag: in samples (the planner's unit); rounded up to whole groups, at least 1 group and at
// most every group. fc1, fc2: FC items per group of each stage (FcItems::n1, n2). defer: in
// groups, clamped to [0, lag - 1]; negative: default_defer.
inline Schedule make_schedule(int64_t N, int64_t tiles, int64_t G, int64_t lag, int64_t tail,
                              int64_t fc1, int64_t fc2, int64_t defer = -1) {
  Schedule s{};
  s.N = N;
  s.tiles = tiles;
  s.G = max64(G, 1);
  s.ngroups = ceil_div(N, s.G);
  s.lag = clamp64(ceil_div(max64(lag, 1), s.G), 1, max64(s.groups(), 1));
  s.tail = tail;
  s.fc1 = fc1;
  s.fc = fc1 + fc2;
  s.defer = clamp64(defer < 0 ? default_defer(s.lag) : defer, 0, s.lag - 1);
  s.ntotal = 2 * N * tiles + s.ngroups * s.fc + tail;
  const int64_t ng = s.ngroups, d = s.defer, L = s.lag, full = s.G * tiles;
  if (ng == 0) return s;  // no group: every ticket is a tail item (the ends stay 0)
  s.v1 = d * (full + fc1);
  s.v2 = s.v1 + (L - d) * (full + s.fc);
  s.v3 = s.v2 + (ng - L) * (2 * full + s.fc);
  s.v4 = s.v3 + d * (full + fc2);
  const int64_t v5 = s.v4 + (L - d) * full;
  // block ng - 1 is the last of the run [defer, lag) when lag = ng, else of [lag, ng)
  const int64_t last_block = s.v3 - (ng > L ? 2 * full + s.fc : full + s.fc);
  const int64_t last = s.group_items(ng - 1);
  s.skip_at = last_block + last;
  s.skip = full - last;
  s.tail_at = v5 - s.skip;
  return s;
}

// ---- FC row-block items of the persistent kernels ------------------------------------------

// Weight bytes one FC item streams (a target): large enough that an item is worth a ticket
// and a wait, small enough that a conv5_x FC (1 MiB in bf16) spreads over tens of CTAs.
constexpr int64_t kFcItemBytes = 32 << 10;

// A group's excitation cut into items of two stages: stage 1 (n1 items of b1 outputs each,
// the last may be short) waits for the group's squeeze; stage 2 (n2 items of b2 outputs)
// waits for every stage-1 item of the group. Forward: stage 1 = rows j of W1 (hpre, out1 =
// Cr outputs of C inputs), stage 2 = rows c of W2 (gpre and s, C outputs of Cr inputs).
// Backward: stage 1 = columns j of W2 (dh, Cr outputs of C inputs), stage 2 = columns c of
// W1 (dz, C outputs of Cr inputs). Each output is computed by one item: its sum order does
// not depend on the grid.
struct FcItems {
  int64_t b1, n1, b2, n2;
  SE_HOST_DEVICE int64_t count() const { return n1 + n2; }
};

// Outputs per item: about kFcItemBytes of weights (K inputs each), rounded to a multiple of
// `align` outputs where there are more (the backward's column blocks stay 16-byte wide runs),
// at most kThreads (the forward item keeps its sums in shared memory, one row per thread),
// at least one item per stage.
SE_HOST_DEVICE int64_t fc_block(int64_t outputs, int64_t K, int64_t esize, int64_t align,
                                int64_t item_bytes = kFcItemBytes) {
  int64_t b = max64(1, item_bytes / max64(K * esize, 1));
  if (b < outputs) b = round_up(b, align);
  return min64(min64(b, kThreads), max64(outputs, 1));
}

// item_bytes: an override (tests), or 0 for kFcItemBytes.
inline FcItems make_fc_items(int64_t C, int64_t Cr, int64_t esize, bool backward,
                             int64_t item_bytes = 0) {
  const int64_t align = backward ? max64(1, 16 / esize) : 1;
  if (item_bytes <= 0) item_bytes = kFcItemBytes;
  FcItems f{};
  f.b1 = fc_block(Cr, C, esize, align, item_bytes);
  f.n1 = ceil_div(Cr, f.b1);
  f.b2 = fc_block(C, Cr, esize, align, item_bytes);
  f.n2 = ceil_div(C, f.b2);
  return f;
}

// The tail items of the backward kernel: output tiles of dW2 (C x Cr), then of dW1 (Cr x C),
// then blocks of kGemmTile columns of db2 (C), then of db1 (Cr).
struct WeightGradItems {
  int64_t C, Cr;
  SE_HOST_DEVICE int64_t tiles_w2() const {
    return ceil_div(C, kGemmTile) * ceil_div(Cr, kGemmTile);
  }
  SE_HOST_DEVICE int64_t blocks_b2() const { return ceil_div(C, kGemmTile); }
  SE_HOST_DEVICE int64_t blocks_b1() const { return ceil_div(Cr, kGemmTile); }
  SE_HOST_DEVICE int64_t count() const { return 2 * tiles_w2() + blocks_b2() + blocks_b1(); }
};

// ---- the cluster kernel --------------------------------------------------------------------

// Byte offsets into the cluster kernel's dynamic shared memory (each 16-byte aligned):
//   slab    G samples x Cc channels x HW pixels of x, in x's layout ([Cc][HW] or [HW][Cc])
//   hpart   G x Cr  this CTA's part of the first FC, read by the whole cluster (DSMEM)
//   scratch         per-thread partials of the NHWC reduction  } the same bytes: scratch dies
//   h       G x Cr  the hidden vector, summed over the cluster } with the squeeze, h is born after
//   z       G x Cc  the squeeze of this CTA's channels          } the same bytes: z dies with the
//   s       G x Cc  the gate of this CTA's channels             } first FC, s is born in the second
// (accumulation type for all but the slab).
struct ClusterSmem {
  int64_t slab, z, s, hpart, h, scratch, total;
};

// C: all channels (the last CTA owns C - (K - 1) Cc of them).
SE_HOST_DEVICE ClusterSmem cluster_smem(int64_t G, int64_t C, int64_t Cc, int64_t K, int64_t HW,
                                        int64_t Cr, int64_t esize, int64_t asize, bool nhwc,
                                        int64_t vec) {
  ClusterSmem m{};
  int64_t o = 0;
  m.slab = o;
  o += round_up(G * Cc * HW * esize, 16);
  m.hpart = o;
  o += round_up(G * Cr * asize, 16);
  m.scratch = m.h = o;
  const int64_t scratch =
      nhwc ? round_up(nhwc_scratch_elems2(Cc, C - (K - 1) * Cc, vec) * asize, 16) : 0;
  o += max64(scratch, round_up(G * Cr * asize, 16));
  m.z = m.s = o;
  o += round_up(G * Cc * asize, 16);
  m.total = o;
  return m;
}

// A cluster shape: K CTAs per cluster share G samples; CTA r owns channels [r Cc, r Cc + Cc).
struct ClusterShape {
  int K = 0, G = 0;
  int64_t Cc = 0, smem = 0;
  bool ok = false;
};

struct ClusterLimits {
  int64_t smem_per_block;  // opt-in shared memory per block (bytes)
  int64_t smem_per_sm;     // shared memory per SM (bytes)
  int64_t sms;             // multiprocessors
  int max_k;               // 8, or 16 where non-portable cluster sizes are allowed
};

// Cc for K CTAs, or 0 when some CTA would get no channel or a too-wide NHWC row.
SE_HOST_DEVICE int64_t cluster_channels(int64_t C, int K, int64_t vec, bool nhwc) {
  const int64_t Cc = K == 1 ? C : round_up(ceil_div(C, K), vec);  // one CTA: no padding
  if ((K - 1) * Cc >= C) return 0;
  if (nhwc && Cc / vec > kThreads) return 0;
  return Cc;
}

inline ClusterShape cluster_shape(int64_t C, int64_t HW, int64_t Cr, int64_t esize,
                                  int64_t asize, bool nhwc, int64_t vec, int K, int G,
                                  const ClusterLimits& lim) {
  ClusterShape s;
  if (K < 1 || K > lim.max_k || G < 1 || G > kMaxGroup) return s;
  s.K = K;
  s.G = G;
  s.Cc = cluster_channels(C, K, vec, nhwc);
  if (s.Cc == 0) return s;
  s.smem = cluster_smem(G, C, s.Cc, K, HW, Cr, esize, asize, nhwc, vec).total;
  s.ok = s.smem <= lim.smem_per_block;
  return s;
}

// Weight bytes one CTA of a cluster reads: W1[:, own] and W2[own, :], Cc channels each.
SE_HOST_DEVICE int64_t cluster_weight_bytes_per_cta(int64_t Cr, int64_t Cc, int64_t esize) {
  return 2 * Cr * Cc * esize;
}

// The cap on cluster_weight_bytes_per_cta: at most the CTA's share of the slab, or 64 KiB
// (the weights of one CTA stream at the latency of a single SM: a CTA that reads much more
// weight than slab finishes long after the others).
constexpr int64_t kClusterWeightFloor = 64 << 10;
SE_HOST_DEVICE int64_t cluster_weight_cap(int64_t G, int64_t Cc, int64_t HW, int64_t esize) {
  return max64(kClusterWeightFloor, G * Cc * HW * esize);
}

// The heuristic (tune on a GPU; benchmarks/cuda_paths.py --sweep-cluster tries every shape):
//  * few samples (fewer clusters of 8 than SMs): each sample as wide as possible, the largest
//    K that fits, for latency;
//  * otherwise G, samples per cluster, so that the weights (read once per cluster) cost at
//    most half the slab: G_want = ceil(2 |W| / slab), at most kMaxGroup and N; then, G from
//    G_want down and K from 1 up, the first shape whose CTAs fit two per SM (one can load
//    while the other stores), that puts a CTA on every SM (K x clusters >= #SMs: shrinking G
//    first, since a smaller G only costs weight re-reads from L2) and whose CTAs each read at
//    most cluster_weight_cap bytes of weights. Failing that (float32 conv5_x), of the shapes
//    that fit two per SM and fill the SMs the one whose CTAs read the fewest weight bytes
//    (the first in the order above among equals), then the first without the SM count, then
//    the first shape that fits at all.
inline ClusterShape plan_cluster(int64_t N, int64_t C, int64_t HW, int64_t Cr, int64_t esize,
                                 int64_t asize, bool nhwc, int64_t vec, int64_t weight_bytes,
                                 const ClusterLimits& lim) {
  const int ks[] = {1, 2, 4, 8, 16};
  if (N * 8 < lim.sms) {
    for (int i = 4; i >= 0; --i) {
      ClusterShape s = cluster_shape(C, HW, Cr, esize, asize, nhwc, vec, ks[i], 1, lim);
      if (s.ok) return s;
    }
    return ClusterShape{};
  }
  const int64_t slab = C * HW * esize;
  const int64_t g_want = min64(clamp64(ceil_div(2 * weight_bytes, max64(slab, 1)), 1, kMaxGroup),
                               max64(N, 1));
  const int64_t half = lim.smem_per_sm / 2 - 1024;  // the runtime reserves 1 KiB per CTA
  // rule 0: two per SM, every SM busy, weights capped; 1: without the cap, fewest weight
  // bytes per CTA; 2: without the SM count; 3: fits at all
  for (int rule = 0; rule < 4; ++rule) {
    ClusterShape best{};
    for (int64_t G = g_want; G >= 1; --G)
      for (int k : ks) {
        ClusterShape s = cluster_shape(C, HW, Cr, esize, asize, nhwc, vec, k, int(G), lim);
        if (!s.ok) continue;
        if (rule < 3 && s.smem > half) continue;
        if (rule < 2 && k * ceil_div(N, G) < lim.sms) continue;
        if (rule < 1 &&
            cluster_weight_bytes_per_cta(Cr, s.Cc, esize) > cluster_weight_cap(G, s.Cc, HW, esize))
          continue;
        if (rule != 1) return s;
        if (!best.ok || cluster_weight_bytes_per_cta(Cr, s.Cc, esize) <
                            cluster_weight_bytes_per_cta(Cr, best.Cc, esize))
          best = s;
      }
    if (best.ok) return best;
  }
  return ClusterShape{};
}

// ---- shared memory of the persistent kernels (elements of the accumulation type) -----------

inline int64_t nhwc_tile_scratch(const Tiles& t, int64_t vec) {
  return t.nhwc ? nhwc_scratch_elems2(t.tc, t.C - (t.ncb - 1) * t.tc, vec) : 0;
}

// Inputs per row the forward FC items stage at once (fc.cuh kFcItemChunk), as shared memory is
// sized for them: 2048 for bfloat16 (a conv5_x stage-1 item's whole K), kFcChunk for half
// (its max-squeeze kernels spilled with the wide staging), float and double.
SE_HOST_DEVICE constexpr int64_t fc_item_chunk(bool bf16) { return bf16 ? 2048 : kFcChunk; }

// bf16: x is bfloat16 (the FC items' chunk, fc_item_chunk). At G = 8 in bf16 the FC items
// take 8 x (2048 + 512) x 4 bytes = 80 KiB: two CTAs still fit an SM of sm_80 (164 KiB) and
// sm_90 (228 KiB), but only one fits the 100 KiB of an sm_86/sm_89 SM (A10, L4, L40, RTX
// 30/40, which run the sm_80 code): correct, with half the warps in flight there; the other
// types take 32 KiB at most (review of 12e).
inline int64_t persistent_forward_smem_elems(const Tiles& t, int64_t G, int64_t vec,
                                             bool bf16) {
  int64_t e = t.tc;                              // the gate of an apply tile
  e = max64(e, nhwc_tile_scratch(t, vec));       // the NHWC reduction
  // FC items: input staging (zero-padded rows) and the item's sums (<= kThreads rows)
  e = max64(e, fc_item_rows(G) * (fc_item_chunk(bf16) + kThreads));
  return e;
}

inline int64_t persistent_backward_smem_elems(const Tiles& t, int64_t G, int64_t vec) {
  int64_t e = 3 * t.tc;                               // s, coef, z of a write tile
  e = max64(e, t.nhwc ? 2 * nhwc_tile_scratch(t, vec) + t.tc : 0);  // NHWC reductions, z
  // FC items: the weight stage (then the column partials) + the input staging
  e = max64(e, kFcStageElems + min64(max64(G, 1), kMaxGroup) * kFcChunk);
  e = max64(e, 2 * int64_t(kGemmK) * kGemmTile);               // weight-gradient tiles
  return e;
}

// The shape of a persistent launch (se_cuda.cu adds occupancy, grid and workspace).
struct PersistentShape {
  int64_t G;      // samples per FC group
  Tiles tiles;
  int64_t smem;   // dynamic shared memory, bytes
  int64_t lag;    // samples between a sample's reduce and apply items (before clamping)
};

// tile_bytes and lag: overrides, or 0 for the defaults:
//  * G: the weights, read once per group, cost at most half a group's slab;
//  * tiles of about 1/16 of the batch's bytes per SM, 8 to 64 KiB, and small enough that
//    the tiles in flight (one per CTA, 2 CTAs per SM: the most the kernels are compiled for
//    outside float64) take at most 15% of L2;
//  * lag: the larger of (a) 40% of L2 holds what the apply (or write) items re-read: x
//    (forward); dy and x, and y with the residual (backward); (b) G + the samples in flight
//    (ceil(CTAs x tile / slab)): the reduce items handed out just before an apply item may
//    still be running, so an apply item that trails them by less spins on its group's flag.
inline PersistentShape plan_persistent_shape(int64_t N, int64_t C, int64_t HW, int64_t Cr,
                                             bool nhwc, int64_t esize, int64_t asize,
                                             int64_t vec, int64_t row_align, bool backward,
                                             bool residual, int64_t sms, int64_t l2_bytes,
                                             int64_t tile_bytes, int64_t lag, bool bf16) {
  PersistentShape s{};
  const int64_t slab = max64(C * HW * esize, 1);
  const int64_t weight_bytes = 2 * C * Cr * esize;
  s.G = min64(clamp64(ceil_div(2 * weight_bytes, slab), 1, kMaxGroup), max64(N, 1));
  const int64_t ctas = 2 * max64(sms, 1);  // an upper bound of the grid (occupancy comes later)
  if (tile_bytes <= 0) {
    tile_bytes = clamp64(N * slab / (16 * max64(sms, 1)), 8 << 10, 64 << 10);
    tile_bytes = max64(8 << 10, min64(tile_bytes, (l2_bytes * 3 / 20) / ctas));
  }
  s.tiles = make_tiles(C, HW, nhwc, max64(1, tile_bytes / esize), vec, row_align);
  const int64_t elems = backward ? persistent_backward_smem_elems(s.tiles, s.G, vec)
                                 : persistent_forward_smem_elems(s.tiles, s.G, vec, bf16);
  s.smem = round_up(elems * asize, 16);
  const int64_t streams = backward ? (residual ? 3 : 2) : 1;
  if (lag > 0) {
    s.lag = lag;
  } else {
    const int64_t tile = s.tiles.tc * s.tiles.tp * esize;
    const int64_t in_flight = s.G + ceil_div(ctas * tile, slab);
    s.lag = max64(max64(1, (l2_bytes * 2 / 5) / (slab * streams)), in_flight);
  }
  return s;
}

}  // namespace cuda_plan
}  // namespace se_kernels

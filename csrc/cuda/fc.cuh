// CTA-wide matrix-vector products of the excitation (the two FCs and their backward) for a
// group of G <= kMaxGroup samples at once, so that each weight element is read once per
// group, and the batch-summed weight gradients. Accumulation in acc_t<T>; every sum runs in
// a fixed order (bitwise reproducible); every function is called by all threads of the CTA.
#pragma once

#include <type_traits>

#include "device.cuh"

namespace se_kernels {
namespace cuda {

using cuda_plan::kFcChunk;
using cuda_plan::kFcStageElems;
using cuda_plan::kGemmK;
using cuda_plan::kGemmTile;
using cuda_plan::kMaxGroup;

// emit(i, v) for i < count: v combines (sum, or NaN-propagating max) the nb values
// addr(i)[b * stride], b < nb, written earlier in this launch (read through L2). Groups of L
// lanes share an i when nb is large (a long sequential loop of dependent L2 reads would
// stall), each lane a strided subset of b, then a butterfly: a fixed order.
template <bool kMax, typename A, typename Addr, typename Emit>
__device__ __forceinline__ void combine_strided(int64_t count, int64_t nb, int64_t stride,
                                                Addr&& addr, Emit&& emit) {
  const int L = cuda_plan::lanes_for(nb);
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int64_t base = 0; base < count; base += groups) {
    const int64_t i = base + sub;
    A v = identity<kMax, A>();
    if (i < count) {
      const A* p = addr(i);
#pragma unroll 4
      for (int64_t b = sl; b < nb; b += L) v = combine<kMax>(v, load_cg(p + b * stride));
    }
    v = group_reduce<kMax>(v, L);
    if (i < count && sl == 0) emit(i, v);
  }
}

// Calls f(std::integral_constant<int, GP>{}) with GP in {1, 2, 4, 8}, the smallest >= G: the
// FC loops run over a compile-time number of samples (register accumulators, no `g < G`
// branch between the weight loads); samples G..GP-1 read sample G-1's vector (its results
// are dropped), so no staging buffer needs padding.
template <typename F>
__device__ __forceinline__ void with_group(int G, F&& f) {
  static_assert(kMaxGroup == 8, "with_group covers 1, 2, 4, 8");
  if (G <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (G <= 2) {
    f(std::integral_constant<int, 2>{});
  } else if (G <= 4) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

// Issues L2 prefetches for `rows` rows of n elements, row r at p + r * ld: one per 128-byte
// line (the last byte of a row included, whatever the alignment). A hint; no data moves to
// the SM, nothing waits for it.
template <typename T>
__device__ __forceinline__ void prefetch_l2_rows(const T* p, int64_t ld, int rows, int n) {
  if (rows <= 0 || n <= 0) return;
  const int64_t bytes = int64_t(n) * int64_t(sizeof(T));
  const int lines = int((bytes + 127) / 128) + 1;
  for (int i = threadIdx.x; i < rows * lines; i += kThreads) {
    const int r = i / lines, l = i - (i / lines) * lines;
    const char* row = reinterpret_cast<const char*>(p + int64_t(r) * ld);
    const char* a = row + (int64_t(l) * 128 < bytes ? int64_t(l) * 128 : bytes - 1);
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(a));
  }
}

// 16-byte weight loads for the 16-bit types only: the float cluster kernel already needs all
// 64 registers (two CTAs per SM), and the 4-register packs made it spill; float keeps the
// element loads (its FCs are 2x the bytes of bf16 anyway, and bf16 is the target dtype).
template <typename T>
constexpr int kFcVec = sizeof(T) == 2 ? kVec<T> : 1;

// Lanes that share a row of K weights in rows_dot: about 4 16-byte vectors per lane.
template <typename T>
__host__ __device__ __forceinline__ int fc_lanes(int64_t K) {
  return cuda_plan::lanes_for(cuda_plan::ceil_div(K, int64_t(kFcVec<T>)));
}

// out(g, r) = sum_{k < K} M[r * ldm + k] * v[g * ldv + k] for rows r < R and samples g < G.
// Rows of M are contiguous: groups of L lanes share a row (coalesced), rows go round the
// groups. A row always belongs to the same lane group for a given L, so callers that
// accumulate over chunks of k through emit may read back what they wrote. v: shared memory.
// emit(g, r, value) is called by the group's first lane.
// Weight loads: when every row start is 16-byte aligned, each lane loads 16 bytes a step and
// issues kFcUnroll such loads before it uses the first (latency-bound otherwise: a CTA alone
// streams a group's weights); the K % VEC tail, or every element when rows are not aligned,
// goes element by element. The sum order depends on L, K and the alignment only: fixed for a
// call site (bitwise reproducible).
// fc_unroll<GP, T>(): 16-byte weight loads in flight per lane in rows_dot: kFcUnroll for
// 16-bit types and up to 2 samples, else 2, and 1 for float with 8 samples (a pack is 4
// registers whatever T: the packs and the GP accumulators must fit the 64 registers of two
// CTAs per SM without spilling; ptxas -v, tools/check_build_log.py).
constexpr int kFcUnroll = 4;
template <int GP, typename T>
constexpr int fc_unroll() {
  return sizeof(T) == 4 ? (GP >= 8 ? 1 : 2) : (GP <= 2 ? kFcUnroll : 2);
}


// Samples G..GP-1 read sample G - 1's row of v (their results are dropped).
template <int GP, typename T, typename A, typename Emit>
__device__ __forceinline__ void rows_dot_g(const T* M, int64_t ldm, int R, int K, const A* v,
                                           int ldv, int G, int L, Emit&& emit) {
  constexpr int VEC = kFcVec<T>;
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  const uintptr_t row_bytes = uintptr_t(ldm * int64_t(sizeof(T)));
  const bool vec_ok = VEC > 1 && ((reinterpret_cast<uintptr_t>(M) | row_bytes) % 16) == 0;
  const int nv = vec_ok ? K / VEC : 0;  // full vectors per row
  const int kv = nv * VEC;              // elements covered by them
  constexpr int U = fc_unroll<GP, T>();
  int vo[GP];  // offset of sample g's vector in v
#pragma unroll
  for (int g = 0; g < GP; ++g) vo[g] = (g < G ? g : G - 1) * ldv;
  for (int rb = 0; rb < R; rb += groups) {
    const int r = rb + sub;
    A acc[GP];
#pragma unroll
    for (int g = 0; g < GP; ++g) acc[g] = A(0);
    if (r < R) {
      const T* m = M + int64_t(r) * ldm;
      if constexpr (VEC > 1) {
        // U 16-byte loads in flight, then their FMAs
        int j = sl;
        for (; j + (U - 1) * L < nv; j += U * L) {
          Pack<T, VEC> w[U];
#pragma unroll
          for (int u = 0; u < U; ++u) w[u] = load_pack<VEC>(m + (j + u * L) * VEC);
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int k0 = (j + u * L) * VEC;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const A we = to_acc(w[u].v[e]);
#pragma unroll
              for (int g = 0; g < GP; ++g) acc[g] += we * v[vo[g] + k0 + e];
            }
          }
        }
        for (; j < nv; j += L) {
          const Pack<T, VEC> w = load_pack<VEC>(m + j * VEC);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const A we = to_acc(w.v[e]);
#pragma unroll
            for (int g = 0; g < GP; ++g) acc[g] += we * v[vo[g] + j * VEC + e];
          }
        }
      }
      // the elements past the full vectors (all of them when rows are not aligned)
#pragma unroll 4
      for (int k = kv + sl; k < K; k += L) {
        const A w = to_acc(m[k]);
#pragma unroll
        for (int g = 0; g < GP; ++g) acc[g] += w * v[vo[g] + k];
      }
    }
#pragma unroll
    for (int g = 0; g < GP; ++g) acc[g] = group_reduce<false>(acc[g], L);
    if (r < R && sl == 0) {
#pragma unroll
      for (int g = 0; g < GP; ++g)
        if (g < G) emit(g, r, acc[g]);
    }
  }
}

// Samples per pass (cuda_plan::kFcPass, 2) and 16-byte weight loads in flight per lane (4)
// of the persistent kernels' FC items (rows_dot_padded): the kernels are at 64 registers
// (two CTAs per SM); 4 samples a pass (or the 1/2/4 variants of with_group, or 2 or 3 loads
// in flight) spilled in some half/bf16/float instantiation (ptxas -v, sm_80 / sm_90a). The
// item's weights spread over the CTA's lanes (fc_item_lanes) and over many CTAs (FcItems).
using cuda_plan::kFcPass;
constexpr int kFcItemUnroll = 4;

// The FC loop of the persistent kernels' FC items: out(g, r) = sum_{k < K} M[r ldm + k] *
// v[g LDV + k] for rows r < R and the GP samples staged in v (shared memory, LDV a
// compile-time stride: no per-sample offset registers; rows G..GP-1 of v are zeros, so no
// `g < G` branch sits between the weight loads). L lanes share a row; rows go round the
// groups of L lanes, and a row always belongs to the same lanes for a given L (callers that
// accumulate over chunks of k through emit read back what the same lane wrote). emit(g, r,
// value) for g < G, by the group's first lane. Weight loads as rows_dot_g: 16 bytes when the
// rows are aligned (16-bit T), kFcItemUnroll of them in flight per lane; the sum order
// depends on L, K and the alignment only (bitwise reproducible, whatever the grid).
template <int GP, int LDV, typename T, typename A, typename Emit>
__device__ __forceinline__ void rows_dot_padded(const T* M, int ldm, int R, int K,
                                                const A* v, int G, int L, Emit&& emit) {
  constexpr int VEC = kFcVec<T>;
  constexpr int U = kFcItemUnroll;
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  const uintptr_t row_bytes = uintptr_t(ldm) * sizeof(T);
  const bool vec_ok = VEC > 1 && ((reinterpret_cast<uintptr_t>(M) | row_bytes) % 16) == 0;
  const int nv = vec_ok ? K / VEC : 0;  // full vectors per row
  const int kv = nv * VEC;              // elements covered by them
  for (int rb = 0; rb < R; rb += groups) {
    const int r = rb + sub;
    A acc[GP];
#pragma unroll
    for (int g = 0; g < GP; ++g) acc[g] = A(0);
    if (r < R) {
      const T* m = M + int64_t(r) * ldm;
      if constexpr (VEC > 1) {
        int j = sl;
        for (; j + (U - 1) * L < nv; j += U * L) {  // U 16-byte loads in flight, then the FMAs
          Pack<T, VEC> w[U];
#pragma unroll
          for (int u = 0; u < U; ++u) w[u] = load_pack<VEC>(m + (j + u * L) * VEC);
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const A* vk = v + (j + u * L) * VEC;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const A we = to_acc(w[u].v[e]);
#pragma unroll
              for (int g = 0; g < GP; ++g) acc[g] += we * vk[g * LDV + e];
            }
          }
        }
        for (; j < nv; j += L) {
          const Pack<T, VEC> w = load_pack<VEC>(m + j * VEC);
          const A* vk = v + j * VEC;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const A we = to_acc(w.v[e]);
#pragma unroll
            for (int g = 0; g < GP; ++g) acc[g] += we * vk[g * LDV + e];
          }
        }
      }
      // the elements past the full vectors (all of them when rows are not aligned)
#pragma unroll 2
      for (int k = kv + sl; k < K; k += L) {
        const A w = to_acc(m[k]);
#pragma unroll
        for (int g = 0; g < GP; ++g) acc[g] += w * v[g * LDV + k];
      }
    }
#pragma unroll
    for (int g = 0; g < GP; ++g) acc[g] = group_reduce<false>(acc[g], L);
    if (r < R && sl == 0) {
#pragma unroll
      for (int g = 0; g < GP; ++g)
        if (g < G) emit(g, r, acc[g]);
    }
  }
}

// Inputs staged per row, at once, by the forward FC items (forward_persistent.cu): a conv5_x
// stage-1 item's whole K = C = 2048 in bfloat16 (issue 12e: one staging round and more
// weight loads per lane in flight, instead of 4 chunks of 512, each a staging round and a
// round of weight loads); kFcChunk for the other types: half keeps 12a's staging (the new
// one made its max-squeeze kernels spill), float and double gain little (element loads of
// the weights). Shared memory: cuda_plan::persistent_forward_smem_elems (fc_item_chunk).
template <typename T>
constexpr int kFcItemChunk = int(cuda_plan::fc_item_chunk(std::is_same_v<T, __nv_bfloat16>));

// Lanes per row in an FC item of R rows of K (<= kFcItemChunk<T> per pass) elements: enough
// that the item's rows occupy the CTA (R L >= kThreads where the rows are long enough), at most
// a warp, and no more than keep kFcItemUnroll 16-byte vectors a lane (lanes_for's ~4
// vectors a lane when that already fills the CTA).
template <typename T>
__host__ __device__ __forceinline__ int fc_item_lanes(int64_t R, int64_t K) {
  constexpr int64_t KC = kFcItemChunk<T>;
  const int64_t nv = cuda_plan::ceil_div(K < KC ? K : KC, int64_t(kFcVec<T>));
  int l = cuda_plan::lanes_for(nv);
  while (l > 1 && R * (l / 2) >= kThreads) l /= 2;  // the rows alone fill the CTA
  // more lanes only while each keeps kFcItemUnroll vectors: with fewer, rows_dot_padded's
  // unrolled loop never runs and its remainder loop has one load in flight (R = 8 rows of 64
  // vectors: 32 lanes of 2 vectors were 2 serial L2 round trips a chunk; 16 lanes of 4 are one)
  while (l < 32 && R * l < kThreads && 2 * l * kFcItemUnroll <= nv) l *= 2;
  return l;
}

// The element-load product with a run-time G (per-sample branches): float's rows_dot in the
// cluster kernel, which is at the 64-register limit of two CTAs per SM. The compile-time
// group sizes (per-size accumulators and sample offsets) made it spill there, whatever the
// unroll; float is not the target type of the cluster path's speed (bfloat16 is).
template <typename T, typename A, typename Emit>
__device__ __forceinline__ void rows_dot_runtime_g(const T* M, int64_t ldm, int R, int K,
                                                   const A* v, int ldv, int G, int L,
                                                   Emit&& emit) {
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < R; rb += groups) {
    const int r = rb + sub;
    A acc[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) acc[g] = A(0);
    if (r < R) {
      const T* m = M + int64_t(r) * ldm;
#pragma unroll 2
      for (int k = sl; k < K; k += L) {
        const A w = to_acc(m[k]);
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g)
          if (g < G) acc[g] += w * v[g * ldv + k];
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) acc[g] = group_reduce<false>(acc[g], L);
    if (r < R && sl == 0) {
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < G) emit(g, r, acc[g]);
    }
  }
}

// v: G rows at stride ldv.
template <typename T, typename A, typename Emit>
__device__ __forceinline__ void rows_dot(const T* M, int64_t ldm, int R, int K, const A* v,
                                         int ldv, int G, int L, Emit&& emit) {
  if constexpr (sizeof(T) == 4) {
    rows_dot_runtime_g(M, ldm, R, K, v, ldv, G, L, emit);
  } else {
    with_group(G, [&](auto gp) {
      rows_dot_g<decltype(gp)::value>(M, ldm, R, K, v, ldv, G, L, emit);
    });
  }
}

// out(g, j) = sum_{r < R} M[r * ldm + j] * v[g * ldv + r] for columns j < NC and g < G:
// the transposed product, the backward's FC items (a block of NC columns of a row-major
// matrix: M offset to the block's first column, ldm the matrix's column count).
//  * Weights: the block is copied to shared memory stage by stage (as many rows as fit
//    kFcStageElems: the whole block for the plan's ~kFcItemBytes items), with 16-byte
//    cp.async copies (every copy of a stage in flight at once, no register held while they
//    fly) when M and every row start are 16-byte aligned and NC % VEC == 0, else element by
//    element. (With aligned rows, ldm % VEC == 0, and the plan's column blocks start on
//    multiples of VEC, so a short last block is whole vectors too: the element copies are
//    for unaligned rows, or a caller's NC that is not whole vectors.)
//  * v (G rows at stride ldv) is global, written earlier in this launch by this CTA or
//    another, so read through L2 (ld.global.cg); it is staged kFcChunk rows at a time, with
//    kVLoads loads in flight per thread (ceil(G nr / (kVLoads kThreads)) round trips a
//    chunk). The first chunk's loads fly together with the stage's weight copies. (16-byte
//    cp.async copies of v, or 8 loads in flight, made kernels spill: ptxas -v, sm_90a.)
//  * Threads own columns; when there are fewer than kThreads columns, `slices` threads
//    share a column and split its rows: slice s adds rows 4q..4q+3 for q = s, s + slices, ...
//    of each chunk (16-byte reads of the staged v rows), then rows 4 (nr / 4) + s, + slices,
//    ... of the chunk's last nr % 4; the slices' partials are added in slice order. The sum
//    order depends on NC, R and sizeof(T) only: bitwise reproducible, whatever the grid.
// smem: kFcStageElems (the weight stage; afterwards the column partials, kThreads *
// kMaxGroup <= kFcStageElems) + G * kFcChunk elements of A. emit(g, j, value), once per (g,
// j). Every thread of the CTA calls it; shared memory is free on entry (a barrier since any
// thread's last use of it) and on return, and no cp.async is left in flight.
template <typename T, typename A, typename Emit>
__device__ __forceinline__ void cols_dot_staged(const T* M, int64_t ldm, int R, int NC,
                                                const A* v, int64_t ldv, int G, A* smem,
                                                Emit&& emit) {
  constexpr int VEC = 16 / int(sizeof(T));  // weight elements per 16-byte copy
  constexpr int VA = 16 / int(sizeof(A));   // v elements per 16-byte shared read
  constexpr int kStage = kFcStageElems * int(sizeof(A)) / int(sizeof(T));  // T elements
  constexpr int kVLoads = 4;  // v loads in flight per thread (8 spilled)
  static_assert(kThreads * kMaxGroup <= kFcStageElems, "the partials fit the weight stage");
  static_assert(kStage / kThreads >= 1, "a stage holds a row of kThreads columns");
  static_assert(kFcChunk % 4 == 0 && 4 % VA == 0, "chunks and row quads start 16-byte aligned");
  T* ws = reinterpret_cast<T*>(smem);  // [rows of the stage][ncols]
  A* red = smem;                       // [G][slices][ncols], once the last stage is consumed
  A* vs = smem + kFcStageElems;        // [G][kFcChunk]
  const bool w_aligned = ((reinterpret_cast<uintptr_t>(M) |
                           uintptr_t(ldm) * uintptr_t(sizeof(T))) % 16) == 0;
  for (int cb = 0; cb < NC; cb += kThreads) {
    const int ncols = NC - cb < kThreads ? NC - cb : kThreads;
    const int slices = kThreads / ncols;
    const int col = threadIdx.x % ncols, slice = threadIdx.x / ncols;
    const bool active = slice < slices;
    // 16-byte weight copies: cb is a multiple of kThreads, so of VEC; each row run is
    // ncols / VEC whole vectors, and ws's rows (ncols elements) stay 16-byte aligned
    const bool w_vec = w_aligned && ncols % VEC == 0;
    const int nv = ncols / VEC;
    const int srows = kStage / ncols;  // rows per weight stage
    A acc[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) acc[g] = A(0);
    for (int s0 = 0; s0 < R; s0 += srows) {
      const int ns = R - s0 < srows ? R - s0 : srows;
      // the previous stage (and the previous chunk of vs) is consumed; at s0 == 0 the entry
      // (shared memory free: the caller's barrier, fc_item_wait's) or the previous column
      // block's last barrier already says so
      if (s0 > 0) __syncthreads();
      const T* m = M + int64_t(s0) * ldm + cb;
      if (w_vec) {
        for (int i = threadIdx.x; i < ns * nv; i += kThreads) {
          const int r = i / nv, k = i - (i / nv) * nv;
          cp_async16(ws + r * ncols + k * VEC, m + int64_t(r) * ldm + k * VEC);
        }
      } else {  // unaligned rows, or a block width that is not whole vectors
#pragma unroll 4
        for (int i = threadIdx.x; i < ns * ncols; i += kThreads) {
          const int r = i / ncols, k = i - (i / ncols) * ncols;
          ws[i] = m[int64_t(r) * ldm + k];
        }
      }
      for (int r0 = 0; r0 < ns; r0 += kFcChunk) {
        const int nr = ns - r0 < kFcChunk ? ns - r0 : kFcChunk;
        if (r0 > 0) __syncthreads();  // the previous chunk of vs is consumed
        const A* vr = v + s0 + r0;
        // the thread's flat indices i = g nr + r (i = threadIdx.x + k kThreads) stepped
        // without a division per element: kThreads = dg nr + dr (two divisions a chunk)
        const int dg = kThreads / nr, dr = kThreads - dg * nr;
        int g = int(threadIdx.x) / nr, r = int(threadIdx.x) - g * nr;
        for (int i0 = 0; i0 < G * nr; i0 += kVLoads * kThreads) {  // kVLoads loads, then stores
          A t[kVLoads];
          int o[kVLoads];  // offset in vs, or -1 past the last sample
#pragma unroll
          for (int u = 0; u < kVLoads; ++u) {
            o[u] = g < G ? g * kFcChunk + r : -1;
            t[u] = g < G ? load_cg(vr + g * ldv + r) : A(0);
            g += dg;
            r += dr;
            if (r >= nr) {
              r -= nr;
              ++g;
            }
          }
#pragma unroll
          for (int u = 0; u < kVLoads; ++u)
            if (o[u] >= 0) vs[o[u]] = t[u];
        }
        cp_async_wait_all();  // this thread's weight copies of the stage have landed (a
        __syncthreads();      // no-op after the first chunk); the barrier shows all to all
        if (active) {
          const T* w = ws + r0 * ncols + col;
          const int nq = nr / 4;
          for (int q = slice; q < nq; q += slices) {
            A wq[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) wq[u] = to_acc(w[(4 * q + u) * ncols]);
#pragma unroll
            for (int g = 0; g < kMaxGroup; ++g) {
              if (g < G) {
                // rows 4q..4q+3 of sample g: 16 bytes (float) or 2 x 16 bytes (double)
                const A* vg = vs + g * kFcChunk + 4 * q;
#pragma unroll
                for (int h = 0; h < 4 / VA; ++h) {
                  const Pack<A, VA> vq = load_pack<VA>(vg + h * VA);
#pragma unroll
                  for (int u = 0; u < VA; ++u) acc[g] += wq[h * VA + u] * vq.v[u];
                }
              }
            }
          }
          // the chunk's last nr % 4 rows
          for (int r = 4 * nq + slice; r < nr; r += slices) {
            const A wv = to_acc(w[r * ncols]);
#pragma unroll
            for (int g = 0; g < kMaxGroup; ++g)
              if (g < G) acc[g] += wv * vs[g * kFcChunk + r];
          }
        }
      }
    }
    __syncthreads();  // every thread is done with ws: the partials take its place
    if (active) {
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < G) red[(g * slices + slice) * ncols + col] = acc[g];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * ncols; i += kThreads) {
      const int g = i / ncols, j = i - (i / ncols) * ncols;
      A s = A(0);
      for (int sl = 0; sl < slices; ++sl) s += red[(g * slices + sl) * ncols + j];
      emit(g, cb + j, s);
    }
    __syncthreads();  // red is free again
  }
}

// threadIdx.x read afresh (volatile: the compiler cannot hoist what is derived from it out of
// the persistent kernels' item loop, where the staging indices of gemm_tn_tile, kept live
// across every item, made the max-squeeze backward kernels spill; ptxas -v).
__device__ __forceinline__ int fresh_tid() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
  return t;
}

// Stages kc inputs of rows g < G of `in` (row g at in + g ld; global, written earlier in this
// launch by other CTAs: read through L2) into v[g LDV + k], k < kc, and zeros into rows
// G..GR-1; called by every thread, followed by a barrier before v is read. 16-byte cp.async
// copies, every one of the CTA in flight at once (no registers held), when in and ld keep
// every row 16-byte aligned (kc is then a multiple of the vector: K and LDV are); else
// element by element. Sizes: G <= GR <= kMaxGroup, kc <= LDV.
template <int LDV, typename A>
__device__ __forceinline__ void stage_rows_padded(const A* in, int ld, int G, int GR, int kc,
                                                  A* v) {
  constexpr int VA = 16 / int(sizeof(A));
  static_assert(LDV % VA == 0, "staged rows start 16-byte aligned");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (reinterpret_cast<uintptr_t>(in) % 16 == 0 && ld % VA == 0) {
    // row by row, not unrolled: a copy holds no register once issued, an unrolled loop's
    // addresses would; the thread index read afresh (fresh_tid): the kernels are at 64
    // registers, and values derived from threadIdx.x were hoisted out of the item loop and
    // spilled (ptxas -v)
    const int nv = kc / VA;  // kc is a multiple of VA here (K = ld and LDV are)
#pragma unroll 1
    for (int g = 0; g < G; ++g)
#pragma unroll 1
      for (int q = fresh_tid(); q < nv; q += kThreads)
        cp_async16_noclobber(v + g * LDV + q * VA, in + g * ld + q * VA);
    for (int g = G; g < GR; ++g)
      for (int k = fresh_tid(); k < kc; k += kThreads) v[g * LDV + k] = A(0);
    cp_async_wait_all();
    return;
  }
#endif
  // element by element (rows not 16-byte aligned: odd K, or pre-sm_80 code)
  for (int g = 0; g < GR; ++g)
    for (int k = fresh_tid(); k < kc; k += kThreads)
      v[g * LDV + k] = g < G ? load_cg(in + g * ld + k) : A(0);
}


// One kGemmTile x kGemmTile tile (mt, qt) of out (M x Q, row-major, type T):
//   out[m, q] = sum_{n < N} Am[n, m] * Bm[n, q]
// Am (N x M) and Bm (N x Q) are global, in the accumulation type, written earlier in this
// launch (read through L2). Each thread owns 2 x 4 outputs and adds n in order 0..N-1.
// smem: 2 * kGemmK * kGemmTile elements.
template <typename T, typename A>
__device__ __forceinline__ void gemm_tn_tile(const A* Am, const A* Bm, int64_t N, int M, int Q,
                                             int mt, int qt, T* out, A* smem) {
  static_assert(kThreads == 512 && kGemmTile == 64, "thread layout: 32 x 16 threads, 2 x 4 each");
  A* As = smem;
  A* Bs = smem + kGemmK * kGemmTile;
  const int m0 = mt * kGemmTile, q0 = qt * kGemmTile;
  const int tid = fresh_tid();  // not hoisted out of the persistent kernels' item loop
  const int tm = tid / 16, tq = tid % 16;
  A acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (int64_t n0 = 0; n0 < N; n0 += kGemmK) {
    __syncthreads();
    for (int i = fresh_tid(); i < kGemmK * kGemmTile; i += kThreads) {
      const int k = i / kGemmTile, c = i % kGemmTile;
      const int64_t n = n0 + k;
      As[i] = (n < N && m0 + c < M) ? load_cg(Am + n * M + m0 + c) : A(0);
      Bs[i] = (n < N && q0 + c < Q) ? load_cg(Bm + n * Q + q0 + c) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kGemmK; ++k) {
      const A a0 = As[k * kGemmTile + tm * 2], a1 = As[k * kGemmTile + tm * 2 + 1];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A b = Bs[k * kGemmTile + tq * 4 + j];
        acc[0][j] += a0 * b;
        acc[1][j] += a1 * b;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + tm * 2 + i, q = q0 + tq * 4 + j;
      if (m < M && q < Q) out[int64_t(m) * Q + q] = from_acc<T>(acc[i][j]);
    }
  __syncthreads();  // smem is free again
}

// out[m] = sum_{n < N} Am[n, m] for the kGemmTile columns of block `block`: 8 threads per
// column add strided subsets of the rows, then their partials are added in order.
// smem: kThreads elements.
template <typename T, typename A>
__device__ __forceinline__ void column_sums(const A* Am, int64_t N, int M, int block, T* out,
                                            A* smem) {
  constexpr int kSlices = kThreads / kGemmTile;
  const int col = threadIdx.x % kGemmTile, slice = threadIdx.x / kGemmTile;
  const int m = block * kGemmTile + col;
  A s = A(0);
  if (m < M) {
#pragma unroll 4
    for (int64_t n = slice; n < N; n += kSlices) s += load_cg(Am + n * M + m);
  }
  smem[slice * kGemmTile + col] = s;
  __syncthreads();
  if (slice == 0 && m < M) {
    A t = A(0);
#pragma unroll
    for (int k = 0; k < kSlices; ++k) t += smem[k * kGemmTile + col];
    out[m] = from_acc<T>(t);
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace se_kernels

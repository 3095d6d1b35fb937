// CTA-wide matrix-vector products of the excitation (the two FCs and their backward) for a
// group of G <= kMaxGroup samples at once, so that each weight element is read once per
// group, and the batch-summed weight gradients. Accumulation in acc_t<T>; every sum runs in
// a fixed order (bitwise reproducible); every function is called by all threads of the CTA.
#pragma once

#include "device.cuh"

namespace se_kernels {
namespace cuda {

using cuda_plan::kFcChunk;
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

// out(g, r) = sum_{k < K} M[r * ldm + k] * v[g * ldv + k] for rows r < R and samples g < G.
// Rows of M are contiguous: groups of L lanes share a row (coalesced), rows go round the
// groups. A row always belongs to the same lane group for a given L, so callers that
// accumulate over chunks of k through emit may read back what they wrote. v: shared memory.
// emit(g, r, value) is called by the group's first lane.
template <typename T, typename A, typename Emit>
__device__ __forceinline__ void rows_dot(const T* M, int64_t ldm, int R, int K, const A* v,
                                         int ldv, int G, int L, Emit&& emit) {
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

// out(g, j) = sum_{r < R} M[r * ldm + j] * v[g * ldv + r] for columns j < NC and g < G:
// the transposed product. Threads own columns (coalesced reads of M's rows); when there are
// fewer than kThreads columns, `slices` threads share a column and split its rows, and their
// partials are added in slice order. v is global (written earlier by this CTA or another:
// read through L2) and is staged in shared memory kFcChunk rows at a time.
// smem: G * kFcChunk + kThreads * kMaxGroup elements. emit(g, j, value), once per (g, j).
template <typename T, typename A, typename Emit>
__device__ __forceinline__ void cols_dot(const T* M, int64_t ldm, int R, int NC, const A* v,
                                         int64_t ldv, int G, A* smem, Emit&& emit) {
  A* vs = smem;
  A* red = smem + G * kFcChunk;
  for (int cb = 0; cb < NC; cb += kThreads) {
    const int ncols = NC - cb < kThreads ? NC - cb : kThreads;
    const int slices = kThreads / ncols;
    const int col = threadIdx.x % ncols, slice = threadIdx.x / ncols;
    const bool active = slice < slices;
    A acc[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) acc[g] = A(0);
    for (int r0 = 0; r0 < R; r0 += kFcChunk) {
      const int nr = R - r0 < kFcChunk ? R - r0 : kFcChunk;
      __syncthreads();  // the previous chunk is consumed
      for (int i = threadIdx.x; i < G * nr; i += kThreads) {
        const int g = i / nr, r = i - (i / nr) * nr;
        vs[g * kFcChunk + r] = load_cg(v + g * ldv + r0 + r);
      }
      __syncthreads();
      if (active) {
        const T* m = M + int64_t(r0) * ldm + cb + col;
#pragma unroll 2
        for (int r = slice; r < nr; r += slices) {
          const A w = to_acc(m[int64_t(r) * ldm]);
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g)
            if (g < G) acc[g] += w * vs[g * kFcChunk + r];
        }
      }
    }
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
    __syncthreads();  // red and vs are free again
  }
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
  const int tm = threadIdx.x / 16, tq = threadIdx.x % 16;
  A acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (int64_t n0 = 0; n0 < N; n0 += kGemmK) {
    __syncthreads();
    for (int i = threadIdx.x; i < kGemmK * kGemmTile; i += kThreads) {
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

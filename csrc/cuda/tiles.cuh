// CTA-wide operations on one tile of a sample's slab, shared by the cluster and persistent
// kernels. A tile is a block of channels x pixels read either from global memory or from the
// slab the cluster kernel keeps in shared memory.
//
//   NCHW: `rows` channel rows of `len` contiguous pixels, row r at src + r * rs. Groups of L
//         lanes (a power of two, ~4 vectors per lane) share a row; rows go round the groups.
//   NHWC: `np` pixels of `nc` contiguous channels, pixel q at src + q * ps. For reductions a
//         thread owns one vector column (VEC channels) and a phase of the pixels; partials
//         meet through warp shuffles and shared memory (NhwcMap). Element-wise passes run flat.
//
// VEC is the elements per access: 16 bytes' worth (kVec<T>) when every row/pixel start is
// 16-byte aligned and len / nc are multiples of it (the planner's `vec` flag), else 1.
// Every reduction runs in a fixed order: results are bitwise reproducible.
// Every function is called by all threads of the CTA (they contain warp shuffles/barriers).
#pragma once

#include <cstring>

#include "device.cuh"

namespace se_kernels {
namespace cuda {

// ---- NCHW rows -----------------------------------------------------------------------------

// emit(r, v): v = sum (or max) of row r.
template <bool kMax, int VEC, typename T, typename Emit>
__device__ __forceinline__ void reduce_rows(const T* src, int64_t rs, int rows, int len,
                                            Emit&& emit) {
  using A = acc_t<T>;
  const int nv = len / VEC;
  const int L = cuda_plan::lanes_for(nv);
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    A acc = identity<kMax, A>();
    if (r < rows) {
      const T* p = src + int64_t(r) * rs;
      A a[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) a[e] = identity<kMax, A>();
#pragma unroll 4
      for (int k = sl; k < nv; k += L) {
        const Pack<T, VEC> v = load_pack<VEC>(p + int64_t(k) * VEC);
#pragma unroll
        for (int e = 0; e < VEC; ++e) a[e] = combine<kMax>(a[e], to_acc(v.v[e]));
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc = combine<kMax>(acc, a[e]);
    }
    acc = group_reduce<kMax>(acc, L);
    if (r < rows && sl == 0) emit(r, acc);
  }
}

// The gradient flowing into x * s: dy, or dy masked where the fused relu was off (y <= 0;
// NaN passes), as csrc/cpu/se_cpu.cpp.
template <bool kRes, typename A>
__device__ __forceinline__ A upstream(A dy, A y) {
  if constexpr (kRes) {
    return y <= A(0) ? A(0) : dy;
  } else {
    return dy;
  }
}

// emit(r, ds, cnt): ds = sum over the row of g * x; cnt = #(x == zr[r]) (max squeeze only),
// counted in uint32 (exact past 2^24 ties, where a float count stops growing).
template <bool kMax, bool kRes, int VEC, typename T, typename Emit>
__device__ __forceinline__ void grad_reduce_rows(const T* dy, const T* x, const T* y, int64_t rs,
                                                 int rows, int len, const acc_t<T>* zr,
                                                 Emit&& emit) {
  using A = acc_t<T>;
  const int nv = len / VEC;
  const int L = cuda_plan::lanes_for(nv);
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    A ds = A(0);
    unsigned cnt = 0u;
    if (r < rows) {
      const int64_t o = int64_t(r) * rs;
      const A zv = kMax ? zr[r] : A(0);
#pragma unroll 2
      for (int k = sl; k < nv; k += L) {
        const int64_t i = o + int64_t(k) * VEC;
        const Pack<T, VEC> vd = load_pack<VEC>(dy + i);
        const Pack<T, VEC> vx = load_pack<VEC>(x + i);
        Pack<T, VEC> vy;
        if constexpr (kRes) vy = load_pack<VEC>(y + i);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const A xv = to_acc(vx.v[e]);
          const A g = upstream<kRes>(to_acc(vd.v[e]), kRes ? to_acc(vy.v[e]) : A(0));
          ds += g * xv;
          if constexpr (kMax) cnt += xv == zv ? 1u : 0u;
        }
      }
    }
    ds = group_reduce<false>(ds, L);
    if constexpr (kMax) cnt = group_reduce<false>(cnt, L);
    if (r < rows && sl == 0) emit(r, ds, cnt);
  }
}

// ---- NCHW spans of rows whose starts are not 16-byte aligned --------------------------------
//
// A tile of `rows` rows of `len` pixels that lie back to back in memory (whole rows, np ==
// H*W, or a single row) is one contiguous span of rows * len elements, even when a row start
// is not 16-byte aligned (H*W = 196, 49 in half/bfloat16; odd C). The span passes below read
// it with 16-byte vectors at the aligned addresses that cover it: groups of L lanes share a
// row as in reduce_rows and walk the aligned vectors that overlap the row; a lane keeps only
// the elements of its own row (a vector straddling two rows is loaded by both rows' groups,
// the second time mostly from L1). The span's partial first and last vectors (a tile start
// or end inside a 16-byte vector) are read element by element, so nothing outside the span
// is touched. Each row's sum is taken in a fixed order (per lane: its vectors in order, the
// elements of a vector in order; then the lanes' butterfly): bitwise reproducible, and
// independent of the grid. The tensors the span passes read must share their address modulo
// 16 bytes (the callers ask for 16-byte aligned base pointers); the misalignment of the
// span's start is taken from the first tensor's pointer.

// 16-byte load through the read-only data path: for tensors no thread writes during the
// launch (x, dy, y of the reduce items). Its SASS form, LDG.E.128.CONSTANT, is what
// tools/check_sass.py looks for to tell that the span reduce is vectorised.
// (Other sizes: a plain load; the float64 instantiations, which never run the span passes.)
template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack_ro(const T* p) {
  if constexpr (sizeof(Pack<T, N>) == 16) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    Pack<T, N> r;
    memcpy(&r, &u, 16);
    return r;
  } else {
    return load_pack<N>(p);
  }
}

// The span's geometry (cuda_plan::Span) from its first element's address, and the lanes
// that share a row.
template <int VEC>
struct SpanGeom {
  cuda_plan::Span sp;
  int m, L;
  template <typename T>
  __device__ __forceinline__ SpanGeom(const T* p, int rows, int len) {
    m = int((reinterpret_cast<uintptr_t>(p) / sizeof(T)) % VEC);
    sp = cuda_plan::make_span(m, rows, len, VEC);
    L = cuda_plan::span_lanes(len, VEC);
  }
};

// Calls f(k) for the span's partial vectors that overlap row [a0, a0 + len): each at most
// once, in a fixed order.
template <int VEC, typename F>
__device__ __forceinline__ void span_partials(const SpanGeom<VEC>& sg, int a0, int len, F&& f) {
  for (int which = 0; which < 2; ++which) {
    const int k = cuda_plan::span_row_partial(sg.sp, a0, len, VEC, which);
    if (k >= 0) f(k);
  }
}

// emit(r, v): v = sum (or max) of row r. As reduce_rows, for a span (see above): per lane,
// U whole vectors in flight (every load issued, no branch between them), then lane 0 adds
// the span's partial vectors element by element.
template <bool kMax, int VEC, typename T, typename Emit>
__device__ __forceinline__ void reduce_span(const T* src, int rows, int len, Emit&& emit) {
  using A = acc_t<T>;
  constexpr int U = 2;
  const SpanGeom<VEC> sg(src, rows, len);
  const T* base = src - sg.m;  // 16-byte aligned; only dereferenced inside the span
  const int L = sg.L;
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    // one accumulator (not one per vector element as reduce_rows) and U = 2: with U = 4
    // the bf16 NCHW (and float max) forward kernels spilled 16-68 bytes under their
    // 64-register cap (sm_90a), with VEC accumulators or one
    A acc = identity<kMax, A>();
    if (r < rows) {
      const int a0 = sg.m + r * len;  // the row: vector elements [a0, a0 + len)
      int lo, hi;  // its whole vectors
      cuda_plan::span_row_whole(sg.sp, a0, len, VEC, lo, hi);
      for (int k0 = lo + sl; k0 < hi; k0 += U * L) {
        // every load is issued (an index past hi re-reads the row's last whole vector, an
        // L1 hit, and is not used): a predicated load left v[u] undefined on one side, and
        // ptxas kept it in a 16-byte stack slot (12-14 bytes of spills in the bf16 NCHW
        // forward kernels once the FC items joined them)
        Pack<T, VEC> v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int k = k0 + u * L < hi ? k0 + u * L : hi - 1;
          v[u] = load_pack_ro<VEC>(base + k * VEC);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int i = (k0 + u * L) * VEC - a0;  // the vector's first element in the row
          if (k0 + u * L < hi) {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
              if (unsigned(i + e) < unsigned(len)) acc = combine<kMax>(acc, to_acc(v[u].v[e]));
          }
        }
      }
      if (sl == 0)
        span_partials(sg, a0, len, [&](int k) {
#pragma unroll
          for (int e = 0; e < VEC; ++e)
            if (unsigned(k * VEC + e - a0) < unsigned(len))
              acc = combine<kMax>(acc, to_acc(base[k * VEC + e]));
        });
    }
    acc = group_reduce<kMax>(acc, L);
    if (r < rows && sl == 0) emit(r, acc);
  }
}

// emit(r, ds, cnt) as grad_reduce_rows, for a span (see above). One vector of each tensor
// in flight per lane (U = 1: dy, x and y, 32-48 bytes a thread, 32 KB or more per SM at two
// CTAs; U = 2 made 12 of the 16 NCHW half/bf16/float backward kernels spill 16-290 bytes
// under their 64-register cap, sm_90a). dy, x and y (kRes) share their offsets and their
// address modulo 16 bytes.
template <bool kMax, bool kRes, int VEC, typename T, typename Emit>
__device__ __forceinline__ void grad_reduce_span(const T* dy, const T* x, const T* y, int rows,
                                                 int len, const acc_t<T>* zr, Emit&& emit) {
  using A = acc_t<T>;
  constexpr int U = 1;
  const SpanGeom<VEC> sg(x, rows, len);
  const T* bd = dy - sg.m;  // 16-byte aligned; only dereferenced inside the span
  const T* bx = x - sg.m;
  const T* by = kRes ? y - sg.m : nullptr;
  const int L = sg.L;
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    A ds = A(0);
    unsigned cnt = 0u;
    if (r < rows) {
      const int a0 = sg.m + r * len;
      int lo, hi;
      cuda_plan::span_row_whole(sg.sp, a0, len, VEC, lo, hi);
      const A zv = kMax ? zr[r] : A(0);
      auto add = [&](A dv, A xv, A yv) {
        const A g = upstream<kRes>(dv, yv);
        ds += g * xv;
        if constexpr (kMax) cnt += xv == zv ? 1u : 0u;
      };
      for (int k0 = lo + sl; k0 < hi; k0 += U * L) {
        Pack<T, VEC> vd[U], vx[U], vy[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (k0 + u * L < hi) {
            const int i = (k0 + u * L) * VEC;
            vd[u] = load_pack_ro<VEC>(bd + i);
            vx[u] = load_pack_ro<VEC>(bx + i);
            if constexpr (kRes) vy[u] = load_pack_ro<VEC>(by + i);
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int i = (k0 + u * L) * VEC - a0;
          if (k0 + u * L < hi) {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
              if (unsigned(i + e) < unsigned(len))  // else another row's element
                add(to_acc(vd[u].v[e]), to_acc(vx[u].v[e]), kRes ? to_acc(vy[u].v[e]) : A(0));
          }
        }
      }
      if (sl == 0)
        span_partials(sg, a0, len, [&](int k) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int i = k * VEC + e;
            if (unsigned(i - a0) < unsigned(len))
              add(to_acc(bd[i]), to_acc(bx[i]), kRes ? to_acc(by[i]) : A(0));
          }
        });
    }
    ds = group_reduce<false>(ds, L);
    if constexpr (kMax) cnt = group_reduce<false>(cnt, L);
    if (r < rows && sl == 0) emit(r, ds, cnt);
  }
}

// y = x * s[r], or relu(x * s[r] + residual). x, residual and y share the offsets.
template <bool kRes, int VEC, typename T>
__device__ __forceinline__ void scale_rows(const T* x, const T* res, T* y, int64_t rs, int rows,
                                           int len, const acc_t<T>* s) {
  using A = acc_t<T>;
  const int nv = len / VEC;
  const int L = cuda_plan::lanes_for(nv);
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    if (r >= rows) continue;
    const A sv = s[r];
    const int64_t o = int64_t(r) * rs;
#pragma unroll 2
    for (int k = sl; k < nv; k += L) {
      const int64_t i = o + int64_t(k) * VEC;
      const Pack<T, VEC> vx = load_pack<VEC>(x + i);
      Pack<T, VEC> vr, out;
      if constexpr (kRes) vr = load_pack<VEC>(res + i);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        A v = to_acc(vx.v[e]) * sv;
        if constexpr (kRes) v = relu(v + to_acc(vr.v[e]));
        out.v[e] = from_acc<T>(v);
      }
      store_pack<VEC>(y + i, out);
    }
  }
}

// dx = g * s[r] + coef[r] (avg) or g * s[r] + [x == zr[r]] * coef[r] (max); dres = g.
template <bool kMax, bool kRes, int VEC, typename T>
__device__ __forceinline__ void grad_write_rows(const T* dy, const T* x, const T* y, T* dx,
                                                T* dres, int64_t rs, int rows, int len,
                                                const acc_t<T>* s, const acc_t<T>* coef,
                                                const acc_t<T>* zr) {
  using A = acc_t<T>;
  const int nv = len / VEC;
  const int L = cuda_plan::lanes_for(nv);
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int rb = 0; rb < rows; rb += groups) {
    const int r = rb + sub;
    if (r >= rows) continue;
    const A sv = s[r], cv = coef[r], zv = kMax ? zr[r] : A(0);
    const int64_t o = int64_t(r) * rs;
#pragma unroll 2
    for (int k = sl; k < nv; k += L) {
      const int64_t i = o + int64_t(k) * VEC;
      const Pack<T, VEC> vd = load_pack<VEC>(dy + i);
      Pack<T, VEC> vx, vy, out, og;
      if constexpr (kMax) vx = load_pack<VEC>(x + i);
      if constexpr (kRes) vy = load_pack<VEC>(y + i);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const A g = upstream<kRes>(to_acc(vd.v[e]), kRes ? to_acc(vy.v[e]) : A(0));
        A d;
        if constexpr (kMax) {
          // mask * coef as arithmetic, so that 0 * inf gives NaN as the reference does
          d = g * sv + (to_acc(vx.v[e]) == zv ? A(1) : A(0)) * cv;
        } else {
          d = g * sv + cv;
        }
        out.v[e] = from_acc<T>(d);
        if constexpr (kRes) og.v[e] = from_acc<T>(g);
      }
      store_pack<VEC>(dx + i, out);
      if constexpr (kRes) store_pack<VEC>(dres + i, og);
    }
  }
}

// The same two passes over a contiguous NCHW span of `len` elements (whole rows: channel
// c = element / HW), as one flat run of vectors: full 16-byte vectors even when rows are not
// 16-byte aligned (H*W = 49, 196 in bfloat16), as long as the span is (len % VEC == 0).
// x may be global or the cluster's shared slab; the other tensors share y's offsets.
template <bool kRes, int VEC, typename T>
__device__ __forceinline__ void scale_flat(const T* xs, const T* res, T* y, int len, int HW,
                                           const acc_t<T>* s) {
  using A = acc_t<T>;
  const int nv = len / VEC;
#pragma unroll 2
  for (int i = threadIdx.x; i < nv; i += kThreads) {
    const int e0 = i * VEC;
    int c = e0 / HW;
    int r = e0 - c * HW;
    const Pack<T, VEC> vx = load_pack<VEC>(xs + e0);
    Pack<T, VEC> vr, out;
    if constexpr (kRes) vr = load_pack<VEC>(res + e0);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      A v = to_acc(vx.v[e]) * s[c];
      if constexpr (kRes) v = relu(v + to_acc(vr.v[e]));
      out.v[e] = from_acc<T>(v);
      if (++r == HW) {
        r = 0;
        ++c;
      }
    }
    store_pack<VEC>(y + e0, out);
  }
}

template <bool kMax, bool kRes, int VEC, typename T>
__device__ __forceinline__ void grad_write_flat(const T* dy, const T* x, const T* y, T* dx,
                                                T* dres, int len, int HW, const acc_t<T>* s,
                                                const acc_t<T>* coef, const acc_t<T>* zr) {
  using A = acc_t<T>;
  const int nv = len / VEC;
#pragma unroll 2
  for (int i = threadIdx.x; i < nv; i += kThreads) {
    const int e0 = i * VEC;
    int c = e0 / HW;
    int r = e0 - c * HW;
    const Pack<T, VEC> vd = load_pack<VEC>(dy + e0);
    Pack<T, VEC> vx, vy, out, og;
    if constexpr (kMax) vx = load_pack<VEC>(x + e0);
    if constexpr (kRes) vy = load_pack<VEC>(y + e0);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const A g = upstream<kRes>(to_acc(vd.v[e]), kRes ? to_acc(vy.v[e]) : A(0));
      A d;
      if constexpr (kMax) {
        d = g * s[c] + (to_acc(vx.v[e]) == zr[c] ? A(1) : A(0)) * coef[c];
      } else {
        d = g * s[c] + coef[c];
      }
      out.v[e] = from_acc<T>(d);
      if constexpr (kRes) og.v[e] = from_acc<T>(g);
      if (++r == HW) {
        r = 0;
        ++c;
      }
    }
    store_pack<VEC>(dx + e0, out);
    if constexpr (kRes) store_pack<VEC>(dres + e0, og);
  }
}

// ---- NHWC ----------------------------------------------------------------------------------

// emit(c, v) for c < nc, where v combines column c of scratch (P rows, row stride `stride`):
// groups of L lanes per column, each lane a strided subset of the rows, then a butterfly.
template <bool kMax, typename A, typename Emit>
__device__ __forceinline__ void combine_columns(const A* scratch, int P, int nc, int stride,
                                                Emit&& emit) {
  int L = 1;
  while (L < 32 && 2 * L <= P) L *= 2;
  const int groups = kThreads / L;
  const int sub = threadIdx.x / L, sl = threadIdx.x % L;
  for (int cb = 0; cb < nc; cb += groups) {
    const int c = cb + sub;
    A r = identity<kMax, A>();
    if (c < nc)
      for (int q = sl; q < P; q += L) r = combine<kMax>(r, scratch[q * stride + c]);
    r = group_reduce<kMax>(r, L);
    if (c < nc && sl == 0) emit(c, r);
  }
}

// The thread mapping of the NHWC reductions, as cuda_plan::nhwc_rows counts it: a tile of
// nc channels is V = nc / VEC vector columns.
//   V <= 32: a warp holds 32 / Vp pixel phases of Vp columns (Vp the power of two >= V; lanes
//            with v >= V idle), adds its phases with shuffles and leaves one row per warp;
//   V > 32:  thread t owns column t % V of phase t / V (kThreads / V phases, one row each).
struct NhwcMap {
  int V, v, pp, P, rows, row, Vp;  // row: where this thread's partials go (-1: nowhere)
  __device__ __forceinline__ NhwcMap(int nc, int vec) {
    V = nc / vec;
    if (V <= 32) {
      Vp = 1;
      while (Vp < V) Vp *= 2;
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
      v = lane & (Vp - 1);
      pp = warp * (32 / Vp) + lane / Vp;
      P = kThreads / Vp;
      rows = kThreads / 32;
      row = (lane < Vp && v < V) ? warp : -1;
    } else {
      Vp = 0;
      v = threadIdx.x % V;
      pp = threadIdx.x / V;
      P = kThreads / V;
      rows = P;
      row = pp < P ? pp : -1;
    }
  }
  __device__ __forceinline__ bool active() const { return v < V && pp < P; }
};

// Combines a thread's partials over the pixel phases of its warp (V <= 32; every lane calls).
template <bool kMax, typename A>
__device__ __forceinline__ A warp_phase_reduce(A a, int Vp) {
  for (int off = Vp; off < 32; off *= 2) a = combine<kMax>(a, __shfl_xor_sync(0xffffffffu, a, off));
  return a;
}

// emit(c, v): v = sum (or max) of channel c over np pixels. nc / VEC <= kThreads.
// scratch: cuda_plan::nhwc_scratch_elems(nc, VEC) elements.
template <bool kMax, int VEC, typename T, typename Emit>
__device__ __forceinline__ void reduce_nhwc(const T* src, int64_t ps, int np, int nc,
                                            acc_t<T>* scratch, Emit&& emit) {
  using A = acc_t<T>;
  if (nc <= 0) return;  // uniform
  const NhwcMap m(nc, VEC);
  const int stride = nc | 1;  // odd: the column reads of combine_columns avoid bank conflicts
  A a[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) a[e] = identity<kMax, A>();
  if (m.active()) {
    const T* p = src + m.v * VEC;
#pragma unroll 4
    for (int q = m.pp; q < np; q += m.P) {
      const Pack<T, VEC> vv = load_pack<VEC>(p + int64_t(q) * ps);
#pragma unroll
      for (int e = 0; e < VEC; ++e) a[e] = combine<kMax>(a[e], to_acc(vv.v[e]));
    }
  }
  if (m.Vp > 0) {  // uniform
#pragma unroll
    for (int e = 0; e < VEC; ++e) a[e] = warp_phase_reduce<kMax>(a[e], m.Vp);
  }
  if (m.row >= 0) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) scratch[m.row * stride + m.v * VEC + e] = a[e];
  }
  __syncthreads();
  combine_columns<kMax>(scratch, m.rows, nc, stride, emit);
  __syncthreads();
}

// emit_ds(c, ds) and emit_cnt(c, cnt) (max only; cnt a uint32) over np pixels; zc: z of the
// nc channels.
// scratch: 2 * cuda_plan::nhwc_scratch_elems(nc, VEC) + nc elements.
template <bool kMax, bool kRes, int VEC, typename T, typename EmitDs, typename EmitCnt>
__device__ __forceinline__ void grad_reduce_nhwc(const T* dy, const T* x, const T* y, int64_t ps,
                                                 int np, int nc, const acc_t<T>* zc,
                                                 acc_t<T>* scratch, EmitDs&& emit_ds,
                                                 EmitCnt&& emit_cnt) {
  using A = acc_t<T>;
  if (nc <= 0) return;  // uniform
  const NhwcMap m(nc, VEC);
  const int stride = nc | 1;
  A* sc_ds = scratch;
  unsigned* sc_cnt = reinterpret_cast<unsigned*>(scratch + m.rows * stride);  // A-sized slots
  // Two pixels in flight, except with max squeeze, whose 2 x VEC accumulators (and the
  // residual's third load) leave no registers for a second pixel under 64 a thread.
  constexpr int kUnroll = kMax ? 1 : 2;
  A ds[VEC];
  unsigned cnt[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    ds[e] = A(0);
    cnt[e] = 0u;
  }
  // z of the tile's channels, staged after the two partial arrays (read from shared memory
  // in the loop: no registers held for it)
  A* zs = scratch + 2 * m.rows * stride;
  if constexpr (kMax) {
    for (int i = threadIdx.x; i < nc; i += kThreads) zs[i] = zc[i];
    __syncthreads();
  }
  if (m.active()) {
#pragma unroll kUnroll
    for (int q = m.pp; q < np; q += m.P) {
      const int64_t i = int64_t(q) * ps + m.v * VEC;
      const Pack<T, VEC> vd = load_pack<VEC>(dy + i);
      const Pack<T, VEC> vx = load_pack<VEC>(x + i);
      Pack<T, VEC> vy;
      if constexpr (kRes) vy = load_pack<VEC>(y + i);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const A xv = to_acc(vx.v[e]);
        const A g = upstream<kRes>(to_acc(vd.v[e]), kRes ? to_acc(vy.v[e]) : A(0));
        ds[e] += g * xv;
        if constexpr (kMax) cnt[e] += xv == zs[m.v * VEC + e] ? 1u : 0u;
      }
    }
  }
  if (m.Vp > 0) {  // uniform
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      ds[e] = warp_phase_reduce<false>(ds[e], m.Vp);
      if constexpr (kMax) cnt[e] = warp_phase_reduce<false>(cnt[e], m.Vp);
    }
  }
  if (m.row >= 0) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      sc_ds[m.row * stride + m.v * VEC + e] = ds[e];
      if constexpr (kMax) sc_cnt[m.row * stride + m.v * VEC + e] = cnt[e];
    }
  }
  __syncthreads();
  combine_columns<false>(sc_ds, m.rows, nc, stride, emit_ds);
  if constexpr (kMax) combine_columns<false>(sc_cnt, m.rows, nc, stride, emit_cnt);
  __syncthreads();
}

// y = x * s[c] (+ residual, relu) over np pixels x nc channels; x at xs with pixel stride
// xps (global or the cluster's shared slab), residual and y at pixel stride gps.
template <bool kRes, int VEC, typename T>
__device__ __forceinline__ void scale_nhwc(const T* xs, int64_t xps, const T* res, T* y,
                                           int64_t gps, int np, int nc, const acc_t<T>* s) {
  using A = acc_t<T>;
  if (nc <= 0) return;
  const int V = nc / VEC;
  const int total = np * V;  // a tile: < 2^31 elements
#pragma unroll 2
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const int q = i / V, v = i - (i / V) * V;
    const Pack<T, VEC> vx = load_pack<VEC>(xs + int64_t(q) * xps + v * VEC);
    const int64_t go = int64_t(q) * gps + v * VEC;
    Pack<T, VEC> vr, out;
    if constexpr (kRes) vr = load_pack<VEC>(res + go);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      A val = to_acc(vx.v[e]) * s[v * VEC + e];
      if constexpr (kRes) val = relu(val + to_acc(vr.v[e]));
      out.v[e] = from_acc<T>(val);
    }
    store_pack<VEC>(y + go, out);
  }
}

// dx = g * s[c] + coef[c] (avg) or + [x == zc[c]] * coef[c] (max); dres = g. Pixel stride ps.
template <bool kMax, bool kRes, int VEC, typename T>
__device__ __forceinline__ void grad_write_nhwc(const T* dy, const T* x, const T* y, T* dx,
                                                T* dres, int64_t ps, int np, int nc,
                                                const acc_t<T>* s, const acc_t<T>* coef,
                                                const acc_t<T>* zc) {
  using A = acc_t<T>;
  if (nc <= 0) return;
  const int V = nc / VEC;
  const int total = np * V;
#pragma unroll 2
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const int q = i / V, v = i - (i / V) * V;
    const int64_t o = int64_t(q) * ps + v * VEC;
    const Pack<T, VEC> vd = load_pack<VEC>(dy + o);
    Pack<T, VEC> vx, vy, out, og;
    if constexpr (kMax) vx = load_pack<VEC>(x + o);
    if constexpr (kRes) vy = load_pack<VEC>(y + o);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int c = v * VEC + e;
      const A g = upstream<kRes>(to_acc(vd.v[e]), kRes ? to_acc(vy.v[e]) : A(0));
      A d;
      if constexpr (kMax) {
        d = g * s[c] + (to_acc(vx.v[e]) == zc[c] ? A(1) : A(0)) * coef[c];
      } else {
        d = g * s[c] + coef[c];
      }
      out.v[e] = from_acc<T>(d);
      if constexpr (kRes) og.v[e] = from_acc<T>(g);
    }
    store_pack<VEC>(dx + o, out);
    if constexpr (kRes) store_pack<VEC>(dres + o, og);
  }
}

}  // namespace cuda
}  // namespace se_kernels

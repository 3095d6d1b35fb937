// The fused SE block on the CPU: se_kernels::se_forward and se_backward for the CPU key.
//
// Samples are processed in groups small enough that the group's activations stay in
// cache (kCacheBudgetBytes). For each group, three parallel phases:
//
//   forward:  squeeze  z = avg|max over H*W           (reads x from memory)
//             excite   hpre, gpre, s = gate(...)      (weights read once per group)
//             scale    y = x*s [relu(y + residual)]   (re-reads x from cache)
//   backward: reduce   ds = sum g*x [, tie counts]    (g = dy, masked by y > 0 with residual)
//             excite   FC backward, weight grads accumulated over the batch
//             write    dx = g*s + dz/HW (avg) or routed to the maxima (max), dres = g
//
// NCHW and NHWC (channels_last) are read in place. Everything accumulates in float32
// (float64 for float64 inputs) with at::vec::Vectorized; every reduction runs in a fixed
// order, so results do not depend on the thread count's chunking of the work and the
// weight gradients are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "se_kernels/checks.h"
#include "se_kernels/options.h"

namespace se_kernels {
namespace cpu {
namespace {

using at::vec::Vectorized;

template <typename T>
using acc_t = at::opmath_type<T>;
template <typename T>
using AccVec = Vectorized<acc_t<T>>;

// A group's activations should fit in this many bytes of cache per thread (about half of an
// L2 of 2 MiB: the weights and the output pass through it too). Measured on a 2-core Xeon
// (docs/perf-notes.md): 1 MiB beat 256 KiB, 1.5 MiB and 4 MiB at conv3_x/conv4_x shapes.
constexpr int64_t kCacheBudgetBytes = int64_t(1) << 20;
// Outputs of at least this many bytes are written with streaming stores: they would leave
// the cache before anyone reads them, and streaming skips the read-for-ownership of each line
// (measured: conv3_x N=1 fp32 192 -> 142 us; neutral at conv2_x and conv5_x). Smaller outputs
// stay in cache for the next layer.
constexpr int64_t kStreamMinBytes = int64_t(1) << 20;
// Elements a parallel task should own, so that thread start-up stays small beside the work.
constexpr int64_t kGrainElems = int64_t(1) << 15;
// Channels per task when reducing a channels_last slab.
constexpr int64_t kChannelBlock = 64;
// The second pass over an NCHW slab runs backwards in chunks of this many elements (a
// multiple of a cache line in every dtype; forward within a chunk for the prefetchers).
constexpr int64_t kReverseChunkElems = int64_t(1) << 13;

inline int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// ---- vector load/store in the accumulation type ------------------------------------------

template <typename T>
inline AccVec<T> vload(const T* p) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return AccVec<T>::loadu(p);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

template <typename T>
inline void vstore(T* p, const AccVec<T>& v) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, Vectorized<float>::size());
  }
}

// Streaming (non-temporal) store of one vector to an address aligned to its width. Used for
// outputs much larger than the caches: writing around the cache skips the read-for-ownership
// of every line and leaves x's slab in cache for the second pass. Plain stores elsewhere.
template <typename T>
inline void vstore_stream(T* p, const AccVec<T>& v) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else if constexpr (std::is_same_v<T, double>) {
    _mm256_stream_pd(p, v);
  } else {  // 8 half/bfloat16 values: the low 16 bytes of the converted vector
    const __m256i h = at::vec::convert_from_float<T>(v, v);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(h));
  }
#else
  vstore(p, v);
#endif
}

// Orders this thread's streaming stores before whatever reads the output next.
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
  _mm_sfence();
#endif
}

// Elements to write with ordinary stores before p + i is aligned for vstore_stream.
template <typename T>
inline int64_t stream_head(const T* p, int64_t n) {
  constexpr int64_t width = AccVec<T>::size() * sizeof(T);
  const auto misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % width);
  if (misalign % sizeof(T) != 0) return n;  // never aligned: ordinary stores throughout
  return std::min<int64_t>(n, ((width - misalign) % width) / sizeof(T));
}

template <typename A>
inline A nan_max(A a, A b) {  // max that propagates NaN, as torch.amax does
  return (a != a || a > b) ? a : (b != b ? b : std::max(a, b));
}

// ---- primitives over contiguous runs -------------------------------------------------------

// Sum (or NaN-propagating max) of p[0:n].
template <bool kMax, typename T>
acc_t<T> reduce_run(const T* p, int64_t n) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  const A init = kMax ? -std::numeric_limits<A>::infinity() : A(0);
  V a0(init), a1(init), a2(init), a3(init);
  int64_t i = 0;
  auto op = [](const V& a, const V& b) { return kMax ? at::vec::maximum(a, b) : a + b; };
  for (; i + 4 * kV <= n; i += 4 * kV) {
    a0 = op(a0, vload(p + i));
    a1 = op(a1, vload(p + i + kV));
    a2 = op(a2, vload(p + i + 2 * kV));
    a3 = op(a3, vload(p + i + 3 * kV));
  }
  for (; i + kV <= n; i += kV) a0 = op(a0, vload(p + i));
  A r = at::vec::vec_reduce_all<A>(op, op(op(a0, a1), op(a2, a3)));
  for (; i < n; ++i) {
    const A v = static_cast<A>(p[i]);
    r = kMax ? nan_max(r, v) : r + v;
  }
  return r;
}

// acc[0:n] += p[0:n] (or acc = max(acc, p)).
template <bool kMax, typename T>
void accumulate_run(acc_t<T>* acc, const T* p, int64_t n) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const V a = V::loadu(acc + i);
    const V v = vload(p + i);
    (kMax ? at::vec::maximum(a, v) : a + v).store(acc + i);
  }
  for (; i < n; ++i) {
    const A v = static_cast<A>(p[i]);
    acc[i] = kMax ? nan_max(acc[i], v) : acc[i] + v;
  }
}

// out[k] = sum_i w[i] * b[k * b_stride + i] for k < B: one weight row against B samples, the
// row loaded once for all of them. Each dot sums in the same order whatever B is (one vector
// accumulator, then its lanes, then the scalar tail), so a sample's result does not depend
// on how samples are blocked. w in the weight dtype, b in the accumulation type.
template <int B, typename T>
void dot_block(const T* w, const acc_t<T>* b, int64_t b_stride, int64_t n, acc_t<T>* out) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  V acc[B];
  for (int k = 0; k < B; ++k) acc[k] = V(A(0));
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const V wv = vload(w + i);
    for (int k = 0; k < B; ++k) acc[k] = at::vec::fmadd(wv, V::loadu(b + k * b_stride + i), acc[k]);
  }
  for (int k = 0; k < B; ++k) {
    A r = at::vec::vec_reduce_all<A>([](const V& u, const V& v) { return u + v; }, acc[k]);
    for (int64_t t = i; t < n; ++t) r += static_cast<A>(w[t]) * b[k * b_stride + t];
    out[k] = r;
  }
}

// out[k] = w . b[k] for the G samples b[k] = b + k * b_stride, in blocks of four.
template <typename T>
void dot_samples(const T* w, const acc_t<T>* b, int64_t b_stride, int64_t n, int64_t G,
                 acc_t<T>* out) {
  int64_t k = 0;
  for (; k + 4 <= G; k += 4) dot_block<4>(w, b + k * b_stride, b_stride, n, out + k);
  switch (G - k) {
    case 3: dot_block<3>(w, b + k * b_stride, b_stride, n, out + k); break;
    case 2: dot_block<2>(w, b + k * b_stride, b_stride, n, out + k); break;
    case 1: dot_block<1>(w, b + k * b_stride, b_stride, n, out + k); break;
    default: break;
  }
}

// y[0:n] += alpha * p[0:n]; p in the weight dtype or the accumulation type.
template <typename A, typename T>
void axpy(A* y, A alpha, const T* p, int64_t n) {
  using V = Vectorized<A>;
  constexpr int64_t kV = V::size();
  const V va(alpha);
  int64_t i = 0;
  for (; i + kV <= n; i += kV) at::vec::fmadd(va, vload(p + i), V::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += alpha * static_cast<A>(p[i]);
}

// The gate s for one run of the output: a broadcast scalar (NCHW) or a channel vector (NHWC).
template <typename A>
struct ScalarGate {
  A s;
  Vectorized<A> vec(int64_t) const { return Vectorized<A>(s); }
  A at(int64_t) const { return s; }
};
template <typename A>
struct VectorGate {
  const A* s;
  Vectorized<A> vec(int64_t i) const { return Vectorized<A>::loadu(s + i); }
  A at(int64_t i) const { return s[i]; }
};

// y = x * s, or relu(x * s + r), over the flat run [begin, end) of a tensor whose gate is
// constant along rows of `row_len` elements (NCHW: a row is one channel's H*W; NHWC: row_len
// is 1 and the gate varies per element, see VectorGate). Treating consecutive rows as one run
// keeps vectors full and aligned even when H*W is small or odd; a vector that straddles rows
// gathers its gates. kStream: streaming stores for the aligned body.
template <bool kResidual, bool kStream, typename T, typename RowGate>
void scale_flat(T* y, const T* x, const T* r, const RowGate& gate_of_row, int64_t row_len,
                int64_t begin, int64_t end) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  const V zero(A(0));
  int64_t i = begin;
  int64_t row = i / row_len, row_end = (row + 1) * row_len;
  auto advance_to = [&](int64_t j) {
    while (row_end <= j) {
      ++row;
      row_end += row_len;
    }
  };
  auto scalar = [&](int64_t j) {
    advance_to(j);
    A v = static_cast<A>(x[j]) * gate_of_row(row);
    if constexpr (kResidual) v = relu(v + static_cast<A>(r[j]));
    y[j] = static_cast<T>(v);
  };
  if constexpr (kStream) {
    for (const int64_t head = begin + stream_head(y + begin, end - begin); i < head; ++i) scalar(i);
  }
  for (; i + kV <= end; i += kV) {
    advance_to(i);
    V g;
    if (i + kV <= row_end) {
      g = V(gate_of_row(row));
    } else if (row_len >= kV) {  // straddles one boundary: lanes [0, m) of row, the rest of row + 1
      g = V::set(V(gate_of_row(row + 1)), V(gate_of_row(row)), row_end - i);
    } else {  // rows shorter than a vector: gather lane by lane
      A tmp[kV];
      int64_t rr = row, re = row_end;
      for (int64_t k = 0; k < kV; ++k) {
        while (re <= i + k) {
          ++rr;
          re += row_len;
        }
        tmp[k] = gate_of_row(rr);
      }
      g = V::loadu(tmp);
    }
    V v = vload(x + i) * g;
    if constexpr (kResidual) v = at::vec::maximum(v + vload(r + i), zero);
    if constexpr (kStream) {
      vstore_stream(y + i, v);
    } else {
      vstore(y + i, v);
    }
  }
  for (; i < end; ++i) scalar(i);
}

// y = x * s[c], or relu(...), along one channels_last pixel (C contiguous channels).
template <bool kResidual, bool kStream, typename T>
void scale_pixel(T* y, const T* x, const T* r, const acc_t<T>* s, int64_t C) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  const V zero(A(0));
  int64_t c = 0;
  const bool stream = kStream && stream_head(y, C) == 0;  // pixels aligned (C * sizeof(T) % 32 == 0)
  for (; c + kV <= C; c += kV) {
    V v = vload(x + c) * V::loadu(s + c);
    if constexpr (kResidual) v = at::vec::maximum(v + vload(r + c), zero);
    if (stream) {
      vstore_stream(y + c, v);
    } else {
      vstore(y + c, v);
    }
  }
  for (; c < C; ++c) {
    A v = static_cast<A>(x[c]) * s[c];
    if constexpr (kResidual) v = relu(v + static_cast<A>(r[c]));
    y[c] = static_cast<T>(v);
  }
}

// The gradient flowing into x * s: dy, or dy masked where the fused relu was off.
template <bool kResidual, typename T>
inline AccVec<T> upstream(const T* dy, const T* y, int64_t i) {
  using V = AccVec<T>;
  const V g = vload(dy + i);
  if constexpr (kResidual) {
    using A = acc_t<T>;
    return V::blendv(g, V(A(0)), vload(y + i) <= V(A(0)));  // relu'(y) with NaN passing
  } else {
    return g;
  }
}
template <bool kResidual, typename T>
inline acc_t<T> upstream_at(const T* dy, const T* y, int64_t i) {
  using A = acc_t<T>;
  const A g = static_cast<A>(dy[i]);
  if constexpr (kResidual) return static_cast<A>(y[i]) <= A(0) ? A(0) : g;
  return g;
}

// ds += sum g*x over a run (and cnt += #(x == zmax) for max squeeze).
template <bool kResidual, bool kMax, typename T>
void grad_reduce_run(const T* dy, const T* y, const T* x, int64_t n, acc_t<T> zmax, acc_t<T>& ds,
                     acc_t<T>& cnt) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  V s0(A(0)), c0(A(0));
  const V vz(zmax), one(A(1));
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const V vx = vload(x + i);
    s0 = at::vec::fmadd(upstream<kResidual>(dy, y, i), vx, s0);
    if constexpr (kMax) c0 = c0 + ((vx == vz) & one);
  }
  auto add = [](const V& u, const V& v) { return u + v; };
  A s = at::vec::vec_reduce_all<A>(add, s0);
  A c = kMax ? at::vec::vec_reduce_all<A>(add, c0) : A(0);
  for (; i < n; ++i) {
    const A xv = static_cast<A>(x[i]);
    s += upstream_at<kResidual>(dy, y, i) * xv;
    if constexpr (kMax) c += xv == zmax ? A(1) : A(0);
  }
  ds += s;
  cnt += c;
}

// dx = g*s + coef (avg) or g*s + [x == zmax]*coef (max); dres = g.
template <bool kResidual, bool kMax, typename T, typename G>
void grad_write_run(T* dx, T* dres, const T* dy, const T* y, const T* x, const G& s,
                    const G& coef, const G& zmax, int64_t n) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t kV = V::size();
  const V one(A(1));
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const V g = upstream<kResidual>(dy, y, i);
    V d;
    if constexpr (kMax) {
      // mask * coef as arithmetic, so that 0 * inf gives NaN exactly as the reference does
      d = at::vec::fmadd(g, s.vec(i), ((vload(x + i) == zmax.vec(i)) & one) * coef.vec(i));
    } else {
      d = at::vec::fmadd(g, s.vec(i), coef.vec(i));
    }
    vstore(dx + i, d);
    if constexpr (kResidual) vstore(dres + i, g);
  }
  for (; i < n; ++i) {
    const A g = upstream_at<kResidual>(dy, y, i);
    A d = g * s.at(i);
    if constexpr (kMax) {
      d += (static_cast<A>(x[i]) == zmax.at(i) ? A(1) : A(0)) * coef.at(i);
    } else {
      d += coef.at(i);
    }
    dx[i] = static_cast<T>(d);
    if constexpr (kResidual) dres[i] = static_cast<T>(g);
  }
}

// ---- forward ------------------------------------------------------------------------------

template <typename T>
struct ForwardArgs {
  const T* x;         // (N, C, H, W) in NCHW or NHWC
  const T* w1;        // (Cr, C)
  const T* w2;        // (C, Cr)
  const T* b1;        // (Cr,) or null
  const T* b2;        // (C,) or null
  const T* residual;  // like x, or null
  T* y;               // like x
  acc_t<T>* z;        // (N, C)
  acc_t<T>* hpre;     // (N, Cr)
  acc_t<T>* gpre;     // (N, C)
};

// z[n, :] for n in [n0, n1).
template <bool kMax, typename T>
void squeeze_group(const Problem& p, const T* x, acc_t<T>* z, int64_t n0, int64_t n1) {
  using A = acc_t<T>;
  const int64_t C = p.C, HW = p.HW;
  if (p.layout == Layout::NCHW) {
    at::parallel_for(n0 * C, n1 * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const A v = reduce_run<kMax>(x + r * HW, HW);
        z[r] = kMax ? v : v / static_cast<A>(HW);
      }
    });
  } else {
    const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
    at::parallel_for(n0 * blocks, n1 * blocks, grain_for(HW * kChannelBlock),
                     [&](int64_t i0, int64_t i1) {
                       for (int64_t i = i0; i < i1; ++i) {
                         const int64_t n = i / blocks;
                         const int64_t c0 = (i % blocks) * kChannelBlock;
                         const int64_t cb = std::min(kChannelBlock, C - c0);
                         A* zr = z + n * C + c0;
                         std::fill(zr, zr + cb,
                                   kMax ? -std::numeric_limits<A>::infinity() : A(0));
                         const T* xs = x + n * HW * C + c0;
                         for (int64_t q = 0; q < HW; ++q) accumulate_run<kMax>(zr, xs + q * C, cb);
                         if (!kMax)
                           for (int64_t c = 0; c < cb; ++c) zr[c] /= static_cast<A>(HW);
                       }
                     });
  }
}

// hpre, gpre and s = gate(gpre) for samples [n0, n1); h and s are (n1 - n0, Cr) and
// (n1 - n0, C) scratch. Each weight row is read once for the whole group.
template <typename T>
void excite_group(const Problem& p, const ForwardArgs<T>& a, int64_t act, int64_t gate,
                  int64_t n0, int64_t n1, acc_t<T>* h, acc_t<T>* s) {
  using A = acc_t<T>;
  const int64_t C = p.C, Cr = p.Cr, G = n1 - n0;
  at::parallel_for(0, Cr, grain_for(C * G), [&](int64_t j0, int64_t j1) {
    std::vector<A> out(G);
    for (int64_t j = j0; j < j1; ++j) {
      dot_samples(a.w1 + j * C, a.z + n0 * C, C, C, G, out.data());
      const A bias = a.b1 ? static_cast<A>(a.b1[j]) : A(0);
      for (int64_t k = 0; k < G; ++k) {
        const A v = out[k] + bias;
        a.hpre[(n0 + k) * Cr + j] = v;
        h[k * Cr + j] = activation_fwd(act, v);
      }
    }
  });
  at::parallel_for(0, C, grain_for(Cr * G), [&](int64_t c0, int64_t c1) {
    std::vector<A> out(G);
    for (int64_t c = c0; c < c1; ++c) {
      dot_samples(a.w2 + c * Cr, h, Cr, Cr, G, out.data());
      const A bias = a.b2 ? static_cast<A>(a.b2[c]) : A(0);
      for (int64_t k = 0; k < G; ++k) {
        const A v = out[k] + bias;
        a.gpre[(n0 + k) * C + c] = v;
        s[k * C + c] = gate_fwd(gate, v);
      }
    }
  });
}

template <bool kResidual, bool kStream, typename T>
void scale_group(const Problem& p, const ForwardArgs<T>& a, const acc_t<T>* s, int64_t n0,
                 int64_t n1) {
  const int64_t C = p.C, HW = p.HW;
  if (p.layout == Layout::NCHW) {
    // rows are (n, c) pairs; s holds the group's rows from n0 * C on
    auto gate_of_row = [&](int64_t row) { return s[row - n0 * C]; };
    at::parallel_for(n0 * C, n1 * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      // Last chunk first: the squeeze (same rows, same thread: at::parallel_for splits a
      // range alike for the same grain) read this range front to back, so its tail is what
      // the cache still holds when a slab outgrows it. Chunks end on multiples of the chunk
      // size, so streamed lines stay whole.
      const int64_t begin = r0 * HW;
      for (int64_t end = r1 * HW; end > begin;) {
        const int64_t start = std::max(begin, (end - 1) / kReverseChunkElems * kReverseChunkElems);
        scale_flat<kResidual, kStream>(a.y, a.x, a.residual, gate_of_row, HW, start, end);
        end = start;
      }
      if constexpr (kStream) stream_fence();
    });
  } else {
    at::parallel_for(n0 * HW, n1 * HW, grain_for(C), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t off = q * C;
        scale_pixel<kResidual, kStream>(a.y + off, a.x + off, a.residual + off,
                                        s + (q / HW - n0) * C, C);
      }
      if constexpr (kStream) stream_fence();
    });
  }
}

// Samples per group: as many as fit the cache budget together (so the second pass over a
// group's activations hits cache), but at least enough that the FC weights, read once per
// group, cost no more than one more pass over the group's activations.
inline int64_t group_size(const Problem& p, int64_t elem_bytes, int64_t streams) {
  const int64_t slab = std::max<int64_t>(1, p.C * p.HW * elem_bytes);
  const int64_t budget = kCacheBudgetBytes * at::get_num_threads();
  const int64_t by_cache = budget / (slab * streams);
  const int64_t weight_bytes = 2 * p.C * p.Cr * elem_bytes;
  const int64_t by_weights = (weight_bytes + slab - 1) / slab;
  return std::max<int64_t>(1, std::min<int64_t>(p.N, std::max(by_cache, by_weights)));
}

// a.y may be a.x (in place): every phase reads an element of x before, or in the same step
// as, it writes that element of y. In place, y's lines were just read and are in cache:
// plain stores then beat streaming ones.
template <typename T>
void forward_kernel(const Problem& p, const ForwardArgs<T>& a, int64_t squeeze, int64_t act,
                    int64_t gate) {
  using A = acc_t<T>;
  const int64_t G = group_size(p, sizeof(T), a.residual ? 2 : 1);
  const bool in_place = static_cast<const void*>(a.y) == static_cast<const void*>(a.x);
  const bool stream = !in_place && p.N * p.C * p.HW * int64_t(sizeof(T)) >= kStreamMinBytes;
  std::vector<A> h(G * p.Cr), s(G * p.C);
  for (int64_t n0 = 0; n0 < p.N; n0 += G) {
    const int64_t n1 = std::min(p.N, n0 + G);
    if (squeeze == kSqueezeMax) {
      squeeze_group<true>(p, a.x, a.z, n0, n1);
    } else {
      squeeze_group<false>(p, a.x, a.z, n0, n1);
    }
    excite_group(p, a, act, gate, n0, n1, h.data(), s.data());
    if (a.residual) {
      stream ? scale_group<true, true>(p, a, s.data(), n0, n1)
             : scale_group<true, false>(p, a, s.data(), n0, n1);
    } else {
      stream ? scale_group<false, true>(p, a, s.data(), n0, n1)
             : scale_group<false, false>(p, a, s.data(), n0, n1);
    }
  }
}

// y into `y` (x itself for se_forward_inplace), the saved vectors into z, hpre, gpre.
void run_forward(const Problem& p, const at::Tensor& x, const at::Tensor& w1,
                 const at::Tensor& w2, const c10::optional<at::Tensor>& b1,
                 const c10::optional<at::Tensor>& b2, const c10::optional<at::Tensor>& residual,
                 int64_t squeeze, int64_t act, int64_t gate, at::Tensor& y, at::Tensor& z,
                 at::Tensor& hpre, at::Tensor& gpre) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cpu", [&] {
    using A = acc_t<scalar_t>;
    ForwardArgs<scalar_t> a{x.const_data_ptr<scalar_t>(),
                            w1.const_data_ptr<scalar_t>(),
                            w2.const_data_ptr<scalar_t>(),
                            b1 ? b1->const_data_ptr<scalar_t>() : nullptr,
                            b2 ? b2->const_data_ptr<scalar_t>() : nullptr,
                            residual ? residual->const_data_ptr<scalar_t>() : nullptr,
                            y.mutable_data_ptr<scalar_t>(),
                            z.mutable_data_ptr<A>(),
                            hpre.mutable_data_ptr<A>(),
                            gpre.mutable_data_ptr<A>()};
    forward_kernel(p, a, squeeze, act, gate);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cpu(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, int64_t squeeze, int64_t act, int64_t gate) {
  const Problem p = check_forward_args(x, w1, w2, b1, b2, residual, squeeze, act, gate);
  TORCH_CHECK(x.device().is_cpu(), "se_kernels: se_forward (CPU) got x on ", x.device());
  at::Tensor y, z, hpre, gpre;
  std::tie(y, z, hpre, gpre) = empty_forward_outputs(x, p);
  run_forward(p, x, w1, w2, b1, b2, residual, squeeze, act, gate, y, z, hpre, gpre);
  return {y, z, hpre, gpre};
}

void se_forward_inplace_cpu(at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                            const c10::optional<at::Tensor>& b1,
                            const c10::optional<at::Tensor>& b2,
                            const c10::optional<at::Tensor>& residual, int64_t squeeze, int64_t act,
                            int64_t gate) {
  const Problem p = check_forward_args(x, w1, w2, b1, b2, residual, squeeze, act, gate);
  TORCH_CHECK(x.device().is_cpu(), "se_kernels: se_forward_inplace (CPU) got x on ", x.device());
  // A residual that shares x's memory must be x itself: a shifted view would be read after
  // the elements it overlaps were overwritten.
  TORCH_CHECK(!residual || !residual->is_alias_of(x) ||
                  (residual->data_ptr() == x.data_ptr() && residual->strides() == x.strides()),
              "se_kernels: se_forward_inplace: residual overlaps x without being x");
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));  // scratch, not returned
  at::Tensor y = x, z = at::empty({p.N, p.C}, acc), hpre = at::empty({p.N, p.Cr}, acc),
             gpre = at::empty({p.N, p.C}, acc);
  run_forward(p, x, w1, w2, b1, b2, residual, squeeze, act, gate, y, z, hpre, gpre);
}

// ---- backward -----------------------------------------------------------------------------

template <typename T>
struct BackwardArgs {
  const T* dy;      // like x
  const T* x;       // (N, C, H, W)
  const T* w1;      // (Cr, C)
  const T* w2;      // (C, Cr)
  const T* y;       // like x, or null (no residual)
  const acc_t<T>* z;     // (N, C)
  const acc_t<T>* hpre;  // (N, Cr)
  const acc_t<T>* gpre;  // (N, C)
  T* dx;            // like x
  T* dres;          // like x, or null
};

// Per-group scratch of the backward pass, in the accumulation type.
template <typename A>
struct BackwardScratch {
  std::vector<A> ds, cnt, s, coef, h, dh;  // (G, C), (G, C), (G, C), (G, C), (G, Cr), (G, Cr)
  std::vector<A> dw1, dw2, db1, db2;       // sums over the batch
};

// ds[n, c] = sum_hw g*x (and tie counts) for samples [n0, n1).
template <bool kResidual, bool kMax, typename T>
void grad_reduce_group(const Problem& p, const BackwardArgs<T>& a, int64_t n0, int64_t n1,
                       acc_t<T>* ds, acc_t<T>* cnt) {
  using A = acc_t<T>;
  const int64_t C = p.C, HW = p.HW;
  if (p.layout == Layout::NCHW) {
    at::parallel_for(n0 * C, n1 * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * HW, k = r - n0 * C;
        ds[k] = A(0);
        cnt[k] = A(0);
        grad_reduce_run<kResidual, kMax>(a.dy + off, a.y + off, a.x + off, HW, a.z[r], ds[k],
                                         cnt[k]);
      }
    });
  } else {
    // Channel blocks; within a block, pixel by pixel, channel by channel (scalar tail free
    // because each channel keeps its own accumulator in ds/cnt).
    const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
    at::parallel_for(n0 * blocks, n1 * blocks, grain_for(HW * kChannelBlock),
                     [&](int64_t i0, int64_t i1) {
                       using V = AccVec<T>;
                       constexpr int64_t kV = V::size();
                       for (int64_t i = i0; i < i1; ++i) {
                         const int64_t n = i / blocks;
                         const int64_t c0 = (i % blocks) * kChannelBlock;
                         const int64_t cb = std::min(kChannelBlock, C - c0);
                         A* dsr = ds + (n - n0) * C + c0;
                         A* cr = cnt + (n - n0) * C + c0;
                         const A* zr = a.z + n * C + c0;
                         std::fill(dsr, dsr + cb, A(0));
                         std::fill(cr, cr + cb, A(0));
                         for (int64_t q = 0; q < HW; ++q) {
                           const int64_t off = (n * HW + q) * C + c0;
                           int64_t c = 0;
                           for (; c + kV <= cb; c += kV) {
                             const V vx = vload(a.x + off + c);
                             const V g = upstream<kResidual>(a.dy + off, a.y + off, c);
                             at::vec::fmadd(g, vx, V::loadu(dsr + c)).store(dsr + c);
                             if constexpr (kMax)
                               (V::loadu(cr + c) + ((vx == V::loadu(zr + c)) & V(A(1))))
                                   .store(cr + c);
                           }
                           for (; c < cb; ++c) {
                             const A xv = static_cast<A>(a.x[off + c]);
                             dsr[c] += upstream_at<kResidual>(a.dy + off, a.y + off, c) * xv;
                             if constexpr (kMax) cr[c] += xv == zr[c] ? A(1) : A(0);
                           }
                         }
                       }
                     });
  }
}

// The FC backward for samples [n0, n1): fills s and coef, accumulates the weight grads.
template <typename T>
void excite_backward_group(const Problem& p, const BackwardArgs<T>& a, int64_t squeeze,
                           int64_t act, int64_t gate, int64_t n0, int64_t n1,
                           BackwardScratch<acc_t<T>>& w) {
  using A = acc_t<T>;
  const int64_t C = p.C, Cr = p.Cr, G = n1 - n0;
  // dpre (kept in ds) = ds * gate'(gpre); s = gate(gpre); h = act(hpre).
  for (int64_t k = 0; k < G * C; ++k) {
    const A v = a.gpre[n0 * C + k];
    w.s[k] = gate_fwd(gate, v);
    w.ds[k] = gate_backward(gate, v, w.ds[k]);
  }
  for (int64_t k = 0; k < G * Cr; ++k) w.h[k] = activation_fwd(act, a.hpre[n0 * Cr + k]);
  // dW2[c, :] += sum_n dpre[n, c] h[n, :];  db2[c] += sum_n dpre[n, c]
  at::parallel_for(0, C, grain_for(Cr * G), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t n = 0; n < G; ++n) {
        axpy(w.dw2.data() + c * Cr, w.ds[n * C + c], w.h.data() + n * Cr, Cr);
        w.db2[c] += w.ds[n * C + c];
      }
  });
  // dh[n, :] = sum_c dpre[n, c] W2[c, :];  then dhpre = dh * act'(hpre)
  at::parallel_for(0, G, grain_for(C * Cr), [&](int64_t m0, int64_t m1) {
    for (int64_t n = m0; n < m1; ++n) {
      A* dh = w.dh.data() + n * Cr;
      std::fill(dh, dh + Cr, A(0));
      for (int64_t c = 0; c < C; ++c) axpy(dh, w.ds[n * C + c], a.w2 + c * Cr, Cr);
      for (int64_t j = 0; j < Cr; ++j)
        dh[j] = activation_backward(act, a.hpre[(n0 + n) * Cr + j], dh[j]);
    }
  });
  // dW1[j, :] += sum_n dhpre[n, j] z[n, :];  db1[j] += sum_n dhpre[n, j]
  at::parallel_for(0, Cr, grain_for(C * G), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t n = 0; n < G; ++n) {
        axpy(w.dw1.data() + j * C, w.dh[n * Cr + j], a.z + (n0 + n) * C, C);
        w.db1[j] += w.dh[n * Cr + j];
      }
  });
  // dz[n, :] = sum_j dhpre[n, j] W1[j, :], divided by HW (avg) or by the tie count (max)
  at::parallel_for(0, G, grain_for(C * Cr), [&](int64_t m0, int64_t m1) {
    for (int64_t n = m0; n < m1; ++n) {
      A* dz = w.coef.data() + n * C;
      std::fill(dz, dz + C, A(0));
      for (int64_t j = 0; j < Cr; ++j) axpy(dz, w.dh[n * Cr + j], a.w1 + j * C, C);
      for (int64_t c = 0; c < C; ++c)
        dz[c] /= squeeze == kSqueezeMax ? w.cnt[n * C + c] : static_cast<A>(p.HW);
    }
  });
}

template <bool kResidual, bool kMax, typename T>
void grad_write_group(const Problem& p, const BackwardArgs<T>& a, int64_t n0, int64_t n1,
                      const BackwardScratch<acc_t<T>>& w) {
  using A = acc_t<T>;
  const int64_t C = p.C, HW = p.HW;
  if (p.layout == Layout::NCHW) {
    at::parallel_for(n0 * C, n1 * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * HW, k = r - n0 * C;
        grad_write_run<kResidual, kMax>(a.dx + off, a.dres + off, a.dy + off, a.y + off,
                                        a.x + off, ScalarGate<A>{w.s[k]},
                                        ScalarGate<A>{w.coef[k]}, ScalarGate<A>{a.z[r]}, HW);
      }
    });
  } else {
    at::parallel_for(n0 * HW, n1 * HW, grain_for(C), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t off = q * C, n = q / HW, k = (n - n0) * C;
        grad_write_run<kResidual, kMax>(
            a.dx + off, a.dres + off, a.dy + off, a.y + off, a.x + off,
            VectorGate<A>{w.s.data() + k}, VectorGate<A>{w.coef.data() + k},
            VectorGate<A>{a.z + n * C}, C);
      }
    });
  }
}

template <bool kResidual, bool kMax, typename T>
void backward_kernel(const Problem& p, const BackwardArgs<T>& a, int64_t squeeze, int64_t act,
                     int64_t gate, BackwardScratch<acc_t<T>>& w) {
  const int64_t G = group_size(p, sizeof(T), kResidual ? 4 : 3);
  w.ds.assign(G * p.C, 0);
  w.cnt.assign(G * p.C, 0);
  w.s.assign(G * p.C, 0);
  w.coef.assign(G * p.C, 0);
  w.h.assign(G * p.Cr, 0);
  w.dh.assign(G * p.Cr, 0);
  for (int64_t n0 = 0; n0 < p.N; n0 += G) {
    const int64_t n1 = std::min(p.N, n0 + G);
    grad_reduce_group<kResidual, kMax>(p, a, n0, n1, w.ds.data(), w.cnt.data());
    excite_backward_group(p, a, squeeze, act, gate, n0, n1, w);
    grad_write_group<kResidual, kMax>(p, a, n0, n1, w);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
                const at::Tensor& w2, const c10::optional<at::Tensor>& y, const at::Tensor& z,
                const at::Tensor& hpre, const at::Tensor& gpre, int64_t squeeze, int64_t act,
                int64_t gate) {
  const Problem p = check_backward_args(dy, x, w1, w2, y, z, hpre, gpre, squeeze, act, gate);
  TORCH_CHECK(x.device().is_cpu(), "se_kernels: se_backward (CPU) got x on ", x.device());
  at::Tensor dx, dw1, dw2, db1, db2, dres;
  std::tie(dx, dw1, dw2, db1, db2, dres) = empty_backward_outputs(x, w1, w2, y.has_value(), p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    BackwardArgs<scalar_t> a{dy.const_data_ptr<scalar_t>(),
                             x.const_data_ptr<scalar_t>(),
                             w1.const_data_ptr<scalar_t>(),
                             w2.const_data_ptr<scalar_t>(),
                             y ? y->const_data_ptr<scalar_t>() : nullptr,
                             z.const_data_ptr<A>(),
                             hpre.const_data_ptr<A>(),
                             gpre.const_data_ptr<A>(),
                             dx.mutable_data_ptr<scalar_t>(),
                             y ? dres.mutable_data_ptr<scalar_t>() : nullptr};
    BackwardScratch<A> w;
    w.dw1.assign(p.Cr * p.C, 0);
    w.dw2.assign(p.C * p.Cr, 0);
    w.db1.assign(p.Cr, 0);
    w.db2.assign(p.C, 0);
    const bool is_max = squeeze == kSqueezeMax;
    if (y && is_max) backward_kernel<true, true>(p, a, squeeze, act, gate, w);
    if (y && !is_max) backward_kernel<true, false>(p, a, squeeze, act, gate, w);
    if (!y && is_max) backward_kernel<false, true>(p, a, squeeze, act, gate, w);
    if (!y && !is_max) backward_kernel<false, false>(p, a, squeeze, act, gate, w);
    auto store = [](at::Tensor& t, const std::vector<A>& v) {
      scalar_t* out = t.mutable_data_ptr<scalar_t>();
      for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<scalar_t>(v[i]);
    };
    store(dw1, w.dw1);
    store(dw2, w.dw2);
    store(db1, w.db1);
    store(db2, w.db2);
  });
  return {dx, dw1, dw2, db1, db2, dres};
}

}  // namespace

TORCH_LIBRARY_IMPL(se_kernels, CPU, m) {
  m.impl("se_forward", &se_forward_cpu);
  m.impl("se_forward_inplace", &se_forward_inplace_cpu);
  m.impl("se_backward", &se_backward_cpu);
}

}  // namespace cpu
}  // namespace se_kernels

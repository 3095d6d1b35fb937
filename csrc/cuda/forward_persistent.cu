// Forward, strategy 2 of DESIGN.md: one persistent launch, any architecture, any slab size.
//
// CTAs take work items from a ticket counter in the order of cuda_plan::Schedule:
//   reduce item (sample n, tile): squeeze partials of the tile -> workspace; the CTA whose
//       item completes an FC group of G samples (per-group arrival counter) computes z, the
//       two FCs (each weight element read once per group) and the gate s of the group, then
//       raises the group's ready flag;
//   apply item (sample n, tile): waits for the flag, then y = x * s (+ residual, relu),
//       re-reading x while it is still in L2 (apply items trail the reduce items of the same
//       sample by `lag` samples, sized so that those samples fit in L2).
// Deadlock-free for any grid (see cuda_plan::Schedule): a CTA only waits for items that
// earlier tickets gave to running CTAs, and reduce items never wait.
#include <c10/cuda/CUDAException.h>

#include "dispatch.cuh"
#include "fc.cuh"
#include "func_cache.h"
#include "kernels.h"
#include "tiles.cuh"

namespace se_kernels {
namespace cuda {
namespace detail {

// The excitation of the FC group of samples [n0, n0 + G): z from the squeeze partials, then
// hpre = W1 z + b1 and gpre = W2 act(hpre) + b2 (written to the outputs, which serve as the
// accumulators over chunks of the input vector), and s = gate(gpre) into the workspace.
template <typename T, bool kMax>
__device__ void forward_fc(const ForwardArgs& a, const PersistentConfig& c, int64_t n0, int G,
                           acc_t<T>* sm) {
  using A = acc_t<T>;
  const T* w1 = static_cast<const T*>(a.w1);
  const T* w2 = static_cast<const T*>(a.w2);
  const T* b1 = static_cast<const T*>(a.b1);
  const T* b2 = static_cast<const T*>(a.b2);
  A* z = static_cast<A*>(a.z);
  A* hpre = static_cast<A*>(a.hpre);
  A* gpre = static_cast<A*>(a.gpre);
  const A* part = static_cast<const A*>(c.ws) + c.off.partial;
  A* s = static_cast<A*>(c.ws) + c.off.s;
  const int64_t C = a.C, Cr = a.Cr, npb = c.tiles.npb;
  const int GR = int(cuda_plan::group_rows(G));  // staged rows (zero-padded)

  // z[n, c] from the npb partials of (n, c), at part[(n npb + b) C + c]
  combine_strided<kMax, A>(
      G * C, npb, C, [&](int64_t i) { return part + ((n0 + i / C) * npb) * C + i % C; },
      [&](int64_t i, A v) { z[n0 * C + i] = kMax ? v : v / A(a.HW); });
  __syncthreads();

  // The FCs keep the run-time-G element loop of 23a97b5 (rows_dot_runtime_g): the 16-byte,
  // compile-time-G rows_dot made every half/bf16 variant of this kernel spill (ptxas, sm_80
  // and sm_90a; the cluster kernel's does not). Splitting the group's FC into row-block
  // work items is what this kernel needs (docs/perf-notes.md, "Issue 12: predictions").
  const int L1 = cuda_plan::lanes_for(C < kFcChunk ? C : kFcChunk);
  for (int64_t k0 = 0; k0 < C; k0 += kFcChunk) {
    const int kc = int(C - k0 < kFcChunk ? C - k0 : kFcChunk);
    for (int i = threadIdx.x; i < GR * kc; i += kThreads) {  // rows G..GR-1: zeros
      const int g = i / kc, k = i - (i / kc) * kc;
      sm[g * kFcChunk + k] = g < G ? load_cg(z + (n0 + g) * C + k0 + k) : A(0);
    }
    __syncthreads();
    const bool first = k0 == 0, last = k0 + kc >= C;
    rows_dot_runtime_g(w1 + k0, C, int(Cr), kc, sm, kFcChunk, G, L1, [&](int g, int j, A v) {
      A* o = hpre + (n0 + g) * Cr + j;
      if (!first) v += *o;  // this lane wrote it for the previous chunk
      if (last && b1 != nullptr) v += to_acc(b1[j]);
      *o = v;
    });
    __syncthreads();
  }

  const int L2 = cuda_plan::lanes_for(Cr < kFcChunk ? Cr : kFcChunk);
  for (int64_t k0 = 0; k0 < Cr; k0 += kFcChunk) {
    const int kc = int(Cr - k0 < kFcChunk ? Cr - k0 : kFcChunk);
    for (int i = threadIdx.x; i < GR * kc; i += kThreads) {  // rows G..GR-1: zeros
      const int g = i / kc, k = i - (i / kc) * kc;
      sm[g * kFcChunk + k] =
          g < G ? activation_fwd(a.act, load_cg(hpre + (n0 + g) * Cr + k0 + k)) : A(0);
    }
    __syncthreads();
    const bool first = k0 == 0, last = k0 + kc >= Cr;
    rows_dot_runtime_g(w2 + k0, Cr, int(C), kc, sm, kFcChunk, G, L2, [&](int g, int ch, A v) {
      const int64_t o = (n0 + g) * C + ch;
      if (!first) v += gpre[o];
      if (last) {
        if (b2 != nullptr) v += to_acc(b2[ch]);
        s[o] = gate_fwd(a.gate, v);
      }
      gpre[o] = v;
    });
    __syncthreads();
  }
}

// hot-kernel: se_fwd_persistent_kernel
template <typename T, bool kNHWC, bool kMax, bool kRes>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    se_fwd_persistent_kernel(const ForwardArgs a, const PersistentConfig c) {
  using A = acc_t<T>;
  constexpr int V = kHasVecPath<T> ? kVec<T> : 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  __shared__ counter_t s_ticket;
  __shared__ int s_last;

  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.y);
  A* ws = static_cast<A*>(c.ws);
  const Counters cnt{c.counters, c.groups};
  const int64_t N = a.N, C = a.C, HW = a.HW, G = c.G, tiles = c.tiles.count();
  const int64_t total = c.sched.total();
  // NCHW reduce items whose rows are not 16-byte multiples read their tile as one span of
  // 16-byte vectors (tiles.cuh reduce_span) when x is 16-byte aligned
  const bool span_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0;

  for (;;) {
    if (threadIdx.x == 0) s_ticket = atomicAdd(cnt.ticket(), counter_t(1));
    __syncthreads();
    const int64_t t = int64_t(s_ticket);
    __syncthreads();  // every thread has read the ticket; shared memory is free
    if (t >= total) break;
    const cuda_plan::Item it = c.sched.decode(t);
    const int64_t n = it.sample, grp = n / G;
    int64_t c0, nc, p0, np, pb;
    c.tiles.get(it.index, c0, nc, p0, np, pb);

    if (it.kind == cuda_plan::kItemReduce) {
      A* part = ws + c.off.partial + (n * c.tiles.npb + pb) * C + c0;
      auto emit = [&](int ch, A v) { part[ch] = v; };
      if constexpr (!kNHWC) {
        const T* src = x + (n * C + c0) * HW + p0;
        if (kHasVecPath<T> && a.vec) {
          reduce_rows<kMax, V>(src, HW, int(nc), int(np), emit);
        } else if (kHasVecPath<T> && span_vec && (np == HW || nc == 1)) {  // one span
          reduce_span<kMax, V>(src, int(nc), int(np), emit);
        } else {
          reduce_rows<kMax, 1>(src, HW, int(nc), int(np), emit);
        }
      } else {
        const T* src = x + (n * HW + p0) * C + c0;
        if (kHasVecPath<T> && a.vec) {
          reduce_nhwc<kMax, V>(src, C, int(np), int(nc), sm, emit);
        } else {
          reduce_nhwc<kMax, 1>(src, C, int(np), int(nc), sm, emit);
        }
      }
      cta_release_fence();
      if (threadIdx.x == 0) {
        const counter_t prev = atomicAdd(cnt.arrive() + grp, counter_t(1));
        s_last = prev + 1 == counter_t(cuda_plan::group_size(N, G, grp) * tiles);
      }
      __syncthreads();
      if (s_last) {  // uniform: this CTA finished the group
        __threadfence();
        forward_fc<T, kMax>(a, c, grp * G, int(cuda_plan::group_size(N, G, grp)), sm);
        cta_release_fence();
        if (threadIdx.x == 0) store_release(cnt.ready() + grp, 1);
      }
    } else {
      cta_wait_at_least(cnt.ready() + grp, 1);
      const A* s = ws + c.off.s + n * C + c0;
      for (int i = threadIdx.x; i < nc; i += kThreads) sm[i] = load_cg(s + i);
      __syncthreads();
      if constexpr (!kNHWC) {
        const int64_t o = (n * C + c0) * HW + p0;
        const T* r = kRes ? res + o : nullptr;
        if (kHasVecPath<T> && c.flat_vec && np == HW) {  // whole rows: one aligned span
          scale_flat<kRes, V>(x + o, r, y + o, int(nc * HW), int(HW), sm);
        } else if (kHasVecPath<T> && a.vec) {
          scale_rows<kRes, V>(x + o, r, y + o, HW, int(nc), int(np), sm);
        } else {
          scale_rows<kRes, 1>(x + o, r, y + o, HW, int(nc), int(np), sm);
        }
      } else {
        const int64_t o = (n * HW + p0) * C + c0;
        const T* r = kRes ? res + o : nullptr;
        if (kHasVecPath<T> && a.vec) {
          scale_nhwc<kRes, V>(x + o, C, r, y + o, C, int(np), int(nc), sm);
        } else {
          scale_nhwc<kRes, 1>(x + o, C, r, y + o, C, int(np), int(nc), sm);
        }
      }
    }
  }
}

}  // namespace detail

namespace {

using namespace detail;

using Kernel = void (*)(ForwardArgs, PersistentConfig);

Kernel pick(const ForwardArgs& a) {
  return with_kernel_flags(a.dtype, a.nhwc, a.max_squeeze, a.residual != nullptr,
                           [](auto tt, auto nh, auto mx, auto rs) -> Kernel {
                             using T = typename decltype(tt)::type;
                             return &se_fwd_persistent_kernel<T, decltype(nh)::value,
                                                              decltype(mx)::value,
                                                              decltype(rs)::value>;
                           });
}

}  // namespace

int forward_persistent_blocks_per_sm(const ForwardArgs& a, int64_t smem) {
  return occupancy_blocks_per_sm(pick(a), kThreads, smem);
}

void launch_forward_persistent(const ForwardArgs& a, const PersistentConfig& c,
                               cudaStream_t stream) {
  launch_checked(pick(a), c.grid, kThreads, c.smem, stream, a, c);
}

}  // namespace cuda
}  // namespace se_kernels

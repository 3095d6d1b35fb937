// Forward, strategy 2 of DESIGN.md: one persistent launch, any architecture, any slab size.
//
// CTAs take work items from a ticket counter in the order of cuda_plan::Schedule:
//   reduce item (sample n, tile): squeeze partials of the tile -> workspace; the CTA whose
//       item completes an FC group of G samples (per-group arrival counter) combines z of the
//       group and raises the group's "squeezed" flag;
//   FC item (group, item; cuda_plan::FcItems): stage 1, a block of rows of W1 (hpre for the
//       group's G samples: each weight element read once per group), waits for the flag and
//       counts the group's stage-1 items; stage 2, a block of rows of W2 (gpre and the gate
//       s), waits until every stage-1 item of the group is done and counts the group's
//       stage-2 items;
//   apply item (sample n, tile): waits until every stage-2 item of its group is done, then
//       y = x * s (+ residual, relu), re-reading x while it is still in L2 (apply items trail
//       the reduce items of the same group by `lag` groups, sized so that those samples fit
//       in L2).
// Deadlock-free for any grid (see cuda_plan::Schedule): every item waits only for items with
// smaller tickets, which went to running CTAs; reduce items never wait; a CTA takes a ticket
// only when its previous item is done.
#include <c10/cuda/CUDAException.h>

#include "dispatch.cuh"
#include "fc.cuh"
#include "func_cache.h"
#include "kernels.h"
#include "tiles.cuh"

namespace se_kernels {
namespace cuda {
namespace detail {

// z of the FC group of samples [n0, n0 + G) from the squeeze partials at
// part[(n npb + b) C + c] (run by the CTA whose reduce item completed the group).
template <typename T, bool kMax>
__device__ void forward_squeeze(const ForwardArgs& a, const PersistentConfig& c, int64_t n0,
                                int G) {
  using A = acc_t<T>;
  A* z = static_cast<A*>(a.z);
  const A* part = static_cast<const A*>(c.ws) + c.off.partial;
  const int64_t C = a.C, npb = c.tiles.npb;
  combine_strided<kMax, A>(
      G * C, npb, C, [&](int64_t i) { return part + ((n0 + i / C) * npb) * C + i % C; },
      [&](int64_t i, A v) { z[n0 * C + i] = kMax ? v : v / A(a.HW); });
}

// FC item `item` of the group [n0, n0 + G) (cuda_plan::FcItems):
//   stage 1 (item < n1): rows [j0, j0 + b1) of hpre = W1 z + b1, from z (global);
//   stage 2: rows [c0, c0 + b2) of gpre = W2 act(hpre) + b2 and s = gate(gpre), from every
//       row of hpre (written by the group's stage-1 items).
// The inputs are staged in shared memory, fc_item_rows(G) rows of kFcItemChunk<T> (rows G..
// zero; the whole K up to 2048 in bfloat16, 512 otherwise), in chunks where K is longer; the sums
// over the chunks stay in shared memory (at most kThreads rows an item,
// FcItems), then go out with the bias (and the gate). Kept lean in registers: the item code
// is inlined into the kernel, which is at its 64 registers (ptxas -v: 0 spills).
template <typename T, bool kMax>
__device__ __forceinline__ void forward_fc_item(const ForwardArgs& a, const PersistentConfig& c,
                                             int64_t n0, int G, int64_t item, acc_t<T>* sm) {
  using A = acc_t<T>;
  const int64_t C = a.C, Cr = a.Cr;
  const int GR = int(cuda_plan::fc_item_rows(G));  // staged rows, a multiple of kFcPass
  const bool stage1 = item < c.fc.n1;
  // this item's rows of its weight matrix, and the length K of the input vectors
  const int64_t r0 = stage1 ? item * c.fc.b1 : (item - c.fc.n1) * c.fc.b2;
  const int64_t rows_total = stage1 ? Cr : C;
  const int R = int(cuda_plan::min64(stage1 ? c.fc.b1 : c.fc.b2, rows_total - r0));
  const int64_t K = stage1 ? C : Cr;
  const T* M = static_cast<const T*>(stage1 ? a.w1 : a.w2) + r0 * K;
  const T* bias = static_cast<const T*>(stage1 ? a.b1 : a.b2);
  const A* in = static_cast<const A*>(stage1 ? a.z : a.hpre);  // G rows of K
  A* out = static_cast<A*>(stage1 ? a.hpre : a.gpre);          // G rows of rows_total
  A* s = static_cast<A*>(c.ws) + c.off.s;
  const int L = fc_item_lanes<T>(R, K);
  constexpr int KCH = kFcItemChunk<T>;  // inputs staged per row: 2048 (bfloat16) or 512
  A* sums = sm + GR * KCH;  // [GR][kThreads]: the item's outputs (R <= kThreads rows)
  for (int64_t k0 = 0; k0 < K; k0 += KCH) {
    const int kc = int(K - k0 < KCH ? K - k0 : KCH);
    __syncthreads();  // the previous chunk is consumed
    // G rows of kc inputs (written by other CTAs in this launch) and GR - G rows of zeros
    if constexpr (std::is_same_v<T, __half>) {
      // half keeps 12a's staging (column k = threadIdx.x, its G loads issued before any
      // store): the cp.async staging made its max-squeeze kernels spill (sm_90a, ptxas -v)
      static_assert(KCH == kThreads, "one staged column per thread");
      const int k = threadIdx.x;
      if (k < kc) {
        A v[cuda_plan::kMaxGroup];
#pragma unroll
        for (int g = 0; g < cuda_plan::kMaxGroup; ++g)  // written by other CTAs in this launch
          v[g] = g < G ? load_cg(in + (n0 + g) * K + k0 + k) : A(0);
#pragma unroll
        for (int g = 0; g < cuda_plan::kMaxGroup; ++g)
          if (g < GR) sm[g * KCH + k] = v[g];
        if (!stage1) {
#pragma unroll 1
          for (int g = 0; g < G; ++g) sm[g * KCH + k] = activation_fwd(a.act, sm[g * KCH + k]);
        }
      }
    } else {
      // 16-byte cp.async copies, all in flight at once (issue 12e: a conv5_x stage-1 item
      // in bfloat16 stages its whole K = 2048 in one round, where 4 chunks of 512 took 4)
      stage_rows_padded<KCH>(in + n0 * K + k0, int(K), G, GR, kc, sm);
      if (!stage1) {  // act(hpre), in place (rows G.. stay zero)
        __syncthreads();
        for (int g = 0; g < G; ++g)
          for (int k = fresh_tid(); k < kc; k += kThreads)
            sm[g * KCH + k] = activation_fwd(a.act, sm[g * KCH + k]);
      }
    }
    __syncthreads();
    const bool first = k0 == 0;
    // samples in passes of kFcPass (one instantiation of the loop; more accumulators spill):
    // a further pass re-reads the item's weights, from L1/L2
#pragma unroll 1
    for (int g0 = 0; g0 < GR; g0 += kFcPass) {
      A* sg = sums + g0 * kThreads;
      auto emit = [&](int g, int r, A v) {  // the same lane for (g, r) in every chunk
        A* p = sg + g * kThreads + r;
        *p = first ? v : *p + v;
      };
      rows_dot_padded<kFcPass, KCH>(M + k0, int(K), R, kc, sm + g0 * KCH, G - g0, L, emit);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * R; i += kThreads) {
    const int g = i / R, r = i - (i / R) * R;
    A v = sums[g * kThreads + r];
    if (bias != nullptr) v += to_acc(bias[r0 + r]);
    const int64_t o = (n0 + g) * rows_total + r0 + r;
    if (!stage1) s[o] = gate_fwd(a.gate, v);
    out[o] = v;
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
  const Counters cnt{c.counters, c.counter_stride};
  // tiles and total: Schedule fields computed on the host (kernel parameters, read from the
  // constant bank where used; computed here, they held 4 registers across the item loop)
  const int64_t N = a.N, C = a.C, HW = a.HW, G = c.G, tiles = c.sched.tiles;
  const int64_t total = c.sched.ntotal;

  for (;;) {
    if (threadIdx.x == 0) s_ticket = atomicAdd(cnt.ticket(), counter_t(1));
    __syncthreads();
    const int64_t t = int64_t(s_ticket);
    __syncthreads();  // every thread has read the ticket; shared memory is free
    if (t >= total) break;
    const cuda_plan::Item it = c.sched.decode(t);
    const int64_t n = it.sample, grp = n / G;
    int64_t c0 = 0, nc = 0, p0 = 0, np = 0, pb = 0;
    if (it.kind != cuda_plan::kItemFc) c.tiles.get(it.index, c0, nc, p0, np, pb);

    if (it.kind == cuda_plan::kItemReduce) {
      A* part = ws + c.off.partial + (n * c.tiles.npb + pb) * C + c0;
      auto emit = [&](int ch, A v) { part[ch] = v; };
      if constexpr (!kNHWC) {
        const T* src = x + (n * C + c0) * HW + p0;
        if (kHasVecPath<T> && a.vec) {
          reduce_rows<kMax, V>(src, HW, int(nc), int(np), emit);
        } else if (kHasVecPath<T> && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   (np == HW || nc == 1)) {
          // rows that are not 16-byte multiples, x 16-byte aligned: the tile read as one span
          // of 16-byte vectors (tiles.cuh reduce_span)
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
      if (s_last) {  // uniform: this CTA finished the group's squeeze
        __threadfence();
        forward_squeeze<T, kMax>(a, c, grp * G, int(cuda_plan::group_size(N, G, grp)));
        cta_release_fence();
        if (threadIdx.x == 0) store_release(cnt.squeezed() + grp, 1);
      }
    } else if (it.kind == cuda_plan::kItemFc) {
      const bool stage1 = it.index < c.fc.n1;
      fc_item_wait(cnt, grp, stage1, c.fc.n1);  // stage 1: z; stage 2: the stage-1 items
      forward_fc_item<T, kMax>(a, c, grp * G, int(cuda_plan::group_size(N, G, grp)), it.index,
                               sm);
      cta_release_fence();
      if (threadIdx.x == 0) atomicAdd((stage1 ? cnt.fc1_done() : cnt.ready()) + grp, counter_t(1));
    } else {
      cta_wait_at_least(cnt.ready() + grp, counter_t(c.fc.n2));
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

// Backward: one persistent launch, any architecture, deterministic.
//
// The ticket order of cuda_plan::Schedule, with these items:
//   reduce item (sample n, tile): partials of ds = sum g x (g = dy, masked by y > 0 when the
//       residual was fused) and, for max squeeze, of the tie counts #(x == z) -> workspace.
//       The CTA that completes an FC group combines them: dpre = ds gate'(gpre) (options.h's
//       gate_backward, which selects 0 at flat points) and s per sample, the tie counts into
//       coef; then raises the group's "squeezed" flag;
//   FC item (group, item; cuda_plan::FcItems): stage 1, a block of columns j of dh = dpre W2
//       (dhpre = dh act'(hpre), h = act(hpre) kept in the workspace), waits for the flag and
//       counts the group's stage-1 items; stage 2, a block of channels c of dz = dhpre W1
//       (coef = dz / HW (avg) or dz / count (max)), waits for every stage-1 item of the
//       group, counts the group's stage-2 items and the finished stage-2 items of all groups;
//   write item (sample n, tile): waits until every stage-2 item of its group is done, then
//       dx = g s + coef (avg) or g s + [x == z] coef (max), dres = g, re-reading dy, x, y
//       while they are in L2;
//   tail items, after every write item: wait until every stage-2 FC item is done, then the
//       weight gradients as sums over the batch in a fixed order: dW2 = dpre^T h, dW1 =
//       dhpre^T z, db2 = sum dpre, db1 = sum dhpre, tile by tile.
// Deadlock-free for any grid (cuda_plan::Schedule): every item waits only for items with
// smaller tickets; reduce items never wait; a CTA takes a ticket only when its item is done.
// No floating-point atomics anywhere: the gradients are bitwise reproducible, so the
// deterministic-algorithms mode needs no other path.
#include <c10/cuda/CUDAException.h>

#include "dispatch.cuh"
#include "fc.cuh"
#include "func_cache.h"
#include "kernels.h"
#include "tiles.cuh"

namespace se_kernels {
namespace cuda {
namespace detail {

// dpre and s of the FC group [n0, n0 + G) from the npb partials of ds at
// pds[(n npb + b) C + c]; for max squeeze the tie counts wait in coef (run by the CTA whose
// reduce item completed the group).
template <typename T, bool kMax>
__device__ void backward_squeeze(const BackwardArgs& a, const PersistentConfig& c, int64_t n0,
                                 int G) {
  using A = acc_t<T>;
  const A* gpre = static_cast<const A*>(a.gpre);
  A* ws = static_cast<A*>(c.ws);
  const A* pds = ws + c.off.partial;
  // tie-count partials: uint32 in the first 4 bytes' worth of the cnt region, same indices
  const unsigned* pcnt = reinterpret_cast<const unsigned*>(ws + c.off.cnt);
  A* dpre = ws + c.off.dpre;
  A* s = ws + c.off.s;
  A* coef = ws + c.off.coef;
  const int64_t C = a.C, npb = c.tiles.npb;
  auto partial = [&](const auto* base) {
    return [=](int64_t i) { return base + ((n0 + i / C) * npb) * C + i % C; };
  };
  combine_strided<false, A>(G * C, npb, C, partial(pds), [&](int64_t i, A ds) {
    const int64_t o = n0 * C + i;
    const A v = gpre[o];
    dpre[o] = gate_backward(a.gate, v, ds);  // selects 0 where the gate is flat (options.h)
    s[o] = gate_fwd(a.gate, v);
  });
  if constexpr (kMax) {
    combine_strided<false, unsigned>(G * C, npb, C, partial(pcnt), [&](int64_t i, unsigned k) {
      count_to_slot(coef + n0 * C + i, k);  // the count's bits, until dz replaces them
    });
  }
}

// FC item `item` of the group [n0, n0 + G) (cuda_plan::FcItems, column blocks):
//   stage 1 (item < n1): columns [j0, j0 + b1) of dh = dpre W2, then dhpre = dh act'(hpre)
//       and h = act(hpre) for them (the products with act' as options.h's
//       activation_backward, which selects 0 at flat points);
//   stage 2: columns [c0, c0 + b2) of dz = dhpre W1 (every column of dhpre: the group's
//       stage-1 items), then coef = dz / HW (avg) or dz / #ties (max).
// Each output is one column of one item: cols_dot_staged's fixed order for the item's block
// width, which the plan fixes (not the grid): bitwise reproducible for every grid size. The
// block's weights reach shared memory as 16-byte cp.async copies (fc.cuh).
template <typename T, bool kMax>
__device__ __forceinline__ void backward_fc_item(const BackwardArgs& a, const PersistentConfig& c,
                                                 int64_t n0, int G, int64_t item, acc_t<T>* sm) {
  using A = acc_t<T>;
  const A* hpre = static_cast<const A*>(a.hpre);
  A* ws = static_cast<A*>(c.ws);
  A* coef = ws + c.off.coef;
  A* dhpre = ws + c.off.dhpre;
  A* h = ws + c.off.h;
  const int64_t C = a.C, Cr = a.Cr;
  const bool stage1 = item < c.fc.n1;
  const int64_t j0 = stage1 ? item * c.fc.b1 : (item - c.fc.n1) * c.fc.b2;  // first column
  const int64_t cols = stage1 ? Cr : C;   // columns of the product (its outputs)
  const int64_t rows = stage1 ? C : Cr;   // rows of the weight matrix (its inputs)
  const int nc = int(cuda_plan::min64(stage1 ? c.fc.b1 : c.fc.b2, cols - j0));
  const T* M = static_cast<const T*>(stage1 ? a.w2 : a.w1) + j0;
  const A* v = (stage1 ? ws + c.off.dpre : dhpre) + n0 * rows;  // G rows of `rows`
  cols_dot_staged(M, cols, int(rows), nc, v, rows, G, sm, [&](int g, int j, A val) {
    const int64_t o = (n0 + g) * cols + j0 + j;
    if (stage1) {
      const A hp = hpre[o];
      dhpre[o] = activation_backward(a.act, hp, val);
      h[o] = activation_fwd(a.act, hp);
    } else if constexpr (kMax) {
      // dz / #ties: the count is exact (uint32); its conversion to float rounds only above
      // 2^24 ties, by at most 2^-25 relative (below the float result's own rounding). No
      // double division: its slow-path call made the max + residual kernels spill.
      coef[o] = val / A(count_from_slot(load_cg(coef + o)));
    } else {
      coef[o] = val / A(a.HW);
    }
  });
}

template <typename T>
__device__ void weight_grads(const BackwardArgs& a, const PersistentConfig& c, int64_t e,
                             acc_t<T>* sm) {
  using A = acc_t<T>;
  const A* ws = static_cast<const A*>(c.ws);
  const A* dpre = ws + c.off.dpre;
  const A* dhpre = ws + c.off.dhpre;
  const A* h = ws + c.off.h;
  const A* z = static_cast<const A*>(a.z);
  const int C = int(a.C), Cr = int(a.Cr);
  const cuda_plan::WeightGradItems wg{a.C, a.Cr};
  const int64_t tw = wg.tiles_w2();
  if (e < tw) {  // dW2 (C x Cr) = dpre^T h
    const int64_t qt = cuda_plan::ceil_div(Cr, cuda_plan::kGemmTile);
    gemm_tn_tile(dpre, h, a.N, C, Cr, int(e / qt), int(e % qt), static_cast<T*>(a.dw2), sm);
    return;
  }
  e -= tw;
  if (e < tw) {  // dW1 (Cr x C) = dhpre^T z
    const int64_t qt = cuda_plan::ceil_div(C, cuda_plan::kGemmTile);
    gemm_tn_tile(dhpre, z, a.N, Cr, C, int(e / qt), int(e % qt), static_cast<T*>(a.dw1), sm);
    return;
  }
  e -= tw;
  if (e < wg.blocks_b2()) {
    column_sums(dpre, a.N, C, int(e), static_cast<T*>(a.db2), sm);
    return;
  }
  e -= wg.blocks_b2();
  column_sums(dhpre, a.N, Cr, int(e), static_cast<T*>(a.db1), sm);
}

// hot-kernel: se_bwd_persistent_kernel
template <typename T, bool kNHWC, bool kMax, bool kRes>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    se_bwd_persistent_kernel(const BackwardArgs a, const PersistentConfig c) {
  using A = acc_t<T>;
  constexpr int V = kHasVecPath<T> ? kVec<T> : 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  __shared__ counter_t s_ticket;
  __shared__ int s_last;

  const T* dy = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  const A* z = static_cast<const A*>(a.z);
  T* dx = static_cast<T*>(a.dx);
  T* dres = static_cast<T*>(a.dres);
  A* ws = static_cast<A*>(c.ws);
  const Counters cnt{c.counters, c.counter_stride};
  const int64_t N = a.N, C = a.C, HW = a.HW, G = c.G, tiles = c.tiles.count();
  const int64_t total = c.sched.total();
  const int64_t tc = c.tiles.tc;
  // NCHW reduce items whose rows are not 16-byte multiples read their tile as one span of
  // 16-byte vectors (tiles.cuh grad_reduce_span) when dy, x (and y) are 16-byte aligned
  const bool span_vec = (reinterpret_cast<uintptr_t>(dy) | reinterpret_cast<uintptr_t>(x) |
                         reinterpret_cast<uintptr_t>(kRes ? y : x)) % 16 == 0;

  for (;;) {
    if (threadIdx.x == 0) s_ticket = atomicAdd(cnt.ticket(), counter_t(1));
    __syncthreads();
    const int64_t t = int64_t(s_ticket);
    __syncthreads();  // every thread has read the ticket; shared memory is free
    if (t >= total) break;
    const cuda_plan::Item it = c.sched.decode(t);
    if (it.kind == cuda_plan::kItemTail) {
      cta_wait_at_least(cnt.fc_done(), counter_t(c.groups * c.fc.n2));
      weight_grads<T>(a, c, it.index, sm);
      continue;
    }
    const int64_t n = it.sample, grp = n / G;
    int64_t c0 = 0, nc = 0, p0 = 0, np = 0, pb = 0;
    if (it.kind != cuda_plan::kItemFc) c.tiles.get(it.index, c0, nc, p0, np, pb);
    const A* zc = z + n * C + c0;

    if (it.kind == cuda_plan::kItemReduce) {
      A* pds = ws + c.off.partial + (n * c.tiles.npb + pb) * C + c0;
      unsigned* pcn = reinterpret_cast<unsigned*>(ws + c.off.cnt) + (n * c.tiles.npb + pb) * C + c0;
      if constexpr (!kNHWC) {
        const int64_t o = (n * C + c0) * HW + p0;
        const T* yo = kRes ? y + o : nullptr;
        auto emit = [&](int r, A ds, unsigned k) {
          pds[r] = ds;
          if constexpr (kMax) pcn[r] = k;
        };
        if (kHasVecPath<T> && a.vec) {
          grad_reduce_rows<kMax, kRes, V>(dy + o, x + o, yo, HW, int(nc), int(np), zc, emit);
        } else if (kHasVecPath<T> && span_vec && (np == HW || nc == 1)) {  // one span
          grad_reduce_span<kMax, kRes, V>(dy + o, x + o, yo, int(nc), int(np), zc, emit);
        } else {
          grad_reduce_rows<kMax, kRes, 1>(dy + o, x + o, yo, HW, int(nc), int(np), zc, emit);
        }
      } else {
        const int64_t o = (n * HW + p0) * C + c0;
        const T* yo = kRes ? y + o : nullptr;
        auto emit_ds = [&](int ch, A v) { pds[ch] = v; };
        auto emit_cnt = [&](int ch, unsigned v) { pcn[ch] = v; };
        if (kHasVecPath<T> && a.vec) {
          grad_reduce_nhwc<kMax, kRes, V>(dy + o, x + o, yo, C, int(np), int(nc), zc, sm, emit_ds,
                                          emit_cnt);
        } else {
          grad_reduce_nhwc<kMax, kRes, 1>(dy + o, x + o, yo, C, int(np), int(nc), zc, sm, emit_ds,
                                          emit_cnt);
        }
      }
      cta_release_fence();
      if (threadIdx.x == 0) {
        const counter_t prev = atomicAdd(cnt.arrive() + grp, counter_t(1));
        s_last = prev + 1 == counter_t(cuda_plan::group_size(N, G, grp) * tiles);
      }
      __syncthreads();
      if (s_last) {  // uniform: this CTA finished the group's reduce
        __threadfence();
        backward_squeeze<T, kMax>(a, c, grp * G, int(cuda_plan::group_size(N, G, grp)));
        cta_release_fence();
        if (threadIdx.x == 0) store_release(cnt.squeezed() + grp, 1);
      }
    } else if (it.kind == cuda_plan::kItemFc) {
      const bool stage1 = it.index < c.fc.n1;
      fc_item_wait(cnt, grp, stage1, c.fc.n1);  // stage 1: dpre; stage 2: the stage-1 items
      backward_fc_item<T, kMax>(a, c, grp * G, int(cuda_plan::group_size(N, G, grp)),
                                it.index, sm);
      cta_release_fence();
      if (threadIdx.x == 0) {
        if (stage1) {
          atomicAdd(cnt.fc1_done() + grp, counter_t(1));
        } else {
          atomicAdd(cnt.ready() + grp, counter_t(1));
          atomicAdd(cnt.fc_done(), counter_t(1));
        }
      }
    } else {
      cta_wait_at_least(cnt.ready() + grp, counter_t(c.fc.n2));
      const A* s = ws + c.off.s + n * C + c0;
      const A* cf = ws + c.off.coef + n * C + c0;
      for (int i = threadIdx.x; i < nc; i += kThreads) {
        sm[i] = load_cg(s + i);
        sm[tc + i] = load_cg(cf + i);
        if constexpr (kMax) sm[2 * tc + i] = zc[i];
      }
      __syncthreads();
      if constexpr (!kNHWC) {
        const int64_t o = (n * C + c0) * HW + p0;
        const T* yo = kRes ? y + o : nullptr;
        T* ro = kRes ? dres + o : nullptr;
        if (kHasVecPath<T> && c.flat_vec && np == HW) {  // whole rows: one aligned span
          grad_write_flat<kMax, kRes, V>(dy + o, x + o, yo, dx + o, ro, int(nc * HW), int(HW), sm,
                                         sm + tc, sm + 2 * tc);
        } else if (kHasVecPath<T> && a.vec) {
          grad_write_rows<kMax, kRes, V>(dy + o, x + o, yo, dx + o, ro, HW, int(nc), int(np), sm,
                                         sm + tc, sm + 2 * tc);
        } else {
          grad_write_rows<kMax, kRes, 1>(dy + o, x + o, yo, dx + o, ro, HW, int(nc), int(np), sm,
                                         sm + tc, sm + 2 * tc);
        }
      } else {
        const int64_t o = (n * HW + p0) * C + c0;
        const T* yo = kRes ? y + o : nullptr;
        T* ro = kRes ? dres + o : nullptr;
        if (kHasVecPath<T> && a.vec) {
          grad_write_nhwc<kMax, kRes, V>(dy + o, x + o, yo, dx + o, ro, C, int(np), int(nc), sm,
                                         sm + tc, sm + 2 * tc);
        } else {
          grad_write_nhwc<kMax, kRes, 1>(dy + o, x + o, yo, dx + o, ro, C, int(np), int(nc), sm,
                                         sm + tc, sm + 2 * tc);
        }
      }
    }
  }
}

}  // namespace detail

namespace {

using namespace detail;

using Kernel = void (*)(BackwardArgs, PersistentConfig);

Kernel pick(const BackwardArgs& a) {
  return with_kernel_flags(a.dtype, a.nhwc, a.max_squeeze, a.y != nullptr,
                           [](auto tt, auto nh, auto mx, auto rs) -> Kernel {
                             using T = typename decltype(tt)::type;
                             return &se_bwd_persistent_kernel<T, decltype(nh)::value,
                                                              decltype(mx)::value,
                                                              decltype(rs)::value>;
                           });
}

}  // namespace

int backward_persistent_blocks_per_sm(const BackwardArgs& a, int64_t smem) {
  return occupancy_blocks_per_sm(pick(a), kThreads, smem);
}

void launch_backward_persistent(const BackwardArgs& a, const PersistentConfig& c,
                               cudaStream_t stream) {
  launch_checked(pick(a), c.grid, kThreads, c.smem, stream, a, c);
}

}  // namespace cuda
}  // namespace se_kernels

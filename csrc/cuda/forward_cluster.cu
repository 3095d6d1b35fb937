// Forward, strategy 1 of DESIGN.md (sm_90): the slab on chip, one pass over HBM.
//
// A thread-block cluster of K CTAs owns G consecutive samples; CTA `rank` owns channels
// [rank Cc, rank Cc + Cc) of each. In one launch, each CTA:
//   1. copies its part of the G slabs into shared memory (cp.async, 16 bytes a copy);
//   2. squeezes its channels from shared memory (z: no cross-CTA reduction is needed, since
//      a channel lives in one CTA);
//   3. computes its part of the first FC over its channels, hpart = W1[:, own] z[own],
//      reading each weight element once per G samples;
//   4. cluster barrier; sums hpart over the cluster's CTAs through distributed shared memory
//      (rank order, so every CTA gets the same bits), adds b1, applies the activation;
//   5. computes the second FC and the gate for its own channels (W2[own, :] h);
//   6. scales its slab from shared memory (adds the residual, applies relu) and writes y.
// HBM sees x once, y once (and the residual once), the weights once per cluster.
// On other architectures the kernel compiles to an empty shell that the launcher never runs
// (forward_cluster_compiled() checks the device's machine code).
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>

#include "dispatch.cuh"
#include "fc.cuh"
#include "func_cache.h"
#include "kernels.h"
#include "tiles.cuh"

namespace se_kernels {
namespace cuda {
namespace detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait_acquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
#endif

// n elements (a multiple of VEC) from global src to shared dst; 16-byte cp.async when VEC
// elements are 16 bytes (both addresses then 16-byte aligned), else element copies.
template <int VEC, typename T>
__device__ __forceinline__ void copy_span(T* dst, const T* src, int n) {
  for (int i = threadIdx.x; i < n / VEC; i += kThreads) {
    if constexpr (VEC * sizeof(T) == 16) {
      cp_async16(dst + i * VEC, src + int64_t(i) * VEC);
    } else {
      static_assert(VEC == 1, "vector copies are 16 bytes");
      dst[i] = src[i];
    }
  }
}

// rows x w elements (w a multiple of VEC): row r from src + r * ss to dst + r * ds.
template <int VEC, typename T>
__device__ __forceinline__ void copy_rows(T* dst, int ds, const T* src, int64_t ss, int rows,
                                          int w) {
  const int per = w / VEC;
  const int total = rows * per;
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const int r = i / per, k = i - (i / per) * per;
    T* d = dst + r * ds + k * VEC;
    const T* s = src + int64_t(r) * ss + k * VEC;
    if constexpr (VEC * sizeof(T) == 16) {
      cp_async16(d, s);
    } else {
      static_assert(VEC == 1, "vector copies are 16 bytes");
      *d = *s;
    }
  }
}

// hot-kernel: se_fwd_cluster_kernel
template <typename T, bool kNHWC, bool kMax, bool kRes>
// Two CTAs per SM (64 registers a thread) so that one CTA can load while the other stores;
// the planner sizes shared memory for two where it can.
__global__ void __launch_bounds__(kThreads, 2)
    se_fwd_cluster_kernel(const ForwardArgs a, const ClusterConfig c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using A = acc_t<T>;
  constexpr int V = kHasVecPath<T> ? kVec<T> : 1;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const T* x = static_cast<const T*>(a.x);
  const T* w1 = static_cast<const T*>(a.w1);
  const T* w2 = static_cast<const T*>(a.w2);
  const T* b1 = static_cast<const T*>(a.b1);
  const T* b2 = static_cast<const T*>(a.b2);
  const T* res = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.y);
  A* z = static_cast<A*>(a.z);
  A* hpre = static_cast<A*>(a.hpre);
  A* gpre = static_cast<A*>(a.gpre);

  const int K = c.K;
  const int rank = int(cluster.block_rank());
  const int64_t N = a.N, C = a.C, Cc = c.Cc;
  const int HW = int(a.HW), Cr = int(a.Cr);  // HW * Cc and Cr * G fit in shared memory
  const int64_t n0 = int64_t(blockIdx.x / K) * c.G;
  const int G = int(cuda_plan::min64(c.G, N - n0));
  const int64_t c0 = rank * Cc;
  const int nch = int(cuda_plan::max64(0, cuda_plan::min64(Cc, C - c0)));
  const int cc = int(Cc);

  T* slab = reinterpret_cast<T*>(smem_raw + c.smem_layout.slab);
  A* zs = reinterpret_cast<A*>(smem_raw + c.smem_layout.z);
  A* ss = reinterpret_cast<A*>(smem_raw + c.smem_layout.s);
  A* hpart = reinterpret_cast<A*>(smem_raw + c.smem_layout.hpart);
  A* hs = reinterpret_cast<A*>(smem_raw + c.smem_layout.h);
  A* scratch = reinterpret_cast<A*>(smem_raw + c.smem_layout.scratch);

  // 1. the slab part: [G][Cc][HW] (NCHW) or [G][HW][Cc] (NHWC)
  if constexpr (!kNHWC) {
    for (int g = 0; g < G; ++g) {
      const T* src = x + ((n0 + g) * C + c0) * HW;
      if (kHasVecPath<T> && c.flat_vec) {
        copy_span<V>(slab + g * cc * HW, src, nch * HW);
      } else {
        copy_span<1>(slab + g * cc * HW, src, nch * HW);
      }
    }
  } else {
    const T* src = x + n0 * HW * C + c0;
    if (kHasVecPath<T> && a.vec) {
      copy_rows<V>(slab, cc, src, C, G * HW, nch);
    } else {
      copy_rows<1>(slab, cc, src, C, G * HW, nch);
    }
  }
  // The weight slices of this CTA's two FCs, W1[:, own] (Cr rows) and W2[own, :] (one
  // contiguous span), requested into L2 while the slab copy is in flight: the FCs then read
  // them from L2 instead of waiting on HBM after the squeeze.
  prefetch_l2_rows(w1 + c0, C, Cr, nch);
  prefetch_l2_rows(w2 + c0 * Cr, 0, 1, nch * Cr);
  cp_async_wait_all();
  __syncthreads();

  // 2. squeeze the own channels
  for (int g = 0; g < G; ++g) {
    const int64_t zo = (n0 + g) * C + c0;
    auto emit = [&](int ch, A v) {
      const A zv = kMax ? v : v / A(HW);
      zs[g * cc + ch] = zv;
      z[zo + ch] = zv;
    };
    if constexpr (!kNHWC) {
      const T* src = slab + g * cc * HW;
      if (kHasVecPath<T> && a.vec) {
        reduce_rows<kMax, V>(src, HW, nch, HW, emit);
      } else {
        reduce_rows<kMax, 1>(src, HW, nch, HW, emit);
      }
    } else {
      const T* src = slab + g * HW * cc;
      if (kHasVecPath<T> && a.vec) {
        reduce_nhwc<kMax, V>(src, cc, HW, nch, scratch, emit);
      } else {
        reduce_nhwc<kMax, 1>(src, cc, HW, nch, scratch, emit);
      }
    }
  }
  __syncthreads();

  // 3. this CTA's part of the first FC: hpart[g, j] = sum_{own c} W1[j, c] z[g, c]
  rows_dot(w1 + c0, C, Cr, nch, zs, cc, G, fc_lanes<T>(nch),
           [&](int g, int j, A v) { hpart[g * Cr + j] = v; });

  // 4. h = act(sum over the cluster + b1)
  cluster.sync();
  for (int i = threadIdx.x; i < G * Cr; i += kThreads) {
    A v = A(0);
    for (int r = 0; r < K; ++r) v += cluster.map_shared_rank(hpart, unsigned(r))[i];
    const int j = i % Cr;
    if (b1 != nullptr) v += to_acc(b1[j]);
    if (rank == 0) hpre[n0 * Cr + i] = v;
    hs[i] = v;
  }
  cluster_arrive_release();  // done reading the other CTAs' shared memory
  // The activation in a loop of its own, over the entries this thread just wrote (no barrier
  // needed): the cluster-sum loop above keeps its distributed-shared-memory addresses live,
  // and the longer activations (gelu's erfc) beside them made ptxas spill at 64 registers.
  for (int i = threadIdx.x; i < G * Cr; i += kThreads) hs[i] = activation_fwd(a.act, hs[i]);
  __syncthreads();

  // 5. the second FC and the gate for the own channels
  rows_dot(w2 + c0 * Cr, Cr, nch, Cr, hs, Cr, G, fc_lanes<T>(Cr), [&](int g, int ch, A v) {
    if (b2 != nullptr) v += to_acc(b2[c0 + ch]);
    gpre[(n0 + g) * C + c0 + ch] = v;
    ss[g * cc + ch] = gate_fwd(a.gate, v);
  });
  __syncthreads();

  // 6. y from the slab
  for (int g = 0; g < G; ++g) {
    if constexpr (!kNHWC) {
      const int64_t o = ((n0 + g) * C + c0) * HW;
      const T* r = kRes ? res + o : nullptr;
      if (kHasVecPath<T> && c.flat_vec) {
        scale_flat<kRes, V>(slab + g * cc * HW, r, y + o, nch * HW, HW, ss + g * cc);
      } else {
        scale_flat<kRes, 1>(slab + g * cc * HW, r, y + o, nch * HW, HW, ss + g * cc);
      }
    } else {
      const int64_t o = (n0 + g) * HW * C + c0;
      const T* r = kRes ? res + o : nullptr;
      if (kHasVecPath<T> && a.vec) {
        scale_nhwc<kRes, V>(slab + g * HW * cc, cc, r, y + o, C, HW, nch, ss + g * cc);
      } else {
        scale_nhwc<kRes, 1>(slab + g * HW * cc, cc, r, y + o, C, HW, nch, ss + g * cc);
      }
    }
  }
  cluster_wait_acquire();  // no CTA leaves while another may still read its hpart
#endif
}

}  // namespace detail

namespace {

using namespace detail;

using Kernel = void (*)(ForwardArgs, ClusterConfig);

// No float64 cluster kernel: float64 takes the persistent path.
Kernel pick(const ForwardArgs& a) {
  if (a.dtype == DType::kDouble) return nullptr;
  return with_kernel_flags(a.dtype, a.nhwc, a.max_squeeze, a.residual != nullptr,
                           [](auto tt, auto nh, auto mx, auto rs) -> Kernel {
                             using T = typename decltype(tt)::type;
                             if constexpr (sizeof(T) == 8) {
                               return nullptr;
                             } else {
                               return &se_fwd_cluster_kernel<T, decltype(nh)::value,
                                                             decltype(mx)::value,
                                                             decltype(rs)::value>;
                             }
                           });
}

struct Launch {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attr[1]{};
};

void prepare(Kernel k, const ClusterConfig& c, cudaStream_t stream, Launch& l) {
  const void* kp = reinterpret_cast<const void*>(k);
  ensure_dynamic_smem(kp, c.smem);
  cached(CacheKey{current_device(), kp, -2, 0}, [&] {  // all of L1 as shared memory: 2 CTAs/SM
    C10_CUDA_CHECK(cudaFuncSetAttribute(kp, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        int(cudaSharedmemCarveoutMaxShared)));
    return 1;
  });
  if (c.K > 8) {
    cached(CacheKey{current_device(), kp, -1, 0}, [&] {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kp, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      return 1;
    });
  }
  l.config.gridDim = dim3(unsigned(c.K * c.groups));
  l.config.blockDim = dim3(kThreads);
  l.config.dynamicSmemBytes = size_t(c.smem);
  l.config.stream = stream;
  l.attr[0].id = cudaLaunchAttributeClusterDimension;
  l.attr[0].val.clusterDim.x = unsigned(c.K);
  l.attr[0].val.clusterDim.y = 1;
  l.attr[0].val.clusterDim.z = 1;
  l.config.attrs = l.attr;
  l.config.numAttrs = 1;
}

}  // namespace

bool forward_cluster_compiled(const ForwardArgs& a) {
  const Kernel k = pick(a);
  if (k == nullptr) return false;
  const void* kp = reinterpret_cast<const void*>(k);
  // The PTX arch, not the binary's: a build with compute_80 PTX (TORCH_CUDA_ARCH_LIST=8.0+PTX)
  // JIT-compiles the empty sm_80 shell for an sm_90 device, and reports binaryVersion 90.
  return cached(CacheKey{current_device(), kp, 0, 0}, [&] {
           cudaFuncAttributes fa{};
           C10_CUDA_CHECK(cudaFuncGetAttributes(&fa, kp));
           return fa.binaryVersion < fa.ptxVersion ? fa.binaryVersion : fa.ptxVersion;
         }) >= 90;
}

int forward_cluster_max_active(const ForwardArgs& a, const ClusterConfig& c,
                               cudaStream_t stream) {
  const Kernel k = pick(a);
  if (k == nullptr) return 0;
  const void* kp = reinterpret_cast<const void*>(k);
  return cached(CacheKey{current_device(), kp, c.smem, c.K}, [&] {
    Launch l;
    // the launch stream, not the null stream: a first call inside graph capture (on a
    // capturing stream) would otherwise touch the legacy stream and break the capture
    prepare(k, c, stream, l);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, k, &l.config) != cudaSuccess) {
      (void)cudaGetLastError();  // not launchable as configured: report 0
      return 0;
    }
    return clusters;
  });
}

bool launch_forward_cluster(const ForwardArgs& a, const ClusterConfig& c, cudaStream_t stream) {
  const Kernel k = pick(a);
  TORCH_CHECK(k != nullptr, "se_kernels: no cluster kernel for this dtype");
  Launch l;
  prepare(k, c, stream, l);
  const cudaError_t err = cudaLaunchKernelEx(&l.config, k, a, c);
  if (err == cudaErrorInvalidClusterSize || err == cudaErrorLaunchOutOfResources) {
    // Refused, not failed: the occupancy query said yes, but the launch-time resources (MPS
    // SM limits, green contexts) do not hold a cluster of this shape (the runtime reports
    // that as one of these two; CUDA 13 has no separate "cluster out of resources" code).
    // Nothing was enqueued; clear the (non-sticky) error so that the caller's fallback
    // launch starts clean.
    (void)cudaGetLastError();
    return false;
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace cuda
}  // namespace se_kernels

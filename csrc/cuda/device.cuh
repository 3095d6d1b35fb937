// Device helpers shared by the CUDA kernels: element types and their conversions, 16-byte
// packs, NaN-propagating max, warp reductions, cp.async, and the acquire/release primitives
// the persistent kernels synchronise CTAs with.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <cstdint>

#include "se_kernels/cuda_plan.h"
#include "se_kernels/options.h"

namespace se_kernels {
namespace cuda {

using cuda_plan::kThreads;

// ---- element types -------------------------------------------------------------------------

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));

// Whether the kernels have a 16-byte vector path for T. float64 (a simple path) does not:
// 8-byte accesses, coalesced, and half the instantiations to compile.
template <typename T>
constexpr bool kHasVecPath = sizeof(T) < 8;

// CTAs per SM the persistent kernels are compiled for (__launch_bounds__): 2, so 64
// registers a thread; 1 for double, whose accumulators need twice the registers.
template <typename T>
constexpr int kMinBlocks = sizeof(T) == 8 ? 1 : 2;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename A>
__device__ __forceinline__ A neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -CUDART_INF_F;
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -CUDART_INF;
}

// N elements loaded or stored at once: one 16-byte access when N * sizeof(T) == 16.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// ---- reductions ----------------------------------------------------------------------------

// max that propagates NaN, as torch.amax does.
template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  return (a != a || a > b) ? a : b;
}

template <bool kMax, typename A>
__device__ __forceinline__ A combine(A a, A b) {
  if constexpr (kMax) {
    return nan_max(a, b);
  } else {
    return a + b;
  }
}

template <bool kMax, typename A>
__device__ __forceinline__ A identity() {
  if constexpr (kMax) {
    return neg_inf<A>();
  } else {
    return A(0);
  }
}

// Combines v over aligned groups of L lanes (L a power of two <= 32); every lane of the warp
// must call it. Fixed butterfly order: deterministic.
template <bool kMax, typename A>
__device__ __forceinline__ A group_reduce(A v, int L) {
  for (int off = L / 2; off > 0; off /= 2) v = combine<kMax>(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// ---- uint32 counts kept in accumulation-type slots ------------------------------------------

// The bits of a count (not its value) in a float/double slot of the workspace, and back.
// Loads and stores move bits unchanged, so the count survives exactly.
__device__ __forceinline__ void count_to_slot(float* p, unsigned k) { *p = __uint_as_float(k); }
__device__ __forceinline__ void count_to_slot(double* p, unsigned k) {
  *p = __longlong_as_double(static_cast<long long>(k));
}
__device__ __forceinline__ unsigned count_from_slot(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned count_from_slot(double v) {
  return static_cast<unsigned>(__double_as_longlong(v));
}

// ---- asynchronous copies (sm_80+) ----------------------------------------------------------

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
}
// The same without the compiler memory clobber, for a run of copies that a
// cp_async_wait_all() (which has one) and a barrier complete: volatile asm statements keep
// their order, so the copies stay before that wait, and nothing of the thread's reads or
// writes of shared memory moves past the wait; a clobber on each copy made the compiler
// reload and hold values across the loop (the persistent forward spilled; ptxas -v).
__device__ __forceinline__ void cp_async16_noclobber(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// ---- inter-CTA synchronisation -------------------------------------------------------------

using counter_t = unsigned long long;

__device__ __forceinline__ counter_t load_acquire(const counter_t* p) {
  counter_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(counter_t* p, counter_t v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;\n" ::"l"(p), "l"(v) : "memory");
}

// Every thread of the CTA waits until *p >= target (thread 0 polls, then a barrier).
__device__ __forceinline__ void cta_wait_at_least(const counter_t* p, counter_t target) {
  if (threadIdx.x == 0) {
    while (load_acquire(p) < target) __nanosleep(128);
    __threadfence();
  }
  __syncthreads();
}

// An FC item's wait (cuda_plan::Schedule): stage 1 for the group's "squeezed" flag, stage 2
// for every stage-1 item of the group; both are earlier tickets of the same group.
template <typename Counters>
__device__ __forceinline__ void fc_item_wait(const Counters& cnt, int64_t grp, bool stage1,
                                             int64_t n1) {
  if (stage1) {
    cta_wait_at_least(cnt.squeezed() + grp, 1);
  } else {
    cta_wait_at_least(cnt.fc1_done() + grp, counter_t(n1));
  }
}

// Makes every global write of this CTA so far visible GPU-wide before what thread 0 does next
// (its atomic or release store): the barrier orders every thread's writes before thread 0's
// fence, and the fence then orders them, cumulatively, before thread 0's next write (the
// pattern of cooperative groups' grid sync: formally a release in the PTX memory model, and
// one MEMBAR a CTA instead of one a thread).
__device__ __forceinline__ void cta_release_fence() {
  __syncthreads();
  if (threadIdx.x == 0) __threadfence();
}

// Reads data another CTA of this launch wrote: from L2, never a stale L1 line.
template <typename A>
__device__ __forceinline__ A load_cg(const A* p) {
  return __ldcg(p);
}

}  // namespace cuda
}  // namespace se_kernels

// Per-process caches of CUDA function attributes and occupancy queries, so that a launch
// costs no repeated driver queries (they matter at N = 1, where the whole op takes a few
// microseconds). Host code only; keys include the device.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "se_kernels/cuda_plan.h"

namespace se_kernels {
namespace cuda {

inline int current_device() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

using CacheKey = std::tuple<int, const void*, int64_t, int64_t>;  // device, kernel, a, b

// fn() computed once per key. One cache per call site (each lambda type).
template <typename F>
int cached(const CacheKey& key, F&& fn) {
  static std::mutex mu;
  static std::map<CacheKey, int> cache;
  {
    const std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const int value = fn();
  const std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, value);
  return value;
}

// The kernel's static shared memory (bytes), per device and kernel.
inline int64_t static_smem_bytes(const void* kernel) {
  return cached(CacheKey{current_device(), kernel, -3, 0}, [&] {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    return int(attr.sharedSizeBytes);
  });
}

// Raises the kernel's dynamic shared-memory limit to at least `bytes` when its static and
// dynamic shared memory together exceed the default 48 KiB (cuda_plan::smem_needs_opt_in:
// the persistent kernels' static ticket makes a 48 KiB dynamic size need it), per device and
// kernel. The attribute is one value per kernel, so it only ever grows: a call with a smaller
// size than an earlier one must not lower it under the size a later launch of the earlier
// shape needs (a cache keyed by size would skip that launch's call and leave the limit too
// low: cudaErrorInvalidValue). Called before any occupancy query or launch of that size.
inline void ensure_dynamic_smem(const void* kernel, int64_t bytes) {
  if (!cuda_plan::smem_needs_opt_in(static_smem_bytes(kernel), bytes)) return;
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int64_t> limit;
  const std::lock_guard<std::mutex> lock(mu);
  int64_t& cur = limit[{current_device(), kernel}];
  if (bytes <= cur) return;
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  cur = bytes;
}

// Blocks of `threads` threads with `smem` bytes of dynamic shared memory that fit on one SM
// for `kernel` (its shared-memory limit raised first), cached per device, kernel and size.
template <typename... Params>
int occupancy_blocks_per_sm(void (*kernel)(Params...), int threads, int64_t smem) {
  const void* kp = reinterpret_cast<const void*>(kernel);
  ensure_dynamic_smem(kp, smem);
  return cached(CacheKey{current_device(), kp, smem, threads}, [&] {
    int blocks = 0;
    C10_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, size_t(smem)));
    return blocks;
  });
}

#ifdef __CUDACC__
// kernel<<<grid, threads, smem, stream>>>(args...), its shared-memory limit raised first,
// the launch checked.
template <typename... Params, typename... Args>
void launch_checked(void (*kernel)(Params...), int64_t grid, int threads, int64_t smem,
                    cudaStream_t stream, Args&&... args) {
  ensure_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<dim3(unsigned(grid)), dim3(unsigned(threads)), size_t(smem), stream>>>(
      std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

}  // namespace cuda
}  // namespace se_kernels

// Run-time -> compile-time dispatch of the kernel templates: the element type and the
// boolean flags that are template parameters of the hot kernels (layout, max squeeze,
// fused residual). Everything else (activation, gate, sizes) is a run-time argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels.h"

namespace se_kernels {
namespace cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
decltype(auto) with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kHalf:
      return f(TypeTag<__half>{});
    case DType::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case DType::kDouble:
      return f(TypeTag<double>{});
    case DType::kFloat:
    default:
      return f(TypeTag<float>{});
  }
}

template <typename F>
decltype(auto) with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

// f(TypeTag<T>, bool_constant nhwc, bool_constant max, bool_constant residual)
template <typename F>
decltype(auto) with_kernel_flags(DType d, bool nhwc, bool max_squeeze, bool residual, F&& f) {
  return with_dtype(d, [&](auto tt) {
    return with_bool(nhwc, [&](auto nh) {
      return with_bool(max_squeeze, [&](auto mx) {
        return with_bool(residual, [&](auto rs) { return f(tt, nh, mx, rs); });
      });
    });
  });
}

}  // namespace cuda
}  // namespace se_kernels

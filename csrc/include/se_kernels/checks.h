// Argument checks and output allocation shared by the CPU and CUDA implementations of the
// se_kernels ops.
//
// The Python wrapper (se_kernels/ops.py) validates user input with friendly messages
// before any op runs; these checks guard the ops themselves when they are called
// directly through torch.ops.se_kernels.*, so that a bad call is an exception, never
// an out-of-bounds access.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "se_kernels/options.h"

namespace se_kernels {

// The two layouts the kernels read in place. Anything else is made contiguous in Python.
enum class Layout { NCHW, NHWC };

inline Layout layout_of(const at::Tensor& x) {
  // Ambiguous tensors (C == 1 or H*W == 1 are both NCHW- and NHWC-contiguous) read as NCHW.
  if (x.is_contiguous()) return Layout::NCHW;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "se_kernels: x must be contiguous or channels_last, got strides ", x.strides());
  return Layout::NHWC;
}

// t must be laid out like x: same shape, dtype, device, and dense in the same layout (the
// kernels index by computed offsets, so size-1 dimensions may carry any stride).
inline void check_same_layout(const at::Tensor& t, const char* name, const at::Tensor& x,
                              Layout layout) {
  TORCH_CHECK(t.sizes() == x.sizes(), "se_kernels: ", name, " must have the shape of x ",
              x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "se_kernels: ", name,
              " must have the dtype of x (", x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "se_kernels: ", name, " must be on ", x.device(),
              ", got ", t.device());
  const bool dense = layout == Layout::NCHW ? t.is_contiguous()
                                            : t.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(dense, "se_kernels: ", name, " must be ",
              layout == Layout::NCHW ? "contiguous" : "channels_last", " like x, got strides ",
              t.strides());
}

inline void check_vector(const at::Tensor& t, const char* name, int64_t len, const at::Tensor& x,
                         c10::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == len, "se_kernels: ", name, " must have shape (",
              len, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "se_kernels: ", name, " must have dtype ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "se_kernels: ", name, " must be on ", x.device(),
              ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "se_kernels: ", name, " must be contiguous");
}

inline void check_matrix(const at::Tensor& t, const char* name, int64_t rows, int64_t cols,
                         const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "se_kernels: ", name,
              " must have shape (", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "se_kernels: ", name,
              " must have the dtype of x (", x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "se_kernels: ", name, " must be on ", x.device(),
              ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "se_kernels: ", name, " must be contiguous");
}

inline void check_options(int64_t squeeze, int64_t act, int64_t gate) {
  TORCH_CHECK(squeeze == kSqueezeAvg || squeeze == kSqueezeMax,
              "se_kernels: squeeze code must be 0 (avg) or 1 (max), got ", squeeze);
  TORCH_CHECK(act >= kActRelu && act <= kActLast,
              "se_kernels: activation code must be in 0..5 (relu, silu, hardswish, relu6, "
              "gelu, gelu_tanh), got ", act);
  TORCH_CHECK(gate >= kGateSigmoid && gate <= kGateRelu,
              "se_kernels: gate code must be in 0..3 (sigmoid, hardsigmoid, tanh, relu), got ",
              gate);
}

// The accumulation dtype: float64 for float64 inputs, float32 otherwise.
inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Shapes of one se_forward call, checked.
struct Problem {
  int64_t N, C, Cr, H, W, HW;
  Layout layout;
};

inline Problem check_forward_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                                  const c10::optional<at::Tensor>& b1,
                                  const c10::optional<at::Tensor>& b2,
                                  const c10::optional<at::Tensor>& residual, int64_t squeeze,
                                  int64_t act, int64_t gate) {
  TORCH_CHECK(x.dim() == 4, "se_kernels: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kDouble,
              "se_kernels: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  Problem p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.HW = p.H * p.W;
  TORCH_CHECK(p.C > 0 && p.HW > 0, "se_kernels: x must have C > 0 and H*W > 0, got ",
              x.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(0) > 0, "se_kernels: w1 must be 2-D (Cr, C) with Cr > 0, got ",
              w1.sizes());
  p.Cr = w1.size(0);
  check_matrix(w1, "w1", p.Cr, p.C, x);
  check_matrix(w2, "w2", p.C, p.Cr, x);
  if (b1.has_value()) check_vector(*b1, "b1", p.Cr, x, x.scalar_type());
  if (b2.has_value()) check_vector(*b2, "b2", p.C, x, x.scalar_type());
  p.layout = layout_of(x);
  if (residual.has_value()) check_same_layout(*residual, "residual", x, p.layout);
  check_options(squeeze, act, gate);
  return p;
}

inline Problem check_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
                                   const at::Tensor& w2, const c10::optional<at::Tensor>& y,
                                   const at::Tensor& z, const at::Tensor& hpre,
                                   const at::Tensor& gpre, int64_t squeeze, int64_t act,
                                   int64_t gate) {
  Problem p = check_forward_args(x, w1, w2, c10::nullopt, c10::nullopt, c10::nullopt, squeeze,
                                 act, gate);
  check_same_layout(dy, "dy", x, p.layout);
  if (y.has_value()) check_same_layout(*y, "y", x, p.layout);
  const auto acc = acc_dtype(x.scalar_type());
  auto check_saved = [&](const at::Tensor& t, const char* name, int64_t cols) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == p.N && t.size(1) == cols, "se_kernels: ", name,
                " must have shape (", p.N, ", ", cols, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == acc, "se_kernels: ", name, " must have dtype ", acc,
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), "se_kernels: ", name,
                " must be a contiguous tensor on ", x.device());
  };
  check_saved(z, "z", p.C);
  check_saved(hpre, "hpre", p.Cr);
  check_saved(gpre, "gpre", p.C);
  return p;
}

// ---- outputs, allocated alike by every backend ---------------------------------------------

// se_forward's (y, z, hpre, gpre): y in x's dtype and memory format, the saved (N, C) and
// (N, Cr) vectors in the accumulation dtype.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_forward_outputs(
    const at::Tensor& x, const Problem& p) {
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  return {at::empty_like(x), at::empty({p.N, p.C}, acc), at::empty({p.N, p.Cr}, acc),
          at::empty({p.N, p.C}, acc)};
}

// se_backward's (dx, dw1, dw2, db1, db2, dresidual); dresidual is empty without a residual.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
empty_backward_outputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                       bool residual, const Problem& p) {
  return {at::empty_like(x),
          at::empty_like(w1),
          at::empty_like(w2),
          at::empty({p.Cr}, w1.options()),
          at::empty({p.C}, w2.options()),
          residual ? at::empty_like(x) : at::empty({0}, x.options())};
}

}  // namespace se_kernels

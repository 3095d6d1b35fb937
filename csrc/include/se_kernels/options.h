// The option codes of the se_kernels ops and the scalar maths they select.
//
// The codes are the integers that se_kernels/_options.py passes to the ops; keep the
// two files in step. Every function here is usable from host and device code and is
// templated on the accumulation type (float, or double for float64 inputs).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SE_HOST_DEVICE inline
#endif

namespace se_kernels {

enum Squeeze : int64_t { kSqueezeAvg = 0, kSqueezeMax = 1 };
enum Activation : int64_t { kActRelu = 0, kActSilu = 1 };
enum Gate : int64_t { kGateSigmoid = 0, kGateHardSigmoid = 1, kGateTanh = 2, kGateRelu = 3 };

template <typename acc_t>
SE_HOST_DEVICE acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + std::exp(-v));
}

// relu that lets NaN through, as torch.relu does.
template <typename acc_t>
SE_HOST_DEVICE acc_t relu(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : v;
}

// relu's derivative as PyTorch's threshold_backward computes it: 0 where the input is
// <= 0, else 1 (NaN included).
template <typename acc_t>
SE_HOST_DEVICE acc_t relu_grad(acc_t v) {
  return v <= acc_t(0) ? acc_t(0) : acc_t(1);
}

// h = act(hpre)
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_fwd(int64_t act, acc_t v) {
  if (act == kActSilu) return v * sigmoid(v);
  return relu(v);
}

// d act(v) / dv, with PyTorch's conventions: relu'(0) = 0.
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_grad(int64_t act, acc_t v) {
  if (act == kActSilu) {  // sigma(v) (1 + v sigma(-v)); sigma(-v), not 1 - sigma(v): no cancellation
    return sigmoid(v) * (acc_t(1) + v * sigmoid(-v));
  }
  return relu_grad(v);
}

// s = gate(gpre)
template <typename acc_t>
SE_HOST_DEVICE acc_t gate_fwd(int64_t gate, acc_t v) {
  switch (gate) {
    case kGateHardSigmoid: {
      // relu6(v + 3) / 6, written so that NaN propagates like PyTorch's hardsigmoid.
      const acc_t t = v + acc_t(3);
      const acc_t clamped = t < acc_t(0) ? acc_t(0) : (t > acc_t(6) ? acc_t(6) : t);
      return clamped / acc_t(6);
    }
    case kGateTanh:
      return std::tanh(v);
    case kGateRelu:
      return relu(v);
    default:
      return sigmoid(v);
  }
}

// d gate(v) / dv, with PyTorch's conventions (hardsigmoid: 1/6 on the open interval
// (-3, 3), else 0; relu'(0) = 0).
template <typename acc_t>
SE_HOST_DEVICE acc_t gate_grad(int64_t gate, acc_t v) {
  switch (gate) {
    case kGateHardSigmoid:
      return (v > acc_t(-3) && v < acc_t(3)) ? acc_t(1) / acc_t(6) : acc_t(0);
    case kGateTanh: {  // sech^2(v), not 1 - tanh^2(v), which cancels where tanh saturates
      const acc_t c = std::cosh(v);
      return acc_t(1) / (c * c);
    }
    case kGateRelu:
      return relu_grad(v);
    default:  // sigma(v) sigma(-v), not sigma (1 - sigma), which cancels where sigma -> 1
      return sigmoid(v) * sigmoid(-v);
  }
}

}  // namespace se_kernels

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

// h = act(hpre)
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_fwd(int64_t act, acc_t v) {
  if (act == kActSilu) return v * sigmoid(v);
  return relu(v);
}

// g * d act(v) / dv: the gradient through the activation, with PyTorch's conventions. relu
// *selects* (0 where v <= 0, else g, as threshold_backward does), so an inf or NaN upstream
// stops at an inactive unit instead of becoming 0 * inf = NaN.
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_backward(int64_t act, acc_t v, acc_t g) {
  if (act == kActSilu) {  // sigma(v) (1 + v sigma(-v)); sigma(-v), not 1 - sigma(v): no cancellation
    return g * (sigmoid(v) * (acc_t(1) + v * sigmoid(-v)));
  }
  return v <= acc_t(0) ? acc_t(0) : g;
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

// g * d gate(v) / dv, with PyTorch's conventions: hardsigmoid and relu *select* (g / 6 on
// the open interval (-3, 3), else 0; relu: 0 where v <= 0), like hardsigmoid_backward and
// threshold_backward, so an inf or NaN upstream stops where the gate is flat.
template <typename acc_t>
SE_HOST_DEVICE acc_t gate_backward(int64_t gate, acc_t v, acc_t g) {
  switch (gate) {
    case kGateHardSigmoid:
      return (v > acc_t(-3) && v < acc_t(3)) ? g / acc_t(6) : acc_t(0);
    case kGateTanh: {  // sech^2(v), not 1 - tanh^2(v), which cancels where tanh saturates
      const acc_t c = std::cosh(v);
      return g / (c * c);
    }
    case kGateRelu:
      return v <= acc_t(0) ? acc_t(0) : g;
    default:  // sigma(v) sigma(-v), not sigma (1 - sigma), which cancels where sigma -> 1
      return g * (sigmoid(v) * sigmoid(-v));
  }
}

}  // namespace se_kernels

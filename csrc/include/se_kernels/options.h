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
enum Activation : int64_t {
  kActRelu = 0,
  kActSilu = 1,
  kActHardSwish = 2,
  kActRelu6 = 3,
  kActGelu = 4,      // exact: v Phi(v), Phi the normal CDF
  kActGeluTanh = 5,  // the tanh approximation, GELU(approximate="tanh")
  kActLast = kActGeluTanh
};
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

// The constants of the two GELUs: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi), and the cubic term's.
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

// 2 u of the tanh GELU, 0.5 v (1 + tanh(u)) = v sigma(2 u): written that way, no cancellation
// where tanh(u) -> -1.
template <typename acc_t>
SE_HOST_DEVICE acc_t gelu_tanh_2u(acc_t v) {
  return acc_t(2 * kSqrt2OverPi) * (v + acc_t(kGeluCubic) * v * v * v);
}

// h = act(hpre). One case per activation; NaN propagates as in PyTorch (and -inf gives NaN
// where PyTorch's does: hardswish, gelu, gelu_tanh multiply -inf by 0).
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_fwd(int64_t act, acc_t v) {
  switch (act) {
    case kActSilu:
      return v * sigmoid(v);
    case kActHardSwish: {  // v relu6(v + 3) / 6, in hardswish's order of operations
      const acc_t t = v + acc_t(3);
      const acc_t clamped = t < acc_t(0) ? acc_t(0) : (t > acc_t(6) ? acc_t(6) : t);
      return v * clamped / acc_t(6);
    }
    case kActRelu6:  // min(max(v, 0), 6), NaN passing
      return v < acc_t(0) ? acc_t(0) : (v > acc_t(6) ? acc_t(6) : v);
    case kActGelu:  // v Phi(v), Phi(v) = erfc(-v / sqrt 2) / 2: accurate in the lower tail too
      return acc_t(0.5) * v * std::erfc(-v * acc_t(kSqrtHalf));
    case kActGeluTanh:
      return v * sigmoid(gelu_tanh_2u(v));
    default:
      return relu(v);
  }
}

// g * d act(v) / dv: the gradient through the activation, with PyTorch's conventions. The
// piecewise ones *select* rather than multiply by 0, so an inf or NaN upstream stops where
// the activation is flat: relu as threshold_backward (0 where v <= 0, else g); hardswish as
// hardswish_backward (0 where v <= -3, g (v/3 + 1/2) where v < 3, else g: NaN v passes g);
// relu6 as hardtanh_backward (0 where v <= 0 or v >= 6, else g: NaN v passes g). The
// smooth ones follow gelu_backward: g (Phi(v) + v phi(v)), NaN at v = +-inf as PyTorch's.
template <typename acc_t>
SE_HOST_DEVICE acc_t activation_backward(int64_t act, acc_t v, acc_t g) {
  switch (act) {
    case kActSilu:  // sigma(v) (1 + v sigma(-v)); sigma(-v), not 1 - sigma(v): no cancellation
      return g * (sigmoid(v) * (acc_t(1) + v * sigmoid(-v)));
    case kActHardSwish:
      return v <= acc_t(-3) ? acc_t(0) : (v < acc_t(3) ? g * (v / acc_t(3) + acc_t(0.5)) : g);
    case kActRelu6:
      return (v <= acc_t(0) || v >= acc_t(6)) ? acc_t(0) : g;
    case kActGelu: {
      const acc_t cdf = acc_t(0.5) * std::erfc(-v * acc_t(kSqrtHalf));
      const acc_t pdf = std::exp(acc_t(-0.5) * v * v) * acc_t(kInvSqrt2Pi);
      return g * (cdf + v * pdf);
    }
    case kActGeluTanh: {  // d/dv v sigma(2u) = sigma(2u) + v sigma(2u) sigma(-2u) (2u)'
      const acc_t u2 = gelu_tanh_2u(v);
      const acc_t sp = sigmoid(u2);
      const acc_t du2 = acc_t(2 * kSqrt2OverPi) * (acc_t(1) + acc_t(3 * kGeluCubic) * v * v);
      return g * (sp + v * (sp * sigmoid(-u2)) * du2);
    }
    default:
      return v <= acc_t(0) ? acc_t(0) : g;
  }
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

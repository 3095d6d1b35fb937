// The schema registry of the se_kernels ops: every C++ op is declared here, once.
//
// Implementations register themselves per dispatch key: csrc/cpu/se_cpu.cpp (CPU) and
// csrc/cuda/*.cu (CUDA). Fake kernels and autograd live in se_kernels/ops.py. The Triton
// backend's ops (se_kernels::triton_se_forward / triton_se_backward) are declared in
// Python by torch.library.triton_op, which needs the Python kernel function, so they
// cannot be declared here.
//
// Option codes (squeeze, act, gate) are the integers of csrc/include/se_kernels/options.h.
// The Python module init lives in python_module.cpp, so that the C++ test program
// (csrc/tests/) links these registrations without Python.

#include <torch/library.h>

TORCH_LIBRARY(se_kernels, m) {
  // y = SE(x) [then relu(y + residual)], plus what backward needs: z = squeeze(x) (N, C),
  // hpre = z W1^T + b1 (N, Cr) and gpre = act(hpre) W2^T + b2 (N, C), in float32
  // (float64 for float64 x). y has x's dtype and memory format.
  m.def(
      "se_forward(Tensor x, Tensor w1, Tensor w2, Tensor? b1, Tensor? b2, Tensor? residual, "
      "int squeeze, int act, int gate) -> (Tensor y, Tensor z, Tensor hpre, Tensor gpre)");
  // se_forward for inference, writing y into x (no gradient: z, hpre and gpre are not kept).
  // CPU only; fused_se(inplace=True) falls back to se_forward + copy_ elsewhere.
  m.def(
      "se_forward_inplace(Tensor(a!) x, Tensor w1, Tensor w2, Tensor? b1, Tensor? b2, "
      "Tensor? residual, int squeeze, int act, int gate) -> ()");
  // Gradients of se_forward. y is the forward output, given exactly when the residual tail
  // was fused (its relu mask). dresidual is empty when y is not given; db1 and db2 are
  // always computed (they are cheap) and dropped in Python when there was no bias.
  m.def(
      "se_backward(Tensor dy, Tensor x, Tensor w1, Tensor w2, Tensor? y, Tensor z, "
      "Tensor hpre, Tensor gpre, int squeeze, int act, int gate) -> "
      "(Tensor dx, Tensor dw1, Tensor dw2, Tensor db1, Tensor db2, Tensor dresidual)");
}

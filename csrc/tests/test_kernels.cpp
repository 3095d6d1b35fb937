// Standalone test of the se_kernels C++ ops (run by ctest; see CMakeLists.txt).
//
// For every kernel registered in this build (CPU always; CUDA where the build has CUDA
// kernels and a GPU is present) it runs se_forward and se_backward on random inputs over a
// matrix of shapes, dtypes, layouts and options, and compares every output with a plain
// C++ reference computed in double on the same (rounded) inputs. The tolerance is the
// dtype's (1e-5 float, 2e-2 half/bfloat16), or twice the error of the same reference run in
// float and rounded to the dtype, whichever is larger (sums that cancel, and results
// rounded to 8 or 11 bits, are not the kernel's fault). Exit code 0 = all passed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "se_kernels/options.h"

namespace {

using se_kernels::activation_fwd;
using se_kernels::activation_backward;
using se_kernels::gate_fwd;
using se_kernels::gate_backward;
using Vec = std::vector<double>;
template <typename R>
using VecT = std::vector<R>;

struct Case {
  int64_t N, C, Cr, H, W;
  int64_t squeeze, act, gate;
  bool bias, residual;
};

template <typename R>
struct Outputs {  // all in NCHW order
  VecT<R> y, dx, dw1, dw2, db1, db2, dres;
};

Vec to_vec(const at::Tensor& t) {  // NCHW-ordered copy in double
  auto c = t.to(at::kCPU).to(at::kDouble).contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// The SE block and its gradients, sample by sample, computed in R (double: the oracle;
// float: the same-precision baseline).
template <typename R>
Outputs<R> reference(const Case& k, const Vec& x_, const Vec& w1_, const Vec& w2_,
                     const Vec& b1_, const Vec& b2_, const Vec& r_, const Vec& dy_) {
  auto cast = [](const Vec& v) { return VecT<R>(v.begin(), v.end()); };
  const VecT<R> x = cast(x_), w1 = cast(w1_), w2 = cast(w2_), b1 = cast(b1_), b2 = cast(b2_),
                r = cast(r_), dy = cast(dy_);
  const int64_t HW = k.H * k.W, C = k.C, Cr = k.Cr;
  Outputs<R> o;
  o.y.resize(x.size());
  o.dx.resize(x.size());
  o.dres.resize(k.residual ? x.size() : 0);
  o.dw1.assign(Cr * C, R(0));
  o.dw2.assign(C * Cr, R(0));
  o.db1.assign(Cr, R(0));
  o.db2.assign(C, R(0));
  for (int64_t n = 0; n < k.N; ++n) {
    const R* xs = x.data() + n * C * HW;
    VecT<R> z(C), hpre(Cr), h(Cr), gpre(C), s(C), cnt(C, R(0));
    for (int64_t c = 0; c < C; ++c) {
      R acc = k.squeeze == se_kernels::kSqueezeMax ? R(-INFINITY) : R(0);
      for (int64_t p = 0; p < HW; ++p)
        acc = k.squeeze == se_kernels::kSqueezeMax ? std::max(acc, xs[c * HW + p])
                                                   : acc + xs[c * HW + p];
      z[c] = k.squeeze == se_kernels::kSqueezeMax ? acc : acc / R(HW);
      for (int64_t p = 0; p < HW; ++p) cnt[c] += xs[c * HW + p] == z[c];
    }
    for (int64_t j = 0; j < Cr; ++j) {
      hpre[j] = k.bias ? b1[j] : R(0);
      for (int64_t c = 0; c < C; ++c) hpre[j] += w1[j * C + c] * z[c];
      h[j] = activation_fwd<R>(k.act, hpre[j]);
    }
    for (int64_t c = 0; c < C; ++c) {
      gpre[c] = k.bias ? b2[c] : R(0);
      for (int64_t j = 0; j < Cr; ++j) gpre[c] += w2[c * Cr + j] * h[j];
      s[c] = gate_fwd<R>(k.gate, gpre[c]);
    }
    // forward tail and g = dy (masked by the fused relu)
    VecT<R> g(C * HW), ds(C, R(0));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < HW; ++p) {
        const int64_t i = n * C * HW + c * HW + p;
        R v = x[i] * s[c];
        if (k.residual) v = std::max(v + r[i], R(0));
        o.y[i] = v;
        g[c * HW + p] = (k.residual && v <= R(0)) ? R(0) : dy[i];
        if (k.residual) o.dres[i] = g[c * HW + p];
        ds[c] += g[c * HW + p] * x[i];
      }
    VecT<R> dpre(C), dh(Cr, R(0)), dz(C, R(0));
    for (int64_t c = 0; c < C; ++c) {
      dpre[c] = gate_backward<R>(k.gate, gpre[c], ds[c]);
      o.db2[c] += dpre[c];
      for (int64_t j = 0; j < Cr; ++j) {
        o.dw2[c * Cr + j] += dpre[c] * h[j];
        dh[j] += dpre[c] * w2[c * Cr + j];
      }
    }
    for (int64_t j = 0; j < Cr; ++j) {
      const R dhp = activation_backward<R>(k.act, hpre[j], dh[j]);
      o.db1[j] += dhp;
      for (int64_t c = 0; c < C; ++c) {
        o.dw1[j * C + c] += dhp * z[c];
        dz[c] += dhp * w1[j * C + c];
      }
    }
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < HW; ++p) {
        const int64_t i = n * C * HW + c * HW + p;
        R d = g[c * HW + p] * s[c];
        if (k.squeeze == se_kernels::kSqueezeMax) {
          d += (x[i] == z[c] ? R(1) : R(0)) * dz[c] / cnt[c];
        } else {
          d += dz[c] / R(HW);
        }
        o.dx[i] = d;
      }
  }
  return o;
}

// ||a - b|| / (||b|| + atol sqrt(n)): atol covers float16's subnormal range, where a result
// of 1e-6 keeps only a few bits.
double rel_err(const Vec& a, const Vec& b, double atol) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  const double scale = std::sqrt(den) + atol * std::sqrt(double(a.size()));
  return scale > 0 ? std::sqrt(num) / scale : std::sqrt(num);
}

// The float baseline, rounded to the kernel's dtype as the kernel's outputs are.
Vec rounded(const VecT<float>& v, at::ScalarType dtype) {
  if (v.empty()) return {};
  auto t = at::from_blob(const_cast<float*>(v.data()), {int64_t(v.size())}, at::kFloat)
               .to(dtype)
               .to(at::kDouble);
  return Vec(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

using ForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
    int64_t);
using BackwardFn =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, int64_t, int64_t, int64_t);

// Runs one case on one device/dtype/layout; returns the number of failed comparisons.
int run_case(const Case& k, at::Device device, at::ScalarType dtype, bool channels_last) {
  static auto fwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("se_kernels::se_forward", "")
                        .typed<ForwardFn>();
  static auto bwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("se_kernels::se_backward", "")
                        .typed<BackwardFn>();
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  auto rnd = [&](at::IntArrayRef shape, double std) {
    return (at::randn(shape, at::kDouble) * std).to(opts);
  };
  auto x = rnd({k.N, k.C, k.H, k.W}, 1.0).contiguous(fmt);
  auto w1 = rnd({k.Cr, k.C}, 2.0 / std::sqrt(double(k.C)));
  auto w2 = rnd({k.C, k.Cr}, 2.0 / std::sqrt(double(k.Cr)));
  std::optional<at::Tensor> b1, b2, r;
  if (k.bias) {
    b1 = rnd({k.Cr}, 0.5);
    b2 = rnd({k.C}, 0.5);
  }
  if (k.residual) r = rnd({k.N, k.C, k.H, k.W}, 1.0).contiguous(fmt);
  auto dy = rnd({k.N, k.C, k.H, k.W}, 1.0).contiguous(fmt);

  auto [y, z, hpre, gpre] = fwd.call(x, w1, w2, b1, b2, r, k.squeeze, k.act, k.gate);
  std::optional<at::Tensor> y_for_mask;
  if (k.residual) y_for_mask = y;
  auto [dx, dw1, dw2, db1, db2, dres] =
      bwd.call(dy, x, w1, w2, y_for_mask, z, hpre, gpre, k.squeeze, k.act, k.gate);

  Vec none;
  const Vec xv = to_vec(x), w1v = to_vec(w1), w2v = to_vec(w2), b1v = b1 ? to_vec(*b1) : none,
            b2v = b2 ? to_vec(*b2) : none, rv = r ? to_vec(*r) : none, dyv = to_vec(dy);
  const auto ref = reference<double>(k, xv, w1v, w2v, b1v, b2v, rv, dyv);
  const auto base = reference<float>(k, xv, w1v, w2v, b1v, b2v, rv, dyv);
  const double dtype_tol = dtype == at::kDouble ? 1e-9 : dtype == at::kFloat ? 1e-5 : 2e-2;
  const double atol = dtype == at::kHalf ? 1e-7 : 0.0;
  int failures = 0;
  auto check = [&](const char* name, const at::Tensor& got, const Vec& want,
                   const VecT<float>& baseline) {
    const double tol = dtype == at::kDouble
                           ? dtype_tol
                           : std::max(dtype_tol, 2 * rel_err(rounded(baseline, dtype), want, atol));
    const double e = rel_err(to_vec(got), want, atol);
    if (!(e <= tol)) {
      std::printf("FAIL %s on %s %s %s N=%ld C=%ld Cr=%ld H=%ld W=%ld sq=%ld act=%ld gate=%ld "
                  "bias=%d res=%d: rel err %.3e > %.1e\n",
                  name, device.str().c_str(), c10::toString(dtype),
                  channels_last ? "NHWC" : "NCHW", long(k.N), long(k.C), long(k.Cr), long(k.H),
                  long(k.W), long(k.squeeze), long(k.act), long(k.gate), int(k.bias),
                  int(k.residual), e, tol);
      ++failures;
    }
  };
  if (!y.is_contiguous(fmt)) {
    std::printf("FAIL y does not keep the layout of x\n");
    ++failures;
  }
  check("y", y, ref.y, base.y);
  check("dx", dx, ref.dx, base.dx);
  check("dw1", dw1, ref.dw1, base.dw1);
  check("dw2", dw2, ref.dw2, base.dw2);
  if (k.bias) {
    check("db1", db1, ref.db1, base.db1);
    check("db2", db2, ref.db2, base.db2);
  }
  if (k.residual) check("dresidual", dres, ref.dres, base.dres);
  return failures;
}

}  // namespace

int main() {
  at::manual_seed(0);
  std::vector<at::Device> devices = {at::kCPU};
  const auto& fwd_op = c10::Dispatcher::singleton().findSchemaOrThrow("se_kernels::se_forward", "");
  if (fwd_op.hasKernelForDispatchKey(c10::DispatchKey::CUDA)) {
    if (at::globalContext().hasCUDA()) {
      devices.emplace_back(at::kCUDA);
    } else {
      std::printf("note: CUDA kernels are built but no GPU is present; testing the CPU only\n");
    }
  }
  const std::vector<std::vector<int64_t>> shapes = {
      // N, C, Cr, H, W
      {3, 19, 4, 5, 7}, {1, 1, 1, 1, 1}, {2, 64, 8, 7, 7}, {0, 16, 4, 3, 3}, {5, 3, 1, 13, 17},
      {2, 130, 9, 3, 3}, {1, 256, 16, 56, 56}, {2, 2048, 128, 7, 7}};
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble};
  int failures = 0, cases = 0;
  for (const auto& device : devices)
    for (const auto& sh : shapes)
      for (auto dtype : dtypes)
        for (bool cl : {false, true})
          for (int64_t sq : {0, 1})
            for (int64_t gate : {0, 1, 2, 3}) {
              const int64_t act = (gate + sq) % 2;  // both activations across the matrix
              const bool bias = (gate % 2) == 0, res = gate >= 2;
              Case k{sh[0], sh[1], sh[2], sh[3], sh[4], sq, act, gate, bias, res};
              failures += run_case(k, device, dtype, cl);
              ++cases;
            }
  std::printf("%d cases, %d failed comparisons\n", cases, failures);
  return failures == 0 ? 0 : 1;
}

// Autograd of se_kernels::se_forward, for every device (CPU and CUDA kernels alike), and the
// autograd/version-counter handling of the inference-only se_forward_inplace.
//
// Registered in C++ for the Autograd dispatch key rather than with Python's
// torch.library.register_autograd: the Python path costs ~40 us per call with grad enabled
// (pytree and schema handling in torch._library), more than the whole fused kernel at small
// sizes. The Triton op, which lives in Python, uses register_autograd (se_kernels/ops.py)
// with the same formula: backward is one call of the backend's se_backward op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace se_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
    int64_t);
using BackwardSig =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, int64_t, int64_t, int64_t);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("se_kernels::se_forward", "")
                             .typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("se_kernels::se_backward", "")
                             .typed<BackwardSig>();
  return op;
}

// Inputs (x, w1, w2, b1, b2, residual, squeeze, act, gate); outputs (y, z, hpre, gpre) of
// which only y is differentiable.
class SEFunction : public torch::autograd::Function<SEFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                               const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                               const std::optional<at::Tensor>& b2,
                               const std::optional<at::Tensor>& residual, int64_t squeeze,
                               int64_t act, int64_t gate) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, z, hpre, gpre] =
        forward_op().call(x, w1, w2, b1, b2, residual, squeeze, act, gate);
    // y carries the relu mask of the fused residual tail; not needed without it.
    ctx->save_for_backward({x, w1, w2, residual.has_value() ? y : at::Tensor(), z, hpre, gpre});
    ctx->saved_data["squeeze"] = squeeze;
    ctx->saved_data["act"] = act;
    ctx->saved_data["gate"] = gate;
    ctx->saved_data["b1"] = b1.has_value();
    ctx->saved_data["b2"] = b2.has_value();
    ctx->saved_data["residual"] = residual.has_value();
    ctx->mark_non_differentiable({z, hpre, gpre});
    ctx->set_materialize_grads(false);
    return {y, z, hpre, gpre};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& dy_in = grads[0];
    variable_list out(9);  // one slot per forward input; undefined = no gradient
    if (!dy_in.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    // dy must have x's layout (the kernels index x and dy alike)
    const auto fmt = x.is_contiguous() ? at::MemoryFormat::Contiguous
                                       : at::MemoryFormat::ChannelsLast;
    const at::Tensor dy = dy_in.contiguous(fmt);
    std::optional<at::Tensor> y;
    if (saved[3].defined()) y = saved[3];
    auto [dx, dw1, dw2, db1, db2, dres] = backward_op().call(
        dy, x, saved[1], saved[2], y, saved[4], saved[5], saved[6],
        ctx->saved_data["squeeze"].toInt(), ctx->saved_data["act"].toInt(),
        ctx->saved_data["gate"].toInt());
    out[0] = dx;
    out[1] = dw1;
    out[2] = dw2;
    if (ctx->saved_data["b1"].toBool()) out[3] = db1;
    if (ctx->saved_data["b2"].toBool()) out[4] = db2;
    if (ctx->saved_data["residual"].toBool()) out[5] = dres;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_autograd(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
    const std::optional<at::Tensor>& residual, int64_t squeeze, int64_t act, int64_t gate) {
  // Undefined tensors (None passed for a required argument) would fail inside autograd with
  // a message that names nothing; the kernels' own checks run below this point.
  TORCH_CHECK(x.defined(), "se_kernels: x must be a tensor, got None");
  TORCH_CHECK(w1.defined(), "se_kernels: w1 must be a tensor, got None");
  TORCH_CHECK(w2.defined(), "se_kernels: w2 must be a tensor, got None");
  auto out = SEFunction::apply(x, w1, w2, b1, b2, residual, squeeze, act, gate);
  return {out[0], out[1], out[2], out[3]};
}

// se_forward_inplace below autograd: x's version counter bumped, then the kernel, as the
// generated ADInplaceOrView kernels of ATen's in-place ops do. (The stock
// autogradNotImplementedInplaceOrViewFallback bumps only mutated *outputs*; this op returns
// nothing.) Bumping also refuses an inference tensor outside inference mode.
using InplaceSig = void(at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                        const std::optional<at::Tensor>&, int64_t, int64_t, int64_t);

const c10::TypedOperatorHandle<InplaceSig>& inplace_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("se_kernels::se_forward_inplace", "")
                             .typed<InplaceSig>();
  return op;
}

void se_forward_inplace_ad_inplace_or_view(at::Tensor& x, const at::Tensor& w1,
                                           const at::Tensor& w2,
                                           const std::optional<at::Tensor>& b1,
                                           const std::optional<at::Tensor>& b2,
                                           const std::optional<at::Tensor>& residual,
                                           int64_t squeeze, int64_t act, int64_t gate) {
  if (x.defined()) x.unsafeGetTensorImpl()->bump_version();  // before: nothing written yet
  at::AutoDispatchBelowADInplaceOrView guard;
  inplace_op().call(x, w1, w2, b1, b2, residual, squeeze, act, gate);
}

// Autograd: not differentiable (it overwrites the x that a backward would need), so an
// input that requires grad while grad mode is on is an error; otherwise on to the kernel
// through ADInplaceOrView. Fake tensors (they carry the Python key) are let through: they
// hold no values to lose, and AOTInductor lowers an exported inference graph with grad mode
// on and parameters that require grad (the graph was checked when it was traced).
void se_forward_inplace_autograd(at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                                 const std::optional<at::Tensor>& b1,
                                 const std::optional<at::Tensor>& b2,
                                 const std::optional<at::Tensor>& residual, int64_t squeeze,
                                 int64_t act, int64_t gate) {
  const bool fake = x.defined() && x.key_set().has(c10::DispatchKey::Python);
  if (at::GradMode::is_enabled() && !fake) {
    auto needs = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
    auto opt_needs = [&](const std::optional<at::Tensor>& t) { return t && needs(*t); };
    TORCH_CHECK(!needs(x) && !needs(w1) && !needs(w2) && !opt_needs(b1) && !opt_needs(b2) &&
                    !opt_needs(residual),
                "se_kernels: se_forward_inplace is not differentiable (it overwrites x), but an "
                "input requires grad with grad mode on; use se_forward, or torch.no_grad()");
  }
  at::AutoDispatchBelowAutograd guard;
  inplace_op().call(x, w1, w2, b1, b2, residual, squeeze, act, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(se_kernels, Autograd, m) {
  m.impl("se_forward", &se_forward_autograd);
  // The ADInplaceOrView kernel below bumps x's version counter, so a graph that saved x
  // raises at backward instead of differentiating the overwritten values.
  m.impl("se_forward_inplace", &se_forward_inplace_autograd);
}

TORCH_LIBRARY_IMPL(se_kernels, ADInplaceOrView, m) {
  m.impl("se_forward_inplace", &se_forward_inplace_ad_inplace_or_view);
}

}  // namespace se_kernels

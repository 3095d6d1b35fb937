"""``complexity(model)``: parameters and multiply-accumulates of a forward pass, SE ops included.

Counting follows the convention of the paper's "GFLOPs" (which are multiply-adds: ResNet-50's
3.86 G) and of ``torch.utils.flop_counter``: convolutions and matrix products count one MAC per
multiply-add; batch norm, ReLU, max pooling and the residual addition count nothing. The SE
op is counted element by element, one FLOP (half a MAC) per operation:

    pooling:  N*C*H*W additions          (the 1/HW scaling is negligible and not counted)
    FCs:      N*(C*Cr + Cr*C) multiply-adds
    scaling:  N*C*H*W multiplications
    => MACs = N*(2*C*Cr + C*H*W)

The gate and the activation (N*C and N*Cr values; any of relu, silu, hardswish, relu6, gelu,
gelu_tanh, so the formula is the same for all) and the fused residual tail (the addition a
plain ResNet's count leaves out as well) are not counted. With this convention SE-MobileNet and
SE-ShuffleNet come out at the paper's 572 and 142 MFLOPs (docs/models.md).

The formula is registered with ``torch.utils.flop_counter`` for every ``se_kernels`` forward
and backward op that is loaded, so a plain ``FlopCounterMode`` counts ``fused_se`` too.
``complexity`` itself counts each ``SqueezeExcitation`` module from the shapes it saw, whatever
its backend (the reference backend's ``F.linear`` calls would otherwise count only the FCs).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from se_kernels.nn import SqueezeExcitation

__all__ = ["complexity", "complexity_breakdown", "se_flops"]


def se_flops(n: int, c: int, cr: int, hw: int, *, backward: bool = False) -> int:
    """FLOPs of one SE op on x (N, C, H, W) with Cr hidden units, ``hw = H*W``.

    Forward: ``N*(4*C*Cr + 2*C*HW)`` (see the module docstring). Backward: twice the FCs (input
    and weight gradients), ``ds = sum(dy*x)`` (2 FLOPs an element) and ``dx = dy*s + dz/HW``
    (2 FLOPs an element): ``N*(8*C*Cr + 4*C*HW)``.
    """
    if backward:
        return n * (8 * c * cr + 4 * c * hw)
    return n * (4 * c * cr + 2 * c * hw)


def _forward_formula(x_shape, w1_shape, *args, out_shape=None, **kwargs) -> int:
    n, c, h, w = x_shape
    return se_flops(n, c, w1_shape[0], h * w)


def _backward_formula(dy_shape, x_shape, w1_shape, *args, out_shape=None, **kwargs) -> int:
    n, c, h, w = x_shape
    return se_flops(n, c, w1_shape[0], h * w, backward=True)


def register_se_formulas() -> list[str]:
    """Registers the SE FLOP formulas for the se_kernels ops that exist now (idempotent);
    returns the names of the ops registered. Called on import; call again after loading a
    backend that defines new ops."""
    from torch.utils.flop_counter import flop_registry

    done = []
    # every registered se_kernels op (dir(torch.ops.se_kernels) lists only those already used)
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("se_kernels::"))
    for name in names:
        if not name.endswith(("se_forward", "se_forward_inplace", "se_backward")):
            continue
        packet = getattr(torch.ops.se_kernels, name)
        formula = _backward_formula if name.endswith("backward") else _forward_formula
        if packet not in flop_registry:
            register_flop_formula(packet)(formula)
        done.append(name)
    return done


register_se_formulas()


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _addition_formula(*args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(out_shape)  # one MAC per element (see count_additions)


def complexity(model: nn.Module, input_size=(3, 224, 224), *, batch_size: int = 1,
               count_additions: bool = False) -> dict:
    """Parameters and MACs of ``model`` for one input of ``input_size`` (C, H, W).

    Returns ``{"params": int, "macs": int}``: ``params`` counts every parameter once (shared
    ones once); ``macs`` is the forward pass's multiply-accumulates per ``batch_size`` images,
    counted as the module docstring says (``torch.utils.flop_counter`` FLOPs / 2, with each
    ``SqueezeExcitation`` counted as ``2*C*Cr + C*H*W``).

    ``count_additions``: also count every element of a tensor addition (``aten.add``: the
    residual sums) as one MAC, and likewise the residual sum fused into an SE op. Off by
    default (as ``torch.utils.flop_counter`` and fvcore); the paper's ResNet-101/152 and
    ResNeXt-50 figures agree with the count that includes them (docs/models.md).

    The forward pass runs on fake tensors on the parameters' device (no memory, no arithmetic:
    an ImageNet-size SENet-154 is counted in about a second; networks built on the meta device
    work too) in eval mode, with the SE blocks on backend "auto"; the model is left as it was.
    """
    counts = complexity_breakdown(model, input_size, batch_size=batch_size)
    macs = counts["macs"] + (counts["additions"] if count_additions else 0)
    return {"params": counts["params"], "macs": macs}


def complexity_breakdown(model: nn.Module, input_size=(3, 224, 224), *,
                         batch_size: int = 1) -> dict:
    """``{"params", "macs", "additions"}`` from one pass: ``macs`` as ``complexity``'s
    default, ``additions`` the elements of tensor additions (the MACs ``count_additions``
    adds)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={aten.add: _addition_formula,
                                                             aten.add_: _addition_formula})

    def totals() -> tuple[int, int]:
        glob = counter.get_flop_counts().get("Global", {})
        return counter.get_total_flops(), glob.get(aten.add, 0) + glob.get(aten.add_, 0)

    se_flops_total = [0, 0]   # explicit FLOPs of the SE calls: (SE op, fused residual sums)
    inside = [0, 0]           # what the counter saw inside SE modules: (all, additions)
    start: list[tuple[int, int]] = []

    def pre_hook(module, args):
        start.append(totals())

    def post_hook(module, args, kwargs, output):
        (t0, a0), (t1, a1) = start.pop(), totals()
        inside[0] += t1 - t0
        inside[1] += a1 - a0
        n, c, h, w = output.shape
        if getattr(module, "channels_last_input", False):  # (N, H, W, C) tensors
            n, h, w, c = output.shape
        se_flops_total[0] += se_flops(n, c, module.reduced_channels, h * w)
        if kwargs.get("residual", args[1] if len(args) > 1 else None) is not None:
            se_flops_total[1] += 2 * n * c * h * w

    handles, backends = [], []
    for m in model.modules():
        if isinstance(m, SqueezeExcitation):
            handles += [m.register_forward_pre_hook(pre_hook),
                        m.register_forward_hook(post_hook, with_kwargs=True)]
            # counted from shapes whatever the backend: "auto" runs wherever the model is
            backends.append((m, m.backend))
            m.backend = "auto"
    was_training = model.training
    model.eval()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            p = next(model.parameters(), None)
            x = torch.empty(batch_size, *input_size, dtype=p.dtype if p is not None else None,
                            device=p.device if p is not None else None)
            with torch.no_grad(), counter:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for m, backend in backends:
            m.backend = backend
    total, adds = totals()
    additions = adds - inside[1] + se_flops_total[1]
    flops = total - adds - (inside[0] - inside[1]) + se_flops_total[0]
    return {"params": _count_params(model), "macs": int(math.ceil(flops / 2)),
            "additions": additions // 2}

"""ONNX export (torch.onnx.export(dynamo=True) with se_kernels.onnx_translation_table()):
converted torchvision and timm models and the paper's SE-ResNet-50 run in onnxruntime and match
PyTorch; every option of the op (squeeze, activation, gate, biases, residual) is translated.

Each export takes seconds, so the options are covered by a few graphs holding many SE blocks
each, not by one export per combination."""

import itertools
import sys
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import se_kernels
from se_kernels._options import ACTIVATIONS
from helpers import TOLERANCES, randomize_bn, rel_err

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (a test extra)")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (a test extra)")
ort = pytest.importorskip("onnxruntime",
                          reason="ONNX export tests need onnxruntime (a test extra)")

HAS_CPU = "cpu" in se_kernels.available_backends()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"the cpu backend is not built: "
                               f"{se_kernels.EXTENSION_LOAD_ERROR}")
HAS_TRITON = "triton" in se_kernels.available_backends()

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # fp32, ONNX Runtime against PyTorch (the bound)
NEW_ACTIVATIONS = ("hardswish", "relu6", "gelu", "gelu_tanh")  # codes 2..5 (issue 15 item 1)
GATES = ("sigmoid", "hardsigmoid", "tanh", "relu")
# ONNX ops the translations may use, besides those of the models' own layers
SE_ONNX_OPS = {"ReduceMean", "ReduceMax", "Gemm", "Relu", "Sigmoid", "Tanh", "Clip", "Erf",
               "Mul", "Add", "Div", "Unsqueeze", "Cast", "CastLike", "Constant", "Identity"}


def export(model: nn.Module, inputs: tuple, table=None):
    """torch.onnx.export(dynamo=True) with se_kernels' table; returns the ONNXProgram."""
    return torch.onnx.export(model, inputs, dynamo=True, verbose=False,
                             custom_translation_table=table or se_kernels.onnx_translation_table())


def run_onnxruntime(program, inputs: tuple) -> list[torch.Tensor]:
    sess = ort.InferenceSession(program.model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().numpy() for i, t in zip(sess.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def count_ops(program, op) -> int:
    return sum(n.target == op for n in program.exported_program.graph.nodes)


def onnx_op_types(program) -> set[str]:
    nodes = program.model_proto.graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes), \
        f"non-standard ONNX domains: {sorted({n.domain for n in nodes} - {''})}"
    return {n.op_type for n in nodes}


def check_model(model: nn.Module, x: torch.Tensor, fused_blocks: int, *, no_grad=False):
    """Exports ``model`` (eval mode), runs it in onnxruntime, compares with PyTorch."""
    model.eval()
    with torch.no_grad():
        expected = model(x.clone())
    with torch.set_grad_enabled(not no_grad):
        program = export(model, (x,))
    assert count_ops(program, torch.ops.se_kernels.se_forward.default) == fused_blocks
    (out,) = run_onnxruntime(program, (x,))
    err = rel_err(out, expected)
    assert err <= TOL, f"onnxruntime vs PyTorch: relative error {err:.2e} > {TOL:.0e}"
    return program


# ---- the option grid: many SE blocks in one graph -------------------------------------------

class OptionGrid(nn.Module):
    """One fused_se call per option set, each with its own weights, all on the same x
    (channels_last where asked) and residual; returns every block's y."""

    def __init__(self, options, c: int, cr: int, backend: str):
        super().__init__()
        self.options, self.backend = list(options), backend
        self.w1 = nn.ParameterList(nn.Parameter(torch.randn(cr, c) * 2 / c ** 0.5)
                                   for _ in self.options)
        self.w2 = nn.ParameterList(nn.Parameter(torch.randn(c, cr) * 2 / cr ** 0.5)
                                   for _ in self.options)
        self.b1 = nn.ParameterList(nn.Parameter(torch.randn(cr) * 0.5) for _ in self.options)
        self.b2 = nn.ParameterList(nn.Parameter(torch.randn(c) * 0.5) for _ in self.options)

    def forward(self, x, residual):
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out = []
        for i, (squeeze, act, gate, bias, res) in enumerate(self.options):
            xi = x_cl if i % 3 == 1 else x  # both layouts the kernels read
            out.append(se_kernels.fused_se(
                xi, self.w1[i], self.w2[i], self.b1[i] if bias else None,
                self.b2[i] if bias else None, residual=residual if res else None,
                squeeze=squeeze, activation=act, gate=gate, backend=self.backend))
        return tuple(out)

    def reference(self, x, residual):
        """Every block by se_reference in float64."""
        x64, r64 = x.double(), residual.double()
        return [se_kernels.se_reference(
            x64, self.w1[i].double(), self.w2[i].double(),
            self.b1[i].double() if bias else None, self.b2[i].double() if bias else None,
            r64 if res else None, squeeze, act, gate)
            for i, (squeeze, act, gate, bias, res) in enumerate(self.options)]


def check_grid(options, backend: str, op, dtype=torch.float32) -> set[str]:
    """Exports an OptionGrid (N=3, C=13, Cr=5, 5x7: odd sizes) and checks each block's y in
    onnxruntime against PyTorch and the float64 reference. Returns the ONNX op types."""
    grid = OptionGrid(options, c=13, cr=5, backend=backend).eval().to(dtype)
    x, residual = torch.randn(3, 13, 5, 7, dtype=dtype), torch.randn(3, 13, 5, 7, dtype=dtype)
    tol = max(TOL, TOLERANCES[dtype])
    with torch.no_grad():
        expected = grid(x, residual)
        oracle = grid.reference(x, residual)
    program = export(grid, (x, residual))
    assert count_ops(program, op) == len(options)  # the fused op was exported, not a fallback
    outs = run_onnxruntime(program, (x, residual))
    assert len(outs) == len(options)
    for opts, out, exp, ref in zip(options, outs, expected, oracle):
        assert out.shape == exp.shape and out.dtype == exp.dtype
        for what, target in (("PyTorch", exp), ("float64 reference", ref)):
            err = rel_err(out, target)
            assert err <= tol, f"{opts}: onnxruntime vs {what}: relative error {err:.2e}"
    return onnx_op_types(program)


@needs_cpu
def test_every_option_combination():
    """The full option matrix of relu and silu, one SE block each, in one graph (the other
    activations: test_new_activation_by_name)."""
    options = list(itertools.product(("avg", "max"), ("relu", "silu"), GATES, (False, True),
                                     (False, True)))
    types = check_grid(options, "cpu", torch.ops.se_kernels.se_forward.default)
    assert types <= SE_ONNX_OPS, f"unexpected ONNX ops {sorted(types - SE_ONNX_OPS)}"
    assert {"ReduceMean", "ReduceMax", "Gemm", "Clip", "Tanh"} <= types


@needs_cpu
@pytest.mark.parametrize("activation", NEW_ACTIVATIONS)
def test_new_activation_by_name(activation):
    """Activations 2..5 through the real op, with every squeeze, gate, bias and residual.
    Runs once the op accepts the activation (issue 15 item 1, another branch)."""
    if activation not in ACTIVATIONS:
        pytest.skip(f"fused_se does not accept activation={activation!r} yet "
                    f"(accepted: {sorted(ACTIVATIONS)})")
    options = [(s, activation, g, b, r) for s, g, (b, r) in itertools.product(
        ("avg", "max"), GATES, ((False, False), (True, True)))]
    check_grid(options, "cpu", torch.ops.se_kernels.se_forward.default)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_other_dtypes(dtype):
    """float16 computes in float32 and casts y back; float64 computes in float64 (bfloat16:
    NumPy, which feeds onnxruntime here, has no bfloat16)."""
    options = [("avg", "relu", "sigmoid", True, False), ("max", "silu", "hardsigmoid", False, True),
               ("avg", "silu", "tanh", False, True), ("max", "relu", "relu", True, False)]
    types = check_grid(options, "cpu", torch.ops.se_kernels.se_forward.default, dtype)
    assert ("Cast" in types) == (dtype == torch.float16)


@pytest.mark.skipif(not HAS_TRITON, reason="the triton backend is not available here "
                    "(Triton missing, or no GPU and TRITON_INTERPRET unset)")
def test_triton_op():
    """The Triton backend's op has the same translation."""
    options = [("avg", "relu", "sigmoid", True, False), ("max", "silu", "hardsigmoid", False, True),
               ("avg", "silu", "tanh", True, True), ("max", "relu", "relu", False, False)]
    check_grid(options, "triton", torch.ops.se_kernels.triton_se_forward.default)


# ---- every activation code through the translation, without the kernels ----------------------

_TEST_ACTS = {0: F.relu, 1: F.silu, 2: F.hardswish, 3: F.relu6, 4: F.gelu,
              5: lambda h: F.gelu(h, approximate="tanh")}
_TEST_GATES = {0: torch.sigmoid, 1: F.hardsigmoid, 2: torch.tanh, 3: F.relu}


@torch.library.custom_op("se_kernels_onnx_test::se_forward", mutates_args=())
def _reference_op(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor], b2: Optional[Tensor],
                  residual: Optional[Tensor], squeeze: int, act: int,
                  gate: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """se_forward's schema and semantics, in plain PyTorch, for every activation code 0..5
    (whichever codes the kernels on this branch accept)."""
    z = x.mean((2, 3)) if squeeze == 0 else x.amax((2, 3))
    hpre = F.linear(z, w1, b1)
    gpre = F.linear(_TEST_ACTS[act](hpre), w2, b2)
    y = x * _TEST_GATES[gate](gpre)[:, :, None, None]
    if residual is not None:
        y = F.relu(y + residual)
    return y, z, hpre, gpre


@_reference_op.register_fake
def _(x, w1, w2, b1, b2, residual, squeeze, act, gate):
    n, c, cr = x.shape[0], x.shape[1], w1.shape[0]
    return torch.empty_like(x), x.new_empty(n, c), x.new_empty(n, cr), x.new_empty(n, c)


class EveryCode(nn.Module):
    """The test op with each (activation code, gate code, squeeze) and all four outputs."""

    def __init__(self, c=11, cr=4):
        super().__init__()
        self.codes = [(a, g, (a + g) % 2) for a in _TEST_ACTS for g in _TEST_GATES]
        self.w1 = nn.Parameter(torch.randn(cr, c) * 2 / c ** 0.5)
        self.w2 = nn.Parameter(torch.randn(c, cr) * 2 / cr ** 0.5)
        self.b1, self.b2 = nn.Parameter(torch.randn(cr)), nn.Parameter(torch.randn(c) * 0.5)

    def forward(self, x, residual):
        out = []
        for i, (a, g, s) in enumerate(self.codes):
            bias = i % 2 == 0
            out += torch.ops.se_kernels_onnx_test.se_forward(
                x, self.w1, self.w2, self.b1 if bias else None, self.b2 if bias else None,
                residual if i % 3 == 0 else None, s, a, g)
        return tuple(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_translation_of_every_activation_and_gate_code(dtype):
    """The translation itself, for activation codes 0..5 and gate codes 0..3, against a
    PyTorch op with se_forward's schema: y, z, hpre and gpre all match."""
    from se_kernels.onnx import _make_translation, _ops

    model = EveryCode().eval().to(dtype)
    x, residual = torch.randn(2, 11, 3, 5, dtype=dtype), torch.randn(2, 11, 3, 5, dtype=dtype)
    tol = max(TOL, TOLERANCES[dtype])
    with torch.no_grad():
        expected = model(x, residual)
    table = {torch.ops.se_kernels_onnx_test.se_forward.default: _make_translation(_ops())}
    program = export(model, (x, residual), table)
    outs = run_onnxruntime(program, (x, residual))
    assert len(outs) == len(expected) == 4 * len(model.codes)
    names = ("y", "z", "hpre", "gpre")
    for i, (out, exp) in enumerate(zip(outs, expected)):
        a, g, s = model.codes[i // 4]
        err = rel_err(out, exp)
        assert err <= tol, f"act {a}, gate {g}, squeeze {s}: {names[i % 4]} off by {err:.2e}"
    types = onnx_op_types(program)
    assert types <= SE_ONNX_OPS, f"unexpected ONNX ops {sorted(types - SE_ONNX_OPS)}"
    assert {"Clip", "Erf", "Tanh", "Div"} <= types


# ---- whole models ---------------------------------------------------------------------------

@needs_cpu
def test_torchvision_mobilenet_v3_small():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.mobilenet_v3_small())
    se_kernels.convert(model, backend="cpu")
    assert len(model.se_conversion.replaced) == 9
    check_model(model, torch.randn(2, 3, 64, 64), fused_blocks=9)


@needs_cpu
def test_timm_tinynet():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("tinynet_e", pretrained=False))  # EfficientNet, SiLU
    se_kernels.convert(model, backend="cpu")
    assert len(model.se_conversion.replaced) == 10
    check_model(model, torch.randn(2, 3, 64, 64), fused_blocks=10)


@needs_cpu
def test_se_resnet50_no_grad():
    """The paper's SE-ResNet-50, exported under torch.no_grad(), where its blocks would use the
    in-place op: while torch.onnx.export traces, the out-of-place op is used instead."""
    torch.manual_seed(0)
    model = randomize_bn(se_kernels.models.se_resnet50(backend="cpu"))
    program = check_model(model, torch.randn(1, 3, 64, 64), fused_blocks=16, no_grad=True)
    assert count_ops(program, torch.ops.se_kernels.se_forward_inplace.default) == 0


class InplaceCall(nn.Module):
    """fused_se(inplace=True) on an intermediate, as a ResNet block's branch output."""

    def __init__(self):
        super().__init__()
        self.se = se_kernels.SqueezeExcitation(12, 3, backend="cpu")

    def forward(self, x):
        h = x * 1.5
        se = self.se
        return se_kernels.fused_se(h, se.fc1_weight, se.fc2_weight, se.fc1_bias, se.fc2_bias,
                                   residual=x, backend="cpu", inplace=True)


@needs_cpu
def test_fused_se_inplace_call_no_grad():
    """A direct fused_se(inplace=True) under no_grad exports as the out-of-place op."""
    program = check_model(InplaceCall(), torch.randn(2, 12, 4, 6), fused_blocks=1, no_grad=True)
    assert count_ops(program, torch.ops.se_kernels.se_forward_inplace.default) == 0


# ---- the table ------------------------------------------------------------------------------

def test_table_lists_the_forward_ops():
    table = se_kernels.onnx_translation_table()
    expected = set()
    if HAS_CPU:
        expected.add(torch.ops.se_kernels.se_forward.default)
    if HAS_TRITON:
        expected.add(torch.ops.se_kernels.triton_se_forward.default)
    assert set(table) == expected
    assert all(callable(f) for f in table.values())


def test_activation_codes_agree_with_the_options():
    from se_kernels.onnx import _ACTIVATION_CODES

    assert {name: _ACTIVATION_CODES.index(name) for name in ACTIVATIONS} == ACTIVATIONS
    assert set(NEW_ACTIVATIONS) | {"relu", "silu"} == set(_ACTIVATION_CODES)


def test_table_without_onnxscript_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ImportError, match="onnx_translation_table needs onnxscript"):
        se_kernels.onnx_translation_table()

"""torch.export and AOTInductor on the CPU: a converted model goes through torch.export.export,
torch.export.save/load and torch._inductor.aoti_compile_and_package + aoti_load_package with the
same outputs, and a saved program or package needs ``import se_kernels`` before it is loaded
(the README says so).

AOTInductor compiles C++ (tens of seconds on two cores), so the model is tiny and compiled
once per module."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import se_kernels
from helpers import rel_err

torchvision = pytest.importorskip("torchvision")

HAS_CPU = "cpu" in se_kernels.available_backends()
pytestmark = [
    pytest.mark.skipif(not HAS_CPU, reason=f"the cpu backend is not built: "
                       f"{se_kernels.EXTENSION_LOAD_ERROR}"),
    pytest.mark.usefixtures("one_thread"),
]


class Tiny(nn.Module):
    """A conv, a torchvision SE module (converted to the out-of-place op) and an SE-ResNet
    block tail with the in-place op (``inplace=True``, exported under no_grad)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.se = torchvision.ops.SqueezeExcitation(16, 4)
        self.tail = se_kernels.SqueezeExcitation(16, 4, squeeze="max", activation="silu",
                                                 gate="hardsigmoid", inplace=True)

    def forward(self, x):
        h = self.se(self.conv(x))
        return self.tail(h * 2, residual=h)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, x, eager output, ExportedProgram, saved .pt2 path, AOTI package path)."""
    torch.manual_seed(0)
    model = se_kernels.convert(Tiny().eval(), backend="cpu")
    assert len(model.se_conversion.replaced) == 1
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        expected = model(x)
        ep = torch.export.export(model, (x,))
    root = tmp_path_factory.mktemp("export")
    saved = root / "tiny_ep.pt2"
    torch.export.save(ep, saved)
    package = torch._inductor.aoti_compile_and_package(ep, package_path=str(root / "tiny.pt2"))
    return model, x, expected, ep, saved, package


def test_export_keeps_the_fused_ops(exported):
    model, x, expected, ep, _, _ = exported
    targets = [n.target for n in ep.graph.nodes]
    assert targets.count(torch.ops.se_kernels.se_forward.default) == 1
    assert targets.count(torch.ops.se_kernels.se_forward_inplace.default) == 1
    with torch.no_grad():
        out = ep.module()(x)
    assert rel_err(out, expected) <= 1e-6


def test_save_load(exported):
    _, x, expected, _, saved, _ = exported
    loaded = torch.export.load(saved)
    with torch.no_grad():
        out = loaded.module()(x)
    assert rel_err(out, expected) <= 1e-6


def test_aoti_package(exported):
    _, x, expected, _, _, package = exported
    runner = torch._inductor.aoti_load_package(package)
    with torch.no_grad():
        out = runner(x)
        again = runner(torch.randn_like(x))  # the runner is reusable, on fresh inputs
    assert rel_err(out, expected) <= 1e-5
    assert again.shape == expected.shape and torch.isfinite(again).all()


def test_loading_needs_import_se_kernels(exported, tmp_path):
    """In a fresh process, loading the saved program and the package fail, naming the
    se_kernels op, until se_kernels is imported (it registers the ops); then both work."""
    _, x, expected, _, saved, package = exported
    torch.save((x, expected), tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch
        x, expected = torch.load({str(tmp_path / "io.pt")!r})
        def attempt(what, fn):
            try:
                with torch.no_grad():  # the program holds the in-place op
                    y = fn()
            except Exception as e:
                print(what, "failed:", type(e).__name__, str(e)[:300].replace(chr(10), " "))
                return
            err = ((y - expected).norm() / expected.norm()).item()
            print(what, "ok", err)
        load = lambda: torch.export.load({str(saved)!r}).module()(x)
        aoti = lambda: torch._inductor.aoti_load_package({str(package)!r})(x)
        attempt("load", load)
        attempt("aoti", aoti)
        import se_kernels
        attempt("load+import", load)
        attempt("aoti+import", aoti)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    # torch.export.load's error points at its warnings, which name the op it cannot resolve
    assert lines["load"].startswith("failed"), lines
    assert "torch.ops.se_kernels.se_forward" in proc.stderr, proc.stderr[-3000:]
    assert lines["aoti"].startswith("failed") and "se_kernels::se_forward" in lines["aoti"], lines
    for what in ("load+import", "aoti+import"):
        status, err = lines[what].split()
        assert status == "ok" and float(err) <= 1e-5, lines


def test_inplace_op_lets_fake_tensors_through():
    """AOTInductor lowers the in-place op on fake tensors with grad mode on and parameters
    that require grad; the op's refusal is for real tensors only (tests/test_inplace.py)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.se_kernels.se_forward_inplace
    with FakeTensorMode():
        x = torch.randn(2, 8, 3, 3)
        w1, w2 = torch.randn(2, 8, requires_grad=True), torch.randn(8, 2, requires_grad=True)
        op(x, w1, w2, None, None, None, 0, 0, 0)
    with pytest.raises(RuntimeError, match="se_forward_inplace is not differentiable"):
        op(torch.randn(2, 8, 3, 3), torch.randn(2, 8, requires_grad=True), torch.randn(8, 2),
           None, None, None, 0, 0, 0)

"""se_kernels.introspect: recording the SE gates (paper Section 7.2) and the Figure 6/7 plots."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import se_kernels
from se_kernels.introspect import (
    class_specificity,
    last_block_per_stage,
    paper_name,
    plot_class_means,
    plot_instance_spread,
    record_excitations,
    se_blocks,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Net(nn.Module):
    """Three SE blocks with different options, one with the residual tail, one built around
    1x1-conv weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.se_a = se_kernels.SqueezeExcitation(16, reduction=4)
        self.se_b = se_kernels.SqueezeExcitation(16, reduction=2, bias=False, squeeze="max",
                                                 activation="silu", gate="hardsigmoid")
        c1, c2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.se_c = se_kernels.SqueezeExcitation.from_parameters(
            c1.weight, c2.weight, c1.bias, c2.bias, gate="tanh")
        self.convs = nn.ModuleList([c1, c2])  # owns the shared parameters

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.se_a(x)
        x = self.se_b(x, residual=x)
        return self.se_c(x)


def _io(model):
    """Each SE block's (input, output) of the last forward pass, captured independently."""
    seen, handles = {}, []
    for name, m in se_blocks(model).items():
        handles.append(m.register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(name, (args[0], out))))
    return seen, handles


def test_recorded_gates_equal_independent_gates():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(5, 3, 9, 8)
    seen, handles = _io(model)
    with record_excitations(model) as rec:
        model(x)
    for h in handles:
        h.remove()
    gates = rec.stacked()
    assert set(gates) == {"se_a", "se_b", "se_c"}
    # No residual: the kernel's own output gives the gate, y = x * s.
    for name in ("se_a", "se_c"):
        xin, y = seen[name]
        mask = xin.abs() > 1e-3
        ratio = torch.where(mask, y / xin.where(mask, torch.ones_like(xin)), torch.nan)
        s_from_y = ratio.nanmean(dim=(2, 3))
        torch.testing.assert_close(gates[name], s_from_y, rtol=1e-5, atol=1e-6)
    # With the residual tail, the gate written out by hand.
    xin, _ = seen["se_b"]
    m = model.se_b
    h = nn.functional.silu(xin.amax(dim=(2, 3)) @ m.fc1_weight.t())
    s = nn.functional.hardsigmoid(h @ m.fc2_weight.t())
    torch.testing.assert_close(gates["se_b"], s.detach())
    for g in gates.values():
        assert g.dtype == torch.float32 and g.shape == (5, 16) and not g.requires_grad


def test_records_every_pass_and_only_inside_the_block():
    model = Net()
    blocks = se_blocks(model)
    with record_excitations(model, names=["se_b"]) as rec:
        model(torch.randn(2, 3, 6, 6))
        model(torch.randn(3, 3, 6, 6))
        assert all(len(b._forward_pre_hooks) == (n == "se_b") for n, b in blocks.items())
    model(torch.randn(4, 3, 6, 6))
    assert list(rec.gates) == ["se_b"] and [t.shape[0] for t in rec.gates["se_b"]] == [2, 3]
    assert rec.stacked()["se_b"].shape == (5, 16)
    # Nothing stays attached: outside the block the model runs exactly as before.
    assert all(len(b._forward_pre_hooks) == 0 for b in blocks.values())
    rec.clear()
    assert rec.stacked() == {}
    with pytest.raises(KeyError, match="no SE block named"):
        with record_excitations(model, names=["se_z"]):
            pass


def test_hooks_removed_when_the_forward_raises():
    model = Net()
    with pytest.raises(ValueError):
        with record_excitations(model):
            model.se_a(torch.randn(2, 16))  # not 4-D: fused_se raises
    assert all(len(b._forward_pre_hooks) == 0 for b in se_blocks(model).values())


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_recording_under_autocast(amp_dtype):
    model = Net()
    with torch.autocast("cpu", dtype=amp_dtype), record_excitations(model) as rec:
        y = model(torch.randn(2, 3, 6, 6))
    assert y.dtype == amp_dtype
    assert all(g.dtype == torch.float32 for g in rec.stacked().values())


def test_resnet_names_and_stages():
    models = pytest.importorskip("se_kernels.models")
    net = models.se_resnet18(num_classes=10, in_channels=1)
    names = list(se_blocks(net))
    assert names[0] == "layer1.0.se" and paper_name(names[0]) == "SE_2_1"
    assert paper_name("layer3.5.se") == "SE_4_6" and paper_name("head.se") == "head.se"
    assert last_block_per_stage(names) == ["layer1.1.se", "layer2.1.se", "layer3.1.se",
                                           "layer4.1.se"]
    with record_excitations(net) as rec:
        net(torch.randn(3, 1, 16, 16))
    assert [g.shape for g in rec.stacked().values()] == [
        (3, c) for c in (64, 64, 128, 128, 256, 256, 512, 512)]


def test_recording_through_in_place_blocks():
    """Under no_grad the ResNet blocks' SE runs in place (cpu backend) and overwrites its
    input: the gates recorded must still be those of the input, as with autograd on."""
    models = pytest.importorskip("se_kernels.models")
    torch.manual_seed(0)
    net = models.se_resnet18(num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 16, 16)
    with record_excitations(net) as rec:
        net(x)  # autograd on: out of place
    with torch.no_grad(), record_excitations(net) as rec_ng:
        net(x)
    for name, g in rec.stacked().items():
        torch.testing.assert_close(rec_ng.stacked()[name], g, rtol=1e-6, atol=1e-6)


def test_class_specificity():
    labels = torch.tensor([0, 0, 1, 1])
    same = torch.full((4, 8), 0.5)
    assert class_specificity(same, labels) == 0
    apart = torch.tensor([[0.1] * 8, [0.1] * 8, [0.9] * 8, [0.9] * 8])
    assert class_specificity(apart, labels) > 1


def test_plots_write_pngs(tmp_path):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    gates = {f"layer{k}.{b}.se": torch.rand(40, 32 * k) for k in (1, 2, 3) for b in (0, 1)}
    fig6 = plot_class_means(gates, labels, tmp_path / "f6.png",
                            class_names={0: "zero"}, title="t")
    fig7 = plot_instance_spread(gates, labels, tmp_path / "sub" / "f7.png", classes=[1, 3])
    for f in (fig6, fig7):
        assert f.exists() and f.read_bytes()[:8] == PNG_MAGIC and f.stat().st_size > 5000


def test_plot_excitations_from_a_checkpoint(tmp_path):
    """examples/plot_excitations.py end to end, on a 2-step checkpoint of examples/train.py."""
    pytest.importorskip("sklearn")
    pytest.importorskip("safetensors")
    pytest.importorskip("se_kernels.models")
    sys.path.insert(0, str(ROOT / "examples"))
    threads = torch.get_num_threads()
    try:
        import plot_excitations
        import train

        train.main(["--max-steps", "2", "--batch-size", "16", "--image-size", "16",
                    "--threads", "1", "--no-progress", "--out", str(tmp_path)])
        res = plot_excitations.main([str(tmp_path / "last.safetensors"),
                                     "--out", str(tmp_path / "ex")])
    finally:
        sys.path.pop(0)
        torch.set_num_threads(threads)
    for key in ("fig6", "fig7"):
        assert Path(res[key]).read_bytes()[:8] == PNG_MAGIC
    assert list(res["specificity"])[:2] == ["SE_2_1", "SE_2_2"]

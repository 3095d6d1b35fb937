"""SqueezeExcitation / FusedSE: the module over fused_se."""

import pytest
import torch
from torch import nn

import se_kernels
from se_kernels import FusedSE, SqueezeExcitation


def test_alias():
    assert FusedSE is SqueezeExcitation


def test_shapes_and_parameters():
    m = SqueezeExcitation(64, reduction=16)
    assert m.fc1_weight.shape == (4, 64) and m.fc2_weight.shape == (64, 4)
    assert m.fc1_bias.shape == (4,) and m.fc2_bias.shape == (64,)
    assert sum(p.numel() for p in m.parameters()) == 2 * 64 * 4 + 4 + 64
    m = SqueezeExcitation(3, reduction=16, bias=False)
    assert m.reduced_channels == 1 and m.fc1_bias is None
    assert "reduced_channels=1" in repr(m)


@pytest.mark.parametrize("backend", se_kernels.available_backends())
def test_module_matches_functional(backend):
    if backend in ("triton", "cuda"):
        pytest.skip("CUDA backends are covered by their own tests")
    torch.manual_seed(0)
    m = SqueezeExcitation(32, reduction=4, gate="hardsigmoid", activation="silu",
                          backend=backend)
    x = torch.randn(3, 32, 6, 6)
    r = torch.randn_like(x)
    expected = se_kernels.se_reference(x, m.fc1_weight, m.fc2_weight, m.fc1_bias, m.fc2_bias,
                                       r, "avg", "silu", "hardsigmoid")
    torch.testing.assert_close(m(x, residual=r), expected)


def test_from_parameters_shares_conv_weights():
    conv1, conv2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
    m = SqueezeExcitation.from_parameters(conv1.weight, conv2.weight, conv1.bias, conv2.bias,
                                          gate="hardsigmoid")
    assert m.fc1_weight is conv1.weight and m.fc2_bias is conv2.bias
    x = torch.randn(2, 16, 5, 5)
    s = nn.functional.hardsigmoid(conv2(torch.relu(conv1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(m(x), x * s)
    m(x).sum().backward()
    assert conv1.weight.grad is not None and conv1.weight.grad.shape == (4, 16, 1, 1)
    with pytest.raises(TypeError, match="unexpected options"):
        SqueezeExcitation.from_parameters(conv1.weight, conv2.weight, colour="red")


def test_bad_construction():
    with pytest.raises(ValueError, match="channels must be >= 1"):
        SqueezeExcitation(0)
    with pytest.raises(ValueError, match="reduction must be >= 1"):
        SqueezeExcitation(8, reduction=0)


def test_state_dict_round_trip():
    a, b = SqueezeExcitation(8, reduction=2), SqueezeExcitation(8, reduction=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(a(x), b(x))

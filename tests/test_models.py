"""se_kernels.models: every network builds, runs and matches the reference SE inside."""

import pytest
import torch

from se_kernels import models


@pytest.mark.parametrize("name", ["resnet18", "se_resnet18", "resnet50", "se_resnet50"])
def test_small_input_ten_classes(name):
    """8x8 single-channel images, 10 classes: what the reliability tests train on."""
    torch.manual_seed(0)
    m = models.get_model(name, num_classes=10, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    loss = m(x).logsumexp(1).mean()
    loss.backward()
    assert m(x).shape == (4, 10)
    assert all(p.grad is not None for p in m.parameters())

"""convert over the timm and torchvision zoos (tools/zoo_coverage.py): every SE-like module
of the models below is fused and the outputs match in float64.

CI runs a subset chosen to cover every SE class and option convert handles (the hard-swish
SE activation of FBNetV3, ReXNet's BatchNorm between the FCs, the one-FC effective SE of
VoVNet/HGNet, MobileNetV3's hard-sigmoid gate); the whole walk the docs/models.md table comes
from is marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

_spec = importlib.util.spec_from_file_location(
    "zoo_coverage", Path(__file__).resolve().parents[1] / "tools" / "zoo_coverage.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSET = [  # (library, model, what it covers)
    ("timm", "fbnetv3_b", "hardswish activation"),
    ("timm", "rexnet_100", "BatchNorm between the FCs, folded"),
    ("timm", "ese_vovnet19b_dw", "effective SE (one FC)"),
    ("timm", "lcnet_050", "hardsigmoid gate"),
    ("timm", "seresnet18", "the SE-ResNet SEModule"),
    ("timm", "gcvit_xxtiny", "gelu activation"),
    ("timm", "hgnet_tiny", "HGNet's EseModule"),
    ("timm", "ghostnet_050", "GhostNet's SqueezeExcite"),
    ("timm", "regnety_002", "RegNetY"),
    ("torchvision", "mobilenet_v3_small", "torchvision SqueezeExcitation, hardsigmoid gate"),
    ("torchvision", "efficientnet_b0", "torchvision SqueezeExcitation, silu"),
]


def _backend():
    import se_kernels

    return "cpu" if "cpu" in se_kernels.available_backends() else "reference"


def _check(lib, name, size=32):
    build = zoo.timm_build if lib == "timm" else zoo.torchvision_build
    row = zoo.measure(lib, name, build, size, _backend(), family="-")
    assert "error" not in row, row
    assert row["se_like"] > 0, f"{name}: no SE-like module found"
    assert row["fused"] == row["se_like"], (name, row["reasons"])
    assert row["match"], f"{name}: converted outputs off by {row['rel_err']:.2e}"
    return row


@pytest.mark.parametrize("lib,name,what", SUBSET, ids=[f"{s[0]}-{s[1]}" for s in SUBSET])
def test_zoo_subset_fully_fused(lib, name, what):
    row = _check(lib, name)
    if "folded" in what:
        assert row["folded"] == row["fused"]
    if "hardswish" in what or "gelu" in what:
        assert row["activations"] == [what.split()[0]]


def test_meta_walk_finds_se_families():
    """The registry walk on the meta device, on two families: candidates with SE modules
    found, the smallest chosen."""
    chosen = zoo.timm_candidates(candidates=3, per_family=1,
                                 only=["rexnet_100", "rexnet_150", "resnet18", "seresnet18"])
    assert ("rexnet", "rexnet_100") in chosen and ("resnet", "seresnet18") in chosen


@pytest.mark.slow
def test_zoo_walk_everything_representable_is_fused():
    """The docs/models.md walk: every model whose SE-like modules fused_se can represent has
    them all fused, and every converted model's outputs match."""
    rows = []
    for family, name in zoo.timm_candidates(candidates=6, per_family=2, only=None):
        rows.append(zoo.measure("timm", name, zoo.timm_build, 32, _backend(), family))
    for family, name in zoo.torchvision_candidates(per_family=2, only=None):
        rows.append(zoo.measure("torchvision", name, zoo.torchvision_build, 32, _backend(),
                                family))
    ran = [r for r in rows if "error" not in r]
    assert len(ran) >= 40
    assert all(r["match"] for r in ran), [r["model"] for r in ran if not r["match"]]
    for r in ran:  # every SE-like module accounted for, and the rest not representable
        assert r["fused"] + sum(r["reasons"].values()) == r["se_like"], r
        for reason in r["reasons"]:
            assert any(k in reason for k in ("is not one of", "is not sigmoid", "add_maxpool")), (
                r["model"], reason)

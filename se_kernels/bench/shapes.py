"""The SE blocks' shapes in the paper's networks (224x224 input unless said), and ``--shape``.

Every SE block of a network at one stage has the same (C, H, W, Cr), so a stage is one shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """One SE block shape: x is (N, C, H, W), the bottleneck has Cr channels."""
    name: str            # e.g. "conv2_x"
    family: str          # the preset it comes from, e.g. "se-resnet50", or "custom"
    c: int
    h: int
    w: int
    cr: int
    gate: str = "sigmoid"
    n: int | None = None  # a fixed batch (custom shapes); None: the run's --batch sizes

    @property
    def label(self) -> str:
        return f"{self.name} {self.c}x{self.h}x{self.w}/{self.cr}"


def _stages(family: str, hw: tuple[int, int, int, int], gate: str = "sigmoid") -> list[Shape]:
    # ResNet-style stages: C = 256, 512, 1024, 2048 with r = 16
    return [Shape(f"conv{i + 2}_x", family, c, s, s, c // 16, gate)
            for i, (c, s) in enumerate(zip((256, 512, 1024, 2048), hw))]


PRESETS: dict[str, list[Shape]] = {
    # SE-ResNet-50 (the default): DESIGN.md section 3's table.
    "se-resnet50": _stages("se-resnet50", (56, 28, 14, 7)),
    # SE-ResNeXt-50 (32x4d): its bottlenecks end in the same widths as ResNet-50's, so its SE
    # shapes are SE-ResNet-50's; kept as a name so that runs can say what they measure.
    "se-resnext50": _stages("se-resnext50", (56, 28, 14, 7)),
    # SENet-154 has SE-ResNet-50's widths too; the paper evaluates it on 320x320 crops, where
    # the stages are 80, 40, 20 and 10 pixels wide.
    "senet154": _stages("senet154", (80, 40, 20, 10)),
    # MobileNetV3-Large (torchvision): SE on the expanded depthwise output, Cr =
    # make_divisible(C / 4, 8), hard-sigmoid gate.
    "mobilenetv3": [Shape(name, "mobilenetv3", c, s, s, cr, "hardsigmoid") for name, c, s, cr in (
        ("b4", 72, 28, 24), ("b5", 120, 28, 32), ("b11", 480, 14, 120), ("b12", 672, 14, 168),
        ("b13", 672, 7, 168), ("b14", 960, 7, 240))],
}


def preset_shapes(names: list[str]) -> list[Shape]:
    """The shapes of the named presets ("all": every preset), identical shapes once."""
    if "all" in names:
        names = list(PRESETS)
    out, seen = [], set()
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"unknown shape preset {name!r}; choose from "
                             f"{', '.join(PRESETS)} or all")
        for s in PRESETS[name]:
            key = (s.c, s.h, s.w, s.cr, s.gate)
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def parse_shape(spec: str) -> Shape:
    """``N,C,H,W`` or ``N,C,H,W,Cr`` (Cr defaults to max(1, C // 16))."""
    try:
        parts = [int(p) for p in spec.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (4, 5) or min(parts) < 1:
        raise ValueError(f"--shape wants N,C,H,W or N,C,H,W,Cr with positive integers, got "
                         f"{spec!r}")
    n, c, h, w = parts[:4]
    cr = parts[4] if len(parts) == 5 else max(1, c // 16)
    return Shape(f"{c}x{h}x{w}", "custom", c, h, w, cr, n=n)

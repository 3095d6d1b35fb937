"""Excitation introspection (the paper's Section 7.2): record each SE block's gate vector
``s`` during a forward pass and plot its distributions per class (Figures 6 and 7).

    from se_kernels.introspect import record_excitations, plot_class_means
    with record_excitations(model) as rec:
        model(images)                      # any number of forward passes
    gates = rec.stacked()                  # {"layer1.0.se": (N, C) float32 tensor, ...}
    plot_class_means(gates, labels, "fig6.png")

Recording hooks every ``SqueezeExcitation`` (or any module with its attributes) in the model
for the duration of the ``with`` block only: outside it nothing is attached and the model runs
as fast as ever. The gate is recomputed from the block's input with the reference maths
(``se_kernels.reference``) in float32, under ``torch.no_grad``: the fused kernels return only
``y``, and the extra work is a pooling and two tiny FCs per block.

``examples/plot_excitations.py`` draws both figures from a checkpoint of ``examples/train.py``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from se_kernels.reference import _ACTIVATIONS, _GATES

__all__ = ["excitation", "record_excitations", "ExcitationRecord", "se_blocks", "paper_name",
           "last_block_per_stage", "plot_class_means", "plot_instance_spread",
           "class_specificity"]


def _is_se_block(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("fc1_weight", "fc2_weight", "squeeze", "activation",
                                        "gate")) and m.squeeze in ("avg", "max")


def se_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The model's SE blocks (``SqueezeExcitation`` and look-alikes), by qualified name."""
    return {name: m for name, m in model.named_modules() if _is_se_block(m)}


@torch.no_grad()
def excitation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The gate ``s`` (N, C) that ``block`` applies to ``x`` (N, C, H, W), in float32."""
    with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
            else contextlib.nullcontext():
        xf = x.float()
        z = xf.mean(dim=(2, 3)) if block.squeeze == "avg" else xf.amax(dim=(2, 3))
        w1 = block.fc1_weight.float().reshape(block.fc1_weight.shape[:2])
        w2 = block.fc2_weight.float().reshape(block.fc2_weight.shape[:2])
        b1 = None if block.fc1_bias is None else block.fc1_bias.float()
        b2 = None if block.fc2_bias is None else block.fc2_bias.float()
        h = _ACTIVATIONS[block.activation](F.linear(z, w1, b1))
        return _GATES[block.gate](F.linear(h, w2, b2))


@dataclass
class ExcitationRecord:
    """Gates recorded per block: ``gates[name]`` is a list with one (N, C) tensor per forward
    pass (on the CPU unless recorded with ``to_cpu=False``)."""

    gates: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def stacked(self) -> dict[str, torch.Tensor]:
        """{name: (total N, C)}: every forward pass's gates, concatenated in order."""
        return {k: torch.cat(v) for k, v in self.gates.items() if v}

    def clear(self) -> None:
        for v in self.gates.values():
            v.clear()


@contextlib.contextmanager
def record_excitations(model: nn.Module, *, names: list[str] | None = None,
                       to_cpu: bool = True) -> Iterator[ExcitationRecord]:
    """Records the gate of each SE block (or of the blocks in ``names``) on every forward
    pass inside the ``with`` block; the hooks are removed on exit."""
    blocks = se_blocks(model)
    if names is not None:
        missing = sorted(set(names) - set(blocks))
        if missing:
            raise KeyError(f"record_excitations: no SE block named {missing}; the model has "
                           f"{sorted(blocks)}")
        blocks = {n: blocks[n] for n in names}
    record = ExcitationRecord({n: [] for n in blocks})
    handles = []

    def hook_for(name):
        # A pre-hook: the gate comes from the input before the block runs, because an
        # in-place block (SqueezeExcitation(inplace=True) under no_grad) overwrites it.
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("x")
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                return  # bad input: the block's own forward raises its clear error
            s = excitation(module, x)
            record.gates[name].append(s.cpu() if to_cpu else s)
        return hook

    try:
        for name, block in blocks.items():
            handles.append(block.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        yield record
    finally:
        for h in handles:
            h.remove()


# ---- names and the blocks the paper plots ---------------------------------------------------

_RESNET_NAME = re.compile(r"^layer(\d+)\.(\d+)\.se$")


def paper_name(name: str) -> str:
    """``layer3.5.se`` -> ``SE_4_6`` (the paper's SE_stageID_blockID: stages 2..5 are
    conv2_x..conv5_x); other names are returned unchanged."""
    m = _RESNET_NAME.match(name)
    return f"SE_{int(m[1]) + 1}_{int(m[2]) + 1}" if m else name


def last_block_per_stage(names: list[str]) -> list[str]:
    """The last SE block of each stage ("immediately prior to downsampling", Fig. 6), for
    ResNet-style names; all names otherwise."""
    stages: dict[int, tuple[int, str]] = {}
    for n in names:
        m = _RESNET_NAME.match(n)
        if m is None:
            return list(names)
        stage, block = int(m[1]), int(m[2])
        if stage not in stages or block > stages[stage][0]:
            stages[stage] = (block, n)
    return [stages[k][1] for k in sorted(stages)]


def _channels(c: int, count: int) -> torch.Tensor:
    """``count`` channels evenly spread over ``c`` (all of them if c <= count)."""
    return torch.linspace(0, c - 1, min(c, count)).round().long().unique()


def class_specificity(gates: torch.Tensor, labels: torch.Tensor) -> float:
    """How much the per-class mean gates differ: the std over classes of each channel's
    class mean, averaged over channels, divided by the mean gate. Near 0: class-agnostic."""
    classes = labels.unique()
    means = torch.stack([gates[labels == k].mean(0) for k in classes])  # (K, C)
    return (means.std(0).mean() / gates.mean().clamp_min(1e-12)).item()


# ---- plots ----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path, title: str | None) -> Path:
    """Titles, lays out and writes a figure as a PNG (making its folder); returns its path."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_class_means(gates: dict[str, torch.Tensor], labels: torch.Tensor, out: str | Path, *,
                     blocks: list[str] | None = None, classes: list[int] | None = None,
                     class_names: dict[int, str] | None = None, channels: int = 50,
                     title: str | None = None) -> Path:
    """Figure 6: for each block (default: the last of each stage), the mean gate per class of
    ``channels`` evenly spread channels, one line per class, and the mean over all samples.
    gates: {name: (N, C)}; labels: (N,). Writes a PNG; returns its path."""
    plt = _pyplot()
    blocks = blocks or last_block_per_stage(list(gates))
    classes = classes if classes is not None else labels.unique().tolist()
    names = class_names or {}
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.4), squeeze=False)
    for ax, name in zip(axes[0], blocks):
        g = gates[name].float()
        idx = _channels(g.shape[1], channels)
        for k in classes:
            ax.plot(range(len(idx)), g[labels == k][:, idx].mean(0).numpy(), lw=1,
                    label=names.get(k, str(k)))
        ax.plot(range(len(idx)), g[:, idx].mean(0).numpy(), color="black", lw=2.2,
                label="all")
        ax.set_title(f"{paper_name(name)}  (specificity "
                     f"{class_specificity(g, labels):.3f})", fontsize=9)
        ax.set_xlabel("channel index (sampled)")
        ax.set_ylim(-0.02 if g.min() >= 0 else None, 1.02 if g.max() <= 1 else None)
    axes[0][0].set_ylabel("mean activation")
    axes[0][-1].legend(fontsize=7, ncol=2, loc="best")
    return _save(plt, fig, out, title)


def plot_instance_spread(gates: dict[str, torch.Tensor], labels: torch.Tensor,
                         out: str | Path, *, classes: list[int] | None = None,
                         blocks: list[str] | None = None,
                         class_names: dict[int, str] | None = None, channels: int = 50,
                         title: str | None = None) -> Path:
    """Figure 7: for each of ``classes`` (default: the first two) and each block (default:
    every block), the mean and standard deviation of the gates over the class's instances,
    for ``channels`` evenly spread channels. Writes a PNG; returns its path."""
    plt = _pyplot()
    blocks = blocks or list(gates)
    classes = classes if classes is not None else labels.unique().tolist()[:2]
    names = class_names or {}
    cols = min(4, len(blocks))
    rows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, blocks):
        g = gates[name].float()
        idx = _channels(g.shape[1], channels)
        xs = range(len(idx))
        for k in classes:
            sel = g[labels == k][:, idx]
            mean, std = sel.mean(0).numpy(), sel.std(0, unbiased=False).numpy()
            line, = ax.plot(xs, mean, lw=1, label=names.get(k, str(k)))
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.25)
        ax.set_title(paper_name(name), fontsize=9)
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("activation (mean \u00b1 std)")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out, title)

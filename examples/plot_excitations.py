"""The paper's Figures 6 and 7 (Section 7.2) for a checkpoint of examples/train.py.

    python examples/plot_excitations.py runs/digits/last.safetensors --out runs/digits/excite

Records every SE block's gate on the digits test split (se_kernels.introspect), then writes
OUT_fig6.png (per stage's last block: the mean gate of 50 evenly spread channels for each
class and over all classes) and OUT_fig7.png (every block: mean +- std over the instances of
two classes), and prints each block's class specificity (the spread of the per-class means,
relative to the mean gate: near 0 when the block treats every class alike).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (examples/train.py: data, checkpoints, model construction)

from se_kernels.introspect import (  # noqa: E402
    class_specificity,
    paper_name,
    plot_class_means,
    plot_instance_spread,
    record_excitations,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=None,
                   help="prefix of the PNGs (default: next to the checkpoint)")
    p.add_argument("--classes", type=int, nargs=2, default=(0, 1),
                   help="the two digits of Figure 7")
    p.add_argument("--channels", type=int, default=50)
    args = p.parse_args(argv)

    state, _, meta = train.load_checkpoint(args.checkpoint)
    config = json.loads(meta["config"])
    model = train.build_model(meta["arch"], "auto")
    model.load_state_dict(state)
    model.eval()
    _, _, x_test, y_test, _ = train.load_digits_split(int(meta["image_size"]),
                                                      config.get("seed", 0))
    with torch.no_grad(), record_excitations(model) as rec:
        for chunk in x_test.split(128):
            model(chunk)
    gates = rec.stacked()
    out = args.out or args.checkpoint.with_name("excitations")
    title = f"{meta['arch']}, step {meta['step']}, digits test split ({len(y_test)} images)"
    fig6 = plot_class_means(gates, y_test, f"{out}_fig6.png", channels=args.channels,
                            title=title)
    fig7 = plot_instance_spread(gates, y_test, f"{out}_fig7.png", classes=list(args.classes),
                                channels=args.channels, title=title)
    spec = {paper_name(n): class_specificity(g, y_test) for n, g in gates.items()}
    for name, value in spec.items():
        print(f"{name:10s} class specificity {value:.3f}")
    print(f"wrote {fig6} and {fig7}")
    return {"fig6": fig6, "fig7": fig7, "specificity": spec}


if __name__ == "__main__":
    main(sys.argv[1:])

"""Prints the complexity table of docs/models.md: every network and ablation of the paper,
counted by se_kernels.complexity, beside the paper's figures.

    PYTHONPATH=. python tools/models_table.py > /tmp/table.md

Networks are built on the meta device and counted on fake tensors: the whole table takes a
few seconds and no memory.
"""

import torch

from se_kernels import models
from se_kernels.complexity import complexity_breakdown
from se_kernels.models.paper import FIGURES, UNPRINTED


def fmt_g(macs: int, digits: int) -> str:
    return f"{macs / 1e9:.{digits}f}"


def main() -> None:
    print("| source | network | ours: GMACs | + additions | paper | ours: params | paper "
          "| match |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for fig in FIGURES + UNPRINTED:
        with torch.device("meta"):
            net = models.get_model(fig.model, **fig.kwargs)
        c = complexity_breakdown(net, fig.input_size)
        a = {"macs": c["macs"] + c["additions"]}
        d = fig.gdigits
        match = ""
        if fig.gmacs is not None or fig.mparams is not None:
            match = "yes" if fig.matches(c["macs"], c["params"]) else (
                "with additions" if fig.matches(a["macs"], c["params"]) else "no")
        opts = ", ".join(f"{k}={v}" for k, v in fig.kwargs.items())
        name = f"`{fig.model}`" + (f" ({opts})" if opts else "")
        print(f"| {fig.source} | {fig.label}: {name} | {c['macs']:,} ({fmt_g(c['macs'], d)}) "
              f"| {fmt_g(a['macs'], d)} | {'' if fig.gmacs is None else f'{fig.gmacs:.{d}f}'} "
              f"| {c['params']:,} ({c['params'] / 1e6:.1f}M) "
              f"| {'' if fig.mparams is None else f'{fig.mparams:.1f}M'} | {match} |")


if __name__ == "__main__":
    main()

"""The benchmark suites behind ``se-kernels bench`` (see ``se_kernels/bench/run.py``).

They ship in the wheel: the installed ``se-kernels`` command needs nothing from a checkout.

    run.py         the arguments, the per-device defaults and the run
    op.py          op level: every backend against the eager SE module and torch.compile of it
    model.py       model level: ResNet-50 vs SE-ResNet-50 (reference SE vs fused SE), each SE
                   overhead with a bootstrap confidence interval over interleaved pairs
    complexity.py  params and multiply-adds of the paper's models beside the paper's figures,
                   each network at its own input size
    timing.py      timers (torch.utils.benchmark on CPU, CUDA events on GPU), copy bandwidth
    report.py      provenance, JSON, terminal tables;  plot.py: PNGs from the saved JSON
    config.py, shapes.py, progress.py   the run's settings, shape presets, a progress bar

The repository's ``benchmarks/`` folder keeps the pytest-benchmark micro-benchmarks, the GPU
path scripts and ``results/`` (JSON of GPU runs, with provenance).
"""

"""The benchmark suites behind ``se-kernels bench`` (see ``benchmarks/run.py``).

    op.py          op level: every backend against the eager SE module and torch.compile of it
    model.py       model level: ResNet-50 vs SE-ResNet-50 (reference SE vs fused SE)
    complexity.py  params and multiply-adds of the paper's models beside the paper's table
    timing.py      timers (torch.utils.benchmark on CPU, CUDA events on GPU), copy bandwidth
    report.py      provenance, JSON, terminal tables;  plot.py: PNGs from the saved JSON
    test_bench_cpu.py  pytest-benchmark micro-benchmarks (``pytest benchmarks/``)
    results/       JSON and plots of GPU runs, with provenance
"""

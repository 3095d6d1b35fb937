"""The ``se-kernels`` command (also ``python -m se_kernels``).

    se-kernels bench [--output DIR] [...]     benchmark suites; tables, DIR/bench.json, plots
    se-kernels plot DIR/bench.json            the plots, redrawn from the saved rows

The suites live in ``se_kernels.bench`` (``se_kernels/bench/run.py`` has the arguments and
the run); this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from se_kernels.bench import run as suites

    parser = argparse.ArgumentParser(
        prog="se-kernels", description="Benchmarks of the fused Squeeze-and-Excitation block.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    suites.add_bench_arguments(sub.add_parser("bench", help="run the benchmark suites"))
    suites.add_plot_arguments(sub.add_parser("plot", help="plot a saved bench.json"))
    args = parser.parse_args(argv)
    return suites.bench(args) if args.command == "bench" else suites.plot(args)


if __name__ == "__main__":
    sys.exit(main())

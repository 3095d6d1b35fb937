"""The ``se-kernels`` command (also ``python -m se_kernels``).

    se-kernels bench [--output DIR] [...]     benchmark suites; tables, DIR/bench.json, plots
    se-kernels plot DIR/bench.json            the plots, redrawn from the saved rows

The suites live in the repository's ``benchmarks/`` folder (``benchmarks/run.py`` has the
arguments and the run); this module only finds them and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _suites():
    """``benchmarks.run``, from the checkout se_kernels was loaded from (an editable install
    or PYTHONPATH=the repository root)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks.run")
    except ImportError as e:
        raise SystemExit(f"se-kernels: the benchmark suites (benchmarks/ in the se_kernels "
                         f"repository) cannot be imported from {root}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    suites = _suites()
    parser = argparse.ArgumentParser(
        prog="se-kernels", description="Benchmarks of the fused Squeeze-and-Excitation block.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    suites.add_bench_arguments(sub.add_parser("bench", help="run the benchmark suites"))
    suites.add_plot_arguments(sub.add_parser("plot", help="plot a saved bench.json"))
    args = parser.parse_args(argv)
    return suites.bench(args) if args.command == "bench" else suites.plot(args)


if __name__ == "__main__":
    sys.exit(main())

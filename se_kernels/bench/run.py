"""``se-kernels bench`` and ``se-kernels plot``: arguments, per-device defaults, the run.

se_kernels/cli.py only builds the parser and calls ``add_bench_arguments`` / ``bench`` /
``add_plot_arguments`` / ``plot`` from here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from se_kernels.bench import timing
from se_kernels.bench.config import (BASELINES, LAYOUTS, MODES, SUITES, BenchConfig, canonical_dtype,
                               usable_cpus)
from se_kernels.bench.shapes import PRESETS, parse_shape, preset_shapes

BENCH_DESCRIPTION = """\
Benchmark the fused SE block against the eager SE module (as torchvision/timm write it) and
torch.compile of it, at op level, at model level (ResNet-50 vs SE-ResNet-50) and in
complexity (params, multiply-adds). Prints tables, writes OUTPUT/bench.json (every row, with
provenance) and OUTPUT/bench_bandwidth.png, OUTPUT/bench_model.png.

Defaults without a GPU (a CPU comparison, a few minutes on 2 cores): SE-ResNet-50's four
stage shapes at N = 1 and 8, float32, NCHW and NHWC, forward, 1 and 2 threads, eager /
torch.compile / every CPU backend; ResNet-50 vs SE-ResNet-50 on 1 thread at N = 1
(inference) and N = 4 (training step); complexity of every model. This is issue 5's CPU
comparison; add --pass fwd,fwd+bwd for the backward.
Defaults on a GPU: N = 1 and 256, bfloat16, NCHW and NHWC, forward and forward+backward,
also torch.compile max-autotune (forward); models at N = 64, bfloat16, channels_last; the op
suite starts no new case after 210 s (--op-budget), so that the run stays under 5 minutes.
"""

BENCH_EPILOG = """\
examples:
  se-kernels bench                                   # the default run, results in out/bench
  se-kernels bench --shape 8,64,32,32                # one custom shape (N,C,H,W[,Cr]), op suite
  se-kernels bench --shape 8,64,32,32 --suites op,model   # ... and the model suite too
  se-kernels bench --suites op --shapes all --residual both --pass fwd,fwd+bwd
  se-kernels bench --suites op --impls eager,cpu --threads 2 --cache cold
  se-kernels plot out/bench/bench.json               # redraw the plots from the saved rows
"""


def _list(kind, choices=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        try:
            items = [kind(t) for t in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"{', '.join(map(str, bad))} not in {', '.join(map(str, choices))}")
        return tuple(items)
    return parse


def _shape_arg(text: str):
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = BENCH_DESCRIPTION, BENCH_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--output", "-o", default="out/bench", metavar="DIR",
                   help="folder for bench.json and the plots (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda when a GPU is visible, else cpu (default: %(default)s)")
    p.add_argument("--suites", type=_list(str, SUITES), metavar="LIST",
                   help=f"comma-separated, of {','.join(SUITES)} (default: all; op only when "
                        "--shape or --shapes is given)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="write no PNGs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g = p.add_argument_group("op level")
    g.add_argument("--shapes", type=_list(str, tuple(PRESETS) + ("all",)), metavar="PRESETS",
                   help=f"shape presets: {', '.join(PRESETS)}, all (default: se-resnet50, or "
                        "none when --shape is given)")
    g.add_argument("--shape", type=_shape_arg, action="append", default=[], metavar="N,C,H,W[,Cr]",
                   help="a custom shape (repeatable); Cr defaults to C // 16")
    g.add_argument("--batch", type=_list(int), metavar="LIST",
                   help="batch sizes of the preset shapes (default: 1,8 on CPU; 1,256 on GPU)")
    g.add_argument("--dtype", type=_list(canonical_dtype), metavar="LIST",
                   help="float32, bfloat16, float16, float64 (default: float32 on CPU, "
                        "bfloat16 on GPU)")
    g.add_argument("--layout", type=_list(str, tuple(LAYOUTS)), default=tuple(LAYOUTS),
                   metavar="LIST", help="nchw, nhwc (default: both)")
    g.add_argument("--pass", dest="modes", type=_list(str, MODES), metavar="LIST",
                   help="fwd, fwd+bwd (default: fwd on CPU, both on GPU)")
    g.add_argument("--residual", choices=("no", "yes", "both"), default="no",
                   help="also time the SE-ResNet tail relu(x*s + residual) (default: no)")
    g.add_argument("--threads", type=_list(int), metavar="LIST",
                   help="CPU thread counts, torch.set_num_threads (default: 1,2)")
    g.add_argument("--impls", type=_list(str), metavar="LIST",
                   help=f"implementations: {', '.join(BASELINES)}, reference, cpu, triton, cuda "
                        "(default: the baselines and every backend that runs on the device; "
                        "compile-max-autotune on GPU only, and on the forward pass only)")
    g.add_argument("--cache", choices=("hot", "cold"),
                   help="cold: GPU: L2 flushed before each call; CPU: inputs rotated over "
                        "2x the LLC (<= 1 GiB). hot: the same inputs call after call "
                        "(default: cold on GPU, hot on CPU, where an SE block's input comes "
                        "straight from the conv before it)")
    g.add_argument("--min-run-time", type=float, default=0.2, metavar="S",
                   help="CPU: seconds of timed calls per measurement (default: %(default)s)")
    g.add_argument("--op-budget", type=float, metavar="S",
                   help="stop starting op cases after S seconds, reporting the ones left out "
                        "(default: 210 on GPU, where compiling dominates; none on CPU; 0: none)")
    g = p.add_argument_group("model level")
    g.add_argument("--model-batch", type=_list(int), metavar="INFER[,TRAIN]",
                   help="batch of inference and of the training step; 0 skips one "
                        "(default: 1,4 on CPU; 64,64 on GPU)")
    g.add_argument("--model-image-size", type=int, default=224, metavar="PX",
                   help="input height and width (default: %(default)s)")
    g.add_argument("--model-dtype", type=canonical_dtype, metavar="DTYPE",
                   help="(default: float32 on CPU, bfloat16 on GPU)")
    g.add_argument("--model-layout", choices=tuple(LAYOUTS),
                   help="(default: nchw on CPU, nhwc on GPU)")
    g.add_argument("--model-threads", type=int, metavar="T",
                   help="CPU threads (default: the smallest of --threads, i.e. 1: on a shared "
                        "machine more threads measure the neighbours' load more than the model)")
    g.add_argument("--model-seconds", type=float, metavar="S",
                   help="time budget per model and mode after warm-up: rounds (one step of "
                        "each model) run until every SE overhead's 95%% interval is within "
                        "+-1 point (after 5 rounds) or the budget ends (after 3 rounds) "
                        "(default: 10 on CPU, 2 on GPU)")
    g = p.add_argument_group("complexity")
    g.add_argument("--models", type=_list(str), metavar="LIST",
                   help="models of se_kernels.models.list_models() (default: all)")


def resolve(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration: the arguments, with per-device defaults filled in."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("se-kernels bench: --device cuda but torch sees no CUDA device")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    notes = []
    # shapes are op-level settings: asking for them asks for the op suite (unless --suites)
    suites = tuple(args.suites) if args.suites else (
        ("op",) if args.shape or args.shapes else SUITES)
    shapes = list(preset_shapes(list(args.shapes))) if args.shapes else []
    shapes += args.shape
    if not shapes:
        shapes = preset_shapes(["se-resnet50"])
    threads: tuple[int, ...] = ()
    if not gpu:
        cpus = usable_cpus()
        threads = args.threads or tuple(t for t in (1, 2) if t <= cpus) or (1,)
        if any(t > cpus for t in threads):
            notes.append(f"--threads {max(threads)} exceeds the {cpus} usable CPUs")
    model_batch = args.model_batch or ((64, 64) if gpu else (1, 4))
    if len(model_batch) == 1:
        model_batch = (model_batch[0], model_batch[0])
    return BenchConfig(
        device=device, suites=suites, shapes=tuple(shapes),
        batches=args.batch or ((1, 256) if gpu else (1, 8)),
        dtypes=args.dtype or (("bfloat16",) if gpu else ("float32",)),
        layouts=tuple(args.layout), modes=args.modes or (MODES if gpu else ("fwd",)),
        residual={"no": (False,), "yes": (True,), "both": (False, True)}[args.residual],
        threads=threads, impls=args.impls, cache=args.cache or ("cold" if gpu else "hot"),
        min_run_time=args.min_run_time,
        op_budget=(args.op_budget if args.op_budget is not None else (210.0 if gpu else None))
        or None,
        model_batch_infer=model_batch[0], model_batch_train=model_batch[1],
        model_image_size=args.model_image_size,
        model_dtype=args.model_dtype or ("bfloat16" if gpu else "float32"),
        model_layout=args.model_layout or ("nhwc" if gpu else "nchw"),
        model_threads=None if gpu else (args.model_threads or min(threads)),
        model_seconds=args.model_seconds if args.model_seconds is not None else (
            2.0 if gpu else 10.0),
        complexity_models=args.models, output=args.output, plot=args.plot, notes=tuple(notes))


def estimate_seconds(cfg: BenchConfig, device: torch.device) -> dict[str, float]:
    """Rough seconds each requested suite will take (for the first lines of the output):
    per op case, each implementation's warm-up and timing (torch.compile: its compile); per
    model mode, the warm-up steps and the time budget (an upper bound: rounds stop early once
    the intervals are narrow); per complexity model, a count on the meta device."""
    from se_kernels.bench import op

    gpu = device.type == "cuda"
    out: dict[str, float] = {}
    if "op" in cfg.suites:
        impls = list(cfg.impls) if cfg.impls is not None else op.default_impls(device)
        # calibrated on the recorded CPU runs (benchmarks/results/cpu-xeon-2vcpu-*: 32 cases
        # x 4 implementations in ~70 s); GPU figures are guesses on the safe side
        per_impl = {"compile": 8.0 if gpu else 0.8, "compile-max-autotune": 40.0}
        n_cases = len(op.cases(cfg)) * max(1, len(cfg.threads))
        timed = 0.15 if gpu else cfg.min_run_time * 1.3 + 0.05
        case = sum(timed + per_impl.get(i, 0.1) for i in impls) + 0.2
        est = 1.0 + n_cases * case + (2.0 if gpu else 1.5 * max(1, len(cfg.threads)))
        out["op"] = min(est, cfg.op_budget + 60) if cfg.op_budget else est
    if "model" in cfg.suites:
        modes = [n for n in (cfg.model_batch_infer, cfg.model_batch_train) if n > 0]
        out["model"] = 3 * 3.0 + len(modes) * 3 * (cfg.model_seconds + (1.0 if gpu else 5.0))
    if "complexity" in cfg.suites:
        try:
            from se_kernels import models
            count = len(cfg.complexity_models or models.list_models())
        except ImportError:
            count = 0
        out["complexity"] = 2.0 + 0.4 * count
    return out


def _fmt_duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def announce(cfg: BenchConfig, device: torch.device, out_dir: Path) -> str:
    """The first lines: the suites that run, about how long each takes, and those that do
    not."""
    est = estimate_seconds(cfg, device)
    parts = [f"{name} (~{_fmt_duration(est[name])}{' at most' if name == 'model' else ''})"
             for name in SUITES if name in cfg.suites]
    lines = [f"se-kernels bench: {cfg.device}, suites {', '.join(parts)}; about "
             f"{_fmt_duration(sum(est.values()))} in all; output {out_dir}/"]
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if device.type == "cpu" and load > usable_cpus():
        lines.append(f"se-kernels bench: the machine is busy (load {load:.1f} on "
                     f"{usable_cpus()} CPUs): expect longer, and noisier timings")
    left = [s for s in SUITES if s not in cfg.suites]
    if left:
        lines.append(f"se-kernels bench: not running {', '.join(left)} "
                     f"(--suites {','.join(SUITES)} runs every suite)")
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> int:
    from se_kernels.bench import complexity, model, op, report
    from se_kernels.bench.plot import make_plots

    t_start = time.perf_counter()
    load_start = report.load_average()
    cfg = resolve(args)
    device = torch.device(cfg.device)
    if device.type == "cpu":  # torch.utils.benchmark imports cpp_extension, which warns that
        # a CUDA build of torch finds no CUDA runtime: true and irrelevant on a CPU run
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    progress = not args.quiet
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    default_threads = torch.get_num_threads()
    print(announce(cfg, device, out_dir), file=sys.stderr, flush=True)

    copy_bw: dict = {}
    if "op" in cfg.suites:
        if device.type == "cuda":
            copy_bw["device"] = timing.copy_bandwidth(device)
        else:
            for t in cfg.threads:
                copy_bw[t] = timing.copy_bandwidth(device, threads=t)
    data = {"schema": report.SCHEMA, "provenance": None, "config": cfg.to_json(),
            "op": [], "model": [], "complexity": [], "skipped": [], "elapsed_s": None}
    data["skipped"] += [{"suite": "config", "what": "note", "reason": n} for n in cfg.notes]
    suites = {
        "op": lambda: op.run(cfg, device, copy_bw, progress=progress),
        "model": lambda: model.run(cfg, device, progress=progress),
        "complexity": lambda: complexity.run(cfg.complexity_models, progress=progress),
    }
    for name in SUITES:
        if name not in cfg.suites:
            continue
        t0 = time.perf_counter()
        try:
            rows, skipped = suites[name]()
        except Exception as e:  # one suite failing must not lose the others' rows
            rows, skipped = [], [{"suite": name, "what": f"{name} suite",
                                  "reason": f"{type(e).__name__}: {e}"[:400]}]
        data[name], data["skipped"] = rows, data["skipped"] + skipped
        print(f"se-kernels bench: {name} suite: {len(rows)} rows in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    timer = ("CUDA events per call, median over calls, warm-up excluded" if device.type == "cuda"
             else "torch.utils.benchmark.Timer.blocked_autorange (op), time.perf_counter "
                  "round-robin (model); median, warm-up excluded")
    data["provenance"] = report.provenance(
        device, threads={"default": default_threads, "tested": list(cfg.threads),
                         "model": cfg.model_threads},
        copy_bw=copy_bw, timer=timer,
        load={"start": load_start, "end": report.load_average()},
        cache=("L2 flushed before each call" if cfg.cache == "cold" else "hot")
        if device.type == "cuda" else cfg.cache)
    data["elapsed_s"] = time.perf_counter() - t_start
    json_path = out_dir / "bench.json"
    report.write_json(json_path, data)
    report.print_report(report.read_json(json_path))
    if cfg.plot:
        try:
            for path in make_plots(json_path):
                print(f"wrote {path}", file=sys.stderr)
        except Exception as e:
            print(f"se-kernels bench: plotting failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"wrote {json_path} ({sum(len(data[s]) for s in SUITES)} rows, "
          f"{data['elapsed_s']:.0f} s)", file=sys.stderr)
    requested_rows = [data[s] for s in cfg.suites if s == "op"]
    return 1 if any(not rows for rows in requested_rows) else 0


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Draw bench_bandwidth.png and bench_model.png from a bench.json written by "
                     "`se-kernels bench`.")
    p.add_argument("json", metavar="BENCH_JSON", help="e.g. out/bench/bench.json")
    p.add_argument("--output", "-o", metavar="DIR",
                   help="folder for the PNGs (default: the JSON's folder)")


def plot(args: argparse.Namespace) -> int:
    from se_kernels.bench.plot import make_plots

    written = make_plots(args.json, args.output)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.json}: no op or model rows to plot", file=sys.stderr)
    return 0

#!/usr/bin/env python3
"""How much of the timm and torchvision model zoos ``se_kernels.convert`` fuses, measured.

    python tools/zoo_coverage.py [--lib timm torchvision] [--per-family 2] [--candidates 8]
                                 [--size 64] [--models NAME ...] [--json FILE] [--markdown]

timm: every model family (timm module) whose source can build an SE-like module is walked;
per family up to ``--candidates`` model names (names with "se" first, then the small-looking
ones: pico, nano, tiny, small, _050, b0, 18 ...) are instantiated on the meta device and
counted; of those that contain SE-like modules the ``--per-family`` smallest (by parameters)
are built for real (random weights, BatchNorm statistics and affine parameters randomised so
that SE inputs are not degenerate), in float64, eval mode, at ``--size`` pixels (or the
model's own fixed size), run, converted (backend "cpu" if built, else "reference"), and run
again. torchvision: every classification model is counted on the meta device; the smallest
per family that has SE modules is run the same way.

SE-like: a module whose class is one ``convert`` recognises, or whose class name looks like an
SE block (squeeze-excite, SEModule/SELayer, ESE, EffectiveSE). Reported per model: SE-like
modules, how many were fused, whether the outputs match (float64, relative error <= 1e-9),
and the reasons for the rest (convert's own skip reasons; "not recognised" for SE-like classes
convert does not know). ``--markdown`` prints the table docs/models.md carries.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import re
import sys
import time

import torch
from torch import nn

SE_NAME = re.compile(r"(?i)squeeze_?excit|(?<![a-z])se_?(module|layer)|^ese(module)?$|effectivese")
SMALL_TOKENS = ("pico", "nano", "atto", "femto", "tiny", "small", "mini", "_035", "_050",
                "_075", "lite0", "b0", "_b0", "s0", "t0", "_18", "18", "26", "_100", "400mf",
                "002", "_xs", "_s", "_t")
SOURCE_HINTS = ("SqueezeExcite", "SEModule", "se_layer", "EseModule", "EffectiveSE",
                "get_attn", "create_attn", "se_ratio", "SELayer", "attn_layer")
TOL = 1e-9


def is_se_like(m: nn.Module, recognised: tuple[type, ...]) -> bool:
    return type(m) in recognised or bool(SE_NAME.search(type(m).__name__))


def _recognised() -> tuple[type, ...]:
    from se_kernels.convert import SPECS, _classes

    return tuple(c for s in SPECS for c in _classes(s.path))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (fresh ones leave outputs near 0 and hide
    whole branches; zero-initialised last BNs would zero residual branches), and small random
    values in every parameter that is all zeros or nearly (NFNet's skip-init gains,
    zero-initialised norm scales, layer scales at 1e-6): otherwise the SE modules of such branches cannot change the output and
    "outputs match" would say nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if (p.is_floating_point() and p.numel() and not p.is_meta
                    and p.abs().max() < 1e-4):  # zeros, and layer scales at 1e-5 .. 1e-6
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            dt = m.running_mean.dtype if m.running_mean is not None else torch.float32
            if m.affine:
                m.weight.data = (torch.rand(n, generator=g) + 0.5).to(dt)
                m.bias.data = (torch.randn(n, generator=g) * 0.1).to(dt)
            if m.track_running_stats:
                m.running_mean = (torch.randn(n, generator=g) * 0.1).to(dt)
                m.running_var = (torch.rand(n, generator=g) + 0.5).to(dt)
    return model


def _smallness(name: str) -> tuple:
    se_first = 0 if re.search(r"(^|_)(legacy_)?(se|ese)", name) or "se" in name.split("_")[0] \
        else 1
    small = min((i for i, t in enumerate(SMALL_TOKENS) if t in name), default=len(SMALL_TOKENS))
    return (se_first, small, len(name), name)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count(model: nn.Module, recognised) -> dict[str, str]:
    """{qualified name: class name} of the SE-like modules (not those nested in another)."""
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if is_se_like(m, recognised) and not any(name.startswith(p + ".") for p in out):
            out[name] = type(m).__name__
    return out


def _input_size(model: nn.Module, size: int, cfg_size) -> tuple[int, int, int]:
    return (3, size, size) if cfg_size is None else tuple(cfg_size)


def measure(lib: str, name: str, build, size: int, backend: str, family: str) -> dict:
    """Builds the model for real, runs it, converts it, runs it again; one table row."""
    import se_kernels

    row = {"lib": lib, "family": family, "model": name}
    t0 = time.time()
    torch.manual_seed(0)
    try:
        model, fixed = build(name, size)
    except Exception as e:  # noqa: BLE001 - reported, the walk goes on
        row["error"] = f"build: {type(e).__name__}: {e}"[:200]
        return row
    model = randomize(model).eval().double()
    recognised = _recognised()
    se = _count(model, recognised)
    row["params"] = _params(model)
    before = None
    shapes = [fixed or (3, size, size), (3, 2 * size, 2 * size), (3, 4 * size, 4 * size)]
    own = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if own and not fixed:
        shapes.append(tuple(own))  # the model's own size (e.g. 256 for HaloNet's blocks)
    for shape in shapes:
        row["input"] = list(shape)  # some models need a larger or specific size: retried
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
        try:
            with torch.no_grad():
                before = model(x)
            break
        except Exception as e:  # noqa: BLE001
            row["error"] = f"forward: {type(e).__name__}: {e}"[:200]
            if fixed:
                break
    if before is None:
        return row
    row.pop("error", None)
    se_kernels.convert(model, backend=backend)
    rep = model.se_conversion
    fused = {r.name for r in rep.replaced}
    reasons: dict[str, int] = {}
    for s in rep.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    seen = fused | {s.name for s in rep.skipped}
    for n, cls in se.items():
        if n not in seen and not any(n.startswith(f + ".") for f in seen):
            why = f"class {cls} not recognised by convert"
            reasons[why] = reasons.get(why, 0) + 1
    with torch.no_grad():
        after = model(x)
    if isinstance(before, (tuple, list)):
        before, after = before[0], after[0]
    err = ((after - before).norm() / before.norm().clamp_min(1e-300)).item()
    row.update(se_like=len(se), fused=len(fused), rel_err=err, match=bool(err <= TOL),
               folded=sum(r.folded_norm is not None for r in rep.replaced),
               activations=sorted({r.activation for r in rep.replaced}),
               gates=sorted({r.gate for r in rep.replaced}), reasons=reasons,
               seconds=round(time.time() - t0, 1))
    return row


# ---- timm -----------------------------------------------------------------------------------

def timm_candidates(candidates: int, per_family: int, only: list[str] | None) -> list[tuple]:
    return list(iter_timm_candidates(candidates, per_family, only))


def iter_timm_candidates(candidates: int, per_family: int, only: list[str] | None):
    """Yields (family, model) as each family is scanned."""
    import importlib

    import timm

    recognised_cache = None
    for module in sorted(timm.list_modules()):
        names = sorted(n for n in timm.list_models(module=module))
        if only is not None:
            names = [n for n in names if n in only]
            if not names:
                continue
        else:
            try:
                src = inspect.getsource(importlib.import_module(f"timm.models.{module}"))
            except (OSError, ImportError):
                continue
            if not any(h in src for h in SOURCE_HINTS):
                continue
        found = []
        for name in sorted(names, key=_smallness)[:candidates]:
            try:
                with torch.device("meta"):
                    m = timm.create_model(name)
            except Exception:  # noqa: BLE001 - a model that does not build is skipped
                continue
            recognised_cache = recognised_cache or _recognised()
            n_se = len(_count(m, recognised_cache))
            if n_se:
                found.append((_params(m), name))
        print(f"  timm {module}: {len(found)} of {min(len(names), candidates)} candidates with "
              f"SE-like modules -> {[n for _, n in sorted(found)[:per_family]]}",
              file=sys.stderr, flush=True)
        for _, name in sorted(found)[:per_family]:
            yield module, name


def timm_build(name: str, size: int):
    import timm

    cfg = timm.get_pretrained_cfg(name)
    fixed = getattr(cfg, "fixed_input_size", False) if cfg is not None else False
    if fixed:
        try:  # transformers with a fixed grid take img_size
            return timm.create_model(name, img_size=size), None
        except Exception:  # noqa: BLE001
            return timm.create_model(name), tuple(cfg.input_size)
    return timm.create_model(name), None


# ---- torchvision ----------------------------------------------------------------------------

@contextlib.contextmanager
def _params_on_meta():
    """Parameters and buffers moved to the meta device as modules register them: for models
    whose constructor computes with tensors (RegNet's widths), which fail under
    ``torch.device("meta")``; the empty CPU tensors are never touched."""
    reg_p, reg_b = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(self, name, param):
        reg_p(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), param.requires_grad)

    def register_buffer(self, name, tensor, persistent=True):
        reg_b(self, name, tensor if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = reg_p, reg_b


def torchvision_candidates(per_family: int, only: list[str] | None) -> list[tuple]:
    import torchvision

    recognised = None
    by_family: dict[str, list] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        if only is not None and name not in only:
            continue
        try:
            with torch.device("meta"):
                m = torchvision.models.get_model(name)
        except Exception:  # noqa: BLE001 - an init that reads tensor data
            try:
                with _params_on_meta():
                    m = torchvision.models.get_model(name)
            except Exception:  # noqa: BLE001
                continue
        recognised = recognised or _recognised()
        if _count(m, recognised):
            family = re.sub(r"(_b\d|_[sml]|_small|_large|_[xy]_.*|_t)$", "", name)
            by_family.setdefault(family, []).append((_params(m), name))
    return [(f, n) for f, v in sorted(by_family.items()) for _, n in sorted(v)[:per_family]]


def torchvision_build(name: str, size: int):
    import torchvision

    model = torchvision.models.get_model(name)
    return model, ((3, 224, 224) if name.startswith("maxvit") else None)


# ---- the report -----------------------------------------------------------------------------

def markdown(rows: list[dict]) -> str:
    lines = ["| library | family | model | input | SE-like | fused | outputs match (rel. err.) "
             "| activations / gates | left alone (why) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['lib']} | {r['family']} | {r['model']} | | | | | | "
                         f"not run: {r['error']} |")
            continue
        why = "; ".join(f"{n} x {k}" for k, n in r["reasons"].items()) or ""
        acts = "/".join(r["activations"]) + (" + " + "/".join(r["gates"]) if r["gates"] else "")
        if r["folded"]:
            acts += f" (BN folded x{r['folded']})"
        lines.append(f"| {r['lib']} | {r['family']} | {r['model']} | {r['input'][1]} | "
                     f"{r['se_like']} | {r['fused']} | {'yes' if r['match'] else 'NO'} "
                     f"({r['rel_err']:.0e}) | {acts} | {why} |")
    ok = [r for r in rows if "error" not in r]
    total = sum(r["se_like"] for r in ok)
    fused = sum(r["fused"] for r in ok)
    lines.append("")
    lines.append(f"{len(ok)} models run ({len({(r['lib'], r['family']) for r in ok})} families): "
                 f"{fused} of {total} SE-like modules fused "
                 f"({100 * fused / max(total, 1):.1f}%); outputs match in "
                 f"{sum(r['match'] for r in ok)} of {len(ok)}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", nargs="+", default=["timm", "torchvision"],
                   choices=["timm", "torchvision"])
    p.add_argument("--per-family", type=int, default=2)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--models", nargs="+", help="only these model names")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--markdown", action="store_true", help="print the docs/models.md table")
    p.add_argument("--from-json", help="only print the table of an earlier --json file")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f)["rows"]))
        return 0

    import se_kernels

    backend = "cpu" if "cpu" in se_kernels.available_backends() else "reference"
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    rows = []
    for lib in args.lib:
        if lib == "timm":
            chosen, build = iter_timm_candidates(args.candidates, args.per_family,
                                                 args.models), timm_build
        else:
            chosen, build = torchvision_candidates(args.per_family, args.models), \
                torchvision_build
        for family, name in chosen:
            row = measure(lib, name, build, args.size, backend, family)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.json:  # after every row: a long walk's partial results survive
                with open(args.json, "w") as f:
                    json.dump({"backend": backend, "size": args.size, "rows": rows}, f, indent=1)
    if args.markdown:
        print(markdown(rows))
    bad = [r for r in rows if "error" not in r and not r["match"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

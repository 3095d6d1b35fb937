#!/usr/bin/env python3
"""Compile every Triton kernel variant the launch heuristic produces, for a GPU target,
without a GPU: the checks the interpreter (TRITON_INTERPRET=1) cannot make.

    python tools/compile_triton_kernels.py [--arch 90 80] [--set smoke|plans|tests|all|first]
                                           [--quick]
                                           [--json FILE] [--jobs N]

For each case (shape, dtype, layout, options, plan) the real launch code of
se_kernels/triton/ops.py runs on meta tensors with the launches recorded instead of made
(wrap_triton, the device's SM count and the launch guard are patched in that module). Every
distinct (kernel, signature, constexprs, num_warps) is then compiled with
triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) -- type errors,
unsupported ops, layout/broadcast errors of the real compiler -- and ptxas -v reports
registers and spills; the launch metadata gives the dynamic shared memory. Needs Triton with
its CUDA backend and its bundled ptxas (or TRITON_PTXAS_PATH); no driver, no GPU.

Sets: "smoke" = a quick subset (tests/test_triton_compile.py runs it); "wide" = the fp64/fp32
plans nearest the shared-memory limit (tests/test_triton_compile.py compiles them for sm_80);
"flat" = the NCHW conv4_x/conv5_x plans (flat tiles; bf16, fp32);
"plans" = the
heuristic's own plans for the SE-ResNet-50 stages at N in {1, 8, 64, 256}, both layouts, fp32/bf16/fp16/fp64, every option combination on one shape per path
(and the heaviest options on every plan); "tests" = the plans tests/test_triton.py makes on
a CUDA device (forced paths included); "all" = both. Exit status 1 if any variant fails to
compile, needs more shared memory than the arch has, or spills more than --max-spill bytes.

On a GPU machine, running it first with --set tests --arch <the GPU's> --jobs <cores> also
fills Triton's on-disk cache with the very kernels the test suite launches (the cache keys
are the ones a launch computes), so that pytest does not spend ~1 s per variant compiling
them one at a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)   # real JITFunctions, not interpreted ones
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import triton  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
SMS = {90: 132, 80: 108}               # H100 SXM, A100 SXM
SMEM = {90: 232448, 80: 166912}        # max dynamic shared memory per block (bytes)
SE_RESNET50 = [(256, 56, 56, 16), (512, 28, 28, 32), (1024, 14, 14, 64), (2048, 7, 7, 128)]
HEAVY = (1, 1, 2, True, True)          # max, silu, tanh, bias, residual
ALL_OPTIONS = list(itertools.product((0, 1), range(6), (0, 1, 2, 3), (False, True),
                                     (False, True)))  # activations: relu .. gelu_tanh


# ---- recording the launches ---------------------------------------------------------------

def _record(case, arch):
    """The launches (kernel, grid, args, kwargs) ops.py makes for one case, on meta tensors."""
    from se_kernels.triton import config, ops

    n, c, h, w, cr, dt, cl, (squeeze, act, gate, bias, res), forced = case
    dtype = DTYPES[dt]
    dev = config.gpu_device(SMS[arch])
    launches = []

    class Rec:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.kernel, tuple(grid), args, kwargs))
            return launch

    saved = ops.wrap_triton, ops.device_of, ops._launches
    ops.wrap_triton, ops.device_of, ops._launches = Rec, (lambda x: dev), (lambda x: True)
    try:
        fmt = torch.channels_last if cl else torch.contiguous_format
        meta = dict(device="meta", dtype=dtype)
        x = torch.empty(n, c, h, w, **meta).contiguous(memory_format=fmt)
        w1, w2 = torch.empty(cr, c, **meta), torch.empty(c, cr, **meta)
        b1 = torch.empty(cr, **meta) if bias else None
        b2 = torch.empty(c, **meta) if bias else None
        r = torch.empty_like(x) if res else None
        with config.forced(**forced):
            y, z, hpre, gpre = ops.triton_se_forward._init_fn(x, w1, w2, b1, b2, r, squeeze,
                                                              act, gate)
            ops.triton_se_backward._init_fn(torch.empty_like(y), x, w1, w2,
                                            y if res else None, z, hpre, gpre, squeeze, act,
                                            gate)
    finally:
        ops.wrap_triton, ops.device_of, ops._launches = saved
    return launches


def _variant(kernel, grid, args, kwargs):
    """(kernel name, signature, constexprs, attrs, num_warps, grid) as Triton's launcher
    would specialise them (native_specialize_impl: pointers and ints divisible by 16, ints
    equal to 1 as constexprs)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    names = kernel.arg_names
    sig, cons, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in kwargs:
            sig[name] = "constexpr"
            cons[name] = kwargs[name]
            continue
        ty, attr = native_specialize_impl(BaseBackend, args[i], False, True, True)[:2]
        sig[name] = ty
        if ty == "constexpr":
            cons[name] = args[i]
        elif isinstance(attr, str):  # as JITFunction._pack_args: "" -> [], "D" -> divisibility
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    assert len(args) + len(kwargs) == len(names), (kernel.__name__, len(args), kwargs)
    return kernel.__name__, sig, cons, attrs, num_warps, grid


# ---- compiling ----------------------------------------------------------------------------

_LD = re.compile(r"^\s*(?:@%p\d+\s+)?ld\.global\S*?(?:\.v(\d))?\.[bsuf](\d+)\s")
_ST = re.compile(r"^\s*(?:@%p\d+\s+)?st\.global\S*?(?:\.v(\d))?\.[bsuf](\d+)\s")
_STAGES_ATTR = re.compile(r"tt\.num_stages = (\d+)")
_CP = re.compile(r"^\s*(?:@%p\d+\s+)?cp\.async\.c[ag]\.shared\.global[^;]*?,\s*(0x[0-9a-fA-F]+|\d+)\s*(?:,|;)")


def ptx_stats(ptx: str) -> dict:
    """Static memory-instruction counts of a kernel's PTX: cp.async copies (the software
    pipeline's global -> shared loads) by bytes, and ld.global / st.global by access width in
    bytes (vector count x element bits / 8; 16 = a 128-bit vector access). Static counts,
    not executed ones: a loop body counts once."""
    cp, ld, st = {}, {}, {}
    for line in ptx.splitlines():
        m = _CP.match(line)
        if m:
            size = int(m.group(1), 0)
            cp[size] = cp.get(size, 0) + 1
            continue
        for pat, d in ((_LD, ld), (_ST, st)):
            m = pat.match(line)
            if m:
                width = int(m.group(1) or 1) * int(m.group(2)) // 8
                d[width] = d.get(width, 0) + 1
    return dict(cp_async=sum(cp.values()), cp_async_bytes=cp, ld_global=ld, st_global=st)


def _widths(d: dict) -> str:
    """{16: 3, 2: 5} -> '16B:3 2B:5' (widest first)."""
    return " ".join(f"{w}B:{n}" for w, n in sorted(d.items(), reverse=True)) or "-"

def _ptxas():
    p = os.environ.get("TRITON_PTXAS_PATH")
    if p:
        return p
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


def _compile(job):
    """Compiles one variant; returns a result dict (never raises)."""
    name, sig, cons, attrs, num_warps, arch = job
    from se_kernels.triton import kernels
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(kernels, name)
    out = dict(kernel=name, arch=arch, num_warps=num_warps,
               constexprs={k: v for k, v in cons.items()},
               types={k: v for k, v in sig.items() if v.startswith("*")})
    t0 = time.time()
    try:
        cc = triton.compile(ASTSource(fn, sig, cons, attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    except Exception as e:  # noqa: BLE001 - the report is the point
        out.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], secs=time.time() - t0)
        return out
    out["secs"] = round(time.time() - t0, 2)
    out["shared"] = cc.metadata.shared
    out.update(ptx_stats(cc.asm["ptx"]))
    # the pipelining depth each loop asks for (tl.range num_stages), from the TTIR
    out["loop_stages"] = sorted(int(v) for v in _STAGES_ATTR.findall(cc.asm["ttir"]))
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(cc.asm["ptx"])
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        res = subprocess.run([_ptxas(), "-v", f"--gpu-name={gpu}", str(ptx), "-o",
                              str(Path(d) / "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    out.update(ok=res.returncode == 0, regs=int(regs.group(1)) if regs else None,
               spill_stores=int(spill.group(1)) if spill else None,
               spill_loads=int(spill.group(2)) if spill else None,
               stack=int(stack.group(1)) if stack else None)
    if res.returncode:
        out["error"] = text[-2000:]
    return out


# ---- the cases ----------------------------------------------------------------------------

def plan_cases(quick: bool):
    dts = ["bf16", "fp32"] if quick else list(DTYPES)
    ns = [1, 256] if quick else [1, 8, 64, 256]
    for (c, h, w, cr), n, dt, cl in itertools.product(SE_RESNET50, ns, dts, (False, True)):
        yield (n, c, h, w, cr, dt, cl, HEAVY, {})
        yield (n, c, h, w, cr, dt, cl, (0, 0, 0, False, False), {})
    # every option combination: one split-path shape and one fused-path shape
    for opts, dt in itertools.product(ALL_OPTIONS, dts):
        yield (1, 512, 28, 28, 32, dt, True, opts, {})
        yield (256, 256, 56, 56, 16, dt, False, opts, {})


def smoke_cases():
    """A quick subset for CI: the heuristic's plans of the four stages at N = 1 (split) and
    256 (fused; split for conv5) with the heaviest options, and the tests' forced paths."""
    import test_triton as T

    for (c, h, w, cr), n in itertools.product(SE_RESNET50, (1, 256)):
        yield (n, c, h, w, cr, "bf16", True, HEAVY, {})
    yield from flat_cases(("bf16",))
    yield (256, 256, 56, 56, 16, "fp32", False, HEAVY, {})
    yield (1, 1024, 14, 14, 64, "fp64", False, HEAVY, {})
    # pixel splits (issue 13, item 4): the heuristic splits the forward (mean) and the
    # backward at N = 1, 512 x 512 (NHWC with C = 16: a channel count that is no multiple of
    # 16 gives the compiler no alignment, so no vector loads, with or without splits)
    yield (1, 8, 512, 512, 1, "bf16", False, (0,) + HEAVY[1:], {})
    yield (1, 16, 512, 512, 1, "bf16", True, (0,) + HEAVY[1:], {})
    # fp64 / fp32 pixel-split plans (review 13b #3: fp64 SB and BC x BHW tiles spilled)
    yield (1, 8, 4096, 4096, 1, "fp64", True, (0,) + HEAVY[1:], {})
    yield (1, 8, 512, 512, 1, "fp32", False, (0,) + HEAVY[1:], {})
    for path in T.PATHS.values():
        yield (8, 100, 7, 7, 7, "fp32", False, HEAVY, path)


def flat_cases(dts=("bf16", "fp32")):
    """The NCHW stages where one pixel tile covers H*W (conv4_x, conv5_x: flat tiles, config
    rule 6) at N = 1 and 256, heaviest options: their streaming kernels must issue 16-byte
    cp.async (tests/test_triton_compile.py, sm_90 in the smoke set and sm_80 here)."""
    for (c, h, w, cr), n, dt in itertools.product(SE_RESNET50[2:], (1, 256), dts):
        yield (n, c, h, w, cr, dt, False, HEAVY, {})
    # channel counts that are no multiple of 16 (review 13a #1/#2: there only the kernels'
    # tl.multiple_of hints give vector loads): C = 100 (FLAT = 4: 8-byte copies) and
    # MobileNetV3's C = 72 at 7 x 7
    if "bf16" in dts:
        yield (8, 100, 7, 7, 25, "bf16", False, HEAVY, {})
        yield (8, 72, 7, 7, 18, "bf16", False, HEAVY, {})


def wide_cases():
    """The plans with the widest elements (fp64, fp32) at the heaviest options: the ones whose
    pipeline buffers come nearest an A100's 163 KB of shared memory (compile for --arch 80)."""
    yield (1, 1024, 14, 14, 64, "fp64", False, HEAVY, {})
    yield (2, 256, 56, 56, 16, "fp64", True, HEAVY, {})
    yield (256, 256, 56, 56, 16, "fp32", False, HEAVY, {})
    yield (256, 2048, 7, 7, 128, "fp32", True, HEAVY, {})


def test_cases():
    """The Triton-kernel launches of tests/test_triton.py on a CUDA device."""
    import test_triton as T
    from helpers import option_matrix

    from se_kernels._options import ACTIVATIONS, GATES, SQUEEZES

    opt_codes = lambda o: (SQUEEZES[o[0]], ACTIVATIONS[o[1]], GATES[o[2]],  # noqa: E731
                           o[3], o[4])
    options = option_matrix()
    for i, opts in enumerate(options):
        n, c, (h, w), layout, path = T.pairwise_case(i)
        for dt in ("fp32", "bf16") + (("fp16", "fp64") if (i, opts) in T.SUBSET else ()):
            yield (n, c, h, w, T.CS[c], dt, layout == "channels_last", opt_codes(opts),
                   T.PATHS[path])
    for path, cl in itertools.product(T.PATHS.values(), (False, True)):
        for sq in (0, 1):                                    # ties, NaN, odd sizes, opcheck
            yield (1, 1, 2, 2, 1, "fp32", False, (sq, 0, 0, False, False), path)
            yield (2, 6, 3, 5, 2, "fp32", cl, (sq, 1, 0, True, sq == 0), path)
            yield (2, 1, 1, 1, 1, "fp32", False, (sq, 1, 1, True, True), path)
            yield (2, 5, 1, 31, 1, "fp32", False, (sq, 1, 1, True, True), path)
        yield (8, 64, 7, 7, 4, "fp32", False, (0, 0, 0, True, True), path)
        yield (2, 16, 9, 9, 4, "fp32", False, (0, 0, 0, True, True), path)
    for (c, hw, cr), (n, dt), cl in itertools.product(
            T.SE_RESNET50, ((1, "fp32"), (1, "bf16"), (256, "bf16")), (False, True)):
        side = int(hw ** 0.5)
        yield (n, c, side, side, cr, dt, cl, (0, 0, 0, True, True), {})
    for shape, path, sq in itertools.product(
            [(2, 64, 112, 112, 4), (3, 37, 9, 11, 5), (64, 3, 7, 7, 1), (5, 2048, 1, 1, 128),
             (1, 130, 3, 3, 9)], T.PATHS.values(), (0, 1)):
        yield (*shape, "bf16", True, (sq, 1, 2, True, True), path)


PREDICTED_KERNELS = ("se_fwd_fused_kernel", "se_fwd_pool_kernel", "se_fwd_excite_kernel",
                     "se_bwd_reduce_kernel", "se_bwd_finish_kernel")


def prediction_report(results):
    """The rows tools/predict_triton.py reads for the programs resident per SM: registers,
    dynamic shared memory and warps of the streaming kernels of the bf16 heuristic plans
    (not the tests' forced ones), one row per (kernel, case)."""
    arch = sorted({r["arch"] for r in results})
    rows = [dict(kernel=r["kernel"], N=c[0], C=c[1], HW=c[2] * c[3],
                 layout="nhwc" if c[6] else "nchw", options=list(c[7]), regs=r["regs"],
                 shared=r["shared"], num_warps=r["num_warps"])
            for r in results for c in [r["case"]]
            if r["ok"] and c[5] == "bf16" and not c[8] and r["kernel"] in PREDICTED_KERNELS]
    rows.sort(key=lambda d: (d["layout"], d["C"], d["HW"], d["N"], d["kernel"]))
    return {"note": f"tools/compile_triton_kernels.py --set smoke --arch "
                    f"{' '.join(map(str, arch))} --prediction-report, bf16 heuristic plans "
                    "(heaviest options: max squeeze, silu, tanh, bias, residual; upper bounds "
                    "for the predictions' avg squeeze without residual): registers, dynamic "
                    "shared memory and warps per streaming kernel, read by "
                    "tools/predict_triton.py for the programs resident per SM",
            "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--set", choices=("smoke", "plans", "tests", "all", "first", "wide",
                                      "flat"),
                    default="plans", help="first: the launches of the first GPU call's smoke and "
                    "stress selections and probe (tests/test_gpu_smoke.py)")
    ap.add_argument("--quick", action="store_true", help="bf16/fp32 and N in {1, 256} only")
    ap.add_argument("--json", help="write every result to this file")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--list", action="store_true", help="count the variants, compile nothing")
    ap.add_argument("--max-spill", type=int, default=1024,
                    help="fail if a variant spills more bytes than this (default 1024)")
    ap.add_argument("--prediction-report", metavar="FILE",
                    help="write the registers / shared memory of the bf16 heuristic plans' "
                    "streaming kernels to FILE, as tools/predict_triton.py reads them "
                    "(benchmarks/predictions/triton_compile_sm90.json from --set smoke "
                    "--arch 90)")
    a = ap.parse_args()

    jobs, seen, cases_by_variant = [], {}, {}
    for arch in a.arch:
        cases = list(smoke_cases()) if a.set == "smoke" else []
        cases += list(wide_cases()) if a.set == "wide" else []
        cases += list(flat_cases()) if a.set == "flat" else []
        if a.set == "first":
            import test_gpu_smoke
            cases = list(test_gpu_smoke.triton_compile_cases())
        if a.set in ("plans", "all"):
            cases += list(plan_cases(a.quick))
        if a.set in ("tests", "all"):
            cases += list(test_cases())
        for case in cases:
            for launch in _record(case, arch):
                name, sig, cons, attrs, warps, grid = _variant(*launch)
                assert all(g <= 2**31 - 1 for g in grid[:1]) and all(
                    g <= 65535 for g in grid[1:]), (name, grid, case)
                key = (arch, name, json.dumps(sig), json.dumps(cons, default=str), warps)
                if key not in seen:
                    seen[key] = len(jobs)
                    jobs.append((name, sig, cons, attrs, warps, arch))
                    cases_by_variant[len(jobs) - 1] = case
    print(f"{len(jobs)} distinct kernel variants ({', '.join(f'sm_{x}' for x in a.arch)})",
          flush=True)
    if a.list:
        return 0

    t0 = time.time()
    results = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for i, r in enumerate(pool.map(_compile, jobs, chunksize=1)):
            r["case"] = cases_by_variant[i]
            results.append(r)
    wall = time.time() - t0

    bad = spills = big_spills = 0
    hdr = (f"{'arch':>5} {'kernel':<22} {'dt':<5} {'L':<1} {'G':>2} {'BC':>4} {'BHW':>5} "
           f"{'BJ':>3} {'BK':>4} {'BJ2':>4} {'BCW':>4} {'BN':>3} {'BJW':>3} {'w':>2} "
           f"{'opts':<11} {'regs':>4} {'spill':>9} {'smem':>6} {'cp.async':>8} "
           f"{'ld.global by width':<22} {'s':>5}")
    print(hdr)
    for r in sorted(results, key=lambda r: (r["arch"], r["kernel"], -(r.get("regs") or 999))):
        k = r["constexprs"]
        dt = r["types"].get("x_ptr", r["types"].get("dy_ptr", "?")).lstrip("*")
        opts = "".join(str(int(k.get(o, 0))) for o in ("SQUEEZE", "ACT", "GATE", "HAS_B1",
                                                     "HAS_B2", "HAS_RES", "WRITE_DX"))
        if not r["ok"]:
            bad += 1
            print(f"sm_{r['arch']} {r['kernel']:<22} {dt:<5} FAILED: {r['error'][:300]}")
            continue
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        over = r["shared"] > SMEM[r["arch"]]
        bad += bool(over)
        spills += bool(r["spill_stores"] or r["spill_loads"])
        big_spills += (r["spill_stores"] or 0) > a.max_spill
        print(f"sm_{r['arch']} {r['kernel']:<22} {dt:<5} {int(k['CHANNELS_LAST']) if 'CHANNELS_LAST' in k else '-'} "
              f"{k.get('G', '-'):>2} {k.get('BC', '-'):>4} {k.get('BHW', '-'):>5} "
              f"{k.get('BJ', '-'):>3} {k.get('BK', '-'):>4} {k.get('BJ2', '-'):>4} "
              f"{k.get('BCW', '-'):>4} {k.get('BN', '-'):>3} {k.get('BJW', '-'):>3} "
              f"{r['num_warps']:>2} {opts:<11} {r['regs']:>4} {spill:>9} {r['shared']:>6} "
              f"{_widths(r['cp_async_bytes']) if r['cp_async'] else '0':>8} "
              f"{_widths(r['ld_global']):<22} {r['secs']:>5}{'  SMEM>MAX' if over else ''}")
    tot = sum(r.get("secs", 0) for r in results)
    print(f"{len(results)} variants: {bad} failed to compile or need too much shared memory; "
          f"{spills} spill registers, {big_spills} more than {a.max_spill} bytes; compile time "
          f"{tot:.0f} s summed ({wall:.0f} s wall, {a.jobs} jobs); triton {triton.__version__}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    if a.prediction_report:
        Path(a.prediction_report).write_text(json.dumps(prediction_report(results), indent=1)
                                             + "\n")
    return 1 if bad or big_spills else 0


if __name__ == "__main__":
    sys.exit(main())

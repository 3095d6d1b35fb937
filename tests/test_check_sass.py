"""tools/check_sass.py on made-up SASS (no GPU, no CUDA build needed): the read-only 16-byte
loads of the NCHW span reduce (issue 12 item 3) are counted, and a half/bf16 NCHW persistent
kernel without them fails the check."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BWD_HALF_NCHW = ("_ZN10se_kernels4cuda6detail24se_bwd_persistent_kernelI6__halfLb0ELb1ELb1EEEv"
                 "NS0_12BackwardArgsENS0_16PersistentConfigE")
BWD_HALF_NHWC = ("_ZN10se_kernels4cuda6detail24se_bwd_persistent_kernelI6__halfLb1ELb1ELb1EEEv"
                 "NS0_12BackwardArgsENS0_16PersistentConfigE")


@pytest.fixture
def cs():
    spec = importlib.util.spec_from_file_location("check_sass", ROOT / "tools" / "check_sass.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sass(func: str, loads: list[str]) -> str:
    body = "".join(f"        /*{16 * i:04x}*/                   {op} R4, desc[UR4][R2.64] ;"
                   f"   /* 0x000fe2000c1e1d00 */\n" for i, op in enumerate(loads))
    return f"\n\tcode for sm_90a\n\t\tFunction : {func}\n{body}"


def run_check(cs, text, tmp_path, monkeypatch, capsys):
    """check_sass.main() on a fake cuobjdump that prints `text`: (exit code, stdout)."""
    dump = tmp_path / "sass.txt"
    dump.write_text(text)
    fake = tmp_path / "cuobjdump"
    fake.write_text(f"#!/bin/sh\ncat {dump}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cs, "find_cuobjdump", lambda: str(fake))
    monkeypatch.setattr("sys.argv", ["check_sass.py", str(tmp_path / "lib.so")])
    rc = cs.main()
    return rc, capsys.readouterr().out


def test_parse_counts_read_only_vectors(cs):
    f = cs.parse_sass(sass("k", ["LDG.E.128", "LDG.E.128.CONSTANT", "LDG.E.U16.CONSTANT",
                                 "LDG.E.U16", "LDGSTS.E.BYPASS.128"]))["k"]
    assert f["LDG128"] == 2 and f["RO128"] == 1 and f["LDG16"] == 2 and f["LDGSTS128"] == 1


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")
@pytest.mark.parametrize("ro", [False, True])
def test_nchw_span_reduce_must_be_vectorised(cs, ro, tmp_path, monkeypatch, capsys):
    text = sass(BWD_HALF_NCHW, ["LDG.E.128", "LDG.E.U16", "LDGSTS.E.BYPASS.128"] +
                (["LDG.E.128.CONSTANT"] if ro else []))
    # NHWC: no span reduce, no requirement
    text += sass(BWD_HALF_NHWC, ["LDG.E.128", "LDGSTS.E.BYPASS.128"])
    rc, out = run_check(cs, text, tmp_path, monkeypatch, capsys)
    assert rc == (0 if ro else 1), out
    assert ("span reduce is not 16-byte" in out) == (not ro)


BWD_DOUBLE_NHWC = ("_ZN10se_kernels4cuda6detail24se_bwd_persistent_kernelIdLb1ELb0ELb0EEEv"
                   "NS0_12BackwardArgsENS0_16PersistentConfigE")


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")
@pytest.mark.parametrize("func", [BWD_HALF_NHWC, BWD_DOUBLE_NHWC], ids=["half", "double"])
@pytest.mark.parametrize("cp_async", [False, True])
def test_backward_fc_items_must_use_cp_async(cs, func, cp_async, tmp_path, monkeypatch, capsys):
    """Issue 12c: a backward persistent kernel (any element type) without a 16-byte cp.async
    (LDGSTS.128: fc.cuh cols_dot_staged's weight copies) fails the check."""
    text = sass(func, ["LDG.E.128", "LDG.E.64"] + (["LDGSTS.E.BYPASS.128"] if cp_async else []))
    rc, out = run_check(cs, text, tmp_path, monkeypatch, capsys)
    assert rc == (0 if cp_async else 1), out
    assert ("weight copies are not 16-byte cp.async" in out) == (not cp_async)


FWD_FLOAT_NHWC = ("_ZN10se_kernels4cuda6detail24se_fwd_persistent_kernelIfLb1ELb0ELb0EEEv"
                  "NS0_11ForwardArgsENS0_16PersistentConfigE")


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")
@pytest.mark.parametrize("cp_async", [False, True])
def test_forward_fc_staging_must_use_cp_async(cs, cp_async, tmp_path, monkeypatch, capsys):
    """Issue 12e: a float (or bfloat16, double) persistent forward kernel without a 16-byte
    cp.async (LDGSTS.128: fc.cuh stage_rows_padded's input staging) fails the check."""
    text = sass(FWD_FLOAT_NHWC, ["LDG.E.128", "LDG.E"] + (["LDGSTS.E.BYPASS.128"] if cp_async
                                                           else []))
    rc, out = run_check(cs, text, tmp_path, monkeypatch, capsys)
    assert rc == (0 if cp_async else 1), out
    assert ("input staging is not 16-byte cp.async" in out) == (not cp_async)

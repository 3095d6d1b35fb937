"""tools/check_build_log.py on made-up build logs: the one summary line, the per-source report
kept between incremental builds (a no-op build keeps the table and the warnings), the
failures on warnings and on spills in hot kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cbl(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("check_build_log",
                                                  ROOT / "tools" / "check_build_log.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "csrc" / "cuda" / "k.cu").write_text("// hot-kernel: se_hot\n")
    (tmp_path / "csrc" / "ops.cpp").write_text("\n")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    return mod


SETUP_CUDA = "  [se_kernels build] CUDA build: toolkit /nonexistent, torch CUDA 13.0, archs 9.0a\n"
SETUP_CPU = "  [se_kernels build] CPU-only build (SE_KERNELS_SKIP_CUDA=1)\n"


def _cu(spill=0):
    return ("  [1/2] /usr/local/cuda/bin/nvcc -MD -c /src/csrc/cuda/k.cu -o /b/k.o\n"
            "  ptxas info    : Compiling entry function '_Z6se_hotPf' for 'sm_90a'\n"
            f"  ptxas info    : 0 bytes stack frame, {spill} bytes spill stores, {spill} bytes "
            "spill loads\n"
            "  ptxas info    : Used 40 registers, used 1 barriers\n"
            "  ptxas info    : Compiling entry function '_Z7se_coldPf' for 'sm_90a'\n"
            "  ptxas info    : 0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
            "  ptxas info    : Used 255 registers\n")


def _cpp(warning=False):
    return ("  [2/2] c++ -MMD -MF /b/ops.o.d -c /src/csrc/ops.cpp -o /b/ops.o -O3\n"
            + ("  /src/csrc/ops.cpp:12:5: warning: unused variable 'x' [-Wunused-variable]\n"
               if warning else ""))


def _run(cbl, tmp_path, text, name):
    log = tmp_path / name
    log.write_text(text)
    return cbl.check(str(log), report_path=tmp_path / "report.json", seconds=7)


def test_incremental_builds_keep_the_report(cbl, tmp_path):
    summary, table, failures = _run(cbl, tmp_path, SETUP_CUDA + _cu() + _cpp(), "full.log")
    assert summary.startswith("[se_kernels build] CUDA")
    assert "archs sm_90a, 2 entry points, spills 1, warnings 0, 7 s (2 of 2 sources" in summary
    assert not failures  # the cold kernel spills, which only the hot ones may not
    assert len(table) == 3 and "[hot]" in table[2] + table[1]

    # a no-op build: ninja compiles nothing, the report keeps both sources' entries
    summary, table2, failures = _run(cbl, tmp_path, SETUP_CUDA + "ninja: no work to do.\n",
                                     "noop.log")
    assert "2 entry points" in summary and "(0 of 2 sources compiled)" in summary
    assert table2 == table and not failures

    # an edit brings a warning: it fails, and keeps failing while the object is up to date
    summary, _, failures = _run(cbl, tmp_path, SETUP_CUDA + _cpp(warning=True), "edit.log")
    assert "warnings 1" in summary and "(1 of 2 sources compiled)" in summary
    assert failures and "unused variable" in failures[0]
    _, _, failures = _run(cbl, tmp_path, SETUP_CUDA, "noop2.log")
    assert failures and "unused variable" in failures[0]
    summary, _, failures = _run(cbl, tmp_path, SETUP_CUDA + _cpp(), "fixed.log")
    assert "warnings 0" in summary and not failures


def test_hot_kernel_spill_fails(cbl, tmp_path):
    _, _, failures = _run(cbl, tmp_path, SETUP_CUDA + _cu(spill=16) + _cpp(), "spill.log")
    assert any("hot kernel spills" in f and "se_hot" in f for f in failures)


def test_cuda_build_without_ptxas_report_fails(cbl, tmp_path):
    _, _, failures = _run(cbl, tmp_path, SETUP_CUDA + _cpp(), "noptxas.log")
    assert any("no ptxas report" in f for f in failures)


def test_cpu_only_build_drops_cuda_entries(cbl, tmp_path):
    _run(cbl, tmp_path, SETUP_CUDA + _cu() + _cpp(), "full.log")
    summary, table, failures = _run(cbl, tmp_path, SETUP_CPU + _cpp(), "cpu.log")
    assert summary.startswith("[se_kernels build] CPU kernels only (SE_KERNELS_SKIP_CUDA=1)")
    assert "warnings 0" in summary and "(1 of 1 sources compiled)" in summary
    assert table == [] and not failures


def test_quiet_mode_prints_one_line_and_appends_the_table(cbl, tmp_path, capsys):
    log = tmp_path / "b.log"
    log.write_text(SETUP_CUDA + _cu() + _cpp())
    assert cbl.main([str(log), "--quiet", "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("[se_kernels build] CUDA")
    assert "entry points" in log.read_text().splitlines()[-3]  # the table, appended
    assert (tmp_path / "build-report.txt").read_text().count("\n") == 1 + 3  # summary, table

"""tools/gpu_probe.py without a GPU: its bytes and floors, the join with the prediction files
(missing, malformed, partial), the row runner under a fake timer and a time budget, the
headline ratios, and the dry run end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_probe", ROOT / "tools" / "gpu_probe.py")
probe = importlib.util.module_from_spec(_spec)
sys.modules["gpu_probe"] = probe
_spec.loader.exec_module(probe)


def test_plan_covers_the_issue_matrix():
    rows = probe.plan()
    keys = {(r.impl, r.stage, r.N, r.layout, r.direction) for r in rows}
    assert len(rows) == len(keys) == 4 * 4 * 2 * 2 * 2
    assert {r.impl for r in rows} == {"cuda", "triton", "eager", "compile"}
    assert {r.N for r in rows} == {1, 256} and {r.dtype for r in rows} == {"bf16"}


def test_bytes_match_design_section_3():
    """|x| of conv2_x at N = 256 in bf16 is 411 MB (DESIGN.md's table); the SE block's
    forward moves 2|x| + |W|, its backward 3|x| + 2|W| (the floor the predictions use)."""
    x = 256 * 256 * 56 * 56 * 2
    assert round(x / 1e6) == 411
    w = (2 * 256 * 16 + 256 + 16) * 2
    assert probe.stage_bytes("conv2_x", 256, "fwd") == 2 * x + w
    assert probe.stage_bytes("conv2_x", 256, "bwd") == 3 * x + 2 * w
    # conv5_x: W (1 MiB in bf16, DESIGN.md) is 5x a sample's slab
    assert (2 * 2048 * 128 * 2) == 1 << 20
    rows = probe.plan(("cuda",))
    probe.set_floor(rows, 4.3e12)
    r = next(r for r in rows if (r.stage, r.N, r.direction) == ("conv2_x", 256, "fwd"))
    assert r.floor_us == pytest.approx((2 * x + w) / 4.3e12 * 1e6)
    # the predictions are made for the same bytes: their conv2_x N = 256 forward floor
    assert r.floor_us == pytest.approx(191.2, abs=0.1)


def _write(folder: Path, name: str, content) -> None:
    (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))


def _pred(backend="cuda", stage="conv2_x", n=256, layout="nhwc", direction="fwd", **kw):
    row = dict(backend=backend, path="cluster", stage=stage, N=n, layout=layout,
               direction=direction, dtype="bf16", bytes=probe.stage_bytes(stage, n, direction),
               floor_us=290.0, predicted_us=300.0, in_flight_kb_per_sm=24.0, note="model")
    row.update(kw)
    return row


def test_predictions_missing_files_are_no_prediction(tmp_path):
    preds, problems = probe.load_predictions(tmp_path)
    assert preds == {} and len(problems) == 2 and all("missing" in p for p in problems)
    rows = probe.plan()
    probe.join(rows, preds)
    assert all(r.predicted_us is None for r in rows)
    assert {r.pred_note for r in rows if r.impl in ("cuda", "triton")} == {"no prediction"}
    assert {r.pred_note for r in rows if r.impl in ("eager", "compile")} == {None}


def test_predictions_malformed_file_and_rows(tmp_path):
    _write(tmp_path, "cuda.json", "{not json")
    _write(tmp_path, "triton.json", [_pred("triton"), {"backend": "triton"}, "junk",
                                     _pred("triton", predicted_us="fast"),
                                     _pred("triton", predicted_us=1.0),      # duplicate key
                                     _pred("triton", dtype="fp32", stage="conv3_x")])
    preds, problems = probe.load_predictions(tmp_path)
    assert list(preds) == [("triton", "conv2_x", 256, "nhwc", "fwd")]
    assert preds[("triton", "conv2_x", 256, "nhwc", "fwd")]["predicted_us"] == 300.0
    assert any("cuda.json: unreadable" in p for p in problems)
    assert sum("lacks" in p for p in problems) == 3
    assert any("a second row" in p for p in problems)


def test_join_and_grade_with_a_fake_timer(tmp_path):
    """Rows with a prediction get it beside the measurement, measured/predicted and a
    verdict; a bytes disagreement is noted; rows without one say so."""
    _write(tmp_path, "cuda.json", [_pred(), _pred(direction="bwd", predicted_us=400.0,
                                                  bytes=123)])
    preds, _ = probe.load_predictions(tmp_path)
    rows = [r for r in probe.plan(("cuda",)) if r.stage == "conv2_x" and r.N == 256
            and r.layout == "nhwc"]
    probe.set_floor(rows, 4.0e12)
    probe.join(rows, preds)
    fake = {"fwd": [320e-6, 330e-6, 340e-6], "bwd": [600e-6] * 5}
    budget = probe.Budget(100.0)
    probe.run_rows(rows, lambda r: r.direction, lambda d: fake[d], budget)
    fwd, bwd = sorted(rows, key=lambda r: r.direction != "fwd")
    assert fwd.status == "ok" and fwd.measured_us == pytest.approx(330.0) and fwd.runs == 3
    assert fwd.vs_predicted == pytest.approx(1.1) and fwd.verdict == "as predicted"
    assert fwd.vs_floor == pytest.approx(330.0 / fwd.floor_us)
    assert bwd.vs_predicted == pytest.approx(1.5) and "+50%" in bwd.verdict
    assert "prediction counts 123 bytes" in bwd.pred_note


def test_run_rows_errors_skips_and_budget():
    rows = probe.plan(("eager",))[:4]
    ticks = iter([0.0, 0.0, 1.0, 2.0, 50.0, 60.0, 70.0])
    budget = probe.Budget(10.0, clock=lambda: next(ticks))

    def make(r):
        if r is rows[0]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if r is rows[1]:
            raise probe.Skip("backend not available")
        return lambda: None

    probe.run_rows(rows, make, lambda fn: [1e-5], budget)
    assert [r.status for r in rows] == ["error", "skipped", "ok", "not reached"]
    assert "illegal memory access" in rows[0].error
    assert rows[2].measured_us == pytest.approx(10.0)
    assert "budget" in rows[3].error


def test_headline_ratios():
    rows = [dict(model="resnet50", se="none", mode="train", median_ms=100.0),
            dict(model="se_resnet50", se="reference", mode="train", median_ms=110.0),
            dict(model="se_resnet50", se="fused:cuda", mode="train", median_ms=104.0),
            dict(model="se_resnet50", se="fused:cuda", mode="inference", median_ms=50.0)]
    probe.headline_ratios(rows)
    assert rows[1]["se_overhead_pct"] == pytest.approx(10.0)
    assert rows[2]["ratio_vs_resnet50"] == pytest.approx(1.04)
    assert "ratio_vs_resnet50" not in rows[3]  # no ResNet-50 inference row to compare with


def test_commit_from_environment(monkeypatch):
    monkeypatch.setenv("SE_KERNELS_GIT_COMMIT", "abc123")
    assert probe.commit() == "abc123"


def test_dry_run_end_to_end(tmp_path):
    """The dry run writes the whole plan with provenance and the predictions joined."""
    preds = tmp_path / "preds"
    preds.mkdir()
    _write(preds, "triton.json", [_pred("triton", stage="conv5_x", layout="nchw")])
    out = tmp_path / "probe.json"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_probe.py"), "--dry-run",
                          "--json", str(out), "--predictions", str(preds)],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "SE_KERNELS_GIT_COMMIT": "feed"})
    assert res.returncode == 0, res.stderr
    assert "predictions: 1 of 64 fused rows" in res.stdout
    doc = json.loads(out.read_text())
    prov = doc["provenance"]
    for k in ("date", "command", "commit", "torch", "cuda_runtime", "triton", "driver",
              "device"):
        assert k in prov
    assert prov["commit"] == "feed" and "--dry-run" in prov["command"]
    assert len(doc["ops"]) == 128
    hit = [r for r in doc["ops"] if r["predicted_us"] is not None]
    assert [(r["impl"], r["stage"], r["N"], r["layout"], r["direction"]) for r in hit] == [
        ("triton", "conv5_x", 256, "nchw", "fwd")]
    assert any("cuda.json: missing" in p for p in doc["prediction_problems"])


def test_compile_rows_put_n256_nhwc_first():
    rows = sorted(probe.plan(("compile",)), key=probe.compile_order)
    assert all((r.N, r.layout) == (256, "nhwc") for r in rows[:8])
    assert rows[-1].N == 1


@pytest.mark.usefixtures("one_thread")
def test_op_maker_and_headline_run_on_cpu(monkeypatch):
    """The GPU-side code paths on CPU tensors (tiny shapes, a wall-clock timer): the eager
    rows' forward and retained-graph backward, the fused rows skipped for want of their
    backend, and the headline's round-robin steps with the ratios."""
    import time

    import torch

    import se_kernels

    monkeypatch.setitem(probe.STAGES, "conv2_x", (8, 4, 2))
    rows = [r for r in probe.plan(("cuda", "eager")) if r.stage == "conv2_x" and r.N == 1]
    maker = probe.OpMaker(torch, se_kernels, device="cpu")

    def timer(fn):
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    probe.run_rows(rows, maker, timer, probe.Budget(60.0))
    by = {(r.impl, r.layout, r.direction): r for r in rows}
    assert {r.status for r in rows if r.impl == "eager"} == {"ok"}, [r.error for r in rows]
    assert {r.status for r in rows if r.impl == "cuda"} == {"skipped"}
    assert "retained graph" in by[("eager", "nhwc", "bwd")].method

    # no fused backend (the Triton interpreter would take minutes), one step of each
    hl, skipped = probe.headline(torch, se_kernels, 0.0, device="cpu", n_infer=1, n_train=2,
                                 image=32, backends=[], warmup=1, min_steps=1)
    modes = {(r["model"], r["se"], r["mode"]) for r in hl}
    assert modes == {(m, se, mode) for m, se in (("resnet50", "none"),
                                                   ("se_resnet50", "reference"))
                     for mode in ("inference", "train")}
    assert all(r["steps"] >= 1 and "ratio_vs_resnet50" in r for r in hl)
    assert any("fused:cuda" in s for s in skipped)

"""The model suite under noise (se_kernels.bench.model): overhead intervals from interleaved
pairs, the stopping rule, "within noise", and the report and plot of them, all on a fake
machine whose clock and step times the test controls (no model is run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from se_kernels.bench import model, plot, report


class FakeMachine:
    """Models with true step times ``base * (1 + overhead)``, seen through a load that drifts
    with the fake clock and multiplicative log-normal noise; the clock advances by each step."""

    def __init__(self, overheads, *, base=0.1, noise=0.0, drift=0.0, spikes=0.0, seed=0):
        self.true = [base * (1 + o) for o in overheads]
        self.noise, self.drift, self.spikes = noise, drift, spikes
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def step(self, i: int) -> float:
        load = 1 + self.drift * self.now  # a neighbour's load growing over time
        t = self.true[i] * load * math.exp(self.noise * self.rng.standard_normal())
        if self.spikes and self.rng.random() < self.spikes:
            t *= 1.5  # another process takes the core for a while
        self.now += t
        self.calls.append(i)
        return t


def _run(machine, budget_s, count=3):
    return model.interleaved_rounds(count, machine.step, budget_s=budget_s,
                                    pairs=[(0, i) for i in range(1, count)],
                                    clock=machine.clock)


def test_overhead_exact_and_paired():
    o = model.overhead([1.0, 2.0, 4.0], [1.1, 2.2, 4.4])
    # every pair says +10%, however far the rounds differ: the interval is a point
    assert o.pct == pytest.approx(10) and o.low == pytest.approx(10)
    assert o.high == pytest.approx(10) and not o.within_noise and o.half_width < 1e-9
    assert model.overhead([1.0, 1.0], [0.9, 1.1]).within_noise
    with pytest.raises(ValueError, match="rounds"):
        model.overhead([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="rounds"):
        model.overhead([], [])
    assert model.overhead([1.0], [1.5]).within_noise  # one round: no interval to speak of


def test_rounds_rotate_the_order():
    m = FakeMachine([0, 0, 0])
    times, _ = model.interleaved_rounds(3, m.step, budget_s=0, pairs=[(0, 1)], clock=m.clock)
    assert m.calls[:9] == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [len(t) for t in times] == [3, 3, 3]  # the floor: 3 rounds even with no budget


def test_real_overhead_converges_to_a_narrow_interval():
    m = FakeMachine([0.0, 0.05, 0.02], noise=0.02)
    times, stop = _run(m, budget_s=1e6)
    assert stop == "converged"
    assert len(times[0]) >= model.MIN_ROUNDS
    for i, true in ((1, 5.0), (2, 2.0)):
        o = model.overhead(times[0], times[i])
        assert o.half_width <= model.TARGET_HALF_WIDTH
        assert o.low <= true <= o.high and not o.within_noise


def test_no_overhead_is_within_noise():
    m = FakeMachine([0.0, 0.0], noise=0.05, seed=1)
    times, stop = _run(m, budget_s=1e6, count=2)
    o = model.overhead(times[0], times[1])
    assert stop == "converged" and o.half_width <= 1.0
    assert o.within_noise and abs(o.pct) < 1.0


def test_the_issue_case_few_noisy_runs_are_not_a_finding():
    # A busy 2-core machine: steps of 15% noise plus 1.5x spikes, a +2% true overhead, a
    # budget of about 3 rounds. The point estimate often comes out negative (the issue saw
    # -16.5%), but the interval is wide and holds the truth about 95% of the time: a
    # negative estimate is almost never reported as a finding.
    covered = negative_findings = negatives = 0
    seeds = range(200)
    for seed in seeds:
        m = FakeMachine([0.0, 0.02], noise=0.15, spikes=0.3, seed=seed)
        times, stop = _run(m, budget_s=0.5, count=2)
        o = model.overhead(times[0], times[1])
        assert stop == "budget" and len(times[0]) < model.MIN_ROUNDS + 2
        assert o.half_width > model.TARGET_HALF_WIDTH
        covered += o.low <= 2.0 <= o.high
        negatives += o.pct < 0
        negative_findings += o.pct < 0 and not o.within_noise
    assert negatives > 40  # the naive estimate misleads often ...
    assert covered >= 0.9 * len(seeds) and negative_findings <= 0.05 * len(seeds)  # ... this not


def test_budget_ends_a_run_that_cannot_converge():
    m = FakeMachine([0.0, 0.03], noise=0.3, seed=2)
    times, stop = _run(m, budget_s=5.0, count=2)
    assert stop == "budget"
    assert m.now >= 5.0 and m.now < 5.0 + 3 * 0.3  # it stops within a round of the budget
    assert model.overhead(times[0], times[1]).half_width > model.TARGET_HALF_WIDTH


def test_interleaving_cancels_a_drifting_load():
    # the load triples over the run; a sequential plain-then-SE run would show +100% or so
    m = FakeMachine([0.0, 0.03], noise=0.01, drift=0.2, seed=3)
    times, stop = _run(m, budget_s=10.0, count=2)
    o = model.overhead(times[0], times[1])
    assert o.low <= 3.0 <= o.high and abs(o.pct - 3.0) < 1.0
    sequential = np.median(times[1][len(times[1]) // 2:]) / np.median(times[0][:len(times[0]) // 2])
    assert sequential > 1.2  # what the drift does to an unpaired comparison


def _row(se, mode, pct=None, lo=None, hi=None, ratio=None, **extra):
    row = {"model": "se_resnet50" if se != "none" else "resnet50", "se": se, "mode": mode,
           "n": 1, "image_size": 224, "dtype": "float32", "layout": "nchw", "threads": 1,
           "device": "cpu", "median_ms": 100.0, "iqr_ms": 5.0, "min_ms": 90.0, "runs": 7,
           "images_per_s": 10.0, "ratio_vs_plain": ratio, "paper_ratio": 167 / 164,
           "overhead_pct": pct, "overhead_low_pct": lo, "overhead_high_pct": hi,
           "within_noise": None if lo is None else lo <= 0 <= hi, "rounds": 7,
           "stop": "budget"}
    row.update(extra)
    return row


def test_report_and_plot_show_the_interval(tmp_path, capsys):
    rows = [_row("none", "inference"), _row("reference", "inference", -16.5, -40.0, 9.0, 0.84),
            _row("fused:cpu", "inference", 2.5, 1.8, 3.1, 1.02),
            _row("none", "train"), _row("reference", "train", 9.0, 7.9, 10.2, 1.09)]
    assert report.fmt_overhead(rows[1]) == "-16.5% [-40.0, +9.0] within noise"
    assert report.fmt_overhead(rows[2]) == "+2.5% [+1.8, +3.1]"
    assert report.fmt_overhead(rows[0]) == "-"
    old = dict(rows[1], overhead_pct=None)  # a row saved before the intervals
    old.pop("overhead_low_pct"), old.pop("overhead_high_pct")
    assert report.fmt_overhead(old) == "-16.0% (no interval)"
    p = report._Printer() if hasattr(report, "_Printer") else None
    if p is not None:
        report._print_model(p, rows)
        out = capsys.readouterr().out
        assert "within noise" in out and "(budget)" in out
    data = {"provenance": {"device": "fake CPU"}, "model": rows, "op": []}
    path = plot.plot_model(data, tmp_path / "model.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"

"""tools/gpu_check.sh's guards, without a GPU and without running a step: a plan whose limits
add up to more than 480 s is refused before anything starts, unknown plans and steps are
usage errors, and the default plan's limits add up to at most 480 s. (The dry run proper,
which collects every selection, runs in CI: `make gpu-check-dry`.)"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def _run(*args, env=None, out=None):
    e = {**os.environ, "PYTHON": "false-python-never-run", **(env or {})}
    if out is not None:
        e["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, env=e)


def _limits():
    text = SCRIPT.read_text()
    block = re.search(r"declare -A LIMIT=\((.*?)\)", text, re.S).group(1)
    return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", block)}


def test_default_plans_fit_480_s():
    lim = _limits()
    assert sum(lim[s] for s in ("build", "smoke", "stress", "probe")) <= 480
    assert sum(lim[s] for s in ("build", "rest", "sanitizer", "huge")) <= 480
    assert lim["build"] <= 150 and lim["smoke"] <= 120 and lim["stress"] <= 60
    assert lim["probe"] <= 150


@pytest.mark.parametrize("dry", [False, True])
def test_plan_over_480_s_is_refused(tmp_path, dry):
    res = _run(*(["--dry-run"] if dry else []), "more", "build", "rest",
               env={"LIMIT_rest": "400"}, out=tmp_path / "out")
    assert res.returncode != 0
    if dry:
        assert "plan total: 550 s" in res.stdout and "exceeds 480 s" in res.stdout
    else:  # refused before any step (nothing written, the python never called)
        assert "refused" in res.stderr and not (tmp_path / "out").exists()


def test_unknown_plan_and_step_are_usage_errors(tmp_path):
    assert _run("sideways", out=tmp_path).returncode == 2
    res = _run("more", "bench", out=tmp_path)
    assert res.returncode == 2 and "unknown step 'bench'" in res.stderr


def test_limit_override_must_be_seconds(tmp_path):
    res = _run("first", "probe", env={"LIMIT_probe": "lots"}, out=tmp_path)
    assert res.returncode == 2 and "not a number" in res.stderr

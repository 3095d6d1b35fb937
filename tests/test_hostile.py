"""Hostile input never crashes the process: bad shapes, dtypes, devices, option codes, NaN/inf,
huge sizes, and direct calls of torch.ops.se_kernels.* with inconsistent tensors.

Every case runs in a child process (tests/hostile_runner.py), one after another; a case that
kills its process (segfault, abort, out-of-memory kill) is reported as such and the runner
restarts with the next case. Each case must end as a Python exception of the expected type
whose message names what was wrong, or, for input that is merely unusual (NaN, inf, N = 0,
meta tensors), return normally.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import se_kernels

HERE = Path(__file__).parent
RUNNER = HERE / "hostile_runner.py"
sys.path.insert(0, str(HERE))
from hostile_runner import CASES, Case  # noqa: E402

HAS_C = se_kernels.EXTENSION_LOAD_ERROR is None


def run_cases(cases, command, timeout=300):
    """Runs ``command START`` (a runner printing hostile_runner's JSON lines) from START = 0,
    and again after the case that killed it; returns {case name: result dict}."""
    results, start = {}, 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(HERE.parent), env.get("PYTHONPATH", "")] if p)
    while start < len(cases):
        proc = subprocess.run(command + [str(start)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        running = start  # the case running when the process died: none started yet -> start
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec["status"] == "start":
                running = rec["index"]
            else:
                results[cases[rec["index"]].name] = rec
                running = rec["index"] + 1
        if proc.returncode == 0 and running >= len(cases):
            break
        if running >= len(cases):  # died after the last case (at exit)
            results["<exit>"] = {"status": "crashed", "returncode": proc.returncode,
                                 "stderr": proc.stderr[-3000:]}
            break
        results[cases[running].name] = {"index": running, "status": "crashed",
                                        "returncode": proc.returncode,
                                        "stderr": proc.stderr[-3000:]}
        start = running + 1
    return results


@pytest.fixture(scope="module")
def results():
    return run_cases(CASES, [sys.executable, str(RUNNER)])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case, results):
    if case.needs == "ext" and not HAS_C:
        pytest.skip(f"se_kernels._C not loaded: {se_kernels.EXTENSION_LOAD_ERROR}")
    if case.needs == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none visible)")
    if case.needs == "cuda2" and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    res = results.get(case.name)
    assert res is not None, f"{case.name}: no result from the runner"
    assert res["status"] != "crashed", (
        f"{case.name} crashed the process (exit {res['returncode']}):\n{res['stderr']}")
    assert res["status"] != "skipped", res.get("reason")
    if case.expect == "returns":
        assert res["status"] == "returned", (
            f"{case.name}: expected a normal return, got {res.get('type')}: {res.get('message')}")
        return
    assert res["status"] == "raised", f"{case.name}: expected an exception, but it returned"
    assert set(res["types"]) & set(case.expect), (  # the type or one of its bases
        f"{case.name}: expected {case.expect}, got {res['type']}: {res['message']}")
    assert re.search(case.match, res["message"]), (
        f"{case.name}: message {res['message']!r} does not match {case.match!r}")


def test_runner_survives_a_crash(tmp_path):
    """The harness itself: a case that kills its process is reported as crashed, with its
    exit status, and the cases after it still run."""
    script = tmp_path / "runner.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import hostile_runner as h\n"
        "h.CASES[:] = [h.Case('before', 'raise ValueError(\"v\")', ('ValueError',)),\n"
        "              h.Case('abort', 'import os; os.abort()', ('RuntimeError',)),\n"
        "              h.Case('after', 'pass', 'returns')]\n"
        "h.main(sys.argv[1:])\n")
    names = [Case("before", "", ()), Case("abort", "", ()), Case("after", "", "returns")]
    res = run_cases(names, [sys.executable, str(script)], timeout=120)
    assert res["before"]["status"] == "raised" and res["before"]["type"] == "ValueError"
    assert res["abort"]["status"] == "crashed" and res["abort"]["returncode"] != 0
    assert res["after"]["status"] == "returned"

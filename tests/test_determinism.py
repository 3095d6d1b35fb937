"""torch.use_deterministic_algorithms(True): every backend gives bitwise-identical outputs and
gradients from run to run (and the cpu backend whatever the thread count), and raises no
nondeterminism alert.

CUDA runs happen in a child process with CUBLAS_WORKSPACE_CONFIG set before CUDA starts, as
deterministic cuBLAS (used by the reference backend's linear) requires.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import se_kernels
from helpers import make_inputs
from se_kernels.ops import _unavailable_reason

HERE = Path(__file__).parent


def _backend_devices():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [pytest.param(b, d, id=f"{b}-{d}") for b in se_kernels.available_backends()
            for d in devices if _unavailable_reason(b, d) is None]


def run_once(backend, device, dtype, squeeze, seed=0):
    """One forward and backward of a batch big enough for several CTAs / threads per
    reduction; returns y and every gradient."""
    gen = torch.Generator().manual_seed(seed)
    inp = make_inputs(32, 96, 14, 14, 12, dtype=dtype, layout="channels_last", bias=True,
                      residual=True, device=device, generator=gen, requires_grad=True)
    y = se_kernels.fused_se(*inp.args(), residual=inp.residual, squeeze=squeeze,
                            activation="silu", gate="sigmoid", backend=backend)
    dy = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
    return [y.detach()] + list(torch.autograd.grad(y, inp.tensors(), dy))


def check_bitwise(backend, device, dtype, squeeze, runs=3):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # alerts raise, not warn
    try:
        results = [run_once(backend, device, dtype, squeeze) for _ in range(runs)]
    finally:
        torch.use_deterministic_algorithms(prev)
    names = ["y", "dx", "dw1", "dw2", "db1", "db2", "dresidual"]
    for k, res in enumerate(results[1:], 1):
        for name, a, b in zip(names, results[0], res):
            assert torch.equal(a, b), f"{name} differs between run 0 and run {k}"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SQUEEZES = ("avg", "max")


def check_all_cuda(backends):
    """Child-process entry: every CUDA combination; prints one line per result."""
    for backend in backends:
        for dname, dtype in DTYPES.items():
            for squeeze in SQUEEZES:
                try:
                    check_bitwise(backend, "cuda", dtype, squeeze)
                    msg = "ok"
                except Exception as e:  # noqa: BLE001 - reported to the parent
                    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
                print(f"RESULT {backend} {dname} {squeeze} {msg}", flush=True)


@pytest.fixture(scope="module")
def cuda_results():
    """All CUDA combinations, run once in one child process (CUDA starts once)."""
    backends = [b for b in se_kernels.available_backends()
                if _unavailable_reason(b, "cuda") is None]
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import test_determinism as t\n"
            "t.check_all_cuda(%r)\n" % (str(HERE), backends))
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE.parent), env.get("PYTHONPATH", "")]
                                        if p)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, env=env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            backend, dname, squeeze, msg = line[7:].split(" ", 3)
            results[backend, dname, squeeze] = msg
    return results, proc


@pytest.mark.parametrize("backend,device", _backend_devices())
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("squeeze", SQUEEZES)
def test_bitwise_identical_across_runs(backend, device, dname, squeeze, request):
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is sequential; determinism is a GPU property")
    if device == "cpu":
        check_bitwise(backend, device, DTYPES[dname], squeeze)
        return
    results, proc = request.getfixturevalue("cuda_results")
    msg = results.get((backend, dname, squeeze))
    assert msg is not None, (f"the CUDA child process gave no result (exit "
                             f"{proc.returncode}):\n{proc.stderr[-4000:]}")
    assert msg == "ok", msg


@pytest.mark.skipif("cpu" not in se_kernels.available_backends(),
                    reason="the cpu backend is not built")
def test_cpu_backend_independent_of_thread_count():
    """The cpu kernels reduce in a fixed order, whatever the number of threads."""
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_once("cpu", "cpu", torch.float32, "avg"))
    finally:
        torch.set_num_threads(prev)
    for res in results[1:]:
        for a, b in zip(results[0], res):
            assert torch.equal(a, b)

"""Test configuration shared by every test file.

On a machine without a CUDA device the Triton kernels run under Triton's interpreter on CPU
tensors: TRITON_INTERPRET=1 must be set before Triton kernels are defined, so before
se_kernels is imported. torch.cuda.is_available() asks the driver for a device count and
creates no context.
"""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("TRITON_INTERPRET") == "1":
    # The interpreter's options have debug=False, so its tl.device_assert calls are dropped:
    # turn them on, so that the kernels' alignment claims (the flat tiles' tl.multiple_of
    # hints, review 13a #1) run on every interpreted test. Not Triton's int32 overflow checks,
    # which debug would turn on too: test_triton_int64.py shows the old addressing wrapping
    # on purpose.
    import dataclasses as _dc

    from triton.runtime import interpreter as _interp

    _interp.interpreter_builder.options = _dc.replace(_interp.interpreter_builder.options,
                                                      debug=True, sanitize_overflow=False)

import pytest  # noqa: E402

import se_kernels  # noqa: E402,F401

try:  # hypothesis profiles of the property tests (tests/test_fuzz.py)
    from hypothesis import HealthCheck, settings

    # "ci" (default): bounded and derandomised, so every CI run checks the same examples.
    settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    # "gpu": many more random examples, for runs on a GPU machine.
    settings.register_profile("gpu", max_examples=2000, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test extra; the tests that need it import it themselves
    pass


def pytest_report_header(config):
    from se_kernels import EXTENSION_LOAD_ERROR, available_backends

    lines = [f"se_kernels backends: {available_backends()}",
             f"torch {torch.__version__}, CUDA device: {torch.cuda.is_available()}, "
             f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]
    if EXTENSION_LOAD_ERROR:
        lines.append(f"se_kernels._C not loaded: {EXTENSION_LOAD_ERROR}")
    return lines


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Every test draws fresh random inputs, from a seed of its own that is stable across
    runs (the CRC of its id), so a failure reproduces and the suite never flakes."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poison():
    """Fill every freshly allocated tensor with NaN (torch's deterministic mode with
    fill_uninitialized_memory), so an output element a kernel forgets to write fails the
    comparison instead of passing on leftover memory."""
    import torch.utils.deterministic as det

    prev_det, prev_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        det.fill_uninitialized_memory = prev_fill


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small networks: at a few pixels one thread is
    faster than two, and much faster on a shared, loaded machine (restored afterwards). Use
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (ImageNet-size models, long fuzzing)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="marked slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Shared test helpers. GPU tests are marked `gpu` and skip cleanly on machines without one."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import numpy as np
import pytest

from lstmdsl.resources import shipped_specs

SPECS = sorted(shipped_specs())


def has_gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_configure(config):
    """The tests never write into the user's cache directory: the session gets a temporary one, or the one
    LSTMDSL_TEST_CACHE names. The first process to get here (pytest's, or with pytest-xdist its controller,
    before it starts the workers) makes it and puts it in LSTMDSL_TEST_CACHE, which the workers inherit: the
    session's processes share one cache, so a kernel one worker compiled is loaded by the others (entries
    are written atomically: lstmdsl/cache.py)."""
    if not os.environ.get("LSTMDSL_TEST_CACHE"):
        os.environ["LSTMDSL_TEST_CACHE"] = tempfile.mkdtemp(prefix="lstmdsl-test-cache-")
    os.environ["LSTMDSL_CACHE"] = os.environ["LSTMDSL_TEST_CACHE"]
    if not os.environ.get("LSTMDSL_TEST_NVCC_CLAIMS"):  # this session's claims of kernels to compile with nvcc
        # (tests/test_codegen.py: each distinct kernel once; made by the controller, inherited by the workers)
        os.environ["LSTMDSL_TEST_NVCC_CLAIMS"] = tempfile.mkdtemp(prefix="lstmdsl-test-nvcc-")
        config._lstmdsl_nvcc_claims = os.environ["LSTMDSL_TEST_NVCC_CLAIMS"]


def pytest_unconfigure(config):
    made = getattr(config, "_lstmdsl_nvcc_claims", None)
    if made:  # (the process that made it: the workers have finished)
        shutil.rmtree(made, ignore_errors=True)
        del os.environ["LSTMDSL_TEST_NVCC_CLAIMS"]


def pytest_runtest_logreport(report):
    """With LSTMDSL_TEST_FAILURES set (benchmarks/gpu_check.sh), each failure's test and traceback is appended
    to that file as it happens (with pytest-xdist, in the controller), so a run cut off by its time limit
    still says which tests failed and why (on 2026-12-05 a GPU run cut off at 97% showed three F's and no names)."""
    path = os.environ.get("LSTMDSL_TEST_FAILURES")
    if path and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):  # (a worker's reports reach the
        # controller's hook too: written there once)
        text = report.longreprtext.splitlines()
        with open(path, "a") as f:
            f.write(f"FAILED {report.nodeid} ({report.when})\n" + "\n".join(text[-40:]) + "\n\n")


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# states whose meaning makes them positive (an sLSTM's normaliser n divides the output): random test states
# take their absolute value plus 0.5 there
POSITIVE_STATES = {"slstm": ("n",)}
# normalisations over one feature are constant: their gradients are pure float32 rounding at H = 1
ONE_FEATURE_TOLERANCE = {"layernorm": 1e-3, "rmsnorm": 1e-3}


def extra_sizes(name: str) -> dict:
    """Keyword arguments a spec needs beyond input and hidden size (the projection size)."""
    import lstmdsl

    return {"proj_size": 4} if lstmdsl.parse(name).uses_size("proj") else {}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

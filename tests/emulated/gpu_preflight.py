"""Run GPU tests (tests/test_gpu.py) on the emulated CUDA runtime, without a GPU: a check of new GPU tests and of
the runtime's plumbing before device time is spent on them. Pass a selection; the whole file takes over 30 minutes
here, and the tests that need a real GPU (torch on CUDA, timings, the driver's limits, two GPUs) fail or skip.

    python3 tests/emulated/gpu_preflight.py -k "slstm_heads or whole_matrices"

Not collected by pytest (the fake CuPy must be imported before the tests import cupy: simrt, beside this file).
It caught a GPU test's wrong size (I = 6 with 4 heads on the input's matrices) on 2026-12-04."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]  # (this tree's lstmdsl, not an installed one)
import simrt  # noqa: E402,F401 - the fake CuPy and the emulated runtime
import pytest  # noqa: E402

if not any(a == "-k" or a.startswith("-k") for a in sys.argv[1:]):
    sys.exit("gpu_preflight: give a selection (-k EXPR): the whole of tests/test_gpu.py takes over 30 minutes here")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                      os.path.join(os.path.dirname(HERE), "test_gpu.py")] + sys.argv[1:]))

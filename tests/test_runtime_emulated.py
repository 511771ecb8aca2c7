"""The CUDA runtime's storage layout and pointer arithmetic, exercised without a GPU: the real CudaLayer
runs with a fake CuPy and emulated GEMMs and kernels (tests/emulated/), in a subprocess, against the
float64 reference. This is where layout bugs that the shipped specs on the GPU never reach show up."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_emulated_runtime_matches_the_reference():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "run_cases.py")], capture_output=True,
                       text=True, env=env, timeout=600)
    bad = [line for line in r.stdout.splitlines() if "BAD" in line]
    assert r.returncode == 0 and not bad, (bad or [r.stdout[-3000:]]) + [r.stderr[-3000:]]


def test_the_emulators_stores_and_bounds_checks():
    """The emulator's own checks (tests/emulated/self_check.py): a kernel's column stores land where a store a
    column at a time puts them, and an access past an allocation raises: what every emulated case relies on."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "self_check.py")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "emulator: OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_cubin_cache_without_a_gpu():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "cubin_cache.py")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "cubin cache: OK" in r.stdout, r.stdout + r.stderr


def test_half_parameters_weight_gradients_are_the_float32_ones_rounded_once():
    """Plan.grad_type through the emulated runtime (tests/emulated/half_grads.py): programs built for half
    parameters write the weight stacks' gradients in half at their rows' offsets (a GEMM per gate too), each the
    float32 gradient rounded once; dx and the vector gradients are unchanged."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "half_grads.py")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.count("| OK") == 6, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_cuda_layers_masks_generator_saves_and_restores_its_state():
    """runtime/draws.py through the emulated runtime (tests/emulated/draws_state.py): what a checkpoint saves of it
    (its key and count of draws) brings back the masks drawn from that point."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "draws_state.py")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "draws: OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_half_arrays_in_and_out_of_the_cuda_layer():
    """x and dy in float16 under `precision fp16`, in bfloat16 bits (uint16) under `precision bf16`
    (tests/emulated/half_io.py): y and dx are the float32 run's rounded once, the final states and gradients the
    same, in a stack, layer by layer with dropout, bidirectional, as a wavefront and as a persistent kernel."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "half_io.py")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.count("| OK") == 16, r.stdout[-3000:] + r.stderr[-3000:]


def test_a_warm_start_renders_no_source(tmp_path):
    """The persistent kernels compiled for a launch's shape come from the disk cache in a later process, as the
    program's source does (tests/emulated/warm_source.py): its compile and first forward import no jinja2."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTMDSL_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "warm_source.py")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "| OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_a_forward_paused_at_its_first_launch_while_another_engine_runs():
    """Engine.forward_parts (what lstmdsl/torch/pair.py uses for a bidirectional layer's two directions) through the
    emulated runtime (tests/emulated/paused_forward.py): paused while another layer's whole forward runs, its
    results are those of the two run one after the other, graphs captured and replayed, persistent and stepwise."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "emulated" / "paused_forward.py")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0 and "paused forward: OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]

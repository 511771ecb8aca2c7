"""Timing on the GPU, for the benchmarks, the profiler and `lstmdsl run`: CUDA events on the current
stream around each call, after warm-up calls (and after the persistent kernels compiled for the calls'
shapes are in use: runtime/specialise.py). Imports CuPy only when called."""

from __future__ import annotations

import statistics
import time

_SPIN_SOURCE = """extern "C" __global__ void lstmdsl_spin(long long cycles)
{
    const long long start = clock64();
    while (clock64() - start < cycles) {}
}"""


def _warm_up(fn, warmup: int) -> None:
    """The warm-up calls, then once more after the compiles of kernels for their shapes have finished
    (runtime/specialise.py), so the timed calls run what a long run would."""
    import cupy

    from .runtime import nvrtc

    for _ in range(warmup):
        fn()
    nvrtc.settle()
    fn()  # (a kernel whose compile finished after the last call's look is installed by this one)
    cupy.cuda.Device().synchronize()


def time_gpu(fn, repeat: int = 20, warmup: int = 2) -> dict:
    """Time fn on the GPU. Returns the median, min and max milliseconds and the median host time to
    issue the call."""
    import cupy

    _warm_up(fn, warmup)
    times, host = [], []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append(1e3 * (time.perf_counter() - t0))
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return {"ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "host_ms": statistics.median(host)}


def time_gpu_only(fn, repeat: int = 20, warmup: int = 2) -> dict:
    """The GPU's time for fn alone: each call is issued while a spin kernel holds the GPU (spin), so the
    events around it time the work and not the GPU waiting for the host to issue it, which time_gpu includes
    (as a caller sees a call). At small sizes a call is about half host time (nn.LSTM's as well as
    lstmdsl's), so the two tell the kernels' speed and the calls' apart. The hold is twice the host's time
    to issue one call, plus a millisecond. A function that waits for the GPU inside (a copy to the host) is
    held at that point, and its time includes the wait. Returns the median and min milliseconds."""
    import cupy

    _warm_up(fn, warmup)
    t0 = time.perf_counter()
    fn()
    hold = 2e3 * (time.perf_counter() - t0) + 1.0
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        spin(hold)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return {"gpu_ms": statistics.median(times), "gpu_min_ms": min(times)}


def spin(ms: float) -> None:
    """Keep the GPU busy for about `ms` milliseconds (one thread spinning on the clock), so that work
    issued meanwhile queues up and is then timed without waiting for the host."""
    import cupy

    from .runtime.nvrtc import load_module

    kernel = load_module(_SPIN_SOURCE).get_function("lstmdsl_spin")
    khz = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"]
    kernel((1,), (1,), (cupy.int64(ms * khz),))

"""Threads per block of a row-fused launch (lstmdsl/passes/calls.py ROW_THREADS): layernorm and rmsnorm
at I = H = 512, T = 100, B = 64 and 16, strict fp32, through the layer API, for 128 to 1024 threads.

    python3 benchmarks/row_threads.py

Medians of 10 CUDA-event timings (lstmdsl.timing.time_gpu); prints one line per case.
"""

from __future__ import annotations

import cupy
import numpy as np

import lstmdsl
from lstmdsl import program
from lstmdsl.passes import calls
from lstmdsl.timing import time_gpu


def main() -> None:
    chosen = calls.ROW_THREADS
    try:
        for spec in ("layernorm", "rmsnorm"):
            for B in (64, 16):
                for threads in (128, 256, 512, 1024):
                    calls.ROW_THREADS = threads
                    program.build_program.cache_clear()
                    layer = lstmdsl.compile(spec, 512, 512, backend="cuda")
                    x = cupy.asarray(np.random.default_rng(0).standard_normal((100, B, 512)).astype(np.float32))
                    ones = cupy.ones((100, B, 512), np.float32)
                    f = time_gpu(lambda: layer.forward(x, train=False), 10)["ms"]
                    t = time_gpu(lambda: (layer.forward(x), layer.backward(ones)), 10)["ms"]
                    print(f"{spec} B={B} threads={threads}: forward {f:.3f} ms, train {t:.3f} ms", flush=True)
    finally:
        calls.ROW_THREADS = chosen
        program.build_program.cache_clear()


if __name__ == "__main__":
    main()

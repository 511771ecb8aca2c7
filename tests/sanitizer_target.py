"""Run one spec's forward and backward once on the GPU, for compute-sanitizer:

    compute-sanitizer --tool memcheck python3 tests/sanitizer_target.py [spec]
    compute-sanitizer --tool racecheck python3 tests/sanitizer_target.py [spec]

(Not collected by pytest; the GPU tests check the numbers, this checks memory accesses and races.)
"""

import sys

import cupy
import numpy as np

import lstmdsl

name = sys.argv[1] if len(sys.argv) > 1 else "peephole"
layer = lstmdsl.compile(name, input_size=5, hidden_size=33, num_layers=2, backend="cuda",
                        **({"proj_size": 7} if lstmdsl.parse(name).uses_size("proj") else {}))
x = cupy.asarray(np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32))
for _ in range(2):  # the first call captures the CUDA graphs, the second replays them
    y0, _ = layer.forward(x, train=False)  # the forward-only workspace
    y, state = layer.forward(x)
    dx = layer.backward(cupy.ones_like(y))
cupy.cuda.Device().synchronize()
print(f"{name}: forward and backward ran; |y| = {float(cupy.linalg.norm(y)):.4f}, |dx| = {float(cupy.linalg.norm(dx)):.4f}")

"""float16 arrays in and out of the CUDA layer in `precision fp16` (runtime/layer.py: the engines convert x, y, dy
and dx where the caller's type is not the plan's) through the emulated CUDA runtime: the same layer twice (same
seed), once given float32 x and dy and once their float16 values; y and dx must be the float32 results rounded to
float16 once, the final states and every gradient identical. A stack run as one op, a stack with dropout between
its layers (layer by layer: float16 only at its ends), a bidirectional one (the two directions' dx added in float32
before the rounding), a wavefront and a persistent kernel; with lengths; an evaluation forward between a training
forward and its backward. Prints one line per case; exits 1 if any is wrong."""

import os
import sys

import numpy as np
import simrt  # noqa: F401 - sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lstmdsl  # noqa: E402

failures = 0
for name, L, options, schedule, lengths in [("vanilla", 2, {}, "precision fp16", None),
                                           ("peephole", 2, {"dropout": 0.3}, "precision fp16", [5, 2, 4]),
                                           ("gru", 1, {"bidirectional": True}, "precision fp16", [3, 5, 1]),
                                           ("gru", 2, {"dropout": 0.3}, "precision fp16", None),
                                           ("peephole", 1, {"bidirectional": True}, "precision fp16", None),
                                           ("vanilla", 2, {"bidirectional": True}, "precision fp16", None),
                                           ("peephole", 2, {}, "precision fp16; wavefront", None),
                                           ("vanilla", 1, {}, "precision fp16; persistent", None)]:
    T, B, I, H = 5, 3, 6, 6
    rng = np.random.default_rng(1)
    x16 = rng.standard_normal((T, B, I)).astype(np.float16)
    runs = []
    for half in (False, True):
        layer = lstmdsl.compile(name, I, H, L, backend="cuda", schedule=schedule, seed=3, **options)
        x = cupy.asarray(x16 if half else x16.astype(np.float32))
        y, final = layer.forward(x, noise=None)
        dy16 = np.random.default_rng(2).standard_normal(y.shape).astype(np.float16)
        masks = layer.last_noise()
        layer.zero_grad()
        y, final = layer.forward(x, noise=masks, lengths=lengths)  # (the same dropout masks in both runs)
        y_eval, _ = layer.forward(x, train=False, lengths=lengths)  # (a backward after it: the training forward's)
        dx = layer.backward(cupy.asarray(dy16 if half else dy16.astype(np.float32)))
        runs.append((np.asarray(y), {k: np.asarray(v) for k, v in final.items()}, np.asarray(dx),
                     {k: np.asarray(g).copy() for k, g in layer.grads().items()}, np.asarray(y_eval)))
    (y32, f32, dx32, g32, e32), (y16, f16, dx16, g16, e16) = runs
    checks = {"y float16": y16.dtype == np.float16 and dx16.dtype == np.float16 and e16.dtype == np.float16,
              "y rounded once": np.array_equal(y16, y32.astype(np.float16)),
              "evaluation y rounded once": np.array_equal(e16, e32.astype(np.float16)),
              "dx rounded once": np.array_equal(dx16, dx32.astype(np.float16)),
              "final states": all(np.array_equal(f16[k], f32[k]) and f16[k].dtype == np.float32 for k in f32),
              "gradients": set(g16) == set(g32) and all(np.array_equal(g16[k], g32[k]) for k in g32)}
    bad = [k for k, ok in checks.items() if not ok]
    failures += bool(bad)
    print(f"{name} L={L} {options} {schedule} lengths={lengths}: {'| OK' if not bad else 'WRONG: ' + ', '.join(bad)}", flush=True)
sys.exit(1 if failures else 0)

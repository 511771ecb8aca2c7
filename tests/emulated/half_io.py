"""Half-precision arrays in and out of the CUDA layer (runtime/layer.py: the engines convert x, y, dy and dx where the
caller's type is not the plan's) through the emulated CUDA runtime: float16 arrays in `precision fp16`, uint16
arrays of bfloat16 bits in `precision bf16` (lstmdsl.arrays.to_bf16_bits). The same layer twice (same seed), once
given float32 x and dy and once their half values; y and dx must be the float32 results rounded to the half type
once, the final states and every gradient identical. A stack run as one op, a stack with dropout between
its layers (layer by layer: the half type only at its ends), a bidirectional one (the two directions' dx added in float32
before the rounding), a wavefront and a persistent kernel; with lengths; an evaluation forward between a training
forward and its backward. Prints one line per case; exits 1 if any is wrong."""

import os
import sys

import numpy as np
import simrt  # noqa: F401 - sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lstmdsl  # noqa: E402
from lstmdsl.arrays import from_io, to_io  # noqa: E402

from lstmdsl.arrays import HALF_ARRAYS  # noqa: E402 (the precision -> the caller's half array type)

CASES = [("vanilla", 2, {}, "", None), ("peephole", 2, {"dropout": 0.3}, "", [5, 2, 4]),
         ("gru", 1, {"bidirectional": True}, "", [3, 5, 1]), ("gru", 2, {"dropout": 0.3}, "", None),
         ("peephole", 1, {"bidirectional": True}, "", None), ("vanilla", 2, {"bidirectional": True}, "", None),
         ("peephole", 2, {}, "; wavefront", None), ("vanilla", 1, {}, "; persistent", None)]
failures = 0
for precision, (name, L, options, mode, lengths) in [(p, c) for p in ("fp16", "bf16") for c in CASES]:
    T, B, I, H = 5, 3, 6, 6
    schedule, half = f"precision {precision}{mode}", HALF_ARRAYS[precision].type
    rng = np.random.default_rng(1)
    xh = to_io(rng.standard_normal((T, B, I)).astype(np.float32), half)
    runs = []
    for given in (np.float32, half):
        layer = lstmdsl.compile(name, I, H, L, backend="cuda", schedule=schedule, seed=3, **options)
        x = cupy.asarray(from_io(xh, given) if given is np.float32 else xh)
        y, final = layer.forward(x, noise=None)
        dyh = to_io(np.random.default_rng(2).standard_normal(y.shape).astype(np.float32), half)
        masks = layer.last_noise()
        layer.zero_grad()
        y, final = layer.forward(x, noise=masks, lengths=lengths)  # (the same dropout masks in both runs)
        y_eval, _ = layer.forward(x, train=False, lengths=lengths)  # (a backward after it: the training forward's)
        dx = layer.backward(cupy.asarray(from_io(dyh, given) if given is np.float32 else dyh))
        runs.append((np.asarray(y), {k: np.asarray(v) for k, v in final.items()}, np.asarray(dx),
                     {k: np.asarray(g).copy() for k, g in layer.grads().items()}, np.asarray(y_eval)))
    (y32, f32, dx32, g32, e32), (yh, fh, dxh, gh, eh) = runs
    checks = {"y in the half type": yh.dtype == half and dxh.dtype == half and eh.dtype == half,
              "y rounded once": np.array_equal(yh, to_io(y32, half)),
              "evaluation y rounded once": np.array_equal(eh, to_io(e32, half)),
              "dx rounded once": np.array_equal(dxh, to_io(dx32, half)),
              "final states": all(np.array_equal(fh[k], f32[k]) and fh[k].dtype == np.float32 for k in f32),
              "gradients": set(gh) == set(g32) and all(np.array_equal(gh[k], g32[k]) for k in g32)}
    bad = [k for k, ok in checks.items() if not ok]
    failures += bool(bad)
    print(f"{name} L={L} {options} {schedule} lengths={lengths}: {'| OK' if not bad else 'WRONG: ' + ', '.join(bad)}", flush=True)
sys.exit(1 if failures else 0)

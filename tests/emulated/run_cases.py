"""Every shipped spec, and specs whose storage is unusual, through the emulated CUDA runtime under
several schedules (with CUDA graphs captured and replayed, and without), against the float64 reference.
Prints one line per case; exits 1 if any is wrong."""

import os
import sys

import numpy as np
import simrt  # sets up the fake CuPy and the emulation

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unusual_specs import UNUSUAL  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.resources import shipped_specs  # noqa: E402

SCHEDULES = [None, "no fuse gates; no hoist input; no fuse pointwise; no batch weights", "fuse recurrent",
             "no hoist input; fuse recurrent; no batch weights"]

failures = total = 0
cases = [(name, path.read_text()) for name, path in shipped_specs().items()] + list(UNUSUAL.items())
for name, text in cases:
    spec = lstmdsl.parse(text)
    P = 3 if spec.uses_size("proj") else None
    for k, schedule in enumerate(SCHEDULES):
        # graphs, two layers and float64 take turns, so every spec meets each of them
        graphs, L, dtype = k % 2 == 0, 1 + (k == 1), "float64" if k == 3 else "float32"
        I = 6 if L > 1 else 5  # stacked layers need states of one size (I = H)
        bad = simrt.check(spec, P=P, I=I, schedule=schedule, verbose=False, graphs=graphs, L=L, dtype=dtype)
        failures += bool(bad)
        total += 1
        print(f"{name} | {schedule or 'default'} | graphs={graphs} L={L} {dtype} | {'OK' if not bad else f'BAD {bad}'}",
              flush=True)
# variable lengths (a mask per step) and both directions, in a stack of two layers
for name in ["vanilla", "peephole", "gru", "lstmp", "layernorm", "slstm"]:
    spec = lstmdsl.parse(shipped_specs()[name].read_text())
    P = 3 if spec.uses_size("proj") else None
    for k, (bidirectional, lengths) in enumerate([(True, None), (False, [4, 1, 3]), (True, [2, 4, 1])]):
        graphs = k != 1
        bad = simrt.check(spec, P=P, I=6, L=2, graphs=graphs, verbose=False, bidirectional=bidirectional,
                          lengths=None if lengths is None else np.array(lengths))
        failures += bool(bad)
        total += 1
        print(f"{name} | bidirectional={bidirectional} lengths={lengths} | graphs={graphs} L=2 | "
              f"{'OK' if not bad else f'BAD {bad}'}", flush=True)
print(f"{total - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

"""Every shipped spec, and specs whose storage is unusual, through the emulated CUDA runtime under
several schedules, against the float64 reference. Prints one line per case; exits 1 if any is wrong."""

import os
import sys

import simrt  # sets up the fake CuPy and the emulation

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unusual_specs import UNUSUAL  # noqa: E402

import lstmdsl
from lstmdsl.resources import shipped_specs

SCHEDULES = [None, "no fuse gates; no hoist input; no fuse pointwise; no batch weights", "fuse recurrent",
             "no hoist input; fuse recurrent; no batch weights"]

failures = 0
cases = [(name, path.read_text()) for name, path in shipped_specs().items()] + list(UNUSUAL.items())
for name, text in cases:
    spec = lstmdsl.parse(text)
    P = 3 if spec.uses_size("proj") else None
    for schedule in SCHEDULES:
        bad = simrt.check(spec, P=P, schedule=schedule, verbose=False)
        failures += bool(bad)
        print(f"{name} | {schedule or 'default'} | {'OK' if not bad else f'BAD {bad}'}", flush=True)
print(f"{len(cases) * len(SCHEDULES) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

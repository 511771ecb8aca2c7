"""The CUDA layer's masks' generator (runtime/draws.py) through the emulated runtime: its state is its key and its
count of draws; restored, the layer draws the masks it drew from that point before; a state of another seed is
refused. Prints "draws: OK"."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simrt  # noqa: E402,F401 - sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

import lstmdsl  # noqa: E402
from lstmdsl import api, draws  # noqa: E402

spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()["zoneout_lstm"].read_text())
layer = api.compile(spec, 5, 6, 2, backend="cuda", seed=3, dropout=0.3)
x = cupy.asarray(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))


def masks():
    layer.forward(x)
    return {k: cupy.asnumpy(v).copy() for k, v in layer.last_noise().items()}


start = layer.noise_state()
assert start == {"key": draws.key_of((3, 0x6E6F6973)), "drawn": 0}, start
first = masks()
after = layer.noise_state()
assert after["drawn"] == sum(v.size for k, v in first.items() if "zoneout" in k) + first["l0.between"].size, after
second = masks()
assert any(not np.array_equal(first[k], second[k]) for k in first)
layer.set_noise_state(after)
assert all(np.array_equal(second[k], v) for k, v in masks().items())
layer.set_noise_state(start)
assert all(np.array_equal(first[k], v) for k, v in masks().items())
for bad, error in (({"key": 1, "drawn": 0}, ValueError), ({"key": start["key"], "drawn": -1}, TypeError),
                   ({"drawn": 0}, KeyError)):
    try:
        layer.set_noise_state(bad)
    except error:
        continue
    raise AssertionError(f"{bad} was not refused")
print("draws: OK")

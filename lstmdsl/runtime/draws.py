"""The regularisers' uniform draws on the GPU: lstmdsl/draws.py's counter-based generator, one launch of
templates/draws.cu.j2 per array (compiled once per process and cached like a program's). The generator's state is
its key and the number of values drawn, so CudaLayer.noise_state can give it to a checkpoint and a resumed run
draws the masks the uninterrupted one would have."""

from __future__ import annotations

import math

import numpy as np

from ..codegen import render_draws
from ..draws import key_of
from . import device
from .device import cupy
from .nvrtc import function, load_module

THREADS = 256
MAX_BLOCKS = 4096  # a grid-stride loop past that many blocks of THREADS
_FUNCTIONS: dict[int, int] = {}


def _function() -> int:
    dev = device.current_device()
    if dev not in _FUNCTIONS:
        _FUNCTIONS[dev] = function(load_module(render_draws()), "lstmdsl_uniform")
    return _FUNCTIONS[dev]


class Uniform:
    """Uniform float32 draws in [0, 1) on the device from the stream of `seed` (an int or a tuple of ints:
    draws.key_of), each call the next values."""

    def __init__(self, seed):
        self.key, self.count = key_of(seed), 0

    def __call__(self, shape):
        out = cupy.empty(shape, np.float32)
        n = math.prod(out.shape)
        if n:
            blocks = min(MAX_BLOCKS, -(-n // THREADS))
            device.launch(_function(), (blocks, 1), THREADS, [("ptr", out.data.ptr), ("u64", n), ("u64", self.key),
                                                              ("u64", self.count)], device.current_stream())
        self.count += n
        return out

    def state(self) -> dict:
        """The generator's state, JSON-able: {"key": the stream, "drawn": values drawn so far}."""
        return {"key": self.key, "drawn": self.count}

    def set_state(self, state) -> None:
        """Restore what state() returned, of the same stream (a ValueError, TypeError or KeyError where it is not
        one)."""
        if state["key"] != self.key:
            raise ValueError(f"the masks' generator in it is of another seed (key {state['key']}, this layer's "
                             f"{self.key})")
        drawn = state["drawn"]
        if not isinstance(drawn, int) or isinstance(drawn, bool) or drawn < 0:
            raise TypeError(f"the masks' generator's count of draws is {drawn!r}, not a count")
        self.count = drawn

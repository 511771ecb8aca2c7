"""Array helpers shared by every module that takes numpy or CuPy arrays, without importing CuPy for numpy
arrays."""

from __future__ import annotations

import numpy as np


def is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(a):
    """numpy or cupy, whichever `a` belongs to."""
    if is_cupy(a):
        import cupy

        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A numpy copy of a numpy or CuPy array (or anything numpy can read)."""
    return a.get() if is_cupy(a) else np.array(a)

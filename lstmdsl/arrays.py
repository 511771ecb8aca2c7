"""Array helpers shared by every module that takes numpy or CuPy arrays, without importing CuPy for numpy
arrays."""

from __future__ import annotations

import numpy as np

from .errors import UsageError


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


HALF_ARRAYS = {"fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}  # a precision -> the layer API's half
# array type for x, y, dy and dx (bf16: uint16 arrays of bfloat16 bits, as numpy and CuPy have no bfloat16)


def to_bf16_bits(a):
    """bfloat16 values of a float array (numpy or CuPy), as the uint16 array of their bits: what the layer API takes
    and returns for x, y, dy and dx under `precision bf16`, as neither numpy nor CuPy has a bfloat16 type. Rounded
    from float32 to nearest, ties to even, as the kernels and torch round (float64 is rounded to float32 first, as
    torch's conversion does too); NaN stays NaN. Integer arrays are refused (a uint16 one may already be bits). From
    a torch bfloat16 tensor t the same bits are `cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)`."""
    xp = array_module(a)
    if getattr(a, "dtype", np.dtype(np.float32)).kind != "f":
        raise UsageError(f"to_bf16_bits rounds floats, got an array of {a.dtype}"
                         + (" (bfloat16 bits already?)" if a.dtype == np.uint16 else ""))
    f = xp.asarray(a, np.float32)
    bits = f.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)  # (no overflow:
    return xp.where(xp.isnan(f), np.uint16(0x7FC0), rounded)  # only a NaN's bits reach 0xFFFF8000 + 0x8000)


def from_bf16_bits(bits, dtype=np.float32):
    """The values (float32, exact, or dtype) of a uint16 array of bfloat16 bits (numpy or CuPy): to_bf16_bits's
    inverse."""
    if getattr(bits, "dtype", None) != np.uint16:
        raise UsageError(f"bfloat16 bits come as a uint16 array, got {getattr(bits, 'dtype', type(bits).__name__)}")
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)


def to_io(a, dtype):
    """a (float, or already of dtype: returned as it is) in a caller's array type: bfloat16 bits where that is uint16
    (see to_bf16_bits), else a cast."""
    if a.dtype == dtype:
        return a
    return to_bf16_bits(a) if np.dtype(dtype) == np.uint16 else a.astype(dtype)


def from_io(a, dtype):
    """A caller's array (bfloat16 bits where uint16) as values of dtype."""
    return from_bf16_bits(a, dtype) if a.dtype == np.uint16 and dtype != np.uint16 else a.astype(dtype, copy=False)

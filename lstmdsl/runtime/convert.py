"""Converting copies between element types (mixed precision): f32 to and from bf16 or f16, row by row.

The kernels are fixed (templates/convert.cu.j2, compiled once per process and cached like a program's).
The executor converts where the plan has a copy between buffers of two types, and where the caller's
arrays (float32 in the CuPy API) meet half-precision buffers; CudaLayer refreshes the half copies of its
master weights with them.
"""

from __future__ import annotations

import math

from ..codegen import convert_name, render_conversions
from ..plan import ELEMENT_TYPES
from . import device
from .nvrtc import function, load_module

THREADS = 128
MAX_GRID_Y = 65535
_FUNCTIONS: dict[tuple[int, str], int] = {}


def _function(name: str) -> int:
    key = (device.current_device(), name)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = function(load_module(render_conversions()), name)
    return _FUNCTIONS[key]


def convert_rows(dst: int, dst_pitch: int, dst_type: str, src: int, src_pitch: int, src_type: str, n: int,
                 rows: int, stream: int) -> None:
    """dst[r, :n] = src[r, :n] for `rows` rows, converted from src_type to dst_type; pitches in bytes."""
    if src_type == dst_type:
        device.copy_rows(dst, dst_pitch, src, src_pitch, n * ELEMENT_TYPES[src_type], rows, stream)
        return
    if n == 0 or rows == 0:
        return
    fn = _function(convert_name(src_type, dst_type))
    device.launch(fn, (math.ceil(n / THREADS), min(rows, MAX_GRID_Y)), THREADS,
                  [("ptr", dst), ("int", dst_pitch // ELEMENT_TYPES[dst_type]), ("ptr", src),
                   ("int", src_pitch // ELEMENT_TYPES[src_type]), ("int", n), ("int", rows)], stream)

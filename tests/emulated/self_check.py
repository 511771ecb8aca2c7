"""The emulator's own memory checks, on arrays of the fake CuPy: a kernel's column stores land where a store a column
at a time puts them (the whole block at once for columns 0..n-1, one column at a time for a slot stored head by
head), additions included; a store or load past an allocation raises. Prints "emulator: OK"."""
import numpy as np

import simrt  # sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

rng = np.random.default_rng(0)
rows, ld, n = 3, 11, 7
for dtype in ("f32", "f64", "bf16", "f16"):
    for cols in (np.arange(n), (np.arange(n) // 2) * 3 + np.arange(n) % 2):  # (heads of 2 elements, 3 apart)
        for add in (False, True):
            a = cupy.asarray(rng.standard_normal((rows, ld)).astype(np.float32)).astype(simrt.NP[dtype])
            b = cupy.asarray(np.array(a))
            values = rng.standard_normal((rows, n))
            simrt.store_cols(a.data.ptr, rows, cols, ld, dtype, values, add=add)
            item = np.dtype(simrt.NP[dtype]).itemsize
            for k, c in enumerate(cols):  # the reference: a column at a time
                simrt.store(b.data.ptr + item * int(c), rows, 1, ld, dtype, values[:, k:k + 1], add=add)
            assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)), (dtype, cols, add)
            assert np.array_equal(simrt.load_cols(a.data.ptr, rows, cols, ld, dtype),
                                  simrt.to_float(np.asarray(a)[:, cols], dtype), equal_nan=True), (dtype, cols)
small = cupy.zeros((2, 4), np.float32)
for what, call in (("store", lambda: simrt.store_cols(small.data.ptr, 2, np.arange(5), 4, "f32", 1.0)),
                   ("column store", lambda: simrt.store_cols(small.data.ptr, 3, np.array([0, 2]), 4, "f32", 1.0)),
                   ("load", lambda: simrt.load(small.data.ptr + 4, 2, 4, 4, "f32"))):
    try:
        call()
    except AssertionError as e:
        assert "out of bounds" in str(e), (what, e)
    else:
        raise SystemExit(f"emulator: a {what} past its allocation went unnoticed")
print("emulator: OK")

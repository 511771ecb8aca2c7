"""The regularisers' uniform draws on the CUDA backend, as a counter-based generator: draw i of the stream with key
k is SplitMix64's output for state k + (i + 1) * GAMMA (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014: the finaliser of MurmurHash3 with Stafford's constants), its top 24 bits a float32 in
[0, 1) (a multiple of 2^-24). A draw depends on its key and its index only, so the generator's whole state is the
key and the number of values drawn so far: a checkpoint saves it and a resumed run draws the masks the
uninterrupted one would have (CuPy's generator has no state to read back), and any draws can be made in any
order or in pieces. templates/draws.cu.j2 computes the same values on the GPU bit for bit; this module's numpy
twin is what the tests and the emulated runtime compare with.
"""

from __future__ import annotations

import math

import numpy as np

GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (the golden ratio's fraction in 64 bits)
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
SCALE = 2.0 ** -24  # a draw's 24 bits as a float32 fraction
MASK64 = (1 << 64) - 1


def key_of(seed) -> int:
    """A stream's 64-bit key from a seed (an int, or a tuple of ints as np.random.SeedSequence takes them)."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def uniform(key: int, offset: int, shape) -> np.ndarray:
    """Draws offset, offset + 1, ... of the stream `key` as float32 in [0, 1), in an array of `shape`."""
    n = math.prod(shape) if isinstance(shape, tuple) else int(shape)
    if not (0 <= key <= MASK64 and offset >= 0):
        raise ValueError(f"a draw needs a 64-bit key and an offset >= 0, got key {key}, offset {offset}")
    with np.errstate(over="ignore"):  # (uint64 arithmetic wraps, as on the GPU)
        index = np.arange(1, n + 1, dtype=np.uint64) + np.uint64(offset % (1 << 64))
        z = np.uint64(key) + index * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float32) * np.float32(SCALE)).reshape(shape)

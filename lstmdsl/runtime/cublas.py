"""cuBLAS, called directly through ctypes with a handle of our own per device.

CuPy's wrappers call cublasSetStream with a guard that refuses stream capture, so a step loop that goes
through them cannot become a CUDA graph. cuBLAS itself can be captured once the handle has a workspace
of its own (no allocation inside the capture) and its scalars are read from host memory.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import BackendUnavailable, LstmdslError
from .device import current_device, empty

# element type -> cudaDataType; compute type -> (cublasComputeType, numpy type of the scalars alpha, beta)
DATA_TYPES = {"f32": 0, "f64": 1, "bf16": 14, "f16": 2}  # CUDA_R_32F, CUDA_R_64F, CUDA_R_16BF, CUDA_R_16F
COMPUTE_TYPES = {"fp32": (68, np.float32), "tf32": (77, np.float32), "f64": (70, np.float64)}
_GEMM_DEFAULT = -1  # CUBLAS_GEMM_DEFAULT
_SCALARS = {name: (np.ones(1, t), np.zeros(1, t)) for name, (_, t) in COMPUTE_TYPES.items()}


def _load_libcublas() -> ctypes.CDLL:
    """The libcublas CuPy uses (it loads it from the CUDA toolkit or the nvidia-cublas wheel)."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401 - makes CuPy load the library

    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "libcublas.so" in path and "Lt" not in path:
                return ctypes.CDLL(path)
    raise BackendUnavailable("cannot find the cuBLAS library that CuPy loaded")


class _Handle:
    WORKSPACE = 32 << 20

    def __init__(self):
        lib = _load_libcublas()
        vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetPointerMode_v2.argtypes = [vp, i]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, sz]
        lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
        ll = ctypes.c_longlong
        lib.cublasGemmStridedBatchedEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, ll, vp, i, i, ll, vp, vp, i, i, ll,
                                                   i, i, i]
        self.lib = lib
        self.handle = vp()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetPointerMode_v2(self.handle, 0), "cublasSetPointerMode")  # host scalars
        self.workspace = empty((self.WORKSPACE,), np.uint8)
        self.stream = None

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise LstmdslError(f"{what} failed with cuBLAS status {status}")

    def set_stream(self, stream: int) -> None:
        if stream != self.stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
            # cublasSetStream resets the workspace to cuBLAS's default pool: set ours again
            self._check(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, self.WORKSPACE),
                        "cublasSetWorkspace")
            self.stream = stream


_HANDLES: dict[tuple[int, int], _Handle] = {}
_LANES: dict[tuple[int, int, int], int] = {}  # (device, stream, part) -> lane
MAX_LANES = 16  # the most parts one call spreads over streams of its own (a wavefront's layers)
LANES = 64  # handles (and 32 MB workspaces, made on first use) per device before lanes are shared in turn


def lane(stream: int, part: int = 0) -> int:
    """The lane of the GEMMs issued for a stream: one per stream, in order of first use, so that work on
    two streams never shares a cuBLAS workspace. part: work that a call on `stream` spreads over streams of
    its own (a stack's layers in a wavefront) takes a lane per part. The streams are the callers' and the
    device's one side stream (device.side_stream), so the lanes in use stay few: a caller's stream with a
    16-layer wavefront and the side stream take 17. Past LANES (a process issuing from more than three
    streams with 16-layer wavefronts) lanes are shared in turn, and two streams running at once could then
    share a workspace."""
    key = (current_device(), stream, part)
    if key not in _LANES:
        _LANES[key] = sum(1 for k in _LANES if k[0] == key[0]) % LANES
    return _LANES[key]


def gemm(M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool, c: int, ldc: int,
         accumulate: bool, types: tuple[str, str, str, str], stream: int, lane: int = 0) -> None:
    """Row-major C[M, N] (+)= op(A) @ op(B) on device addresses, types (A, B, C, compute): column-major
    cuBLAS with the operands swapped (C^T = op(B)^T op(A)^T). lane: GEMMs that may run at the same time on
    two streams take two lanes, each a handle with its own workspace (a graph keeps the workspace it was
    captured with, so the lane of the stream it is replayed on, not the capture stream, chooses it)."""
    key = (current_device(), lane)
    h = _HANDLES.get(key)
    if h is None:
        h = _HANDLES[key] = _Handle()
    h.set_stream(stream)
    a_type, b_type, c_type, compute = types
    one, zero = _SCALARS[compute]
    status = h.lib.cublasGemmEx(
        h.handle, int(trans_b), int(trans_a), N, M, K, one.ctypes.data,
        b, DATA_TYPES[b_type], ldb, a, DATA_TYPES[a_type], lda, (one if accumulate else zero).ctypes.data,
        c, DATA_TYPES[c_type], ldc, COMPUTE_TYPES[compute][0], _GEMM_DEFAULT)
    h._check(status, f"cublasGemmEx ({M}x{N}x{K})")


def gemm_batched(M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool, c: int,
                 ldc: int, accumulate: bool, types: tuple[str, str, str, str], stream: int, lane: int,
                 count: int, strides: tuple[int, int, int]) -> None:
    """`count` GEMMs as gemm() computes one, the i-th on A + i * strides[0], B + i * strides[1] and
    C + i * strides[2] (strides in elements): the blocks of a block-diagonal matrix."""
    key = (current_device(), lane)
    h = _HANDLES.get(key)
    if h is None:
        h = _HANDLES[key] = _Handle()
    h.set_stream(stream)
    a_type, b_type, c_type, compute = types
    one, zero = _SCALARS[compute]
    sa, sb, sc = strides
    status = h.lib.cublasGemmStridedBatchedEx(
        h.handle, int(trans_b), int(trans_a), N, M, K, one.ctypes.data,
        b, DATA_TYPES[b_type], ldb, sb, a, DATA_TYPES[a_type], lda, sa, (one if accumulate else zero).ctypes.data,
        c, DATA_TYPES[c_type], ldc, sc, count, COMPUTE_TYPES[compute][0], _GEMM_DEFAULT)
    h._check(status, f"cublasGemmStridedBatchedEx ({count} x {M}x{N}x{K})")

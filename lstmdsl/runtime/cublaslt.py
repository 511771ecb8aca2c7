"""cuBLASLt's kernels for one GEMM shape, through ctypes: the candidates its heuristic lists and a call of one.

cublasGemmEx (runtime/cublas.py) runs the one kernel cuBLAS's heuristic picks for a shape (its algorithm argument
changes nothing on sm_90); cuBLASLt lists several (tile shapes, split-K), and cublas.tune may time them where
LSTMDSL_GEMM_LT=1 (off by default: on an H100 it took FGR's fp32 forward at B = 64, H = 512 to 0.90x its time
and left the other cells at 0.98-1.01x, benchmarks/results/probes/lt_choice_h100.txt). A Kernel holds its
descriptors, made once outside any capture; a call only passes them, so it can be captured into a CUDA graph.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from ..errors import LstmdslError

_R_TYPES = {"f32": 0, "f64": 1, "bf16": 14, "f16": 2}  # cudaDataType of an element type
_COMPUTE = {"fp32": (68, 0), "tf32": (77, 0), "f64": (70, 1)}  # compute -> (cublasComputeType, scale cudaDataType)
_DESC_TRANSA, _DESC_TRANSB, _PREF_MAX_WORKSPACE = 3, 4, 1  # cublasLt.h (CUDA 12 and 13)
_CAP_MIN_ALIGNMENT = {"A": 16, "B": 17, "C": 18, "D": 19}  # cublasLtMatmulAlgoCapAttributes_t (uint32 each)
CANDIDATES = 8  # the heuristic's first kernels timed per shape


class _Heuristic(ctypes.Structure):  # cublasLtMatmulHeuristicResult_t
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


@dataclass(frozen=True, eq=False)
class Kernel:
    """One cuBLASLt kernel for one GEMM shape: the operation's descriptors and the algorithm (64 bytes; `key`,
    its bytes as hex, names it in the stored choices)."""

    desc: int
    layouts: tuple[int, int, int]  # cuBLAS's A (our B), its B (our A), C and D
    algo: ctypes.Array  # cublasLtMatmulAlgo_t
    workspace: int  # bytes it needs
    alignment: tuple[int, int, int]  # the bytes our A, B and C's addresses must be multiples of (its caps)

    def fits(self, a: int, b: int, c: int) -> bool:
        """Whether the kernel runs on these addresses (a step's operands lie at offsets of the buffers)."""
        return all(address % need == 0 for address, need in zip((a, b, c), self.alignment))

    @property
    def key(self) -> str:
        return bytes(self.algo).hex()


_LIB: list = []
_HANDLES: dict[int, ctypes.c_void_p] = {}  # device -> cublasLtHandle_t


def enabled() -> bool:
    return os.environ.get("LSTMDSL_GEMM_LT", "0") == "1"


def load(libcublas: str) -> None:
    """Loads libcublasLt from the folder of `libcublas`, the path of the libcublas CuPy loaded (runtime/cublas.py
    finds it; libcublas needs libcublasLt, so that one is loaded too); before candidates."""
    if not _LIB:
        folder, name = os.path.split(libcublas)
        try:  # (the cuBLASLt of the same version: libcublas.so.13 -> libcublasLt.so.13)
            lib = ctypes.CDLL(os.path.join(folder, name.replace("libcublas", "libcublasLt", 1)))
        except OSError as e:
            raise LstmdslError(f"cannot load the cuBLASLt beside {libcublas} ({e})") from None
        vp, u64, i64, i, sz = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
        lib.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), i, u64, u64, i64]
        lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), i, i]
        lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, i, vp, sz]
        lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, i, vp, sz]
        lib.cublasLtMatmulPreferenceDestroy.argtypes = [vp]
        lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, i, ctypes.POINTER(_Heuristic),
                                                       ctypes.POINTER(i)]
        lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp]
        lib.cublasLtMatmulAlgoCapGetAttribute.argtypes = [vp, i, vp, sz, ctypes.POINTER(sz)]
        _LIB.append(lib)


def _lib() -> ctypes.CDLL:
    if not _LIB:
        raise LstmdslError("cuBLASLt is not loaded (runtime.cublaslt.load)")
    return _LIB[0]


def _check(status: int, what: str) -> None:
    if status != 0:
        raise LstmdslError(f"{what} failed with cuBLAS status {status}")


def _handle(device: int) -> ctypes.c_void_p:
    if device not in _HANDLES:
        h = ctypes.c_void_p()
        _check(_lib().cublasLtCreate(ctypes.byref(h)), "cublasLtCreate")
        _HANDLES[device] = h
    return _HANDLES[device]


def _layout(element: str, rows: int, cols: int, ld: int) -> int:
    d = ctypes.c_void_p()
    _check(_lib().cublasLtMatrixLayoutCreate(ctypes.byref(d), _R_TYPES[element], rows, cols, ld),
           "cublasLtMatrixLayoutCreate")
    return d.value


def candidates(device: int, M: int, N: int, K: int, lda: int, trans_a: bool, ldb: int, trans_b: bool, ldc: int,
               types: tuple[str, str, str, str], max_workspace: int) -> list[Kernel]:
    """The heuristic's first CANDIDATES kernels for row-major C[M, N] (+)= op(A) @ op(B), operands swapped as
    cublas.gemm swaps them (column-major C^T = op(B)^T op(A)^T), that need at most max_workspace bytes."""
    lib = _lib()
    a_type, b_type, c_type, compute = types
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), *_COMPUTE[compute]), "cublasLtMatmulDescCreate")
    for attr, flag in ((_DESC_TRANSA, trans_b), (_DESC_TRANSB, trans_a)):
        value = ctypes.c_int(int(flag))
        _check(lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), 4), "cublasLtMatmulDescSetAttribute")
    # as stored, column-major: cuBLAS's A is op^-1 of [N x K], its B op^-1 of [K x M], C and D [N x M]
    layouts = (_layout(b_type, *((K, N) if trans_b else (N, K)), ldb),
               _layout(a_type, *((M, K) if trans_a else (K, M)), lda), _layout(c_type, N, M, ldc))
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    try:
        size = ctypes.c_size_t(max_workspace)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE, ctypes.byref(size), 8),
               "cublasLtMatmulPreferenceSetAttribute")
        found, count = (_Heuristic * CANDIDATES)(), ctypes.c_int()
        status = lib.cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, layouts[0], layouts[1], layouts[2],
                                                    layouts[2], pref, CANDIDATES, found, ctypes.byref(count))
    finally:
        lib.cublasLtMatmulPreferenceDestroy(pref)
    if status != 0:  # (no kernel for the shape: cuBLAS's own way stays)
        return []
    kernels = []
    for k in range(count.value):
        if found[k].state == 0 and found[k].workspace <= max_workspace:
            algo = (ctypes.c_uint64 * 8)(*found[k].algo)
            need = {m: _cap(algo, attr) for m, attr in _CAP_MIN_ALIGNMENT.items()}  # (cuBLAS's A is our B)
            kernels.append(Kernel(desc.value, layouts, algo, found[k].workspace,
                                  (need["B"], need["A"], max(need["C"], need["D"]))))
    return kernels


def first(libcublas: str, device: int, shape: tuple, types: tuple[str, str, str, str], limit: int, workspace: int,
          addresses: tuple[int, int, int]) -> Kernel | None:
    """The heuristic's first kernel for shape (M, N, K, lda, trans_a, ldb, trans_b, ldc) with a `limit` of workspace,
    where it needs at most `workspace` bytes and runs on the addresses (A, B, C), else None (loaded from beside
    `libcublas` first: load). With the limit cuBLAS recommends, it is the kernel cublasGemmEx runs."""
    load(libcublas)
    kernels = candidates(device, *shape, types, limit)
    k = kernels[0] if kernels else None
    return k if k is not None and k.workspace <= workspace and k.fits(*addresses) else None


def _cap(algo: ctypes.Array, attr: int) -> int:
    value, written = ctypes.c_uint32(0), ctypes.c_size_t()
    _check(_lib().cublasLtMatmulAlgoCapGetAttribute(ctypes.byref(algo), attr, ctypes.byref(value), 4,
                                                    ctypes.byref(written)), "cublasLtMatmulAlgoCapGetAttribute")
    return max(1, value.value)


def run(device: int, kernel: Kernel, a: int, b: int, c: int, accumulate: bool, scalars: tuple, workspace: int,
        workspace_bytes: int, stream: int) -> None:
    """C (+)= the product, by `kernel` (from candidates for this shape and these types); scalars: (one, zero) as
    numpy arrays of the compute type's scalar type (host memory)."""
    one, zero = scalars
    b_desc, a_desc, c_desc = kernel.layouts
    _check(_lib().cublasLtMatmul(_handle(device), kernel.desc, one.ctypes.data, b, b_desc, a, a_desc,
                                 (one if accumulate else zero).ctypes.data, c, c_desc, c, c_desc,
                                 ctypes.byref(kernel.algo), workspace, workspace_bytes, stream), "cublasLtMatmul")

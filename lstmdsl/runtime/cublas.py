"""cuBLAS, called directly through ctypes with a handle of our own per device.

CuPy's wrappers call cublasSetStream with a guard that refuses stream capture, so a step loop that goes
through them cannot become a CUDA graph. cuBLAS itself can be captured once the handle has a workspace
of its own (no allocation inside the capture) and its scalars are read from host memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import warnings

import numpy as np

from ..cache import cache_dir, write_bytes_atomically
from ..errors import BackendUnavailable, LstmdslError
from ..plan import ELEMENT_TYPES, HALF_TYPES, GemmWorkspace
from . import cublaslt
from .device import cupy_stream, current_device, empty, relaxed_capture
from .warmup import settle as settle_warm_up

# element type -> cudaDataType; compute type -> (cublasComputeType, numpy type of the scalars alpha, beta)
DATA_TYPES = {"f32": 0, "f64": 1, "bf16": 14, "f16": 2}  # CUDA_R_32F, CUDA_R_64F, CUDA_R_16BF, CUDA_R_16F
COMPUTE_TYPES = {"fp32": (68, np.float32), "tf32": (77, np.float32), "f64": (70, np.float64)}
_GEMM_DEFAULT = -1  # CUBLAS_GEMM_DEFAULT
_WORKSPACE = GemmWorkspace()  # the plan's default sizes (built once: _shape_key compares with it at every call)
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
    """A cuBLAS handle on one device with a workspace of nbytes (the plan's choice: plan.GemmWorkspace; default
    cuBLAS's recommended size on sm_90). nbytes = 0, bare: without one, so cuBLAS chooses among the kernels that
    need none (tune)."""

    def __init__(self, nbytes: int = _WORKSPACE.full):
        self.bare = nbytes == 0
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
        with relaxed_capture():  # (the first GEMM on a stream that torch captures: the graph keeps these)
            self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
            self._check(lib.cublasSetPointerMode_v2(self.handle, 0), "cublasSetPointerMode")  # host scalars
            self.workspace = None if self.bare else empty((nbytes,), np.uint8)
        self.stream = None
        self.uses = 0  # times _handle gave it out (workspace_uses)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise LstmdslError(f"{what} failed with cuBLAS status {status}")

    def set_stream(self, stream: int) -> None:
        if stream != self.stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
            # cublasSetStream resets the workspace to cuBLAS's default pool: set ours again
            self._check(self.lib.cublasSetWorkspace_v2(self.handle, None if self.bare else self.workspace.data.ptr,
                                                       0 if self.bare else self.workspace.nbytes), "cublasSetWorkspace")
            self.stream = stream


_HANDLES: dict[tuple[int, int, int], _Handle] = {}  # (device, lane, workspace bytes) -> handle


def workspace_for(types: tuple[str, ...], workspace: int | None = None) -> int:
    """The workspace bytes of GEMMs of `types`: `workspace` (the plan's choice, plan.GemmWorkspace), or where a
    caller gives none the plan's rule at a large batch (their A operand's type chooses: half or full)."""
    if workspace is not None:
        return workspace
    return _WORKSPACE.half if types[0] in HALF_TYPES else _WORKSPACE.full


def _handle(lane: int, bare: bool = False, types: tuple[str, ...] = ("f32",), workspace: int | None = None) -> _Handle:
    """The handle of a lane for GEMMs of `types` with a workspace of workspace_for(types, workspace) bytes, or
    the lane's bare one."""
    settle_warm_up()  # (the warm-up's thread makes lane 0's bare handle: no handle is shared between two threads)
    key = (current_device(), lane, 0 if bare else workspace_for(types, workspace))
    h = _HANDLES.get(key)
    if h is None:
        h = _HANDLES[key] = _Handle(key[2])
    h.uses += 1
    return h


def workspace_uses() -> dict[int, tuple[int, int]]:
    """id -> (uses, bytes) of every handle with a workspace. A workspace is made on first use and kept by the
    process, so a memory pool counts it only in the work that made it; two readings, before and after some work,
    tell which workspaces made before it that work used (workspaces_reused; the benchmarks' memory figures)."""
    return {id(h): (h.uses, h.workspace.nbytes) for h in _HANDLES.values() if h.workspace is not None}


def workspaces_reused(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> int:
    """Bytes of the workspaces in both readings of workspace_uses that were given out between them."""
    return sum(nbytes for i, (uses, nbytes) in after.items() if i in before and uses > before[i][0])


def warm(device: int) -> None:
    """cuBLAS's one-time start (warmup.py): lane 0's bare handle on `device` made, and one small GEMM in strict
    fp32 run on a stream of its own and waited for; on the warm-up's thread. Bare: a process that runs only
    half-precision GEMMs would otherwise keep an fp32 workspace it never uses."""
    import cupy

    cupy.cuda.runtime.setDevice(device)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        h = _Handle(0)
        n = 64
        scratch = cupy.zeros((3, n, n), np.float32)
        a, b, c = (int(scratch[i].data.ptr) for i in range(3))
        _gemm(h, n, n, n, a, n, False, b, n, True, c, n, False, ("f32", "f32", "f32", "fp32"), stream.ptr)
        stream.synchronize()
        del scratch
    h.stream = None  # (the next set_stream sets the caller's stream and the workspace again)
    _HANDLES.setdefault((device, 0, 0), h)


# Per-step GEMMs are narrow, and for some shapes cuBLAS's heuristic, given a workspace, picks a kernel many
# times slower than the one it picks without one (measured on the H200 in strict fp32, us per call in a
# CUDA graph, with / without the workspace: [16, 128] x [128, 512] 24.6 / 2.3, [16, 512] x [512, 128] 53.1 /
# 5.9, [64, 32] x [32, 128] 9.0 / 2.6, [16, 256] x [256, 1024] 6.2 / 3.4; but [16, 1024] x [1024, 256] 7.1 /
# 10.6 and [64, 2048] x [2048, 512] 9.5 / 39.5; CUBLAS_GEMM_ALGO0-23, the pedantic compute type and math mode
# change nothing on sm_90). So the runtime times each per-step GEMM shape both ways once per process, before
# any capture (tune, called by the executor), and runs the faster one (gemm). A shape not timed (a capture
# began first, or it is large) runs with the workspace, as cuBLAS would by default.
TUNE_MAX_WORK = 1 << 28  # multiply-adds: larger GEMMs keep the workspace untimed (their kernels were the same)
TUNE_MARGIN = 0.9  # the bare handle must take less than this fraction of the other's time to be chosen
_BARE: dict[tuple, bool] = {}  # (device, shape, layout, types, workspace bytes) -> run on the bare handle
# Where LSTMDSL_GEMM_LT=1, tune also times cuBLASLt's first kernels for the shape (runtime/cublaslt.py) against the
# way it chose, and gemm() runs one that takes less than TUNE_MARGIN of that time (not the default: measured on an
# H100 only, where it moved FGR's fp32 forward alone, 0.90x; benchmarks/probe_cublaslt.py compares the kernels)
_LT: dict[tuple, cublaslt.Kernel | None] = {}  # shape key -> the cuBLASLt kernel it runs (None: cuBLAS's own way)
# Where the plan says so (`first`: GemmWorkspace.first_kernels, a wavefront's lanes), a shape not run bare runs
# cuBLASLt's first kernel for the plan's `full` limit, untimed (cublasGemmEx's with `full`), on that workspace where it
# needs no more; else as cublasGemmEx chooses (GemmWorkspace.gemmex).
_FIRST: dict[tuple, cublaslt.Kernel | None] = {}  # shape key -> that kernel, None where it needs more (or none listed)


def _shape_key(M, N, K, lda, trans_a, ldb, trans_b, ldc, accumulate, types, workspace: int, first=None) -> tuple:
    """A shape's key in this process's choices (last the workspace's bytes, before it first kernels' limit if new)."""
    limit = () if not first or first.full == _WORKSPACE.full else (("limit", first.full),)
    return (current_device(), M, N, K, lda, bool(trans_a), ldb, bool(trans_b), ldc, bool(accumulate), tuple(types),
            *limit, workspace)


def _time(call, stream: int) -> float:
    """Milliseconds per call of call(stream): 20 calls captured into a CUDA graph, the median of 3 launches."""
    from ..timing import time_gpu
    from .device import Graph

    graph = Graph(lambda side: [call(side) for _ in range(20)], stream)
    with cupy_stream(stream):  # (time_gpu's events go on the current stream)
        return time_gpu(lambda: graph.launch(stream), repeat=3, warmup=1)["ms"] / 20


CHOICES = "gemm_choices.json"  # in the cache directory: the choices timed by earlier processes
_STORED: dict | None = None  # its contents once read: "(GPU, cuBLAS version, shape...)" -> bare


def tune(M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool, ldc: int,
         accumulate: bool, types: tuple[str, str, str, str], stream: int, lane: int = 0,
         workspace: int | None = None, first: GemmWorkspace | None = None, c: int = 0) -> bool:
    """Times gemm()'s shape with and without a workspace of workspace_for(types, workspace) bytes (into a scratch
    result: a and b are only read) and keeps the faster for every later gemm() of that shape in this process, and
    in the cache directory for later processes on the same GPU model and cuBLAS version (gemm_choices.json: they
    run the same kernels without timing them again; delete it to time again). Returns whether it runs bare. Not
    while `stream` is being captured (the caller checks): it also makes the lane's handle for the choice here, so
    that no handle is created inside a capture. LSTMDSL_TUNE_GEMMS=0 in the environment keeps cuBLAS's default
    everywhere (the same kernels in every process whatever the cache holds). first: the plan's rule where its
    first_kernels holds for this workspace: the shape's kernel found here (_FIRST, at c too), bare timed against it."""
    workspace = workspace_for(types, workspace)
    key = _shape_key(M, N, K, lda, trans_a, ldb, trans_b, ldc, accumulate, types, workspace, first)
    tuning = os.environ.get("LSTMDSL_TUNE_GEMMS", "1") != "0"
    timed = tuning and M * N * K <= TUNE_MAX_WORK
    if first and tuning and key not in _FIRST:
        _FIRST[key] = _first_kernel(M, N, K, a, lda, trans_a, b, ldb, trans_b, c, ldc, types, first.full, workspace)
    other = workspace if not first or _FIRST.get(key) else first.gemmex(workspace, key in _FIRST)  # (bare's rival)
    if key not in _BARE:
        if not timed:
            _BARE[key] = False
        else:
            stored = _stored_key(lane, key, first)
            if stored not in _stored_choices():
                bare = _faster_bare(M, N, K, a, lda, trans_a, b, ldb, trans_b, ldc, accumulate, types, stream, lane,
                                    other, _FIRST.get(key, False))
                if bare is not None:
                    _store(stored, bare)
            _BARE[key] = _stored_choices().get(stored, False)
    _handle(lane, _BARE[key], types, other)
    if timed and key not in _LT and cublaslt.enabled() and not (first and not _BARE[key]):  # (_FIRST's way there)
        _LT[key] = _lt_choice(_stored_key(lane, key), key, M, N, K, a, lda, trans_a, b, ldb, trans_b, ldc,
                              accumulate, types, stream, lane)
    return _BARE[key]


def _stored_key(lane: int, key: tuple, first: GemmWorkspace | None = None) -> str:
    """A shape's key in the stored choices: the GPU, cuBLAS's version and the workspace's size (cuBLAS's choice of
    kernel depends on it) with the shape; "first" and the fallback's size where bare was timed against _FIRST's way."""
    way = ("first", first.fallback(key[-1])) if first else ()
    return repr((_identity(lane), key[-1]) + way + key[1:-1])


_IDENTITY: dict[int, tuple[str, int]] = {}  # device -> _identity


def _identity(lane: int) -> tuple[str, int]:
    """(the GPU's name, cuBLAS's version): what the stored choices hold for."""
    device = current_device()
    if device not in _IDENTITY:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
        h = _handle(lane, bare=True)  # (no workspace made for the question)
        version = ctypes.c_int()
        h.lib.cublasGetVersion_v2.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        h._check(h.lib.cublasGetVersion_v2(h.handle, ctypes.byref(version)), "cublasGetVersion")
        _IDENTITY[device] = (name.decode() if isinstance(name, bytes) else str(name)), version.value
    return _IDENTITY[device]


LT_CHOICES = "gemm_lt_choices.json"  # stored key -> the cuBLASLt kernel's algorithm as hex ("": cuBLAS's own way)
_STORED_LT: dict | None = None


def _read_choices(name: str = CHOICES, kind: type = bool) -> dict:
    try:
        data = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):  # none yet, unreadable or damaged: time again (and write it anew)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, kind)} if isinstance(data, dict) else {}


def _stored_choices() -> dict:
    global _STORED
    if _STORED is None:
        _STORED = _read_choices()
    return _STORED


def _store(key: str, bare: bool) -> None:
    """Adds a choice to the file (what other processes wrote since this one read it kept; a cache directory
    that cannot be written keeps the choice in this process only)."""
    global _STORED
    _STORED = _written(CHOICES, bool, _stored_choices(), key, bare)


def _store_lt(key: str, algo: str) -> None:
    """As _store, in LT_CHOICES."""
    global _STORED_LT
    _STORED_LT = _written(LT_CHOICES, str, _STORED_LT or {}, key, algo)


def _written(name: str, kind: type, held: dict, key: str, value) -> dict:
    """The choices file `name` as it is now, this process's `held` choices and key: value over it, written back
    and returned."""
    merged = {**_read_choices(name, kind), **held, key: value}
    write_bytes_atomically(cache_dir() / name, (json.dumps(merged, indent=0, sort_keys=True) + "\n").encode())
    return merged


def _lt_choice(stored: str, key: tuple, M, N, K, a, lda, trans_a, b, ldb, trans_b, ldc, accumulate, types, stream,
               lane) -> cublaslt.Kernel | None:
    """The cuBLASLt kernel the shape runs, or None for the way tune chose: the stored choice, else the fastest of
    the heuristic's first kernels where it takes less than TUNE_MARGIN of that way's time (timed as _faster_bare
    times, at the tuned addresses, and stored). The kernels' descriptors are made here, outside any capture. A
    failure anywhere keeps cuBLAS's own way, with a warning."""
    global _STORED_LT
    h = _handle(lane, False, types, key[-1])
    try:
        cublaslt.load(_load_libcublas()._name)
    except LstmdslError as e:
        warnings.warn(f"lstmdsl: LSTMDSL_GEMM_LT=1 but {e}; the GEMMs run as cuBLAS chooses", stacklevel=4)
        return None
    try:
        kernels = cublaslt.candidates(current_device(), M, N, K, lda, trans_a, ldb, trans_b, ldc, types,
                                      h.workspace.nbytes)
    except Exception as e:  # noqa: BLE001 - cuBLASLt refused the shape (or its bindings this library): cuBLAS's way
        warnings.warn(f"lstmdsl: cuBLASLt lists no kernels for the {M}x{N}x{K} GEMM ({e})", stacklevel=4)
        return None
    if _STORED_LT is None:
        _STORED_LT = _read_choices(LT_CHOICES, str)
    if stored in _STORED_LT:
        if not _STORED_LT[stored]:
            return None
        found = next((k for k in kernels if k.key == _STORED_LT[stored]), None)
        if found is not None:
            return found  # (else the heuristic lists other kernels here, e.g. for other alignments: timed again)
    scratch = empty((max(1, M * ldc * ELEMENT_TYPES[types[2]]),), np.uint8, 0, stream)
    own = _handle(lane, _BARE[key], types, key[-1])
    scalars, device = _SCALARS[types[3]], current_device()
    kernels = [k for k in kernels if k.fits(a, b, scratch.data.ptr)]
    times = []
    try:
        base = _time(lambda side: _gemm(own, M, N, K, a, lda, trans_a, b, ldb, trans_b, scratch.data.ptr, ldc,
                                        accumulate, types, side), stream)
        for k in kernels:
            try:
                times.append(_time(lambda side, k=k: cublaslt.run(device, k, a, b, scratch.data.ptr, accumulate,
                                                                  scalars, h.workspace.data.ptr, h.workspace.nbytes,
                                                                  side), stream))
            except Exception:  # noqa: BLE001 - this kernel refused the shape here: not a candidate
                times.append(float("inf"))
    except Exception as e:  # noqa: BLE001 - cuBLAS or CUDA refused the timing: cuBLAS's own way
        warnings.warn(f"lstmdsl: timing the {M}x{N}x{K} GEMM for cuBLASLt failed ({e})", stacklevel=4)
        return None
    finally:
        own.stream = h.stream = None  # (as in _faster_bare)
    best = min(range(len(times)), key=times.__getitem__, default=None)
    chosen = kernels[best] if best is not None and times[best] < TUNE_MARGIN * base else None
    _store_lt(stored, chosen.key if chosen else "")
    return chosen


def _first_kernel(M, N, K, a, lda, trans_a, b, ldb, trans_b, c, ldc, types, limit, workspace) -> cublaslt.Kernel | None:
    """_FIRST's kernel for the shape (cublaslt.first for the plan's limit); a failure anywhere gives None (fallback)."""
    try:
        return cublaslt.first(_load_libcublas()._name, current_device(), (M, N, K, lda, trans_a, ldb, trans_b, ldc),
                              types, limit, workspace, (a, b, c))
    except Exception as e:  # noqa: BLE001 - cuBLASLt refused the shape (or its bindings this library): GemmEx's way
        warnings.warn(f"lstmdsl: cuBLASLt lists no kernels for the {M}x{N}x{K} GEMM ({e})", stacklevel=4)
        return None


def _faster_bare(M, N, K, a, lda, trans_a, b, ldb, trans_b, ldc, accumulate, types, stream, lane,
                 workspace: int, first=False) -> bool | None:
    """Whether the bare handle takes less than TUNE_MARGIN of the other way's time: cublasGemmEx with the
    workspace, or where `first` is a kernel (_FIRST's entry) that kernel on it."""
    scratch = empty((max(1, M * ldc * ELEMENT_TYPES[types[2]]),), np.uint8, 0, stream)
    handles = [_handle(lane, False, types, workspace), _handle(lane, True)]  # (made before the captures timing them)

    def other(side, h=handles[0]):
        if first:
            cublaslt.run(current_device(), first, a, b, scratch.data.ptr, accumulate, _SCALARS[types[3]],
                         h.workspace.data.ptr, h.workspace.nbytes, side)
        else:
            _gemm(h, M, N, K, a, lda, trans_a, b, ldb, trans_b, scratch.data.ptr, ldc, accumulate, types, side)
    try:
        times = [_time(other, stream), _time(lambda side, h=handles[1]: _gemm(
            h, M, N, K, a, lda, trans_a, b, ldb, trans_b, scratch.data.ptr, ldc, accumulate, types, side), stream)]
    except Exception as e:  # noqa: BLE001 - cuBLAS or CUDA refused the timing: run as cuBLAS would by default
        warnings.warn(f"lstmdsl: timing the {M}x{N}x{K} GEMM failed ({e}); it runs with cuBLAS's default",
                      stacklevel=3)
        return None  # (not stored: a later process times it again)
    finally:
        for h in handles:
            h.stream = None  # (the captures' side streams are gone: set the next stream whatever its address)
    return times[1] < TUNE_MARGIN * times[0]


_LANES: dict[tuple[int, int, int], int] = {}  # (device, stream, part) -> lane
MAX_LANES = 16  # the most parts one call spreads over streams of its own (a wavefront's layers)
LANES = 64  # lanes per device (each a handle per workspace size: bare, 1, 16, 32 MiB; made on first use) before shared


def lane(stream: int, part: int = 0) -> int:
    """The lane of the GEMMs issued for a stream: one per stream, in order of first use, so that work on two streams
    never shares a cuBLAS workspace. part: work that a call on `stream` spreads over streams of its own takes a lane
    per part (a stack's layers in a wavefront, parts below MAX_LANES; a step's fanned-out GEMMs, runtime/fanout.py,
    parts MAX_LANES + 1 on: FGR 3 more). The streams are the callers' and the device's one side stream
    (device.side_stream), so the lanes in use stay few: a caller's stream with a 16-layer wavefront and the side
    stream take 17, FGR both ways with its fan 8. Past LANES (a process issuing from more than three streams with
    16-layer wavefronts) lanes are shared in turn, and two streams running at once could then share a workspace."""
    key = (current_device(), stream, part)
    if key not in _LANES:
        _LANES[key] = sum(1 for k in _LANES if k[0] == key[0]) % LANES
    return _LANES[key]


def gemm(M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool, c: int, ldc: int,
         accumulate: bool, types: tuple[str, str, str, str], stream: int, lane: int = 0,
         workspace: int | None = None, first: GemmWorkspace | None = None) -> None:
    """Row-major C[M, N] (+)= op(A) @ op(B) on device addresses, types (A, B, C, compute): column-major
    cuBLAS with the operands swapped (C^T = op(B)^T op(A)^T). lane: GEMMs that may run at the same time on
    two streams take two lanes, each a handle with its own workspace (a graph keeps the workspace it was
    captured with, so the lane of the stream it is replayed on, not the capture stream, chooses it), of
    workspace_for(types, workspace) bytes. The shape runs without a workspace where tune() found that faster. first:
    as tune's (_FIRST: the shape's kernel there, else cublasGemmEx: GemmWorkspace.gemmex)."""
    workspace = workspace_for(types, workspace)
    key = _shape_key(M, N, K, lda, trans_a, ldb, trans_b, ldc, accumulate, types, workspace, first)
    table = _FIRST if first and not _BARE.get(key, False) else _LT
    kernel = table.get(key)
    if kernel is not None and kernel.fits(a, b, c):  # a cuBLASLt kernel (tune's choice, or _FIRST's), on the lane's
        h = _handle(lane, False, types, workspace)  # workspace (made here if new, inside someone's capture too)
        try:
            cublaslt.run(key[0], kernel, a, b, c, accumulate, _SCALARS[types[3]], h.workspace.data.ptr,
                         h.workspace.nbytes, stream)
            return
        except Exception as e:  # noqa: BLE001 - whatever refused it: cuBLAS's way, as tune would have chosen
            warnings.warn(f"lstmdsl: cuBLASLt's kernel for the {M}x{N}x{K} GEMM failed ({e}); it runs as cuBLAS "
                          "chooses from now on", stacklevel=2)
            table[key] = None
    if table is _FIRST:  # (no kernel: cublasGemmEx's own choice)
        workspace = first.gemmex(workspace, key in _FIRST)
    _gemm(_handle(lane, _BARE.get(key, False), types, workspace), M, N, K, a, lda, trans_a, b, ldb, trans_b, c, ldc,
          accumulate, types, stream)


def _gemm(h: _Handle, M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool, c: int,
          ldc: int, accumulate: bool, types: tuple[str, str, str, str], stream: int) -> None:
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
                 count: int, strides: tuple[int, int, int], workspace: int | None = None) -> None:
    """`count` GEMMs as gemm() computes one, the i-th on A + i * strides[0], B + i * strides[1] and
    C + i * strides[2] (strides in elements): the blocks of a block-diagonal matrix."""
    h = _handle(lane, False, types, workspace)
    h.set_stream(stream)
    a_type, b_type, c_type, compute = types
    one, zero = _SCALARS[compute]
    sa, sb, sc = strides
    status = h.lib.cublasGemmStridedBatchedEx(
        h.handle, int(trans_b), int(trans_a), N, M, K, one.ctypes.data,
        b, DATA_TYPES[b_type], ldb, sb, a, DATA_TYPES[a_type], lda, sa, (one if accumulate else zero).ctypes.data,
        c, DATA_TYPES[c_type], ldc, sc, count, COMPUTE_TYPES[compute][0], _GEMM_DEFAULT)
    h._check(status, f"cublasGemmStridedBatchedEx ({count} x {M}x{N}x{K})")

"""The GPU as the runtime sees it: integer device addresses and stream handles, and the few operations it
issues besides cuBLAS's GEMMs — kernel launches (arguments packed with ctypes, so each one has exactly
the C type the kernel declares), strided copies, zero fills, and the capture of CUDA graphs.

Everything goes through CuPy's thin bindings of the CUDA runtime and driver APIs with raw addresses, so
the same calls serve CuPy arrays and torch tensors alike, on whatever stream the caller names.
tests/emulated/ replaces this module's functions to run the runtime without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes

from ..errors import BackendUnavailable, LstmdslError
from .warmup import settle as settle_warm_up

try:
    import cupy
except ImportError:  # the error is raised when a CUDA layer is asked for
    cupy = None

_DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice
_NON_BLOCKING = 1  # cudaStreamNonBlocking


def check_available() -> None:
    if cupy is None:
        raise BackendUnavailable("the CUDA backend needs CuPy: pip install 'lstmdsl[cuda]' (cupy-cuda13x)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        from cupy_backends.cuda.libs import cublas  # noqa: F401 - fails without the CUDA libraries
    except Exception as err:  # no driver, no device, or no CUDA libraries
        raise BackendUnavailable(f"no usable CUDA device: {err}") from None
    if count < 1:
        raise BackendUnavailable("no CUDA device found")


def current_device() -> int:
    return cupy.cuda.runtime.getDevice()


def current_stream() -> int:
    """CuPy's current stream on this thread (an integer handle; 0 is the legacy default stream)."""
    return cupy.cuda.get_current_stream().ptr


class _Handle:
    """A raw stream handle under the CUDA stream protocol (what CuPy's Stream.from_external takes)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.ptr


def cupy_stream(ptr: int):
    """CuPy's Stream for a raw handle, to issue CuPy's own work on (`with device.cupy_stream(s): ...`):
    Stream.from_external where this CuPy has it (14 on; its ExternalStream warns of its removal at every use),
    ExternalStream before; CuPy's null stream for 0."""
    if not ptr:
        return cupy.cuda.Stream.null
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    return from_external(_Handle(ptr)) if from_external is not None else cupy.cuda.ExternalStream(ptr)


# kernel parameter C types -> ctypes
_ARG_TYPES = {"int": ctypes.c_int32, "ptr": ctypes.c_uint64, "u64": ctypes.c_uint64}


def launch(function: int, grid: tuple[int, int], threads: int, args: list[tuple[str, int]], stream: int) -> None:
    """Launch a kernel (a CUfunction handle) with args given as (kind, value): kind "int" for an int
    parameter, "ptr" for a pointer, "u64" for an unsigned long long."""
    values = [_ARG_TYPES[kind](value) for kind, value in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    from cupy_backends.cuda.api import driver

    driver.launchKernel(function, grid[0], grid[1], 1, threads, 1, 1, 0, stream, ctypes.addressof(params), 0)


_DRIVER = None
_STATIC_SHARED = 1  # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_BUDGETS: dict[int, int] = {}  # kernel handle -> the dynamic shared memory its blocks may have


def _driver():
    """libcuda through ctypes: the few driver calls CuPy does not bind (cooperative launches, occupancy)."""
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = ctypes.CDLL("libcuda.so.1")
    return _DRIVER


def _check(status: int, what: str) -> None:
    if status != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(status, ctypes.byref(name))
        raise DeviceError(f"{what} failed: {(name.value or b'CUDA error').decode()} ({status})")


def on_chip() -> tuple[int, int]:
    """(multiprocessors, shared memory bytes one block may opt in to) of the current device."""
    attrs = cupy.cuda.Device().attributes
    return attrs["MultiProcessorCount"], attrs["MaxSharedMemoryPerBlockOptin"]


def shared_budget(function: int) -> int:
    """The dynamic shared memory one block of the kernel may have: what a block may opt in to, less the
    kernel's static shared memory. The kernel's limit is raised to it the first time (above 48 KB a launch
    needs that), once for good: one kernel serves every workspace and batch size, so it is never lowered."""
    if function not in _BUDGETS:
        lib = _driver()
        static = ctypes.c_int(0)
        _check(lib.cuFuncGetAttribute(ctypes.byref(static), _STATIC_SHARED, ctypes.c_void_p(function)),
               "reading a kernel's static shared memory")
        budget = on_chip()[1] - static.value
        _check(lib.cuFuncSetAttribute(ctypes.c_void_p(function), _MAX_DYNAMIC_SHARED, ctypes.c_int(budget)),
               "setting a kernel's shared memory limit")
        _BUDGETS[function] = budget
    return _BUDGETS[function]


def co_resident(function: int, threads: int, shared: int) -> int:
    """How many blocks of `threads` threads and `shared` bytes of dynamic shared memory (at most
    shared_budget(function)) fit on one multiprocessor at once (0: not even one)."""
    lib = _driver()
    if shared > shared_budget(function):
        return 0
    count = ctypes.c_int(0)
    _check(lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(count), ctypes.c_void_p(function),
                                                           ctypes.c_int(threads), ctypes.c_size_t(shared)),
           "the occupancy query")
    return count.value


def launch_cooperative(function: int, blocks: int, threads: int, shared: int, args: list[tuple[str, int]],
                       stream: int) -> None:
    """A cooperative launch (all `blocks` blocks resident at once, or an error: never a hang) of a kernel
    that meets the grid at barriers of its own (the persistent schedule)."""
    values = [_ARG_TYPES[kind](value) for kind, value in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    _check(_driver().cuLaunchCooperativeKernel(ctypes.c_void_p(function), blocks, 1, 1, threads, 1, 1, shared,
                                               ctypes.c_void_p(stream), params),
           "the persistent kernel's cooperative launch")


def copy_rows(dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int, stream: int) -> None:
    """rows rows of width bytes from src to dst, each side with its own pitch (bytes between rows)."""
    cupy.cuda.runtime.memcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, _DEVICE_TO_DEVICE, stream)


def zero(ptr: int, nbytes: int, stream: int) -> None:
    cupy.cuda.runtime.memsetAsync(ptr, 0, nbytes, stream)


def zero_rows(ptr: int, pitch: int, width: int, rows: int, stream: int) -> None:
    """rows rows of width bytes set to zero, pitch bytes apart: one operation either way (a 2-D memset where the
    rows are padded, e.g. a half-precision state of H % 8 != 0: one node in a CUDA graph, not one a row)."""
    if pitch == width or rows == 1:
        zero(ptr, width * rows, stream)
    else:  # (CuPy binds no 2-D memset)
        _check(_driver().cuMemsetD2D8Async(ctypes.c_uint64(ptr), ctypes.c_size_t(pitch), ctypes.c_ubyte(0),
                                           ctypes.c_size_t(width), ctypes.c_size_t(rows), ctypes.c_void_p(stream)),
               "zeroing a state's padded rows (cuMemsetD2D8Async)")


def zero_columns(array, first: int, stream: int) -> None:
    """array[..., first:] = 0 on `stream` (the padding columns of aligned rows)."""
    with cupy_stream(stream):
        array[..., first:] = 0


def is_capturing(stream: int) -> bool:
    """Whether work issued on the stream is being recorded into a CUDA graph (by torch, say)."""
    return bool(stream) and cupy.cuda.runtime.streamIsCapturing(stream)


@contextlib.contextmanager
def relaxed_capture():
    """This thread may allocate while a stream it issues on is being captured (torch's CUDA graphs capture in
    cudaStreamCaptureModeGlobal, where a cudaMalloc, a cuBLAS handle's creation among them, ends the capture):
    for what is made once and kept (a lane's cuBLAS handle and workspace on the capture stream, whose graph
    then holds their addresses), as torch makes its own handles in a capture."""
    mode = ctypes.c_int(2)  # CU_STREAM_CAPTURE_MODE_RELAXED
    _check(_driver().cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)), "cuThreadExchangeStreamCaptureMode")
    try:
        yield
    finally:
        _check(_driver().cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)), "cuThreadExchangeStreamCaptureMode")


def empty(shape: tuple[int, ...], dtype, fill: float | None = None, stream: int | None = None):
    """A device array (CuPy's memory pool), filled with `fill` when given, on `stream` (CuPy's current
    stream when None): work that reads it on that stream comes after the fill. A fill of zero (a persistent
    kernel's barrier counter) is a memset: cupy.full launches an elementwise kernel that CuPy compiles, or
    loads from its cache, once in each process (26 ms of a warm first result on the H200)."""
    def make():
        if fill is None or fill != 0:
            return cupy.empty(shape, dtype) if fill is None else cupy.full(shape, fill, dtype)
        array = cupy.empty(shape, dtype)
        zero(array.data.ptr, array.nbytes, cupy.cuda.get_current_stream().ptr)
        return array

    if stream is None:
        return make()
    with cupy_stream(stream):
        return make()


class SideStream:
    """A second stream, for work that may run beside the current stream's (the reverse direction of a
    bidirectional layer): fork(stream) makes it wait for the work issued on `stream` so far, join(stream)
    makes `stream` wait for the work issued on it. Both are events, so the host never waits, and both may
    be recorded into a CUDA graph that torch captures."""

    def __init__(self):
        rt = cupy.cuda.runtime
        self.handle = rt.streamCreateWithFlags(_NON_BLOCKING)
        self._events = (rt.eventCreateWithFlags(2), rt.eventCreateWithFlags(2))  # cudaEventDisableTiming

    def fork(self, stream: int) -> int:
        rt = cupy.cuda.runtime
        rt.eventRecord(self._events[0], stream)
        rt.streamWaitEvent(self.handle, self._events[0], 0)
        return self.handle

    def join(self, stream: int) -> None:
        rt = cupy.cuda.runtime
        rt.eventRecord(self._events[1], self.handle)
        rt.streamWaitEvent(stream, self._events[1], 0)

    def __del__(self):
        if cupy is None or not getattr(self, "handle", 0):
            return
        try:
            for e in self._events:
                cupy.cuda.runtime.eventDestroy(e)
            cupy.cuda.runtime.streamDestroy(self.handle)
        except Exception:  # noqa: BLE001 (interpreter shutdown, or a context already gone)
            pass


_SIDE: dict = {}  # device -> its side stream


def side_stream() -> "SideStream":
    """The device's one side stream, shared by every layer and Engine in the process: cuBLAS lanes go per
    stream, modulo cublas.LANES, so a side stream per layer or per Engine could come to share the main
    stream's lane, and its workspace, while both run."""
    dev = current_device()
    if dev not in _SIDE:
        _SIDE[dev] = SideStream()
    return _SIDE[dev]


class Wave:
    """Streams for the layers of a stack run as a wavefront (plan.Wavefront): layer 0 runs on the caller's
    stream, layer k > 0 on a stream of its own. fork(stream) makes those wait for the work issued on
    `stream` so far; done(k) marks the end of layer k's work issued so far, after(k) makes layer k+1 wait
    for it; join(stream) makes `stream` wait for every layer. All are events: the host never waits, and
    all may be recorded into a CUDA graph (the layers' streams then become branches of it). One event per
    layer is enough: a wait waits for the event's latest record, and each record is waited on before the
    next one is issued."""

    def __init__(self, layers: int):
        rt = cupy.cuda.runtime
        self.streams = [0] + [rt.streamCreateWithFlags(_NON_BLOCKING) for _ in range(layers - 1)]
        self._events = [rt.eventCreateWithFlags(2) for _ in range(layers + 1)]  # cudaEventDisableTiming

    def fork(self, stream: int) -> list[int]:
        """The layers' streams, the first `stream` itself, each waiting for the work issued on `stream`."""
        rt = cupy.cuda.runtime
        rt.eventRecord(self._events[-1], stream)
        for s in self.streams[1:]:
            rt.streamWaitEvent(s, self._events[-1], 0)
        return [stream] + self.streams[1:]

    def done(self, k: int, stream: int) -> None:
        cupy.cuda.runtime.eventRecord(self._events[k], stream)

    def after(self, k: int, stream: int) -> None:
        cupy.cuda.runtime.streamWaitEvent(stream, self._events[k], 0)

    def join(self, stream: int) -> None:
        rt = cupy.cuda.runtime
        for k, s in enumerate(self.streams[1:], 1):
            rt.eventRecord(self._events[k], s)
            rt.streamWaitEvent(stream, self._events[k], 0)

    def __del__(self):
        if cupy is None or not getattr(self, "_events", None):
            return
        try:
            for e in self._events:
                cupy.cuda.runtime.eventDestroy(e)
            for s in self.streams[1:]:
                cupy.cuda.runtime.streamDestroy(s)
        except Exception:  # noqa: BLE001 (interpreter shutdown, or a context already gone)
            pass


class Graph:
    """A CUDA graph of the work `issue(stream)` issues: captured on a side stream that first waits for
    `stream`, then replayed with one launch."""

    def __init__(self, issue, stream: int):
        settle_warm_up()  # (no other thread's cuBLAS call while this one captures)
        rt = cupy.cuda.runtime
        side = rt.streamCreateWithFlags(_NON_BLOCKING)
        event = rt.eventCreateWithFlags(2)  # cudaEventDisableTiming
        try:
            rt.eventRecord(event, stream)
            rt.streamWaitEvent(side, event, 0)
            rt.streamBeginCapture(side)
            graph = 0
            try:
                issue(side)
            finally:
                graph = rt.streamEndCapture(side)
            try:
                self.exec = rt.graphInstantiate(graph)
            finally:
                rt.graphDestroy(graph)
        finally:
            rt.eventDestroy(event)
            rt.streamDestroy(side)

    def launch(self, stream: int) -> None:
        cupy.cuda.runtime.graphLaunch(self.exec, stream)

    def __del__(self):
        exec_ = getattr(self, "exec", 0)
        if exec_ and cupy is not None:
            try:
                cupy.cuda.runtime.graphExecDestroy(exec_)
            except Exception:  # noqa: BLE001 (interpreter shutdown, or a context already gone)
                pass


class DeviceError(LstmdslError):
    """A CUDA call failed."""

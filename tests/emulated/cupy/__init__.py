"""A fake CuPy on numpy, just enough of it to run lstmdsl.runtime on the CPU (tests/emulated/simrt.py)."""
import types
import numpy as np

ALLOCS = []  # (start, end, array) of every owning allocation


class _Data:
    def __init__(self, ptr): self.ptr = ptr


__version__ = "emulated"


class _Dev:
    id = 0
    compute_capability = "90"
    def __init__(self, *a): pass
    def synchronize(self): pass
    def __enter__(self): return self
    def __exit__(self, *a): pass


class ndarray(np.ndarray):
    def __array_finalize__(self, obj):
        # an owning array, or numpy's own result viewed as one of these (what arithmetic returns)
        if self.nbytes and (self.base is None or not isinstance(self.base, ndarray)):
            ALLOCS.append((self.ctypes.data, self.ctypes.data + self.nbytes, self))
    @property
    def data(self): return _Data(self.ctypes.data)
    @property
    def device(self): return _Dev()
    def get(self): return np.array(self)


def _wrap(a):
    a = np.array(a, copy=True, order="C")
    out = ndarray(a.shape, a.dtype)
    out[...] = a
    return out

def asarray(a, dtype=None):
    if isinstance(a, ndarray) and dtype is None: return a
    return _wrap(np.asarray(a, dtype=dtype))
def asnumpy(a): return np.array(np.asarray(a))
def zeros(shape, dtype=np.float64): return _wrap(np.zeros(shape, dtype))
def zeros_like(a): return _wrap(np.zeros(a.shape, a.dtype))
def empty_like(a): return _wrap(np.empty(a.shape, a.dtype))
def multiply(a, b, out=None):
    if out is None: return _wrap(np.multiply(a, b))
    np.multiply(a, b, out=out); return out
def empty(shape, dtype=np.float64): return _wrap(np.empty(shape, dtype))
def take(a, indices, axis=None, out=None):
    if out is None: return _wrap(np.take(a, np.asarray(indices), axis=axis))
    np.take(a, np.asarray(indices), axis=axis, out=out); return out
def full(shape, v, dtype=np.float64): return _wrap(np.full(shape, v, dtype))
def arange(*a, **k): return _wrap(np.arange(*a, **k))
def stack(xs): return _wrap(np.stack([np.asarray(x) for x in xs]))
def ascontiguousarray(a): return _wrap(np.ascontiguousarray(a))
def where(c, a, b): return _wrap(np.where(c, a, b))
def isnan(a): return _wrap(np.isnan(a))
float32, float64 = np.float32, np.float64


class _Event:
    def record(self, *a): return self
    def synchronize(self): pass

class Stream:
    ptr = 0
    def __init__(self, non_blocking=False): pass
    def wait_event(self, e): pass
    def record(self): return _Event()
    def begin_capture(self): pass
    def end_capture(self): raise RuntimeError("graph capture is not simulated")
    def __enter__(self): return self
    def __exit__(self, *a): pass

_STREAM = Stream()
Stream.null = _STREAM

class RawModule:
    def __init__(self, code=None, options=(), path=None): self.code = code
    def compile(self): pass
    def get_function(self, name): return name

cuda = types.SimpleNamespace(
    Stream=Stream, ExternalStream=lambda ptr: Stream(), Device=_Dev, get_current_stream=lambda: _STREAM, Event=_Event,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 13000),
    compiler=types.SimpleNamespace(CompileException=Exception),
)

"""Stage 5: run a Plan on the GPU. CuPy compiles the generated kernels (NVRTC; in-process memo and disk
cache keyed by the source), cuBLAS runs the GEMMs with an explicit compute type (strict fp32, or tf32
when the schedule says so), and a Python loop issues each step's GEMMs and kernels on the current stream.

Nothing here is imported before a user asks for backend="cuda": importing lstmdsl never touches CuPy.
Parameters live in stacks: the matrices applied to one operand are rows of one [sum rows, cols] array
(parameters() hands out views), so a fused GEMM reads them as one matrix and one G^T V updates them.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import re
import time

import numpy as np

from . import __version__
from .api import Layer, Spec, init_params
from .cache import cache_dir, cached_text, write_bytes_atomically
from .codegen import KernelDesc, Layout, Slot, kernel_descs, make_layout, render, template_text
from .errors import BackendUnavailable, LstmdslError, UsageError
from .passes import make_plan
from .plan import Gemm, Kernel, Plan
from .schedule import Schedule

try:
    import cupy
except ImportError:  # the error is raised when a CUDA layer is asked for
    cupy = None

THREADS = 128
POISON = False  # tests set this: fill new workspaces with NaN
# cuBLAS types by (element type, types): (cudaDataType, cublasComputeType, host scalars one and zero)
_TYPES = {
    ("float32", "fp32"): (0, 68, np.ones(1, np.float32), np.zeros(1, np.float32)),  # CUDA_R_32F, COMPUTE_32F
    ("float32", "tf32"): (0, 77, np.ones(1, np.float32), np.zeros(1, np.float32)),  # COMPUTE_32F_FAST_TF32
    ("float64", "fp32"): (1, 70, np.ones(1, np.float64), np.zeros(1, np.float64)),  # CUDA_R_64F, COMPUTE_64F
}
_GEMM_DEFAULT = -1


class CompileError(LstmdslError):
    """NVRTC rejected generated code: a bug in lstmdsl's templates or code generator."""


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


_MODULES: dict[str, object] = {}
_OPTIONS = ("--std=c++17",)
_NVRTC_ERROR_COMPILATION = 6  # nvrtcResult: the source does not compile


def _compile_error(source: str, log: str) -> CompileError:
    lines = source.splitlines()
    shown = "\n".join(f"{k + 1:5d}  {ln}" for k, ln in enumerate(lines[:60]))
    return CompileError(f"NVRTC could not compile the generated kernels (options {' '.join(_OPTIONS)}):\n"
                        f"{log}\nthe source begins:\n{shown}")


def _nvrtc_cubin(source: str, arch: str) -> bytes | None:
    """The source compiled by NVRTC for sm_<arch>, or None where this NVRTC cannot (then CuPy's own
    path, which can fall back to PTX, takes over)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        prog = nvrtc.createProgram(source, "lstmdsl.cu", [], [])
    except Exception:  # noqa: BLE001 (an older or different CuPy: use its compile path)
        return None
    try:
        nvrtc.compileProgram(prog, [*_OPTIONS, f"--gpu-architecture=sm_{arch}"])
        return nvrtc.getCUBIN(prog)
    except nvrtc.NVRTCError as err:
        if err.status == _NVRTC_ERROR_COMPILATION:
            raise _compile_error(source, nvrtc.getProgramLog(prog)) from None
        return None  # e.g. an architecture this NVRTC does not know
    except Exception:  # noqa: BLE001 (no getCUBIN in this CuPy)
        return None
    finally:
        nvrtc.destroyProgram(prog)


def load_module(source: str):
    """The loaded module of a rendered source. Its cubin is kept in $LSTMDSL_CACHE/cubin (keyed by the
    source, the options, the GPU architecture and CuPy's version), so a spec compiled before loads
    without starting NVRTC at all; where that fails, CuPy compiles it (and keeps it in its own cache)."""
    if source in _MODULES:
        return _MODULES[source]
    arch = cupy.cuda.Device().compute_capability
    key = repr((cupy.__version__, arch, _OPTIONS, source))
    path = cache_dir() / "cubin" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.cubin"
    module = None
    if path.exists():
        try:
            module = cupy.RawModule(path=str(path))
            module.get_function(_FIRST_KERNEL.search(source).group(1))  # loads it: a damaged file fails here
        except Exception:  # noqa: BLE001 (a damaged or foreign file: compile again)
            module = None
    if module is None:
        cubin = _nvrtc_cubin(source, arch)
        if cubin is not None and write_bytes_atomically(path, cubin):
            module = cupy.RawModule(path=str(path))
        else:
            module = cupy.RawModule(code=source, options=_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as err:
                raise _compile_error(source, str(err)) from None
    _MODULES[source] = module
    return module


_FIRST_KERNEL = re.compile(r'extern "C" __global__ void (\w+)')


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


class _Cublas:
    """cuBLAS called directly through ctypes with a handle of our own.

    CuPy's wrappers call cublasSetStream with a guard that refuses stream capture, so a step loop that
    goes through them cannot become a CUDA graph. cuBLAS itself can be captured once the handle has a
    workspace of its own (no allocation inside the capture) and scalars are read from host memory.
    """

    WORKSPACE = 32 << 20

    def __init__(self):
        lib = _load_libcublas()
        vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetPointerMode_v2.argtypes = [vp, i]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, sz]
        lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
        self.lib = lib
        self.handle = vp()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetPointerMode_v2(self.handle, 0), "cublasSetPointerMode")  # host scalars
        self.workspace = cupy.empty(self.WORKSPACE, np.uint8)
        self._check(lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, self.WORKSPACE),
                    "cublasSetWorkspace")
        self.stream = None

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise LstmdslError(f"{what} failed with cuBLAS status {status}")

    def gemm(self, M: int, N: int, K: int, a: int, lda: int, trans_a: bool, b: int, ldb: int, trans_b: bool,
             c: int, ldc: int, accumulate: bool, types: tuple) -> None:
        """Row-major C[M, N] (+)= op(A) @ op(B) on device pointers: column-major cuBLAS with the operands
        swapped (C^T = op(B)^T op(A)^T)."""
        stream = cupy.cuda.get_current_stream().ptr
        if stream != self.stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
            # cublasSetStream resets the workspace to cuBLAS's default pool: set ours again
            self._check(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, self.WORKSPACE),
                        "cublasSetWorkspace")
            self.stream = stream
        data, compute, one, zero = types
        status = self.lib.cublasGemmEx(
            self.handle, int(trans_b), int(trans_a), N, M, K, one.ctypes.data,
            b, data, ldb, a, data, lda, (one if accumulate else zero).ctypes.data,
            c, data, ldc, compute, _GEMM_DEFAULT)
        self._check(status, f"cublasGemmEx ({M}x{N}x{K})")


_CUBLAS: dict[int, _Cublas] = {}
_SPIN_SOURCE = """extern "C" __global__ void lstmdsl_spin(long long cycles)
{
    const long long start = clock64();
    while (clock64() - start < cycles) {}
}"""


def _spin(ms: float) -> None:
    """Keep the GPU busy for about `ms` milliseconds (one thread spinning on the clock)."""
    kernel = load_module(_SPIN_SOURCE).get_function("lstmdsl_spin")
    khz = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"]
    kernel((1,), (1,), (np.int64(ms * khz),))


def gemm(*args) -> None:
    device = cupy.cuda.Device().id
    if device not in _CUBLAS:
        _CUBLAS[device] = _Cublas()
    _CUBLAS[device].gemm(*args)


class _Program:
    """Everything about one (cell, schedule) that does not depend on sizes: plan, layout, kernels."""

    def __init__(self, spec: Spec, schedule: Schedule, dtype: str):
        self.plan: Plan = make_plan(spec.cell, spec.grad, schedule)
        self.layout: Layout = make_layout(self.plan)
        self.forward_kernels, self.backward_kernels = kernel_descs(self.plan, self.layout)
        key = repr((__version__, template_text(), self.plan.cell.name, self.plan.schedule.describe(), dtype,
                    self.forward_kernels, self.backward_kernels))
        self.source = cached_text("cuda", key, lambda: render(self.plan, self.forward_kernels,
                                                              self.backward_kernels, dtype))
        self.module = load_module(self.source)
        self.functions = {k.name: self.module.get_function(k.name)
                          for k in self.forward_kernels + self.backward_kernels}


class _Workspace:
    """The buffers of one layer for one (T, B), and the pointer arithmetic of slots."""

    def __init__(self, layout: Layout, sizes: dict[str, int], T: int, B: int, dtype, train: bool = True):
        """A forward-only workspace (train=False) has no backward buffers, and one step of the values
        that only the backward reads."""
        self.T, self.B, self.sizes = T, B, sizes
        self.item = np.dtype(dtype).itemsize
        buffers = {n: b for n, b in layout.buffers.items() if train or b.inference is not None}
        self.width = {n: sum(sizes[s] for s in b.width) for n, b in buffers.items()}
        self.steps = {n: {"1": 1, "T": T, "T+1": T + 1}[b.steps if train else b.inference]
                      for n, b in buffers.items()}
        # POISON (tests): start every buffer as NaN, so a read of anything no kernel wrote shows up
        fill = cupy.full if POISON else (lambda shape, _, dtype: cupy.empty(shape, dtype))
        aliases = layout.aliases if train else {}
        self.arrays = {n: fill((self.steps[n], B, self.width[n]), np.nan, dtype) for n in buffers if n not in aliases}
        self.arrays |= {n: self.arrays[host] for n, host in aliases.items()}  # same shape: see Layout.aliases
        self.graphs: dict[str, object] = {}  # "forward" / "backward" -> the captured CUDA graph of the loop

    def col(self, slot: Slot) -> int:
        return sum(self.sizes[s] for s in slot.col)

    def ptr(self, slot: Slot, t: int) -> int:
        """Address of row 0 of the slot at step t."""
        return self.address(slot.buffer, t + slot.step, self.col(slot))

    def address(self, buffer: str, step: int, col: int) -> int:
        """Address of row 0, column col of a buffer at a step (a "1" buffer has one step for all)."""
        step = 0 if self.steps[buffer] == 1 else step
        return self.arrays[buffer].data.ptr + self.item * (step * self.B * self.width[buffer] + col)

    def view(self, slot: Slot, t: int | None, n: int):
        """[B, n] at step t, or [steps of T, B, n] for all steps when t is None (a view, no copy)."""
        a = self.arrays[slot.buffer]
        c = self.col(slot)
        if t is None:
            return a[slot.step:slot.step + self.T, :, c:c + n]
        return a[0 if self.steps[slot.buffer] == 1 else t + slot.step, :, c:c + n]


class CudaLayer(Layer):
    """A compiled spec on the GPU: the API of Layer, with CuPy arrays (float32 or float64, C-contiguous)."""

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None):
        check_available()
        if schedule.precision == "bf16":
            raise BackendUnavailable("precision bf16 is not supported by the CUDA backend yet; use fp32 or tf32")
        if dtype == "float64" and schedule.precision != "fp32":
            raise UsageError(f"precision {schedule.precision} applies to float32 layers; a float64 layer computes "
                             "in float64 throughout")
        self.spec, self.cell, self.sizes, self.num_layers = spec, spec.cell, sizes, len(sizes)
        self.schedule, self.dtype = schedule, np.dtype(dtype)
        self._types = _TYPES[(dtype, schedule.precision)]
        for s, u in zip(self.cell.states, self.cell.updates):
            if self.cell.nodes[u].op in ("param", "const"):
                raise BackendUnavailable(f"state '{s.name}' is updated to a parameter or a constant, which the "
                                         "CUDA backend does not support yet")
        if self.cell.nodes[self.cell.output].op in ("param", "const"):
            raise BackendUnavailable("the output is a parameter or a constant, which the CUDA backend does not "
                                     "support yet")
        self.program = _Program(spec, schedule, dtype)
        stacks = self.program.layout.stacks
        rng = np.random.default_rng(seed)
        self._params, self._grads, self._stacks, self._grad_stacks = [], [], [], []
        for bound in sizes:
            host = init_params(self.cell, bound, rng, self.dtype, forget_bias)  # the same values as the reference
            params, grads, pstack, gstack = {}, {}, {}, {}
            for v, matrices in stacks.items():
                pstack[v] = cupy.asarray(np.concatenate([host[m] for m in matrices]))
                gstack[v] = cupy.zeros_like(pstack[v])
                row = 0
                for m in matrices:
                    rows = host[m].shape[0]
                    params[m], grads[m] = pstack[v][row:row + rows], gstack[v][row:row + rows]
                    row += rows
            for p in self.cell.params:
                if p.kind == "vector":
                    params[p.name] = cupy.asarray(host[p.name])
                    grads[p.name] = cupy.zeros_like(params[p.name])
            self._params.append({p.name: params[p.name] for p in self.cell.params})
            self._grads.append({p.name: grads[p.name] for p in self.cell.params})
            self._stacks.append(pstack)
            self._grad_stacks.append(gstack)
        self._workspaces: dict[tuple, list[_Workspace]] = {}
        self.use_graphs = True  # capture each layer's step loop once per (T, B) and replay it
        self._parts: dict[str, list] | None = None  # profile(): CUDA events around each op, by kind
        self._tape = None
        self._initial_state_grads = None

    # -- validation of CuPy arrays
    def _check_array(self, what: str, a, shape: tuple[int, ...]):
        if not isinstance(a, cupy.ndarray):
            raise UsageError(f"{what} must be a CuPy array on the cuda backend, got {type(a).__name__} "
                             "(use cupy.asarray)")
        if a.dtype != self.dtype:
            raise UsageError(f"{what} has dtype {a.dtype}, but the layer computes in {self.dtype}; "
                             f"convert it with .astype(cupy.{self.dtype})")
        if a.shape != shape:
            raise UsageError(f"{what} has shape {list(a.shape)}, expected {list(shape)}")
        if not a.flags.c_contiguous:
            raise UsageError(f"{what} must be C-contiguous (use cupy.ascontiguousarray)")
        if a.device.id != cupy.cuda.Device().id:
            raise UsageError(f"{what} is on device {a.device.id}, the layer on device {cupy.cuda.Device().id}")
        return a

    @contextlib.contextmanager
    def _part(self, kind: str):
        """Time what the block issues on the GPU under `kind`, when profiling."""
        if self._parts is None:
            yield
            return
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        yield
        end.record()
        self._parts.setdefault(kind, []).append((start, end))

    def profile(self, x, repeat: int = 5) -> dict:
        """Where one forward and one training step (forward + backward of sum(y)) spend their time.

        parts: GPU milliseconds by kind of work (input GEMM, recurrent GEMMs, pointwise kernels,
        weight-gradient GEMMs, ...), measured op by op with CUDA events on a run without CUDA graphs.
        While the host issues that run, a spin kernel holds the GPU, so the queue fills first and each
        event pair times the GPU's work, not its wait for the host (if the launch queue fills before
        the spin ends, later parts include some waiting again: held_ms says how long the GPU was held).
        graphs: the normal run (graphs replayed), its GPU time and the host time to issue it.
        """
        from .bench import time_gpu

        y, _ = self.forward(x)
        ones = cupy.ones_like(y)
        graphs = {"forward": time_gpu(lambda: self.forward(x, train=False), repeat),
                  "train": time_gpu(lambda: (self.forward(x), self.backward(ones)), repeat)}
        saved, self.use_graphs = self.use_graphs, False
        try:
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            self.forward(x)
            self.backward(ones)
            issue_ms = 1e3 * (time.perf_counter() - t0)  # the host's time to issue the un-graphed run
            cupy.cuda.Device().synchronize()
            self._parts = {}
            held_ms = 2 * issue_ms + 5
            for run in (lambda: self.forward(x), lambda: self.backward(ones)):  # each held apart: shorter queues
                _spin(held_ms)
                run()
                cupy.cuda.Device().synchronize()
            parts = {kind: sum(cupy.cuda.get_elapsed_time(s, e) for s, e in events)
                     for kind, events in self._parts.items()}
        finally:
            self._parts, self.use_graphs = None, saved
        self.zero_grad()
        return {"parts_ms": parts, "host_issue_ms_without_graphs": issue_ms, "held_ms": held_ms, "graphs": graphs}

    def free_workspaces(self) -> None:
        """Drop the cached workspaces and their CUDA graphs (the memory goes back to CuPy's pool; the
        next call allocates and captures again). A pending backward() is dropped too."""
        self._workspaces.clear()
        self._tape = None

    def zero_grad(self) -> None:
        for stacks in self._grad_stacks:
            for a in stacks.values():
                a.fill(0)
        for g in self._grads:
            for name, a in g.items():
                if self.cell.param(name).kind == "vector":
                    a.fill(0)

    MAX_WORKSPACES = 8

    def _workspace(self, T: int, B: int, train: bool) -> list[_Workspace]:
        """The buffers (and captured graphs) for one (T, B); the least recently used of more than
        MAX_WORKSPACES are dropped, except the one a pending backward() needs."""
        key = (T, B, train)
        if key in self._workspaces:
            self._workspaces[key] = self._workspaces.pop(key)  # most recently used last
        else:
            self._workspaces[key] = [_Workspace(self.program.layout, s, T, B, self.dtype, train) for s in self.sizes]
            for old in list(self._workspaces)[:-self.MAX_WORKSPACES]:
                if self._workspaces[old] is not self._tape:
                    del self._workspaces[old]
        return self._workspaces[key]

    # -- the step loop
    def _launch(self, desc: KernelDesc, slots: dict, ws: _Workspace, params: dict, t: int) -> None:
        args = []
        for a in desc.args:
            kind = a.bind[0]
            if kind == "batch":
                args.append(np.int32(ws.B))
            elif kind == "size":
                args.append(np.int32(ws.sizes[a.bind[1]]))
            elif kind in ("param", "matrix"):  # a vector, or a matrix's rows in its stack (contiguous)
                args.append(params[a.bind[1]])
            else:
                _, node, k, what = a.bind
                slot = slots[node][k]
                args.append(np.uint64(ws.ptr(slot, t)) if what == "ptr" else np.int32(ws.width[slot.buffer]))
        n = max(ws.sizes[s] for s in desc.sizes)
        per_block = THREADS // 32 if desc.warp else THREADS  # elements per block
        self.program.functions[desc.name]((math.ceil(n / per_block), ws.B), (THREADS,), tuple(args))

    def _copies(self, slots: dict, nodes, ws: _Workspace, t: int, which) -> None:
        """Values whose producer writes only their first slot (GEMM outputs, leaves): copy to the rest."""
        for i in which:
            for slot in slots.get(i, ())[1:]:
                src = ws.view(slots[i][0], t, ws.sizes[nodes[i].size])
                dst = ws.view(slot, t, ws.sizes[nodes[i].size])
                if slot.accumulate:
                    dst += src
                else:
                    dst[...] = src

    def _forward_layer(self, k: int, ws: _Workspace, T: int) -> None:
        plan, layout, prog = self.program.plan, self.program.layout, self.program
        slots, nodes = layout.forward, plan.forward.nodes
        stacks, types = self._stacks[k], self._types
        B = ws.B
        leaves = [i for i, n in enumerate(nodes) if n.op in ("input", "state") and len(slots.get(i, ())) > 1]
        for g in plan.forward.before:
            with self._part("forward: input GEMM, all steps"):
                self._forward_gemm(g, ws, stacks, slots, 0, T * B, types)
            for t in range(T):
                self._copies(slots, nodes, ws, t, g.outputs)
        kernels = iter(prog.forward_kernels)
        step = [(op, next(kernels) if isinstance(op, Kernel) else None) for op in plan.forward.step]
        for t in range(T):
            self._copies(slots, nodes, ws, t, leaves)
            for op, desc in step:
                if desc is None:
                    with self._part("forward: per-step GEMMs (recurrent)"):
                        self._forward_gemm(op, ws, stacks, slots, t, B, types)
                    self._copies(slots, nodes, ws, t, op.outputs)
                else:
                    with self._part("forward: pointwise kernels"):
                        self._launch(desc, slots, ws, self._params[k], t)

    def _forward_gemm(self, g: Gemm, ws: _Workspace, stacks: dict, slots: dict, t: int, rows: int,
                      types: tuple) -> None:
        (v,) = g.inputs
        stack = self.program.layout.stacks[v]
        first = stack.index(g.matrices[0])
        assert stack[first:first + len(g.matrices)] == g.matrices, "a fused GEMM reads a run of its stack"
        W = stacks[v]
        cols = W.shape[1]
        row_off = sum(self._matrix_rows(m, ws) for m in stack[:first])
        n_out = sum(self._matrix_rows(m, ws) for m in g.matrices)
        a, out = slots[v][0], slots[g.outputs[0]][0]
        gemm(rows, n_out, cols, ws.ptr(a, t), ws.width[a.buffer], False,
             W.data.ptr + W.itemsize * row_off * cols, cols, True,
             ws.ptr(out, t), ws.width[out.buffer], out.accumulate, types)

    def _matrix_rows(self, m: str, ws: _Workspace) -> int:
        return ws.sizes[self.cell.param(m).shape[0]]

    def forward(self, x, state: dict | None = None, *, train: bool = True):
        """x [T, B, input] (CuPy, the layer's dtype) -> (y [T, B, output], final state {name: [L, B, size]})."""
        if not isinstance(x, cupy.ndarray):
            raise UsageError(f"x must be a CuPy array on the cuda backend, got {type(x).__name__} "
                             "(use cupy.asarray)")
        if x.ndim != 3:
            raise UsageError(f"x must be a 3-D CuPy array [T, B, input_size], got shape {list(x.shape)}")
        T, B = x.shape[:2]
        if T < 1 or B < 1:
            raise UsageError(f"x must have at least one step and one sequence, got shape {list(x.shape)}")
        if B > 65535:  # the kernels put the batch on the grid's y dimension
            raise UsageError(f"the CUDA backend takes at most 65535 sequences per call, got {B}; split the batch")
        self._check_array("x", x, (T, B, self.input_size))
        shapes = self.state_shapes(B)
        if state is None:
            state = {name: cupy.zeros(s, self.dtype) for name, s in shapes.items()}
        if not isinstance(state, dict) or set(state) != set(shapes):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise UsageError(f"state must be a dict with the keys {sorted(shapes)}, got {got}")
        for name in shapes:
            self._check_array(f"state[{name!r}]", state[name], shapes[name])
        workspaces = self._workspace(T, B, train)
        cell, layout = self.cell, self.program.layout
        h = x
        for k, ws in enumerate(workspaces):
            ws.arrays["x"][...] = h
            for s in cell.states:
                ws.arrays[f"hist_{s.name}"][0] = state[s.name][k]
            self._replay(ws, "forward", lambda k=k, ws=ws: self._forward_layer(k, ws, T))
            out_slot = layout.forward[cell.output][0]
            h = ws.view(out_slot, None, ws.sizes[cell.output_size])
        y = h.copy()  # the workspace is reused by the next call
        final = {s.name: cupy.stack([ws.arrays[f"hist_{s.name}"][T] for ws in workspaces]) for s in cell.states}
        self._tape = workspaces if train else None
        self._shape = (T, B)
        return y, final

    def backward(self, dy, dstate: dict | None = None):
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input]; adds parameter
        gradients into grads(); initial_state_grads() holds dL/d initial state."""
        if self._tape is None:
            raise UsageError("backward() needs a forward() with train=True first")
        T, B = self._shape
        self._check_array("dy", dy, (T, B, self.output_size))
        shapes = self.state_shapes(B)
        if dstate is None:
            dstate = {name: cupy.zeros(s, self.dtype) for name, s in shapes.items()}
        if not isinstance(dstate, dict) or set(dstate) != set(shapes):
            raise UsageError(f"dstate must be a dict with the keys {sorted(shapes)}")
        for name in shapes:
            self._check_array(f"dstate[{name!r}]", dstate[name], shapes[name])
        cell = self.cell
        d_initial = {s.name: [None] * self.num_layers for s in cell.states}
        g = dy
        for k in reversed(range(self.num_layers)):
            ws = self._tape[k]
            ws.arrays["dy"][...] = g
            ws.arrays["dx"].fill(0)
            for s in cell.states:
                d = ws.arrays[f"dhist_{s.name}"]
                d.fill(0)
                d[T] = dstate[s.name][k]
            self._replay(ws, "backward", lambda k=k, ws=ws: self._backward_layer(k, ws, T))
            with self._part("backward: vector-gradient reductions"):
                self._vector_grads(k, ws, T)
            g = ws.arrays["dx"]
            for s in cell.states:
                d_initial[s.name][k] = ws.arrays[f"dhist_{s.name}"][0]
        self._initial_state_grads = {n: cupy.stack(a) for n, a in d_initial.items()}
        return g.copy()

    def _backward_layer(self, k: int, ws: _Workspace, T: int) -> None:
        plan, layout, prog = self.program.plan, self.program.layout, self.program
        slots, nodes = layout.backward, plan.backward.nodes
        stacks, types, B = self._stacks[k], self._types, ws.B
        leaves = [i for i, n in enumerate(nodes) if n.op in ("grad_in", "fwd") and len(slots.get(i, ())) > 1]
        kernels = iter(prog.backward_kernels)
        step = [(op, next(kernels) if isinstance(op, Kernel) else None) for op in plan.backward.step]
        # an unfused sum is several accumulating GEMMs into one output: copy it on after the last only
        last = {op.outputs[0]: i for i, (op, desc) in enumerate(step) if desc is None}
        for t in reversed(range(T)):
            self._copies(slots, nodes, ws, t, leaves)
            for i, (op, desc) in enumerate(step):
                if desc is None:
                    with self._part("backward: per-step GEMMs (gradients passed back)"):
                        self._backward_gemm(op, ws, stacks, slots, t, B, types)
                    if last[op.outputs[0]] == i:
                        self._copies(slots, nodes, ws, t, op.outputs)
                else:
                    with self._part("backward: pointwise kernels"):
                        self._launch(desc, slots, ws, self._params[k], t)
            for w in plan.weight_grads:
                if not w.batched:
                    with self._part("backward: weight-gradient GEMMs"):
                        self._weight_grad(k, w.matrices, w.v, ws, t, B, types)
            for vg in plan.vector_grads:
                if not vg.batched:
                    slot = next(s for s in slots[vg.node] if not s.accumulate)
                    self._grads[k][vg.name] += ws.view(slot, t, ws.sizes[nodes[vg.node].size]).sum(0)
        for g in plan.backward.after:
            with self._part("backward: input-gradient GEMM, all steps"):
                self._backward_gemm(g, ws, stacks, slots, 0, T * B, types)
        for w in plan.weight_grads:
            if w.batched:
                with self._part("backward: weight-gradient GEMMs"):
                    self._weight_grad(k, w.matrices, w.v, ws, 0, T * B, types)

    def _vector_grads(self, k: int, ws: _Workspace, T: int) -> None:
        """Batched vector gradients: one reduction over T * B rows (outside the graph: it allocates)."""
        slots, nodes = self.program.layout.backward, self.program.plan.backward.nodes
        for vg in self.program.plan.vector_grads:
            if vg.batched:
                n = ws.sizes[nodes[vg.node].size]
                slot = next(s for s in slots[vg.node] if ws.steps[s.buffer] == T and not s.accumulate)
                self._grads[k][vg.name] += ws.view(slot, None, n).reshape(T * ws.B, n).sum(0)

    def _replay(self, ws: _Workspace, phase: str, issue) -> None:
        """Run a layer's loop as a CUDA graph: captured at the first call for these buffers, then replayed
        with one launch, so the host no longer pays for every GEMM and kernel of every step. A loop
        that allocates (per-step vector gradients of an unbatched schedule) runs without a graph."""
        if not self.use_graphs or (phase == "backward" and not self.schedule.batch_weight_grads):
            issue()
            return
        graph = ws.graphs.get(phase)
        if graph is None:
            stream = cupy.cuda.Stream(non_blocking=True)
            stream.wait_event(cupy.cuda.get_current_stream().record())
            with stream:
                stream.begin_capture()
                try:
                    issue()
                finally:
                    graph = stream.end_capture()
            ws.graphs[phase] = graph
        graph.launch(cupy.cuda.get_current_stream())

    def _backward_gemm(self, g: Gemm, ws: _Workspace, stacks: dict, slots: dict, t: int, rows: int,
                       types: tuple) -> None:
        """sum_k g_k @ W_k into the output: one GEMM over the whole stack, or one block."""
        v = self.program.layout.transposes[g.outputs[0]]
        stack = self.program.layout.stacks[v]
        W = stacks[v]
        cols = W.shape[1]
        gin = self.program.layout.gin[v]
        if set(g.matrices) == set(stack):
            first, count = 0, len(stack)
        else:
            (m,) = g.matrices
            first, count = stack.index(m), 1
        row_off = sum(self._matrix_rows(m, ws) for m in stack[:first])
        inner = sum(self._matrix_rows(m, ws) for m in stack[first:first + count])
        out = slots[g.outputs[0]][0]
        a_ptr = ws.address(gin, t, row_off)
        n_out = ws.sizes[self.program.plan.backward.nodes[g.outputs[0]].size]
        gemm(rows, n_out, inner, a_ptr, ws.width[gin], False, W.data.ptr + W.itemsize * row_off * cols, cols, False,
             ws.ptr(out, t), ws.width[out.buffer], out.accumulate or g.accumulate, types)

    def _weight_grad(self, k: int, matrices, v: int, ws: _Workspace, t: int, rows: int, types: tuple) -> None:
        """dW += G^T V over `rows` rows from step t: the whole stack at once, or one block."""
        stack = self.program.layout.stacks[v]
        G = self._grad_stacks[k][v]
        cols = G.shape[1]
        gin = self.program.layout.gin[v]
        vslot = self.program.layout.forward[v][0]
        runs = [(0, len(stack))] if set(matrices) == set(stack) else [(stack.index(m), 1) for m in matrices]
        for first, count in runs:
            row_off = sum(self._matrix_rows(m, ws) for m in stack[:first])
            n = sum(self._matrix_rows(m, ws) for m in stack[first:first + count])
            g_ptr = ws.address(gin, t, row_off)
            gemm(n, cols, rows, g_ptr, ws.width[gin], True, ws.ptr(vslot, t), ws.width[vslot.buffer], False,
                 G.data.ptr + G.itemsize * row_off * cols, cols, True, types)

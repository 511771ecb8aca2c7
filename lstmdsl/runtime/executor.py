"""The executor: runs a compiled program's plan on the GPU, op by op, as the plan says.

It only evaluates sizes and addresses: a GemmCall becomes one cuBLAS call, a Kernel one launch of its
generated kernel (arguments bound as its KernelDesc says), a Copy one strided copy (or the add kernel).
Each phase's ops of one layer run as a CUDA graph, captured at the first call for a workspace and the
addresses it reads, then replayed with one launch; when someone else is capturing the stream (torch's
CUDA graphs), the ops are issued into that capture instead.

The Engine runs a stack of layers over workspaces it keeps per (T, B, train). It takes device
addresses only: the caller owns inputs, outputs, parameters and gradients (CuPy arrays for CudaLayer,
torch tensors for lstmdsl.torch), and names the stream.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import LstmdslError
from ..plan import ELEMENT_TYPES, Copy, Gemm, GemmCall, Kernel, Operand, Transfer, VectorGrad, WeightGrad
from ..program import Program
from . import convert, cublas, device
from .nvrtc import function, load_module
from .persistent import PersistentRun, launch_shape
from .workspace import Workspace

ADD_THREADS = 128
MAX_GRID_Y = 65535


@dataclass(frozen=True)
class Binding:
    """One layer's parameters and gradients as device addresses: weight stacks and their gradients by
    stack name, vectors and their gradients by parameter name. `key` (the addresses) names the CUDA
    graphs captured with them."""

    weights: dict[str, int]
    grads: dict[str, int]
    vectors: dict[str, int]
    vector_grads: dict[str, int]
    key: tuple = field(init=False, repr=False)

    def __post_init__(self):
        key = tuple(tuple(sorted(d.items())) for d in (self.weights, self.grads, self.vectors, self.vector_grads))
        object.__setattr__(self, "key", key)


def _kind(phase: str, place: str, op) -> str:
    """What the profiler files an op's time under."""
    if isinstance(op, Kernel):
        return f"{phase}: pointwise kernels"
    if isinstance(op, Copy):
        return f"{phase}: copies between slots"
    if isinstance(op, WeightGrad):
        return "backward: weight-gradient GEMMs"
    if isinstance(op, VectorGrad):
        return "backward: vector-gradient reductions"
    if phase == "forward":
        return "forward: input GEMM, all steps" if place != "loop" else "forward: per-step GEMMs (recurrent)"
    return "backward: input-gradient GEMM, all steps" if place != "loop" else \
        "backward: per-step GEMMs (gradients passed back)"


class _Issue:
    """Issues one phase of one layer onto a stream."""

    def __init__(self, engine: "Engine", ws: Workspace, bind: Binding, stream: int, lane: int):
        self.engine, self.ws, self.bind, self.stream, self.lane = engine, ws, bind, stream, lane
        self.plan = engine.program.plan
        self.stacks = {s.name: s for s in self.plan.storage.stacks}

    def operand(self, o: Operand, t: int, ld_row: int) -> tuple[int, int]:
        """(address, leading dimension) of a GEMM operand at step t."""
        ws = self.ws
        if o.space == "buffer":
            return ws.address(o.name, t + o.step, o.offset), ws.width[o.name]
        if o.space in ("weights", "grads"):
            stack = self.stacks[o.name]
            ld = self.stack_ld(stack) if o.space == "weights" else ws.dim((stack.cols,))  # gradients: the masters'
            base = (self.bind.weights if o.space == "weights" else self.bind.grads)[o.name]
            item = ELEMENT_TYPES[stack.dtype if o.space == "weights" else self.plan.dtype]  # gradients: master type
            return base + item * ws.dim(o.offset) * ld, ld
        if o.space == "vector_grad":
            return self.bind.vector_grads[o.name], ld_row
        raise LstmdslError(f"unknown operand space {o.space!r}")

    def stack_ld(self, stack) -> int:
        """The leading dimension of the weights the GEMMs read (a padded stack's rows are aligned)."""
        return self.ws.span((stack.cols,)) if stack.padded else self.ws.dim((stack.cols,))

    def gemm(self, c: GemmCall, t: int) -> None:
        ws = self.ws
        M = ws.dim(c.m)
        N = ws.span(c.n) if "n" in c.padded else ws.dim(c.n)  # over the aligned rows (GemmCall.padded)
        K = ws.span(c.k) if "k" in c.padded else ws.dim(c.k)
        a, lda = self.operand(c.a, t, M if c.trans_a else K)
        b, ldb = self.operand(c.b, t, K if c.trans_b else N)
        out, ldc = self.operand(c.c, t, N)
        types = (c.a_type, c.b_type, c.c_type, c.compute)
        if c.heads is None:
            cublas.gemm(M, N, K, a, lda, c.trans_a, b, ldb, c.trans_b, out, ldc, c.accumulate, types, self.stream,
                        self.lane)
            return
        strides = tuple(math.prod(ws.env[s] for s in stride) for stride in c.strides)
        cublas.gemm_batched(M, N, K, a, lda, c.trans_a, b, ldb, c.trans_b, out, ldc, c.accumulate, types,
                            self.stream, self.lane, ws.env[c.heads], strides)

    def copy(self, op: Copy, t: int, rows: int) -> None:
        ws = self.ws
        n = ws.dim((op.size,))
        src, dst = ws.address(op.src.buffer, t + op.src.step, op.src.col), ws.address(op.dst.buffer, t + op.dst.step,
                                                                                        op.dst.col)
        if op.dst_type:  # between buffers of two element types
            convert.convert_rows(dst, ws.pitch(op.dst.buffer), op.dst_type, src, ws.pitch(op.src.buffer), op.dtype, n,
                                 rows, self.stream)
        elif op.dst.accumulate:
            device.launch(self.engine.add_function, (math.ceil(n / ADD_THREADS), min(rows, MAX_GRID_Y)), ADD_THREADS,
                          [("ptr", dst), ("int", ws.width[op.dst.buffer]), ("ptr", src),
                           ("int", ws.width[op.src.buffer]), ("int", n), ("int", rows)], self.stream)
        else:
            device.copy_rows(dst, ws.pitch(op.dst.buffer), src, ws.pitch(op.src.buffer), n * ws.item[op.src.buffer],
                             rows, self.stream)

    def arg(self, b, t: int, run: "PersistentRun | None" = None) -> tuple[str, int]:
        """A kernel argument's value at step t, as its ArgBind says (run: a persistent kernel's launch)."""
        ws, kind = self.ws, b.kind
        if kind == "batch":
            return "int", ws.B
        if kind == "size":
            return "int", ws.env[b.name]
        if kind == "vector":
            return "ptr", self.bind.vectors[b.name]
        if kind == "weights":
            return "ptr", self.operand(Operand("weights", b.name, b.offset), t, 0)[0]
        if kind == "ldw":
            return "int", self.stack_ld(self.stacks[b.name])
        if kind == "ptr":
            return "ptr", ws.address(b.slot.buffer, t + b.slot.step, b.slot.col)
        if kind == "ld":
            return "int", ws.width[b.slot.buffer]
        # a persistent kernel's: it computes each step's addresses itself
        if kind == "steps":
            return "int", ws.T
        if kind == "barrier":
            return "ptr", ws.counter
        if kind == "cached":
            return "int", int(run.cached)
        if kind == "stage_rows":
            return "int", run.stage_rows
        if kind == "ptr0":  # the slot at step 0; the kernel adds each step's area
            return "ptr", ws.base[b.slot.buffer] + ws.item[b.slot.buffer] * ws.dim(b.slot.col)
        if kind == "stride":  # elements between steps (0: one area for all steps)
            return "int", 0 if ws.steps[b.slot.buffer] == 1 else ws.B * ws.width[b.slot.buffer]
        if kind == "ring":
            return "int", 2 if b.slot.buffer in ws.ring else 0
        raise LstmdslError(f"unknown kernel argument binding {kind!r}")

    def kernel(self, op: Kernel, t: int) -> None:
        ws = self.ws
        args = [self.arg(a.bind, t) for a in self.engine.program.kernels[op.name].args]
        if op.launch.kind == "rows":  # one block per row
            grid = (ws.B, 1)
        else:
            grid = (math.ceil(max(ws.env[s] for s in op.launch.sizes) / op.launch.per_block), ws.B)
        device.launch(self.engine.functions[op.name], grid, op.launch.threads, args, self.stream)

    def persistent(self, name: str, run: "PersistentRun") -> None:
        """The whole loop as one cooperative launch of the persistent kernel (plan.Persistent)."""
        pers = getattr(self.plan, name).loop.persistent
        args = [self.arg(a.bind, 0, run) for a in self.engine.program.kernels[pers.name].args]
        with self.engine.part(f"{name}: the persistent kernel (all steps)", self.stream):
            device.zero(self.ws.counter, 4, self.stream)
            device.launch_cooperative(self.engine.functions[pers.name], run.blocks, pers.threads, run.shared, args,
                                      self.stream)

    def op(self, phase: str, place: str, op, t: int) -> None:
        if isinstance(op, Kernel) and op.joins:  # a stage of the launch of the kernel before it (row fusion)
            return
        with self.engine.part(_kind(phase, place, op), self.stream):
            if isinstance(op, Kernel):
                self.kernel(op, t)
            elif isinstance(op, Copy):
                self.copy(op, t, self.ws.B if place == "loop" else self.ws.T * self.ws.B)
            elif isinstance(op, (Gemm, WeightGrad, VectorGrad)):
                self.gemm(op.call, t)

    def phase(self, name: str) -> None:
        phase = getattr(self.plan, name)
        for op in phase.before:
            self.op(name, "before", op, 0)
        run = self.engine.persistent_run(self.ws, name)
        if run is not None:
            self.persistent(name, run)
        else:
            steps = range(self.ws.T) if phase.loop.direction == "forward" else range(self.ws.T - 1, -1, -1)
            for t in steps:
                for op in phase.loop.body:
                    self.op(name, "loop", op, t)
        for op in phase.after:
            self.op(name, "after", op, 0)



class Engine:
    """A program's kernels on one device, its workspaces, and the loop over the layers of a stack."""

    MAX_WORKSPACES = 8
    MAX_GRAPHS = 4  # per workspace and phase: graphs for other parameter addresses are dropped first

    def __init__(self, program: Program, sizes: list[dict[str, int]]):
        self.program, self.sizes = program, sizes
        module = load_module(program.source)
        self.functions = {name: function(module, name) for name in program.kernels}
        self.add_function = function(module, program.add.name) if program.add else None
        self.workspaces: OrderedDict[tuple, list[Workspace]] = OrderedDict()
        self.tape: tuple | str | None = None  # (workspace key, owner) of the last training forward; "used"
        # once a backward has written over its activations (Storage.in_place)
        self.use_graphs = True
        self.parts: dict | None = None  # profiling: op kind -> [(start event, end event)]
        self.use_persistent = True  # False: always the stepwise loop (before the first call: the choice is
        # kept per workspace)

    # -- workspaces
    def workspace(self, T: int, B: int, train: bool, stream: int) -> list[Workspace]:
        """The workspaces for (T, B), allocated (and filled) on `stream` the first time."""
        key = (T, B, train)
        if key in self.workspaces:
            self.workspaces.move_to_end(key)
        else:
            storage = self.program.plan.storage
            layers: list[Workspace] = []
            for s in self.sizes:  # a training stack's layers share their backward buffers (Workspace)
                given = {"x": self._output_view(layers[-1])} if layers and storage.stack_input else None
                layers.append(Workspace(storage, s, T, B, train, stream, layers, given))
            self.workspaces[key] = layers
            for old in list(self.workspaces)[:-self.MAX_WORKSPACES]:
                tape_key = self.tape[0] if isinstance(self.tape, tuple) else None
                if old != tape_key and not self.workspaces[old][0].pinned:
                    del self.workspaces[old]
        return self.workspaces[key]

    def _output_view(self, ws: Workspace):
        """The layer's output y for all steps as an array [T, B, width] over its workspace's memory: the next
        layer's x (Storage.stack_input)."""
        y = next(t for t in self.program.plan.storage.outputs if t.what == "y")
        return ws.arrays[y.buffer][y.first:y.first + ws.T]

    def free(self) -> None:
        """Drop the workspaces that no captured graph of someone else holds (and a pending backward)."""
        for key in [k for k, w in self.workspaces.items() if not w[0].pinned]:
            del self.workspaces[key]
        self.tape = None

    # -- the persistent schedule
    def persistent_run(self, ws: Workspace, phase: str) -> PersistentRun | None:
        """The launch of the phase's persistent kernel at this workspace's sizes, or None where the plan's
        cost model chooses the stepwise loop (runtime/persistent.py). Decided once per workspace."""
        if phase not in ws.persistent:
            plan = self.program.plan
            pers = getattr(plan, phase).loop.persistent
            run = None
            if pers is not None and self.use_persistent:
                run = launch_shape(pers, self.program.kernels[pers.name], self.functions[pers.name], ws)
            if run is None and self.use_persistent and plan.schedule.persistent == "on" and phase == "forward":
                why = ("the cell has no persistent kernel (block-diagonal matrices, or a value copied between "
                       "slots each step)" if pers is None else
                       f"it does not fit this GPU at B = {ws.B}, T = {ws.T}")
                warnings.warn(f"lstmdsl: schedule 'persistent' for cell {plan.cell.name}: {why}; running the "
                              "stepwise loop", stacklevel=2)
            if run is not None and ws.counter is None:
                ws.counter_array = device.empty((1,), np.uint32, 0, ws.stream)
                ws.counter = ws.counter_array.data.ptr
            ws.persistent[phase] = run
        return ws.persistent[phase]

    # -- profiling
    @contextlib.contextmanager
    def part(self, kind: str, stream: int):
        """Times the work issued inside the block on `stream` with a pair of events (when profiling)."""
        if self.parts is None:
            yield
            return
        import cupy

        on = cupy.cuda.ExternalStream(stream)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(on)
        yield
        end.record(on)
        self.parts.setdefault(kind, []).append((start, end))

    # -- running
    def _run(self, name: str, ws: Workspace, bind: Binding, stream: int) -> None:
        lane = cublas.lane(stream)
        if device.is_capturing(stream):  # inside someone else's graph: record the ops there, keep the memory
            ws.pinned = True
            _Issue(self, ws, bind, stream, lane).phase(name)
            return
        if not self.use_graphs or self.parts is not None:
            _Issue(self, ws, bind, stream, lane).phase(name)
            return
        key = (name, bind.key, lane)
        graph = ws.graphs.get(key)
        if graph is None:
            old = [k for k in ws.graphs if k[0] == name]
            for k in old[:max(0, len(old) - self.MAX_GRAPHS + 1)]:
                del ws.graphs[k]
            graph = ws.graphs[key] = device.Graph(lambda side: _Issue(self, ws, bind, side, lane).phase(name), stream)
        graph.launch(stream)

    @staticmethod
    def _transfer(ws: Workspace, t: Transfer) -> tuple[int, int, int, int, str]:
        """(address, pitch, rows, width in elements, element type) of a transfer's region in a workspace."""
        step = {"all": t.first, "0": 0, "T": ws.T}[t.step]
        rows = ws.T * ws.B if t.step == "all" else ws.B
        return ws.address(t.buffer, step, t.col), ws.pitch(t.buffer), rows, ws.dim((t.size,)), ws.dtype[t.buffer]

    def _regions(self, ws: Workspace, direction: str) -> dict:
        """The regions of the caller's inputs or outputs in a workspace (computed once per workspace)."""
        if direction not in ws.regions:
            storage = self.program.plan.storage
            transfers = storage.inputs if direction == "in" else storage.outputs
            regions: dict[str, list] = {}  # a state in half precision goes in twice: its ring and its history
            for t in transfers:
                if t.buffer in ws.base:
                    regions.setdefault(t.what, []).append(self._transfer(ws, t))
            ws.regions[direction] = regions
        return ws.regions[direction]

    def _put(self, ws: Workspace, what: str, src: int, src_pitch: int | None, stream: int,
             src_type: str | None = None) -> None:
        """Copy the caller's array (of src_type, default the plan's element type) into a region, converting
        where the region holds another type (mixed precision)."""
        for dst, pitch, rows, n, dtype in self._regions(ws, "in")[what]:
            src_type = src_type or self.program.plan.dtype
            width = n * ELEMENT_TYPES[src_type]
            if (src, width if src_pitch is None else src_pitch, src_type) == (dst, pitch, dtype):
                continue  # already there (a stack's x is the layer below's y: Storage.stack_input)
            convert.convert_rows(dst, pitch, dtype, src, width if src_pitch is None else src_pitch, src_type, n,
                                 rows, stream)

    def _zero(self, ws: Workspace, what: str, stream: int) -> None:
        for dst, pitch, rows, n, dtype in self._regions(ws, "in")[what]:
            device.zero_rows(dst, pitch, n * ELEMENT_TYPES[dtype], rows, stream)

    def _get(self, ws: Workspace, what: str, dst: int, stream: int, dst_pitch: int | None = None,
             dst_type: str | None = None) -> None:
        src, pitch, rows, n, dtype = self._regions(ws, "out")[what][0]
        dst_type = dst_type or self.program.plan.dtype
        width = n * ELEMENT_TYPES[dst_type]
        convert.convert_rows(dst, width if dst_pitch is None else dst_pitch, dst_type, src, pitch, dtype, n, rows,
                             stream)

    def output_region(self, ws: Workspace, what: str) -> tuple[int, int, str]:
        """(address, pitch, element type) of an output in a workspace (the next layer reads it from there)."""
        src, pitch, _, _, dtype = self._regions(ws, "out")[what][0]
        return src, pitch, dtype

    def forward(self, T: int, B: int, train: bool, params: list[Binding], x: int, h0: dict[str, int], y: int,
                hn: dict[str, int], stream: int, owner=None, steps: dict[str, int] | None = None,
                x_pitch: int | None = None, y_pitch: int | None = None, io_type: str | None = None) -> None:
        """x [T, B, input], h0 {state: [L, B, size]} (None: zeros) -> y [T, B, output], hn {state: [L, B,
        size]}, all contiguous device arrays of the program's element type, given by address; steps: the per-step
        inputs ([T, B, n] each: one address for every layer, or a list of one per layer). x_pitch / y_pitch: bytes between rows where x or
        y is part of a wider array (one direction's half of a bidirectional layer's). y may instead be a
        function returning (y, hn, owner), called once the first layer's work is issued, so the caller
        allocates its outputs while the GPU already runs. The caller's arrays are of the plan's element type,
        except x and y where io_type says otherwise (mixed precision: the half type, as the workspace holds
        them); where they differ from the workspace's, they are converted on the way in and out."""
        cell = self.program.plan.cell
        workspaces = self.workspace(T, B, train, stream)
        src, src_pitch, src_type = x, x_pitch, io_type
        for k, ws in enumerate(workspaces):
            self._put(ws, "x", src, src_pitch, stream, src_type)
            for name, ptr in (steps or {}).items():
                self._put(ws, f"step:{name}", ptr if isinstance(ptr, int) else ptr[k], None, stream)
            for s in cell.states:
                if h0 is None:
                    self._zero(ws, f"state:{s.name}", stream)
                else:
                    self._put(ws, f"state:{s.name}", h0[s.name] + k * self._state_bytes(ws, s), None, stream)
            self._run("forward", ws, params[k], stream)
            if callable(y):
                y, hn, owner = y()
            for s in cell.states:
                self._get(ws, f"state:{s.name}", hn[s.name] + k * self._state_bytes(ws, s), stream)
            src, src_pitch, src_type = self.output_region(ws, "y")
        self._get(workspaces[-1], "y", y, stream, y_pitch, io_type)
        self.tape = ((T, B, train), owner) if train else self.tape

    def tape_owner(self, T: int, B: int):
        """The owner given with the training forward whose activations the workspaces hold for (T, B), or
        None when they hold none."""
        if not isinstance(self.tape, tuple) or self.tape[0] != (T, B, True) or self.tape[0] not in self.workspaces:
            return None
        return self.tape[1]

    def backward(self, params: list[Binding], dy: int, dhn: dict[str, int], dx: int, dh0: dict[str, int],
                 stream: int, dy_pitch: int | None = None, io_type: str | None = None) -> None:
        """dy [T, B, output], dhn {state: [L, B, size] or None for zeros} -> dx [T, B, input], dh0; adds the parameter
        gradients into the addresses of params (Binding.grads and vector_grads). io_type: the element type of
        dy and dx where it is not the plan's (converted on the way in and out)."""
        if not isinstance(self.tape, tuple) or self.tape[0] not in self.workspaces:
            raise LstmdslError("backward() needs a forward() with train=True first" + (
                "; the last one's activations were used by a backward already (this cell's backward writes its "
                "gradients over them to save memory): run forward(train=True) again" if self.tape == "used" else ""))
        cell, storage = self.program.plan.cell, self.program.plan.storage
        workspaces = self.workspaces[self.tape[0]]
        if any(where == "backward" for where, _, _ in storage.in_place):
            self.tape = "used"  # the gradients overwrite the activations (Storage.in_place)
        src, src_pitch, src_type = dy, dy_pitch, io_type
        for k in reversed(range(len(workspaces))):
            ws = workspaces[k]
            # dy first: it comes from the layer above's dx, whose memory this layer's dx may share (Workspace)
            self._put(ws, "dy", src, src_pitch, stream, src_type)
            for b in storage.buffers:
                if b.zero:
                    device.zero(ws.base[b.name], ws.nbytes(b.name), stream)
            for s in cell.states:
                if dhn[s.name] is None:  # no gradient reaches this final state
                    self._zero(ws, f"dstate:{s.name}", stream)
                else:
                    self._put(ws, f"dstate:{s.name}", dhn[s.name] + k * self._state_bytes(ws, s), None, stream)
            self._run("backward", ws, params[k], stream)
            for s in cell.states:
                self._get(ws, f"dstate:{s.name}", dh0[s.name] + k * self._state_bytes(ws, s), stream)
            src, src_pitch, src_type = self.output_region(ws, "dx")
        self._get(workspaces[0], "dx", dx, stream, dst_type=io_type)

    def _state_bytes(self, ws: Workspace, s) -> int:
        """Bytes of one layer's state in the caller's [L, B, size] array (of the plan's element type)."""
        return ws.B * ws.env[s.size] * ELEMENT_TYPES[self.program.plan.dtype]

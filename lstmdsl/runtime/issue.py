"""Issuing a plan's ops: one phase of one layer (or one chunk of its forward) onto a stream. Only sizes and
addresses are evaluated here: a GemmCall becomes one cuBLAS call, a Kernel one launch of its generated
kernel (arguments bound as its KernelDesc says), a Copy one strided copy (or the add kernel)."""

from __future__ import annotations

import copy
import math

from ..errors import LstmdslError
from ..plan import (ELEMENT_TYPES, HALF_TYPES, Copy, Fold, Gemm, GemmCall, GemmWorkspace, Kernel, Operand, VectorGrad,
                    WeightGrad)
from . import convert, cublas, device
from .fanout import Fan
from .persistent import PersistentRun
from .workspace import Workspace

ADD_THREADS = 128
MAX_GRID_Y = 65535


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
    if isinstance(op, Fold):
        return "forward: the folded projection's weights (W P)"
    if phase == "forward" and place == "after":
        return "forward: the projection, all steps"
    if phase == "forward":
        return "forward: input GEMM, all steps" if place != "loop" and not op.first else \
            "forward: per-step GEMMs (recurrent)"
    return "backward: input-gradient GEMM, all steps" if place != "loop" else \
        "backward: per-step GEMMs (gradients passed back)"


_SHAPE = ("batch", "size", "ld", "dim", "steps", "exchanging", "cached", "stage_rows", "split", "stride", "ring")


def shape_value(b, ws, run: PersistentRun | None = None) -> int:
    """An integer argument fixed by the workspace's sizes and the persistent launch `run` (those of
    kerneldesc.SHAPE_KINDS are a specialised kernel's constants: runtime/specialise.py)."""
    kind = b.kind
    if kind == "batch":
        return ws.B
    if kind == "size":
        return ws.env[b.name]
    if kind == "ld":
        return ws.width[b.slot.buffer]
    if kind == "dim":
        return ws.dim(b.offset)
    if kind == "steps":
        return ws.T
    if kind == "exchanging":
        return int(run.exchange)
    if kind == "cached":
        return int(run.cached)
    if kind == "stage_rows":
        return run.stage_rows
    if kind == "split":
        return run.split
    if kind == "stride":  # elements between steps (0: one area for all steps)
        return 0 if ws.steps[b.slot.buffer] == 1 else ws.B * ws.width[b.slot.buffer]
    if kind == "ring":
        return ws.ring.get(b.slot.buffer, 0)  # (its areas: 2, or a chunk's steps)
    raise LstmdslError(f"kernel argument binding {kind!r} is not one of a shape")


class Issue:
    """Issues one phase of one layer onto a stream: engine, the executor's Engine (its program, functions
    and persistent choice); bind, the layer's Binding (executor.py); lane, the cuBLAS lane of its GEMMs;
    fan, the streams and lanes of the step's GEMMs that run at once (runtime/fanout.py), or None; wave, on a lane of
    a stack's wavefront (the workspace there: plan.GemmWorkspace)."""

    def __init__(self, engine, ws: Workspace, bind, stream: int, lane: int, fan: Fan | None = None, wave=False):
        self.engine, self.ws, self.bind, self.stream, self.lane, self.fan = engine, ws, bind, stream, lane, fan
        self.wave = wave
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
            item = ELEMENT_TYPES[stack.dtype if o.space == "weights" else self.plan.grad_type or self.plan.dtype]
            return base + item * ws.dim(o.offset) * ld, ld
        if o.space == "vector_grad":
            return self.bind.vector_grads[o.name], ld_row
        raise LstmdslError(f"unknown operand space {o.space!r}")

    def stack_ld(self, stack) -> int:
        """The leading dimension of the weights the GEMMs read (a padded stack's rows are aligned)."""
        return self.ws.span((stack.cols,)) if stack.padded else self.ws.dim((stack.cols,))

    def gemm_args(self, c: GemmCall, t: int, rows: int | None = None) -> tuple[int, ...]:
        """(M, N, K, a, lda, b, ldb, out, ldc) of a GEMM at step t, as gemm() issues it."""
        ws = self.ws
        M = ws.dim(c.m) if rows is None else rows
        N = ws.span(c.n) if "n" in c.padded else ws.dim(c.n)  # over the aligned rows (GemmCall.padded)
        K = ws.span(c.k) if "k" in c.padded else ws.dim(c.k)
        a, lda = self.operand(c.a, t, M if c.trans_a else K)
        b, ldb = self.operand(c.b, t, K if c.trans_b else N)
        out, ldc = self.operand(c.c, t, N)
        return M, N, K, a, lda, b, ldb, out, ldc

    def tune(self, name: str, wave: int = 0) -> None:
        """Times the shapes of the phase's per-step GEMMs both ways cuBLAS may run them (cublas.tune), once
        per process and shape; the executor calls it before it captures the phase (not inside a capture).
        wave: the steps of a wavefront's chunk where the phase runs in one (always step by step), else 0. The
        GEMMs a chunk runs over its own steps' rows (a wavefront's, a chunked forward-only workspace's) are
        timed at those rows too: cuBLAS's default for a few rows can be far slower than for all T * B (a
        folded projection's states over one chunk of 7 steps at B = 1: 45-51 us a call against 2-4 for the
        step's own GEMMs, on an H100). On a wavefront's lane every GEMM of the phase, those over all steps' rows
        too (a chunk of all T steps included), so that each finds its cuBLASLt kernel (GemmWorkspace.first_kernels)
        and its handle outside a capture."""
        self.whole_persistent()  # (decided before any capture, the backward's choice too: workspace())
        if not wave and self.engine.persistent_run(self.ws, name) is not None:
            return  # (the persistent kernel computes the products itself)
        lanes = self.lanes(name)
        for k, op in enumerate(getattr(self.plan, name).loop.body):
            c = getattr(op, "call", None)
            if isinstance(op, (Gemm, WeightGrad)) and c is not None and c.heads is None:
                self._tune_call(c, None, lanes.get(k, self.lane))
        steps = wave or (self.ws.chunk if name == "forward" else 0)
        phase, T = getattr(self.plan, name), self.ws.T
        if steps and (steps < T or self.wave):  # (a chunk's rows, the last, shorter chunk's: chunk(), backward_chunk())
            calls = [op.call for op in (*(phase.before if name == "forward" else ()), *phase.after)
                     if isinstance(op, Gemm) and not op.first and op.call is not None and op.call.heads is None]
            for c in calls:
                for n in sorted({min(steps, T), T - (T - 1) // steps * steps}):
                    self._tune_call(c, n * self.ws.B, self.lane)
        for op in (*phase.before, *phase.after) if self.wave else ():  # (those over all steps' rows, each once)
            c = getattr(op, "call", None)
            if (not isinstance(op, Gemm) or op.first) and c is not None and c.heads is None:
                self._tune_call(c, None, self.lane)

    def _tune_call(self, c: GemmCall, rows: int | None, lane: int) -> None:
        M, N, K, a, lda, b, ldb, out, ldc = self.gemm_args(c, 0, rows)
        cublas.tune(M, N, K, a, lda, c.trans_a, b, ldb, c.trans_b, ldc, c.accumulate,
                    (c.a_type, c.b_type, c.c_type, c.compute), self.stream, lane, *self.workspace_way(c), out)

    def workspace_way(self, c: GemmCall) -> tuple[int, GemmWorkspace | None]:
        """(workspace(c), the plan's rule where the GEMM runs cuBLASLt's first kernels: GemmWorkspace.first_kernels)."""
        nbytes, rule = self.workspace(c), self.plan.gemm_workspace
        return nbytes, rule if rule.first_kernels(nbytes) else None

    def workspace(self, c: GemmCall) -> int:
        """The cuBLAS workspace the GEMM runs with, bytes (the plan's rule at this batch, at these rows where every
        phase runs one persistent kernel, and on a wavefront's lane but for block-diagonal products, which cuBLAS's
        batched call runs: plan.GemmWorkspace)."""
        rows = self.ws.T * self.ws.B if self.whole_persistent() else 0
        return self.plan.gemm_workspace.nbytes(self.ws.B, c.a_type in HALF_TYPES, rows, self.wave and c.heads is None)

    def whole_persistent(self) -> bool:
        """Whether every phase the workspace runs is one persistent kernel (a training workspace's forward and
        backward, a forward-only one's forward), as the engine chose them (once per workspace; a training
        forward so makes the backward's choice too, its warning and its kernel's compile where it has them)."""
        ws = self.ws
        if ws.whole_persistent is None:
            phases = ("forward", "backward") if ws.train else ("forward",)
            ws.whole_persistent = all(self.engine.persistent_run(ws, p) is not None for p in phases)
        return ws.whole_persistent

    def lanes(self, name: str) -> dict[int, int]:
        """The cuBLAS lane of each GEMM of the loop's body that runs beside others (by its index)."""
        if self.fan is None:
            return {}
        return {k: lane for g in getattr(self.plan, name).loop.fanout for k, lane in zip(g, self.fan.lanes)}

    def gemm(self, c: GemmCall, t: int, rows: int | None = None) -> None:
        """One GEMM at step t; rows: M where the call covers only some steps' rows (a wavefront's chunk)."""
        ws = self.ws
        M, N, K, a, lda, b, ldb, out, ldc = self.gemm_args(c, t, rows)
        types = (c.a_type, c.b_type, c.c_type, c.compute)
        if c.heads is None:
            cublas.gemm(M, N, K, a, lda, c.trans_a, b, ldb, c.trans_b, out, ldc, c.accumulate, types, self.stream,
                        self.lane, *self.workspace_way(c))
            return
        strides = tuple(math.prod(s if isinstance(s, int) else ws.env[s] for s in stride) for stride in c.strides)
        cublas.gemm_batched(M, N, K, a, lda, c.trans_a, b, ldb, c.trans_b, out, ldc, c.accumulate, types,
                            self.stream, self.lane, ws.env[c.heads], strides, self.workspace(c))

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

    def arg(self, b, t: int, run: PersistentRun | None = None, phase: str = "") -> tuple[str, int]:
        """A kernel argument's value at step t, as its ArgBind says (run: a persistent kernel's launch)."""
        ws, kind = self.ws, b.kind
        if kind in _SHAPE:
            return "int", shape_value(b, ws, run)
        if kind == "vector":
            return "ptr", self.bind.vectors[b.name]
        if kind == "weights":
            return "ptr", self.operand(Operand("weights", b.name, b.offset), t, 0)[0]
        if kind == "ldw":
            return "int", self.stack_ld(self.stacks[b.name])
        if kind == "ptr":
            return "ptr", ws.address(b.slot.buffer, t + b.slot.step, b.slot.col)
        # a persistent kernel's: it computes each step's addresses itself
        if kind == "barrier":
            return "ptr", ws.counter
        if kind == "exchange":  # (none where the launch does not exchange: the kernel does not touch it then)
            area = ws.exchange_arrays.get(phase)
            return "ptr", 0 if area is None else area.data.ptr
        if kind == "ptr0":  # the slot at step 0; the kernel adds each step's area
            return "ptr", ws.base[b.slot.buffer] + ws.item[b.slot.buffer] * ws.dim(b.slot.col)
        raise LstmdslError(f"unknown kernel argument binding {kind!r}")

    def kernel(self, op: Kernel, t: int) -> None:
        ws = self.ws
        args = [self.arg(a.bind, t) for a in self.engine.program.kernels[op.name].args]
        if op.launch.kind == "rows":  # one block per row
            grid = (ws.B, 1)
        else:
            grid = (math.ceil(max(ws.env[s] for s in op.launch.sizes) / op.launch.per_block), ws.B)
        device.launch(self.engine.functions[op.name], grid, op.launch.threads, args, self.stream)

    def persistent(self, name: str, run: PersistentRun) -> None:
        """The whole loop as one cooperative launch of the persistent kernel (plan.Persistent)."""
        pers = getattr(self.plan, name).loop.persistent
        args = [self.arg(a.bind, 0, run, name) for a in self.engine.program.kernels[pers.name].args]
        with self.engine.part(f"{name}: the persistent kernel (all steps)", self.stream):
            device.zero(self.ws.counter, 4, self.stream)
            area = self.ws.exchange_arrays.get(name)
            if area is not None:  # (words of an earlier launch would carry the numbers of this one's steps)
                device.zero(area.data.ptr, area.nbytes, self.stream)
            function = self.ws.persistent_function.get(name) or self.engine.functions[pers.name]
            device.launch_cooperative(function, run.blocks, pers.threads, run.shared, args, self.stream)

    def op(self, phase: str, place: str, op, t: int) -> None:
        if isinstance(op, Kernel) and op.joins:  # a stage of the launch of the kernel before it (row fusion)
            return
        with self.engine.part(_kind(phase, place, op), self.stream):
            if isinstance(op, Kernel):
                self.kernel(op, t)
            elif isinstance(op, Copy):
                self.copy(op, t, self.ws.B if place == "loop" else self.ws.T * self.ws.B)
            elif isinstance(op, (Gemm, WeightGrad, VectorGrad, Fold)):
                self.gemm(op.call, t)

    def steps(self, name: str, t0: int, t1: int) -> None:
        """The loop's steps t0 .. t1-1, in the loop's direction."""
        phase = getattr(self.plan, name)
        groups = {g[0]: g for g in phase.loop.fanout} if self.fan is not None else {}
        for t in range(t0, t1) if phase.loop.direction == "forward" else range(t1 - 1, t0 - 1, -1):
            k = 0
            while k < len(phase.loop.body):
                if k in groups:
                    self.fanned(name, groups[k], t)
                    k += len(groups[k])
                else:
                    self.op(name, "loop", phase.loop.body[k], t)
                    k += 1

    def fanned(self, name: str, group: tuple[int, ...], t: int) -> None:
        """A group of the step's GEMMs at once: forked onto the fan's streams, each with its lane, joined back."""
        streams = self.fan.wave.fork(self.stream)
        try:  # (joined whatever happens: a capture with a branch left unjoined would hide the error)
            for k, s, lane in zip(group, streams, self.fan.lanes):
                branch = copy.copy(self)
                branch.stream, branch.lane = s, lane
                branch.op(name, "loop", getattr(self.plan, name).loop.body[k], t)
        finally:
            self.fan.wave.join(self.stream)

    def phase(self, name: str) -> None:
        phase = getattr(self.plan, name)
        if name == "forward" and self.ws.chunk:  # one chunk's steps of the rings kept (Plan.chunks: chunk())
            starts = range(0, self.ws.T, self.ws.chunk)
            for t0 in starts if phase.loop.direction == "forward" else reversed(starts):
                self.chunk(t0, min(t0 + self.ws.chunk, self.ws.T))
            return
        first = 0 if phase.loop.direction == "forward" else self.ws.T - 1
        for op in phase.before:  # (the products of the loop's first step only, at that step: Gemm.first)
            self.op(name, "before", op, first if getattr(op, "first", False) else 0)
        run = self.engine.persistent_run(self.ws, name)
        if run is not None:
            self.persistent(name, run)
        else:
            self.steps(name, 0, self.ws.T)
        if name == "backward":
            self.clear_overlaid(0, self.ws.T)
        for op in phase.after:
            self.op(name, "after", op, 0)

    def clear_overlaid(self, t0: int, t1: int) -> None:
        """Zero steps t0 .. t1-1 of the buffers that live in another's memory here (Buffer.over: dx over dy), after
        the backward's steps over them and before the GEMMs after the loop add into them."""
        for name in self.ws.overlaid:
            device.zero(self.ws.address(name, t0), (t1 - t0) * self.ws.B * self.ws.pitch(name), self.stream)

    def backward_chunk(self, t0: int, t1: int) -> None:
        """The backward over steps t0 .. t1-1 (a backward wavefront's chunk, passes/wavefront.py
        backward_blocker): the steps, then the input-gradient GEMMs after the loop over those steps' rows (into dx,
        cleared first where it lives in dy's memory)."""
        self.steps("backward", t0, t1)
        self.clear_overlaid(t0, t1)
        for op in self.plan.backward.after:
            if isinstance(op, Gemm):
                with self.engine.part(_kind("backward", "after", op), self.stream):
                    self.gemm(op.call, t0, (t1 - t0) * self.ws.B)

    def parameter_grads(self) -> None:
        """The parameter gradients after the backward loop (a backward wavefront's, after its last chunk)."""
        for op in self.plan.backward.after:
            if not isinstance(op, Gemm):
                self.op("backward", "after", op, 0)

    def chunk(self, t0: int, t1: int) -> None:
        """The forward over steps t0 .. t1-1 (a wavefront's chunk): the GEMMs before the loop over those
        steps' rows (passes/wavefront.py chunk_blocker: GEMMs over all steps' rows, and a folded projection's
        Fold and first products, issued with the loop's first chunk), then the steps, then the GEMMs after the
        loop over those steps' rows (a folded projection's states)."""
        fwd, rows = self.plan.forward, (t1 - t0) * self.ws.B
        first = 0 if fwd.loop.direction == "forward" else self.ws.T - 1  # (the loop's first step)
        for op in fwd.before:
            if isinstance(op, Fold) or op.first:
                if t0 <= first < t1:
                    self.op("forward", "before", op, first if isinstance(op, Gemm) and op.first else 0)
                continue
            with self.engine.part(_kind("forward", "before", op), self.stream):
                self.gemm(op.call, t0, rows)
        self.steps("forward", t0, t1)
        for op in fwd.after:
            with self.engine.part(_kind("forward", "after", op), self.stream):
                self.gemm(op.call, t0, rows)

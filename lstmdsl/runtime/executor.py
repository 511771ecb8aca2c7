"""The executor: runs a compiled program's plan on the GPU, op by op, as the plan says. It only evaluates sizes and
addresses (issue.py: a GemmCall becomes one cuBLAS call, a Kernel one launch of its generated kernel, a Copy one
strided copy or the add kernel). Each phase's ops of one layer run as a CUDA graph, captured at the first call for a
workspace and the addresses it reads, then replayed with one launch; when someone else is capturing the stream
(torch's CUDA graphs), the ops are issued into that capture instead. Where the plan's Wavefront says so, a stack's
forward is one graph whose branches are its layers, each on a stream of its own, chunk by chunk. The Engine runs a
stack of layers over workspaces it keeps per (T, B, train). It takes device addresses only: the caller owns inputs,
outputs, parameters and gradients (CuPy arrays for CudaLayer, torch tensors for lstmdsl.torch), and names the stream.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..errors import LstmdslError
from ..passes.persistent import why_not_persistent
from ..passes.wavefront import wavefront_blocker
from ..plan import ELEMENT_TYPES
from ..program import Program
from . import convert, cublas, device, specialise
from .fanout import fan
from .issue import Issue
from .nvrtc import function, load_module
from .persistent import PersistentRun, chunk_steps, launch_shape, stack_persistent
from .workspace import Workspace

@dataclass(frozen=True)
class Binding:
    """One layer's parameters and gradients as device addresses: weight stacks and their gradients by stack name,
    vectors and their gradients by parameter name. `key` (the addresses) names the CUDA graphs captured with them."""

    weights: dict[str, int]
    grads: dict[str, int]
    vectors: dict[str, int]
    vector_grads: dict[str, int]
    key: tuple = field(init=False, repr=False)

    def __post_init__(self):
        key = tuple(tuple(sorted(d.items())) for d in (self.weights, self.grads, self.vectors, self.vector_grads))
        object.__setattr__(self, "key", key)


class Engine:
    """A program's kernels on one device, its workspaces, and the loop over the layers of a stack."""

    MAX_WORKSPACES = 8
    MAX_GRAPHS = 4  # per workspace and phase: graphs for other parameter addresses are dropped first
    use_chunks = True  # False: forward-only workspaces made from then on keep all steps (plan.Chunks)

    def __init__(self, program: Program, sizes: list[dict[str, int]]):
        self.program, self.sizes = program, sizes
        module = load_module(program.source)
        self.functions = {name: function(module, name) for name in program.kernels}
        self.add_function = function(module, program.add.name) if program.add else None
        self.workspaces: OrderedDict[tuple, list[Workspace]] = OrderedDict()
        self.tape: tuple | str | None = None  # (workspace key, owner) of the last training forward; "used": overwritten
        self.use_graphs = True
        self.parts: dict | None = None  # profiling: op kind -> [(start event, end event)]
        self.use_persistent = True  # False: always the stepwise loop (set before the first call: kept per workspace)
        self.beside = False  # a direction beside the other, running at once (Persistent.beside_*; before 1st call)
        self.use_wavefront = True  # False: a stack's layers one after the other (likewise kept per workspace)
        self._wave: device.Wave | None = None  # the layers' streams of a wavefront, once one runs
        self.use_fanout = True  # False: a step's GEMMs one after another (runtime/fanout.py)
        self.fan_wave: device.Wave | None = None  # the streams of a step's GEMMs that run at once, once some do

    # -- workspaces
    def workspace(self, T: int, B: int, train: bool, stream: int) -> list[Workspace]:
        """The workspaces for (T, B), allocated (and filled) on `stream` the first time."""
        key = (T, B, train)
        if key in self.workspaces:
            self.workspaces.move_to_end(key)
        else:
            storage = self.program.plan.storage
            layers: list[Workspace] = []
            own = frozenset(b.name for b in storage.buffers if b.inference is None and b.steps in ("1", "2")) \
                if self._backward_wave() else frozenset()
            for s in self.sizes:  # a training stack's layers share their backward buffers (Workspace)
                given = {"x": self._output_view(layers[-1])} if layers and storage.stack_input else None
                layers.append(Workspace(storage, s, T, B, train, stream, layers, given, own,
                                        partial(chunk_steps, self)))
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
            pers, run = stack_persistent(self, phase), None
            if pers is not None and self.use_persistent and not ws.chunk:  # (a chunk's ring: the stepwise loop)
                run = launch_shape(pers, self.program.kernels[pers.name], self.functions[pers.name], ws, not self.beside)
            if run is None and self.use_persistent and plan.schedule.persistent == "on":  # (why: said once)
                why = ((why_not_persistent(plan, phase) or "the schedule's `wavefront` takes the layers") if pers is None
                       else f"its backward kernel does not fit this GPU at B = {ws.B}, T = {ws.T} (the matrices' "
                       "columns must fit in shared memory)" if phase == "backward" else
                       f"it does not fit this GPU at B = {ws.B}, T = {ws.T}" if not ws.chunk else "it runs in chunks")
                warnings.warn(f"lstmdsl: schedule 'persistent' for cell {plan.cell.name}: {why}; running the "
                              f"stepwise loop ({phase})", stacklevel=2)
            if run is not None:  # (the kernel compiled for this shape, where the plan says: runtime/specialise.py)
                specialise.request(self, ws, phase, pers, run)
            if run is not None and ws.counter is None:
                ws.counter_array = device.empty((1,), np.uint32, 0, ws.stream)
                ws.counter = ws.counter_array.data.ptr
            if run is not None and run.exchange:  # two areas of B rows of tagged words
                words = 2 * ws.B * ws.env[self.program.kernels[pers.name].exchanged.cols[2:]]
                ws.exchange_arrays[phase] = device.empty((words,), np.uint64, 0, ws.stream)
            ws.persistent[phase] = run
        return ws.persistent[phase]

    # -- the layer wavefront
    def wave_steps(self, workspaces: list[Workspace]) -> int:
        """Steps per chunk where a stack's forward runs as a wavefront (plan.Wavefront) at these workspaces'
        sizes, else 0 (layer after layer). Decided once per stack of workspaces."""
        first = workspaces[0]
        if first.wave is None:
            wave = self.program.plan.wavefront
            stacked = all(ws.base["x"] == self._output_view(below).data.ptr  # (Storage.stack_input, in place)
                          for below, ws in zip(workspaces, workspaces[1:]))
            use = (wave is not None and self.use_wavefront and 1 < len(workspaces) <= cublas.MAX_LANES and stacked
                   and all(self.persistent_run(ws, "forward") is None and ws.chunk in (0, wave.steps(first.T))
                           for ws in workspaces))
            if not use and self.program.plan.schedule.wavefront == "on" and len(workspaces) > 1:
                why = (wavefront_blocker(self.program.plan) if wave is None else "its layers' x is not the layer "
                       "below's y in place" if not stacked else f"more than {cublas.MAX_LANES} layers (one cuBLAS "
                       "lane each)" if len(workspaces) > cublas.MAX_LANES else "it is switched off (use_wavefront)")
                warnings.warn(f"lstmdsl: schedule 'wavefront' for cell {self.program.plan.cell.name}: {why}; running "
                              "the layers one after the other", stacklevel=3)
            first.wave = wave.steps(first.T) if use else 0
        return first.wave

    def _issue_wave(self, workspaces: list[Workspace], params: list[Binding], stream: int, lanes: list[int]) -> None:
        """A stack's forward as a wavefront on `stream`: layer k on the wave's stream k, chunk by chunk."""
        wave, T, chunk = self._wave, workspaces[0].T, workspaces[0].wave
        streams = wave.fork(stream)
        try:  # (joined whatever happens: a capture with a branch left unjoined would hide the error)
            issues = [Issue(self, *layer, wave=True) for layer in zip(workspaces, params, streams, lanes)]
            starts = list(range(0, T, chunk))
            if self.program.plan.forward.loop.direction != "forward":
                starts.reverse()
            for t0 in starts:
                for k, issue in enumerate(issues):
                    if k:
                        wave.after(k - 1, streams[k])
                    issue.chunk(t0, min(t0 + chunk, T))
                    wave.done(k, streams[k])
        finally:
            wave.join(stream)

    def _backward_wave(self) -> bool:
        """Whether a stack's backward runs as a wavefront (Wavefront.backward), decided by the plan and the
        stack's depth alone, so that its workspaces keep their own rings from the start."""
        wave = self.program.plan.wavefront
        return bool(wave and wave.backward and 1 < len(self.sizes) <= cublas.MAX_LANES and self.use_wavefront)

    def _issue_backward_wave(self, workspaces: list[Workspace], params: list[Binding], stream: int,
                             lanes: list[int]) -> None:
        """A stack's backward as a wavefront on `stream`: the top layer on the wave's stream 0, the one below on stream
        1, ..., chunk by chunk in the backward loop's order. Before each chunk a layer copies the layer above's dx
        there into its dy and clears its own dx there (the stack shares one of each: each chunk's rows are handed
        down it); after its last chunk, its parameter gradients."""
        wave, T, B, chunk = self._wave, workspaces[0].T, workspaces[0].B, workspaces[0].wave
        streams = wave.fork(stream)
        try:  # (joined whatever happens, as in _issue_wave)
            self._issue_backward_chunks(workspaces, params, streams, lanes, T, B, chunk)
        finally:
            wave.join(stream)

    def _issue_backward_chunks(self, workspaces: list[Workspace], params: list[Binding], streams: list[int],
                               lanes: list[int], T: int, B: int, chunk: int) -> None:
        """The chunks of a backward wavefront on the wave's forked streams (_issue_backward_wave)."""
        wave, L = self._wave, len(workspaces)
        issues = [Issue(self, workspaces[L - 1 - i], params[L - 1 - i], s, lane, wave=True)
                  for i, (s, lane) in enumerate(zip(streams, lanes))]
        starts = list(range(0, T, chunk))
        if self.program.plan.backward.loop.direction != "forward":
            starts.reverse()
        for t0 in starts:
            rows = (min(t0 + chunk, T) - t0) * B
            for i, issue in enumerate(issues):
                if i:
                    wave.after(i - 1, streams[i])
                    above, ws = workspaces[L - i], workspaces[L - 1 - i]
                    src, src_pitch, src_type = self.output_region(above, "dx")
                    dst, pitch, _, n, dtype = self._regions(ws, "in")["dy"][0]
                    if (src, src_pitch, src_type) != (dst, pitch, dtype):  # (else dx over dy: the rows are there)
                        convert.convert_rows(dst + t0 * B * pitch, pitch, dtype, src + t0 * B * src_pitch,
                                             src_pitch, src_type, n, rows, streams[i])
                    mine, mine_pitch, _, _, _ = self._regions(ws, "out")["dx"][0]
                    if "dx" not in ws.overlaid:  # whole rows, padding too (else cleared after the chunk's steps)
                        device.zero(mine + t0 * B * mine_pitch, rows * mine_pitch, streams[i])
                issue.backward_chunk(t0, min(t0 + chunk, T))
                wave.done(i, streams[i])
        for issue in issues:
            issue.parameter_grads()

    def _run_wave(self, workspaces: list[Workspace], params: list[Binding], stream: int, phase="forward") -> None:
        lanes = [cublas.lane(stream, k) for k in range(len(workspaces))]
        run = self._issue_wave if phase == "forward" else self._issue_backward_wave
        if self._wave is None:  # its streams and events made before any capture
            self._wave = device.Wave(len(self.sizes))
        key = ("wavefront", phase, tuple(p.key for p in params), tuple(lanes))
        mine = lanes if phase == "forward" else lanes[::-1]  # (the backward's layer k on lane L-1-k: its issue)
        self._tune(stream, [(ws, p, lane, phase) for ws, p, lane in zip(workspaces, params, mine)], workspaces[0].wave)
        self._replay(workspaces, key, 2, lambda side: run(workspaces, params, side, lanes), stream)

    def _tune(self, stream: int, layers: list, wave: int = 0, fanned=None) -> None:
        """A step's and a chunk's GEMM shapes timed both ways cuBLAS may run them (Issue.tune), before the first capture
        of these workspaces' phases; not inside someone else's capture (they then run as cuBLAS would by default, and
        the phase is tuned at a later call). While profiling too, so that the profile times the GEMMs as they run
        (the timing's own calls are in no part). wave: a wavefront's steps per chunk (Issue.tune). fanned: the
        phase's Fan, whose lanes the grouped GEMMs take (their handles made here): tuned apart, as a wavefront is."""
        layers = [layer for layer in layers if (layer[3], fanned is not None, bool(wave)) not in layer[0].tuned]
        if not layers or device.is_capturing(stream):
            return
        for ws, bind, lane, phase in layers:
            Issue(self, ws, bind, stream, lane, fanned, bool(wave)).tune(phase, wave)
            ws.tuned.add((phase, fanned is not None, bool(wave)))

    def _replay(self, workspaces: list[Workspace], key: tuple, family: int, issue, stream: int) -> None:
        """issue(stream) as a CUDA graph kept in the first workspace's graphs under `key`, at most MAX_GRAPHS of the
        keys that share its first `family` entries (the oldest dropped); issued directly inside someone else's
        capture (its memory then pinned: that graph keeps the addresses), without graphs, or while profiling."""
        capturing = device.is_capturing(stream)
        for ws in workspaces if capturing else ():
            ws.pinned = True
        if capturing or not self.use_graphs or self.parts is not None:
            issue(stream)
            return
        graphs = workspaces[0].graphs
        graph = graphs.get(key)
        if graph is None:
            old = [k for k in graphs if k[:family] == key[:family]]
            for k in old[:max(0, len(old) - self.MAX_GRAPHS + 1)]:
                del graphs[k]
            graph = graphs[key] = device.Graph(issue, stream)
        graph.launch(stream)

    # -- profiling
    @contextlib.contextmanager
    def part(self, kind: str, stream: int):
        """Times the work issued inside the block on `stream` with a pair of events (when profiling)."""
        if self.parts is None:
            yield
            return
        import cupy
        on = device.cupy_stream(stream)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(on)
        yield
        end.record(on)
        self.parts.setdefault(kind, []).append((start, end))

    # -- running
    def _run(self, name: str, ws: Workspace, bind: Binding, stream: int, zero: tuple[str, ...] = (), later=False):
        # zero: input regions zeroed first, in the graph (memsets before the launch: host time, probes/host_call_h200);
        # later: everything but the launch (the GEMMs tuned, the kernel installed), which the returned function does
        lane = cublas.lane(stream)
        fanned = fan(self, ws, name, stream, lane)
        if self.persistent_run(ws, name) is not None:  # (its kernel compiled for the shape, once compiled)
            specialise.install(self, ws, name, stream)
        self._tune(stream, [(ws, bind, lane, name)], fanned=fanned)

        def issue(side: int) -> None:
            self._zero(ws, zero, side)
            Issue(self, ws, bind, side, lane, fanned).phase(name)
        launch = partial(self._replay, [ws], (name, bind.key, lane, fanned is not None, zero), 1, issue, stream)
        return launch if later else launch()

    def _regions(self, ws: Workspace, direction: str) -> dict:
        """The regions of the caller's inputs or outputs in a workspace (computed once per workspace)."""
        if direction not in ws.regions:
            storage = self.program.plan.storage
            transfers = storage.inputs if direction == "in" else storage.outputs
            regions: dict[str, list] = {}  # a state in half precision goes in twice: its ring and its history
            for t in transfers:
                if t.buffer in ws.base:
                    regions.setdefault(t.what, []).append(ws.region(t))
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

    def _zero(self, ws: Workspace, whats: tuple[str, ...], stream: int) -> None:
        for dst, pitch, rows, n, dtype in (r for what in whats for r in self._regions(ws, "in")[what]):
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

    def forward(self, *args, **kw) -> None:  # (forward_parts, run to its end)
        deque(self.forward_parts(*args, **kw), maxlen=0)

    def forward_parts(self, T: int, B: int, train: bool, params: list[Binding], x: int, h0: dict[str, int], y: int,
                      hn: dict[str, int], stream: int, owner=None, steps: dict[str, int] | None = None,
                      x_pitch: int | None = None, y_pitch: int | None = None, io_type: str | tuple | None = None):
        """The forward, pausing once before its first launch, the inputs copied in and the GEMMs tuned (a generator: the
        caller may issue other work there, lstmdsl/torch/pair.py the other direction's; forward() runs it all). x [T, B,
        input], h0 {state: [L, B, size]} (None: zeros) -> y [T, B, output], hn {state: [L, B, size]}, contiguous device
        arrays of the program's element type, given by address; steps: the per-step inputs ([T, B, n] each: one address
        for every layer, or a list of one per layer). x_pitch / y_pitch: bytes between rows where x or y is part of a
        wider array (one direction's half of a bidirectional layer's). y may instead be a function returning (y, hn,
        owner), called once the first layer's work is issued, so the caller allocates its outputs while the GPU already
        runs (if it raises, an earlier training forward's activations are gone: its tape is dropped first). x and y are
        of io_type where given (mixed precision: the half type; a pair (x's, y's) where they differ), converted; the
        rest of the plan's element type."""
        cell, (x_type, y_type) = self.program.plan.cell, io_type if isinstance(io_type, tuple) else (io_type, io_type)
        workspaces = self.workspace(T, B, train, stream)
        self.tape = None if train and isinstance(self.tape, tuple) and self.tape[0] == (T, B, True) else self.tape
        wave = self.parts is None and self.wave_steps(workspaces)  # profiling times the layers one at a time
        zero = tuple(f"state:{s.name}" for s in cell.states) if h0 is None else ()  # (zeroed in _run's graph)

        def put(k: int, ws: Workspace) -> None:
            for name, ptr in (steps or {}).items():
                self._put(ws, f"step:{name}", ptr if isinstance(ptr, int) else ptr[k], None, stream)
            for s in cell.states if h0 is not None else ():
                self._put(ws, f"state:{s.name}", h0[s.name] + k * self._state_bytes(ws, s), None, stream)

        def get(k: int, ws: Workspace) -> None:
            for s in cell.states:
                self._get(ws, f"state:{s.name}", hn[s.name] + k * self._state_bytes(ws, s), stream)

        if wave:  # every layer's inputs first (a layer's x is the layer below's y already: wave_steps)
            self._put(workspaces[0], "x", x, x_pitch, stream, x_type)
            for k, ws in enumerate(workspaces):
                put(k, ws)
                self._zero(ws, zero, stream)
            yield
            self._run_wave(workspaces, params, stream)
            if callable(y):
                y, hn, owner = y()
            for k, ws in enumerate(workspaces):
                get(k, ws)
        src, src_pitch, src_type = x, x_pitch, x_type
        for k, ws in enumerate(workspaces if not wave else ()):
            self._put(ws, "x", src, src_pitch, stream, src_type)
            put(k, ws)
            launch = self._run("forward", ws, params[k], stream, zero, later=True)
            if k == 0:
                yield
            launch()
            if callable(y):
                y, hn, owner = y()
            get(k, ws)
            src, src_pitch, src_type = self.output_region(ws, "y")
        self._get(workspaces[-1], "y", y, stream, y_pitch, y_type)
        self.tape = ((T, B, train), owner) if train else self.tape

    def tape_owner(self, T: int, B: int):
        """The owner given with the training forward whose activations the workspaces hold for (T, B), or None."""
        if not isinstance(self.tape, tuple) or self.tape[0] != (T, B, True) or self.tape[0] not in self.workspaces:
            return None
        return self.tape[1]

    def backward(self, params: list[Binding], dy: int, dhn: dict[str, int | None], dx: int | None,
                 dh0: dict[str, int | None], stream: int, dy_pitch: int | None = None,
                 io_type: str | tuple | None = None) -> None:
        """dy [T, B, output], dhn {state: [L, B, size] or None for zeros} -> dx [T, B, input], dh0 (dx or a state's
        None: not wanted, not copied out); adds the parameter gradients into the addresses of params (Binding.grads
        and vector_grads). io_type: dy's and dx's type where not the plan's (converted; a pair where they differ)."""
        dy_type, dx_type = io_type if isinstance(io_type, tuple) else (io_type, io_type)
        if not isinstance(self.tape, tuple) or self.tape[0] not in self.workspaces:
            raise LstmdslError("backward() needs a forward() with train=True first" + (
                "; the last one's activations were used by a backward already (this cell's backward writes its "
                "gradients over them to save memory): run forward(train=True) again" if self.tape == "used" else ""))
        cell, storage = self.program.plan.cell, self.program.plan.storage
        workspaces = self.workspaces[self.tape[0]]
        if any(where == "backward" for where, _, _ in storage.in_place):
            self.tape = "used"  # the gradients overwrite the activations (Storage.in_place)
        def states_in(k: int, ws: Workspace) -> None:  # zeroed buffers, and each final state's gradient (or 0)
            for b in storage.buffers:
                if b.zero and b.name not in ws.overlaid:  # (those are zeroed after the loop: Issue.clear_overlaid)
                    device.zero(ws.base[b.name], ws.nbytes(b.name), stream)
            for s in cell.states:
                if dhn[s.name] is None:  # no gradient reaches this final state
                    self._zero(ws, (f"dstate:{s.name}",), stream)
                else:
                    self._put(ws, f"dstate:{s.name}", dhn[s.name] + k * self._state_bytes(ws, s), None, stream)

        def states_out(k: int, ws: Workspace) -> None:  # the initial states' gradients that are wanted
            for s in cell.states:
                if dh0[s.name] is not None:
                    self._get(ws, f"dstate:{s.name}", dh0[s.name] + k * self._state_bytes(ws, s), stream)

        if self._backward_wave() and workspaces[0].wave and self.parts is None:
            # a backward wavefront (Wavefront.backward): every layer's inputs first; the top layer's dy
            self._put(workspaces[-1], "dy", dy, dy_pitch, stream, dy_type)
            for k, ws in enumerate(workspaces):
                states_in(k, ws)
            self._run_wave(workspaces, params, stream, "backward")
            for k, ws in enumerate(workspaces):
                states_out(k, ws)
        else:
            src, src_pitch, src_type = dy, dy_pitch, dy_type
            for k in reversed(range(len(workspaces))):
                ws = workspaces[k]
                # dy first: it comes from the layer above's dx, whose memory this layer's dx may share (Workspace)
                self._put(ws, "dy", src, src_pitch, stream, src_type)
                states_in(k, ws)
                self._run("backward", ws, params[k], stream)
                states_out(k, ws)
                src, src_pitch, src_type = self.output_region(ws, "dx")
        if dx is not None:
            self._get(workspaces[0], "dx", dx, stream, dst_type=dx_type)

    def _state_bytes(self, ws: Workspace, s) -> int:
        """Bytes of one layer's state in the caller's [L, B, size] array (of the plan's element type)."""
        return ws.B * ws.env[s.size] * ELEMENT_TYPES[self.program.plan.dtype]

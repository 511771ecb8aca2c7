"""CudaLayer: the Layer API on the GPU, with CuPy arrays (float32 or float64, C-contiguous; x and dy also in a half
type: float16 in fp16, bfloat16 bits as uint16 in bf16).

Parameters live in stacks: the matrices applied to one operand are rows of one [sum of rows, cols] array
(the plan's WeightStack; parameters() hands out views), so a fused GEMM reads them as one matrix and
one G^T V updates them. The layer owns its arrays and hands their addresses to the Engine.

Mixed precision (`precision bf16` / `fp16`): the parameters and gradients stay float32 (the master
weights, what optimizers update); the GEMMs read half-precision copies of the stacks, refreshed from the
masters at the start of every forward (one conversion per stack: a few microseconds). Inputs, outputs and
states are float32 arrays in this API, or x and dy in the half type (float16 arrays in `precision fp16`, uint16
arrays of bfloat16 bits in `precision bf16`: CuPy has no bfloat16; arrays.to_bf16_bits), y and dx then in it too
(converted by the engines); the workspaces keep the half-precision values.
"""

from __future__ import annotations

import numpy as np

from ..arrays import HALF_ARRAYS, to_io
from ..errors import BackendUnavailable, UsageError
from ..layer import Layer, init_params, interleave_rows, length_mask, recurrent_matrices
from ..masks import LENGTH, with_lengths
from ..plan import HALF_TYPES
from ..program import build_program
from ..schedule import Schedule
from ..spec import Spec
from . import convert, device
from .draws import Uniform
from .device import check_available, cupy
from .executor import Binding, Engine
from .workspace import NUMPY_TYPES

IO_TYPES = {HALF_ARRAYS["fp16"].type: "f16", HALF_ARRAYS["bf16"].type: "bf16"}  # a caller's half array type -> the
# engines' element type


class CudaLayer(Layer):
    backend = "cuda"
    array_name = "CuPy array"

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None, directions: int = 1, dropout: float = 0.0,
                 dropconnect: float = 0.0):
        check_available()
        super().__init__(spec, sizes, schedule, dtype, directions, dropout, seed, dropconnect)
        self._draws = Uniform(self._noise_seed)  # the regularisers' masks' generator (lstmdsl/draws.py)
        self.overlap_directions = True  # a bidirectional layer's two directions run at the same time
        for s, u in zip(self.cell.states, self.cell.updates):
            if self.cell.nodes[u].op in ("param", "const"):
                raise BackendUnavailable(f"state '{s.name}' is updated to a parameter or a constant, which the "
                                         "CUDA backend does not support yet")
        if self.cell.nodes[self.cell.output].op in ("param", "const"):
            raise BackendUnavailable("the output is a parameter or a constant, which the CUDA backend does not "
                                     "support yet")
        self.program = build_program(self.cell, schedule, dtype)
        self._engines: dict[tuple, Engine] = {}
        self._use_graphs = True
        self._use_fanout = True
        stacks = self.program.plan.storage.stacks
        rng = np.random.default_rng(seed)
        self._stacks, self._grad_stacks = [], []
        for k, _ in self.units:
            host = init_params(self.cell, sizes[k], rng, self.dtype, forget_bias)  # the same values as the reference
            params, grads, pstack, gstack = {}, {}, {}, {}
            for s in stacks:
                pstack[s.name] = cupy.asarray(np.concatenate([host[m] for m in s.matrices]))
                gstack[s.name] = cupy.zeros_like(pstack[s.name])
                row = 0
                for m in s.matrices:
                    rows = host[m].shape[0]
                    params[m], grads[m] = pstack[s.name][row:row + rows], gstack[s.name][row:row + rows]
                    row += rows
            for p in self.cell.params:
                if p.kind == "vector":
                    params[p.name] = cupy.asarray(host[p.name])
                    grads[p.name] = cupy.zeros_like(params[p.name])
            self._params.append({p.name: params[p.name] for p in self.cell.params})
            self._grads.append({p.name: grads[p.name] for p in self.cell.params})
            self._stacks.append(pstack)
            self._grad_stacks.append(gstack)
        self._half_type = stacks[0].dtype if stacks and stacks[0].dtype in HALF_TYPES else None
        self._align = {s.name: self.program.plan.storage.align if s.padded else 1 for s in stacks}
        self._half = [self._half_copies(p) for p in self._stacks]  # what the GEMMs read (mixed precision)
        # stacks stored head by head (WeightStack.interleave): per unit, the row order, the permuted copy the
        # GEMMs read and the gradient they write in that order (added back in the matrices' order)
        self._orders = [{s.name: cupy.asarray(interleave_rows(len(s.matrices), sizes[k][s.rows[0]], sizes[k][s.interleave]))
                         for s in stacks if s.interleave} for k, _ in self.units]
        self._ordered = [{n: cupy.empty_like((self._half[u] or self._stacks[u])[n]) for n in self._orders[u]}
                         for u in range(len(self.units))]
        self._ordered_grad = [{n: cupy.zeros_like(self._grad_stacks[u][n]) for n in self._orders[u]}
                              for u in range(len(self.units))]
        self._bindings = [self._binding(u) for u in range(len(self.units))]
        # DropConnect: per unit, the recurrent stacks' masked copies (one set for training, whose backward
        # reads them, one for an evaluation given masks) and their gradients, bound instead
        recurrent = set(recurrent_matrices(self.cell)) if dropconnect > 0 else set()
        self._connect_rows = [{s.name: s.matrices for s in stacks if set(s.matrices) <= recurrent}
                              for _ in self.units]
        self._connect_grad = [{n: cupy.empty_like(self._stacks[u][n]) for n in rows}
                              for u, rows in enumerate(self._connect_rows)]
        self._connect_sets: dict[bool, tuple[list[dict], list[Binding]]] = {}
        self._connect = [{} for _ in self.units]
        self._shape = None
        self._lengths = False  # whether the last training forward ran with lengths
        self._overlapped = True  # and its directions at once (overlap_directions then)
        self._one_stream = False  # profile(): the directions on one stream, on the engines of the calls it times
        self._mask, self._mask_key = None, None  # the last lengths' mask on the device, and (T, lengths, dtype)

    def _half_copies(self, arrays: dict) -> dict:
        """Half-precision arrays for the stacks in `arrays` (mixed precision), else {}: their rows padded to
        the plan's alignment where the stack says so (WeightStack.padded), the padding never read."""
        if self._half_type is None:
            return {}
        out = {}
        for n, a in arrays.items():
            rows, cols = a.shape
            a_ = self._align[n]
            out[n] = cupy.zeros((rows, -(-cols // a_) * a_), NUMPY_TYPES[self._half_type])
        return out

    def _to_half(self, masters: dict, halves: dict, stream: int) -> None:
        """Refresh half copies from their float32 masters."""
        for name, half in halves.items():
            rows, cols = masters[name].shape
            convert.convert_rows(half.data.ptr, 2 * half.shape[1], self._half_type, masters[name].data.ptr, 4 * cols,
                                 "f32", cols, rows, stream)

    def _rows(self, u: int, matrices) -> list[tuple[str, int, int]]:
        """(matrix, first row, end row) of each matrix of a stack."""
        out, row = [], 0
        for m in matrices:
            rows = self._params[u][m].shape[0]
            out.append((m, row, row + rows))
            row += rows
        return out

    def _connected(self, masks: dict, train: bool) -> tuple[list[Binding], list[dict]]:
        """The bindings of this forward (with DropConnect masks: each recurrent stack's masked copy) and
        the masks per unit. A training forward and an evaluation forward write different copies, so an
        evaluation between a training forward and its backward leaves the backward's weights alone."""
        connect = self._dropconnect(masks)
        if not any(connect):
            return self._bindings, connect
        if train not in self._connect_sets:
            copies = [{n: cupy.empty_like(self._stacks[u][n]) for n in rows} for u, rows in enumerate(self._connect_rows)]
            halves = [self._half_copies(c) for c in copies]
            read = [h or c for h, c in zip(halves, copies)]  # masked, in the matrices' order
            ordered = [{n: cupy.empty_like(a) for n, a in r.items() if n in self._orders[u]} for u, r in enumerate(read)]
            binds = [Binding({n: (read[u] | ordered[u])[n].data.ptr if n in read[u] else p for n, p in b.weights.items()},
                             {n: self._connect_grad[u][n].data.ptr if n in copies[u] and n not in self._orders[u] else p
                              for n, p in b.grads.items()},  # (stacks stored head by head: their ordered gradient)
                             b.vectors, b.vector_grads) for u, b in enumerate(self._bindings)]
            self._connect_sets[train] = (copies, halves, binds, read, ordered)
        copies, halves, connected, read, ordered = self._connect_sets[train]
        binds = []
        for u, c in enumerate(connect):
            if not c:
                binds.append(self._bindings[u])
                continue
            for name, matrices in self._connect_rows[u].items():
                stack = self._stacks[u][name]
                for m, a, b in self._rows(u, matrices):
                    cupy.multiply(stack[a:b], c[m], out=copies[u][name][a:b])
            self._to_half(copies[u], halves[u], device.current_stream())
            self._order(u, read[u], ordered[u], device.current_stream())
            binds.append(connected[u])
        return binds, connect

    def _connect_grads(self, u: int, before: bool) -> None:
        """Before a unit's backward, zero its masked stacks' gradients and those of the stacks stored head by
        head; after, add the latter back in the matrices' order (into the masked gradient where a stack is
        masked), then the masked ones into the stacks' gradients times the masks (the gradient of W * M
        with respect to W)."""
        c = self._connect[u]
        for n, order in self._orders[u].items():
            g = self._ordered_grad[u][n]
            if before:
                g.fill(0)
            else:
                target = self._connect_grad[u][n] if c and n in self._connect_rows[u] else self._grad_stacks[u][n]
                target[order] += g  # (order is a permutation: no row twice)
        if not c:
            return
        for name, matrices in self._connect_rows[u].items():
            grad = self._connect_grad[u][name]
            if before:
                grad.fill(0)
                continue
            target = self._grad_stacks[u][name]
            for m, a, b in self._rows(u, matrices):
                target[a:b] += grad[a:b] * c[m]

    def _order(self, u: int, arrays: dict, out: dict, stream: int) -> None:
        """The permuted copies `out` (of stacks stored head by head) from `arrays`, in the matrices' order."""
        if not out:  # (most cells: nothing stored head by head, and no stream context to enter at every call)
            return
        with device.cupy_stream(stream):
            for n in out:
                cupy.take(arrays[n], self._orders[u][n], axis=0, out=out[n])

    def _binding(self, k: int) -> Binding:
        vectors = [p.name for p in self.cell.params if p.kind == "vector"]
        return Binding({n: a.data.ptr for n, a in ((self._half[k] or self._stacks[k]) | self._ordered[k]).items()},
                       {n: a.data.ptr for n, a in (self._grad_stacks[k] | self._ordered_grad[k]).items()},
                       {n: self._params[k][n].data.ptr for n in vectors},
                       {n: self._grads[k][n].data.ptr for n in vectors})

    def _engine(self, lengths: bool, unit: int | None = None, overlap: bool | None = None) -> Engine:
        """The Engine of the whole stack (one direction), or of one unit (layer, direction) of a
        bidirectional stack; with lengths, of the cell that masks each sequence's end. A unit whose other direction
        runs at once (overlap_directions) is `beside` it (plan.Persistent: its grid on its share of the
        multiprocessors, and not the rules of a layer of one direction); run one after the other, it is not.
        overlap: the training forward's overlap_directions, for its backward (default: as now)."""
        overlap = self.overlap_directions if overlap is None else overlap
        beside = unit is not None and self.directions == 2 and overlap
        key = (lengths, unit, beside)
        if key not in self._engines:
            cell = with_lengths(self.cell) if lengths else self.cell
            if unit is None:
                program, sizes = build_program(cell, self.schedule, str(self.dtype)), self.sizes
            else:
                k, d = self.units[unit]
                program = build_program(cell, self.schedule, str(self.dtype), "reverse" if d else "forward")
                sizes = [self.sizes[k]]
            self._engines[key] = Engine(program, sizes)
            self._engines[key].use_graphs, self._engines[key].use_fanout = self._use_graphs, self._use_fanout
            self._engines[key].beside = beside
        return self._engines[key]

    @property
    def engine(self) -> Engine:
        """The Engine of a one-direction stack without lengths (of the first layer, where layers run one at
        a time)."""
        return self._engine(False, 0 if self._split else None)

    @property
    def use_graphs(self) -> bool:
        return self._use_graphs

    @use_graphs.setter
    def use_graphs(self, value: bool) -> None:
        self._use_graphs = value
        for e in self._engines.values():
            e.use_graphs = value

    @property
    def use_fanout(self) -> bool:
        """Whether a step's independent GEMMs run at once on streams of their own (runtime/fanout.py)."""
        return self._use_fanout

    @use_fanout.setter
    def use_fanout(self, value: bool) -> None:
        self._use_fanout = value
        for e in self._engines.values():
            e.use_fanout = value

    # -- the checks of CuPy arrays
    def _check_kind(self, what: str, a) -> None:
        if not isinstance(a, cupy.ndarray):
            raise UsageError(f"{what} must be a CuPy array on the cuda backend, got {type(a).__name__} "
                             "(use cupy.asarray)")

    def _check_layout(self, what: str, a) -> None:
        if not a.flags.c_contiguous:
            raise UsageError(f"{what} must be C-contiguous (use cupy.ascontiguousarray)")
        if a.device.id != device.current_device():
            raise UsageError(f"{what} is on device {a.device.id}, the layer on device {device.current_device()}")

    def _zeros(self, shape):
        return cupy.zeros(shape, self.dtype)

    def _full(self, shape, value: float):
        return cupy.full(shape, value, self.dtype)

    def _uniform(self, shape):
        return self._draws(shape)

    def noise_state(self):
        return self._draws.state()

    def set_noise_state(self, state) -> None:  # (a ValueError, TypeError or KeyError where it is not a state)
        self._draws.set_state(state)

    # -- forward and backward
    def _streams(self, stream: int) -> tuple[int, ...]:
        """The stream of each direction: the reverse one runs beside the forward one on a side stream (after
        the work issued so far), unless overlap_directions is off."""
        if self.directions == 1:
            return (stream,)
        if not self._at_once:
            return (stream, stream)
        return (stream, device.side_stream().fork(stream))

    @property
    def _at_once(self) -> bool:
        """Whether the two directions run on two streams (overlap_directions, and not profile's one stream)."""
        return self.directions == 2 and self.overlap_directions and not self._one_stream

    def _join(self, stream: int) -> None:
        if self._at_once:
            device.side_stream().join(stream)

    @property
    def _split(self) -> bool:
        """Whether the layers run one at a time (both directions, or dropout between them), not as one stack."""
        return self.directions == 2 or (self.dropout > 0 and self.num_layers > 1)

    def forward(self, x, state: dict | None = None, *, train: bool = True, lengths=None, noise=None):
        """x [T, B, input] (CuPy, the layer's dtype, or its half type: float16 under `precision fp16`, uint16 bfloat16
        bits under `precision bf16`; y then in it too) ->
        (y [T, B, output], final state {name: [D * L, B, size]}).
        lengths [B], train and noise: see NumpyLayer.forward."""
        # no state: the engine zeroes its own copy (a memset each, not an array allocated, zeroed and copied in;
        # layers run one at a time take theirs from an array)
        T, B, state, lengths = self._check_input(x, state, lengths, zeros=self._split, train=train)
        io = IO_TYPES.get(x.dtype.type)  # (a half type, Layer._half_io: y in it too, the engines convert)
        if B > 65535:  # the kernels put the batch on the grid's y dimension
            raise UsageError(f"the CUDA backend takes at most 65535 sequences per call, got {B}; split the batch")
        masks = self._noise(T, B, train, noise)
        stream = device.current_stream()
        for u, halves in enumerate(self._half):  # the masters may have changed since the last forward
            self._to_half(self._stacks[u], halves, stream)
            self._order(u, halves or self._stacks[u], self._ordered[u], stream)
        binds, connect = self._connected(masks, train)
        masked = lengths is not None
        steps = {}
        if masked:
            key = (T, lengths.tobytes(), self.dtype)
            if key != self._mask_key:  # made on the host and copied in once (on the device: four launches);
                # kept for the next call with the same lengths, and until the engines have read it
                self._mask, self._mask_key = cupy.asarray(length_mask(lengths, T, np, self.dtype)), key
            steps[LENGTH] = self._mask.data.ptr
        self._masks = masks  # likewise
        h0 = None if state is None else {n: a.data.ptr for n, a in state.items()}
        if not self._split:
            for z in self.cell.noise:
                steps[z.name] = [masks[f"l{k}.{z.name}"].data.ptr for k in range(self.num_layers)]
            out = []

            def outputs():  # allocated once the first layer's work is issued: the host does it while the GPU runs
                out.append(cupy.empty((T, B, self.output_size), x.dtype))
                out.append({n: cupy.empty(s, self.dtype) for n, s in self.state_shapes(B).items()})
                return out[0].data.ptr, {n: a.data.ptr for n, a in out[1].items()}, None

            self._engine(masked).forward(T, B, train, binds, x.data.ptr, h0, outputs, None, stream, steps=steps,
                                         io_type=io)
            y, final = out
        else:
            y = cupy.empty((T, B, self.output_size), x.dtype)
            final = {n: cupy.empty(s, self.dtype) for n, s in self.state_shapes(B).items()}
            hn = {n: a.data.ptr for n, a in final.items()}
            state_bytes = {n: B * s[2] * self.dtype.itemsize for n, s in self.state_shapes(B).items()}
            inp = x
            for k in range(self.num_layers):
                last = k == self.num_layers - 1
                width = self.directions * self.sizes[k][self.cell.output_size]
                out = y if last else cupy.empty((T, B, width), self.dtype)
                half, item = width // self.directions, out.itemsize
                types = (io if k == 0 else None, io if last else None)  # (x's and y's where not float32)
                units = [self.directions * k + d for d in range(self.directions)]
                for u in units:  # allocated (and, in tests, poisoned) on this stream before the fork
                    self._engine(masked, u).workspace(T, B, train, stream)
                for d, (u, s) in enumerate(zip(units, self._streams(stream))):
                    unit = {z.name: masks[f"{self.unit_name(u)}.{z.name}"].data.ptr for z in self.cell.noise}
                    self._engine(masked, u).forward(
                        T, B, train, [binds[u]], inp.data.ptr, {n: p + u * state_bytes[n] for n, p in h0.items()},
                        out.data.ptr + d * half * item, {n: p + u * state_bytes[n] for n, p in hn.items()}, s,
                        steps=dict(steps, **unit), y_pitch=width * item, io_type=types)
                self._join(stream)
                between = masks.get(f"l{k}.between")
                inp = out * between if between is not None else out
        if train:
            self._shape, self._lengths, self._binds, self._connect = (T, B), masked, binds, connect
            self._overlapped = self.overlap_directions  # (the backward's engines are its forward's)
            self._io_dtype = x.dtype
        return y, final

    def backward(self, dy, dstate: dict | None = None):
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input]; adds parameter
        gradients into grads(); initial_state_grads() holds dL/d initial state."""
        if self._shape is None:
            raise UsageError("backward() needs a forward() with train=True first")
        dstate = self._check_gradient(dy, dstate, self._shape, zeros=self._split)  # (None: as in forward)
        T, B = self._shape
        stream = device.current_stream()
        d0 = {n: cupy.empty(s, self.dtype) for n, s in self.state_shapes(B).items()}
        dhn = {n: None if dstate is None else dstate[n].data.ptr for n in d0}
        dh0 = {n: a.data.ptr for n, a in d0.items()}
        for u in range(len(self.units)):
            self._connect_grads(u, before=True)
        io = IO_TYPES.get(dy.dtype.type)  # (dx in dy's type)
        if not self._split:
            dx = cupy.empty((T, B, self.input_size), dy.dtype)
            self._engine(self._lengths).backward(self._binds, dy.data.ptr, dhn, dx.data.ptr, dh0, stream, io_type=io)
        else:
            state_bytes = {n: B * s[2] * self.dtype.itemsize for n, s in self.state_shapes(B).items()}
            g = dy
            for k in reversed(range(self.num_layers)):
                between = self._last_noise.get(f"l{k}.between")
                if between is not None:
                    g = g * between
                width = self.sizes[k]["input"]
                # (the half type only for the caller's dx; two directions' parts are added in float32 first)
                typed = io if k == 0 and self.directions == 1 else None
                parts = [cupy.empty((T, B, width), dy.dtype if typed else self.dtype) for _ in range(self.directions)]
                half, item = g.shape[-1] // self.directions, g.itemsize
                types = (IO_TYPES.get(g.dtype.type), typed)  # (dy's and dx's where not float32)
                for d, s in enumerate(self._streams(stream)):
                    u = self.directions * k + d
                    self._engine(self._lengths, u, self._overlapped).backward(
                        [self._binds[u]], g.data.ptr + d * half * item, {n: p + u * state_bytes[n] for n, p in dhn.items()},
                        parts[d].data.ptr, {n: p + u * state_bytes[n] for n, p in dh0.items()}, s,
                        dy_pitch=g.shape[-1] * item, io_type=types)
                self._join(stream)
                g = parts[0] + parts[1] if self.directions == 2 else parts[0]
            dx = to_io(g, dy.dtype)
        for u in range(len(self.units)):
            self._connect_grads(u, before=False)
        self._initial_state_grads = d0
        return dx

    def free_workspaces(self) -> None:
        """Drop the cached workspaces and their CUDA graphs (the memory goes back to CuPy's pool; the next
        call allocates and captures again). A pending backward() is dropped too."""
        for e in self._engines.values():
            e.free()
        self._shape = None

    def profile(self, x, repeat: int = 5) -> dict:
        """Where one forward and one training step (forward + backward of sum(y)) spend their time.

        parts: GPU milliseconds by kind of work (input GEMM, recurrent GEMMs, pointwise kernels,
        weight-gradient GEMMs, ...), measured op by op with CUDA events on a run without CUDA graphs;
        parts_calls: how many timed launches each kind adds up.
        While the host issues that run, a spin kernel holds the GPU, so the queue fills first and each
        event pair times the GPU's work, not its wait for the host (if the launch queue fills before
        the spin ends, later parts include some waiting again: held_ms says how long the GPU was held).
        graphs: the normal run (graphs replayed), its GPU time and the host time to issue it.
        Every unit of a bidirectional or dropout stack is timed; in the op-by-op run the two directions
        take turns on one stream, so parts add up to their serial time.
        """
        from .layer_profile import profile

        return profile(self, x, repeat)

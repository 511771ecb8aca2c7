"""lstmdsl's forward and backward as PyTorch custom operators (torch.library), for lstmdsl.torch's modules.

    torch.ops.lstmdsl.rnn_forward(x, h0, params, steps, handle, train) -> [y, *hn]
    torch.ops.lstmdsl.rnn_backward(x, h0, params, steps, y, dy, dhn, handle) -> [dx, *dh0, *dparams]

A `handle` names a Runner: a cell, a schedule, the sizes of a stack of layers and the direction it reads its
sequence in. `steps` holds the per-step inputs: first, optionally, the mask of sequence lengths ([T, B, 1],
masks.py: then the cell stops each sequence at its end; y past the end, where it is a state's update, is not
zeroed but holds its value there, with_lengths(held=True), on both devices: the module reads only the packed
rows or zeroes the rest (lengths=), and y is a state's history in place, no buffer or store of its own), then the
masks of the spec's regularisers (Cell.noise), layer by layer ([T, B, n] each; Runner.split_steps). Each op has a fake
implementation (the shapes of its outputs), so torch.compile traces a module as one opaque op per call, with no
graph break, and never looks inside lstmdsl's runtime; the autograd formula of rnn_forward calls rnn_backward.
On CUDA tensors the ops run the generated kernels (an Engine per device and element type, on torch's current
stream, writing into tensors torch allocated); on CPU tensors they run the numpy reference. Inside a CUDA graph
that torch captures (mode="reduce-overhead"), the Engine issues its work into torch's capture instead of
replaying graphs of its own.

The Engine keeps the activations of its latest training forward. rnn_backward receives the forward's
output y: when the Engine's activations belong to another forward (another call of the same module came
between), it first runs that forward again from the saved inputs.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..grad import StepGrad
from ..ir import Cell
from ..layer import init_params, recurrent_matrices
from ..masks import LENGTH, with_lengths
from ..numpy_layer import stack_backward, stack_forward
from ..program import build_program
from ..schedule import Schedule
from ..version import __version__
from .checks import _DTYPES, _HALF, check_gradients, check_inputs, value_type
from .handles import register, runner
from .streams import current_stream as _stream, on_device as _on
from .weights import GemmWeights, GradBuffers



@dataclass(frozen=True)
class ParamSlot:
    """One tensor of a layer's parameters as the ops receive them: a weight stack or a vector."""

    name: str  # the stack's or the vector's name
    kind: str  # "stack" | "vector"
    shape: tuple[str, ...]  # symbolic
    matrices: tuple[str, ...] = ()  # for a stack, its matrices top to bottom
    rows: tuple[str, ...] = ()


class Runner:
    """A cell, a schedule and the sizes of a stack of layers: what a handle names. It makes one Engine per
    (device, element type) on first use, and keeps the gradient buffers its CUDA graphs write."""

    def __init__(self, cell: Cell, grad: StepGrad, schedule: Schedule, sizes: list[dict[str, int]],
                 direction: str = "forward", beside: bool = False):
        self.cell, self.grad, self.schedule, self.sizes, self.direction = cell, grad, schedule, sizes, direction
        self.beside = beside  # one direction of a bidirectional layer: the other's loop runs beside it
        storage = build_program(cell, schedule, "float32").plan.storage
        slots = [ParamSlot(s.name, "stack", (s.rows, s.cols), s.matrices, s.rows) for s in storage.stacks]
        slots += [ParamSlot(p.name, "vector", p.shape) for p in cell.params if p.kind == "vector"]
        self.slots = tuple(slots)
        recurrent = set(recurrent_matrices(cell))
        self.recurrent = tuple(i for i, s in enumerate(slots) if s.kind == "stack" and set(s.matrices) <= recurrent)
        self.output_size = sizes[-1][cell.output_size]
        # what the ops take: each layer's parameters in slot order, and the input's features
        self.param_shapes = [torch.Size(self.shape(s, k)) for k in range(len(sizes)) for s in slots]
        self.input_size = sizes[0]["input"]
        self.state_names = [s.name for s in cell.states]
        self.noise = cell.noise
        self._engines: dict[tuple, object] = {}
        self._bindings: dict[tuple, list] = {}
        self.grads = GradBuffers(self.slots)  # what the backward writes the gradients into
        self.gemm = GemmWeights(self.slots, sizes)  # what the GEMMs read and write in place of the parameters
        # last, once made (the parameters' layout and the version in it: a program's weights come in that order)
        self._described = repr((__version__, cell, schedule.describe(), sizes, direction, beside, self.slots))
        self.handle, self.index = register(self._described, self)
        self.serial_handle = self.handle
        if beside:
            self.mark_beside()

    def mark_beside(self) -> None:
        """One direction of a bidirectional layer: `beside` the other, and a second handle (serial_handle) for its
        calls when the other does not run beside it (torch.compile, overlap_directions off): engines of their
        own, with every multiprocessor (plan.Persistent.beside_grids)."""
        self.beside = True
        if self.serial_handle == self.handle:
            self.serial_handle = register(repr((self._described, "serial")), self)[0]

    def state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        """The shape of each state of the stack, [L, B, size], in the spec's order."""
        return [(len(self.sizes), batch, self.sizes[0][s.size]) for s in self.cell.states]

    def zero_states(self, x: Tensor) -> list[Tensor]:
        return [x.new_zeros(s) for s in self.state_shapes(x.shape[1])]

    def __reduce__(self):  # a copy (copy.deepcopy, pickle) is a new runner with no engines yet
        return (Runner, (self.cell, self.grad, self.schedule, self.sizes, self.direction, self.beside))

    # -- parameters
    def shape(self, slot: ParamSlot, k: int) -> tuple[int, ...]:
        s = self.sizes[k]
        return (sum(s[r] for r in slot.rows), s[slot.shape[1]]) if slot.kind == "stack" else (s[slot.shape[0]],)

    def initial(self, rng: np.random.Generator | None, dtype, forget_bias=None) -> list[list[np.ndarray | None]]:
        """Initial values per layer, in slot order: lstmdsl's (init_params, seeded) when rng is given, else
        None (the module draws them from torch's generator, as torch.nn.LSTM does)."""
        out = []
        for bound in self.sizes:
            if rng is None:
                out.append([None] * len(self.slots))
                continue
            host = init_params(self.cell, bound, rng, dtype, forget_bias)
            out.append([np.concatenate([host[m] for m in s.matrices]) if s.kind == "stack" else host[s.name]
                        for s in self.slots])
        return out

    def per_matrix(self, params: list, k: int) -> dict:
        """Layer k's parameters (or gradients) as the reference names them: name -> array (views of the
        stacks, so writing a gradient writes the stack)."""
        n = len(self.slots)
        out = {}
        for slot, a in zip(self.slots, params[k * n:(k + 1) * n]):
            if slot.kind == "vector":
                out[slot.name] = a
                continue
            row = 0
            for m, r in zip(slot.matrices, slot.rows):
                rows = self.sizes[k][r]
                out[m] = a[row:row + rows]
                row += rows
        return out

    def split_steps(self, steps: list) -> tuple[object, dict]:
        """(the length mask or None, the regularisers' masks by 'l{k}.{name}') of an op's steps."""
        names = [f"l{k}.{z.name}" for k in range(len(self.sizes)) for z in self.noise]
        first = len(steps) - len(names)
        if first not in (0, 1):
            raise UsageError(f"the op takes the length mask and {len(names)} regulariser masks, got {len(steps)} "
                             "tensors")
        return (steps[0] if first else None), dict(zip(names, steps[first:]))

    # -- CUDA
    def engine(self, x: Tensor, dtype: str, masked: bool, params: list[Tensor], handle: int):
        """The Engine for x's device and type: a half-precision x (mixed precision, float32 parameters; or
        half parameters, whose weight gradients the plan writes in half) runs the schedule at that precision.
        handle: the call's (serial_handle: the other direction does not run beside this one)."""
        schedule, half = self.schedule, params[0].dtype in _HALF
        if x.dtype in _HALF:
            schedule = dataclasses.replace(schedule, precision=_HALF[x.dtype][0])
        beside = self.beside and handle != self.serial_handle
        key = (x.device.index, dtype, masked, schedule.precision, half, beside)
        if key not in self._engines:
            from ..runtime.executor import Engine

            cell = with_lengths(self.cell, held=True) if masked else self.cell
            self._engines[key] = Engine(build_program(cell, schedule, dtype, self.direction, half), self.sizes)
            self._engines[key].beside = beside  # (plan.Persistent: not alone_work; beside_grids, beside_work)
        return self._engines[key]

    def bindings(self, params: list[Tensor], grads: list[Tensor] | None) -> list:
        """The Engine's Binding of each layer (cached by the addresses, so CUDA graphs are reused)."""
        from ..runtime.executor import Binding

        ptrs = tuple(p.data_ptr() for p in params)
        gptrs = tuple(g.data_ptr() for g in grads) if grads is not None else ptrs
        key = (ptrs, gptrs)
        if key not in self._bindings:
            if len(self._bindings) > 16:
                self._bindings.clear()
            n = len(self.slots)
            out = []
            for k in range(len(self.sizes)):
                p, g = ptrs[k * n:(k + 1) * n], gptrs[k * n:(k + 1) * n]
                stacks = [(s.name, i) for i, s in enumerate(self.slots) if s.kind == "stack"]
                vectors = [(s.name, i) for i, s in enumerate(self.slots) if s.kind == "vector"]
                out.append(Binding({nm: p[i] for nm, i in stacks}, {nm: g[i] for nm, i in stacks},
                                   {nm: p[i] for nm, i in vectors}, {nm: g[i] for nm, i in vectors}))
            self._bindings[key] = out
        return self._bindings[key]


def _half_on_cpu(x: Tensor, params: list[Tensor]) -> bool:
    """Whether a CPU call has half parameters (computed by the float32 reference); mixed precision is refused."""
    if x.dtype in _HALF and params[0].dtype != x.dtype:
        raise UsageError(f"a {x.dtype} input runs on CUDA only (mixed precision); on the CPU give float32")
    return x.dtype in _HALF


def _io_type(x: Tensor) -> str | None:
    """The element type of x and y where it is not the values' (mixed precision)."""
    return _HALF[x.dtype][1] if x.dtype in _HALF else None


def _dense(ts: list[Tensor]) -> list[Tensor]:
    return [t if t.is_contiguous() else t.contiguous() for t in ts]


def _numpy(ts: list[Tensor]) -> list[np.ndarray]:
    return [t.detach().contiguous().numpy() for t in ts]


def _reference_forward(r: Runner, x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor],
                       keep: bool):
    h0 = h0 or r.zero_states(x)
    nump = _numpy(params)
    mask, noise = r.split_steps(steps)
    lengths = _numpy([mask])[0][:, :, 0].sum(axis=0).astype(np.int64) if mask is not None else None
    per_layer = [r.per_matrix(nump, k) for k in range(len(r.sizes))]
    y, final, saved = stack_forward(r.cell, per_layer, r.sizes, _numpy([x])[0], dict(zip(r.state_names, _numpy(h0))),
                                    keep=keep, lengths=lengths, reverse=r.direction == "reverse",
                                    noise={k: v.detach().numpy() for k, v in noise.items()}, held=True)
    return nump, per_layer, y, final, saved


def _step_pointers(r: Runner, steps: list[Tensor]) -> tuple[bool, dict]:
    """(whether the length mask is given, the Engine's steps: name -> address, or one address per layer)."""
    mask, noise = r.split_steps(steps)
    ptrs = {LENGTH: mask.data_ptr()} if mask is not None else {}
    for z in r.noise:
        ptrs[z.name] = [noise[f"l{k}.{z.name}"].data_ptr() for k in range(len(r.sizes))]
    return mask is not None, ptrs


def forward_impl(x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor], handle: int,
                 train: bool, issued=None) -> list[Tensor]:
    """[y, *hn]: the stack forward on x and the initial states (see the module docstring). issued: on CUDA, called
    once the first layer's work is issued, before the outputs are allocated and copied out (forward_started)."""
    if x.is_cuda:
        return forward_started(x, h0, params, steps, handle, train)(issued)
    r = runner(handle)
    check_inputs(r, x, h0, params, steps)
    x, h0, params, steps = x.contiguous(), _dense(h0), _dense(params), _dense(steps)
    if _half_on_cpu(x, params):  # half parameters: the float32 reference, its output rounded
        out = forward_impl(x.float(), h0, [p.float() for p in params], steps, handle, train)
        return [out[0].to(x.dtype), *out[1:]]
    _, _, y, final, _ = _reference_forward(r, x, h0, params, steps, keep=False)
    return [torch.from_numpy(np.ascontiguousarray(y))] + [torch.from_numpy(final[n]) for n in r.state_names]


def forward_started(x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor], handle: int,
                    train: bool):
    """forward_impl on CUDA up to the engine's first launch, the inputs copied in (Engine.forward_parts); returns
    finish(issued=None) -> [y, *hn], which issues the rest, calling issued() once the first layer's work is issued,
    before the outputs are allocated and copied out (pair.py issues the other direction's launch there)."""
    r = runner(handle)
    dtype = check_inputs(r, x, h0, params, steps)
    x, h0, params, steps = x.contiguous(), _dense(h0), _dense(params), _dense(steps)
    T, B = x.shape[:2]
    names = r.state_names
    out, hook = [], []

    def outputs():  # allocated once the first layer's work is issued: the host does it while the GPU runs
        if hook[0] is not None:
            hook[0]()
        out.append(x.new_empty((T, B, r.output_size)))
        out.extend(x.new_empty(shape, dtype=value_type(x)) for shape in r.state_shapes(B))
        return out[0].data_ptr(), {n: h.data_ptr() for n, h in zip(names, out[1:])}, \
            out[0].data_ptr() if train else None

    with _on(x):
        mask, ptrs = _step_pointers(r, steps)
        engine = r.engine(x, dtype, mask, params, handle)
        parts = engine.forward_parts(T, B, train, r.bindings(r.gemm.read(params, engine.program.plan), None),
                                     x.data_ptr(), {n: h.data_ptr() for n, h in zip(names, h0)} if h0 else None,
                                     outputs, None, _stream(x), steps=ptrs, io_type=_io_type(x))
        next(parts)

    def finish(issued=None) -> list[Tensor]:
        hook.append(issued)
        with _on(x):
            deque(parts, maxlen=0)
        return out
    return finish


@torch.library.custom_op("lstmdsl::rnn_forward", mutates_args=())
def rnn_forward(x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor], handle: int,
                train: bool) -> list[Tensor]:
    return forward_impl(x, h0, params, steps, handle, train)


@rnn_forward.register_fake
def _(x, h0, params, steps, handle, train):
    r = runner(handle)
    return [x.new_empty((x.shape[0], x.shape[1], r.output_size)),
            *[x.new_empty(s, dtype=value_type(x)) for s in r.state_shapes(x.shape[1])]]


def backward_impl(x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor], y: Tensor, dy: Tensor,
                  dhn: list[Tensor], handle: int, views: bool = False, wanted: tuple[bool, bool] = (True, True)
                  ) -> list[Tensor | None]:
    """[dx, *dh0, *dparams] for the forward that returned y (run again first if its activations are gone).
    views: the parameter gradients may be views of one tensor (eager autograd takes them; a custom op's
    outputs must not alias each other). wanted: whether dx and dh0 are (eager autograd says; on the GPU the
    others are None, neither allocated nor copied out)."""
    r = runner(handle)
    dtype = check_inputs(r, x, h0, params, steps)
    check_gradients(r, x, dy, dhn)
    x, h0, params, steps = x.contiguous(), _dense(h0), _dense(params), _dense(steps)
    T, B = x.shape[:2]
    dy, dhn = dy.contiguous(), [d if d is None or d.is_contiguous() else d.contiguous() for d in dhn]
    names = r.state_names
    if not x.is_cuda and _half_on_cpu(x, params):  # half parameters: the float32 reference, rounded
        out = backward_impl(x.float(), h0, [p.float() for p in params], steps, y.float(), dy.float(), dhn, handle,
                            views, wanted)
        return [out[0].to(x.dtype), *out[1:1 + len(h0)], *[g.to(x.dtype) for g in out[1 + len(h0):]]]
    if not x.is_cuda:  # the reference keeps no activations between calls: forward again, keeping them
        given = bool(h0)
        nump, per_layer, _, _, saved = _reference_forward(r, x, h0, params, steps, keep=True)
        grads = [np.zeros_like(p) for p in nump]
        dhn = [d if d is not None else x.new_zeros(s) for d, s in zip(dhn, r.state_shapes(B))]
        dx, d0 = stack_backward(per_layer, r.sizes, saved, _numpy([dy])[0], dict(zip(names, _numpy(dhn))),
                                [r.per_matrix(grads, k) for k in range(len(r.sizes))])
        return [torch.from_numpy(np.ascontiguousarray(dx))] + [torch.from_numpy(d0[n]) for n in names if given] + \
            [torch.from_numpy(g) for g in grads]
    with _on(x):
        mask, ptrs = _step_pointers(r, steps)
        engine = r.engine(x, dtype, mask, params, handle)
        stream = _stream(x)
        weights = r.gemm.read(params, engine.program.plan)
        if engine.tape_owner(T, B) != y.data_ptr():  # another forward came between: run this one again
            scratch = [torch.empty_like(y)] + [x.new_empty(s, dtype=value_type(x)) for s in r.state_shapes(B)]
            engine.forward(T, B, True, r.bindings(weights, None), x.data_ptr(),
                           {n: h.data_ptr() for n, h in zip(names, h0)} if h0 else None, scratch[0].data_ptr(),
                           {n: h.data_ptr() for n, h in zip(names, scratch[1:])}, stream, owner=y.data_ptr(),
                           steps=ptrs, io_type=_io_type(x))
        grads = r.grads.zeroed(params, engine.program.plan, value_type(params[0]), stream)
        dx = torch.empty_like(x) if wanted[0] else None
        dh0 = [x.new_empty(s, dtype=value_type(x)) if h0 and wanted[1] else None for s in r.state_shapes(B)]
        if dy.dtype != y.dtype:
            dy = dy.to(y.dtype)
        engine.backward(r.bindings(weights, grads), dy.data_ptr(),
                        {n: d.data_ptr() if d is not None else None for n, d in zip(names, dhn)},
                        dx.data_ptr() if dx is not None else None,
                        {n: d.data_ptr() if d is not None else None for n, d in zip(names, dh0)}, stream,
                        io_type=_io_type(x))
        r.gemm.reorder_grads(engine.program.plan, grads)
        dh0 = dh0 if h0 else []
        grads = r.grads.copied_out(params, grads, views)
    return [dx, *dh0, *grads]


@torch.library.custom_op("lstmdsl::rnn_backward", mutates_args=())
def rnn_backward(x: Tensor, h0: list[Tensor], params: list[Tensor], steps: list[Tensor], y: Tensor, dy: Tensor,
                 dhn: list[Tensor], handle: int) -> list[Tensor]:
    return backward_impl(x, h0, params, steps, y, dy, dhn, handle)


@rnn_backward.register_fake
def _(x, h0, params, steps, y, dy, dhn, handle):
    return [x.new_empty(x.shape), *[h.new_empty(h.shape) for h in h0], *[p.new_empty(p.shape) for p in params]]


def _setup(ctx, inputs, output):
    x, h0, params, steps, handle, train = inputs
    ctx.handle, ctx.states, ctx.params, ctx.steps = handle, len(h0), len(params), len(steps)
    ctx.runner = runner(handle)  # (kept for the backward: a module dropped after its forward drops its runner)
    ctx.save_for_backward(x, *h0, *params, *steps, output[0])


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    n, p = ctx.states, ctx.params
    x, h0, params = saved[0], list(saved[1:1 + n]), list(saved[1 + n:1 + n + p])
    steps, y = list(saved[1 + n + p:-1]), saved[-1]
    dy, dhn = grads[0], list(grads[1:])
    out = torch.ops.lstmdsl.rnn_backward(x, h0, params, steps, y, dy, dhn, ctx.handle)
    return out[0], list(out[1:1 + n]), list(out[1 + n:]), [None] * ctx.steps, None, None


torch.library.register_autograd("lstmdsl::rnn_forward", _backward, setup_context=_setup)


class Eager(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch, for eager calls (the modules use the
    custom ops while torch.compile traces, this otherwise: it costs the host less per call)."""

    @staticmethod
    def forward(ctx, x, handle, train, states, nsteps, *rest):
        h0, params = list(rest[:states]), list(rest[states:len(rest) - nsteps])
        steps = list(rest[len(rest) - nsteps:])
        out = forward_impl(x, h0, params, steps, handle, train)
        ctx.handle, ctx.states, ctx.steps, ctx.runner = handle, states, nsteps, runner(handle)  # (as _setup keeps)
        # outputs the loss does not reach (the final states, mostly) get None, not zero tensors autograd would
        # make and the engine copy in: the engine zeroes such a gradient itself (probes/module_host_h200.txt)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, *h0, *params, *steps, out[0])
        return tuple(out)

    @staticmethod
    def backward(ctx, dy, *dhn):
        saved = ctx.saved_tensors
        n, m = ctx.states, ctx.steps
        x, h0, y = saved[0], list(saved[1:1 + n]), saved[-1]
        params, steps = list(saved[1 + n:len(saved) - 1 - m]), list(saved[len(saved) - 1 - m:-1])
        dy = dy if dy is not None else torch.zeros_like(y)  # a None dhn: the engine zeroes that gradient itself
        wanted = ctx.needs_input_grad[0], any(ctx.needs_input_grad[5:5 + n])
        out = backward_impl(x, h0, params, steps, y, dy, dhn, ctx.handle, views=True, wanted=wanted)
        if torch.is_grad_enabled():  # create_graph=True: gradients whose own backward says why there is none,
            # linked to what they depend on (torch.autograd.grad only runs the nodes on a path to its inputs)
            links = [t for t in (x, *h0, *params, dy, *dhn) if t is not None and t.requires_grad]
            out = list(_NoSecondDerivative.apply(len(out), *(g if g is None else g.detach() for g in out), *links))
        return (out[0], None, None, None, None, *out[1:], *([None] * m))


class _NoSecondDerivative(torch.autograd.Function):
    """The layer's gradients under create_graph=True, whose backward (a double backward, as a gradient penalty
    through the layer takes) says there is none, not torch's "does not require grad" nor, through
    torch.autograd.grad, silently nothing: apply(n, *n gradients, *the tensors they depend on) -> the gradients."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(g if g is None else g.view_as(g) for g in tensors[:n])

    @staticmethod
    def backward(ctx, *_):
        raise UsageError("lstmdsl layers have no second derivative: a double backward through one (create_graph=True, "
                         "then a backward of the gradient, e.g. a gradient penalty) is not supported")


def forward(x: Tensor, h0: list[Tensor], params: list[Tensor], handle: int, train: bool,
            steps: list[Tensor] = ()) -> list[Tensor]:
    """[y, *hn] through the custom op when torch.compile traces, through Eager otherwise."""
    steps = list(steps)
    if torch.compiler.is_compiling():
        return torch.ops.lstmdsl.rnn_forward(x, h0, params, steps, handle, train)
    if torch.jit.is_tracing():  # (its trace would hold this call's outputs or this process's handle as constants)
        raise UsageError("torch.jit.trace cannot trace lstmdsl's modules (TorchScript is not supported); "
                         "torch.compile and torch.export take them")
    if not train:
        with torch.no_grad():
            return forward_impl(x, h0, params, steps, handle, False)
    return list(Eager.apply(x, handle, train, len(h0), len(steps), *h0, *params, *steps))

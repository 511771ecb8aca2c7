"""The reference backend: a Layer whose forward and backward interpret the Cell IR with numpy
(reference.py), in float32 or float64. It is the semantics every other backend is checked against, and it
runs wherever numpy does. It computes every schedule the same way, so it never reads its schedule."""

from __future__ import annotations

import functools
import math

import numpy as np

from . import reference
from .arrays import from_io, to_io
from .errors import UsageError, check_free_memory
from .grad import StepGrad, differentiate
from .ir import Cell
from .layer import PARAMETER_SIZES, Layer, init_params, length_mask
from .masks import LENGTH, with_lengths
from .schedule import Schedule
from .spec import Spec


class NumpyLayer(Layer):
    backend = "numpy"
    array_name = "numpy array"

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None, directions: int = 1, dropout: float = 0.0,
                 dropconnect: float = 0.0):
        super().__init__(spec, sizes, schedule, dtype, directions, dropout, seed, dropconnect)
        self._rng = np.random.default_rng(self._noise_seed)
        rng = np.random.default_rng(seed)
        count = sum(math.prod(sizes[k][s] for s in p.shape) for k, _ in self.units for p in self.cell.params)
        check_free_memory(2 * count * self.dtype.itemsize, "the parameters and their gradients", PARAMETER_SIZES)
        self._params = [init_params(self.cell, sizes[k], rng, self.dtype, forget_bias) for k, _ in self.units]
        self._grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in self._params]
        self._tapes = None

    def noise_state(self):
        return self._rng.bit_generator.state

    def set_noise_state(self, state) -> None:
        """Restore what noise_state() returned (a ValueError, TypeError or KeyError where it is not one)."""
        self._rng.bit_generator.state = state

    def tape_bytes(self, T: int, B: int) -> int:
        """About what a training forward keeps for backward() over T steps of B sequences: every node's value
        at every step of every layer and direction (a lower estimate: the backward's own arrays come on top)."""
        per_step = sum(self.sizes[k].get(n.size, 1) if n.size else 1 for k, _ in self.units for n in self.cell.nodes)
        return per_step * T * B * np.dtype(self.dtype).itemsize

    def _check_kind(self, what: str, a) -> None:
        if not isinstance(a, np.ndarray):
            raise UsageError(f"{what} must be a numpy array on the numpy backend, got {type(a).__name__}")

    def _check_layout(self, what: str, a) -> None:
        if not np.all(np.isfinite(a)):
            raise UsageError(f"{what} contains NaN or infinite values")

    def _zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def _full(self, shape, value: float):
        return np.full(shape, value, self.dtype)

    def _uniform(self, shape):
        return self._rng.random(shape, np.float32)

    def forward(self, x: np.ndarray, state: dict | None = None, *, train: bool = True, lengths=None, noise=None):
        """x [T, B, input] -> (y [T, B, output], final state {name: [D * L, B, size]}).

        state defaults to zeros. lengths [B] (integers in [1, T]): each sequence's length; its states stop at
        its end (the final state is its last step's) and its outputs past the end are zero. train: the
        regularisers (the spec's dropout and zoneout, dropout between layers) draw fresh masks, and what
        backward() needs is kept; with train=False they take their expectation, and the activations of the
        last training forward stay for backward() (as on the cuda backend).
        noise: the masks to use instead of drawing them (name -> array, as noise_shapes() and last_noise()).
        """
        T, B, state, lengths = self._check_input(x, state, lengths, train=train)
        given = x
        io, x = x.dtype, from_io(x, self.dtype)  # (in a half type, see Layer._half_io: y comes back in it too)
        if train:  # (what backward() reads is a copy, as the cuda backend's: the caller may change x or the states
            # in between; the tapes held the caller's arrays, and the weight gradients changed with them)
            x = x.copy() if x is given else x
            state = {k: v.copy() for k, v in state.items()}
        masks = self._noise(T, B, train, noise)
        connect = self._dropconnect(masks)  # DropConnect: the recurrent matrices times their masks
        params = [dict(p, **{m: p[m] * mask for m, mask in c.items()}) for p, c in zip(self._params, connect)]
        y, final, tapes = stack_forward(self.cell, params, self.sizes, x, state, keep=train, lengths=lengths,
                                        directions=self.directions, noise=masks)
        if train:  # an evaluation forward leaves the last training forward's activations to backward()
            self._tapes = (tapes, params, connect)
            self._shape, self._io_dtype = (T, B), io
        return to_io(y, io), final

    def backward(self, dy: np.ndarray, dstate: dict | None = None) -> np.ndarray:
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input].

        Adds every parameter's gradient into grads(); initial_state_grads() holds dL/d initial state.
        """
        if self._tapes is None:
            raise UsageError("backward() needs a forward() with train=True first")
        dstate = self._check_gradient(dy, dstate, self._shape)
        dy = from_io(dy, self.dtype)
        tapes, params, connect = self._tapes
        # a masked matrix's gradient is the mask times the gradient of the product
        grads = [dict(g, **{m: np.zeros_like(g[m]) for m in c}) for g, c in zip(self._grads, connect)]
        dx, self._initial_state_grads = stack_backward(params, self.sizes, tapes, dy, dstate, grads, self.directions)
        for g, tmp, c in zip(self._grads, grads, connect):
            for m, mask in c.items():
                g[m] += tmp[m] * mask
        return to_io(dx, self._io_dtype)


@functools.lru_cache(maxsize=64)
def _grad(cell: Cell) -> StepGrad:
    return differentiate(cell)


def stack_forward(cell: Cell, params: list[dict], sizes: list[dict], x: np.ndarray, state: dict, keep: bool = True,
                  lengths: np.ndarray | None = None, directions: int = 1, reverse: bool = False,
                  noise: dict | None = None, held: bool = False):
    """A stack of layers forward. params: one dict per unit (layer-major, direction-minor); x [T, B, input],
    state {name: [D * L, B, size]}, lengths [B] or None; noise: the regularisers' masks by Layer.noise_kinds()'s
    names (the spec's per unit, 'l{k}.between' multiplying layer k's output); held: with lengths, the output past
    each sequence's end is not zeroed (masks.with_lengths). Returns (y, final state, what
    stack_backward needs or None); a reverse unit reads the sequence backwards and its output is the second
    half of the layer's. reverse (one direction): every layer reads backwards."""
    T = x.shape[0]
    noise = noise or {}
    steps = {}
    if lengths is not None:
        cell = with_lengths(cell, held)
        steps = {LENGTH: length_mask(np.asarray(lengths), T, np, x.dtype)}
    finals = {s.name: [None] * (len(sizes) * directions) for s in cell.states}
    tapes, between = [], []
    h = x
    for k in range(len(sizes)):
        outs = []
        for d in range(directions):
            u = k * directions + d
            unit = f"l{k}" + ("_reverse" if d else "")
            masks = dict(steps, **{z.name: noise[f"{unit}.{z.name}"] for z in cell.noise})
            y, final, tape = reference.layer_forward(cell, params[u], sizes[k], h, {n: a[u] for n, a in state.items()},
                                                     keep=keep, steps=masks, reverse=d == 1 or reverse)
            outs.append(y)
            tapes.append(tape)
            for n, a in final.items():
                finals[n][u] = a
        h = np.concatenate(outs, axis=-1) if directions > 1 else outs[0]
        between.append(noise.get(f"l{k}.between"))
        if between[-1] is not None:
            h = h * between[-1]
    return h, {n: np.stack(a) for n, a in finals.items()}, (cell, tapes, between) if keep else None


def stack_backward(params: list[dict], sizes: list[dict], saved, dy: np.ndarray, dstate: dict, grads: list[dict],
                   directions: int = 1):
    """A stack of layers backward through time: (dx, d initial state {name: [D * L, B, size]}); adds each
    unit's parameter gradients into grads[u]. saved: what stack_forward returned for it."""
    cell, tapes, between = saved
    grad = _grad(cell)
    d_initial = {s.name: [None] * len(tapes) for s in cell.states}
    for k in reversed(range(len(sizes))):
        if between[k] is not None:
            dy = dy * between[k]
        width = dy.shape[-1] // directions
        dx = None
        for d in range(directions):
            u = k * directions + d
            part, d0 = reference.layer_backward(cell, grad, params[u], sizes[k], tapes[u],
                                                np.ascontiguousarray(dy[..., d * width:(d + 1) * width]),
                                                {n: a[u] for n, a in dstate.items()}, grads[u])
            dx = part if dx is None else dx + part
            for n, a in d0.items():
                d_initial[n][u] = a
        dy = dx
    return dy, {n: np.stack(a) for n, a in d_initial.items()}

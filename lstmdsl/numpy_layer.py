"""The reference backend: a Layer whose forward and backward interpret the Cell IR with numpy
(reference.py), in float32 or float64. It is the semantics every other backend is checked against, and it
runs wherever numpy does. It computes every schedule the same way, so it never reads its schedule."""

from __future__ import annotations

import numpy as np

from . import reference
from .errors import UsageError
from .grad import StepGrad
from .ir import Cell
from .layer import Layer, init_params
from .schedule import Schedule
from .spec import Spec


class NumpyLayer(Layer):
    backend = "numpy"
    array_name = "numpy array"

    def __init__(self, spec: Spec, sizes: list[dict[str, int]], schedule: Schedule, dtype: str, seed: int,
                 forget_bias: float | None = None):
        super().__init__(spec, sizes, schedule, dtype)
        rng = np.random.default_rng(seed)
        self._params = [init_params(self.cell, s, rng, self.dtype, forget_bias) for s in sizes]
        self._grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in self._params]
        self._tapes = None

    def _check_kind(self, what: str, a) -> None:
        if not isinstance(a, np.ndarray):
            raise UsageError(f"{what} must be a numpy array on the numpy backend, got {type(a).__name__}")

    def _check_layout(self, what: str, a) -> None:
        if not np.all(np.isfinite(a)):
            raise UsageError(f"{what} contains NaN or infinite values")

    def _zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def forward(self, x: np.ndarray, state: dict | None = None, *, train: bool = True):
        """x [T, B, input] -> (y [T, B, output], final state {name: [L, B, size]}).

        state defaults to zeros. With train=False nothing is kept for backward().
        """
        T, B, state = self._check_input(x, state)
        y, final, tapes = stack_forward(self.cell, self._params, self.sizes, x, state, keep=train)
        self._tapes = tapes if train else None
        self._shape = (T, B)
        return y, final

    def backward(self, dy: np.ndarray, dstate: dict | None = None) -> np.ndarray:
        """dL/dy [T, B, output] (and optionally dL/d final state) -> dL/dx [T, B, input].

        Adds every parameter's gradient into grads(); initial_state_grads() holds dL/d initial state.
        """
        if self._tapes is None:
            raise UsageError("backward() needs a forward() with train=True first")
        dstate = self._check_gradient(dy, dstate, self._shape)
        dx, self._initial_state_grads = stack_backward(self.cell, self.spec.grad, self._params, self.sizes,
                                                       self._tapes, dy, dstate, self._grads)
        return dx


def stack_forward(cell: Cell, params: list[dict], sizes: list[dict], x: np.ndarray, state: dict, keep: bool = True):
    """A stack of layers forward: x [T, B, input], state {name: [L, B, size]} -> (y, final state, the tapes
    for stack_backward, or None)."""
    finals, tapes = {s.name: [] for s in cell.states}, []
    h = x
    for k in range(len(sizes)):
        h, final, tape = reference.layer_forward(cell, params[k], sizes[k], h, {n: a[k] for n, a in state.items()},
                                                 keep=keep)
        tapes.append(tape)
        for n, a in final.items():
            finals[n].append(a)
    return h, {n: np.stack(a) for n, a in finals.items()}, tapes if keep else None


def stack_backward(cell: Cell, grad: StepGrad, params: list[dict], sizes: list[dict], tapes, dy: np.ndarray,
                   dstate: dict, grads: list[dict]):
    """A stack of layers backward through time: (dx, d initial state {name: [L, B, size]}); adds each layer's
    parameter gradients into grads[k]."""
    d_initial = {s.name: [None] * len(sizes) for s in cell.states}
    for k in reversed(range(len(sizes))):
        dy, d0 = reference.layer_backward(cell, grad, params[k], sizes[k], tapes[k], dy,
                                          {n: a[k] for n, a in dstate.items()}, grads[k])
        for n, a in d0.items():
            d_initial[n][k] = a
    return dy, {n: np.stack(a) for n, a in d_initial.items()}

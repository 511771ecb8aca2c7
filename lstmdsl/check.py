"""The one check of a backend against the float64 reference, and the one table of tolerances.

`compare` runs a layer forward (training and forward-only) and backward on the given data, and the numpy
reference in float64 with the same parameters, and returns the relative error of every output, final
state, input and initial-state gradient and parameter gradient: ||got - want|| / ||want||, infinite
where the layer produced NaN or inf. `lstmdsl run`, tests/test_gpu.py and the emulated runtime in
tests/emulated/ all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import compile
from .arrays import array_module, to_numpy
from .layer import Layer

# largest relative error allowed against the float64 reference, by what the layer computes in
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2, "fp16": 1e-2, "float64": 1e-10}


def tolerance(layer: Layer) -> float:
    return TOLERANCE["float64" if layer.dtype == np.float64 else layer.schedule.precision]


@dataclass(frozen=True)
class Comparison:
    errors: dict[str, float]  # tensor -> relative error
    tolerance: float

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.worst <= self.tolerance

    def failures(self) -> dict[str, float]:
        return {k: e for k, e in self.errors.items() if not e <= self.tolerance}


def relative_error(got, want: np.ndarray) -> float:
    got = to_numpy(got).astype(np.float64)
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def reference_of(layer: Layer) -> Layer:
    """A float64 numpy layer with the same cell, sizes and parameter values."""
    first = layer.sizes[0]
    ref = compile(layer.spec, first["input"], first["hidden"], layer.num_layers, proj_size=first["proj"],
                  num_heads=first.get("heads"), dtype="float64", bidirectional=layer.directions == 2,
                  dropout=layer.dropout if layer.num_layers > 1 else 0.0,  # (one layer: none, said already)
                  dropconnect=layer.dropconnect)
    ref.load_state_dict(layer.state_dict())
    return ref


def compare(layer: Layer, x: np.ndarray, state: dict, dy: np.ndarray, dstate: dict | None = None,
            lengths: np.ndarray | None = None) -> Comparison:
    """Relative errors of the layer against the float64 reference on x, state (numpy, any float type);
    dy and dstate are the gradients fed back; lengths [B] or None. The layer's gradients are zeroed
    first. A layer with regularisers draws its masks in a first training forward; the reference runs with
    the same masks, and the forward-only outputs are compared with the reference's in evaluation."""
    xp = array_module(next(iter(layer.parameters().values())))
    dt = layer.dtype

    def dev(a):
        return xp.asarray(np.asarray(a, dt))

    dstate = dstate if dstate is not None else {k: np.zeros_like(v) for k, v in state.items()}
    ref = reference_of(layer)
    f64 = {k: np.asarray(v, np.float64) for k, v in state.items()}
    noise = noise_ref = None
    if layer.noise_shapes(*x.shape[:2]):
        layer.forward(dev(x), {k: dev(v) for k, v in state.items()}, lengths=lengths)
        noise = layer.last_noise()
        noise_ref = {k: np.asarray(to_numpy(v), np.float64) for k, v in noise.items()}
    y_ref, final_ref = ref.forward(np.asarray(x, np.float64), f64, lengths=lengths, noise=noise_ref)
    dx_ref = ref.backward(np.asarray(dy, np.float64), {k: np.asarray(v, np.float64) for k, v in dstate.items()})
    y_eval, final_eval = (ref.forward(np.asarray(x, np.float64), f64, train=False, lengths=lengths) if noise
                          else (y_ref, final_ref))

    y_inf, final_inf = layer.forward(dev(x), {k: dev(v) for k, v in state.items()}, train=False, lengths=lengths)
    layer.zero_grad()
    y, final = layer.forward(dev(x), {k: dev(v) for k, v in state.items()}, lengths=lengths, noise=noise)
    dx = layer.backward(dev(dy), {k: dev(v) for k, v in dstate.items()})
    errors = {"y": relative_error(y, y_ref), "y (forward only)": relative_error(y_inf, y_eval),
              "dx": relative_error(dx, dx_ref)}
    for k in final_ref:
        errors[f"final {k}"] = relative_error(final[k], final_ref[k])
        errors[f"final {k} (forward only)"] = relative_error(final_inf[k], final_eval[k])
        errors[f"d initial {k}"] = relative_error(layer.initial_state_grads()[k], ref.initial_state_grads()[k])
    for k, g in ref.grads().items():
        errors[f"d {k}"] = relative_error(layer.grads()[k], g)
    return Comparison(errors, tolerance(layer))


def random_case(layer: Layer, T: int, B: int, seed: int = 0, scale: float = 0.5):
    """(x, state, dy, dstate) drawn from a seeded generator, as numpy arrays of the layer's dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size))
    state = {k: scale * rng.standard_normal(s) for k, s in layer.state_shapes(B).items()}
    dy = rng.standard_normal((T, B, layer.output_size))
    dstate = {k: rng.standard_normal(s) for k, s in layer.state_shapes(B).items()}
    dt = layer.dtype
    return (x.astype(dt), {k: v.astype(dt) for k, v in state.items()}, dy.astype(dt),
            {k: v.astype(dt) for k, v in dstate.items()})


def randomize(layer: Layer, seed: int = 0, scale: float = 0.5) -> None:
    """Set every parameter uniform in [-scale, scale]: larger than the default initialisation, so that every
    path through the cell matters to a check."""
    xp = array_module(next(iter(layer.parameters().values())))
    rng = np.random.default_rng(seed)
    for p in layer.parameters().values():
        p[...] = xp.asarray(rng.uniform(-scale, scale, p.shape).astype(p.dtype))

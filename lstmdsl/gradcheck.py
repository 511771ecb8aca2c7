"""Finite-difference check of the reference's backward pass, in float64.

The loss is L = sum(y * Wy) + sum over states of sum(final_state * Ws) with fixed random weights W, so
every output and final state carries a gradient. For a sample of coordinates of every parameter, of x
and of the initial states, the analytic gradient is compared with the central difference
(L(v + eps) - L(v - eps)) / (2 eps); the error of a tensor is ||analytic - numeric|| / max(||analytic||,
||numeric||, floor) over its sampled coordinates, floor 1e-4 of the largest such norm of the check (the
difference's accuracy is a fraction of the function's scale: smaller gradients count by their absolute error).
A tensor whose error is above 1e-7 is compared again with differences of 10 and 100 times eps, and its smallest
error counts (rounding can hide a gradient that is small beside the loss; a wrong one agrees at no step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import Spec, compile


@dataclass(frozen=True)
class GradRow:
    tensor: str
    coordinates: int
    max_abs_grad: float
    rel_error: float


def gradient_check(spec: Spec, input_size: int, hidden_size: int, batch: int, steps: int, num_layers: int = 1,
                   proj_size: int | None = None, samples: int = 6, eps: float = 1e-6,
                   seed: int = 0, bidirectional: bool = False, dropout: float = 0.0,
                   lengths: bool = False, dropconnect: float = 0.0, num_heads: int | None = None) -> list[GradRow]:
    """lengths: draw the sequences' lengths in [1, steps] (the first sequence full, the last one step long);
    the regularisers' masks of one training forward are kept for every evaluation of the loss."""
    layer = compile(spec, input_size, hidden_size, num_layers, proj_size=proj_size, dtype="float64", seed=seed,
                    bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0,  # (one layer: none;
                    dropconnect=dropconnect, num_heads=num_heads)  # the caller's layer has said so already)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((steps, batch, input_size))
    state = {k: 0.5 * rng.standard_normal(s) for k, s in layer.state_shapes(batch).items()}
    sequence_lengths = None
    if lengths:
        sequence_lengths = rng.integers(1, steps + 1, batch)
        sequence_lengths[0], sequence_lengths[-1] = steps, 1
    y, final = layer.forward(x, state, lengths=sequence_lengths)
    noise = layer.last_noise() or None  # the regularisers' masks of this forward, kept for every evaluation
    wy = rng.standard_normal(y.shape)
    ws = {k: rng.standard_normal(a.shape) for k, a in final.items()}

    def loss() -> float:
        y, final = layer.forward(x, state, train=False, noise=noise, lengths=sequence_lengths)
        return float(np.sum(y * wy) + sum(np.sum(final[k] * ws[k]) for k in ws))

    layer.forward(x, state, noise=noise, lengths=sequence_lengths)
    layer.zero_grad()
    dx = layer.backward(wy, ws)
    analytic = {"x": dx, **{f"state {k}": a for k, a in layer.initial_state_grads().items()}, **layer.grads()}
    tensors = {"x": x, **{f"state {k}": a for k, a in state.items()}, **layer.parameters()}

    def numeric(flat: np.ndarray, picks: np.ndarray, h: float) -> np.ndarray:
        out = []
        for i in picks:
            old = flat[i]
            flat[i] = old + h
            plus = loss()
            flat[i] = old - h
            minus = loss()
            flat[i] = old
            out.append((plus - minus) / (2 * h))
        return np.array(out)

    sampled = []  # (tensor, its flat view, the sampled coordinates, analytic, numeric)
    for name, value in tensors.items():
        flat = value.reshape(-1)
        picks = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
        sampled.append((name, flat, picks, analytic[name].reshape(-1)[picks], numeric(flat, picks, eps)))
    # a central difference is accurate to a fraction of the function's scale, not of each tensor's: at H = 1 an
    # RMS norm's weights get gradients of 3e-6 (its epsilon's) beside 0.35 elsewhere, and the difference missed
    # them by 1.5e-10 (5e-5 relative: a false failure); gradients below 1e-4 of the largest tensor's are
    # compared by their absolute error on that scale
    floor = max(1e-4 * max(max(np.linalg.norm(g), np.linalg.norm(w)) for *_, g, w in sampled), 1e-12)

    def error(got: np.ndarray, want: np.ndarray) -> float:
        return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), np.linalg.norm(got), floor))

    rows = []
    for name, flat, picks, got, want in sampled:
        err = error(got, want)
        for h in (10 * eps, 100 * eps):  # where rounding hid a small gradient, a larger step: a tanh saturated at
            if err <= 1e-7:  # the end of a chain of 300 additions has gradients of 3e-6 beside a loss of 2, missed
                break  # by 4e-5 at eps = 1e-6, by 2e-7 at 1e-4 (a wrong gradient agrees at no step)
            err = min(err, error(got, numeric(flat, picks, h)))
        rows.append(GradRow(name, len(got), float(np.max(np.abs(got))), err))
    return rows

"""The numpy reference: it interprets the Cell IR and its StepGrad directly. It is the semantics.

Arrays are [T, B, features] (time-major) and states [B, size] per layer. Parameters are numpy arrays:
a matrix with shape (rows, cols) acts as v @ W.T on a batch of row vectors v [B, cols]. Works in the
dtype of the parameters it is given (float64 for checks, float32 to match the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grad import StepGrad
from .ir import OUTPUT_GRAD, ROW, Cell
from .ops import OPS


def matvec(v, W):
    """v [..., cols] times W^T: W [rows, cols] dense, or block-diagonal stored as its blocks stacked by rows
    ([rows, cols / heads], see ir.Param): block k acts on the k-th cols / heads features of v."""
    heads = v.shape[-1] // W.shape[1]
    if heads == 1:
        return v @ W.T
    lead = v.shape[:-1]
    return np.einsum("...hc,hrc->...hr", v.reshape(*lead, heads, -1),
                     W.reshape(heads, -1, W.shape[1])).reshape(*lead, W.shape[0])


def matvec_t(g, W, cols: int):
    """g [..., rows] times W (the gradient a matrix passes back to its operand, of size cols)."""
    heads = cols // W.shape[1]
    if heads == 1:
        return g @ W
    lead = g.shape[:-1]
    return np.einsum("...hr,hrc->...hc", g.reshape(*lead, heads, -1),
                     W.reshape(heads, -1, W.shape[1])).reshape(*lead, cols)


def outer(G, V, W):
    """The weight gradient sum_n G[n]^T V[n] over the rows n of G [N, rows] and V [N, cols], in W's
    storage: [rows, cols], or the diagonal blocks only of a block-diagonal W."""
    heads = V.shape[-1] // W.shape[1]
    if heads == 1:
        return G.T @ V
    return np.einsum("nhr,nhc->hrc", G.reshape(len(G), heads, -1), V.reshape(len(V), heads, -1)).reshape(W.shape)


def eval_node(n, args: list, params: dict, batch: int, dtype, sizes: dict[str, int]):
    """The value of a non-leaf node (or a param/const leaf) from its arguments' values: [batch, size]
    ([batch, 1] for a per-row scalar)."""
    sizes = sizes if ROW in sizes else dict(sizes, **{ROW: 1})
    if n.op == "const":
        return dtype.type(n.attr)
    if n.op == "param":
        return np.broadcast_to(params[n.attr], (batch, sizes[n.size]))
    if n.op == "matvec":
        return matvec(args[0], params[n.attr])
    if n.op == "matvec_t":  # sum_k g_k @ W_k
        return sum(matvec_t(g, params[m], sizes[n.size]) for g, m in zip(args, n.attr))
    if n.op == "expand":  # a per-row scalar over a vector (divided by a width for a mean's gradient)
        divisor = sum(sizes[s] for s in n.attr) or 1
        return np.broadcast_to(args[0] / dtype.type(divisor), (batch, sizes[n.size]))
    v = OPS[n.op].numpy(*args)
    if n.size is not None and v.shape != (batch, sizes[n.size]):
        v = np.broadcast_to(v, (batch, sizes[n.size]))
    return v


def _evaluate(nodes, leaf, params, batch: int, dtype, sizes: dict[str, int]):
    """Values of all nodes, each [batch, size] (constants stay scalars). `leaf(node)` gives leaf values."""
    values = []
    for n in nodes:
        if n.op in ("input", "state", "fwd", "grad_in", "stepin"):
            values.append(leaf(n))
        else:
            values.append(eval_node(n, [values[a] for a in n.args], params, batch, dtype, sizes))
    return values


@dataclass
class Tape:
    """What one layer's forward pass keeps for its backward pass."""

    values: list  # per step t: the list of forward node values
    batch: int
    reverse: bool = False  # the forward ran t = T-1 .. 0 (the backward then runs t = 0 .. T-1)


def step_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def layer_forward(cell: Cell, params: dict, sizes: dict[str, int], xs: np.ndarray, state: dict,
                  keep: bool = True, steps: dict | None = None, reverse: bool = False):
    """Run one layer over xs [T, B, input] (in reverse time with reverse: t = T-1 first). steps: the
    per-step inputs of the cell's stepin leaves by name, [T, B, n] each. Returns (ys [T, B, out], final
    state dict, Tape or None)."""
    T, B = xs.shape[:2]
    dtype = xs.dtype
    ys = np.empty((T, B, sizes[cell.output_size]), dtype=dtype)
    state = dict(state)
    tape = Tape([None] * T, B, reverse) if keep else None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in step_order(T, reverse):
            def leaf(n, t=t):
                if n.op == "stepin":
                    return steps[n.attr][t]
                return xs[t] if n.op == "input" else state[n.attr]
            values = _evaluate(cell.nodes, leaf, params, B, dtype, sizes)
            ys[t] = values[cell.output]
            state = {s.name: np.ascontiguousarray(values[u], dtype=dtype)
                     for s, u in zip(cell.states, cell.updates)}
            if tape is not None:
                tape.values[t] = values
    return ys, state, tape


def layer_backward(cell: Cell, grad: StepGrad, params: dict, sizes: dict[str, int], tape: Tape,
                   dys: np.ndarray, dstate: dict, param_grads: dict):
    """Backward through time for one layer.

    dys [T, B, out] and dstate (gradients of the final states) come in; returns (dxs [T, B, input],
    gradients of the initial states) and adds every parameter's gradient into param_grads.
    """
    T, B = dys.shape[:2]
    dtype = dys.dtype
    dxs = np.zeros((T, B, sizes["input"]), dtype=dtype)
    dstate = {s.name: dstate[s.name] for s in cell.states}
    vectors, matrices = {}, {}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in step_order(T, not tape.reverse):
            fwd = tape.values[t]

            def leaf(n, t=t, fwd=fwd, dstate=dstate):
                if n.op == "fwd":
                    return fwd[n.attr]
                return dys[t] if n.attr == OUTPUT_GRAD else dstate[n.attr]
            g = _evaluate(grad.nodes, leaf, params, B, dtype, sizes)
            for d in (grad.d_input, grad.d_input_t):
                if d is not None:
                    dxs[t] += g[d]
            dstate = {s.name: (np.array(g[d], dtype=dtype) if d is not None
                               else np.zeros((B, sizes[s.size]), dtype=dtype))
                      for s, d in zip(cell.states, grad.d_states)}
            for name, d in grad.d_vectors:
                vectors.setdefault(name, []).append(g[d].sum(axis=0))
            for name, gi, v in grad.d_matrices:
                matrices.setdefault(name, []).append((g[gi], fwd[v]))
    # weight gradients of all steps at once, as the GPU schedule does: dW = G^T V over [T*B] rows
    for name, parts in vectors.items():
        param_grads[name] += np.sum(parts, axis=0)
    for name, pairs in matrices.items():
        G = np.concatenate([np.broadcast_to(gv, (B, gv.shape[-1])) for gv, _ in pairs])
        V = np.concatenate([np.broadcast_to(vv, (B, vv.shape[-1])) for _, vv in pairs])
        param_grads[name] += outer(G, V, param_grads[name])
    return dxs, dstate

"""The reference path of a plan: numpy runs a Plan op by op, the way the GPU runtime will.

Hoisted GEMMs run once over [T*B] rows, each step runs its GEMMs (over the stacked matrices of a fused
group) and kernels in order, the forward pass saves exactly plan.saved for the backward pass, and weight
gradients are formed per step or once after the loop as the plan says. Comparing this with reference.py
(which interprets the graphs directly) checks that every schedule computes the same function.
"""

from __future__ import annotations

import numpy as np

from .plan import Gemm, Plan
from .reference import eval_node


def _stack(params: dict, matrices) -> np.ndarray:
    return np.concatenate([params[m] for m in matrices], axis=0)  # [sum rows, cols]


def _split(out: np.ndarray, nodes, sizes_of) -> list[np.ndarray]:
    edges = np.cumsum([sizes_of(o) for o in nodes])[:-1]
    return np.split(out, edges, axis=-1)


def plan_forward(plan: Plan, params: dict, sizes: dict[str, int], xs: np.ndarray, state: dict):
    """One layer forward. Returns (ys [T, B, out], final state, saved {forward node: [T, B, n]})."""
    cell, phase = plan.cell, plan.forward
    nodes = phase.nodes
    T, B = xs.shape[:2]
    dtype = xs.dtype
    size = lambda i: sizes[nodes[i].size]  # noqa: E731
    hoisted = {}
    for g in phase.before:  # operand: the input, all steps at once
        out = xs.reshape(T * B, -1) @ _stack(params, g.matrices).T
        for o, part in zip(g.outputs, _split(out, g.outputs, size)):
            hoisted[o] = part.reshape(T, B, -1)
    saved = {i: np.empty((T, B, size(i)), dtype) for i in plan.saved}
    ys = np.empty((T, B, sizes[cell.output_size]), dtype)
    state = dict(state)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(T):
            values = {o: h[t] for o, h in hoisted.items()}
            for i, n in enumerate(nodes):
                if n.op == "input":
                    values[i] = xs[t]
                elif n.op == "state":
                    values[i] = state[n.attr]
                elif n.op in ("param", "const"):
                    values[i] = eval_node(n, [], params, B, dtype, sizes)
            for op in phase.step:
                if isinstance(op, Gemm):
                    out = values[op.inputs[0]] @ _stack(params, op.matrices).T
                    values.update(zip(op.outputs, _split(out, op.outputs, size)))
                else:
                    for i in op.nodes:
                        values[i] = eval_node(nodes[i], [values[a] for a in nodes[i].args], params, B, dtype,
                                              sizes)
            for i in saved:
                saved[i][t] = values[i]
            ys[t] = values[cell.output]
            state = {s.name: np.array(np.broadcast_to(values[u], (B, sizes[s.size])), dtype)
                     for s, u in zip(cell.states, cell.updates)}
    return ys, state, saved


def plan_backward(plan: Plan, params: dict, sizes: dict[str, int], saved: dict, dys: np.ndarray, dstate: dict,
                  param_grads: dict):
    """One layer backward through time. Returns (dxs [T, B, input], d initial state); adds parameter
    gradients into param_grads."""
    cell, grad, phase = plan.cell, plan.grad, plan.backward
    nodes = phase.nodes
    T, B = dys.shape[:2]
    dtype = dys.dtype
    size = lambda i: sizes[nodes[i].size]  # noqa: E731
    # backward values needed after the loop: inputs of hoisted GEMMs and of batched gradients
    kept = {i for g in phase.after for i in g.inputs}
    kept |= {i for w in plan.weight_grads if w.batched for i in w.g}
    kept |= {v.node for v in plan.vector_grads if v.batched}
    keep = {i: np.empty((T, B, size(i)), dtype) for i in kept}
    dxs = np.zeros((T, B, sizes["input"]), dtype)
    dstate = dict(dstate)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in reversed(range(T)):
            values = {}
            for i, n in enumerate(nodes):
                if n.op == "fwd":
                    values[i] = saved[n.attr][t]
                elif n.op == "grad_in":
                    values[i] = dys[t] if n.attr == "output" else dstate[n.attr]
                elif n.op in ("param", "const"):
                    values[i] = eval_node(n, [], params, B, dtype, sizes)
            for op in phase.step:
                if isinstance(op, Gemm):
                    g = np.concatenate([values[i] for i in op.inputs], axis=1)
                    out = g @ _stack(params, op.matrices)
                    values[op.outputs[0]] = values[op.outputs[0]] + out if op.accumulate else out
                else:
                    for i in op.nodes:
                        values[i] = eval_node(nodes[i], [values[a] for a in nodes[i].args], params, B, dtype,
                                              sizes)
            for d in (grad.d_input, grad.d_input_t):
                if d is not None and not (d == grad.d_input_t and phase.after):  # hoisted: after the loop
                    dxs[t] += values[d]
            for i in keep:
                keep[i][t] = values[i]
            for w in plan.weight_grads:
                if not w.batched:
                    v = saved[w.v][t]
                    for m, gi in zip(w.matrices, w.g):
                        param_grads[m] += values[gi].T @ v
            for vg in plan.vector_grads:
                if not vg.batched:
                    param_grads[vg.name] += values[vg.node].sum(axis=0)
            dstate = {s.name: (np.array(np.broadcast_to(values[d], (B, sizes[s.size])), dtype) if d is not None
                               else np.zeros((B, sizes[s.size]), dtype))
                      for s, d in zip(cell.states, grad.d_states)}
    for g in phase.after:  # the input's gradient through the matrices, all steps at once
        G = np.concatenate([keep[i].reshape(T * B, -1) for i in g.inputs], axis=1)
        dxs += (G @ _stack(params, g.matrices)).reshape(T, B, -1)
    for w in plan.weight_grads:
        if w.batched:
            G = np.concatenate([keep[i].reshape(T * B, -1) for i in w.g], axis=1)
            dW = G.T @ saved[w.v].reshape(T * B, -1)  # [sum rows, cols]
            for m, part in zip(w.matrices, np.split(dW, np.cumsum([size(i) for i in w.g])[:-1], axis=0)):
                param_grads[m] += part
    for vg in plan.vector_grads:
        if vg.batched:
            param_grads[vg.name] += keep[vg.node].reshape(T * B, -1).sum(axis=0)
    return dxs, dstate

"""The reference path of a plan: numpy runs a Plan op by op, the way the GPU runtime does.

GEMMs before the loop run once over [T*B] rows, each step runs its GEMMs (over the stacked matrices of a
fused group), kernels and parameter gradients in order, the forward pass saves exactly plan.saved for the
backward pass, and ops after the loop run over all steps' rows. Copies only move values between slots,
so they have nothing to do here. Comparing this with reference.py (which interprets the graphs directly)
checks that every schedule computes the same function.
"""

from __future__ import annotations

import numpy as np

from .ir import OUTPUT_GRAD
from .plan import Fold, Gemm, Kernel, Plan, VectorGrad, WeightGrad
from .reference import eval_node, matvec, matvec_t, outer


def _stack(params: dict, matrices) -> np.ndarray:
    return np.concatenate([params[m] for m in matrices], axis=0)  # [sum rows, cols]


def _blocks(plan: Plan, op: Gemm) -> bool:
    """Block-diagonal matrices (heads) in a GEMM of several: each is multiplied on its own (stacked, their
    blocks would be taken as one matrix's)."""
    return len(op.matrices) > 1 and plan.cell.param(op.matrices[0]).heads


def _split(out: np.ndarray, nodes, sizes_of) -> list[np.ndarray]:
    edges = np.cumsum([sizes_of(o) for o in nodes])[:-1]
    return np.split(out, edges, axis=-1)


def plan_forward(plan: Plan, params: dict, sizes: dict[str, int], xs: np.ndarray, state: dict,
                 steps: dict | None = None, persistent: bool = False):
    """One layer forward; steps: the per-step inputs by name ([T, B, n] each); persistent: each step runs
    the stages of the persistent kernel (plan.Persistent) instead of the loop's body. Returns (ys [T, B,
    out], final state, saved {forward node: [T, B, n]})."""
    cell, phase = plan.cell, plan.forward
    nodes = phase.nodes
    sizes = dict(sizes, one=1)  # per-row scalars are one wide
    T, B = xs.shape[:2]
    dtype = xs.dtype
    size = lambda i: sizes[nodes[i].size]  # noqa: E731
    hoisted, ahead, folds = {}, {}, {}
    for g in phase.before:  # operand: the input, all steps at once
        if isinstance(g, Fold):  # a folded projection's W P (passes/projection.py)
            folds[g.through] = _stack(params, [m for m in _matrices(plan, g.stack)]) @ params[g.through]
        elif isinstance(g, Gemm) and g.first:  # the first step's products, from the initial state
            out = matvec(state[nodes[g.inputs[0]].attr], _stack(params, g.matrices))
            ahead = dict(zip(g.outputs, _split(out, g.outputs, size)))
        elif isinstance(g, Gemm):
            out = matvec(xs.reshape(T * B, -1), _stack(params, g.matrices))
            for o, part in zip(g.outputs, _split(out, g.outputs, size)):
                hoisted[o] = part.reshape(T, B, -1)
    later = {o for g in phase.after if isinstance(g, Gemm) for o in g.outputs}  # computed over all steps after
    kept = {g.inputs[0]: np.empty((T, B, size(g.inputs[0])), dtype) for g in phase.after if isinstance(g, Gemm)}
    saved = {i: np.empty((T, B, size(i)), dtype) for i in plan.saved}
    ys = np.empty((T, B, sizes[cell.output_size]), dtype)
    state = dict(state)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(T):
            values = {o: h[t] for o, h in hoisted.items()} | ahead
            for i, n in enumerate(nodes):
                if n.op == "input":
                    values[i] = xs[t]
                elif n.op == "state":
                    values[i] = state[n.attr]
                elif n.op == "stepin":
                    values[i] = steps[n.attr][t]
                elif n.op in ("param", "const"):
                    values[i] = eval_node(n, [], params, B, dtype, sizes)
            body = phase.loop.persistent.stages if persistent else phase.loop.body
            for op in body:
                if isinstance(op, Gemm) and op.ahead:  # the next step's products, through the folded W P
                    out = matvec(values[op.inputs[0]], folds[op.ahead])
                    ahead = dict(zip(op.outputs, _split(out, op.outputs, size)))
                elif isinstance(op, Gemm) and _blocks(plan, op):
                    values.update((o, matvec(values[op.inputs[0]], params[m])) for o, m in zip(op.outputs, op.matrices))
                elif isinstance(op, Gemm):
                    out = matvec(values[op.inputs[0]], _stack(params, op.matrices))
                    values.update(zip(op.outputs, _split(out, op.outputs, size)))
                elif isinstance(op, Kernel):
                    for i in op.nodes:
                        values[i] = eval_node(nodes[i], [values[a] for a in nodes[i].args], params, B, dtype,
                                              sizes)
            for i in kept:
                kept[i][t] = values[i]
            for i in saved:
                if i not in later:
                    saved[i][t] = values[i]
            if cell.output not in later:
                ys[t] = values[cell.output]
            state = {s.name: np.array(np.broadcast_to(values[u], (B, sizes[s.size])), dtype) if u not in later
                     else state[s.name] for s, u in zip(cell.states, cell.updates)}
    for g in phase.after:  # the folded projection over all steps' rows: its states, read by the caller and saved
        out = matvec(kept[g.inputs[0]].reshape(T * B, -1), _stack(params, g.matrices)).reshape(T, B, -1)
        u = g.outputs[0]
        for s, i in ((s, i) for s, i in zip(cell.states, cell.updates) if i == u):
            h = next(k for k, n in enumerate(nodes) if n.op == "state" and n.attr == s.name)
            if h in saved:  # the state read at step t: the initial one, then step t - 1's update
                saved[h][1:] = out[:-1]
            if cell.output == h:  # the output is the state read at step t (the loop wrote the initial one)
                ys[1:] = out[:-1]
            state[s.name] = out[-1]
        if u in saved:
            saved[u][...] = out
        if cell.output == u:
            ys[...] = out
    return ys, state, saved


def _matrices(plan: Plan, stack: str) -> tuple[str, ...]:
    return plan.storage.stack(stack).matrices


def plan_backward(plan: Plan, params: dict, sizes: dict[str, int], saved: dict, dys: np.ndarray, dstate: dict,
                  param_grads: dict, persistent: bool = False):
    """One layer backward through time. Returns (dxs [T, B, input], d initial state); adds parameter
    gradients into param_grads. persistent: each step runs the stages of the backward's persistent kernel
    (plan.Persistent) instead of the loop's body."""
    cell, grad, phase = plan.cell, plan.grad, plan.backward
    nodes = phase.nodes
    sizes = dict(sizes, one=1)
    T, B = dys.shape[:2]
    dtype = dys.dtype
    size = lambda i: sizes[nodes[i].size]  # noqa: E731
    # backward values needed after the loop: what the ops there read
    kept = set()
    for op in phase.after:
        kept |= set(op.inputs if isinstance(op, Gemm) else op.g if isinstance(op, WeightGrad)
                    else (op.node,) if isinstance(op, VectorGrad) else ())
    keep = {i: np.empty((T, B, size(i)), dtype) for i in kept}
    dxs = np.zeros((T, B, sizes["input"]), dtype)
    dstate = dict(dstate)
    hoisted_input = any(isinstance(op, Gemm) for op in phase.after)

    def weight_grad(w: WeightGrad, g_of, v):
        for m, gi in zip(w.matrices, w.g):
            param_grads[m] += outer(g_of(gi), v, param_grads[m])

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in reversed(range(T)):
            values = {}
            for i, n in enumerate(nodes):
                if n.op == "fwd":
                    values[i] = saved[n.attr][t]
                elif n.op == "grad_in":
                    values[i] = dys[t] if n.attr == OUTPUT_GRAD else dstate[n.attr]
                elif n.op in ("param", "const"):
                    values[i] = eval_node(n, [], params, B, dtype, sizes)
            for op in phase.loop.persistent.stages if persistent else phase.loop.body:
                if isinstance(op, Gemm):
                    if _blocks(plan, op):
                        out = sum(matvec_t(values[i], params[m], size(op.outputs[0]))
                                  for i, m in zip(op.inputs, op.matrices))
                    else:
                        g = np.concatenate([values[i] for i in op.inputs], axis=1)
                        out = matvec_t(g, _stack(params, op.matrices), size(op.outputs[0]))
                    if op.init is not None:  # sum folding: the products added to a value already there
                        out = values[op.init] + out
                    values[op.outputs[0]] = values[op.outputs[0]] + out if op.accumulate else out
                elif isinstance(op, Kernel):
                    for i in op.nodes:
                        values[i] = eval_node(nodes[i], [values[a] for a in nodes[i].args], params, B, dtype,
                                              sizes)
                elif isinstance(op, WeightGrad):
                    weight_grad(op, lambda i: values[i], saved[op.v][t])
                elif isinstance(op, VectorGrad):
                    param_grads[op.name] += values[op.node].sum(axis=0)
            for d in (grad.d_input, grad.d_input_t):
                if d is not None and not (d == grad.d_input_t and hoisted_input):  # hoisted: after the loop
                    dxs[t] += values[d]
            for i in keep:
                keep[i][t] = values[i]
            dstate = {s.name: (np.array(np.broadcast_to(values[d], (B, sizes[s.size])), dtype) if d is not None
                               else np.zeros((B, sizes[s.size]), dtype))
                      for s, d in zip(cell.states, grad.d_states)}
    for op in phase.after:  # over all steps' rows
        if isinstance(op, Gemm):  # the input's gradient through the matrices
            G = np.concatenate([keep[i].reshape(T * B, -1) for i in op.inputs], axis=1)
            dxs += matvec_t(G, _stack(params, op.matrices), sizes["input"]).reshape(T, B, -1)
        elif isinstance(op, WeightGrad):
            weight_grad(op, lambda i: keep[i].reshape(T * B, -1), saved[op.v].reshape(T * B, -1))
        elif isinstance(op, VectorGrad):
            param_grads[op.name] += keep[op.node].reshape(T * B, -1).sum(axis=0)
    return dxs, dstate

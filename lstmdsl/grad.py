"""Stage 2b: symbolic reverse-mode differentiation of one step.

`differentiate(cell)` returns a StepGrad: a second node graph (same Node type as the Cell IR) that maps
the incoming gradients of one step (dL/d output, dL/d each updated state) and the step's forward values
to the gradients of the step's inputs (the states at the start of the step, the input x_t) and the
per-step gradient contributions of every parameter. Each operator's derivative comes from ops.OPS.

Matrix gradients are not formed inside the graph: each use of a matrix is returned as (matrix, g, v),
meaning dL/dW += g^T v summed over the batch (and, by the caller, over time: one GEMM after the loop).
The gradient that matrices pass back to one operand is a single node, matvec_t with the matrices as
attr and their incoming gradients as args: sum_k g_k @ W_k. The scheduler runs it as one GEMM over the
stacked matrices (gate fusion) or as one GEMM per matrix. For the input, that node is kept apart from
the rest of its gradient (d_input_t), so the scheduler can run it for all steps at once after the loop.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .ir import OUTPUT_GRAD, ROW, Cell, GraphBuilder, Node, prune
from .ops import OPS


@dataclass(frozen=True, slots=True)
class StepGrad:
    nodes: tuple[Node, ...]
    d_states: tuple[int | None, ...]  # dL/d(state at step start), aligned with cell.states; None = zero
    d_input: int | None  # the pointwise part of dL/d x_t; None = zero
    d_input_t: int | None  # the matrices' part of dL/d x_t (a matvec_t node); None = zero
    d_vectors: tuple[tuple[str, int], ...]  # vector parameter -> node whose batch sum is its gradient
    d_matrices: tuple[tuple[str, int, int], ...]  # (matrix, node id of g here, forward node id of v)


def differentiate(cell: Cell) -> StepGrad:
    fwd = cell.nodes
    b = GraphBuilder()

    # values the backward has for every step whatever it reads: the step's inputs, the states at its start
    # and end (kept as histories) and the output
    kept = {i for i, n in enumerate(fwd) if n.op in ("state", "input", "const", "param", "stepin")}
    kept |= set(cell.updates) | {cell.output}

    def recomputed(i: int) -> bool:
        """An elementwise function of kept values only (an LSTM's tanh(c)): the backward computes it again
        instead of keeping it for every step, which saves a [T, B, size] buffer per layer."""
        n, op = fwd[i], OPS.get(fwd[i].op)
        return (i not in kept and op is not None and not op.reduction and n.size not in (ROW, None)
                and all(a in kept and fwd[a].size != ROW for a in n.args))

    def value(i: int) -> int:  # a forward value as the backward step reads it
        n = fwd[i]
        if n.op in ("const", "param"):  # constants and parameters need not be saved per step
            return b.const(n.attr) if n.op == "const" else b.leaf("param", n.attr, n.size)
        if recomputed(i):
            return b.add(Node(n.op, tuple(value(a) for a in n.args), n.attr, n.size))
        return b.leaf("fwd", i, n.size)

    def total(parts: list[int]) -> int:
        g = parts[0]
        for p in parts[1:]:
            g = b.op("add", g, p)
        return g

    incoming: dict[int, list[int]] = defaultdict(list)
    incoming[cell.output].append(b.leaf("grad_in", OUTPUT_GRAD, fwd[cell.output].size))
    for s, u in zip(cell.states, cell.updates):
        incoming[u].append(b.leaf("grad_in", s.name, s.size))

    transposed: dict[int, list[tuple[str, int]]] = defaultdict(list)  # operand -> (matrix, g) of its uses
    d_state: dict[str, int] = {}
    d_input = d_input_t = None
    d_vectors: dict[str, int] = {}
    d_matrices: list[tuple[str, int, int]] = []
    for i in reversed(range(len(fwd))):  # every consumer of node i has a larger id: incoming[i] is complete
        n = fwd[i]
        if i in transposed:  # every use of node i as a matrix operand has been seen: sum_k g_k @ W_k
            uses = transposed[i]
            t_node = b.add(Node("matvec_t", tuple(g for _, g in uses), tuple(m for m, _ in uses), n.size))
            if n.op == "input":
                d_input_t = t_node
            else:
                incoming[i].append(t_node)
        if i not in incoming:
            continue
        g = total(incoming[i])
        if n.op == "input":
            d_input = g
        elif n.op == "state":
            d_state[n.attr] = g
        elif n.op == "param":
            d_vectors[n.attr] = g
        elif n.op == "stepin":
            pass  # a per-step input given by the caller (a mask): no gradient
        elif n.op == "matvec":
            (v,) = n.args
            d_matrices.append((n.attr, g, v))
            if fwd[v].op != "const":
                transposed[v].append((n.attr, g))
        elif n.op != "const":
            contributions = OPS[n.op].derivative(b, tuple(value(a) for a in n.args), value(i), g)
            for a, c in zip(n.args, contributions):
                if c is not None and fwd[a].op != "const":
                    if fwd[a].size == ROW and b.nodes[c].size not in (ROW, None):
                        c = b.op("sum", c)  # a per-row scalar broadcast over a vector: its gradient sums back
                    incoming[a].append(c)

    d_states = [d_state.get(s.name) for s in cell.states]
    roots = [d for d in d_states if d is not None] + list(d_vectors.values()) + [g for _, g, _ in d_matrices]
    nodes, remap = prune(tuple(b.nodes), roots + [d for d in (d_input, d_input_t) if d is not None])
    return StepGrad(
        nodes=nodes,
        d_states=tuple(remap[d] if d is not None else None for d in d_states),
        d_input=remap[d_input] if d_input is not None else None,
        d_input_t=remap[d_input_t] if d_input_t is not None else None,
        d_vectors=tuple(sorted((name, remap[d]) for name, d in d_vectors.items())),
        d_matrices=tuple((name, remap[g], v) for name, g, v in d_matrices),
    )


def format_grad(cell: Cell, grad: StepGrad) -> str:
    """A readable listing of the backward step (for `lstmdsl compile --emit grad`)."""
    lines = [f"backward step of cell {cell.name}"]
    for i, n in enumerate(grad.nodes):
        attr = ("" if n.attr is None else f"%{n.attr}" if n.op == "fwd" else repr(n.attr) if n.op == "const"
                else "[" + ", ".join(n.attr) + "]" if n.op == "matvec_t" else str(n.attr))
        args = ", ".join(f"%{a}" for a in n.args)
        lines.append(f"  %{i} = {n.op}({', '.join(x for x in (attr, args) if x)}) : {n.size or 'scalar'}")
    for s, d in zip(cell.states, grad.d_states):
        lines.append(f"  d {s.name} (start of step) = {'%' + str(d) if d is not None else 'zero'}")
    parts = [f"%{d}" for d in (grad.d_input, grad.d_input_t) if d is not None]
    lines.append(f"  d {cell.input} = {' + '.join(parts) or 'zero'}")
    for name, d in grad.d_vectors:
        lines.append(f"  d {name} += sum over batch of %{d}")
    for name, g, v in grad.d_matrices:
        lines.append(f"  d {name} += (%{g})^T (forward %{v})")
    return "\n".join(lines)

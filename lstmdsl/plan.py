"""Stage 3: the Plan, what runs for one layer: matrix products (GEMMs) and pointwise kernels.

A plan has two phases, forward and backward, each over one node graph (the Cell IR's nodes, and the
StepGrad's nodes). A phase is the work before the time loop, the work of one step in order, and the work
after the loop. Within a step the order respects data dependences, so a matrix product whose operand is
computed inside the step (GRU's r * h) sits between two pointwise kernels: that is stage splitting.

`base_plan` builds the plan with nothing fused or hoisted: one GEMM per matrix use, one kernel per
pointwise node, weight gradients accumulated step by step. The passes in passes/ each rewrite a Plan into
a faster equivalent one; passes/__init__.py lists them in one PIPELINE.

Shapes (per layer, B = batch, T = steps): a value of size n is [B, n] in a step, [T, B, n] when saved.
A forward GEMM computes, for its operand v [B, cols] and blocks W_k [rows_k, cols], out_k = v @ W_k^T;
a backward GEMM computes out = sum_k g_k @ W_k with g_k [B, rows_k].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .grad import StepGrad
from .ir import LEAF_OPS, Cell, Node
from .schedule import Schedule

@dataclass(frozen=True, slots=True)
class Gemm:
    kind: str  # "forward": outputs[k] = inputs[0] @ W_k^T;  "backward": outputs[0] = sum_k inputs[k] @ W_k
    matrices: tuple[str, ...]  # the row blocks, stacked in this order when there are several
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    accumulate: bool = False  # backward: add into outputs[0] (another GEMM of the same sum wrote it first)


@dataclass(frozen=True, slots=True)
class Kernel:
    nodes: tuple[int, ...]  # the pointwise nodes it computes, in order


Op = Union[Gemm, Kernel]


@dataclass(frozen=True, slots=True)
class Phase:
    nodes: tuple[Node, ...]
    before: tuple[Gemm, ...] = ()  # once, for all steps, before the loop
    step: tuple[Op, ...] = ()  # every step, in order
    after: tuple[Gemm, ...] = ()  # once, for all steps, after the loop


@dataclass(frozen=True, slots=True)
class WeightGrad:
    """dW_k += g_k^T v for each block: one GEMM per step, or one for all steps (batched) after the loop."""

    matrices: tuple[str, ...]
    g: tuple[int, ...]  # backward node of each block's incoming gradient, [B, rows_k]
    v: int  # forward node of the operand, [B, cols]
    batched: bool = False


@dataclass(frozen=True, slots=True)
class VectorGrad:
    """d vector += the sum over the batch of a backward node: per step, or once over T * B (batched)."""

    name: str
    node: int
    batched: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    cell: Cell
    grad: StepGrad
    schedule: Schedule
    forward: Phase
    backward: Phase
    weight_grads: tuple[WeightGrad, ...]
    vector_grads: tuple[VectorGrad, ...]

    @property
    def saved(self) -> tuple[int, ...]:
        """Forward values the backward pass reads, kept for every step ([T, B, size] each)."""
        read = {n.attr for n in self.backward.nodes if n.op == "fwd"} | {w.v for w in self.weight_grads}
        return tuple(sorted(read))


def base_plan(cell: Cell, grad: StepGrad, schedule: Schedule) -> Plan:
    """The plan with no optimisation: one op per node, in node order (which is topological)."""
    forward = []
    for i, n in enumerate(cell.nodes):
        if n.op == "matvec":
            forward.append(Gemm("forward", (n.attr,), n.args, (i,)))
        elif n.op not in LEAF_OPS:
            forward.append(Kernel((i,)))
    backward = []
    for i, n in enumerate(grad.nodes):
        if n.op == "matvec_t":
            backward += [Gemm("backward", (m,), (g,), (i,), accumulate=k > 0)
                         for k, (m, g) in enumerate(zip(n.attr, n.args))]
        elif n.op not in LEAF_OPS:
            backward.append(Kernel((i,)))
    return Plan(
        cell=cell, grad=grad, schedule=schedule,
        forward=Phase(cell.nodes, step=tuple(forward)),
        backward=Phase(grad.nodes, step=tuple(backward)),
        weight_grads=tuple(WeightGrad((m,), (g,), v) for m, g, v in grad.d_matrices),
        vector_grads=tuple(VectorGrad(name, node) for name, node in grad.d_vectors),
    )


def format_plan(plan: Plan, sizes: dict[str, int] | None = None) -> str:
    """The plan as text (for `lstmdsl compile --emit plan`): each GEMM with its shapes (symbolic, or
    numbers when sizes are given), each kernel, and the launches per step."""
    cell = plan.cell

    def size(phase: Phase, i: int) -> str:
        s = phase.nodes[i].size
        return str(sizes[s]) if sizes else s

    def gemm_text(phase: Phase, g: Gemm, rows: str) -> str:
        if g.kind == "forward":
            cols = size(phase, g.inputs[0])
            out_rows = " + ".join(size(phase, o) for o in g.outputs)
            return (f"GEMM  [{rows}, {cols}] x [{cols}, {out_rows}]  {' | '.join(g.matrices)}^T"
                    f" -> %{', %'.join(map(str, g.outputs))}")
        inner = " + ".join(size(phase, i) for i in g.inputs)
        cols = size(phase, g.outputs[0])
        return (f"GEMM  [{rows}, {inner}] x [{inner}, {cols}]  {' ; '.join(g.matrices)}"
                f" -> %{g.outputs[0]}{' (accumulate)' if g.accumulate else ''}")

    def kernel_text(phase: Phase, k: Kernel) -> str:
        ops = [phase.nodes[i].op for i in k.nodes]
        return f"kernel  {len(k.nodes)} ops ({', '.join(sorted(set(ops)))})"

    lines = [f"plan for cell {cell.name}: {plan.schedule.describe()}"]
    for title, phase in (("forward", plan.forward), ("backward", plan.backward)):
        launches = len(phase.step)
        lines.append(f"{title}: {launches} launches per step")
        for g in phase.before:
            lines.append("  before the loop:  " + gemm_text(phase, g, "T*B"))
        for op in phase.step:
            lines.append("  each step:        " + (gemm_text(phase, op, "B") if isinstance(op, Gemm)
                                                   else kernel_text(phase, op)))
        for g in phase.after:
            lines.append("  after the loop:   " + gemm_text(phase, g, "T*B"))
    for w in plan.weight_grads:
        where = "after the loop, over T*B rows" if w.batched else "each step, over B rows"
        lines.append(f"  weight gradient:  d[{' ; '.join(w.matrices)}] += G^T V  ({where})")
    batched = sum(v.batched for v in plan.vector_grads)
    lines.append(f"  vector gradients: {len(plan.vector_grads)} sums over the batch "
                 f"({batched} once over T*B after the loop)")
    lines.append(f"  saved per step for the backward pass: {len(plan.saved)} values")
    return "\n".join(lines)

"""Recurrent fusion (forward): the per-step GEMM on a state moves into the kernel that follows it.

The kernel then computes each matrix-vector product itself, one warp per output element (a dot product
over the weight row, read coalesced, reduced with shuffles), and goes straight on to the pointwise
work: one launch per step instead of two, and no round trip of the GEMM's result through memory. It
re-reads the weights for every batch row, so it pays off at small batch; cuBLAS wins at large batch.
Only a GEMM whose operand is ready at the start of the step (a state or the input) and whose outputs
only that kernel reads can move, and not one of a block-diagonal matrix (its blocks are cuBLAS batches).
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Kernel, Plan, reduces


def _reads(op, nodes) -> set[int]:
    if isinstance(op, Gemm):
        return set(op.inputs)
    return {a for i in op.nodes for a in nodes[i].args}


def fuse_recurrent(plan: Plan) -> Plan:
    fwd = plan.forward
    nodes = fwd.nodes
    wanted = set(plan.saved) | set(plan.cell.updates) | {plan.cell.output}
    heads = {p.name for p in plan.cell.params if p.heads}
    body = list(fwd.loop.body)
    out = []
    k = 0
    while k < len(body):
        op = body[k]
        nxt = body[k + 1] if k + 1 < len(body) else None
        later = set().union(*(_reads(other, nodes) for other in body[k + 2:]))
        if (isinstance(op, Gemm) and isinstance(nxt, Kernel) and not reduces(fwd, nxt) and not heads & set(op.matrices)
                and nodes[op.inputs[0]].op in ("state", "input")
                and not set(op.outputs) & (wanted | later)):
            out.append(Kernel(op.outputs + nxt.nodes))
            k += 2
        else:
            out.append(op)
            k += 1
    return dataclasses.replace(plan, forward=fwd.with_body(out))

"""Weight stacks: which matrices are stored together (those applied to one operand), and which stacks are
stored head by head.

Block-diagonal matrices (heads) under gate fusion: their stack, and every stack that shares its gradients'
buffer, is stored head by head (WeightStack.interleave): block k of each matrix in turn, so the rows of
one head of all the gates are adjacent. The values the GEMMs write and read through those stacks (the
products, the incoming gradients) lie the same way (Slot.interleave, storage.py), and each step's product
over the heads is one strided batch of GEMMs (N = the gates times the block) where it was one per matrix
(gate_fusion.py merges them, calls.py issues the batch).
"""

from __future__ import annotations

from ..errors import BackendUnavailable
from ..ir import per_head
from ..plan import Plan, reduces


def weight_stacks(plan: Plan) -> dict[int, tuple[str, ...]]:
    """Forward operand -> the matrices applied to it, in node order."""
    stacks: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    for n in plan.cell.nodes:
        if n.op == "matvec":
            (v,) = n.args
            if seen.setdefault(n.attr, v) != v:
                raise BackendUnavailable(f"matrix '{n.attr}' is applied to two different values; the CUDA "
                                         "backend stores each matrix in one stack and does not support this yet")
            stacks.setdefault(v, [])
            if n.attr not in stacks[v]:
                stacks[v].append(n.attr)
    return {v: tuple(ms) for v, ms in stacks.items()}


def interleaved(plan: Plan) -> dict[int, str]:
    """Forward operand -> the block (rows per head) of each stack stored head by head: a stack of block-
    diagonal matrices of equal rows, and the stacks that share its gradients, when gate fusion makes one
    GEMM of each and the step kernels compute no products (recurrent fusion) and reduce no rows (their
    row launches read features contiguously); not under `persistent`, whose kernel keeps the matrices' rows in
    their own order and stages each gate's gradients as one contiguous operand (persistent.py)."""
    s = plan.schedule
    if not s.fuse_gates or s.fuse_recurrent or s.persistent == "on" or any(
            reduces(phase, op) for phase in (plan.forward, plan.backward) for _, op in phase.ops()):
        return {}
    cell = plan.cell
    g_of = {(m, v): g for m, g, v in plan.grad.d_matrices}
    stacks = weight_stacks(plan)
    rows = {v: {cell.param(m).shape[0] for m in ms} for v, ms in stacks.items()}
    gradients = {v: tuple(g_of.get((m, v)) for m in ms) for v, ms in stacks.items()}
    heads = {gradients[v] for v, ms in stacks.items() if len(ms) > 1 and cell.param(ms[0]).heads and len(rows[v]) == 1}
    # not where a product is the output or a state update: the caller's transfers and the copies between
    # slots move whole rows (a head-by-head slot would come out scrambled)
    homed = {cell.output, *cell.updates}
    heads -= {gradients[n.args[0]] for i, n in enumerate(cell.nodes)
              if n.op == "matvec" and i in homed and n.args[0] in gradients}
    return {v: per_head(next(iter(rows[v]))) for v in stacks if gradients[v] in heads and len(rows[v]) == 1}

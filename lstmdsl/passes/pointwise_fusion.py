"""Pointwise fusion: the elementwise work between two GEMMs of a step is one kernel.

Each forward GEMM first moves ahead of the kernels before it where none computes its operands (base_plan lists
a step's ops in node order, so FGR's products of the previous gates i, f and o, which need nothing from
the step, sat between the partial sums of the gates: four kernels a step where one does). In the backward
it is the other way round: a kernel moves ahead of the GEMMs before it where it reads none of their
products (FGR's gradients of the previous gates' products waited behind three sums: 6 launches a step, now
5). Then consecutive kernels of a step merge into one that computes all their nodes in order, so each value is
read from memory once and the intermediates stay in registers. Stage splitting is what remains: a GEMM
whose operand is computed inside the step (GRU's R_n (r * h)) separates two kernels, and so does a
reduction over the features of a row (mean, sum, rowmax), which runs as a kernel of its own.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Kernel, Phase, Plan, reduces


def _gemms_early(body) -> list:
    """The ops with each forward GEMM moved ahead of the kernels between it and the GEMM before it (or the
    step's start) where it computes its operands from none of them: all of them or none, so a run of
    kernels that merges into one is never split in two. Never past another GEMM; a kernel that reads a
    GEMM's product came after it and still does. Backward GEMMs stay (their kernels move instead:
    _kernels_early): the GEMMs of one sum must stay together before the kernel after them (sum folding),
    and a first one whose operand is ready early would have left the others behind (a review found a
    masked cell with `heads` and a row reduction whose plan then failed verification)."""
    out: list = []
    for op in body:
        at = len(out)
        while at and isinstance(out[at - 1], Kernel):
            at -= 1
        if not (isinstance(op, Gemm) and op.kind == "forward"
                and all(not set(op.inputs) & set(k.nodes) for k in out[at:])):
            at = len(out)
        out.insert(at, op)
    return out


def _kernels_early(phase: Phase) -> list:
    """The backward's ops (their kernels already merged, so a run of them moves whole) with each kernel moved
    ahead of the GEMMs between it and the kernel before it (or the step's start) where it reads none of
    their products: past all of them or none, so the GEMMs of one sum stay together before the kernel after
    them (sum folding). Not a kernel that reduces rows, nor onto one (it would not merge there)."""
    out: list = []
    for op in phase.loop.body:
        at = len(out)
        while at and isinstance(out[at - 1], Gemm):
            at -= 1
        products = {o for g in out[at:] for o in g.outputs}
        if not (isinstance(op, Kernel) and not reduces(phase, op) and (at == 0 or isinstance(out[at - 1], Kernel)
                and not reduces(phase, out[at - 1]))
                and not any(set(phase.nodes[i].args) & products for i in op.nodes)):
            at = len(out)
        out.insert(at, op)
    return out


def _fuse(phase: Phase, ops) -> Phase:
    body = []
    for op in ops:
        if (isinstance(op, Kernel) and body and isinstance(body[-1], Kernel) and not reduces(phase, op)
                and not reduces(phase, body[-1])):
            body[-1] = Kernel(body[-1].nodes + op.nodes)
        else:
            body.append(op)
    return phase.with_body(body)


def fuse_pointwise(plan: Plan) -> Plan:
    # (GEMMs early only with the gates' GEMMs fused: without, the GEMMs of one operand would gather before
    # one kernel where `fuse recurrent` folds each into the kernel after it, and a forced persistent kernel
    # would have a stage per GEMM)
    fwd = plan.forward
    ops = _gemms_early(fwd.loop.body) if plan.schedule.fuse_gates else fwd.loop.body
    back = _fuse(plan.backward, plan.backward.loop.body)
    return dataclasses.replace(plan, forward=_fuse(fwd, ops), backward=_fuse(back, _kernels_early(back)))

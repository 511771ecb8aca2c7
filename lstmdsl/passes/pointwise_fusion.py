"""Pointwise fusion: the elementwise work between two GEMMs of a step is one kernel.

Consecutive kernels of a step merge into one that computes all their nodes in order, so each value is
read from memory once and the intermediates stay in registers. Stage splitting is what remains: a GEMM
whose operand is computed inside the step (GRU's R_n (r * h)) separates two kernels, and so does a
reduction over the features of a row (mean, sum, rowmax), which runs as a kernel of its own.
"""

from __future__ import annotations

import dataclasses

from ..plan import Kernel, Phase, Plan, reduces


def _fuse(phase: Phase) -> Phase:
    body = []
    for op in phase.loop.body:
        if (isinstance(op, Kernel) and body and isinstance(body[-1], Kernel) and not reduces(phase, op)
                and not reduces(phase, body[-1])):
            body[-1] = Kernel(body[-1].nodes + op.nodes)
        else:
            body.append(op)
    return phase.with_body(body)


def fuse_pointwise(plan: Plan) -> Plan:
    return dataclasses.replace(plan, forward=_fuse(plan.forward), backward=_fuse(plan.backward))

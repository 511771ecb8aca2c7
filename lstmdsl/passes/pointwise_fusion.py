"""Pointwise fusion: the elementwise work between two GEMMs of a step is one kernel.

Consecutive kernels of a step merge into one that computes all their nodes in order, so each value is
read from memory once and the intermediates stay in registers. Stage splitting is what remains: a GEMM
whose operand is computed inside the step (GRU's R_n (r * h)) separates two kernels.
"""

from __future__ import annotations

import dataclasses

from ..plan import Kernel, Phase, Plan


def _fuse(phase: Phase) -> Phase:
    step = []
    for op in phase.step:
        if isinstance(op, Kernel) and step and isinstance(step[-1], Kernel):
            step[-1] = Kernel(step[-1].nodes + op.nodes)
        else:
            step.append(op)
    return dataclasses.replace(phase, step=tuple(step))


def fuse_pointwise(plan: Plan) -> Plan:
    return dataclasses.replace(plan, forward=_fuse(plan.forward), backward=_fuse(plan.backward))

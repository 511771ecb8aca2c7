"""Gate fusion: all matrix products that share an operand become one GEMM over the stacked matrices.

Forward: the four gates' R_i h, R_f h, R_z h, R_o h become one [B, H] x [H, 4H] product. Backward: the
gradient sum_k g_k @ R_k that the gates pass back to h becomes one [B, 4H] x [4H, H] product, and the
weight gradients of matrices with a common operand one G^T V over the stacked blocks.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Phase, Plan, WeightGrad


def _fuse(phase: Phase, key) -> Phase:
    """Merge the step's GEMMs with equal key(gemm) into the first of them (its operands are ready there:
    GEMMs of one key read the same values)."""
    merged: dict[object, Gemm] = {}
    for op in phase.step:
        if isinstance(op, Gemm):
            k = key(op)
            if k in merged:
                first = merged[k]
                merged[k] = Gemm(first.kind, first.matrices + op.matrices,
                                 first.inputs + (op.inputs if op.kind == "backward" else ()),
                                 first.outputs + (op.outputs if op.kind == "forward" else ()))
            else:
                merged[k] = dataclasses.replace(op, accumulate=False)
    step, placed = [], set()
    for op in phase.step:
        if isinstance(op, Gemm):
            k = key(op)
            if k not in placed:
                placed.add(k)
                step.append(merged[k])
        else:
            step.append(op)
    return dataclasses.replace(phase, step=tuple(step))


def fuse_gates(plan: Plan) -> Plan:
    weight_grads: dict[int, WeightGrad] = {}
    for w in plan.weight_grads:
        first = weight_grads.get(w.v)
        weight_grads[w.v] = w if first is None else dataclasses.replace(
            first, matrices=first.matrices + w.matrices, g=first.g + w.g)
    return dataclasses.replace(
        plan,
        forward=_fuse(plan.forward, key=lambda g: g.inputs),  # same operand
        backward=_fuse(plan.backward, key=lambda g: g.outputs),  # same sum
        weight_grads=tuple(weight_grads.values()),
    )

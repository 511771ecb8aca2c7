"""Batched weight gradients: after the backward loop, one GEMM per weight (stack) over all steps.

dW = G^T V with G [T*B, rows] the incoming gradients of every step and V [T*B, cols] the saved operands,
instead of one small [rows, B] x [B, cols] product per step; vector gradients are one reduction over
T*B rows instead of one per step.
"""

from __future__ import annotations

import dataclasses

from ..plan import Plan, VectorGrad, WeightGrad


def batch_weight_grads(plan: Plan) -> Plan:
    bwd = plan.backward
    moved = tuple(op for op in bwd.loop.body if isinstance(op, (WeightGrad, VectorGrad)))
    bwd = dataclasses.replace(bwd.with_body(op for op in bwd.loop.body if op not in moved),
                              after=bwd.after + moved)
    return dataclasses.replace(plan, backward=bwd)

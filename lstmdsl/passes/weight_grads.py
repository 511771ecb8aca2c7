"""Batched weight gradients: after the backward loop, one GEMM per weight (stack) over all steps.

dW = G^T V with G [T*B, rows] the incoming gradients of every step and V [T*B, cols] the saved operands,
instead of one small [rows, B] x [B, cols] product per step; vector gradients are one reduction over
T*B rows instead of one per step.
"""

from __future__ import annotations

import dataclasses

from ..plan import Plan


def batch_weight_grads(plan: Plan) -> Plan:
    return dataclasses.replace(
        plan,
        weight_grads=tuple(dataclasses.replace(w, batched=True) for w in plan.weight_grads),
        vector_grads=tuple(dataclasses.replace(v, batched=True) for v in plan.vector_grads),
    )

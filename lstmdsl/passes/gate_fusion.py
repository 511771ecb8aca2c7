"""Gate fusion: all matrix products that share an operand become one GEMM over the stacked matrices.

Forward: the four gates' R_i h, R_f h, R_z h, R_o h become one [B, H] x [H, 4H] product. Backward: the
gradient sum_k g_k @ R_k that the gates pass back to h becomes one [B, 4H] x [4H, H] product, and the
weight gradients of matrices with a common operand one G^T V over the stacked blocks.

Block-diagonal matrices (`heads`) merge too where their stack is stored head by head (stacks.interleaved:
one head's blocks of all the matrices adjacent, so the merged GEMM is one strided batch over the heads);
elsewhere each is a batch of per-block GEMMs of its own, since the blocks of several matrices for one
head are not evenly spaced in the gates' buffer, and their GEMMs of one key are only gathered at the first
one's place, so the pointwise work after them is one kernel.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Phase, Plan, WeightGrad
from .stacks import interleaved, weight_stacks


def _merge(a, b):
    if isinstance(a, WeightGrad):
        return dataclasses.replace(a, matrices=a.matrices + b.matrices, g=a.g + b.g)
    return Gemm(a.kind, a.matrices + b.matrices, a.inputs + (b.inputs if b.kind == "backward" else ()),
                a.outputs + (b.outputs if b.kind == "forward" else ()))


def _key(op):
    """Ops with equal keys merge: forward GEMMs of one operand, backward GEMMs of one sum, weight
    gradients of one operand."""
    if isinstance(op, WeightGrad):
        return ("weight", op.v)
    if isinstance(op, Gemm):
        return (op.kind, op.inputs if op.kind == "forward" else op.outputs)
    return None


def _fuse(phase: Phase, heads: set[str]) -> Phase:  # heads: the block-diagonal matrices kept apart
    """Merge the loop's ops of equal key into the first of them (its operands are ready there: GEMMs of
    one key read the same values); those of block-diagonal matrices are placed there one after another."""
    merged: dict[object, list] = {}
    for op in phase.loop.body:
        k = _key(op)
        if k is None:
            continue
        if heads & set(op.matrices):
            merged.setdefault(k, []).append(op)
        elif k in merged:
            merged[k] = [_merge(merged[k][0], op)]
        else:
            merged[k] = [dataclasses.replace(op, accumulate=False) if isinstance(op, Gemm) else op]
    body, placed = [], set()
    for op in phase.loop.body:
        k = _key(op)
        if k is None:
            body.append(op)
        elif k not in placed:
            placed.add(k)
            body.extend(merged[k])
    return phase.with_body(body)


def fuse_gates(plan: Plan) -> Plan:
    stacks, interleave = weight_stacks(plan), interleaved(plan)
    merged = {m for v, ms in stacks.items() if v in interleave for m in ms}
    heads = {p.name for p in plan.cell.params if p.heads} - merged
    return dataclasses.replace(plan, forward=_fuse(plan.forward, heads), backward=_fuse(plan.backward, heads))

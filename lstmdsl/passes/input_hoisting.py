"""Input hoisting: products whose operand is the layer's input run once for all T steps.

Forward: W x_t for every t is one [T*B, I] x [I, rows] GEMM before the loop. Backward: the input's
gradient through the matrices, sum_k g_k @ W_k, is one [T*B, rows] x [rows, I] GEMM after the loop (the
g_k of every step are kept for it). Products on the states or on values computed in the step stay
inside the loop.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Plan


def hoist_input(plan: Plan) -> Plan:
    fwd, bwd = plan.forward, plan.backward
    on_input = [op for op in fwd.loop.body if isinstance(op, Gemm) and fwd.nodes[op.inputs[0]].op == "input"]
    to_input = [op for op in bwd.loop.body if isinstance(op, Gemm) and op.outputs[0] == plan.grad.d_input_t]
    fwd = dataclasses.replace(fwd.with_body(op for op in fwd.loop.body if op not in on_input),
                              before=fwd.before + tuple(on_input))
    bwd = dataclasses.replace(bwd.with_body(op for op in bwd.loop.body if op not in to_input),
                              after=tuple(to_input) + bwd.after)
    return dataclasses.replace(plan, forward=fwd, backward=bwd)

"""The layer wavefront (plan.Wavefront): whether a stack of this plan's layers can run its forward chunk
by chunk, each layer on a stream of its own.

A chunk of a layer is its input GEMM over the chunk's rows and then the chunk's steps, so the forward
must be exactly that: before the loop only GEMMs over all T*B rows whose buffer operands move with the
step (the hoisted input products), nothing after the loop, and a layer's x the layer below's y in place
(Storage.stack_input), so that chunk j of layer l reads what chunk j of layer l-1 wrote with no copy
between them. Every shipped spec qualifies.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Plan, Wavefront


def wavefront_blocker(plan: Plan) -> str | None:
    """Why a stack of this plan's layers cannot run as a wavefront, or None where it can."""
    if plan.schedule.wavefront == "off":
        return "the schedule says 'no wavefront'"
    fwd = plan.forward
    for op in fwd.before:
        call = op.call if isinstance(op, Gemm) else None
        if call is None or call.m != ("T*B",) or call.heads is not None:
            return "the forward does work other than input GEMMs over all steps before its loop"
        if call.a.space != "buffer" or call.c.space != "buffer":
            return "an input GEMM before the loop reads or writes something other than a buffer's steps"
    if fwd.after:
        return "the forward does work after its loop"
    if not plan.storage.stack_input:
        return "a layer's x is a copy of the layer below's y, not the same memory"
    return None


def plan_wavefront(plan: Plan) -> Plan:
    if wavefront_blocker(plan) is not None:
        return plan
    return dataclasses.replace(plan, wavefront=Wavefront(forced=plan.schedule.wavefront == "on"))

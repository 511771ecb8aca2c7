"""The layer wavefront (plan.Wavefront): whether a stack of this plan's layers can run its forward chunk
by chunk, each layer on a stream of its own.

A chunk of a layer is its input GEMM over the chunk's rows and then the chunk's steps, so the forward
must be exactly that: before the loop only GEMMs over all T*B rows whose buffer operands move with the
step (the hoisted input products), nothing after the loop, and a layer's x the layer below's y in place
(Storage.stack_input), so that chunk j of layer l reads what chunk j of layer l-1 wrote with no copy
between them. Every shipped spec qualifies.

In the backward the layers still run one after the other (they share their backward buffers: one layer's
worth of memory for the stack), but each layer's parameter gradients, the large GEMMs over all steps after
its loop, may run on a side stream beside the layers below (grads_beside).
"""

from __future__ import annotations

import dataclasses

from ..plan import Copy, Gemm, Kernel, Plan, VectorGrad, Wavefront, WeightGrad


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


def grads_beside(plan: Plan) -> tuple[int, ...]:
    """The ops after the backward loop that may run beside the backward of the layers below
    (Wavefront.beside), by index in backward.after: parameter gradients (WeightGrad, VectorGrad: they write
    only the layer's gradients, which nothing in the phase reads) whose buffers are ones each layer has its
    own of (forward buffers: a workspace shares only training-only buffers with the layers below) or
    constants (the ones). A stack's x is the exception: it is the layer below's y, so it counts only where
    the backward never writes y's buffer (it does where its gradients go in place over the y it kept)."""
    st = plan.storage
    buffers = {b.name: b for b in st.buffers}
    y = next(t.buffer for t in st.outputs if t.what == "y")
    written = {s.buffer for _, op in plan.backward.ops() if isinstance(op, Kernel) for _, s in op.writes}
    written |= {op.dst.buffer for _, op in plan.backward.ops() if isinstance(op, Copy)}
    written |= {op.call.c.name for _, op in plan.backward.ops()
                if getattr(op, "call", None) is not None and op.call.c.space == "buffer"}

    def own(o) -> bool:
        b = buffers.get(o.name) if o.space == "buffer" else None
        if o.space != "buffer":
            return True
        if b is None or b.alias is not None:  # (a forward buffer with an alias lives in a training buffer's memory)
            return False
        if o.name == "x" and st.stack_input and y in written:  # x is the layer below's y, which its backward
            return False  # writes over (Storage.in_place)
        return b.inference is not None or b.fill is not None

    after = plan.backward.after
    candidates = [k for k, op in enumerate(after)
                  if isinstance(op, (WeightGrad, VectorGrad)) and own(op.call.a) and own(op.call.b)]
    # a gradient that another op also adds into (a matrix used twice) stays with it: no two streams add into it
    chosen = {id(after[k]) for k in candidates}
    others = {(op.call.c.space, op.call.c.name) for _, op in plan.backward.ops()
              if getattr(op, "call", None) is not None and id(op) not in chosen}
    return tuple(k for k in candidates if (after[k].call.c.space, after[k].call.c.name) not in others)


def plan_wavefront(plan: Plan) -> Plan:
    if wavefront_blocker(plan) is not None:
        return plan
    return dataclasses.replace(plan, wavefront=Wavefront(forced=plan.schedule.wavefront == "on",
                                                         beside=grads_beside(plan)))

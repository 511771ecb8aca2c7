"""The layer wavefront (plan.Wavefront): whether a stack of this plan's layers can run its forward chunk
by chunk, each layer on a stream of its own.

A chunk of a layer is its input GEMM over the chunk's rows, the chunk's steps, then the GEMMs after the
loop over the chunk's rows, so the forward must be exactly that: before the loop only GEMMs over all T*B
rows whose buffer operands move with the step (the hoisted input products) and a folded projection's W P
and first products (passes/projection.py: with the first chunk), after it only such GEMMs (the folded
projection's states), and a layer's x the layer below's y in place (Storage.stack_input), so that chunk j of
layer l reads what chunk j of layer l-1 wrote with no copy between them. Every shipped spec qualifies.
"""

from __future__ import annotations

import dataclasses

from ..plan import Chunks, Copy, Fold, Gemm, Kernel, Plan, VectorGrad, Wavefront, WeightGrad


def wavefront_blocker(plan: Plan) -> str | None:
    """Why a stack of this plan's layers cannot run as a wavefront, or None where it can."""
    if plan.schedule.wavefront == "off":
        return "the schedule says 'no wavefront'"
    why = chunk_blocker(plan)
    if why is None and not plan.storage.stack_input:
        return "a layer's x is a copy of the layer below's y, not the same memory"
    return why


def _loop_buffers(plan: Plan) -> set[str]:
    """The buffers the forward's loop reads or writes (its ops' values' slots, its GEMMs' buffer operands)."""
    if plan.storage is None:
        return set()
    fwd, slots = plan.forward, plan.storage.slots("forward")
    nodes: set[int] = set()
    for op in fwd.loop.body:
        if isinstance(op, Kernel):
            nodes.update(op.nodes)
            nodes.update(a for i in op.nodes for a in fwd.nodes[i].args)
        elif isinstance(op, Gemm):
            nodes.update(op.inputs + op.outputs)
    used = {s.buffer for i in nodes for s in slots.get(i, ())}
    return used | {o.name for op in fwd.loop.body if isinstance(op, Gemm) and op.call is not None
                   for o in (op.call.a, op.call.b, op.call.c) if o.space == "buffer"}


def _after_by_chunks(plan: Plan, op) -> bool:
    """A GEMM after the loop that a chunk can run over its own steps' rows once its steps have run: over all
    steps' rows of buffers (T*B rows), into a buffer the loop neither reads nor writes (a folded projection's
    states: later chunks' steps do not read what it writes)."""
    call = op.call if isinstance(op, Gemm) else None
    if call is None or call.m != ("T*B",) or call.heads is not None or call.a.space != "buffer" \
            or call.c.space != "buffer" or call.c.name in _loop_buffers(plan):
        return False
    # row t of a is step t's own value (the chunk's steps wrote it) and c's rows are the step's new state, past the
    # initial one that a `first` GEMM before the loop reads (t + 1 forward, t in reverse: the history's layout)
    return call.a.step == 0 and call.c.step == (1 if plan.forward.loop.direction == "forward" else 0)


def chunk_blocker(plan: Plan) -> str | None:
    """Why this plan's forward cannot run chunk by chunk (each chunk its input GEMMs over the chunk's rows, then
    its steps, then the GEMMs after the loop over the chunk's rows), or None where it can. A folded projection
    (passes/projection.py) runs its Fold and the first step's products with the first chunk, and its projected
    states, the GEMM after the loop, chunk by chunk."""
    fwd = plan.forward
    for op in fwd.before:
        if isinstance(op, Fold) or isinstance(op, Gemm) and op.first:
            continue
        call = op.call if isinstance(op, Gemm) else None
        if call is None or call.m != ("T*B",) or call.heads is not None:
            return "the forward does work other than input GEMMs over all steps before its loop"
        if call.a.space != "buffer" or call.c.space != "buffer":
            return "an input GEMM before the loop reads or writes something other than a buffer's steps"
    if not all(_after_by_chunks(plan, op) for op in fwd.after):
        return "the forward does work after its loop other than GEMMs over all steps' rows into buffers the loop " \
               "does not use"
    return None


def backward_blocker(plan: Plan) -> str | None:
    """Why a stack's backward cannot run as a wavefront (Wavefront.backward), or None where it can: nothing
    before the loop; after it only the input-gradient GEMMs over all steps (into dx: chunk by chunk, like
    the forward's input GEMMs) and the parameter gradients (after the last chunk); and no backward buffer of
    T steps but dy, dx and constants, since the stack shares those between its layers and two layers at once
    would need one each (GRU's gate gradients, a peephole's products: memory the wavefront would double)."""
    bwd, st = plan.backward, plan.storage
    dy = next(t.buffer for t in st.inputs if t.what == "dy")
    dx_out = next(t for t in st.outputs if t.what == "dx")
    dx = dx_out.buffer
    if dx_out.col or dx_out.first:  # (a chunk clears whole rows of dx)
        return "its dx is part of a wider buffer"
    if bwd.before:
        return "the backward does work before its loop"
    for op in bwd.after:
        if isinstance(op, (WeightGrad, VectorGrad)):
            continue
        call = op.call if isinstance(op, Gemm) else None
        if call is None or call.m != ("T*B",) or call.c.space != "buffer" or call.c.name != dx \
                or call.heads is not None:
            return "the backward does work other than input and parameter gradients after its loop"
    long = [b.name for b in st.buffers if b.inference is None and b.steps in ("T", "T+1") and b.fill is None
            and b.name not in (dy, dx)]
    if long:
        return f"its backward keeps {', '.join(long)} for all steps, which the layers of a stack share"
    y = next(t.buffer for t in st.outputs if t.what == "y")
    written = {s.buffer for _, op in bwd.ops() if isinstance(op, Kernel) for _, s in op.writes}
    written |= {op.dst.buffer for _, op in bwd.ops() if isinstance(op, Copy)}
    written |= {op.call.c.name for _, op in bwd.ops() if getattr(op, "call", None) is not None
                and op.call.c.space == "buffer"}
    if y in written:
        return "its backward writes over the y it kept, which the layer above's weight gradients read as x"
    return None


def plan_wavefront(plan: Plan) -> Plan:
    if wavefront_blocker(plan) is not None:
        return plan
    return dataclasses.replace(plan, wavefront=Wavefront(forced=plan.schedule.wavefront == "on",
                                                         backward=backward_blocker(plan) is None))


def chunk_rings(plan: Plan) -> tuple[str, ...]:
    """The buffers a forward-only workspace may keep one chunk's steps of (Buffer.inference "C"): those the input
    GEMMs before the loop write, which in inference nothing but the step of their own area reads (every forward
    slot of them at the step itself; not x, the output or a history), where the forward can run chunk by chunk."""
    if chunk_blocker(plan) is not None:
        return ()
    st = plan.storage
    out = {t.buffer for t in st.outputs if t.what == "y"} | {"x"}
    written = {op.call.c.name for op in plan.forward.before if op.call.m == ("T*B",)}
    written |= {op.call.a.name for op in plan.forward.after}  # (a folded projection's v: read chunk by chunk)
    written -= {op.call.c.name for op in plan.forward.after}
    at_own_step = {b for b in written if all(s.step == 0 for _, slots in st.forward for s in slots if s.buffer == b)}
    return tuple(b.name for b in st.buffers if b.name in at_own_step - out and b.inference in ("T", "C"))


def plan_chunks(plan: Plan) -> Plan:
    rings = chunk_rings(plan)
    if not rings:
        return plan
    buffers = tuple(dataclasses.replace(b, inference="C") if b.name in rings else b for b in plan.storage.buffers)
    return dataclasses.replace(plan, chunks=Chunks(), storage=dataclasses.replace(plan.storage, buffers=buffers))

"""Overlay: in training the input's gradient dx takes the memory of the output's gradient dy (Buffer.over).

dy, the caller's output gradient copied into the workspace, is read step by step in the backward loop; dx, the
input's gradient, is formed after the loop where the input's products are hoisted (one GEMM over all steps' rows,
added into dx). Where no op touches dx before or in the loop, none touches dy after it, and the loop reads dy only
at the step it runs (no step offset), dy is dead before dx is first written: dx can live in dy's memory, saving
[T, B, input] elements of training memory (1000 MiB in float32 at B = 256, I = 1024, T = 1000).

The workspace applies it where the two are of one shape and type and as wide unpadded (input size = output size;
runtime/workspace.py), else dx has its own memory as before. Where it does, dx is zeroed after the loop (before the
GEMMs after it add into it: Issue.clear_overlaid), not before the backward (Buffer.zero), and in a stack's backward
wavefront after each chunk's steps, rows of that chunk only; a stack's layers share dy and dx (Workspace), so the
copy of the layer above's dx into a layer's dy is then a copy onto itself, skipped.
"""

from __future__ import annotations

import dataclasses

from ..plan import Copy, Kernel, Plan


def buffers_of(op) -> set[str]:
    """The workspace buffers an op reads or writes (once calls are assigned)."""
    if isinstance(op, Kernel):
        return {s.buffer for _, s in op.reads + op.writes}
    if isinstance(op, Copy):
        return {op.src.buffer, op.dst.buffer}
    call = op.call
    return {o.name for o in (call.a, call.b, call.c) if o.space == "buffer"}


def overlay_holds(plan: Plan, dy: str = "dy", dx: str = "dx") -> str | None:
    """Why dx cannot take dy's memory in training, or None where it can (the module docstring's conditions)."""
    st, bwd = plan.storage, plan.backward
    buffers = {b.name: b for b in st.buffers}
    if dy not in buffers or dx not in buffers:
        return "the plan has no dy or dx buffer"
    a, b = buffers[dy], buffers[dx]
    if (a.steps, b.steps) != ("T", "T") or a.inference is not None or b.inference is not None or a.dtype != b.dtype:
        return "dy and dx are not training-only buffers of one type for all steps"
    if a.alias or b.alias or any(c.alias in (dy, dx) or c.over in (dy, dx) for c in st.buffers if c is not b):
        return "another buffer shares dy's or dx's memory"
    if a.fill is not None or b.fill is not None:
        return "dy or dx is a constant"
    if any(s.buffer in (dy, dx) for _, ss in st.forward for s in ss) or \
            any(dy in buffers_of(op) or dx in buffers_of(op) for _, op in plan.forward.ops()):
        return "the forward touches dy or dx"
    dy_out = any(t.buffer == dy for t in st.outputs)
    dx_in = any(t.buffer == dx for t in st.inputs)
    if dy_out or dx_in:
        return "the caller reads dy or writes dx"
    stages = bwd.loop.persistent.stages if bwd.loop.persistent is not None else ()
    for op in bwd.before + bwd.loop.body + stages:
        if dx in buffers_of(op):
            return "the backward touches dx before its loop ends"
    for op in bwd.loop.body + stages:
        if isinstance(op, Kernel) and any(s.buffer == dy and s.step != 0 for _, s in op.reads + op.writes):
            return "the backward loop reads dy at another step than its own"
        if isinstance(op, Copy) and any(s.buffer == dy and s.step != 0 for s in (op.src, op.dst)):
            return "the backward loop reads dy at another step than its own"
        if not isinstance(op, (Kernel, Copy)) and dy in buffers_of(op):
            return "a GEMM of the backward loop reads dy"
    for op in bwd.after:
        if dy in buffers_of(op):
            return "the backward reads dy after its loop"
    return None


def plan_overlay(plan: Plan) -> Plan:
    """dx over dy in training where overlay_holds (Buffer.over)."""
    if plan.storage is None or overlay_holds(plan) is not None:
        return plan
    st = plan.storage
    buffers = tuple(dataclasses.replace(b, over="dy") if b.name == "dx" else b for b in st.buffers)
    return dataclasses.replace(plan, storage=dataclasses.replace(st, buffers=buffers))

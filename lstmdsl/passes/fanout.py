"""Fan-out (lowering): a step's GEMMs that do not depend on each other run at once, each on a stream of its own.

A per-step GEMM of a small batch fills a fraction of the GPU (FGR at B = 64, H = 512: four GEMMs a step
each way, 47 of its 53.5 us forward step one after another). Where consecutive GEMMs of the loop share
no output, read no output of another and add into nothing (no `accumulate`, no sum folding `init`: the
order of the additions would then matter), they form a group (Loop.fanout) that the runtime forks onto
streams of their own and joins before the next op (runtime/fanout.py), so inside a CUDA graph they are
parallel branches. A block-diagonal GEMM (heads) stays alone: its batched call's cuBLAS handle is not
tuned, so a lane of its own would first be made inside a capture. Runs after the calls pass (it reads
the GemmCalls), in both phases.
"""

from __future__ import annotations

import dataclasses

from ..plan import Gemm, Phase, Plan


def alone(op) -> str | None:
    """Why the op may not run beside another of a group, or None."""
    if not isinstance(op, Gemm) or op.call is None:
        return "it is not a GEMM with a call"
    if op.call.heads is not None:
        return "a block-diagonal GEMM"
    if op.accumulate or op.init is not None or op.call.accumulate:
        return "a GEMM that adds into its output"
    return None


def apart(a: Gemm, b: Gemm) -> str | None:
    """Why two GEMMs may not run at once, or None: a shared output, one reading the other's output (by
    value, or by the same operand in memory)."""
    if set(a.outputs) & set(b.outputs) or a.call.c == b.call.c:
        return "they write the same output"
    if set(a.inputs) & set(b.outputs) or set(b.inputs) & set(a.outputs) or \
            a.call.c in (b.call.a, b.call.b) or b.call.c in (a.call.a, a.call.b):
        return "one reads the other's output"
    return None


def _groups(body) -> tuple[tuple[int, ...], ...]:
    groups: list[list[int]] = []
    current: list[int] = []
    for k, op in enumerate(body):
        if alone(op) is not None:
            current = []
            continue
        if not current or any(apart(body[i], op) for i in current):
            current = [k]
            groups.append(current)
        else:
            current.append(k)
    return tuple(tuple(g) for g in groups if len(g) >= 2)


def _fan(phase: Phase) -> Phase:
    return dataclasses.replace(phase, loop=dataclasses.replace(phase.loop, fanout=_groups(phase.loop.body)))


def plan_fanout(plan: Plan) -> Plan:
    return dataclasses.replace(plan, forward=_fan(plan.forward), backward=_fan(plan.backward))

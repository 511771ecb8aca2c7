"""Training memory in place (Storage.in_place), a part of the storage pass (storage.py).

An activation kept only for the backward pass is written over a hoisted input product that only its own
computation reads (an LSTM's gate i over W_i x_t, in the same thread: the kernel loads the product before
it stores the gate), and the backward writes the incoming gradients of the weight stack (its `gin`) over
those activations, in the one kernel that reads them. An LSTM keeps one [T, B, 4H] area instead of three
(the products, the gates, their gradients). Where the conditions do not hold, nothing moves.
"""

from __future__ import annotations

import dataclasses

from ..ir import LEAF_OPS
from ..plan import Buffer, Gemm, Kernel, Phase, Plan, Slot, VectorGrad, WeightGrad, WeightStack, reduces


def within(phase: Phase, op: Kernel, v: int) -> set[int]:
    """v and the nodes of op that v is computed from (in the thread that computes v)."""
    inside, seen, todo = set(op.nodes), set(), [v]
    while todo:
        i = todo.pop()
        if i not in seen and i in inside:
            seen.add(i)
            todo.extend(phase.nodes[i].args)
    return seen


def kernel_of(ops, i: int) -> Kernel | None:
    return next((op for op in ops if isinstance(op, Kernel) and i in op.nodes), None)


def write_in_place(plan: Plan, buffers: dict[str, Buffer], f_slots, b_slots, stacks) -> tuple[tuple, tuple[WeightStack, ...]]:
    """Activations kept only for the backward pass move over the hoisted products they are computed from,
    and the gradients of a weight stack over them. Returns (Storage.in_place,
    the stacks) and updates the slots and buffers. Conditions, per hoisted buffer H:
    - forward: activation v (saved, in a buffer of its own) takes the
      slot of a product p in H of v's size that is read only by one node u, in the kernel computing v
      (and in the same persistent stage), with v computed from u: the thread that stores v has loaded p;
    - backward: every backward read of a value in H and every write of the stack's gradients (its `gin`,
      as wide as H, column for column) happen in one kernel that reduces no rows; there each thread loads
      its elements before it stores into them (codegen drops __restrict__ for such pointers), and no value
      in H (moved or not) is a weight stack's operand or what a weight gradient multiplies (read again after
      the gradients are written over it)."""
    fwd, bwd = plan.forward, plan.backward
    cell = plan.cell
    readers: dict[int, set[int]] = {}
    for i, n in enumerate(fwd.nodes):
        for a in n.args:
            readers.setdefault(a, set()).add(i)
    stages = fwd.loop.persistent.stages if fwd.loop.persistent else ()
    saved = set(plan.saved)
    hoisted = [o for op in fwd.before if isinstance(op, Gemm) for o in op.outputs]
    # values a weight gradient multiplies (in the loop or after it) stay what the forward stored, and so
    # does every buffer holding one
    multiplied = {s.operand for s in stacks} | {op.v for _, op in bwd.ops() if isinstance(op, WeightGrad)}
    held = {f_slots[m][0].buffer for m in multiplied}
    moves: dict[str, dict[int, int]] = {}  # host buffer -> {activation: product it moves over}
    taken: set[int] = set()
    for v in sorted(saved):
        own = f"v{v}"
        if f_slots.get(v) != [Slot(own)] or buffers[own].steps != "T" or v in multiplied:
            continue
        k = kernel_of(fwd.loop.body, v)
        if k is None or reduces(fwd, k):
            continue
        chain = within(fwd, k, v)
        stage = kernel_of(stages, v)
        for p in hoisted:
            host = f_slots[p][0].buffer
            if (p in taken or p in saved or p == cell.output or len(f_slots[p]) != 1 or host in held
                    or buffers[host].steps != "T" or fwd.nodes[p].size != fwd.nodes[v].size):
                continue
            (u, *more) = readers.get(p, {None})
            if more or u not in chain or (stages and u not in (stage.nodes if stage else ())):
                continue
            moves.setdefault(host, {})[v] = p
            taken.add(p)
            break
    in_place, stacks = [], list(stacks)
    for host, moved in moves.items():
        gins = {s.gin for s in stacks if buffers[s.gin].width == buffers[host].width}
        if len(gins) != 1:
            continue
        (gin,) = gins
        reads = {i for i, n in enumerate(bwd.nodes) if n.op == "fwd"
                 and (f_slots[n.attr][0].buffer == host or n.attr in moved)}
        users = {j for j, n in enumerate(bwd.nodes) if set(n.args) & reads}
        grads = {i for i, ss in b_slots.items() if any(sl.buffer == gin for sl in ss)}
        kernels = {id(kernel_of(bwd.loop.body, i)) for i in users | grads}
        k = kernel_of(bwd.loop.body, next(iter(users | grads), -1))
        if (len(kernels) != 1 or k is None or reduces(bwd, k) or any(bwd.nodes[i].op in LEAF_OPS for i in grads)
                or any(sl.accumulate for i in grads for sl in b_slots[i] if sl.buffer == gin)
                or any(isinstance(op, VectorGrad) and op.node in reads for _, op in bwd.ops())):
            continue
        for v, p in moved.items():
            f_slots[v] = [f_slots[p][0]]
            del buffers[f"v{v}"]
            in_place.append(("forward", v, p))
        for i in reads:
            b_slots[i] = [f_slots[bwd.nodes[i].attr][0]]
        for i in grads:
            b_slots[i] = [dataclasses.replace(sl, buffer=host) if sl.buffer == gin else sl for sl in b_slots[i]]
            in_place.append(("backward", i, gin))
        stacks = [dataclasses.replace(s, gin=host) if s.gin == gin else s for s in stacks]
        del buffers[gin]
    return tuple(in_place), tuple(stacks)

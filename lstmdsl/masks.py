"""Sequence lengths as a rewrite of the Cell IR: with_lengths(cell) is the same cell run over sequences of
different lengths in one batch. A per-step input, the mask m ("length": 1 while step t is inside sequence
b, 0 after its end, one value per row), freezes every state past the end and zeroes the output there:

    s' = m * update + (1 - m) * s          y = m * output

so the final states are each sequence's state at its own last step, the outputs past the end are zero,
and no gradient flows through the padding. Run in reverse time, the same mask makes each sequence start
at its own last step: the initial state is carried through the padding until the sequence begins.
Everything downstream (the derivative, the reference, the plan, the kernels) sees only ordinary nodes
and one more per-step input.
"""

from __future__ import annotations

import dataclasses
import functools

from .ir import ROW, Cell, GraphBuilder, prune, verify

LENGTH = "length"


@functools.lru_cache(maxsize=64)
def with_lengths(cell: Cell) -> Cell:
    """The masked cell. Every value the step computes downstream of a state's update reads the masked update
    instead (an LSTM's h' = o * tanh(c') becomes o * tanh(c_masked)): where m = 1 the two are equal, and
    where m = 0 everything the step passes on goes through a mask that drops it, so the outputs, the states
    and their gradients are the same. What the backward needs is then a function of the stored states (its
    tanh of c is recomputed from c's history) instead of values kept only for it: the unmasked c' and its
    tanh were two more buffers of T steps, written in the forward and read in the backward. The output is
    m times the masked update where the output is an update (y = m * h_masked: equal to m * h')."""
    b = GraphBuilder()
    m = b.leaf("stepin", LENGTH, ROW)
    keep = b.sub(b.const(1.0), m)
    state_ids = {n.attr: i for i, n in enumerate(cell.nodes) if n.op == "state"}
    update_of = {u: k for k, u in enumerate(cell.updates)}
    new: dict[int, int] = {}  # the cell's node -> its node in the masked cell
    masked: dict[int, int] = {}  # a state's update -> its masked update, which the nodes after it read
    for i, n in enumerate(cell.nodes):  # (in topological order)
        new[i] = b.add(dataclasses.replace(n, args=tuple(masked.get(a, new[a]) for a in n.args)))
        if i in update_of:
            s = cell.states[update_of[i]]
            old = state_ids.get(s.name)
            old = new[old] if old is not None else b.leaf("state", s.name, s.size)  # (carried through padding)
            masked[i] = b.op("add", b.mul(m, new[i]), b.mul(keep, old))
    for k, (s, u) in enumerate(zip(cell.states, cell.updates)):  # updates that are leaves or shared nodes
        if u not in masked:
            old = state_ids.get(s.name)
            old = new[old] if old is not None else b.leaf("state", s.name, s.size)
            masked[u] = b.op("add", b.mul(m, new[u]), b.mul(keep, old))
    updates = tuple(masked[u] for u in cell.updates)
    output = b.mul(m, masked.get(cell.output, new[cell.output]))
    nodes, remap = prune(tuple(b.nodes), updates + (output,))
    result = dataclasses.replace(cell, nodes=nodes, updates=tuple(remap[u] for u in updates),
                                 output=remap[output])
    verify(result)
    return result


def has_lengths(cell: Cell) -> bool:
    return any(n.op == "stepin" and n.attr == LENGTH for n in cell.nodes)

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

from .ir import ROW, Cell, GraphBuilder, verify

LENGTH = "length"


@functools.lru_cache(maxsize=64)
def with_lengths(cell: Cell) -> Cell:
    b = GraphBuilder()
    for n in cell.nodes:  # the cell's own nodes keep their ids (they are hash-consed already)
        b.nodes.append(n)
        b._ids.setdefault(n, len(b.nodes) - 1)
    m = b.leaf("stepin", LENGTH, ROW)
    keep = b.sub(b.const(1.0), m)
    state_ids = {n.attr: i for i, n in enumerate(cell.nodes) if n.op == "state"}
    updates = []
    for s, u in zip(cell.states, cell.updates):
        old = state_ids.get(s.name)
        if old is None:  # a state nothing reads: add its leaf, to carry it through the padding
            old = b.leaf("state", s.name, s.size)
        updates.append(b.op("add", b.mul(m, u), b.mul(keep, old)))
    output = b.mul(m, cell.output)
    masked = dataclasses.replace(cell, nodes=tuple(b.nodes), updates=tuple(updates), output=output)
    verify(masked)
    return masked


def has_lengths(cell: Cell) -> bool:
    return any(n.op == "stepin" and n.attr == LENGTH for n in cell.nodes)

"""Sequence lengths as a rewrite of the Cell IR: with_lengths(cell) is the same cell run over sequences of
different lengths in one batch. A per-step input, the mask m ("length": 1 while step t is inside sequence
b, 0 after its end, one value per row), freezes every state past the end and zeroes the output there:

    s' = m * update + (s - m * s)          y = m * output

(m * s is s or 0, so where m is 0 or 1 s' is the update or s unchanged, exactly, however the compiler
fuses the multiply-adds; only an infinite s past the end becomes NaN, where (1 - m) * s kept it, and an update of -0
becomes +0), so the final states are each sequence's state at its own last step, the outputs past the end are zero,
and no gradient flows through the padding. Run in reverse time, the same mask makes each sequence start
at its own last step: the initial state is carried through the padding until the sequence begins.
with_lengths(cell, held=True) leaves an output that is a state's update unzeroed past the end (the held
state: a caller that reads only the real steps, the torch module's packed batches, saves its buffer).
The nodes after an update read its masked value, except those whose value reaches a divisor, a log or a sqrt:
they read the raw update (_singular_inputs; the held initial state can be singular there, as the sLSTM's n = 0).
Everything downstream (the derivative, the reference, the plan, the kernels) sees only ordinary nodes
and one more per-step input.
"""

from __future__ import annotations

import dataclasses
import functools

from .ir import ROW, Cell, GraphBuilder, prune, verify

LENGTH = "length"


@functools.lru_cache(maxsize=64)
def with_lengths(cell: Cell, held: bool = False) -> Cell:
    """The masked cell. Every value the step computes downstream of a state's update reads the masked update
    instead (an LSTM's h' = o * tanh(c') becomes o * tanh(c_masked)): where m = 1 the two are equal, and
    where m = 0 everything the step passes on goes through a mask that drops it, so the outputs, the states
    and their gradients are the same. What the backward needs is then a function of the stored states (its
    tanh of c is recomputed from c's history) instead of values kept only for it: the unmasked c' and its
    tanh were two more buffers of T steps, written in the forward and read in the backward. The output is
    m times the masked update where the output is an update (y = m * h_masked: equal to m * h').
    held: where the output is a state's update, it is the masked update itself, not zeroed past the end (an
    LSTM's y is then h, held at its last real step: y is h's history, in place, with no buffer and no store
    of its own), for a caller that never reads the output there (lstmdsl.torch's packed batches: their
    output is the packed rows). The gradients are the same: where m = 0 the step's gate gradients are m
    times something, so a next layer's dx is zero there, and a dy of zero past the end adds nothing to the
    held state's gradient. An output that is not an update stays zeroed: past the end it would be a value
    of the padding's inputs, which could overflow, and 0 * inf in the next layer is NaN."""
    b = GraphBuilder()
    m = b.leaf("stepin", LENGTH, ROW)

    def mask(k: int, u: int) -> int:
        """State k's masked update, u its update in the masked cell. Its old value is the state's leaf,
        added here if no node before reads it (hash-consed: the same node the cell's leaf maps to). Every
        node is of the state's size: (1 - m) * s had a node of one value per row, which the plan computed
        in a kernel of its own, a launch more per step, and which kept a fused stage from being one."""
        s = b.leaf("state", cell.states[k].name, cell.states[k].size)
        return b.op("add", b.mul(m, u), b.sub(s, b.mul(m, s)))

    first_state = {}  # an update node -> the first state it updates
    for k, u in enumerate(cell.updates):
        first_state.setdefault(u, k)
    raw = _singular_inputs(cell)
    new: dict[int, int] = {}  # the cell's node -> its node in the masked cell
    after: dict[int, int] = {}  # an update the step computes -> the masked update the nodes after it read
    for i, n in enumerate(cell.nodes):  # (in topological order)
        new[i] = b.add(dataclasses.replace(n, args=tuple(new[a] if a in raw else after.get(a, new[a])
                                                         for a in n.args)))
        if i in first_state and n.args:  # (a leaf update, s' = h, stays what other nodes read: the old h)
            after[i] = mask(first_state[i], new[i])  # two states with one update: either masked update
            # serves the nodes after it (equal where m = 1; where m = 0 they are dropped)
    updates = tuple(mask(k, new[u]) for k, u in enumerate(cell.updates))  # (each state's own old value)
    output = after.get(cell.output, new[cell.output])
    output = output if held and cell.output in after else b.mul(m, output)
    nodes, remap = prune(tuple(b.nodes), updates + (output,))
    names = tuple((name, remap[after.get(i, new[i])]) for name, i in cell.names if after.get(i, new[i]) in remap)
    result = dataclasses.replace(cell, nodes=nodes, updates=tuple(remap[u] for u in updates),
                                 output=remap[output], names=names)
    verify(result)
    return result


# an operator's arguments where a finite value can make it or its derivative infinite (a divisor of 0, log 0, the
# derivative of sqrt at 0)
_SINGULAR = {"div": (1,), "log": (0,), "sqrt": (0,)}


def _singular_inputs(cell: Cell) -> frozenset[int]:
    """The nodes whose value reaches such an argument (the argument and everything it is computed from). These read
    the raw updates, not the masked ones: past a sequence's end a masked update is the held state, and in the
    reverse direction, before a sequence begins, that is the initial state, where a cell may be singular (the
    sLSTM's h' = o * (c' / n') is 0 / 0 at n = 0). The raw update there is the step taken from the held state
    (n' = f * n + i > 0), finite; where m = 1 the two are equal, and where m = 0 the result is masked off, but
    0 * NaN, in the forward or in a derivative, would not have been."""
    out: set[int] = set()
    for n in cell.nodes:
        out.update(n.args[k] for k in _SINGULAR.get(n.op, ()) if k < len(n.args))
    for i in range(len(cell.nodes) - 1, -1, -1):  # (arguments come before their users)
        if i in out:
            out.update(cell.nodes[i].args)
    return frozenset(out)


def has_lengths(cell: Cell) -> bool:
    return any(n.op == "stepin" and n.attr == LENGTH for n in cell.nodes)

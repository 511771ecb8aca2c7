"""Projection folding (`fold projection`): a state that is a projection, h' = P v (LSTMP's), and is read only by
the next step's GEMM, W h, feeds that GEMM folded: W h_{t+1} = W P v_t = v_t @ (W P)^T.

The stepwise loop of such a cell runs two dependent GEMMs a step (W h, the kernel, then P v), three launches;
folded it runs the kernel and one GEMM, v_t @ (W P)^T, which writes the products of the NEXT step (Gemm.ahead),
two launches as in a cell without the projection. Before the loop a Fold forms W P (a GEMM of the two stacks,
recomputed at every forward) and a GEMM forms the first step's products from the initial state (Gemm.first);
after it one GEMM over all T*B rows forms the states P v_t, which the caller reads (y, the final state) and the
backward reads (the weight gradient of W). The backward is unchanged. The last step's products ahead are not
used (one GEMM of T).

The folded GEMM multiplies by a matrix of W's rows and v's columns ([4 * hidden, hidden] for LSTMP, against
[4 * hidden, proj] and [proj, hidden]): more multiply-adds a step where the projection is narrower than v, one
launch fewer. It pays where a step is launch-bound and may lose where it is arithmetic-bound: on the H200
(benchmarks/results/projection_*_h200.md, one layer, proj = H / 2, T = 100, B 1-256) it took 0.57-0.90x the
unfolded time forward at H <= 512 (1.01x at B = 256, H = 512 in fp32), 0.66-1.05x at H = 1024, and lost by more
than 5% only in strict fp32 at B = 256, H = 1024 (1.20x forward, 1.08x training): hence the default, with
`no fold projection` to turn it off. The values differ from the unfolded loop's by rounding
((W P) v against W (P v)).

A lowering pass: it runs after the calls pass, on a plan whose storage and calls are assigned. A folded forward
still runs chunk by chunk and as a layer wavefront (passes/wavefront.py): the Fold and the first products with
the loop's first chunk, the projected states over each chunk's rows after its steps (runtime/issue.py chunk), v
then one chunk's ring in a forward-only workspace. It folds only where all of this holds (fold_blocker says which does not): the loop is the stepwise one
(no persistent kernel), the GEMM operands are of the values' type (not half precision: a state rounded where it
feeds a GEMM would be v instead), the loop is exactly [W h GEMM, kernels, P v GEMM] where the latter's output is
the state's update, nothing else in the step reads the state, and the stacks are plain (no heads, padding or
interleaving).
"""

from __future__ import annotations

import dataclasses

from ..masks import has_lengths
from ..plan import Buffer, Fold, Gemm, GemmCall, Kernel, Operand, Plan


NO_PROJECTION = "no state of the cell is a projection (h' = P v)"


def _masked_projection(nodes, u: int) -> bool:
    """Whether update u is a length mask's hold of a projection, m * P v + (h - m * h) (masks.with_lengths)."""
    n = nodes[u]
    if n.op != "add" or nodes[n.args[0]].op != "mul":
        return False
    return any(nodes[a].op == "matvec" for a in nodes[n.args[0]].args)


def _pattern(plan: Plan):
    """(W h GEMM, P v GEMM, the state's name), or a string saying why the forward does not have the pattern."""
    fwd = plan.forward
    body = fwd.loop.body
    if not any(fwd.nodes[u].op == "matvec" for u in plan.cell.updates):
        if has_lengths(plan.cell) and any(_masked_projection(fwd.nodes, u) for u in plan.cell.updates):
            return "with lengths, each state's update is held past a sequence's end (m * h' + (1 - m) * h), " \
                   "not the projection's product"
        return NO_PROJECTION
    if fwd.loop.persistent is not None:
        return "the forward has a persistent kernel (the fold is for the stepwise loop)"
    if plan.operand_type != plan.dtype:
        return "the GEMM operands are in half precision (a state rounded where it feeds a GEMM)"
    if len(body) < 3 or not all(isinstance(op, Kernel) for op in body[1:-1]):
        return "the step is not one GEMM on the state, kernels, and the projection's GEMM"
    first, last = body[0], body[-1]
    if not (isinstance(first, Gemm) and isinstance(last, Gemm) and first.kind == last.kind == "forward"
            and len(last.matrices) == 1 and len(last.outputs) == 1 and len(first.inputs) == 1):
        return "the step is not one GEMM on the state, kernels, and the projection's GEMM"
    cell = plan.cell
    node = fwd.nodes[first.inputs[0]]
    state = next((s for s, u in zip(cell.states, cell.updates) if u == last.outputs[0]), None)
    if state is None or node.op != "state" or node.attr != state.name:
        return "the projection's product is not the update of the state the step's first GEMM reads"
    h = first.inputs[0]
    if any(h in fwd.nodes[i].args for op in body[1:-1] for i in op.nodes) or h in last.inputs:
        return f"the step reads state '{state.name}' other than through its first GEMM"
    st = plan.storage
    for g in (first, last):
        c = g.call
        stack = st.stack(c.b.name) if c is not None and c.b.space == "weights" else None
        if stack is None or c.heads is not None or c.padded or stack.padded or stack.interleave \
                or stack.heads or not c.trans_b or c.trans_a or c.accumulate or c.a.space != "buffer" \
                or c.c.space != "buffer" or c.a.offset or c.c.offset:
            return "a GEMM of the step reads a stack stored by blocks, padded or interleaved, or a part of a buffer"
    hist, v = st.buffer(last.call.c.name), st.buffer(last.call.a.name)
    if (hist.steps, hist.inference) != ("T+1", "T+1") or v.steps not in ("1", "T") or v.rows:
        return "the state's history or the projected value is not kept where a GEMM over all steps can read it"
    return first, last, state.name


def fold_blocker(plan: Plan) -> str | None:
    """Why `fold projection` cannot fold this plan's forward (None: it can, or it is folded)."""
    if folded(plan):
        return None
    if plan.storage is None:
        return "the plan has no storage yet"
    found = _pattern(plan)
    return found if isinstance(found, str) else None


def folded(plan: Plan) -> bool:
    return any(isinstance(op, Fold) for op in plan.forward.before)


def fold_projection(plan: Plan) -> Plan:
    """The forward with the projection folded into the next step's GEMM, where the schedule asks for it and
    the pattern holds (else the plan unchanged)."""
    if not plan.schedule.fold_projection or plan.storage is None:
        return plan
    found = _pattern(plan)
    if isinstance(found, str):
        return plan
    first, last, _ = found
    st = plan.storage
    w, p = first.call, last.call  # W h -> products [B, rows of W]; v P^T -> h' [B, proj]
    name = "folded"
    product = Buffer(name, st.stack(w.b.name).dtype, p.k, "1", "1", rows=w.n)
    fold = Fold(w.b.name, last.matrices[0], name, GemmCall(
        m=w.n, n=p.k, k=w.k, a=Operand("weights", w.b.name), trans_a=False, b=Operand("weights", p.b.name),
        trans_b=False, c=Operand("buffer", name), accumulate=False, a_type=w.b_type, b_type=p.b_type,
        c_type=w.b_type, compute=w.compute))
    ahead = dataclasses.replace(first, inputs=last.inputs, ahead=last.matrices[0], call=dataclasses.replace(
        w, k=p.k, a=p.a, b=Operand("buffer", name), a_type=p.a_type, b_type=product.dtype))
    project = dataclasses.replace(last, call=dataclasses.replace(p, m=("T*B",)))
    v = st.buffer(p.a.name)
    buffers = tuple(dataclasses.replace(b, steps="T", inference="T") if b.name == v.name else b
                    for b in st.buffers) + (product,)
    fwd = plan.forward
    fwd = dataclasses.replace(fwd, before=fwd.before + (fold, dataclasses.replace(first, first=True)),
                              after=(project,) + fwd.after)
    fwd = fwd.with_body(fwd.loop.body[1:-1] + (ahead,))
    return dataclasses.replace(plan, forward=fwd, storage=dataclasses.replace(st, buffers=buffers))

"""Storage: the buffers, where every value lives, the weight stacks, and the copies between slots.

A value that leaves the op computing it (read by another op of the step, by a GEMM, saved for the
backward pass, a state update, the output, a gradient) lives in a buffer slot. Buffers are
[steps, B, width] arrays of the plan's element type (width a sum of symbolic sizes), with steps one of
  "1"   one [B, width] area reused at every step,
  "T"   one area per step (saved activations, hoisted GEMM outputs, gradients kept for after the loop),
  "T+1" a history: area t holds a state at the start of step t, t + 1 its update (no value is ever
        overwritten while another op may still read it; the output is a view of the history),
  "2"   a ring: step t's area is t mod 2 (a state's gradient, which each step computes from the last; in a
        forward-only workspace, Buffer.inference, the history of every state but the output: inference_rings).
A slot is (buffer, column offset, step offset): at step t it is row b of [t + step offset, b, col:].

A kernel writes a value to every slot it has. A GEMM writes its first slot, and so does the caller for
a leaf (the input, a state, an incoming gradient): Copy ops, placed right after, fill the others.

The incoming gradients of the matrices that share an operand v live side by side in one buffer (the
stack's `gin`), in the order of v's weight stack, so one GEMM multiplies them with the stacked weights
(the gradient passed back to v) and one G^T V forms the stacked weight gradient. Two stacks that get
the same gradients (W x + R h: both products get d(gates)) share that buffer.

Stacks of block-diagonal matrices may be stored head by head (stacks.py: interleaved), and the values
their GEMMs write and read lie the same way (Slot.interleave).

Memory in training: activations over the hoisted input products and gradients over those activations
where it is safe (in_place.py, Storage.in_place); otherwise a forward buffer that the backward never
reads (the hoisted input products) shares its memory with a backward buffer of the same shape
(Buffer.alias): the forward is done with it before the backward writes there, and the next forward
writes it again.
"""

from __future__ import annotations

import dataclasses

from ..errors import BackendUnavailable
from ..ir import LEAF_OPS, OUTPUT_GRAD
from ..plan import (HALF_TYPES, Buffer, Copy, Gemm, Kernel, Phase, Plan, Slot, Storage, Transfer, VectorGrad,
                    WeightGrad, WeightStack)
from .in_place import write_in_place
from .stacks import interleaved, weight_stacks


def stack_name(plan: Plan, operand: int, matrices: tuple[str, ...]) -> str:
    """weight_ih for the products of the input, weight_h<s> for those of state s (weight_hh for h, as
    torch.nn.LSTM names them), else the matrices' names joined."""
    n = plan.cell.nodes[operand]
    if len(matrices) > 1 and n.op == "input":
        return "weight_ih"
    if len(matrices) > 1 and n.op == "state":
        return f"weight_h{n.attr}"
    return "_".join(matrices)


def _needed_outside(phase: Phase, roots) -> set[int]:
    """Nodes of a phase whose value must be in memory: read by an op other than the kernel that computes
    it, produced or read by a GEMM-like op, or a root."""
    body = phase.loop.body
    where: dict[int, int] = {}
    for k, op in enumerate(body):
        for i in (op.nodes if isinstance(op, Kernel) else op.outputs if isinstance(op, Gemm) else ()):
            where[i] = k
    needed = set(roots)
    for place, op in phase.ops():
        if isinstance(op, Kernel):
            k = body.index(op)
            for i in op.nodes:
                needed.update(a for a in phase.nodes[i].args if where.get(a, k) != k)
        elif isinstance(op, Gemm):
            needed.update(op.inputs + op.outputs + ((op.init,) if op.init is not None else ()))
        elif isinstance(op, WeightGrad):
            needed.update(op.g)
        elif isinstance(op, VectorGrad):
            needed.add(op.node)
    return {i for i in needed if phase.nodes[i].op not in ("param", "const")}


def forward_roots(plan: Plan) -> set[int]:
    """Forward values wanted after the step: state updates, the output, what the backward pass reads."""
    return set(plan.cell.updates) | {plan.cell.output} | set(plan.saved)


def backward_roots(plan: Plan) -> set[int]:
    """Backward values wanted after the step: state and input gradients, parameter gradients' parts."""
    grad = plan.grad
    return ({d for d in grad.d_states + (grad.d_input, grad.d_input_t) if d is not None}
            | {node for _, node in grad.d_vectors} | {g for _, g, _ in grad.d_matrices})


class _Buffers:
    def __init__(self, dtype: str):
        self.dtype = dtype
        self.all: dict[str, Buffer] = {}

    def __call__(self, name, width, steps, inference=None, **kw) -> str:
        self.all.setdefault(name, Buffer(name, self.dtype, tuple(width), steps, inference, **kw))
        return name


def _history(plan: Plan) -> tuple[int, int]:
    """(step offset of a state at the start of step t, of its update) in a history: forward in time, area
    t holds the state before step t and t + 1 after it; in reverse time, area t + 1 before and t after."""
    return (0, 1) if plan.forward.loop.direction == "forward" else (1, 0)


HALF_HISTORY_OPS = {"add", "sub", "mul", "neg", "tanh", "sigmoid", "matvec_t", "sum", "expand"}


def half_histories(plan: Plan) -> set[str]:
    """Mixed precision: the states whose history the backward reads in the half type while the steps carry
    them in fp32, in a ring of two areas (ring_<state>): those no GEMM reads or writes and that are not the
    output (an LSTM's cell state), and whose every use in the backward is a sum, a product, tanh or sigmoid,
    where rounding changes a gradient by about the half type's precision, as rounding the saved gates
    does. Not a state the backward reads through exp, a division or a comparison (the sLSTM's normaliser,
    a layer norm of c): there an error of 2^-8 relative grows with the value. (fp16's range, 65504, bounds
    the history as it bounds the saved activations: an LSTM without a forget gate reaches it only after
    about that many steps.)"""
    if plan.operand_type not in HALF_TYPES:
        return set()
    fwd, bwd = plan.forward, plan.backward.nodes
    gemms = set(weight_stacks(plan)) | {o for _, op in fwd.ops() if isinstance(op, Gemm) for o in op.outputs}
    leaf = {n.attr: i for i, n in enumerate(fwd.nodes) if n.op == "state"}
    users: dict[int, list[int]] = {}
    for j, n in enumerate(bwd):
        for a in n.args:
            users.setdefault(a, []).append(j)
    half = set()
    for s, u in zip(plan.cell.states, plan.cell.updates):
        i = leaf.get(s.name)
        if i is None or {i, u} & gemms or u == plan.cell.output:
            continue
        todo = [j for j, n in enumerate(bwd) if n.op == "fwd" and n.attr in (i, u)]
        if not todo:
            continue  # (the backward never reads it: the sLSTM's stabiliser)
        seen: set[int] = set()
        while todo:
            seen.add(j := todo.pop())
            todo += [k for k in users.get(j, ()) if k not in seen]
        if all(bwd[k].op in HALF_HISTORY_OPS for k in seen if bwd[k].op != "fwd"):
            half.add(s.name)
    return half


def inference_rings(plan: Plan) -> set[str]:
    """The states whose history a forward-only workspace keeps as a ring of two areas (Buffer.inference "2"): in
    inference only the step's own state and its update are read, so every state but the output (an LSTM's c, not
    its h: the output is the layer's y, all steps of it) is a ring there, unless an op outside the loop reads or
    writes it (none does in the shipped specs). In training the backward reads the whole history."""
    cell, fwd = plan.cell, plan.forward
    leaf = {n.attr: i for i, n in enumerate(fwd.nodes) if n.op == "state"}
    outside = set()
    for op in (*fwd.before, *fwd.after):
        outside |= set(getattr(op, "nodes", ())) | set(getattr(op, "inputs", ())) | set(getattr(op, "outputs", ()))
    return {s.name for s, u in zip(cell.states, cell.updates)
            if cell.output not in (u, leaf.get(s.name)) and not {u, leaf.get(s.name)} & outside}


def _forward_slots(plan: Plan, buf: _Buffers, half: set[str]) -> dict[int, list[Slot]]:
    cell, fwd = plan.cell, plan.forward
    interleave = interleaved(plan)
    saved = set(plan.saved)
    before, after = _history(plan)
    rings = inference_rings(plan)
    slots: dict[int, list[Slot]] = {}
    buf("x", ("input",), "T", "T")
    for i, n in enumerate(fwd.nodes):
        if n.op == "input":
            slots[i] = [Slot("x")]
        elif n.op == "state" and n.attr in half:  # the step's state: fp32, in a ring
            slots[i] = [Slot(buf(f"ring_{n.attr}", (n.size,), "2", "2"), step=before)]
        elif n.op == "state":
            inference = "2" if n.attr in rings else "T+1"
            slots[i] = [Slot(buf(f"hist_{n.attr}", (n.size,), "T+1", inference), step=before)]
        elif n.op == "stepin":  # a per-step input the caller gives, like x
            slots[i] = [Slot(buf(f"step_{n.attr}", (n.size,), "T", "T"))]
    for s, u in zip(cell.states, cell.updates):
        if s.name in half:  # the update goes to the ring and, rounded, to the history the backward reads
            slots.setdefault(u, []).append(Slot(f"ring_{s.name}", step=after))
            slots[u].append(Slot(buf(f"hist_{s.name}", (s.size,), "T+1", "1"), step=after))
            continue
        inference = "2" if s.name in rings else "T+1"
        slots.setdefault(u, []).append(Slot(buf(f"hist_{s.name}", (s.size,), "T+1", inference), step=after))
    gemms = list(fwd.before) + [op for op in fwd.loop.body if isinstance(op, Gemm)]
    for k, g in enumerate(gemms):
        hoisted = k < len(fwd.before)
        emitted = hoisted or cell.output in g.outputs  # needed for all steps without a backward too
        keep = emitted or any(o in saved for o in g.outputs)
        width = tuple(fwd.nodes[o].size for o in g.outputs)
        if not hoisted and len(g.outputs) == 1 and g.outputs[0] in slots:
            continue  # a lone output with a home already (a state update): the GEMM writes it there
        name = buf(f"gemm{k}", width, "T" if keep else "1", "T" if emitted else "1")
        block = interleave.get(g.inputs[0]) if g.kind == "forward" else None
        if block and g.matrices != weight_stacks(plan)[g.inputs[0]]:  # (slot j is the stack's matrix j)
            raise AssertionError(f"GEMM {g.matrices} is not its stack, in order, stored head by head")
        for j, o in enumerate(g.outputs):
            slots.setdefault(o, []).insert(0, Slot(name, (block,) * j, interleave=((block,), (block,) * len(width)))
                                           if block else Slot(name, width[:j]))
    for i in sorted(_needed_outside(fwd, forward_roots(plan))):
        if i not in slots:
            steps = "T" if (i in saved or i == cell.output) else "1"
            slots[i] = [Slot(buf(f"v{i}", (fwd.nodes[i].size,), steps, "T" if i == cell.output else "1"))]
    return slots


def _stacks(plan: Plan, buf: _Buffers, b_slots: dict[int, list[Slot]]) -> tuple[WeightStack, ...]:
    """The weight stacks, with the buffers of their incoming gradients (and those gradients' slots)."""
    cell, grad, bwd = plan.cell, plan.grad, plan.backward
    after = set()
    for op in bwd.after:
        after |= set(op.inputs if isinstance(op, Gemm) else op.g if isinstance(op, WeightGrad) else ())
    g_of = {(m, v): g for m, g, v in grad.d_matrices}
    interleave = interleaved(plan)
    shared: dict[tuple, str] = {}  # (gradients, rows) -> the buffer that already holds them
    stacks = []
    for v, matrices in weight_stacks(plan).items():
        rows = tuple(cell.param(m).shape[0] for m in matrices)
        gs = tuple(g_of[(m, v)] for m in matrices)
        block = interleave.get(v)
        if (gs, rows) not in shared:
            name = shared[(gs, rows)] = buf(f"gin{v}", rows, "T" if any(g in after for g in gs) else "1")
            for j, g in enumerate(gs):
                b_slots.setdefault(g, []).append(Slot(name, (block,) * j, interleave=((block,), (block,) * len(rows)))
                                                 if block else Slot(name, rows[:j]))
        heads = cell.param(matrices[0]).heads  # all or none of one operand's matrices (lower.py checks)
        stacks.append(WeightStack(stack_name(plan, v, matrices), v, matrices, rows, cell.param(matrices[0]).shape[1],
                                  shared[(gs, rows)], plan.operand_type, heads,
                                  padded=plan.operand_type in HALF_TYPES and not heads, interleave=block))
    names = [s.name for s in stacks]
    if len(set(names)) != len(names):  # e.g. a one-matrix stack named like another's default name
        stacks = [dataclasses.replace(s, name=f"{s.name}_{s.operand}") for s in stacks]
    return tuple(stacks)


def _backward_slots(plan: Plan, buf: _Buffers, f_slots, half: set[str]) -> tuple[dict[int, list[Slot]],
                                                                                 tuple[WeightStack, ...]]:
    cell, grad, bwd = plan.cell, plan.grad, plan.backward
    before, after = _history(plan)
    leaf = {n.attr: i for i, n in enumerate(plan.forward.nodes) if n.op == "state"}
    kept = {k: Slot(f"hist_{s.name}", step=step) for s, u in zip(cell.states, cell.updates) if s.name in half
            for k, step in ((leaf[s.name], before), (u, after))}
    slots: dict[int, list[Slot]] = {}
    buf("dy", (cell.output_size,), "T")
    buf("dx", ("input",), "T", zero=True)
    # the gradient of a state at the start of step t lives in area t: the caller's gradient of the final
    # state goes to area T, the rest starts at zero. Where each step computes it, the step only reads the
    # area t + 1 the step before wrote: two areas in turn suffice (a ring); a state no gradient reaches
    # keeps the history, whose unwritten areas stay zero.
    computed = {s.name for s, d in zip(cell.states, grad.d_states) if d is not None}
    for s in cell.states:
        buf(f"dhist_{s.name}", (s.size,), "2" if s.name in computed else "T+1", zero=True)
    for i, n in enumerate(bwd.nodes):
        if n.op == "grad_in":
            slots[i] = ([Slot("dy")] if n.attr == OUTPUT_GRAD else
                        [Slot(f"dhist_{n.attr}", step=after)])
        elif n.op == "fwd":  # a forward value (a state in half precision: from its history, not the ring)
            slots[i] = [kept.get(n.attr, f_slots[n.attr][0])]

    def home(d: int, slot: Slot) -> None:
        """Give a gradient a slot: first for a computed value (its producer writes it there), after the
        leaf's own slot for an incoming gradient (its slot 0 holds the value, copied on from there)."""
        s = slots.setdefault(d, [])
        s.append(slot) if bwd.nodes[d].op in LEAF_OPS else s.insert(0, slot)

    for s, d in zip(cell.states, grad.d_states):
        if d is not None:
            home(d, Slot(f"dhist_{s.name}", step=before))
    for d in (grad.d_input, grad.d_input_t):
        if d is not None:
            home(d, Slot("dx", accumulate=True))
    stacks = _stacks(plan, buf, slots)
    kept = {op.node for op in bwd.after if isinstance(op, VectorGrad)}
    for i in sorted(_needed_outside(bwd, backward_roots(plan))):
        if i not in slots:
            slots[i] = [Slot(buf(f"b{i}", (bwd.nodes[i].size,), "T" if i in kept else "1"))]
    vector_grads = [(place, op) for place, op in bwd.ops() if isinstance(op, VectorGrad)]
    for place, vg in vector_grads:  # read after the step (or the loop) from a slot nothing adds into
        steps = "T" if place == "after" else "1"
        if not any(not s.accumulate and (steps == "1" or buf.all[s.buffer].steps == "T") for s in slots[vg.node]):
            slots[vg.node].append(Slot(buf(f"b{vg.node}", (bwd.nodes[vg.node].size,), steps)))
    for op in bwd.loop.body:  # sum folding: p is written (or copied) into the slot the GEMM adds into
        if isinstance(op, Gemm) and op.init is not None:
            slots[op.init].append(slots[op.outputs[0]][0])
    return slots, stacks


def _aliases(plan: Plan, buf: _Buffers, f_slots, stacks) -> None:
    """Forward buffers the backward never reads share memory with backward buffers of the same shape."""
    cell, bwd = plan.cell, plan.backward
    buffers = buf.all
    read_later = {"x", f_slots[cell.output][0].buffer} | {b for b in buffers if b.startswith("step_")}
    read_later |= {b.name for b in buffers.values() if b.name.startswith("hist_")}
    read_later |= {f_slots[n.attr][0].buffer for n in bwd.nodes if n.op == "fwd"}
    read_later |= {f_slots[s.operand][0].buffer for s in stacks}
    hosts = [b for b in buffers.values()
             if b.inference is None and b.steps == "T" and b.name not in ("dy", "dx") and b.fill is None]
    taken: set[str] = set()
    for b in list(buffers.values()):
        if b.inference is not None and b.steps == "T" and b.name not in read_later:
            host = next((h for h in hosts if h.width == b.width and h.dtype == b.dtype and h.name not in taken), None)
            if host is not None:
                taken.add(host.name)
                buffers[b.name] = dataclasses.replace(b, alias=host.name)


def _copies(phase: Phase, slots: dict[int, tuple[Slot, ...]], buffers: dict[str, Buffer],
            leaves: tuple[str, ...]) -> Phase:
    """Copy ops from a value's first slot to its others: after each GEMM-like op that writes the first
    (after the last GEMM of a sum), and at the start of each step for the leaves. A copy between buffers
    of two types converts."""
    def copy(i: int, dst: Slot) -> Copy:
        src = slots[i][0]
        a, b = buffers[src.buffer].dtype, buffers[dst.buffer].dtype
        if a != b and dst.accumulate:
            raise BackendUnavailable(f"a value is added into a slot of another element type ({a} into {b}); mixed "
                                     "precision does not support this cell yet")
        return Copy(i, src, dst, phase.nodes[i].size, a, b if a != b else "")

    def copies(nodes):
        return [copy(i, s) for i in nodes for s in slots.get(i, ())[1:]]

    before = []
    for op in phase.before:
        before += [op] + (copies(op.outputs) if isinstance(op, Gemm) else [])
    body = copies(i for i, n in enumerate(phase.nodes) if n.op in leaves)
    ops = phase.loop.body
    last = {op.outputs[0]: k for k, op in enumerate(ops) if isinstance(op, Gemm)}
    for k, op in enumerate(ops):
        body.append(op)
        if isinstance(op, Gemm) and last[op.outputs[0]] == k:
            body += copies(op.outputs)
    return dataclasses.replace(phase.with_body(body), before=tuple(before))


def vector_grad_slot(slots: list[Slot] | tuple[Slot, ...], buffer, place: str, dtype: str) -> Slot:
    """The slot a vector gradient sums a value's rows from: one nothing adds into, kept for all steps when
    the sum runs after the loop; of the plan's element type where there is one (buffer: name -> Buffer)."""
    ok = [s for s in slots if not s.accumulate and (place == "loop" or buffer(s.buffer).steps == "T")]
    return next((s for s in ok if buffer(s.buffer).dtype == dtype), ok[0])


def ones_buffer(dtype: str, plan_dtype: str) -> str:
    """The column of ones a vector gradient of values of `dtype` multiplies with."""
    return "ones" if dtype == plan_dtype else f"ones_{dtype}"


def _half_buffers(plan: Plan, buf: _Buffers, f_slots, b_slots, stacks, half_states: set[str]) -> None:
    """Mixed precision: the buffers GEMMs read their operands from (the input, the operands of the weight
    stacks, their incoming gradients), the output's (the next layer's input), the activations kept only
    for the backward pass and the input's products for all steps (rounded once the GEMM has summed them
    in fp32) hold half values. A state that no GEMM reads (an LSTM's cell state) is carried in fp32 (a
    ring), and its history for the backward is half where half_histories says so, else fp32."""
    half = plan.operand_type
    if half not in HALF_TYPES:
        return
    names = {"x", f_slots[plan.cell.output][0].buffer}
    names |= {f_slots[s.operand][0].buffer for s in stacks} | {s.gin for s in stacks}
    names |= {b.name for b in buf.all.values() if b.steps == "T" and b.inference == "1"}  # saved activations
    names |= {f_slots[op.outputs[0]][0].buffer for op in plan.forward.before if isinstance(op, Gemm)}  # W x, all steps
    names |= {f"hist_{s}" for s in half_states}  # the cell state's history (the step carries it in fp32)
    for name in names:
        buf.all[name] = dataclasses.replace(buf.all[name], dtype=half)
    for table in (f_slots, b_slots):
        for i, ss in table.items():
            if any(s.accumulate and s.buffer in names for s in ss):
                raise BackendUnavailable(f"precision {plan.schedule.precision}: a value is added into a half-precision "
                                         "buffer; this cell does not support mixed precision yet")


def _ones(plan: Plan, buf: _Buffers, b_slots) -> None:
    """The columns of ones the vector gradients multiply with (sums over rows), one per element type."""
    for place, vg in plan.backward.ops():
        if isinstance(vg, VectorGrad):
            slot = vector_grad_slot(b_slots[vg.node], buf.all.__getitem__, place, plan.dtype)
            dtype = buf.all[slot.buffer].dtype
            name = ones_buffer(dtype, plan.dtype)
            buf.all.setdefault(name, Buffer(name, dtype, ("one",), "T", fill=1.0))


def _stack_input(plan: Plan, buffers: dict[str, Buffer], f_slots, b_slots, out: Slot) -> bool:
    """Whether a stack's layer k + 1 can read its input in place from layer k's output (Storage.stack_input):
    only the input lives in the x buffer (so only the caller's transfer writes it), and the output is whole
    rows of a buffer of the same type kept for all steps in training and inference. Layer k + 1's input size
    is layer k's output size, so the rows are as wide."""
    x, y = buffers["x"], buffers[out.buffer]
    fwd, bwd = plan.forward.nodes, plan.backward.nodes
    inputs = {i for i, n in enumerate(fwd) if n.op == "input"}
    if any(sl.buffer == "x" for i, ss in f_slots.items() if i not in inputs for sl in ss):
        return False
    if any(sl.buffer == "x" for i, ss in b_slots.items() if not (bwd[i].op == "fwd" and bwd[i].attr in inputs)
           for sl in ss):
        return False
    whole = not out.col and y.width == (plan.cell.output_size,)
    kept = y.steps in ("T", "T+1") and y.inference in ("T", "T+1") and not y.alias and not x.alias
    return whole and kept and x.width == ("input",) and x.dtype == y.dtype


def assign_storage(plan: Plan) -> Plan:
    buf = _Buffers(plan.dtype)
    half = half_histories(plan)
    f_slots = _forward_slots(plan, buf, half)
    b_slots, stacks = _backward_slots(plan, buf, f_slots, half)
    in_place, stacks = write_in_place(plan, buf.all, f_slots, b_slots, stacks)
    _half_buffers(plan, buf, f_slots, b_slots, stacks, half)
    _ones(plan, buf, b_slots)
    _aliases(plan, buf, f_slots, stacks)
    cell = plan.cell
    out = f_slots[cell.output][0]
    states = [(s.name, s.size) for s in cell.states]
    first, last = ("0", "T") if plan.forward.loop.direction == "forward" else ("T", "0")  # history areas
    steps = [(n.attr, n.size) for n in cell.nodes if n.op == "stepin"]
    storage = Storage(
        align=8 if plan.operand_type in HALF_TYPES else 1,  # 16 bytes
        stack_input=_stack_input(plan, buf.all, f_slots, b_slots, out),
        in_place=in_place,
        buffers=tuple(buf.all.values()),
        forward=tuple((i, tuple(s)) for i, s in sorted(f_slots.items())),
        backward=tuple((i, tuple(s)) for i, s in sorted(b_slots.items())),
        stacks=stacks,
        inputs=(Transfer("x", "x", "input"),
                *(Transfer(f"step:{n}", f"step_{n}", size) for n, size in steps),
                *(Transfer(f"state:{n}", f"ring_{n}", size, step=first) for n, size in states if n in half),
                *(Transfer(f"state:{n}", f"hist_{n}", size, step=first) for n, size in states),
                Transfer("dy", "dy", cell.output_size),
                *(Transfer(f"dstate:{n}", f"dhist_{n}", size, step=last) for n, size in states)),
        outputs=(Transfer("y", out.buffer, cell.output_size, out.col, "all", out.step),
                 *(Transfer(f"state:{n}", f"{'ring' if n in half else 'hist'}_{n}", size, step=last)
                   for n, size in states),
                 Transfer("dx", "dx", "input"),
                 *(Transfer(f"dstate:{n}", f"dhist_{n}", size, step=first) for n, size in states)),
    )
    return dataclasses.replace(
        plan, storage=storage,
        forward=_copies(plan.forward, storage.slots("forward"), buf.all, ("input", "state", "stepin")),
        backward=_copies(plan.backward, storage.slots("backward"), buf.all, ("grad_in", "fwd")))

"""Calls: how every op runs, decided from the storage so the runtime only evaluates sizes and addresses.

Each GEMM-like op gets a GemmCall (row-major C[m, n] (+)= op(A) @ op(B) with its operands in memory, its
shapes and its types):
  forward GEMM     out [rows, sum of block rows] = v [rows, cols] @ W_run^T   (W_run: a run of the stack)
  backward GEMM    out [rows, cols] (+)= G_run [rows, sum of block rows] @ W_run (G: the stack's gin buffer)
  weight gradient  dW_run [sum of block rows, cols] += G_run^T @ V              (over B or T*B rows)
  vector gradient  d vector [1, n] += ones^T @ G                                 (a sum over rows)
with rows = B inside the loop and T*B before or after it. A block-diagonal matrix's GEMMs are batches of
one GEMM per block (GemmCall.heads), each on its slice of the features, with the strides between them. Each kernel gets its name, what it reads and
writes, and its launch shape: one thread per (row, element), or one warp per element when it computes
matrix-vector products itself (recurrent fusion).
"""

from __future__ import annotations

import dataclasses

from ..ir import HEADS, ROW, per_head
from ..plan import Copy, Gemm, GemmCall, Kernel, Launch, Operand, Phase, Plan, Slot, VectorGrad, WeightGrad, reduces
from .storage import _needed_outside, backward_roots, forward_roots, ones_buffer, vector_grad_slot

THREADS = 128  # per block
ROW_THREADS = 512  # per block of a row-fused launch (measured on the H200: 512 beat 128, 256 and 1024)


def _buffer(slot: Slot) -> Operand:
    return Operand("buffer", slot.buffer, slot.col, slot.step)


def _run(stack, matrices) -> tuple[int, int]:
    """(first, count) of the blocks of `matrices` in the stack: the whole stack (in any order), or a
    contiguous run."""
    if set(matrices) == set(stack.matrices):
        return 0, len(stack.matrices)
    first = stack.matrices.index(matrices[0])
    if stack.matrices[first:first + len(matrices)] != tuple(matrices):
        raise AssertionError(f"GEMM blocks {matrices} are not a run of the stack {stack.matrices}")
    return first, len(matrices)


def _calls(plan: Plan, phase_name: str, phase: Phase) -> Phase:
    st = plan.storage
    slots = st.slots(phase_name)
    f_slots = st.slots("forward")
    types = dict(a_type="", b_type="", c_type="", compute=plan.compute)  # filled in from the operands by _typed
    by_operand = {s.operand: s for s in st.stacks}
    nodes = phase.nodes

    def operand_type(o: Operand) -> str:
        if o.space == "buffer":
            return st.buffer(o.name).dtype
        if o.space == "grads":  # the master type, or the half parameters' own (Plan.grad_type)
            return plan.grad_type or plan.dtype
        return st.stack(o.name).dtype if o.space == "weights" else plan.dtype

    def whole_row(o: Operand, size: str) -> bool:
        """Whether a buffer operand is its buffer's whole row (so the row's padding follows it)."""
        return o.space == "buffer" and not o.offset and st.buffer(o.name).width == (size,)

    def padded(op, c: GemmCall) -> tuple[str, ...]:
        """Aligned storage (mixed precision): a GEMM over a padded stack's columns runs that dimension over
        the aligned width where the other operand is a whole buffer row, whose padding is zero (Workspace):
        the tensor cores' fast path needs it a multiple of 8 (measured on the H200: H = 500 took 1.2-1.9x
        the time of H = 504)."""
        if st.align == 1 or c.heads is not None or not isinstance(op, Gemm):
            return ()
        stack = st.stack(c.b.name)
        if not stack.padded:
            return ()
        if op.kind == "forward" and whole_row(c.a, stack.cols):
            return ("k",)  # v [rows, cols] @ W^T: the operand's padding times the stack's zero columns
        if op.kind == "backward" and whole_row(c.c, stack.cols):
            return ("n",)  # G @ W [rows, cols]: the result's padding gets the stack's zero columns
        return ()

    def call(place: str, op):
        c = _call(place, op)
        if c is None:
            return None
        c = dataclasses.replace(c, a_type=operand_type(c.a), b_type=operand_type(c.b), c_type=operand_type(c.c))
        return dataclasses.replace(c, padded=padded(op, c))

    def _call(place: str, op):
        rows = ("B",) if place == "loop" else ("T*B",)
        if isinstance(op, (Gemm, WeightGrad)):
            c = _heads_call(op, rows)
            if c is not None:
                return c
        if isinstance(op, Gemm) and op.kind == "forward":
            stack = by_operand[op.inputs[0]]
            first, count = _run(stack, op.matrices)
            out = slots[op.outputs[0]][0]
            return GemmCall(rows, stack.rows[first:first + count], (stack.cols,), _buffer(slots[op.inputs[0]][0]),
                            False, Operand("weights", stack.name, stack.rows[:first]), True, _buffer(out),
                            out.accumulate, **types)
        if isinstance(op, Gemm):
            v = next(v for m, g, v in plan.grad.d_matrices if m == op.matrices[0] and g == op.inputs[0])
            stack = by_operand[v]
            first, count = _run(stack, op.matrices)
            out = slots[op.outputs[0]][0]
            return GemmCall(rows, (nodes[op.outputs[0]].size,), stack.rows[first:first + count],
                            Operand("buffer", stack.gin, stack.rows[:first]), False,
                            Operand("weights", stack.name, stack.rows[:first]), False, _buffer(out),
                            out.accumulate or op.accumulate or op.init is not None, **types)
        if isinstance(op, WeightGrad):
            stack = by_operand[op.v]
            first, count = _run(stack, op.matrices)
            return GemmCall(stack.rows[first:first + count], (stack.cols,), rows,
                            Operand("buffer", stack.gin, stack.rows[:first]), True, _buffer(f_slots[op.v][0]),
                            False, Operand("grads", stack.name, stack.rows[:first]), True, **types)
        if isinstance(op, VectorGrad):
            slot = vector_grad_slot(slots[op.node], st.buffer, place, plan.dtype)
            ones = ones_buffer(st.buffer(slot.buffer).dtype, plan.dtype)
            if slot.interleave:  # a gradient stored head by head: one sum per block, the blocks side by side
                block, period = slot.interleave  # (sums: one block; the blocks of every matrix, equal)
                return GemmCall(("one",), block, rows, Operand("buffer", ones), True, _buffer(slot), False,
                                Operand("vector_grad", op.name), True, **types, heads=HEADS,
                                strides=((0,), (len(period), period[0]), block))
            return GemmCall(("one",), (nodes[op.node].size,), rows, Operand("buffer", ones), True, _buffer(slot),
                            False, Operand("vector_grad", op.name), True, **types)
        return None

    def _heads_call(op, rows):
        """A block-diagonal matrix (one per op: gate fusion leaves them apart): a batch of one GEMM per
        block, the k-th on the k-th slice of the operand's and the result's features and on block k."""
        if isinstance(op, Gemm) and op.kind == "forward":
            stack = by_operand[op.inputs[0]]
            out = slots[op.outputs[0]][0]
            a, c_acc = _buffer(slots[op.inputs[0]][0]), out.accumulate
        elif isinstance(op, Gemm):
            stack = by_operand[next(v for m, g, v in plan.grad.d_matrices
                                    if m == op.matrices[0] and g == op.inputs[0])]
            out = slots[op.outputs[0]][0]
        else:
            stack = by_operand[op.v]
        if not stack.heads:
            return None
        if stack.interleave:
            return _interleaved_call(op, rows, stack)
        (matrix,) = op.matrices
        first, _ = _run(stack, op.matrices)
        r, c = per_head(stack.rows[first]), stack.cols
        weights = stack.rows[:first]
        gin = Operand("buffer", stack.gin, stack.rows[:first])
        block = (r, c)
        if isinstance(op, Gemm) and op.kind == "forward":
            return GemmCall(rows, (r,), (c,), a, False, Operand("weights", stack.name, weights), True, _buffer(out),
                            c_acc, **types, heads=HEADS, strides=((c,), block, (r,)))
        if isinstance(op, Gemm):
            return GemmCall(rows, (c,), (r,), gin, False, Operand("weights", stack.name, weights), False,
                            _buffer(out), out.accumulate or op.accumulate or op.init is not None, **types, heads=HEADS,
                            strides=((r,), block, (c,)))
        return GemmCall((r,), (c,), rows, gin, True, _buffer(f_slots[op.v][0]), False,
                        Operand("grads", stack.name, weights), True, **types, heads=HEADS, strides=((r,), (c,), block))

    def _interleaved_call(op, rows, stack):
        """A stack of block-diagonal matrices stored head by head (WeightStack.interleave), all of it in one
        op: one batch over the heads, the k-th GEMM on the k-th block of every matrix at once (its rows
        adjacent in the stack: n blocks of r rows of c columns), on the operand's k-th slice of c features
        and on the k-th block of every matrix's values (adjacent too, Slot.interleave)."""
        n, r, c = len(stack.matrices), stack.interleave, stack.cols
        if _run(stack, op.matrices) != (0, n):
            raise AssertionError(f"{op.matrices}: a stack stored head by head is multiplied whole")
        weights, gin = Operand("weights", stack.name), Operand("buffer", stack.gin)
        block = (n, r, c)  # one head's rows of every matrix
        if isinstance(op, Gemm) and op.kind == "forward":
            out = slots[op.outputs[0]][0]
            return GemmCall(rows, (r,) * n, (c,), _buffer(slots[op.inputs[0]][0]), False, weights, True, _buffer(out),
                            out.accumulate, **types, heads=HEADS, strides=((c,), block, (n, r)))
        if isinstance(op, Gemm):
            out = slots[op.outputs[0]][0]
            return GemmCall(rows, (c,), (r,) * n, gin, False, weights, False, _buffer(out),
                            out.accumulate or op.accumulate or op.init is not None, **types, heads=HEADS,
                            strides=((n, r), block, (c,)))
        return GemmCall((r,) * n, (c,), rows, gin, True, _buffer(f_slots[op.v][0]), False,
                        Operand("grads", stack.name), True, **types, heads=HEADS, strides=((n, r), (c,), block))

    roots = forward_roots(plan) if phase_name == "forward" else backward_roots(plan)
    needed = _needed_outside(phase, roots)
    tag = "fwd" if phase_name == "forward" else "bwd"
    count = 0
    threads = THREADS

    def lower(place: str, op):
        nonlocal count
        if isinstance(op, Kernel):
            inside = set(op.nodes)
            matvecs = [i for i in op.nodes if nodes[i].op in ("matvec", "matvec_t")]  # (matvec_t: persistent)
            reads = {a for i in op.nodes for a in nodes[i].args if a not in inside}
            reads = sorted(a for a in reads if nodes[a].op not in ("param", "const"))
            writes = [(i, s) for i in op.nodes if i in needed for s in slots[i]]
            if reduces(phase, op):  # one block per row, over the features of every argument
                sizes = tuple(sorted({nodes[a].size for i in op.nodes for a in nodes[i].args}))
                launch = Launch(threads, 0, sizes, kind="rows")
            else:
                sizes = tuple(sorted({nodes[i].size for i in op.nodes} - {None, "one"})) or ("one",)
                launch = Launch(threads, threads // 32 if matvecs else threads, sizes)
            name = f"{plan.cell.name}_{tag}{count}"
            count += 1
            return dataclasses.replace(op, name=name, launch=launch, reads=tuple((a, slots[a][0]) for a in reads),
                                       writes=tuple(writes))
        c = call(place, op)
        return op if c is None else dataclasses.replace(op, call=c)

    before = tuple(lower("before", op) for op in phase.before)
    body = _row_launches([lower("loop", op) for op in phase.loop.body])
    after = tuple(lower("after", op) for op in phase.after)
    pers = phase.loop.persistent
    if pers is not None and any(isinstance(op, Copy) for op in phase.loop.body):
        pers = None  # a value copied between slots each step (storage): the persistent stages have no copies
    if pers is not None:  # its stages: named apart, all with the launch's block size
        needed = _needed_outside(phase.with_body(pers.stages), roots)
        tag, count, threads = f"{tag}_p", 0, pers.threads
        stages = _row_launches([lower("loop", op) for op in pers.stages], pers.threads)
        reverse = "_reverse" if phase.loop.direction == "reverse" else ""  # a reverse layer's kernel differs
        forwards = _forwards(nodes, stages, -1 if reverse else 1)
        pers = dataclasses.replace(pers, stages=stages, name=f"{plan.cell.name}_{tag[:3]}_persistent{reverse}",
                                   forwards=forwards, exchange=_exchange(plan, phase, stages, forwards),
                                   block_barriers=_block_barriers(plan, phase, stages))
    return dataclasses.replace(phase, before=before, loop=dataclasses.replace(phase.loop, body=body, persistent=pers),
                               after=after)


def _forwards(nodes, stages: tuple, ahead: int) -> tuple[tuple[int, int], ...]:
    """Persistent.forwards: in a kernel of one stage, each product operand that an item of the stage writes
    whole for the next step (same buffer and columns, the slot one step ahead in the loop's direction)."""
    if len(stages) != 1 or not isinstance(stages[0], Kernel):
        return ()
    (op,) = stages
    reads = dict(op.reads)
    operands = {a for i in op.nodes if nodes[i].op == "matvec" for a in nodes[i].args} & set(reads)
    return tuple(sorted({a: i for a in operands for i, slot in op.writes if not slot.accumulate and (
        slot.buffer, slot.col, slot.step - reads[a].step) == (reads[a].buffer, reads[a].col, ahead)}.items()))


def _exchange(plan: Plan, phase: Phase, stages: tuple, forwards: tuple[tuple[int, int], ...]) -> int | None:
    """Persistent.exchange: the operand a grid hands on through tagged words, where the one stage's only
    product operand is forwarded and is stored in float32 or half precision (the word holds the item's float32
    value and the step's number; staging rounds it to the operand's type, as the item's store does),
    and every element of the stage is an element of that operand (the blocks are spread over the stage's
    widest size: a block with elements of a wider size only would read words and write none, and the
    writers could overtake it)."""
    if len(forwards) != 1:
        return None
    (op,) = stages
    operands = {a for i in op.nodes if phase.nodes[i].op == "matvec" for a in phase.nodes[i].args}
    (a, _), = forwards
    sizes = {phase.nodes[i].size for i in op.nodes} - {None, ROW}
    dtype = plan.storage.buffer(dict(op.reads)[a].buffer).dtype
    if operands != {a} or dtype not in ("f32", "f16", "bf16") or reduces(phase, op) or sizes != {phase.nodes[a].size}:
        return None
    return a


def _block_barriers(plan: Plan, phase: Phase, stages: tuple) -> tuple[int, ...]:
    """Persistent.block_barriers: the stages after which a block barrier does what the grid barrier did. Without
    the grid barrier after stage A, a block may run the next stage B (in the next step, after the last stage)
    while others still run A; that is safe where B has no products (each item reads only its own element (b, j)),
    A and B spread the same size over the blocks (the same elements in the same block) and every place one of them
    writes that the other reads or writes (the same buffer area, as far as any ring of its areas can tell) is the
    same element: the same columns and size, and never a product's operand (A reads those rows whole). Never two
    in a row, so that no block runs more than one stage ahead; none in a kernel of one stage (its hand-off is
    Persistent.exchange) or beside a stage of rows."""
    n = len(stages)
    if n < 2 or any(op.launch.kind == "rows" for op in stages):
        return ()
    nodes = phase.nodes
    ahead = -1 if phase.loop.direction == "reverse" else 1
    buffers = {b.name: b for b in plan.storage.buffers}

    def memory(name: str) -> str:  # buffers that share memory in training (Buffer.alias) are one
        while buffers[name].alias is not None:
            name = buffers[name].alias
        return name

    def ring(name: str) -> int | None:  # the fewest areas the buffer has (None: one per step)
        counts = [int(c) for c in (buffers[name].steps, buffers[name].inference) if c in ("1", "2")]
        return min(counts) if counts else None

    def meet(x: Slot, y: Slot, d: int) -> bool | None:
        """Whether x at step t and y at step t + d may be the same memory: None where they may overlap in other
        elements (another buffer sharing its memory, other columns), True where they are the same elements."""
        if memory(x.buffer) != memory(y.buffer):
            return False
        if x.buffer != y.buffer:
            return None
        r = ring(x.buffer)
        if not (x.step == y.step + d if r is None else (x.step - y.step - d) % r == 0):
            return False
        return True if (x.col, x.interleave) == (y.col, y.interleave) else None

    def products(op) -> set:
        return {a for i in op.nodes if nodes[i].op in ("matvec", "matvec_t") for a in nodes[i].args}

    def safe(a, b, d: int) -> bool:
        if products(b) or set(a.launch.sizes) != set(b.launch.sizes) or len(a.launch.sizes) != 1:
            return False
        (size,) = a.launch.sizes
        whole = products(a)
        pairs = [(x, y) for x in a.writes for y in b.reads + b.writes] + [(x, y) for x in a.reads for y in b.writes]
        for (u, x), (v, y) in pairs:
            same = meet(x, y, d)
            if same is None or (same and (u in whole or nodes[u].size != size or nodes[v].size != size)):
                return False
        return True

    chosen: list[int] = []
    for k in range(n):
        if (k - 1) % n in chosen or (k == n - 1 and 0 in chosen):
            continue
        if safe(stages[k], stages[(k + 1) % n], ahead if k == n - 1 else 0):
            chosen.append(k)
    return tuple(chosen)


def _row_launches(body: list, threads: int = ROW_THREADS) -> tuple:
    """A kernel that others join (row fusion) launches one block per row for all of them, over the sizes
    of every stage."""
    for k, op in enumerate(body):
        if isinstance(op, Kernel) and not op.joins and k + 1 < len(body) and getattr(body[k + 1], "joins", False):
            group = [op]
            while k + len(group) < len(body) and getattr(body[k + len(group)], "joins", False):
                group.append(body[k + len(group)])
            sizes = tuple(sorted({s for g in group for s in g.launch.sizes}))
            body[k] = dataclasses.replace(op, launch=Launch(threads, 0, sizes, kind="rows"))
    return tuple(body)


def assign_calls(plan: Plan) -> Plan:
    return dataclasses.replace(plan, forward=_calls(plan, "forward", plan.forward),
                               backward=_calls(plan, "backward", plan.backward))

"""Invariants of a Plan, checked after every pass in the tests (tests/test_passes.py) and after the
whole pipeline whenever a program is built: a failure is a bug in a pass, never a user error."""

from __future__ import annotations

from .ir import LEAF_OPS
from .passes.fanout import alone, apart
from .passes.in_place import kernel_of, within
from .passes.overlay import overlay_holds
from .passes.storage import backward_roots, forward_roots
from .passes.wavefront import backward_blocker, chunk_rings, wavefront_blocker
from .plan import (COMPUTE_TYPES, ELEMENT_TYPES, HALF_TYPES, Copy, Fold, Gemm, Kernel, Operand, Phase, Plan,
                   VectorGrad, WeightGrad, reduces)


class PlanError(AssertionError):
    """A plan invariant does not hold: a bug in a pass, never a user error."""


def _written_by(op) -> tuple[int, ...]:
    if isinstance(op, Kernel):
        return op.nodes
    if isinstance(op, Gemm) and not op.ahead:  # (ahead: the next step's values of what `first` computed)
        return op.outputs
    return ()


def _read_by(phase: Phase, op) -> tuple[int, ...]:
    if isinstance(op, Kernel):
        inside = set(op.nodes)
        return tuple(a for i in op.nodes for a in phase.nodes[i].args if a not in inside)
    if isinstance(op, Gemm):
        return op.inputs + ((op.init,) if op.init is not None else ())
    if isinstance(op, WeightGrad):
        return op.g
    if isinstance(op, VectorGrad):
        return (op.node,)
    if isinstance(op, Fold):
        return ()
    return (op.node,)  # a Copy reads the value it copies


def _check_dataflow(phase: Phase, title: str) -> None:
    """Every value an op reads is a leaf, or computed before the loop, or earlier in the same step
    (ops after the loop may read any value the loop computed); every value is computed once."""
    computed: dict[int, str] = {}
    previous = None
    for where, op in phase.ops():
        if isinstance(op, Kernel) and op.joins and not (where == "loop" and isinstance(previous, Kernel)
                                                        and not any(phase.nodes[i].op == "matvec" for i in op.nodes)):
            raise PlanError(f"{title}: a kernel joins the launch of something that is not a step's kernel before it")
        previous = op
        for i in _read_by(phase, op):
            n = phase.nodes[i]
            if n.op in LEAF_OPS or i in computed and (computed[i] == "before" or where != "before"):
                continue
            raise PlanError(f"{title}: {type(op).__name__} ({where}) reads %{i} ({n.op}) before any op computes it")
        if isinstance(op, Gemm) and (op.first or op.ahead) and not _check_ahead(phase, op, where, computed):
            raise PlanError(f"{title}: a GEMM of the products of the loop's first step is not before the loop, or one "
                            "of the next step's is not in it after a GEMM before it that computes them first")
        adds = isinstance(op, Gemm) and op.accumulate  # a later GEMM of one sum adds into its output
        for i in _written_by(op):
            if (i in computed) != adds:
                raise PlanError(f"{title}: %{i} is computed twice" if not adds else
                                f"{title}: a GEMM adds into %{i} before any op computes it")
            computed[i] = where


def _check_ahead(phase: Phase, op: Gemm, where: str, computed: dict) -> bool:
    """A `first` GEMM is before the loop, reading a state; an `ahead` one is the loop's last op, after a `first`
    GEMM of the same outputs and matrices before the loop, and after a Fold of its projection."""
    if op.first:
        return where == "before" and not op.ahead and all(phase.nodes[i].op == "state" for i in op.inputs)
    firsts = [g for g in phase.before if isinstance(g, Gemm) and g.first]
    return (where == "loop" and phase.loop.body[-1] is op and all(computed.get(i) == "before" for i in op.outputs)
            and any((g.outputs, g.matrices) == (op.outputs, op.matrices) for g in firsts)
            and any(isinstance(f, Fold) and f.through == op.ahead for f in phase.before))


def _check_padded(plan: Plan, buffers, stacks, op, call, phase_name: str) -> None:
    """A GEMM over the aligned width (GemmCall.padded) reads only zero padding: a padded stack's, and a whole
    buffer row's, whose padding no op writes except with products of the stack's zero columns."""
    if not call.padded:
        return
    stack = stacks.get(call.b.name) if call.b.space == "weights" else None
    whole = {"k": call.a, "n": call.c}
    ok = (plan.storage.align > 1 and call.heads is None and isinstance(op, Gemm) and stack is not None
          and stack.padded and set(call.padded) <= {"k", "n"}
          and all(whole[d].space == "buffer" and not whole[d].offset
                  and buffers[whole[d].name].width == (stack.cols,) for d in call.padded)
          and ("k" not in call.padded or op.kind == "forward") and ("n" not in call.padded or op.kind == "backward"))
    if not ok:
        raise PlanError(f"{phase_name}: a GEMM runs {call.padded} over the aligned width without a padded stack "
                        "and a whole buffer row beside it")


def _check_storage(plan: Plan) -> None:
    st = plan.storage
    buffers = {b.name: b for b in st.buffers}
    for b in st.buffers:
        if b.rows and (b.steps, b.inference) != ("1", "1"):
            raise PlanError(f"buffer {b.name} is a matrix of {b.rows} rows over {b.steps} steps (one only)")
        if b.dtype not in ELEMENT_TYPES or b.steps not in ("1", "T", "T+1", "2") \
                or b.inference not in (None, "1", "T", "T+1", "2", "C"):
            raise PlanError(f"buffer {b.name}: bad element type or steps ({b.dtype}, {b.steps}, inference "
                            f"{b.inference})")
        if b.alias is not None and (b.alias not in buffers or buffers[b.alias].inference is not None
                                    or buffers[b.alias].width != b.width or buffers[b.alias].dtype != b.dtype):
            raise PlanError(f"buffer {b.name} shares memory with {b.alias}, which is not a training-only buffer "
                            "of its shape and type")
        if b.inference == "C" and (plan.chunks is None or b.name not in chunk_rings(plan)):
            raise PlanError(f"buffer {b.name} keeps one chunk's steps in inference, which it cannot: the forward "
                            "does not run chunk by chunk, or something but its own step reads it")
        why = None if b.over is None else overlay_holds(plan) if (b.name, b.over) == ("dx", "dy") else "only dx over dy"
        if why is not None:
            raise PlanError(f"buffer {b.name} takes {b.over}'s memory, which it cannot: {why}")
    slots = {"forward": st.slots("forward"), "backward": st.slots("backward")}
    for phase_name, table in slots.items():
        for i, ss in table.items():
            for s in ss:
                if s.buffer not in buffers:
                    raise PlanError(f"{phase_name} %{i}: slot in unknown buffer {s.buffer}")
    aliased = {b.name for b in st.buffers if b.alias}
    for i, ss in slots["backward"].items():
        if plan.backward.nodes[i].op == "fwd" and ss[0].buffer in aliased:
            raise PlanError(f"the backward reads %{i} from {ss[0].buffer}, whose memory the backward reuses")
    _check_in_place(plan, slots)
    stacks = {s.name: s for s in st.stacks}

    def operand_type(o: Operand) -> str:
        if o.space == "buffer":
            return buffers[o.name].dtype
        if o.space == "weights":
            return stacks[o.name].dtype
        return plan.grad_type or plan.dtype if o.space == "grads" else plan.dtype  # of the parameters' type

    for phase_name, phase in (("forward", plan.forward), ("backward", plan.backward)):
        table = slots[phase_name]
        # who writes what: no two values share a slot (values added into one slot may)
        owners: dict[tuple, int] = {}
        folded = {(op.outputs[0], op.init) for _, op in phase.ops() if isinstance(op, Gemm) and op.init is not None}
        folded |= {(v, p) for where, v, p in st.in_place if where == phase_name == "forward"}
        for where, op in phase.ops():
            writes = []
            if isinstance(op, Kernel):
                writes = list(op.writes)
            elif isinstance(op, Copy):
                writes = [(op.node, op.dst)]
            elif isinstance(op, Gemm):
                writes = [(o, table[o][0]) for o in op.outputs]
            for node, s in writes:
                key = (s.buffer, s.col, s.step)
                if owners.setdefault(key, node) != node and not s.accumulate and (node, owners[key]) not in folded:
                    raise PlanError(f"{phase_name}: %{node} and %{owners[key]} share the slot {key}")
            if isinstance(op, Copy):
                types = (buffers[op.src.buffer].dtype, buffers[op.dst.buffer].dtype)
                if types != (op.dtype, op.dst_type or op.dtype) or op.dst_type == op.dtype:
                    raise PlanError(f"{phase_name}: a copy of %{op.node} says its types are {op.dtype} -> "
                                    f"{op.dst_type or op.dtype}, its buffers hold {types[0]} -> {types[1]}")
                if where != "loop" and "1" in (buffers[op.src.buffer].steps, buffers[op.dst.buffer].steps):
                    raise PlanError(f"{phase_name}: a copy of all steps of %{op.node} into a one-step buffer")
            if isinstance(op, Kernel):
                if op.launch is None or not op.name:
                    raise PlanError(f"{phase_name}: a kernel without a name or launch shape")
                for node, s in op.reads:
                    if s not in table.get(node, ()) and not (phase_name == "backward"
                                                               and phase.nodes[node].op == "fwd"):
                        raise PlanError(f"{phase_name}: kernel {op.name} reads %{node} from {s}, not one of its slots")
            call = getattr(op, "call", None)
            if isinstance(op, (Gemm, WeightGrad, VectorGrad)) and call is None:
                raise PlanError(f"{phase_name}: {type(op).__name__} without a GemmCall")
            if call is not None:
                got = (operand_type(call.a), operand_type(call.b), operand_type(call.c))
                if got != (call.a_type, call.b_type, call.c_type) or call.compute not in COMPUTE_TYPES \
                        or call.a_type != call.b_type:
                    raise PlanError(f"{phase_name}: a GEMM's declared types {call.a_type, call.b_type, call.c_type}"
                                    f" / {call.compute} do not match its operands {got}")
                rows = ("B",) if where == "loop" or getattr(op, "first", False) else ("T*B",)
                if isinstance(op, Fold):
                    _check_fold(plan, buffers, op, where)
                elif rows not in (call.m, call.k):
                    raise PlanError(f"{phase_name}: a GEMM {where} the loop does not run over {rows[0]} rows")
                few = ("1", "2")  # (a forward-only workspace has the buffer's inference steps)
                if where != "loop" and not isinstance(op, Fold) and not getattr(op, "first", False) and \
                        any(o.space == "buffer" and (buffers[o.name].steps in few or phase_name ==
                                                                    "forward" and buffers[o.name].inference in few)
                                           for o in (call.a, call.b, call.c)):
                    raise PlanError(f"{phase_name}: a GEMM {where} the loop reads or writes all steps of a buffer "
                                    "that keeps one or two")
                _check_padded(plan, buffers, stacks, op, call, phase_name)
                if isinstance(op, (Gemm, WeightGrad)) and len(op.matrices) > 1 and call.heads is not None and \
                        not stacks[call.b.name if call.b.space == "weights" else call.c.name].interleave:
                    raise PlanError(f"{phase_name}: a batch of per-block GEMMs covers several matrices {op.matrices}, "
                                    "whose stack is not stored head by head")
            if isinstance(op, Copy) and (op.src.interleave or op.dst.interleave):
                raise PlanError(f"{phase_name}: a copy of %{op.node} between slots stored head by head (copies "
                                "move whole rows)")
    for phase_name, table in slots.items():
        for i, ss in table.items():
            if any(s.accumulate and buffers[s.buffer].dtype in HALF_TYPES for s in ss):
                raise PlanError(f"{phase_name} %{i} is added into a half-precision buffer")
    for s in st.stacks:
        if s.dtype != plan.operand_type:
            raise PlanError(f"weight stack {s.name} is {s.dtype}, the plan's GEMM operands {plan.operand_type}")
        if s.padded and (st.align == 1 or s.heads):
            raise PlanError(f"weight stack {s.name} is padded, but the storage is not aligned or it has heads")
        if s.interleave and any(r != s.rows[0] for r in s.rows):
            raise PlanError(f"weight stack {s.name} is stored head by head, but its matrices' rows differ")
    for t in st.inputs + st.outputs:
        if t.buffer not in buffers:
            raise PlanError(f"transfer {t.what}: unknown buffer {t.buffer}")
    f_slots = slots["forward"]
    for i in (plan.cell.output, *plan.cell.updates):
        if any(x.interleave for x in f_slots.get(i, ())):
            raise PlanError(f"%{i}, the output or a state update, lies head by head (its transfers and copies move "
                            "whole rows)")


def _check_fold(plan: Plan, buffers, op: Fold, where: str) -> None:
    """A Fold multiplies its two stacks, before the forward loop, into a one-step buffer of the first's rows."""
    c, st = op.call, plan.storage
    w = st.stack(op.stack)
    p = st.stack_of(op.through) if any(op.through in s.matrices for s in st.stacks) else None
    b = buffers.get(op.buffer)
    if (where != "before" or p is None or b is None or b.rows != w.rows or b.steps != "1" or b.inference != "1"
            or (c.a.space, c.a.name, c.b.space, c.b.name, c.c.space, c.c.name) !=
            ("weights", w.name, "weights", p.name, "buffer", b.name) or c.trans_a or c.trans_b
            or (c.m, c.n, c.k) != (w.rows, (p.cols,), (w.cols,))):
        raise PlanError(f"forward: the Fold of {op.stack} through {op.through} is not W P before the loop into a "
                        "one-step buffer of W's rows")


def _check_in_place(plan: Plan, slots) -> None:
    """Storage.in_place: an activation shares only the slot of a product that its own kernel reads once, on
    the way to it (and its persistent stage too); the backward reads the forward values of a buffer it
    writes gradients into only in the kernel that writes them, which reduces no rows."""
    fwd, bwd = plan.forward, plan.backward
    stages = fwd.loop.persistent.stages if fwd.loop.persistent else ()
    multiplied = {s.operand for s in plan.storage.stacks} | {op.v for _, op in bwd.ops() if isinstance(op, WeightGrad)}
    hosts = {slots["forward"][v][0].buffer for where, v, _ in plan.storage.in_place if where == "forward"}
    if any(slots["forward"][v][0].buffer in hosts for v in multiplied):
        raise PlanError("a weight gradient multiplies a value in a buffer the backward writes gradients over")
    for where, v, p in plan.storage.in_place:
        if where == "forward":
            k = kernel_of(fwd.loop.body, v)
            readers = [i for i, n in enumerate(fwd.nodes) if p in n.args]
            chain = within(fwd, k, v) if k is not None else set()
            stage = kernel_of(stages, v)
            if (k is None or reduces(fwd, k) or slots["forward"][v][0] != slots["forward"][p][0] or len(readers) != 1
                    or readers[0] not in chain or (stages and (stage is None or readers[0] not in stage.nodes))):
                raise PlanError(f"forward: %{v} is written over %{p}, which another thread or op may still read")
        else:
            k = kernel_of(bwd.loop.body, v)
            host = {sl.buffer for sl in slots["backward"][v]}
            reads = {i for i, n in enumerate(bwd.nodes) if n.op == "fwd" and slots["backward"][i][0].buffer in host}
            users = [j for j, n in enumerate(bwd.nodes) if set(n.args) & reads]
            if k is None or reduces(bwd, k) or any(j not in k.nodes for j in users):
                raise PlanError(f"backward: %{v} is written over forward values that another kernel reads")


PRODUCTS = ("matvec", "matvec_t")  # the nodes a persistent stage computes as products


def _check_persistent(plan: Plan, phase: Phase, title: str) -> None:
    """A persistent kernel's stages are kernels that compute exactly what the loop computes, each value
    once, each reading only leaves, values computed before the loop, or values of earlier stages (a grid
    barrier separates the stages); once calls are assigned, the launch is named and every value wanted
    after the step (a state update, the output, what the backward reads) is stored by a stage."""
    pers = phase.loop.persistent
    if not all(isinstance(op, Kernel) for op in pers.stages) or not pers.stages:
        raise PlanError(f"{title}: a persistent kernel's stages must be kernels")
    if pers.threads % 32 or not 32 <= pers.threads <= 1024:
        raise PlanError(f"{title}: a persistent kernel of {pers.threads} threads per block")
    before = {i for op in phase.before for i in _written_by(op)}
    computed: set[int] = set()
    for k, op in enumerate(pers.stages):
        if op.joins and (k == 0 or any(phase.nodes[i].op in PRODUCTS for i in op.nodes + pers.stages[k - 1].nodes)):
            raise PlanError(f"{title}: persistent stage {k} joins a stage it cannot run after in one block")
        if reduces(phase, op) and any(phase.nodes[i].op in PRODUCTS for i in op.nodes):
            raise PlanError(f"{title}: persistent stage {k} both reduces rows and computes products")
        for i in _read_by(phase, op):
            if phase.nodes[i].op not in LEAF_OPS and i not in before and i not in computed:
                raise PlanError(f"{title}: persistent stage {k} reads %{i} before a stage computes it")
        if computed & set(op.nodes):
            raise PlanError(f"{title}: persistent stages compute %{min(computed & set(op.nodes))} twice")
        computed |= set(op.nodes)
    in_loop = {i for op in phase.loop.body for i in _written_by(op)}
    # a GEMM that adds its products to a sum another op began (sum folding's init) computes them unnamed: a
    # stage names them, the sum's other term
    in_loop |= {a for op in phase.loop.body if isinstance(op, Gemm) and op.init is not None
                for a in phase.nodes[op.outputs[0]].args if a != op.init}
    if computed != in_loop:
        raise PlanError(f"{title}: the persistent stages compute {sorted(computed ^ in_loop)} differently from the loop")
    if pers.name:
        wanted = (forward_roots(plan) if title == "forward" else backward_roots(plan)) & computed
        stored = {i for op in pers.stages for i, _ in op.writes}
        if not all(op.name and op.launch for op in pers.stages) or wanted - stored:
            raise PlanError(f"{title}: the persistent stages do not store {sorted(wanted - stored)}")


def _check_fanout(phase: Phase, title: str) -> None:
    """Each group of GEMMs that run at once is a run of two or more consecutive GEMMs of the body that may
    run beside each other (passes/fanout.py), and no op is in two groups."""
    seen: set[int] = set()
    for g in phase.loop.fanout:
        if len(g) < 2 or list(g) != list(range(g[0], g[0] + len(g))) or g[-1] >= len(phase.loop.body) or seen & set(g):
            raise PlanError(f"{title}: GEMMs {g} that run at once are not a run of two or more of the step's ops")
        seen |= set(g)
        ops = [phase.loop.body[i] for i in g]
        why = next((w for w in map(alone, ops) if w), None) or next(
            (w for a in range(len(ops)) for b in range(a) if (w := apart(ops[a], ops[b]))), None)
        if why:
            raise PlanError(f"{title}: GEMMs {g} run at once, but {why}")


def verify(plan: Plan) -> None:
    """Check a plan's invariants at whatever stage it is: the dataflow of each phase (every value read is a
    leaf or computed earlier, every value computed once); once storage is assigned, that every slot is in
    a known buffer, no two values share a slot, a buffer reused by the backward is not read by it, and
    that the types agree at every GEMM and copy; once calls are assigned, that every op has one; a
    persistent kernel's stages (_check_persistent); the GEMMs that run at once (_check_fanout); and that a
    wavefront's forward runs chunk by chunk."""
    for title, phase in (("forward", plan.forward), ("backward", plan.backward)):
        if phase.loop.direction not in ("forward", "reverse"):
            raise PlanError(f"{title}: unknown loop direction {phase.loop.direction!r}")
        _check_dataflow(phase, title)
        _check_fanout(phase, title)
        if phase.loop.persistent is not None:
            _check_persistent(plan, phase, title)
    if plan.dtype not in ELEMENT_TYPES or plan.compute not in COMPUTE_TYPES or plan.operand_type not in ELEMENT_TYPES:
        raise PlanError(f"unknown element or compute type ({plan.dtype}, {plan.compute})")
    if (plan.operand_type in HALF_TYPES) != (plan.operand_type != plan.dtype) or \
            (plan.operand_type in HALF_TYPES and (plan.dtype, plan.compute) != ("f32", "fp32")) or \
            ((plan.dtype == "f64") != (plan.compute == "f64")):
        raise PlanError(f"inconsistent types: values {plan.dtype}, GEMM operands {plan.operand_type}, compute "
                        f"{plan.compute}")
    if plan.grad_type not in ("", plan.operand_type) or plan.grad_type and plan.operand_type not in HALF_TYPES:
        raise PlanError(f"weight gradients in {plan.grad_type}: only half parameters' own type, with half operands")
    if plan.grad_type and any(isinstance(op, WeightGrad) for op in plan.backward.loop.body):
        raise PlanError(f"weight gradients in {plan.grad_type} added up step by step: only batched ones are half")
    if plan.storage is not None and any(getattr(op, "call", None) for _, op in plan.forward.ops()):
        _check_storage(plan)
    if plan.wavefront is not None:  # a stack's forward chunk by chunk: only what a chunk can run
        why = wavefront_blocker(plan) if plan.storage is not None else "it has no storage yet"
        if why is not None or plan.wavefront.chunks < 1 or plan.wavefront.forced != (plan.schedule.wavefront == "on"):
            raise PlanError(f"the plan has a wavefront it cannot run: {why or plan.wavefront}")
        if plan.wavefront.backward and backward_blocker(plan) is not None:
            raise PlanError(f"the plan's backward wavefront cannot run: {backward_blocker(plan)}")

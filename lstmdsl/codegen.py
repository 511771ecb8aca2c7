"""Stage 4: Plan -> where every value lives, and the CUDA source of every pointwise kernel.

All decisions are made here, in Python; templates/pointwise.cu.j2 only prints a KernelDesc.

Storage. A value that leaves the kernel computing it (read by another op of the step, by a GEMM, saved
for the backward pass, a state update, the output, a gradient) lives in a buffer slot. Buffers are
[steps, B, width] arrays of float32 (width = a sum of symbolic sizes), with steps one of:
  "1"   one [B, width] area reused at every step,
  "T"   one area per step (saved activations, hoisted GEMM outputs, gradients kept for after the loop),
  "T+1" a history: slot t holds a state at the start of step t, slot t + 1 its update (no value is
        ever overwritten while another op may still read it; the output is a view of the history).
A slot is (buffer, column offset, step offset): at step t it is row b at [t + step offset, b, col:].
The incoming gradients of the matrices that share an operand v live side by side in one buffer
(Layout.gin[v]), in the order of v's weight stack, so one GEMM multiplies them with the stacked weights
(the gradient passed back to v) and one G^T V forms the stacked weight gradient. Two stacks that get
the same gradients (W x + R h: both products get d(gates)) share that buffer.

Memory in training. A forward buffer that the backward never reads (the hoisted input products) shares
its memory with a backward buffer of the same shape (Layout.aliases): the forward is done with it before
the backward writes there, and the next forward writes it again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import BackendUnavailable
from .ir import LEAF_OPS, Node
from .ops import OPS
from .plan import Gemm, Kernel, Plan
from .resources import resource_dir

@dataclass(frozen=True, slots=True)
class Buffer:
    name: str
    width: tuple[str, ...]  # the row width is the sum of these sizes
    steps: str  # "1" | "T" | "T+1"
    inference: str | None = None  # its steps in a forward-only workspace; None: the backward's alone


@dataclass(frozen=True, slots=True)
class Slot:
    buffer: str
    col: tuple[str, ...]  # the column offset is the sum of these sizes
    step: int = 0  # step offset: row b of step t is at [t + step, b]
    accumulate: bool = False  # written with += (the buffer starts at zero)


@dataclass(frozen=True)
class Layout:
    buffers: dict[str, Buffer]
    forward: dict[int, tuple[Slot, ...]]  # forward node -> its slots (reads use the first)
    backward: dict[int, tuple[Slot, ...]]
    stacks: dict[int, tuple[str, ...]]  # forward operand node -> the matrices stacked (by rows) on it
    transposes: dict[int, int]  # backward matvec_t node -> the forward operand whose stack it uses
    gin: dict[int, str]  # forward operand node -> the buffer of its stack's incoming gradients
    aliases: dict[str, str]  # forward-only buffer -> the backward buffer whose memory it uses in training


def weight_stacks(plan: Plan) -> dict[int, tuple[str, ...]]:
    """Forward operand -> the matrices applied to it, in node order: their parameters are stored as one
    [sum of rows, cols] array so a fused GEMM reads them as one matrix."""
    stacks: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    for n in plan.cell.nodes:
        if n.op == "matvec":
            (v,) = n.args
            if seen.setdefault(n.attr, v) != v:
                raise BackendUnavailable(f"matrix '{n.attr}' is applied to two different values; the CUDA "
                                         "backend stores each matrix in one stack and does not support this yet")
            stacks.setdefault(v, [])
            if n.attr not in stacks[v]:
                stacks[v].append(n.attr)
    return {v: tuple(ms) for v, ms in stacks.items()}


def _needed_outside(phase, roots) -> set[int]:
    """Non-leaf nodes of a phase whose value must be in memory: read by an op other than the kernel that
    computes it, produced by a GEMM, or a root."""
    where: dict[int, int] = {}
    for k, op in enumerate(phase.step):
        for i in (op.nodes if isinstance(op, Kernel) else op.outputs):
            where[i] = k
    for g in phase.before + phase.after:
        for i in g.outputs:
            where[i] = -1
    needed = set(roots)
    for k, op in enumerate(phase.step):
        if isinstance(op, Kernel):
            for i in op.nodes:
                needed.update(a for a in phase.nodes[i].args if where.get(a, k) != k)
        else:
            needed.update(op.inputs)
            needed.update(op.outputs)
    for g in phase.before + phase.after:
        needed.update(g.inputs)
        needed.update(g.outputs)
    return {i for i in needed if phase.nodes[i].op not in ("param", "const")}


def forward_roots(plan: Plan) -> set[int]:
    """Forward values wanted after the step: state updates, the output, what the backward pass reads."""
    return set(plan.cell.updates) | {plan.cell.output} | set(plan.saved)


def backward_roots(plan: Plan) -> set[int]:
    """Backward values wanted after the step: state and input gradients, parameter gradients' parts."""
    grad = plan.grad
    return ({d for d in grad.d_states + (grad.d_input, grad.d_input_t) if d is not None}
            | {v.node for v in plan.vector_grads} | {g for _, g, _ in grad.d_matrices})


def make_layout(plan: Plan) -> Layout:
    cell, grad = plan.cell, plan.grad
    fwd, bwd = plan.forward, plan.backward
    buffers: dict[str, Buffer] = {}
    f_slots: dict[int, list[Slot]] = {}
    b_slots: dict[int, list[Slot]] = {}

    def buf(name, width, steps, inference=None):
        buffers.setdefault(name, Buffer(name, tuple(width), steps, inference))
        return name

    # ---- forward
    buf("x", ("input",), "T", "T")
    saved = set(plan.saved)
    for i, n in enumerate(fwd.nodes):
        if n.op == "input":
            f_slots[i] = [Slot("x", ())]
        elif n.op == "state":
            f_slots[i] = [Slot(buf(f"hist_{n.attr}", (n.size,), "T+1", "T+1"), ())]
    for s, u in zip(cell.states, cell.updates):
        f_slots.setdefault(u, []).append(Slot(buf(f"hist_{s.name}", (s.size,), "T+1", "T+1"), (), step=1))
    for k, g in enumerate(fwd.before + tuple(op for op in fwd.step if isinstance(op, Gemm))):
        hoisted = k < len(fwd.before)
        emitted = hoisted or cell.output in g.outputs  # needed for all steps without a backward too
        keep = emitted or any(o in saved for o in g.outputs)
        width = tuple(fwd.nodes[o].size for o in g.outputs)
        if not hoisted and len(g.outputs) == 1 and g.outputs[0] in f_slots:
            continue  # a lone output with a home already (a state update): the GEMM writes it there
        name = buf(f"gemm{k}", width, "T" if keep else "1", "T" if emitted else "1")
        for j, o in enumerate(g.outputs):
            f_slots.setdefault(o, []).insert(0, Slot(name, width[:j]))
    for i in sorted(_needed_outside(fwd, forward_roots(plan))):
        if i not in f_slots:
            steps = "T" if (i in saved or i == cell.output) else "1"
            f_slots[i] = [Slot(buf(f"v{i}", (fwd.nodes[i].size,), steps, "T" if i == cell.output else "1"), ())]

    # ---- backward
    stacks = weight_stacks(plan)
    after = {i for g in bwd.after for i in g.inputs} | {i for w in plan.weight_grads if w.batched for i in w.g}
    state_size = {s.name: s.size for s in cell.states}
    buf("dy", (cell.output_size,), "T")
    buf("dx", ("input",), "T")
    for i, n in enumerate(bwd.nodes):
        if n.op == "grad_in":
            b_slots[i] = ([Slot("dy", ())] if n.attr == "output" else
                          [Slot(buf(f"dhist_{n.attr}", (state_size[n.attr],), "T+1"), (), step=1)])
        elif n.op == "fwd":
            b_slots[i] = [f_slots[n.attr][0]]
    def home(d: int, slot: Slot) -> None:
        """Give a gradient a slot: first for a computed value (its producer writes it there), after the
        leaf's own slot for an incoming gradient (its slot 0 holds the value, copied on from there)."""
        slots = b_slots.setdefault(d, [])
        slots.append(slot) if bwd.nodes[d].op in LEAF_OPS else slots.insert(0, slot)

    for s, d in zip(cell.states, grad.d_states):
        if d is not None:
            home(d, Slot(buf(f"dhist_{s.name}", (s.size,), "T+1"), ()))
    for d in (grad.d_input, grad.d_input_t):
        if d is not None:
            home(d, Slot("dx", (), accumulate=True))
    transposes: dict[int, int] = {}
    g_of = {(m, v): g for m, g, v in grad.d_matrices}
    gin: dict[int, str] = {}
    shared: dict[tuple, str] = {}  # (gradients, rows) -> the buffer that already holds them
    for v, matrices in stacks.items():
        rows = tuple(cell.param(m).shape[0] for m in matrices)
        gs = tuple(g_of[(m, v)] for m in matrices)
        if (gs, rows) in shared:
            gin[v] = shared[(gs, rows)]
            continue
        needed_after = any(g in after for g in gs)
        name = gin[v] = shared[(gs, rows)] = buf(f"gin{v}", rows, "T" if needed_after else "1")
        for j, g in enumerate(gs):
            b_slots.setdefault(g, []).append(Slot(name, rows[:j]))
    for i, n in enumerate(bwd.nodes):
        if n.op == "matvec_t":
            transposes[i] = next(v for m, g, v in grad.d_matrices if m == n.attr[0] and g == n.args[0])
    kept = {v.node for v in plan.vector_grads if v.batched}
    for i in sorted(_needed_outside(bwd, backward_roots(plan))):
        if i not in b_slots:
            b_slots[i] = [Slot(buf(f"b{i}", (bwd.nodes[i].size,), "T" if i in kept else "1"), ())]
    for vg in plan.vector_grads:  # read after the step (or the loop) from a slot nothing adds into
        steps = "T" if vg.node in kept else "1"
        if not any(not s.accumulate and (steps == "1" or buffers[s.buffer].steps == "T")
                   for s in b_slots[vg.node]):
            b_slots[vg.node].append(Slot(buf(f"b{vg.node}", (bwd.nodes[vg.node].size,), steps), ()))
    # forward buffers the backward never reads share memory with backward buffers of the same shape
    read_later = {"x", f_slots[cell.output][0].buffer}
    read_later |= {b.name for b in buffers.values() if b.name.startswith("hist_")}
    read_later |= {f_slots[n.attr][0].buffer for n in bwd.nodes if n.op == "fwd"}
    read_later |= {f_slots[v][0].buffer for v in stacks}
    hosts = [b for b in buffers.values() if b.inference is None and b.steps == "T" and b.name not in ("dy", "dx")]
    aliases: dict[str, str] = {}
    for b in buffers.values():
        if b.inference is not None and b.steps == "T" and b.name not in read_later:
            host = next((h for h in hosts if h.width == b.width and h.name not in aliases.values()), None)
            if host is not None:
                aliases[b.name] = host.name
    return Layout(buffers, {i: tuple(s) for i, s in f_slots.items()}, {i: tuple(s) for i, s in b_slots.items()},
                  stacks, transposes, gin, aliases)


# ------------------------------------------------------------------------------------------- kernels

@dataclass(frozen=True, slots=True)
class KernelArg:
    ctype: str
    name: str
    bind: tuple  # how the runtime fills it: ("batch",) | ("size", s) | ("param", name) | ("slot", node, k, "ptr"|"ld")


@dataclass(frozen=True, slots=True)
class KernelDesc:
    name: str
    args: tuple[KernelArg, ...]
    consts: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (size parameter, statements), one per size
    sizes: tuple[str, ...]  # the symbolic sizes of its groups (the launch covers the largest)
    warp: bool = False  # one warp per element (the kernel computes matrix-vector products), else one thread


def _literal(value: float) -> str:
    """An exact literal in the kernel's type: real(1.0), or real(0x1.999999999999ap-4) for 0.1."""
    return f"real({value:.1f})" if value == int(value) and abs(value) <= 2**24 else f"real({float(value).hex()})"


def _kernel(name: str, nodes: tuple[Node, ...], op: Kernel, slots: dict[int, tuple[Slot, ...]],
            needed: set[int]) -> KernelDesc:
    inside = set(op.nodes)
    warp = any(nodes[i].op == "matvec" for i in op.nodes)
    store = "if (lane == 0) " if warp else ""  # in warp mode every lane holds the value; one writes it
    args = [KernelArg("const int", "B", ("batch",))]
    sizes = sorted({nodes[i].size for i in op.nodes} - {None})
    operand_sizes = {nodes[nodes[i].args[0]].size for i in op.nodes if nodes[i].op == "matvec"}
    args += [KernelArg("const int", f"n_{s}", ("size", s)) for s in sorted(set(sizes) | operand_sizes)]
    consts, lines = [], {s: [] for s in sizes}
    elementwise = {a for i in op.nodes if nodes[i].op != "matvec" for a in nodes[i].args if a not in inside}
    operands = {nodes[i].args[0] for i in op.nodes if nodes[i].op == "matvec"} - inside
    for a in sorted(elementwise | operands):
        n = nodes[a]
        if n.op == "const":
            consts.append(f"const real v{a} = {_literal(n.attr)};")
        elif n.op == "param":
            args.append(KernelArg("const real* __restrict__", f"p{a}", ("param", n.attr)))
            lines[n.size].append(f"const real v{a} = p{a}[j];  // {n.attr} [{n.size}]")
        else:
            args.append(KernelArg("const real* __restrict__", f"in{a}", ("slot", a, 0, "ptr")))
            args.append(KernelArg("const int", f"ld_in{a}", ("slot", a, 0, "ld")))
            if a in elementwise:
                lines[n.size].append(f"const real v{a} = in{a}[b * ld_in{a} + j];")
    for i in op.nodes:
        n = nodes[i]
        if n.op == "const":
            consts.append(f"const real v{i} = {_literal(n.attr)};")
            continue
        if n.op == "param":
            args.append(KernelArg("const real* __restrict__", f"p{i}", ("param", n.attr)))
            lines[n.size].append(f"const real v{i} = p{i}[j];  // {n.attr} [{n.size}]")
            continue
        if n.op == "matvec":  # row j of the matrix times the operand's row b: lanes stride over k
            (a,) = n.args
            cols = f"n_{nodes[a].size}"
            args.append(KernelArg("const real* __restrict__", f"w{i}", ("matrix", n.attr)))
            lines[n.size] += [f"real v{i} = real(0);  // {n.attr} [{n.size}, {nodes[a].size}]",
                              f"for (int k = lane; k < {cols}; k += 32) "
                              f"v{i} += w{i}[(size_t)j * {cols} + k] * in{a}[b * ld_in{a} + k];",
                              f"v{i} = warp_sum(v{i});"]
        else:
            expr = OPS[n.op].cuda.format(*(f"v{a}" for a in n.args))
            lines[n.size].append(f"const real v{i} = {expr};")
        if i in needed:
            for k, slot in enumerate(slots[i]):
                args.append(KernelArg("real* __restrict__", f"out{i}_{k}", ("slot", i, k, "ptr")))
                args.append(KernelArg("const int", f"ld_out{i}_{k}", ("slot", i, k, "ld")))
                lines[n.size].append(f"{store}out{i}_{k}[b * ld_out{i}_{k} + j] "
                                     f"{'+=' if slot.accumulate else '='} v{i};")
    groups = tuple((f"n_{s}", tuple(lines[s])) for s in sizes)
    return KernelDesc(name, tuple(args), tuple(consts), groups, tuple(sizes), warp)


def kernel_descs(plan: Plan, layout: Layout) -> tuple[tuple[KernelDesc, ...], tuple[KernelDesc, ...]]:
    """The forward and backward KernelDescs, one per Kernel op of each phase's step, in order."""
    cell = plan.cell
    out = []
    for phase_name, phase, slots, roots in (("fwd", plan.forward, layout.forward, forward_roots(plan)),
                                            ("bwd", plan.backward, layout.backward, backward_roots(plan))):
        needed = _needed_outside(phase, roots)
        kernels = [op for op in phase.step if isinstance(op, Kernel)]
        out.append(tuple(_kernel(f"{cell.name}_{phase_name}{k}", phase.nodes, op, slots, needed)
                         for k, op in enumerate(kernels)))
    return out[0], out[1]


def traffic_per_step(plan: Plan, descs: tuple[tuple[KernelDesc, ...], tuple[KernelDesc, ...]],
                     sizes: dict[str, int], batch: int) -> dict[str, dict[str, int]]:
    """Bytes (fp32) that one step reads and writes in memory, per phase: the GEMMs (operand, weights,
    result) and the kernels (each value read or written once, parameters once)."""
    out = {}
    for title, phase, kernels in (("forward", plan.forward, descs[0]), ("backward", plan.backward, descs[1])):
        gemm_bytes = 0
        for op in phase.step:
            if isinstance(op, Gemm):
                rows = [sizes[plan.cell.param(m).shape[0]] for m in op.matrices]
                cols = sizes[plan.cell.param(op.matrices[0]).shape[1]]
                R = sum(rows)
                gemm_bytes += 4 * (batch * cols + R * cols + batch * R)
        kernel_bytes = 0
        for k in kernels:
            for a in k.args:
                if a.bind[0] == "matrix":  # a fused product reads its weights once per batch row (fp32)
                    rows, cols = plan.cell.param(a.bind[1]).shape
                    kernel_bytes += 4 * batch * sizes[rows] * sizes[cols]
                elif a.bind[0] == "param":
                    kernel_bytes += 4 * sizes[plan.cell.param(a.bind[1]).shape[0]]
                elif a.bind[0] == "slot" and a.bind[3] == "ptr":
                    kernel_bytes += 4 * batch * sizes[phase.nodes[a.bind[1]].size]
        out[title] = {"gemm": gemm_bytes, "kernels": kernel_bytes}
    return out


def template_text() -> str:
    return (resource_dir("templates") / "pointwise.cu.j2").read_text()


@functools.lru_cache(maxsize=None)
def _template() -> "jinja2.Template":  # noqa: F821 (imported here: a cached program needs no jinja2)
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.get_template("pointwise.cu.j2")


REAL = {"float32": "float", "float64": "double"}


def render(plan: Plan, forward: tuple[KernelDesc, ...], backward: tuple[KernelDesc, ...],
           dtype: str = "float32") -> str:
    """The CUDA source of all the plan's kernels in one element type (the macro `real`): deterministic, so
    equal plans give equal source."""
    return _template().render(cell=plan.cell.name, schedule=plan.schedule.describe(), real=REAL[dtype],
                              kernels=forward + backward)

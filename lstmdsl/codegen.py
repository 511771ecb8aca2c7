"""Stage 4: the CUDA source of a plan's kernels.

The plan has decided everything (what each kernel computes, what it reads and writes and where, the
element types, the launch shape); here each Kernel op becomes a KernelDesc, a small frozen description
of one kernel's parameters and statements, and templates/pointwise.cu.j2 only prints it. A KernelArg
says how the runtime fills it (ArgBind: the batch, a size, a vector parameter, a run of a weight stack,
a slot's address or leading dimension), so the contract between code generation and the runtime is
typed and kernels are found by name.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from . import draws
from .cache import files_digest
from .ir import ROW, per_head
from .kerneldesc import (AddDesc, ArgBind, CachedWeights, KernelArg, KernelDesc, PersistentDesc, Product,
                         StagedOperand, StepArea, StepPointer)
from .ops import OPS
from .plan import HALF_TYPES, Copy, Kernel, Launch, Phase, Plan, Slot, reduces
from .resources import resource_dir
from .version import __version__

# element type -> C type in memory (the half types: templates/half_types.cu.j2)
CTYPES = {"f32": "float", "f64": "double", "bf16": "lstmdsl_bf16", "f16": "lstmdsl_f16"}
REAL = {"f32": "float", "f64": "double"}  # the plan's element type -> the type kernels compute in


def _literal(value: float) -> str:
    """An exact literal in the kernel's type: real(1.0), or real(0x1.999999999999ap-4) for 0.1."""
    return f"real({value:.1f})" if value == int(value) and abs(value) <= 2**24 else f"real({float(value).hex()})"


def _fresh(expr: str, fresh: bool) -> str:
    """A load of a slot's element; fresh: from L2, past the multiprocessor's L1 (inside a persistent kernel a
    slot read at one step may have been written by another block since: L1 is not coherent between them)."""
    return f"ld_fresh(&{expr})" if fresh else expr


def _at(name: str, slot: Slot, args: list) -> str:
    """Element j's column in a slot: j, or its place in a slot stored head by head (Slot.interleave)."""
    if not slot.interleave:
        return "j"
    args += [KernelArg("const int", f"h{k}_{name}", ArgBind("dim", offset=v)) for k, v in zip("bp", slot.interleave)]
    return f"(j / hb_{name}) * hp_{name} + j % hb_{name}"


def _reduction(plan: Plan, phase: Phase, op: Kernel, fresh: bool = False) -> KernelDesc:
    """One block per row: each thread folds its share of every argument's features, the block combines
    them, thread 0 stores the result (a per-row scalar). Arguments are named by node (in<a>, p<a>,
    out<i>_<k>), as in pointwise kernels, so the stages of a row-fused launch share them."""
    nodes = phase.nodes
    (i,) = op.nodes
    n = nodes[i]
    reads = dict(op.reads)
    if any(s.interleave for _, s in op.reads + op.writes):  # (storage.interleaved: never with reductions)
        raise AssertionError(f"{op.name}: a reduction over values stored head by head")
    args = [KernelArg("const int", "B", ArgBind("batch"))]
    args += [KernelArg("const int", f"n_{s}", ArgBind("size", s)) for s in sorted({nodes[a].size for a in n.args})]
    loads = []
    for a in dict.fromkeys(n.args):
        x = nodes[a]
        if x.op == "param":
            args.append(KernelArg(f"const {CTYPES[plan.dtype]}* __restrict__", f"p{a}", ArgBind("vector", x.attr)))
        else:
            slot = reads[a]
            args.append(KernelArg(f"const {CTYPES[plan.storage.buffer(slot.buffer).dtype]}* __restrict__", f"in{a}",
                                  ArgBind("ptr", slot=slot)))
            args.append(KernelArg("const int", f"ld_in{a}", ArgBind("ld", slot=slot)))
    for a in n.args:
        x = nodes[a]
        loads.append((f"real(p{a}[j])" if x.op == "param" else
                      f"real({_fresh(f'in{a}[(size_t)b * ld_in{a} + j]', fresh)})", f"n_{x.size}"))
    stores = []
    for k, slot in enumerate(s for node, s in op.writes if node == i):
        ctype = CTYPES[plan.storage.buffer(slot.buffer).dtype]
        args.append(KernelArg(f"{ctype}* __restrict__", f"out{i}_{k}", ArgBind("ptr", slot=slot)))
        args.append(KernelArg("const int", f"ld_out{i}_{k}", ArgBind("ld", slot=slot)))
        stores.append(f"out{i}_{k}[(size_t)b * ld_out{i}_{k}] {'+=' if slot.accumulate else '='} {ctype}(acc);")
    divisor = " + ".join(f"n_{nodes[a].size}" for a in n.args) if n.op == "mean" else ""
    kind = "max" if n.op == "rowmax" else "sum"
    return KernelDesc(op.name, tuple(args), (), (), op.launch, (kind, tuple(loads), divisor, tuple(stores)))


def _kernel(plan: Plan, phase: Phase, op: Kernel, stage: bool = False, cached: bool = False,
            fresh: bool = False, forwards: tuple[tuple[int, int], ...] = (), exchange: int | None = None) -> KernelDesc:
    """A kernel's description; stage: as a stage of a row-fused launch (its threads stride over the
    features of the row, whatever the launch of the group says); cached: as a stage of a persistent kernel,
    a thread per item, whose products the block has computed into P<node> (its rows of the weights,
    sw<node>, times the staged operand: templates, block_products); fresh: slots are loaded past L1
    (_fresh); forwards: (operand, node) pairs whose stores also go to the staged row (Persistent.forwards);
    exchange: the forwarded operand whose stores also go to the exchange area, tagged (Persistent.exchange)."""
    if reduces(phase, op):
        return _reduction(plan, phase, op, fresh or cached)
    fresh = fresh or cached
    nodes = phase.nodes
    st = plan.storage
    inside = set(op.nodes)
    warp = not stage and not cached and op.launch.per_block != op.launch.threads
    store = "if (lane == 0) " if warp else ""  # in warp mode every lane holds the value; one writes it
    sizes = tuple(sorted({nodes[i].size for i in op.nodes} - {None, ROW})) if stage else \
        tuple(s for s in op.launch.sizes if s != ROW)
    products = {i for i in op.nodes if nodes[i].op in ("matvec", "matvec_t")}
    operand_sizes = {nodes[a].size for i in products for a in nodes[i].args}
    divisors = {s for i in op.nodes if nodes[i].op == "expand" for s in nodes[i].attr}
    args = [KernelArg("const int", "B", ArgBind("batch"))]
    args += [KernelArg("const int", f"n_{s}", ArgBind("size", s))
             for s in sorted(set(sizes) | operand_sizes | divisors)]
    consts, lines, preloads = [], {s: [] for s in sizes}, []  # preloads: KernelDesc.preloads
    lines[ROW] = consts  # per-row scalars: every thread of the row computes them, before the vectors
    stores = {s: [] for s in lines}  # a stage that exchanges its state: the item's stores, after its exchange
    store_row = "if (j == 0 && lane == 0) " if warp else "if (j == 0) "
    reads = dict(op.reads)
    elementwise = {a for i in op.nodes if i not in products for a in nodes[i].args if a not in inside}
    operands = {a for i in products for a in nodes[i].args} - inside

    def param(a, n):  # a vector parameter's element j; preloaded like the inputs (below) in a product stage:
        # loaded after the products' barrier, on the step's critical path, it waited on L2 (the cached weights
        # leave L1 little room). Not in f64, whose registers are too few for them (FGR's forward spilled)
        if not (cached and products) or plan.dtype == "f64":
            return f"real(p{a}[j])"
        preloads.append(("" if n.size == ROW else f"n_{n.size}", a, f"p{a}[j]", CTYPES[plan.dtype]))
        return f"item == (int)threadIdx.x ? real(pre{a}) : real(p{a}[j])"
    for a in sorted(elementwise | operands):
        n = nodes[a]
        if n.op == "const":
            consts.append(f"const real v{a} = {_literal(n.attr)};")
        elif n.op == "param":
            args.append(KernelArg(f"const {CTYPES[plan.dtype]}* __restrict__", f"p{a}", ArgBind("vector", n.attr)))
            lines[n.size].append(f"const real v{a} = {param(a, n)};  // {n.attr} [{n.size}]")
        else:
            slot = reads[a]
            ctype = CTYPES[st.buffer(slot.buffer).dtype]
            args.append(KernelArg(f"const {ctype}* __restrict__", f"in{a}", ArgBind("ptr", slot=slot)))
            args.append(KernelArg("const int", f"ld_in{a}", ArgBind("ld", slot=slot)))
            if a in operands and cached and slot.interleave:  # (stage_operand gathers it: hb, hp)
                _at(f"in{a}", slot, args)
            if a in elementwise:
                index = f"b * ld_in{a}" if n.size == ROW else f"b * ld_in{a} + {_at(f'in{a}', slot, args)}"
                raw = _fresh(f'in{a}[{index}]', fresh)
                load = f"real({raw})"
                # its first item's value loaded early (preloads, issued where the stage starts; a row's
                # value, one per batch row, has no bound on j), kept in the slot's type until it is used (a
                # conversion where it was loaded, half to float, made the warp wait for the load there: ncu,
                # fp16, B = 16, H = 256, 5% of the stall samples)
                if cached and products:
                    preloads.append(("" if n.size == ROW else f"n_{n.size}", a, raw, ctype))
                    load = f"item == (int)threadIdx.x ? real(pre{a}) : {load}"
                lines[n.size].append(f"const real v{a} = {load};")
    for i in op.nodes:
        n = nodes[i]
        if n.op == "const":
            consts.append(f"const real v{i} = {_literal(n.attr)};")
            continue
        if n.op == "param":
            args.append(KernelArg(f"const {CTYPES[plan.dtype]}* __restrict__", f"p{i}", ArgBind("vector", n.attr)))
            lines[n.size].append(f"const real v{i} = {param(i, n)};  // {n.attr} [{n.size}]")
            continue
        if n.op == "matvec":  # row j of the matrix times the operand's row b: lanes stride over k
            (a,) = n.args
            cols = f"n_{nodes[a].size}"
            stack = st.stack_of(n.attr)
            # (a stack stored head by head: from its first row, where the kernel finds the matrix's rows)
            offset = () if cached and stack.interleave else stack.rows[:stack.matrices.index(n.attr)]
            args.append(KernelArg(f"const {CTYPES[stack.dtype]}* __restrict__", f"w{i}",
                                  ArgBind("weights", stack.name, offset)))
            args.append(KernelArg("const int", f"ldw{i}", ArgBind("ldw", stack.name)))
            comment = f"  // {n.attr} [{n.size}, {nodes[a].size}]"
            if cached:  # computed before the pointwise work, by the whole block (templates: block_products)
                args += _head_args(plan, i, n.attr)
                lines[n.size].append(f"const real v{i} = P{i}[(b - b0) * J + (j - j0)];{comment}")
            else:
                lines[n.size] += [f"real v{i} = real(0);{comment}", f"for (int k = lane; k < {cols}; k += 32) "
                                  f"v{i} += real(w{i}[(size_t)j * ldw{i} + k]) * real(in{a}[b * ld_in{a} + k]);",
                                  f"v{i} = warp_sum(v{i});"]
        elif n.op == "matvec_t":  # a sum of transposed products (a backward's): a persistent stage's only
            if not cached:  # (stepwise, it is a GEMM)
                raise AssertionError(f"{op.name}: a transposed product outside a persistent kernel")
            parts = []
            for m, (a, matrix) in enumerate(zip(n.args, n.attr)):
                stack = st.stack_of(matrix)
                offset = () if stack.interleave else stack.rows[:stack.matrices.index(matrix)]  # (as matvec's)
                args.append(KernelArg(f"const {CTYPES[stack.dtype]}* __restrict__", f"w{i}_{m}",
                                      ArgBind("weights", stack.name, offset)))
                args.append(KernelArg("const int", f"ldw{i}_{m}", ArgBind("ldw", stack.name)))
                args += _head_args(plan, f"{i}_{m}", matrix)
                parts.append(f"P{i}_{m}[(b - b0) * J + (j - j0)]")
            lines[n.size].append(f"const real v{i} = {' + '.join(parts)};  // {' | '.join(n.attr)} transposed")
        elif n.op == "expand":  # a per-row scalar over the vector (over its width for a mean's gradient)
            divisor = " + ".join(f"n_{s}" for s in n.attr)
            lines[n.size].append(f"const real v{i} = v{n.args[0]}" + (f" / real({divisor});" if divisor else ";"))
        else:
            expr = OPS[n.op].cuda.format(*(f"v{a}" for a in n.args))
            lines[n.size].append(f"const real v{i} = {expr};")
        for k, slot in enumerate(s for node, s in op.writes if node == i):
            ctype = CTYPES[st.buffer(slot.buffer).dtype]
            args.append(KernelArg(f"{ctype}* __restrict__", f"out{i}_{k}", ArgBind("ptr", slot=slot)))
            args.append(KernelArg("const int", f"ld_out{i}_{k}", ArgBind("ld", slot=slot)))
            index, guard = (f"b * ld_out{i}_{k}", store_row) if n.size == ROW else (
                f"b * ld_out{i}_{k} + {_at(f'out{i}_{k}', slot, args)}", store)
            (stores if exchange is not None else lines)[n.size].append(
                f"{guard}out{i}_{k}[{index}] {'+=' if slot.accumulate else '='} {ctype}(v{i});")
        lines[n.size] += [f"if (forwarding) sh{a}[(b - b0) * ld_sh{a} + j] = "  # (the staged buffer's type)
                          f"{CTYPES[st.buffer(reads[a].buffer).dtype]}(v{i});" for a, w in forwards if w == i]
        lines[n.size] += [f"if (exchanging) exchange_put(xw{a}, float(v{i}), s + 1);"
                          for a, w in forwards if w == i and a == exchange]
    for a, w in forwards:  # the exchange word's address first: found after the math, behind the branch on
        if a == exchange and w in inside:  # `exchanging`, its 64-bit arithmetic was on the step's critical path
            lines[nodes[w].size].insert(0, f"unsigned long long* const xw{a} = xchg + ((size_t)((s + 1) & 1) * B + b)"
                                           f" * n_{nodes[a].size} + j;")
    for s in stores:  # a grid's exchanged words go out first: stores drain in order, and the item's ~7 warp-wide
        lines[s] += stores[s]  # stores of its activations had been issued before them (values stay in registers)
    groups = tuple((f"n_{s}", tuple(lines[s])) for s in sizes)
    launch = Launch(op.launch.threads, op.launch.threads, sizes or (ROW,)) if stage else op.launch
    return KernelDesc(op.name, _in_place_args(op, args), tuple(consts), groups, launch, preloads=tuple(preloads))


def _in_place_args(op: Kernel, args: list[KernelArg]) -> tuple[KernelArg, ...]:
    """No __restrict__ on pointers into an area the kernel reads and writes (Storage.in_place): loads first."""
    both = {(s.buffer, s.step) for _, s in op.reads} & {(s.buffer, s.step) for _, s in op.writes}
    return tuple(replace(a, ctype=a.ctype.replace(" __restrict__", ""))
                 if a.bind.kind == "ptr" and (a.bind.slot.buffer, a.bind.slot.step) in both else a for a in args)


def _row_group(plan: Plan, phase: Phase, ops: list[Kernel], fresh: bool = False) -> KernelDesc:
    """The launch of a kernel and the kernels that join it (row fusion): its stages, and the arguments of
    all of them (one each: stages name them by node)."""
    stages = tuple(_kernel(plan, phase, op, stage=True, fresh=fresh) for op in ops)
    args = {}
    for s in stages:  # no __restrict__: a stage reads what an earlier stage of the launch wrote, through
        for a in s.args:  # another pointer, and must not take the read-only (non-coherent) cache path
            args.setdefault(a.name, KernelArg(a.ctype.replace(" __restrict__", ""), a.name, a.bind))
    return KernelDesc(ops[0].name, tuple(args.values()), (), (), ops[0].launch, stages=stages)


def _persistent(plan: Plan, phase: Phase) -> PersistentDesc:
    """The persistent kernel of a phase's loop (plan.Persistent): its stages' descriptions, with every
    slot's address computed per step inside the kernel and the products' weights cached per block."""
    pers = phase.loop.persistent
    nodes = phase.nodes
    groups = []
    for op in pers.stages:
        if op.joins:
            groups[-1].append(op)
        else:
            groups.append([op])
    stages, widest, widths, cached, staged, products = [], [], [], [], [], []
    for group in groups:
        op = group[0]
        if len(group) > 1 or reduces(phase, op):
            stages.append(_row_group(plan, phase, group, fresh=True) if len(group) > 1
                          else _reduction(plan, phase, op, fresh=True))
            widest.append("")
            widths.append(())
            staged.append(())
            products.append(())
            continue
        desc = _kernel(plan, phase, op, cached=True, forwards=pers.forwards, exchange=pers.exchange)
        stages.append(desc)
        widths.append(tuple(size[2:] for size, _ in desc.groups))
        widest.append(_widest(desc))
        operands, by_types = {}, {}
        for i in op.nodes:
            if nodes[i].op not in ("matvec", "matvec_t"):
                continue
            transposed = nodes[i].op == "matvec_t"  # a sum of products, one per (operand, matrix) pair
            pairs = zip(nodes[i].args, nodes[i].attr) if transposed else [(nodes[i].args[0], nodes[i].attr)]
            for m, (a, matrix) in enumerate(pairs):
                stack = plan.storage.stack_of(matrix)
                key = f"{i}_{m}" if transposed else i
                rows, cols = f"n_{nodes[i].size}", f"n_{nodes[a].size}"
                if stack.interleave and not stack.heads:  # (passes/persistent.py refuses them)
                    raise AssertionError(f"{pers.name}: products of whole matrices stored head by head")
                cached.append(CachedWeights(key, CTYPES[stack.dtype], rows, cols, widest[-1], widths[-1],
                                            transposed, (f"hr{key}", f"hc{key}") if stack.heads else (),
                                            (stack.matrices.index(matrix), len(stack.matrices))
                                            if stack.interleave else ()))
                slot = dict(op.reads)[a]
                ctype = CTYPES[plan.storage.buffer(slot.buffer).dtype]
                operands[a] = StagedOperand(a, ctype, cols, (f"hb_in{a}", f"hp_in{a}") if slot.interleave else ())
                by_types.setdefault((CTYPES[stack.dtype], ctype), []).append(
                    Product(key, a, rows, cols, CTYPES[stack.dtype], ctype))
        staged.append(tuple(operands[a] for a in sorted(operands)))
        products.append(tuple(tuple(ps) for ps in by_types.values()))
    args, pointers = {}, {}
    args["B"] = KernelArg("const int", "B", ArgBind("batch"))
    args["T"] = KernelArg("const int", "T", ArgBind("steps"))
    args["bar"] = KernelArg("unsigned int*", "bar", ArgBind("barrier"))
    args["cached"] = KernelArg("const int", "cached", ArgBind("cached"))
    args["stage_rows"] = KernelArg("const int", "stage_rows", ArgBind("stage_rows"))
    args["split"] = KernelArg("const int", "split", ArgBind("split"))
    if pers.exchange is not None:
        args["exchange"] = KernelArg("const int", "exchange", ArgBind("exchanging"))
        args["xchg"] = KernelArg("unsigned long long*", "xchg", ArgBind("exchange"))
    buffers, areas = {}, {}  # buffer -> its first slot's name (its ring and stride args); (buffer, step) -> area
    for desc in stages:
        for a in (x for d in (desc.stages or (desc,)) for x in d.args):
            if a.name in args or a.name in pointers:
                continue
            ctype = a.ctype.replace(" __restrict__", "")  # other blocks write what a stage reads
            if a.bind.kind == "ptr":
                slot = a.bind.slot
                if slot.buffer not in buffers:  # (stride and ring are the buffer's: runtime/issue.py)
                    buffers[slot.buffer] = a.name
                    args[a.name + "_s"] = KernelArg("const int", a.name + "_s", ArgBind("stride", slot=slot))
                    args[a.name + "_m"] = KernelArg("const int", a.name + "_m", ArgBind("ring", slot=slot))
                area = areas.setdefault((slot.buffer, slot.step),
                                        StepArea(f"area{len(areas)}", slot.step, buffers[slot.buffer]))
                pointers[a.name] = StepPointer(ctype, a.name, area)
                args[a.name + "_0"] = KernelArg(ctype, a.name + "_0", ArgBind("ptr0", slot=slot))
            else:
                args[a.name] = KernelArg(ctype, a.name, a.bind)
    # each stage computes the addresses it uses at its start (all of them at the step's start kept every
    # one live through the step: a kernel of many stages ran out of registers)
    uses = tuple(tuple(pointers[name] for name in dict.fromkeys(a.name for d in (desc.stages or (desc,))
                                                                for a in d.args if a.name in pointers))
                 for desc in stages)
    handed = {pers.exchange} | {a for a, _ in pers.forwards}
    if any(o.heads and o.node in handed for ops in staged for o in ops):  # (those are states, never interleaved)
        raise AssertionError(f"{pers.name}: an operand stored head by head handed on between steps")
    for k in pers.block_barriers:  # (the pass compares the stages' sizes; the kernel spreads their widest)
        if not widest[k] or widest[k] != widest[(k + 1) % len(widest)]:
            raise AssertionError(f"{pers.name}: a block barrier after stage {k} between stages of other elements")
    return PersistentDesc(pers.name, tuple(args.values()), tuple(stages), tuple(widest), tuple(widths),
                          tuple(pointers.values()), tuple(areas.values()), tuple(cached), tuple(staged), pers.threads,
                          phase.loop.direction == "reverse", products=tuple(products),
                          real_bytes=8 if REAL[plan.dtype] == "double" else 4, stage_pointers=uses,
                          forwarded=tuple(a for a, _ in pers.forwards),
                          exchanged=next((o for ops in staged for o in ops if o.node == pers.exchange), None),
                          block_barriers=pers.block_barriers)


def _head_args(plan: Plan, key: int | str, matrix: str) -> list[KernelArg]:
    """A persistent stage's arguments of a block-diagonal matrix's blocks (rows and columns per head:
    CachedWeights.heads), none for a whole matrix."""
    p = plan.cell.param(matrix)
    if not p.heads:
        return []
    return [KernelArg("const int", f"hr{key}", ArgBind("dim", offset=(per_head(p.shape[0]),))),
            KernelArg("const int", f"hc{key}", ArgBind("dim", offset=(p.shape[1],)))]


def _widest(desc: KernelDesc) -> str:
    """The C expression of a stage's widest size (its elements are spread over the blocks by it)."""
    sizes = [size for size, _ in desc.groups] or ["1"]
    return functools.reduce(lambda expr, size: f"max({expr}, {size})", sizes[1:], sizes[0])


def add_kernel(plan: Plan) -> AddDesc | None:
    """The kernel for copies that add into their slot, when the plan has any."""
    adds = [op for phase in (plan.forward, plan.backward) for _, op in phase.ops()
            if isinstance(op, Copy) and op.dst.accumulate]
    return AddDesc(f"{plan.cell.name}_add", CTYPES[plan.dtype]) if adds else None


def kernel_descs(plan: Plan) -> dict[str, KernelDesc]:
    """Kernel name -> KernelDesc, for every Kernel op of the plan (forward, then backward, in order)."""
    out = {}
    for phase in (plan.forward, plan.backward):
        for place in (phase.before, phase.loop.body, phase.after):
            for k, op in enumerate(place):
                if not isinstance(op, Kernel) or op.joins:
                    continue
                group = [op]
                while k + len(group) < len(place) and getattr(place[k + len(group)], "joins", False):
                    group.append(place[k + len(group)])
                out[op.name] = _kernel(plan, phase, op) if len(group) == 1 else _row_group(plan, phase, group)
        if phase.loop.persistent is not None:
            out[phase.loop.persistent.name] = _persistent(plan, phase)
    return out


TEMPLATES = ("pointwise.cu.j2", "persistent.cu.j2", "half_types.cu.j2", "half_products.cu.j2", "convert.cu.j2")


def generator_digest() -> str | None:
    """A digest of what turns kernel descriptions into CUDA source (lstmdsl's version, the templates, this module,
    kerneldesc.py, ops.py), read once per process and templates folder (probes render from an edited copy:
    resource_dir points at it). In the key of every source in the disk cache (program.build_program,
    runtime/specialise.request): a changed generator never gets an earlier one's source."""
    return _digest(str(resource_dir("templates")))


@functools.lru_cache(maxsize=None)
def _digest(templates: str) -> str | None:
    here = Path(__file__).parent
    code = [here / name for name in ("codegen.py", "kerneldesc.py", "ops.py")]
    return files_digest([Path(templates) / name for name in TEMPLATES] + code, __version__)


@functools.lru_cache(maxsize=None)
def _template(name: str = "pointwise.cu.j2") -> "jinja2.Template":  # noqa: F821 (a cached program needs no jinja2)
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.get_template(name)


def render(plan: Plan, kernels: dict[str, KernelDesc], add: AddDesc | None = None) -> str:
    """The CUDA source of all the plan's kernels: deterministic, so equal plans give equal source."""
    return _template().render(cell=plan.cell.name, schedule=plan.schedule.describe(), real=REAL[plan.dtype],
                              kernels=list(kernels.values()), add=add, halves=plan.operand_type in HALF_TYPES,
                              special=None)


def render_persistent(plan: Plan, desc: PersistentDesc, constants: dict[str, int], blocks: int) -> str:
    """The source of one persistent kernel compiled for a launch's shape (plan.Persistent.specialises): its
    arguments of that shape (desc.shape_args, by name: constants) and its grid (blocks) constants in its body;
    the parameters stay, so the launch passes the same arguments as to the general kernel. Deterministic."""
    names = {a.name for a in desc.shape_args()}
    if set(constants) != names or not all(isinstance(v, int) and not isinstance(v, bool) for v in constants.values()):
        raise AssertionError(f"{desc.name}: constants {sorted(constants)} for the shape arguments {sorted(names)}")
    return _template().render(cell=plan.cell.name, schedule=plan.schedule.describe(), real=REAL[plan.dtype],
                              kernels=[desc], add=None, halves=plan.operand_type in HALF_TYPES,
                              special={"constants": {a.name: constants[a.name] for a in desc.shape_args()},
                                       "blocks": int(blocks)})


def render_helpers(real: str = "float") -> str:
    """The device functions every module starts with (templates/pointwise.cu.j2), without kernels: for tests
    that call them from a kernel of their own (the fast sigmoid and tanh's error, tests/test_gpu.py)."""
    return _template().render(cell="helpers", schedule="none", real=real, kernels=[], add=None, halves=False,
                              special=None)


CONVERSIONS = (("f32", "bf16"), ("bf16", "f32"), ("f32", "f16"), ("f16", "f32"))


def convert_name(src: str, dst: str) -> str:
    return f"lstmdsl_convert_{src}_{dst}"


def render_draws() -> str:
    """The source of the regularisers' uniform draws (runtime/draws.py; lstmdsl/draws.py has the constants)."""
    return _template("draws.cu.j2").render(gamma=draws.GAMMA, mix1=draws.MIX1, mix2=draws.MIX2)


def render_conversions() -> str:
    """The source of the converting copies between f32 and the half types (runtime/convert.py)."""
    return _template("convert.cu.j2").render(
        pairs=[(convert_name(a, b), CTYPES[a], CTYPES[b]) for a, b in CONVERSIONS])

"""`lstmdsl compile --emit plan`: a Plan as text (plan.py says what the plan holds), and the bytes a step
moves at bound sizes."""

from __future__ import annotations

from .passes.persistent import why_not_persistent
from .passes.wavefront import backward_blocker, wavefront_blocker
from .kerneldesc import KernelDesc
from .passes.projection import NO_PROJECTION, fold_blocker
from .plan import (ELEMENT_TYPES, HALF_TYPES, Copy, Fold, Gemm, GemmCall, Kernel, Operand, Phase, Plan, Slot,
                   VectorGrad, WeightGrad)

def format_plan(plan: Plan, sizes: dict[str, int] | None = None, batch: int | None = None) -> str:
    """The plan as text (for `lstmdsl compile --emit plan`): the buffers with their types, the weight
    stacks, and every op with its shapes, types, operands and launch (symbolic sizes, or numbers; at a known
    batch also the cuBLAS workspace the GEMMs take there)."""

    def dim(expr) -> str:
        if sizes is None:
            return " + ".join(expr) or "0"
        env = dict(sizes, one=1)
        known = [s for s in expr if s in env]
        value = sum(env[s] for s in known)
        rest = [s for s in expr if s not in env]
        return " + ".join(([str(value)] if known else []) + rest) or "0"

    def slot(s: Slot) -> str:
        where = s.buffer + (f"[t{s.step:+d}]" if s.step else "[t]")
        return (where + (f"[:, {dim(s.col)}:]" if s.col else "")
                + (f" (blocks of {dim(s.interleave[0])} every {dim(s.interleave[1])})" if s.interleave else "")
                + (" (+=)" if s.accumulate else ""))

    def operand(o: Operand) -> str:
        if o.space == "buffer":
            return slot(Slot(o.name, o.offset, o.step))
        return f"{o.space}:{o.name}" + (f"[{dim(o.offset)}:]" if o.offset else "")

    def call(c: GemmCall | None) -> str:
        if c is None:
            return ""
        strides = ", ".join(" * ".join(str(s) if isinstance(s, int) else dim((s,)) for s in stride) or "1"
                            for stride in c.strides)
        batch = f"\n      for each of the {dim((c.heads,))} blocks (strides {strides} elements):" if c.heads else ""
        return (f"{batch}\n      C[{dim(c.m)}, {dim(c.n)}] {'+=' if c.accumulate else '='} "
                f"{operand(c.a)}{'^T' if c.trans_a else ''} @ {operand(c.b)}{'^T' if c.trans_b else ''}"
                f" -> {operand(c.c)};  k = {dim(c.k)}; types {c.a_type} x {c.b_type} -> {c.c_type}, "
                f"compute {c.compute}" + (f"; {' and '.join(c.padded)} over the aligned rows" if c.padded else ""))

    def op_text(phase: Phase, op) -> str:
        if isinstance(op, Gemm):
            what = (f"GEMM {op.kind}  {' | '.join(op.matrices)}  %{', %'.join(map(str, op.inputs))} -> "
                    f"%{', %'.join(map(str, op.outputs))}" + (" (accumulate)" if op.accumulate else "")
                    + (" (the loop's first step only)" if op.first else "")
                    + (f" (for the next step: through {op.ahead}, whose product is the next state)" if op.ahead else ""))
            return what + call(op.call)
        if isinstance(op, Fold):
            return f"fold  {op.stack} @ {op.through} (the product the step's GEMM reads)" + call(op.call)
        if isinstance(op, Kernel):
            ops = sorted({phase.nodes[i].op for i in op.nodes})
            text = f"kernel {op.name or '?'}  {len(op.nodes)} ops ({', '.join(ops)})"
            if op.joins:
                text += "\n      launch: a stage of the launch before it (row fusion), after a barrier"
            elif op.launch is not None and op.launch.kind == "rows":
                ln = op.launch
                text += (f"\n      launch: grid ({ln.rows}, 1), {ln.threads} threads (one block per row, over "
                         f"{', '.join(dim((s,)) for s in ln.sizes)})")
            elif op.launch is not None:
                ln = op.launch
                text += (f"\n      launch: grid (ceil(max({', '.join(dim((s,)) for s in ln.sizes)}) / "
                         f"{ln.per_block}), {ln.rows}), {ln.threads} threads"
                         + (" (one warp per element)" if ln.per_block != ln.threads else ""))
            if op.launch is not None:
                text += "\n      reads:  " + (", ".join(f"%{i} {slot(s)}" for i, s in op.reads) or "-")
                text += "\n      writes: " + (", ".join(f"%{i} {slot(s)}" for i, s in op.writes) or "-")
            return text
        if isinstance(op, WeightGrad):
            return f"weight gradient  d[{' ; '.join(op.matrices)}] += G^T V (V = forward %{op.v})" + call(op.call)
        if isinstance(op, VectorGrad):
            return f"vector gradient  d {op.name} += sum over rows of %{op.node}" + call(op.call)
        types = f"{op.dtype} -> {op.dst_type}" if op.dst_type else op.dtype
        return f"copy %{op.node} ({dim((op.size,))} wide, {types}): {slot(op.src)} -> {slot(op.dst)}"

    cell = plan.cell
    lines = [f"plan for cell {cell.name}: {plan.schedule.describe()}",
             f"element type {plan.dtype}, GEMM compute type {plan.compute}"
             + (f", GEMM operands and weight stacks {plan.operand_type} (fp32 master weights)"
                if plan.operand_type != plan.dtype else "")]
    st = plan.storage
    if st is not None:
        lines.append("buffers ([steps, B (a matrix: its rows), width]; inference: steps in a forward-only workspace):")
        for b in st.buffers:
            extra = [f"inference {b.inference}" if b.inference else "training only"]
            extra += [f"shares memory with {b.alias}"] if b.alias else []
            extra += [f"takes {b.over}'s memory where the sizes make them one shape, then zeroed after the loop (in "
                      "a wavefront after each chunk's steps)"
                      + (", else before the backward" if b.zero else "")] if b.over else \
                ["zeroed before the backward"] if b.zero else []
            extra += [f"filled with {b.fill:g}"] if b.fill is not None else []
            extra += ["a ring: step t uses area t mod 2"] if b.steps == "2" else []
            extra += ["C: one chunk's steps, a ring, where a forward-only workspace runs in chunks, else T"] \
                if b.inference == "C" else []
            extra += ["a matrix, recomputed at every forward"] if b.rows else []
            lines.append(f"  {b.name:<12} {b.dtype}  [{b.steps}, {dim(b.rows) if b.rows else 'B'}, {dim(b.width)}]  "
                         f"({'; '.join(extra)})")
        if st.align > 1:
            lines.append(f"  (rows padded to a multiple of {st.align} elements, the weight stacks' too: aligned "
                         "for the tensor cores)")
        lines.append("weight stacks ([rows, cols]):")
        for s in st.stacks:
            lines.append(f"  {s.name:<12} {s.dtype}  [{dim(s.rows)}, {dim((s.cols,))}] = "
                         f"{' ; '.join(s.matrices)} on %{s.operand}; incoming gradients in {s.gin}"
                         + (f"; the GEMMs read it head by head (blocks of {dim((s.interleave,))} rows of each matrix "
                            "in turn: a permuted copy)" if s.interleave else ""))
        for title, transfers in (("in", st.inputs), ("out", st.outputs)):
            lines.append(f"the caller's {title}: " + ", ".join(
                f"{x.what} = {x.buffer}[{x.step if x.step != 'all' else f'{x.first}..'}]"
                + (f"[:, {dim(x.col)}:]" if x.col else "") for x in transfers))
        if st.stack_input:
            lines.append("in a stack, a layer's x is the layer below's y, in place (no copy, no second buffer)")
        fwd_moves = [(v, p) for where, v, p in st.in_place if where == "forward"]
        if fwd_moves:
            over = ", ".join(f"%{v} over %{p}" for v, p in fwd_moves)
            gins = sorted({str(p) for where, _, p in st.in_place if where == "backward"})
            lines.append(f"in place: the forward writes the activations it keeps over the input products they are "
                         f"computed from ({over})" + (f"; the backward writes the gradients of {', '.join(gins)} over "
                                                      "those activations (a second backward needs the forward again)"
                                                      if gins else ""))
    for title, phase in (("forward", plan.forward), ("backward", plan.backward)):
        launches = sum(not isinstance(op, Copy) and not getattr(op, "joins", False) for op in phase.loop.body)
        lines.append(f"{title} ({phase.loop.direction} in time): {launches} launches per step")
        for where, op in phase.ops():
            label = {"before": "before the loop: ", "loop": "each step:       ", "after": "after the loop:  "}[where]
            lines.append(f"  {label} " + op_text(phase, op))
        for g in phase.loop.fanout:  # (1-based positions among the step's ops above)
            lines.append(f"  GEMMs {g[0] + 1}-{g[-1] + 1} of the step run at once, each on a stream of its own "
                         "(in the stepwise loop of a layer run alone: not in a layer wavefront, with use_fanout "
                         "off or while profiling)")
        if title == "forward" and plan.schedule.fold_projection and st is not None:
            why = fold_blocker(plan)
            if why is None:
                lines.append("  the projection folded into the step's GEMM (`fold projection`): the products of the "
                             "next step a step ahead, the projected states over all steps after the loop")
            elif why != NO_PROJECTION:  # (a cell without a projection: nothing to say)
                lines.append(f"  no projection folded (`fold projection`): {why}")
        pers = phase.loop.persistent
        if pers is None and title == "forward" and plan.schedule.persistent == "auto":
            lines.append("  no persistent schedule: `persistent auto` has one only for cells of one or two stages with "
                         "recurrent products in fp32 and tf32 (two: of square matrices; the input's products hoisted) "
                         "and of one in bf16 and fp16, where it was measured faster than the stepwise loop; "
                         "`persistent` forces it where it can run")
        why = why_not_persistent(plan, title)
        if why is not None:
            lines.append(f"  no persistent schedule, though the schedule says persistent: {why}; the stepwise loop "
                         "above runs")
        if pers is not None:
            rule = ("always (the schedule says persistent)" if pers.forced else
                    "when a step's multiply-adds over the batch are "
                    + " or ".join([f"{r[1]}-{r[2]} at {f'{r[3]} <= ' if len(r) > 3 else ''}B <= {r[0]}"
                                   for r in pers.work]
                                  + [f"{lo}-{hi} at B <= {b} in a layer of one direction"
                                     for b, lo, hi in pers.alone_work]
                                  + [f"{lo}-{hi} at B <= {b} in a direction of a bidirectional layer whose grid "
                                     f"takes its 1/{pers.beside_grids} of the multiprocessors"
                                     for b, lo, hi in pers.beside_work]
                                  + [f"{lo}-{hi} at B <= {b} where all the weights fit one block"
                                     for b, lo, hi in pers.split_work]
                                  + [f"{lo}-{hi} a batch row at B <= {b} where all the weights fit one block"
                                     for b, lo, hi in pers.row_work])
                    + " and the weights fit in the blocks' shared memory")
            rule += " (in a stack, the wavefront below wins)" if plan.wavefront is not None and not pers.forced else ""
            lines.append(f"  or the persistent schedule, {rule}: all steps as one cooperative launch "
                         f"{pers.name or '?'} of {pers.threads} threads per block; one block when a step is at "
                         f"most {pers.one_block_work} multiply-adds, else"
                         + (" (where the weights fit one block) blocks that each hold all of them and run their "
                            "share of the batch rows alone, with no grid barrier, or" if pers.split_batch else "")
                         + " one per multiprocessor; the weight rows (in the "
                         "backward, the columns of the transposed products) "
                         "in shared memory for all steps; a grid barrier after each stage"
                         + ("".join(f"{' but' if i == 0 else ','} stage {k + 1}"
                                    for i, k in enumerate(pers.block_barriers))
                            + " (a block barrier there: the next stage touches only the block's own elements)"
                            if pers.block_barriers else "")
                         + (" (one block with every row staged hands its state to the next step in shared memory)"
                            if pers.forwards else "")
                         + ("; a grid of several blocks hands it on in tagged words instead, with no grid barrier"
                            if pers.exchange is not None and pers.exchange_words else "")
                         + (f"; a direction of a bidirectional layer sizes its grid for 1/{pers.beside_grids} of the "
                            "multiprocessors where its weights fit there, so that both directions' grids run at once"
                            if pers.beside_grids > 1 else "") + ":")
            lines.append("    each launch's kernel " + {
                "on": "compiled for its shape (the schedule says specialise): batch, sizes and grid as constants, "
                      "compiled at the first call of a shape",
                "off": "the one that takes every size at run time (the schedule says no specialise)",
                "auto": "compiled for its shape (batch, sizes and grid as constants) on a thread of its own while the "
                        "one that takes every size runs, then used from the next call on; not for a grid that hands "
                        f"its state on in tagged words at B > {pers.specialise_batch}" if pers.specialise_auto else
                        "the one that takes every size at run time (`specialise auto` compiles one per shape only "
                        "in float32 layers, where it was measured; `specialise` "
                        "forces it)"}[
                pers.specialise])
            half = any(s.dtype in HALF_TYPES for s in plan.storage.stacks)
            tiles = ("tensor-core tiles of 16 x 8 over the gates' rows together (mma.sync)" if half else
                     "tiles of 4 rows x 4 batch rows, or a group of lanes a sum at small sizes")
            for op in pers.stages:  # (a product stage: the block's products as register tiles, then a thread
                # per element, not the warp per element its stepwise launch would have)
                lines.append("    stage " + op_text(phase, op).replace("\n      ", "\n        ").replace(
                    " (one warp per element)", f" (the block's products as {tiles})"))
    lines.append(f"  saved per step for the backward pass: {len(plan.saved)} values")
    wave = plan.wavefront
    if wave is not None:
        rule = "always (the schedule says wavefront), " if wave.forced else ""
        rule += "its layers on the stepwise loop" + (", unless the schedule says persistent" if not wave.forced and
                                                      plan.forward.loop.persistent is not None else "")
        lines.append(f"in a stack, the forward as a layer wavefront, {rule}: the sequence in {wave.chunks} chunks of "
                     "ceil(T / chunks) steps, each layer on a stream of its own; layer l runs chunk j (its input "
                     "GEMM over the chunk's rows, then its steps" + (", then its projected states over the chunk's "
                     "rows" if plan.forward.after else "") + ") once layer l-1 has run chunk j")
        lines.append("in a stack, the backward as a wavefront too: the layers from the top down, chunk by chunk, each "
                     "handing its dx there down as the dy of the layer below; each layer's rings its own"
                     if wave.backward else
                     f"in a stack, the backward runs the layers one after the other: {backward_blocker(plan)}")
    elif st is not None:
        lines.append(f"in a stack, the layers run one after the other: {wavefront_blocker(plan)}")
    if plan.chunks is not None:
        c = plan.chunks
        lines.append(f"a forward-only workspace runs its forward in {c.chunks} chunks of ceil(T / chunks) steps (a "
                     f"layer alone: at least {c.min_rows} rows a chunk; each chunk its input GEMMs over the chunk's "
                     "rows, then its steps" + (", then the GEMMs after the loop over its rows" if plan.forward.after
                                               else "") + "), keeping one chunk's steps of the buffers "
                     f"of inference C, where those would take {c.min_bytes >> 20} MiB or more over all steps and the "
                     "layer runs the stepwise loop" + (" (a persistent kernel reads every step's)" if
                                                      plan.forward.loop.persistent is not None else ""))
    lines += [workspace_text(plan, batch)] if _gemm_kinds(plan) else []
    return "\n".join(lines)


def _gemm_kinds(plan: Plan) -> list[bool]:
    """Whether each kind of GEMM the plan has takes half-precision operands (True first): [], [True], [False] or
    [True, False]."""
    return sorted({c.a_type in HALF_TYPES for phase in (plan.forward, plan.backward) for _, op in phase.ops()
                   if (c := getattr(op, "call", None)) is not None}, reverse=True)


def workspace_text(plan: Plan, batch: int | None = None) -> str:
    """The cuBLAS workspace rule (Plan.gemm_workspace), and at a known batch what the GEMMs take (by their A
    operand's type, as the runtime chooses: a half-precision plan's float32 GEMMs, e.g. vector gradients, too)."""
    w, mib = plan.gemm_workspace, lambda n: f"{n / (1 << 20):g} MiB"
    text = (f"cuBLAS workspace, a lane (a stack's wavefront: a lane a layer): {mib(w.half)} for half-precision GEMMs, "
            f"for fp32 and tf32 ones {mib(w.full)} at B > {w.small_batch} and {mib(w.small)} at B <= {w.small_batch}"
            + (f" or where every phase a workspace runs is one persistent kernel over T * B <= {w.persistent_rows} rows"
               if plan.forward.loop.persistent is not None else "")
            + (f", {mib(w.wave)} on a stack's wavefront lanes at B > {w.small_batch}"
               + (f" (cuBLASLt's first kernel for {mib(w.full)}, or cublasGemmEx with {mib(w.fallback(w.wave))})"
                  if w.first_kernels(w.wave) else "")
               if plan.wavefront is not None and w.wave != w.full else ""))
    if batch is None:
        return text
    kinds = _gemm_kinds(plan)
    sizes = [mib(w.nbytes(batch, half)) + (" (half-precision GEMMs)" if half else " (float32 GEMMs)") for half in kinds]
    stepwise = " with a stepwise phase" if False in kinds and w.nbytes(batch, False) != w.small else ""
    return text + "; here " + (", ".join(sizes) if len(kinds) > 1 else mib(w.nbytes(batch, kinds[0]))) + stepwise


def traffic_per_step(plan: Plan, kernels: dict[str, KernelDesc], sizes: dict[str, int],
                     batch: int) -> dict[str, dict[str, int]]:
    """Bytes that one step reads and writes in memory, per phase: the GEMMs (operands and result), the
    kernels (each value read or written once, parameters once, fused products' weights per row) and the
    copies."""
    env = dict(sizes, B=batch, one=1)
    item = ELEMENT_TYPES

    def dim(expr) -> int:
        return sum(env[s] for s in expr)

    descs = {d.name: d for k in kernels.values() for d in (k.stages or (k,))}  # row-fused stages too
    out = {}
    for title, phase in (("forward", plan.forward), ("backward", plan.backward)):
        gemm_bytes = kernel_bytes = 0
        for op in phase.loop.body:
            call = getattr(op, "call", None)
            if call is not None:
                m, n, k = dim(call.m), dim(call.n), dim(call.k)
                count = env[call.heads] if call.heads else 1  # the blocks of a block-diagonal matrix
                gemm_bytes += count * (item[call.a_type] * m * k + item[call.b_type] * k * n + item[call.c_type] * m * n)
            elif isinstance(op, Copy):
                kernel_bytes += 2 * item[op.dtype] * batch * env[op.size]
            elif isinstance(op, Kernel):
                for a in descs[op.name].args:
                    b = a.bind
                    if b.kind == "weights":
                        stack = plan.storage.stack(b.name)
                        m = next(mm for mm in stack.matrices if stack.rows[:stack.matrices.index(mm)] == b.offset)
                        rows, cols = plan.cell.param(m).shape
                        kernel_bytes += item[stack.dtype] * batch * env[rows] * env[cols]
                    elif b.kind == "vector":
                        kernel_bytes += item[plan.dtype] * env[plan.cell.param(b.name).shape[0]]
                    elif b.kind == "ptr":
                        node = next(i for i, s in op.reads + op.writes if s == b.slot)
                        kernel_bytes += item[plan.storage.buffer(b.slot.buffer).dtype] * batch * env[phase.nodes[node].size]
        out[title] = {"gemm": gemm_bytes, "kernels": kernel_bytes}
    return out

"""Stage 2a: check the AST and lower it to the Cell IR.

The checks, in order, each reported as a compiler diagnostic at the offending span:
  declarations  exactly one input, states declared once with a known size, one output
  names         functions exist; primed names are state updates; every state is updated exactly once;
                a value is assigned once; the operand of a matrix is a value, not an unknown name
  cycles        the equations of one step form no cycle
  shapes        every operator's sides have the same size; matrices are used with one shape;
                every size can be inferred
Names that are never assigned and are not the input or a state are learned parameter vectors (b_i, p_f);
a name close to a defined value gets a warning, as it is likely a typo. Unused values are warnings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import syntax as ast
from .errors import Diagnostic, Source, Span, SpecError
from .errors import did_you_mean as _did_you_mean
from .ir import SIZES, Cell, GraphBuilder, Noise, Param, StateVar, per_head, prune
from .ops import BINARY_SYMBOLS, FUNCTIONS, OPS, REDUCTIONS
from .sizes import infer_sizes as _sizes


@dataclass(frozen=True, slots=True)
class Lowered:
    cell: Cell
    warnings: tuple[Diagnostic, ...]


class _Problems:
    def __init__(self, source: Source):
        self.source = source
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.errors.append(Diagnostic("error", message, self.source, span, hint))

    def warn(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.warnings.append(Diagnostic("warning", message, self.source, span, hint))

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecError(sorted(self.errors, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0)))


def _walk(expr):
    yield expr
    for child in (getattr(expr, "arg", None), getattr(expr, "operand", None),
                  getattr(expr, "left", None), getattr(expr, "right", None), *getattr(expr, "args", ())):
        if child is not None:
            yield from _walk(child)


# conveniences: written as functions, built from the reductions (lower.py expands them)
CONVENIENCES = {"var": "the variance of the features of a row (of all the vectors given)",
                "layernorm": "layernorm(v[, eps]) = (v - mean(v)) / sqrt(var(v) + eps), eps 1e-5 by default",
                "rmsnorm": "rmsnorm(v[, eps]) = v / sqrt(mean(v * v) + eps), eps 1e-5 by default"}
# regularisers: written as functions, lowered to a mask (a per-step input, Cell.noise) the layer draws
REGULARISERS = {"dropout": "dropout(v, p): each feature zeroed with probability p, the rest scaled by 1/(1-p), "
                           "in training; v itself in evaluation",
                "zoneout": "zoneout(new, old, p): each feature keeps its old value with probability p, in training; "
                           "p * old + (1 - p) * new in evaluation"}
CONVENIENCES.update(REGULARISERS)
CALLABLE = FUNCTIONS + REDUCTIONS + tuple(CONVENIENCES)


def _arity_problem(e) -> str | None:
    """What is wrong with the number of arguments of a call, or None."""
    n = len(e.args)
    if e.func in FUNCTIONS:
        want = OPS[e.func].arity
        if n != want:
            hint = "; the largest feature of a row is rowmax(v)" if e.func in ("max", "min") and n == 1 else ""
            return f"{e.func} takes {want} argument{'s' if want > 1 else ''}, got {n}{hint}"
    elif e.func in ("layernorm", "rmsnorm"):
        if n not in (1, 2) or (n == 2 and not isinstance(e.args[1], ast.Number)):
            return f"{e.func} takes a vector and optionally a number (eps): {e.func}(v) or {e.func}(v, 1e-3)"
    elif e.func in REGULARISERS:
        want = 2 if e.func == "dropout" else 3
        example = "dropout(z, 0.25)" if e.func == "dropout" else "zoneout(f * c + i * z, c, 0.15)"
        last = e.args[-1] if n else None
        if n == want and isinstance(last, ast.Neg) and isinstance(last.arg, ast.Number) and last.arg.value:
            return f"{e.func}'s probability must lie in [0, 1), got -{last.arg.value:g}"
        if n != want or not isinstance(last, ast.Number):
            return f"{e.func} takes {'a value' if want == 2 else 'the new value, the old one'} and a probability " \
                   f"(a number): {example}"
        if not 0 <= e.args[-1].value < 1:
            return f"{e.func}'s probability must lie in [0, 1), got {e.args[-1].value:g}"
    return None




@dataclass
class _Context:
    """What the phases of lowering share: the tree, the problems found, and what each phase learns."""

    tree: ast.CellAST
    P: _Problems
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    assigns: list = field(default_factory=list)
    input_name: str | None = None
    states: dict = field(default_factory=dict)
    defs: dict = field(default_factory=dict)
    values: set = field(default_factory=set)
    vectors: dict = field(default_factory=dict)
    heads: dict = field(default_factory=dict)
    matrices: dict = field(default_factory=dict)
    reads: dict = field(default_factory=dict)
    uses: dict = field(default_factory=dict)
    live: set = field(default_factory=set)
    used: set = field(default_factory=set)
    order: list = field(default_factory=list)
    S: object = None  # sizes.Sizes, the union-find of the sizes phase
    rows: set = field(default_factory=set)
    ids: dict = field(default_factory=dict)
    b: GraphBuilder | None = None
    cell: Cell | None = None
    noise: list = field(default_factory=list)


def lower(tree: ast.CellAST) -> Lowered:
    """Check a CellAST and lower it to a Cell, phase by phase; each phase's errors are reported together
    before the next starts. Raises SpecError listing every error found."""
    c = _Context(tree, _Problems(tree.source))
    for phase in (_declarations, _assignments, _names, _liveness, _cycles, _sizes, _unused, _build):
        phase(c)
        c.P.raise_if_any()
    return Lowered(c.cell, tuple(c.P.warnings))


def _declarations(c: _Context) -> None:
    """Exactly one input, states declared once with a known size, one output."""
    c.inputs = [s for s in c.tree.stmts if isinstance(s, ast.InputDecl)]
    c.outputs = [s for s in c.tree.stmts if isinstance(s, ast.OutputDecl)]
    c.assigns = [s for s in c.tree.stmts if isinstance(s, ast.Assign)]
    if not c.inputs:
        c.P.error(f"cell '{c.tree.name}' has no input", c.tree.name_span, "declare it, e.g. 'input x'")
    for extra in c.inputs[1:]:
        c.P.error(f"a second input '{extra.name}': a cell has exactly one input", extra.span,
                f"the input is '{c.inputs[0].name}' (line {c.inputs[0].span.line})")
    c.input_name = c.inputs[0].name if c.inputs else None
    if c.input_name is not None and c.input_name.endswith("'"):
        c.P.error("the input cannot take a prime: only states have updates", c.inputs[0].span,
                f"declare it as 'input {c.input_name[:-1]}'")
        c.input_name = c.input_name[:-1]  # go on as if declared without it, to report no follow-on errors

    c.states = {}
    for decl in (s for s in c.tree.stmts if isinstance(s, ast.StateDecl)):
        for item in decl.items:
            if item.name.endswith("'"):
                c.P.error(f"declare the state as '{item.name[:-1]}'; '{item.name}' is its updated value", item.span)
                item = ast.StateItem(item.name[:-1], item.size, item.span, item.size_span)
            if item.name in c.states:
                c.P.error(f"state '{item.name}' is declared twice", item.span,
                        f"first declared at line {c.states[item.name].span.line}")
            elif item.name == c.input_name:
                c.P.error(f"'{item.name}' is the input and cannot also be a state", item.span)
            else:
                if item.size is not None and item.size not in SIZES:
                    c.P.error(f"unknown size '{item.size}'", item.size_span,
                            _did_you_mean(item.size, SIZES) or f"sizes are {', '.join(SIZES)}")
                c.states[item.name] = item

    c.heads = {}  # block-diagonal matrices: name -> span of its declaration
    for decl in (s for s in c.tree.stmts if isinstance(s, ast.HeadsDecl)):
        for name, span in ((item.name, item.span) for item in decl.items):
            if name in c.heads:
                c.P.error(f"matrix '{name}' is declared block-diagonal twice", span,
                          f"first declared at line {c.heads[name].line}")
            else:
                c.heads[name] = span

    if not c.outputs:
        c.P.error(f"cell '{c.tree.name}' has no output", c.tree.name_span, "say what the layer emits, e.g. output h'")
    for extra in c.outputs[1:]:
        c.P.error("a second output: a cell has exactly one output", extra.span,
                f"the output is '{c.outputs[0].name}' (line {c.outputs[0].span.line})")


def _assignments(c: _Context) -> None:
    """One assignment per name; primed targets are state updates."""
    c.defs = {}
    for a in c.assigns:
        base = a.target[:-1] if a.target.endswith("'") else None
        if a.target in c.defs:
            what = "state" if base else "value"
            c.P.error(f"{what} '{a.target}' is assigned twice", a.target_span,
                    f"first assigned at line {c.defs[a.target].span.line}")
            continue
        if base is not None and base not in c.states:
            c.P.error(f"'{a.target}' updates '{base}', which is not a state", a.target_span,
                    f"declare it with 'state {base}', or drop the prime for an intermediate value")
            continue
        if a.target in c.states or a.target == c.input_name:
            kind = "a state" if a.target in c.states else "the input"
            c.P.error(f"'{a.target}' is {kind} and cannot be assigned", a.target_span,
                    f"the state's new value is written {a.target}'" if a.target in c.states else None)
            continue
        if a.target in CALLABLE:
            c.P.error(f"'{a.target}' is a function name and cannot be assigned", a.target_span)
            continue
        c.defs[a.target] = a
    for name, item in c.states.items():
        if name + "'" not in c.defs and not any(a.target == name + "'" for a in c.assigns):
            c.P.error(f"state '{name}' has no update", item.span, f"add an equation {name}' = ...")

    c.values = set(c.defs) | set(c.states) | ({c.input_name} if c.input_name else set())


def _names(c: _Context) -> None:
    """The names used in expressions: functions, matrices, parameter vectors, the output."""
    c.vectors = {}  # implicit parameter c.vectors, first use
    c.matrices = {}
    c.reads = {name: [] for name in c.defs}  # assignment -> c.values it c.reads
    c.uses = {name: set() for name in c.defs}  # assignment -> every name it mentions
    for a in c.assigns:
        mentions = c.uses.get(a.target, set())
        for e in _walk(a.expr):
            if isinstance(e, ast.Call) and e.func not in CALLABLE:
                c.P.error(f"unknown function '{e.func}'", e.func_span,
                          _did_you_mean(e.func, CALLABLE) or f"functions are {', '.join(FUNCTIONS)}; reductions over "
                          f"the features of a row are {', '.join(REDUCTIONS)} and {', '.join(CONVENIENCES)}")
            elif isinstance(e, ast.Call) and _arity_problem(e):
                c.P.error(_arity_problem(e), e.func_span)
            elif isinstance(e, ast.MatVec):
                if e.matrix.lower() in FUNCTIONS:
                    c.P.error(f"'{e.matrix}' is read as a weight matrix (its name starts with a capital letter)",
                            e.matrix_span, f"did you mean the function '{e.matrix.lower()}'?")
                c.matrices.setdefault(e.matrix, e.matrix_span)
                mentions.add(e.matrix)
                if isinstance(e.operand, ast.Ref) and e.operand.name not in c.values \
                        and not e.operand.name.endswith("'"):
                    c.P.error(f"unknown name '{e.operand.name}'", e.operand.span,
                            _did_you_mean(e.operand.name, c.values)
                            or "the operand of a matrix must be the input, a state or a computed value")
            elif isinstance(e, ast.Ref):
                name = e.name
                if name.endswith("'"):
                    if name[:-1] not in c.states:
                        c.P.error(f"unknown name '{name}': '{name[:-1]}' is not a state", e.span,
                                "only states have an updated value (name')")
                        continue
                elif name in CALLABLE:
                    c.P.error(f"'{name}' is a function; call it as {name}(...)", e.span)
                    continue
                elif name not in c.values and name not in c.vectors:
                    c.vectors[name] = e.span
                    guess = _did_you_mean(name, c.values)
                    if guess:
                        c.P.warn(f"'{name}' is not defined, so it is taken as a learned parameter vector", e.span,
                               guess)
                mentions.add(name)
                if a.target in c.reads and (name in c.defs or name.endswith("'")):
                    c.reads[a.target].append(name)
    for name, span in c.heads.items():
        if name not in c.matrices:
            c.P.error(f"'heads' names matrix '{name}', which no equation applies", span,
                      _did_you_mean(name, c.matrices) or "list the matrices written before an operand, e.g. "
                      "'heads R_i, R_f' for R_i h and R_f h")
    for out in c.outputs[:1]:
        if out.name not in c.values and not (out.name.endswith("'") and out.name[:-1] in c.states):
            c.P.error(f"output '{out.name}' is not defined", out.name_span,
                    _did_you_mean(out.name, c.values | {s + "'" for s in c.states}))
        elif out.name in c.states:
            c.P.warn(f"the output '{out.name}' is the state's value at the start of the step", out.name_span,
                   f"its value after the step is {out.name}'")
        elif out.name == c.input_name:
            c.P.warn(f"the output '{out.name}' is the layer's input, unchanged", out.name_span)
    c.P.raise_if_any()


def _liveness(c: _Context) -> None:
    """What the updates and the output depend on; the rest is unused (a warning) and dropped."""
    c.live = set()
    pending = [n + "'" for n in c.states] + [c.outputs[0].name]
    while pending:
        name = pending.pop()
        if name in c.defs and name not in c.live:
            c.live.add(name)
            pending.extend(c.reads[name])
    c.used = set().union(*(c.uses[n] for n in c.live)) | {c.outputs[0].name}


def _cycles(c: _Context) -> None:
    """The equations of one step form no cycle (depth-first, in source order); sets the order."""
    c.order = []
    mark: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycle_found = False

    def visit(name: str, path: list[str]) -> None:
        nonlocal cycle_found
        if cycle_found or mark.get(name) == 2:
            return
        if mark.get(name) == 1:
            loop = path[path.index(name):] + [name]
            first = min(loop[:-1], key=lambda n: (c.defs[n].span.line, c.defs[n].span.col))
            c.P.error(f"the equations form a cycle: {' -> '.join(loop)}", c.defs[first].target_span,
                    "within one step a value cannot depend on itself; read the state's old value "
                    "(without the prime) to carry information between steps")
            cycle_found = True
            return
        mark[name] = 1
        for dep in c.reads.get(name, ()):
            visit(dep, path + [name])
        mark[name] = 2
        c.order.append(name)

    for a in c.assigns:
        if a.target in c.defs:
            visit(a.target, [])
    c.P.raise_if_any()


def _unused(c: _Context) -> None:
    """Warnings for what is declared but unused."""
    if c.input_name and c.input_name not in c.used:
        c.P.warn(f"the input '{c.input_name}' is never used", c.inputs[0].span)
    for name, item in c.states.items():
        if name not in c.used:
            c.P.warn(f"state '{name}' is never read: its old value has no effect", item.span)
    for name, a in c.defs.items():
        if name not in c.used and not name.endswith("'"):
            c.P.warn(f"'{name}' is computed but never used", a.target_span)


def _convenience(b: GraphBuilder, name: str, args: list[int], noise: list[Noise]) -> int:
    """var, layernorm and rmsnorm out of the reductions; dropout and zoneout as a mask (a stepin leaf)
    recorded in `noise`."""
    if name in REGULARISERS:
        p = b.nodes[args[-1]].attr
        size = b.nodes[args[0]].size
        z = Noise(f"{name}{sum(n.kind == name for n in noise) + 1}", name, float(p), size)
        noise.append(z)
        m = b.leaf("stepin", z.name, size)
        if name == "dropout":
            return b.mul(args[0], m)
        new, old = args[0], args[1]
        return b.op("add", old, b.mul(m, b.sub(new, old)))
    if name == "var":  # mean((v - mean(v))^2) over all the vectors given
        mu = b.op("mean", *args)
        return b.op("mean", *(b.op("square", b.sub(v, mu)) for v in args))
    v = args[0]
    eps = b.const(b.nodes[args[1]].attr if len(args) > 1 else 1e-5)
    if name == "layernorm":
        d = b.sub(v, b.op("mean", v))
        return b.div(d, b.op("sqrt", b.op("add", b.op("mean", b.op("square", d)), eps)))
    return b.div(v, b.op("sqrt", b.op("add", b.op("mean", b.op("square", v)), eps)))


def _same_heads_per_operand(c: _Context, nodes) -> None:
    """The matrices applied to one operand are stored and multiplied together, so they are all
    block-diagonal or none is."""
    by_operand: dict[int, list[str]] = {}
    for n in nodes:
        if n.op == "matvec" and n.attr not in by_operand.setdefault(n.args[0], []):
            by_operand[n.args[0]].append(n.attr)
    for names in by_operand.values():
        blocks = [m for m in names if m in c.heads]
        if blocks and len(blocks) < len(names):
            dense = [m for m in names if m not in c.heads]
            c.P.error(f"matrices {', '.join(names)} multiply the same operand, but only {', '.join(blocks)} "
                      f"{'is' if len(blocks) == 1 else 'are'} block-diagonal", c.heads[blocks[0]],
                      f"declare {', '.join(dense)} in 'heads' too, or give the block-diagonal ones their own operand")


def _build(c: _Context) -> None:
    """The Cell: nodes in dependency order, unused values and folded constants pruned."""
    c.b = GraphBuilder()
    c.ids = {}
    c.noise = []
    if c.input_name:
        c.ids[c.input_name] = c.b.leaf("input", c.input_name, "input")
    for name, item in c.states.items():
        c.ids[name] = c.b.leaf("state", name, item.size or "hidden")

    def build(e) -> int:
        node = build_node(e)
        n = c.b.nodes[node]
        if n.op == "const" and not math.isfinite(n.attr) and not isinstance(e, ast.Number):
            c.P.error(f"this constant expression evaluates to {n.attr}", e.span,
                    "a division by zero, an overflow or the log of a negative number")
        return node

    def build_node(e) -> int:
        if isinstance(e, ast.Number):
            if not math.isfinite(e.value):
                c.P.error(f"the number overflows to {e.value}", e.span)
            elif e.value == 0 and e.span and re.match(r"[.0]*[1-9]", c.P.source.line(e.span.line)[e.span.col - 1:]):
                c.P.error("the number underflows to 0 (the smallest is about 5e-324)", e.span,
                          "write 0 where zero is meant")
            return c.b.const(e.value)
        if isinstance(e, ast.Ref):
            if e.name not in c.ids:
                c.ids[e.name] = c.b.leaf("param", e.name, c.S.value("p:" + e.name))
            return c.ids[e.name]
        if isinstance(e, ast.Call):
            if e.func in CONVENIENCES:
                return _convenience(c.b, e.func, [build(x) for x in e.args], c.noise)
            return c.b.op(e.func, *(build(x) for x in e.args))
        if isinstance(e, ast.Neg):
            return c.b.op("neg", build(e.arg))
        if isinstance(e, ast.MatVec):
            return c.b.matvec(e.matrix, build(e.operand), c.S.value("r:" + e.matrix))
        return c.b.op(BINARY_SYMBOLS[e.op], build(e.left), build(e.right))

    for name in c.order:
        if name in c.live:
            c.ids[name] = build(c.defs[name].expr)
    c.P.raise_if_any()

    # keep what the updates and the output need: unused c.values (warned above) and folded constants go
    roots = [c.ids[n + "'"] for n in c.states] + [c.ids[c.outputs[0].name]]
    nodes, remap = prune(tuple(c.b.nodes), roots)
    names = sorted((name, remap[c.ids[name]]) for name in c.order if name in c.ids and c.ids[name] in remap)
    live_params = {n.attr for n in nodes if n.op in ("param", "matvec")}

    params = []
    firsts = sorted([(span.line, span.col, "matrix", n) for n, span in c.matrices.items()]
                    + [(span.line, span.col, "vector", n) for n, span in c.vectors.items()])
    for _, _, kind, name in firsts:
        if name not in live_params:
            continue
        if kind == "vector":
            params.append(Param(name, kind, (c.S.value("p:" + name),)))
            continue
        cols = c.S.value("c:" + name)
        params.append(Param(name, kind, (c.S.value("r:" + name), per_head(cols) if name in c.heads else cols),
                            heads=name in c.heads))
    _same_heads_per_operand(c, nodes)

    c.cell = Cell(
        name=c.tree.name,
        input=c.input_name,
        states=tuple(StateVar(n, it.size or "hidden") for n, it in c.states.items()),
        params=tuple(params),
        nodes=nodes,
        updates=tuple(remap[c.ids[n + "'"]] for n in c.states),
        output=remap[c.ids[c.outputs[0].name]],
        names=tuple(sorted(names, key=lambda x: x[1])),
        noise=tuple(z for z in c.noise if any(n.op == "stepin" and n.attr == z.name for n in nodes)),
    )

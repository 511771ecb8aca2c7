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

import difflib
import math
from dataclasses import dataclass

from . import syntax as ast
from .errors import Diagnostic, Source, Span, SpecError
from .ir import SIZES, Cell, GraphBuilder, Param, StateVar, prune
from .ops import BINARY_SYMBOLS, FUNCTIONS


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


def _did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _walk(expr):
    yield expr
    for child in (getattr(expr, "arg", None), getattr(expr, "operand", None),
                  getattr(expr, "left", None), getattr(expr, "right", None)):
        if child is not None:
            yield from _walk(child)


# ------------------------------------------------------------------------------------ size inference

class _Sizes:
    """Union-find over size variables; a class may be fixed to one of SIZES. Conflicts are reported."""

    def __init__(self, problems: _Problems):
        self.parent: dict[str, str] = {}
        self.fixed: dict[str, str] = {}
        self.problems = problems

    def var(self, key: str, fixed: str | None = None) -> str:
        if key not in self.parent:
            self.parent[key] = key
        if fixed is not None:
            self.fixed.setdefault(self.find(key), fixed)
        return key

    def find(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def value(self, key: str) -> str | None:
        return self.fixed.get(self.find(key))

    def unify(self, a: str, b: str, span: Span, what: str, sides: tuple[str, str]) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        fa, fb = self.fixed.get(ra), self.fixed.get(rb)
        if fa and fb and fa != fb:
            self.problems.error(f"size mismatch in {what}: {sides[0]} of size {fa}, {sides[1]} of size {fb}",
                                span, "sizes are symbolic: input, hidden and proj never match each other")
            return False
        self.parent[rb] = ra
        if fb and not fa:
            self.fixed[ra] = fb
        return True


_SCALAR = "<scalar>"


def lower(tree: ast.CellAST) -> Lowered:
    """Check a CellAST and lower it to a Cell. Raises SpecError listing every error found."""
    P = _Problems(tree.source)

    # --- declarations
    inputs = [s for s in tree.stmts if isinstance(s, ast.InputDecl)]
    outputs = [s for s in tree.stmts if isinstance(s, ast.OutputDecl)]
    assigns = [s for s in tree.stmts if isinstance(s, ast.Assign)]
    if not inputs:
        P.error(f"cell '{tree.name}' has no input", tree.name_span, "declare it, e.g. 'input x'")
    for extra in inputs[1:]:
        P.error(f"a second input '{extra.name}': a cell has exactly one input", extra.span,
                f"the input is '{inputs[0].name}' (line {inputs[0].span.line})")
    input_name = inputs[0].name if inputs else None
    if input_name is not None and input_name.endswith("'"):
        P.error("the input cannot take a prime: only states have updates", inputs[0].span,
                f"declare it as 'input {input_name[:-1]}'")
        input_name = input_name[:-1]  # go on as if declared without it, to report no follow-on errors

    states: dict[str, ast.StateItem] = {}
    for decl in (s for s in tree.stmts if isinstance(s, ast.StateDecl)):
        for item in decl.items:
            if item.name.endswith("'"):
                P.error(f"declare the state as '{item.name[:-1]}'; '{item.name}' is its updated value", item.span)
                item = ast.StateItem(item.name[:-1], item.size, item.span, item.size_span)
            if item.name in states:
                P.error(f"state '{item.name}' is declared twice", item.span,
                        f"first declared at line {states[item.name].span.line}")
            elif item.name == input_name:
                P.error(f"'{item.name}' is the input and cannot also be a state", item.span)
            else:
                if item.size is not None and item.size not in SIZES:
                    P.error(f"unknown size '{item.size}'", item.size_span,
                            _did_you_mean(item.size, SIZES) or f"sizes are {', '.join(SIZES)}")
                states[item.name] = item

    if not outputs:
        P.error(f"cell '{tree.name}' has no output", tree.name_span, "say what the layer emits, e.g. output h'")
    for extra in outputs[1:]:
        P.error("a second output: a cell has exactly one output", extra.span,
                f"the output is '{outputs[0].name}' (line {outputs[0].span.line})")

    # --- assignments: one per name; primed targets are state updates
    defs: dict[str, ast.Assign] = {}
    for a in assigns:
        base = a.target[:-1] if a.target.endswith("'") else None
        if a.target in defs:
            what = "state" if base else "value"
            P.error(f"{what} '{a.target}' is assigned twice", a.target_span,
                    f"first assigned at line {defs[a.target].span.line}")
            continue
        if base is not None and base not in states:
            P.error(f"'{a.target}' updates '{base}', which is not a state", a.target_span,
                    f"declare it with 'state {base}', or drop the prime for an intermediate value")
            continue
        if a.target in states or a.target == input_name:
            kind = "a state" if a.target in states else "the input"
            P.error(f"'{a.target}' is {kind} and cannot be assigned", a.target_span,
                    f"the state's new value is written {a.target}'" if a.target in states else None)
            continue
        if a.target in FUNCTIONS:
            P.error(f"'{a.target}' is a function name and cannot be assigned", a.target_span)
            continue
        defs[a.target] = a
    for name, item in states.items():
        if name + "'" not in defs and not any(a.target == name + "'" for a in assigns):
            P.error(f"state '{name}' has no update", item.span, f"add an equation {name}' = ...")

    values = set(defs) | set(states) | ({input_name} if input_name else set())

    # --- names used in expressions
    vectors: dict[str, Span] = {}  # implicit parameter vectors, first use
    matrices: dict[str, Span] = {}
    reads: dict[str, list[str]] = {name: [] for name in defs}  # assignment -> values it reads
    uses: dict[str, set[str]] = {name: set() for name in defs}  # assignment -> every name it mentions
    for a in assigns:
        mentions = uses.get(a.target, set())
        for e in _walk(a.expr):
            if isinstance(e, ast.Call) and e.func not in FUNCTIONS:
                P.error(f"unknown function '{e.func}'", e.func_span,
                        _did_you_mean(e.func, FUNCTIONS) or f"functions are {', '.join(FUNCTIONS)}")
            elif isinstance(e, ast.MatVec):
                if e.matrix.lower() in FUNCTIONS:
                    P.error(f"'{e.matrix}' is read as a weight matrix (its name starts with a capital letter)",
                            e.matrix_span, f"did you mean the function '{e.matrix.lower()}'?")
                matrices.setdefault(e.matrix, e.matrix_span)
                mentions.add(e.matrix)
                if isinstance(e.operand, ast.Ref) and e.operand.name not in values \
                        and not e.operand.name.endswith("'"):
                    P.error(f"unknown name '{e.operand.name}'", e.operand.span,
                            _did_you_mean(e.operand.name, values)
                            or "the operand of a matrix must be the input, a state or a computed value")
            elif isinstance(e, ast.Ref):
                name = e.name
                if name.endswith("'"):
                    if name[:-1] not in states:
                        P.error(f"unknown name '{name}': '{name[:-1]}' is not a state", e.span,
                                "only states have an updated value (name')")
                        continue
                elif name in FUNCTIONS:
                    P.error(f"'{name}' is a function; call it as {name}(...)", e.span)
                    continue
                elif name not in values and name not in vectors:
                    vectors[name] = e.span
                    guess = _did_you_mean(name, values)
                    if guess:
                        P.warn(f"'{name}' is not defined, so it is taken as a learned parameter vector", e.span,
                               guess)
                mentions.add(name)
                if a.target in reads and (name in defs or name.endswith("'")):
                    reads[a.target].append(name)
    for out in outputs[:1]:
        if out.name not in values and not (out.name.endswith("'") and out.name[:-1] in states):
            P.error(f"output '{out.name}' is not defined", out.name_span,
                    _did_you_mean(out.name, values | {s + "'" for s in states}))
        elif out.name in states:
            P.warn(f"the output '{out.name}' is the state's value at the start of the step", out.name_span,
                   f"its value after the step is {out.name}'")
        elif out.name == input_name:
            P.warn(f"the output '{out.name}' is the layer's input, unchanged", out.name_span)
    P.raise_if_any()

    # --- what the updates and the output depend on; the rest is unused (a warning) and dropped
    live: set[str] = set()
    pending = [n + "'" for n in states] + [outputs[0].name]
    while pending:
        name = pending.pop()
        if name in defs and name not in live:
            live.add(name)
            pending.extend(reads[name])
    used = set().union(*(uses[n] for n in live)) | {outputs[0].name}

    # --- cycles: depth-first over the assignments in source order
    order: list[str] = []
    mark: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycle_found = False

    def visit(name: str, path: list[str]) -> None:
        nonlocal cycle_found
        if cycle_found or mark.get(name) == 2:
            return
        if mark.get(name) == 1:
            loop = path[path.index(name):] + [name]
            first = min(loop[:-1], key=lambda n: (defs[n].span.line, defs[n].span.col))
            P.error(f"the equations form a cycle: {' -> '.join(loop)}", defs[first].target_span,
                    "within one step a value cannot depend on itself; read the state's old value "
                    "(without the prime) to carry information between steps")
            cycle_found = True
            return
        mark[name] = 1
        for dep in reads.get(name, ()):
            visit(dep, path + [name])
        mark[name] = 2
        order.append(name)

    for a in assigns:
        if a.target in defs:
            visit(a.target, [])
    P.raise_if_any()

    # --- sizes
    S = _Sizes(P)
    if input_name:
        S.var("v:" + input_name, "input")
    for name, item in states.items():
        S.var("v:" + name, item.size or "hidden")
        S.var("v:" + name + "'", item.size or "hidden")
    for name in defs:
        S.var("v:" + name)
    for name in vectors:
        S.var("p:" + name)
    for name in matrices:
        S.var("r:" + name)
        S.var("c:" + name)

    def ref_var(name: str) -> str:
        return ("v:" if name in values or name.endswith("'") else "p:") + name

    def infer(e) -> str:
        if isinstance(e, ast.Number):
            return _SCALAR
        if isinstance(e, ast.Ref):
            return ref_var(e.name)
        if isinstance(e, (ast.Call, ast.Neg)):
            return infer(e.arg)
        if isinstance(e, ast.MatVec):
            operand = infer(e.operand)
            if operand == _SCALAR:
                P.error(f"the operand of matrix '{e.matrix}' is a constant", e.operand.span,
                        "a matrix multiplies a vector: the input, a state or a computed value")
            else:
                S.unify("c:" + e.matrix, operand, e.span, f"the operand of '{e.matrix}'",
                        (f"columns of {e.matrix} (from an earlier use)", "an operand"))
            return "r:" + e.matrix
        left, right = infer(e.left), infer(e.right)
        if left == _SCALAR:
            return right
        if right == _SCALAR:
            return left
        S.unify(left, right, e.span, f"'{e.op}'", ("a left side", "a right side"))
        return left

    for a in assigns:
        rhs = infer(a.expr)
        if rhs == _SCALAR:
            P.error(f"'{a.target}' is a constant; every value in a cell is a vector", a.expr.span,
                    "multiply by a vector, e.g. a learned parameter, to give it a size")
        else:
            S.unify("v:" + a.target, rhs, a.span, f"the equation for '{a.target}'",
                    (f"'{a.target}'", "a right-hand side"))
    P.raise_if_any()

    unresolved = []
    for name in live:
        if S.value("v:" + name) is None:
            unresolved.append((defs[name].target_span, f"the value '{name}'"))
    for name, span in vectors.items():
        if name in used and S.value("p:" + name) is None:
            unresolved.append((span, f"the parameter vector '{name}'"))
    for name, span in matrices.items():
        if name in used and S.value("r:" + name) is None:
            unresolved.append((span, f"the rows of matrix '{name}'"))
    if unresolved:
        span, what = min(unresolved, key=lambda u: (u[0].line, u[0].col))
        P.error(f"cannot infer the size of {what}", span,
                "combine it with a value of known size (the input, a state or its update)")
    P.raise_if_any()

    # --- warnings for what is declared but unused
    if input_name and input_name not in used:
        P.warn(f"the input '{input_name}' is never used", inputs[0].span)
    for name, item in states.items():
        if name not in used:
            P.warn(f"state '{name}' is never read: its old value has no effect", item.span)
    for name, a in defs.items():
        if name not in used and not name.endswith("'"):
            P.warn(f"'{name}' is computed but never used", a.target_span)

    # --- lowering
    b = GraphBuilder()
    ids: dict[str, int] = {}
    if input_name:
        ids[input_name] = b.leaf("input", input_name, "input")
    for name, item in states.items():
        ids[name] = b.leaf("state", name, item.size or "hidden")

    def build(e) -> int:
        node = build_node(e)
        n = b.nodes[node]
        if n.op == "const" and not math.isfinite(n.attr) and not isinstance(e, ast.Number):
            P.error(f"this constant expression evaluates to {n.attr}", e.span,
                    "a division by zero, an overflow or the log of a negative number")
        return node

    def build_node(e) -> int:
        if isinstance(e, ast.Number):
            if not math.isfinite(e.value):
                P.error(f"the number overflows to {e.value}", e.span)
            return b.const(e.value)
        if isinstance(e, ast.Ref):
            if e.name not in ids:
                ids[e.name] = b.leaf("param", e.name, S.value("p:" + e.name))
            return ids[e.name]
        if isinstance(e, ast.Call):
            return b.op(e.func, build(e.arg))
        if isinstance(e, ast.Neg):
            return b.op("neg", build(e.arg))
        if isinstance(e, ast.MatVec):
            return b.matvec(e.matrix, build(e.operand), S.value("r:" + e.matrix))
        return b.op(BINARY_SYMBOLS[e.op], build(e.left), build(e.right))

    for name in order:
        if name in live:
            ids[name] = build(defs[name].expr)
    P.raise_if_any()

    # keep what the updates and the output need: unused values (warned above) and folded constants go
    roots = [ids[n + "'"] for n in states] + [ids[outputs[0].name]]
    nodes, remap = prune(tuple(b.nodes), roots)
    names = sorted((name, remap[ids[name]]) for name in order if name in ids and ids[name] in remap)
    live_params = {n.attr for n in nodes if n.op in ("param", "matvec")}

    params = []
    firsts = sorted([(span.line, span.col, "matrix", n) for n, span in matrices.items()]
                    + [(span.line, span.col, "vector", n) for n, span in vectors.items()])
    for _, _, kind, name in firsts:
        if name not in live_params:
            continue
        shape = ((S.value("r:" + name), S.value("c:" + name)) if kind == "matrix"
                 else (S.value("p:" + name),))
        params.append(Param(name, kind, shape))

    cell = Cell(
        name=tree.name,
        input=input_name,
        states=tuple(StateVar(n, it.size or "hidden") for n, it in states.items()),
        params=tuple(params),
        nodes=nodes,
        updates=tuple(remap[ids[n + "'"]] for n in states),
        output=remap[ids[outputs[0].name]],
        names=tuple(sorted(names, key=lambda x: x[1])),
    )
    return Lowered(cell, tuple(P.warnings))

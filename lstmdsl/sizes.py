"""Size inference, the sizes phase of lower.py: union-find over size variables (one per value, parameter vector, matrix
row and column), where a class may be fixed to one of the symbolic sizes. A conflict is reported as a
diagnostic through the problems object it is given."""

from __future__ import annotations

from . import syntax as ast
from .ops import REDUCTIONS
from .errors import Span

_SCALAR = "<scalar>"
_ROW = "<per-row scalar>"
_ROW_FUNCS = REDUCTIONS + ("var",)  # calls whose value is a per-row scalar


class Sizes:
    """Union-find over size variables; a class may be fixed to one of SIZES. Conflicts are reported."""

    def __init__(self, problems):
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


def infer_sizes(c) -> None:
    """Every operator's sides agree, matrices have one shape, every size is inferable."""
    c.S = Sizes(c.P)
    if c.input_name:
        c.S.var("v:" + c.input_name, "input")
    for name, item in c.states.items():
        c.S.var("v:" + name, item.size or "hidden")
        c.S.var("v:" + name + "'", item.size or "hidden")
    for name in c.defs:
        c.S.var("v:" + name)
    for name in c.vectors:
        c.S.var("p:" + name)
    for name in c.matrices:
        c.S.var("r:" + name)
        c.S.var("c:" + name)

    def ref_var(name: str) -> str:
        if name in c.rows:
            return _ROW
        return ("v:" if name in c.values or name.endswith("'") else "p:") + name

    def combine(a: str, b: str, span, what: str) -> str:
        """The size of an elementwise result: constants and per-row scalars broadcast over vectors."""
        if a in (_SCALAR, _ROW) and b in (_SCALAR, _ROW):
            return _ROW if _ROW in (a, b) else _SCALAR
        if a in (_SCALAR, _ROW):
            return b
        if b in (_SCALAR, _ROW):
            return a
        c.S.unify(a, b, span, what, ("a left side", "a right side"))
        return a

    def infer(e) -> str:
        if isinstance(e, ast.Number):
            return _SCALAR
        if isinstance(e, ast.Ref):
            return ref_var(e.name)
        if isinstance(e, ast.Neg):
            return infer(e.arg)
        if isinstance(e, ast.Call):
            kinds = [infer(x) for x in e.args]
            if e.func in _ROW_FUNCS:
                for x, k in zip(e.args, kinds):
                    if k in (_SCALAR, _ROW):
                        c.P.error(f"{e.func} reduces the features of vectors; this argument is "
                                  f"{'a constant' if k == _SCALAR else 'already one value per row'}", x.span)
                return _ROW
            if e.func in ("dropout", "zoneout") and kinds[0] == _SCALAR:
                c.P.error(f"{e.func} acts on the features of a vector; this argument is a constant", e.args[0].span)
            if e.func in ("layernorm", "rmsnorm"):
                if kinds[0] in (_SCALAR, _ROW):
                    c.P.error(f"{e.func} normalises a vector; its argument is not one", e.args[0].span)
                return kinds[0]
            out = kinds[0]
            for x, k in zip(e.args[1:], kinds[1:]):
                out = combine(out, k, e.span, f"'{e.func}'")
            return out
        if isinstance(e, ast.MatVec):
            operand = infer(e.operand)
            if operand in (_SCALAR, _ROW):
                c.P.error(f"the operand of matrix '{e.matrix}' is " +
                          ("a constant" if operand == _SCALAR else "a per-row scalar"), e.operand.span,
                          "a matrix multiplies a vector: the input, a state or a computed value")
            else:
                c.S.unify("c:" + e.matrix, operand, e.span, f"the operand of '{e.matrix}'",
                          (f"columns of {e.matrix} (from an earlier use)", "an operand"))
            return "r:" + e.matrix
        return combine(infer(e.left), infer(e.right), e.span, f"'{e.op}'")

    c.rows = set()  # values that are per-row scalars (a reduction's result, or computed from one alone)
    inferred = {}  # id of an equation's expression -> its size (each inferred once: a conflict is reported once)
    for name in c.order:
        expr = c.defs[name].expr
        inferred[id(expr)] = infer(expr)
        if inferred[id(expr)] == _ROW:
            c.rows.add(name)
    for a in c.assigns:
        rhs = inferred[id(a.expr)] if id(a.expr) in inferred else infer(a.expr)
        if rhs == _SCALAR:
            c.P.error(f"'{a.target}' is a constant; every value in a cell is a vector", a.expr.span,
                    "multiply by a vector, e.g. a learned parameter, to give it a size")
        elif rhs == _ROW and a.target.endswith("'"):
            c.P.error(f"the update of state '{a.target[:-1]}' is a per-row scalar; states are vectors", a.expr.span,
                      "multiply it by a vector, or keep it in an intermediate value")
        elif rhs != _ROW:
            c.S.unify("v:" + a.target, rhs, a.span, f"the equation for '{a.target}'",
                    (f"'{a.target}'", "a right-hand side"))
    if c.outputs[0].name in c.rows:
        c.P.error(f"the output '{c.outputs[0].name}' is a per-row scalar; a layer emits a vector",
                  c.outputs[0].name_span)
    c.P.raise_if_any()

    unresolved = []
    for name in c.live:
        if name not in c.rows and c.S.value("v:" + name) is None:
            unresolved.append((c.defs[name].target_span, f"the value '{name}'"))
    for name, span in c.vectors.items():
        if name in c.used and c.S.value("p:" + name) is None:
            unresolved.append((span, f"the parameter vector '{name}'"))
    for name, span in c.matrices.items():
        if name in c.used and c.S.value("r:" + name) is None:
            unresolved.append((span, f"the rows of matrix '{name}'"))
    if unresolved:
        span, what = min(unresolved, key=lambda u: (u[0].line, u[0].col))
        c.P.error(f"cannot infer the size of {what}", span,
                "combine it with a value of known size (the input, a state or its update)")
    c.P.raise_if_any()

"""Stage 1's product: the AST of a spec, frozen dataclasses; every node carries its source Span (syntax.py
parses text into it, through parser.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import Diagnostic, Source, Span, SpecError

# ---------------------------------------------------------------------------------------------- the AST


@dataclass(frozen=True, slots=True)
class Number:
    value: float
    span: Span


@dataclass(frozen=True, slots=True)
class Ref:
    name: str  # may end in ' (a state's updated value)
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    span: Span
    func_span: Span


@dataclass(frozen=True, slots=True)
class MatVec:
    matrix: str
    operand: "Expr"
    span: Span
    matrix_span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    arg: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # one of + - * /
    left: "Expr"
    right: "Expr"
    span: Span


Expr = Union[Number, Ref, Call, MatVec, Neg, BinOp]


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class StateItem:
    name: str
    size: str | None  # None: the default size, hidden
    span: Span
    size_span: Span | None


@dataclass(frozen=True, slots=True)
class StateDecl:
    items: tuple[StateItem, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Assign:
    target: str  # may end in ' (a state update)
    expr: Expr
    span: Span
    target_span: Span


@dataclass(frozen=True, slots=True)
class OutputDecl:
    name: str
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class HeadsItem:
    name: str  # a matrix
    span: Span


@dataclass(frozen=True, slots=True)
class HeadsDecl:
    """`heads R_i, R_f`: block-diagonal matrices, num_heads blocks each (the count is a layer argument)."""
    items: tuple[HeadsItem, ...]
    span: Span


Stmt = Union[InputDecl, StateDecl, HeadsDecl, Assign, OutputDecl]


@dataclass(frozen=True, slots=True)
class Directive:
    words: tuple[str, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class CellAST:
    name: str
    stmts: tuple[Stmt, ...]
    schedule: tuple[Directive, ...] | None  # None: the spec has no schedule block
    source: Source
    name_span: Span


def depth(node) -> int:
    """Nesting depth of a lark tree (its nodes' children) or an AST expression, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        children = getattr(n, "children", None)
        if children is None:
            children = [getattr(n, k) for k in ("arg", "operand", "left", "right", "expr") if hasattr(n, k)]
            children += list(getattr(n, "args", ()))
        stack.extend((c, d + 1) for c in children if not isinstance(c, (str, float)))
    return deepest


def too_deep(source: Source, span: Span | None) -> SpecError:
    """The error for an expression nested deeper than Python's recursion allows (hundreds of levels)."""
    return SpecError([Diagnostic("error", "this expression is nested too deeply to compile", source, span,
                                 "split the long chain of operators into intermediate values")])


def deepest_statement(tree: CellAST) -> Span | None:
    """The span of the statement whose expression nests deepest (for too_deep after the parser)."""
    assigns = [s for s in tree.stmts if isinstance(s, Assign)]
    return max(assigns, key=depth).span if assigns else None

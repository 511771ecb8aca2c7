r"""Property tests (hypothesis) of the spec language front end: lstmdsl.syntax, lstmdsl.lower, lstmdsl.parse.

1. Grammar-generated programs parse. Random ASTs are rendered with random layout (whitespace, comments,
   ';' or newlines between statements, newlines and redundant parentheses inside expressions), and
   parse_cell must give back the same AST (compared span-free); a printer in this file prints the parsed
   AST back to text, which must parse to the same AST again (round trip). Spans must point at the text
   they name.
2. Semantically valid generated cells (every state updated once, names defined before use, sizes all
   `hidden`, the input used only through matrices) pass lstmdsl.parse, and the Cell IR verifies and has
   the parameters, states and schedule the spec says.
3. Any text only ever raises SpecError: arbitrary text, token soup, schedule text, and character/token
   mutations of the shipped specs and of generated valid specs. Every diagnostic points inside the text
   (lines counted at '\n', as the parser does), its rendering shows no internals, it quotes the line it
   points at, and "unexpected character" names the character that is there.

Bugs these properties found are pinned by regression tests at the end of the file.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import fields, is_dataclass

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl import api, syntax  # noqa: E402
from lstmdsl.errors import SHOWN, Span, SpecError  # noqa: E402
from lstmdsl.ir import verify  # noqa: E402
from lstmdsl.lower import lower  # noqa: E402
from lstmdsl.ops import FUNCTIONS, OPS  # noqa: E402

UNARY_FUNCS = [f for f in FUNCTIONS if OPS[f].arity == 1]
from lstmdsl.resources import shipped_specs  # noqa: E402
from lstmdsl.schedule import PRECISIONS, Schedule  # noqa: E402
from lstmdsl.syntax import (Assign, BinOp, Call, CellAST, Directive, HeadsDecl, HeadsItem, InputDecl,  # noqa: E402
                            MatVec, Neg, Number, OutputDecl, Ref, StateDecl, StateItem)

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


# LSTMDSL_FUZZ_SCALE=20 runs twenty times the examples (a longer hunt; the default keeps the file ~20 s)
_SCALE = float(os.environ.get("LSTMDSL_FUZZ_SCALE", "1"))


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None, suppress_health_check=_HEALTH)


# Constant folding in the IR builder evaluates e.g. 1/0 with numpy, which warns; not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

KEYWORDS = {"cell", "input", "state", "output", "schedule"}

# ------------------------------------------------------------------------------ span-free normal form


def normal(node):
    """The AST without positions: nested tuples of (class name, (field, value), ...)."""
    if isinstance(node, tuple):
        return tuple(normal(n) for n in node)
    if is_dataclass(node) and not isinstance(node, Span):
        return (type(node).__name__,) + tuple(
            (f.name, normal(getattr(node, f.name))) for f in fields(node)
            if f.name not in ("span", "source") and not f.name.endswith("_span"))
    return node


# --------------------------------------------------------------------------------- canonical printer

SUM, PRODUCT, UNARY, APPLY, ATOM = range(5)


def level(e) -> int:
    if isinstance(e, BinOp):
        return SUM if e.op in "+-" else PRODUCT
    if isinstance(e, Neg):
        return UNARY
    if isinstance(e, MatVec):
        return APPLY
    return ATOM


def child_levels(e):
    """(child, the lowest level that may stand there without parentheses) for each child of e."""
    if isinstance(e, BinOp):
        if e.op in "+-":
            return [(e.left, SUM), (e.right, PRODUCT)]
        return [(e.left, PRODUCT), (e.right, UNARY)]
    if isinstance(e, Neg):
        return [(e.arg, UNARY)]
    if isinstance(e, MatVec):
        return [(e.operand, APPLY)]
    if isinstance(e, Call):
        return [(a, SUM) for a in e.args]
    return []


def print_number(v: float) -> str:
    return "1e999" if v == float("inf") else repr(v)


def print_expr(e, need: int = SUM) -> str:
    if isinstance(e, Number):
        text = print_number(e.value)
    elif isinstance(e, Ref):
        text = e.name
    elif isinstance(e, Call):
        text = f"{e.func}({', '.join(print_expr(a, SUM) for a in e.args)})"
    elif isinstance(e, MatVec):
        text = f"{e.matrix} {print_expr(e.operand, APPLY)}"
    elif isinstance(e, Neg):
        text = f"-{print_expr(e.arg, UNARY)}"
    else:
        (left, ln), (right, rn) = child_levels(e)
        text = f"{print_expr(left, ln)} {e.op} {print_expr(right, rn)}"
    return f"({text})" if level(e) < need else text


def print_stmt(s) -> str:
    if isinstance(s, InputDecl):
        return f"input {s.name}"
    if isinstance(s, OutputDecl):
        return f"output {s.name}"
    if isinstance(s, StateDecl):
        return "state " + ", ".join(i.name + (f" : {i.size}" if i.size is not None else "") for i in s.items)
    if isinstance(s, HeadsDecl):
        return "heads " + ", ".join(i.name for i in s.items)
    return f"{s.target} = {print_expr(s.expr)}"


def print_cell(tree: CellAST) -> str:
    out = [f"cell {tree.name} {{"] + [f"    {print_stmt(s)}" for s in tree.stmts] + ["}"]
    if tree.schedule is not None:
        out.append("schedule { " + "; ".join(" ".join(d.words) for d in tree.schedule) + " }")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------- name strategies

_TAIL = string.ascii_letters + string.digits + "_"
# names that start like a keyword or a function must still lex as one name
_TRICKY_NAMES = ["inputs", "cells", "state_", "output2", "schedules", "sigmoid_", "tanh2", "e", "e1", "x", "h",
                 "c", "expo", "in", "no"]

plain_names = st.one_of(
    st.builds(lambda h, t: h + t, st.sampled_from(string.ascii_lowercase), st.text(_TAIL, max_size=6)),
    st.sampled_from(_TRICKY_NAMES),
).filter(lambda n: n not in KEYWORDS)
primed_names = st.builds(lambda n, p: n + p, plain_names, st.sampled_from(["", "", "'"]))
matrix_names = st.builds(lambda h, t: h + t, st.sampled_from(string.ascii_uppercase), st.text(_TAIL, max_size=5))
func_names = st.one_of(st.sampled_from(FUNCTIONS), primed_names)
# The number's source text rides in the span field of the generated Number (normal() ignores spans).
number_texts = st.from_regex(r"\A([0-9]{1,4}\.?[0-9]{0,3}|\.[0-9]{1,3})([eE][+-]?[0-9]{1,3})?\Z")
numbers = number_texts.map(lambda t: Number(float(t), t))
# what a semantically valid cell may contain: a literal that overflows to inf, or a nonzero one that underflows to
# 0, is an error of its own
finite_numbers = numbers.filter(lambda n: n.value != float("inf") and not (
    n.value == 0 and any(d in "123456789" for d in n.span.lower().split("e")[0])))
word_texts = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.\-]{0,7}\Z") | st.sampled_from(
    ["fuse", "gates", "no", "hoist", "input", "precision", "fp32", "cell", "state", "schedule"])

exprs = st.recursive(
    st.one_of(numbers, st.builds(Ref, primed_names, st.none())),
    lambda sub: st.one_of(
        st.builds(Call, func_names, st.lists(sub, min_size=1, max_size=3).map(tuple), st.none(), st.none()),
        st.builds(MatVec, matrix_names, sub, st.none(), st.none()),
        st.builds(Neg, sub, st.none()),
        st.builds(BinOp, st.sampled_from("+-*/"), sub, sub, st.none()),
    ),
    max_leaves=12,
)

stmts = st.one_of(
    st.builds(InputDecl, primed_names, st.none()),
    st.builds(OutputDecl, primed_names, st.none(), st.none()),
    st.builds(StateDecl, st.lists(st.builds(StateItem, primed_names, st.none() | plain_names, st.none(), st.none()),
                                  min_size=1, max_size=3).map(tuple), st.none()),
    st.builds(Assign, primed_names, exprs, st.none(), st.none()),
    st.builds(HeadsDecl, st.lists(st.builds(HeadsItem, matrix_names, st.none()), min_size=1, max_size=3).map(tuple),
              st.none()),
)
directives = st.builds(Directive, st.lists(word_texts, min_size=1, max_size=3).map(tuple), st.none())
cell_asts = st.builds(CellAST, plain_names, st.lists(stmts, max_size=6).map(tuple),
                      st.none() | st.lists(directives, max_size=4).map(tuple), st.none(), st.none())

# --------------------------------------------------------------------------- rendering with random layout

_WS = " \t\f"
# drawing from short fixed lists keeps generation cheap; the layout is what varies, not its contents
_SPACES = ("", "", "", " ", " ", "  ", "\t", " \f ")
_SPACES1 = (" ", " ", "  ", "\t", "\f", " \t ")
_COMMENTS = ("", "", "", "#", "# note", "#;{}()=", "# sigmoid(W x)", "#\u00e9 \u2028\x85\r\x0b")
_comment_text = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=8)


def ws(draw, min_size=0) -> str:
    return draw(st.sampled_from(_SPACES1 if min_size else _SPACES))


def newline(draw) -> str:
    comment = draw(st.sampled_from(_COMMENTS) | _comment_text.map(lambda t: "#" + t))
    return comment + draw(st.sampled_from(["\n", "\n", "\r\n"]))


def gap(draw, depth: int) -> str:
    """Space between two tokens of a statement: newlines and comments only inside parentheses."""
    if depth == 0 or draw(st.integers(0, 4)):
        return ws(draw)
    return ws(draw) + newline(draw) + ws(draw)


def sep(draw) -> str:
    """One statement separator: a run of ';' and newlines (with comments) that the post-lexer collapses."""
    units = draw(st.lists(st.sampled_from([";", "nl"]), min_size=1, max_size=3))
    return "".join(ws(draw) + (u if u == ";" else newline(draw)) + ws(draw) for u in units)


def sep_opt(draw) -> str:
    return sep(draw) if draw(st.booleans()) else ws(draw)


def render_expr(draw, e, need: int, depth: int) -> str:
    if level(e) < need or draw(st.integers(0, 9)) == 0:  # needed, or redundant, parentheses
        inner = render_bare(draw, e, depth + 1)
        return "(" + gap(draw, depth + 1) + inner + gap(draw, depth + 1) + ")"
    return render_bare(draw, e, depth)


def render_bare(draw, e, depth: int) -> str:
    if isinstance(e, Number):
        return e.span  # the drawn source text
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Call):
        d = depth + 1
        inner = ("," + gap(draw, d)).join(render_expr(draw, a, SUM, d) for a in e.args)
        return e.func + ws(draw) + "(" + gap(draw, d) + inner + gap(draw, d) + ")"
    if isinstance(e, MatVec):
        operand = render_expr(draw, e.operand, APPLY, depth)
        space = gap(draw, depth)
        if not space.strip(_WS) and not operand.startswith("("):
            space += " "  # 'W x', not the one matrix name 'Wx'
        return e.matrix + space + operand
    if isinstance(e, Neg):
        return "-" + gap(draw, depth) + render_expr(draw, e.arg, UNARY, depth)
    (left, ln), (right, rn) = child_levels(e)
    return (render_expr(draw, left, ln, depth) + gap(draw, depth) + e.op + gap(draw, depth)
            + render_expr(draw, right, rn, depth))


def render_stmt(draw, s) -> str:
    if isinstance(s, InputDecl):
        return "input" + ws(draw, 1) + s.name
    if isinstance(s, OutputDecl):
        return "output" + ws(draw, 1) + s.name
    if isinstance(s, StateDecl):
        items = [i.name + ("" if i.size is None else ws(draw) + ":" + ws(draw) + i.size) for i in s.items]
        return "state" + ws(draw, 1) + "".join(
            (ws(draw) + "," + ws(draw) if k else "") + item for k, item in enumerate(items))
    if isinstance(s, HeadsDecl):
        return "heads" + ws(draw, 1) + "".join((ws(draw) + "," + ws(draw) if k else "") + i.name
                                                for k, i in enumerate(s.items))
    return s.target + ws(draw) + "=" + ws(draw) + render_expr(draw, s.expr, SUM, 0)


def render_block(draw, parts) -> str:
    body = "".join((sep(draw) if k else "") + p for k, p in enumerate(parts))
    return "{" + sep_opt(draw) + body + sep_opt(draw) + "}"


def render_cell(draw, tree: CellAST) -> str:
    text = sep_opt(draw) + "cell" + ws(draw, 1) + tree.name + ws(draw)
    text += render_block(draw, [render_stmt(draw, s) for s in tree.stmts])
    if tree.schedule is not None:
        words = ["".join((ws(draw, 1) if k else "") + w for k, w in enumerate(d.words)) for d in tree.schedule]
        text += sep_opt(draw) + "schedule" + ws(draw) + render_block(draw, words)
    return text + sep_opt(draw)


@st.composite
def rendered_cells(draw):
    tree = draw(cell_asts)
    return tree, render_cell(draw, tree)


# ------------------------------------------------------------------------------------------ span checks


def span_text(text: str, s: Span) -> str:
    lines = text.split("\n")
    if s.line == s.end_line:
        return lines[s.line - 1][s.col - 1:s.end_col]
    return "\n".join([lines[s.line - 1][s.col - 1:]] + lines[s.line:s.end_line - 1]
                     + [lines[s.end_line - 1][:s.end_col]])


def check_span_bounds(text: str, s: Span, *, end_col: bool = True) -> None:
    lines = text.split("\n")  # lark counts lines by '\n' only
    assert 1 <= s.line <= len(lines), s
    assert 1 <= s.col <= len(lines[s.line - 1]) + 1, s
    assert s.line <= s.end_line <= len(lines), s
    if end_col:
        assert 1 <= s.end_col <= len(lines[s.end_line - 1]) + 1, s
        assert (s.line, s.col) <= (s.end_line, s.end_col), s


def check_spans(tree: CellAST, text: str) -> None:
    """Every span lies in the text, inside its parent's, and the named ones cover exactly their name."""
    def named(s, name):
        check_span_bounds(text, s)
        assert span_text(text, s) == name, (s, name)

    def expr(e, parent):
        check_span_bounds(text, e.span)
        assert (parent.line, parent.col) <= (e.span.line, e.span.col), (parent, e)
        assert (e.span.end_line, e.span.end_col) <= (parent.end_line, parent.end_col), (parent, e)
        if isinstance(e, Ref):
            named(e.span, e.name)
        elif isinstance(e, Number):
            assert float(span_text(text, e.span)) == e.value
        elif isinstance(e, Call):
            named(e.func_span, e.func)
        elif isinstance(e, MatVec):
            named(e.matrix_span, e.matrix)
        for child, _ in child_levels(e):
            expr(child, e.span)

    named(tree.name_span, tree.name)
    for s in tree.stmts:
        if isinstance(s, InputDecl):
            named(s.span, s.name)
        elif isinstance(s, OutputDecl):
            named(s.name_span, s.name)
            check_span_bounds(text, s.span)
        elif isinstance(s, StateDecl):
            check_span_bounds(text, s.span)
            for item in s.items:
                named(item.span, item.name)
                if item.size is not None:
                    named(item.size_span, item.size)
        elif isinstance(s, HeadsDecl):
            check_span_bounds(text, s.span)
            for item in s.items:
                named(item.span, item.name)
        else:
            named(s.target_span, s.target)
            check_span_bounds(text, s.span)
            expr(s.expr, s.span)
    for d in tree.schedule or ():
        check_span_bounds(text, d.span)
        covered = span_text(text, d.span)
        assert covered.startswith(d.words[0]) and covered.endswith(d.words[-1]), (d, covered)


# ------------------------------------------------------------------------------- 1. valid syntax parses


@fuzz_settings(200)
@given(rendered_cells())
def test_generated_programs_parse_to_the_generated_ast(case):
    tree, text = case
    parsed = syntax.parse_cell(text)
    assert normal(parsed) == normal(tree), text
    check_spans(parsed, text)


@fuzz_settings(150)
@given(rendered_cells())
def test_printed_ast_round_trips(case):
    _, text = case
    parsed = syntax.parse_cell(text)
    printed = print_cell(parsed)
    reparsed = syntax.parse_cell(printed)
    assert normal(reparsed) == normal(parsed), printed
    assert print_cell(reparsed) == printed
    check_spans(reparsed, printed)


def test_printer_round_trips_the_shipped_specs():
    for name, path in shipped_specs().items():
        parsed = syntax.parse_cell(path.read_text())
        assert normal(syntax.parse_cell(print_cell(parsed))) == normal(parsed), name
        assert lstmdsl.parse(print_cell(parsed)).cell == lstmdsl.parse(name).cell, name


# ------------------------------------------------------------------------- 1b. semantically valid cells

SWITCHES = {"fuse gates": "fuse_gates", "hoist input": "hoist_input", "fuse pointwise": "fuse_pointwise"}
valid_directives = st.one_of(
    st.builds(lambda no, s: (no + s).split(), st.sampled_from(["", "no "]), st.sampled_from(sorted(SWITCHES))),
    st.sampled_from(PRECISIONS).map(lambda p: ["precision", p]),
)
# names that may be values or parameter vectors: not keywords, functions or sizes
value_names = plain_names.filter(lambda n: n not in FUNCTIONS)


@st.composite
def valid_specs(draw):
    n_states = draw(st.integers(1, 3))
    n_inter = draw(st.integers(0, 4))
    n_vec = draw(st.integers(0, 3))
    pool = draw(st.lists(value_names, min_size=1 + n_states + n_inter + n_vec,
                         max_size=1 + n_states + n_inter + n_vec, unique=True))
    x, states = pool[0], pool[1:1 + n_states]
    inters = pool[1 + n_states:1 + n_states + n_inter]
    vectors = pool[1 + n_states + n_inter:]
    mats = draw(st.lists(matrix_names.filter(lambda m: m.lower() not in FUNCTIONS), min_size=1, max_size=5,
                         unique=True))
    k = draw(st.integers(1, len(mats)))
    in_mats, rec_mats = mats[:k], mats[k:]  # W x only; R applied to hidden-size vectors

    # every hidden-size expression has an "anchor" (a state, an update or an earlier value) outside
    # matrix operands, so all sizes are inferable; parameter vectors and matvecs join an anchored sum.
    def hid(anchors, depth):
        choice = draw(st.integers(0, 4)) if depth > 0 else 0
        if choice == 0:
            return Ref(draw(st.sampled_from(anchors)), None)
        if choice == 1:
            return Call(draw(st.sampled_from(UNARY_FUNCS)), (hid(anchors, depth - 1),), None, None)
        if choice == 2:
            return Neg(hid(anchors, depth - 1), None)
        a, b = hid(anchors, depth - 1), anything(anchors, depth - 1)
        if draw(st.booleans()):
            a, b = b, a
        return BinOp(draw(st.sampled_from("+-*/")), a, b, None)

    def anything(anchors, depth):
        choice = draw(st.integers(0, 7)) if depth > 0 else draw(st.integers(0, 4))
        if choice == 0:
            return hid(anchors, depth)
        if choice == 1:
            return draw(finite_numbers)
        if choice == 2 and vectors:
            return Ref(draw(st.sampled_from(vectors)), None)
        if choice == 3:
            return MatVec(draw(st.sampled_from(in_mats)), Ref(x, None), None, None)
        if choice == 4:
            if rec_mats:
                return MatVec(draw(st.sampled_from(rec_mats)), hid(anchors, depth - 1), None, None)
            return hid(anchors, depth)
        if choice == 5:
            return Call(draw(st.sampled_from(UNARY_FUNCS)), (anything(anchors, depth - 1),), None, None)
        if choice == 6:
            return Neg(anything(anchors, depth - 1), None)
        return BinOp(draw(st.sampled_from("+-*/")), anything(anchors, depth - 1), anything(anchors, depth - 1),
                     None)

    targets = draw(st.permutations(inters + [s + "'" for s in states]))
    anchors = list(states)
    assigns = []
    for target in targets:
        assigns.append(Assign(target, hid(anchors, draw(st.integers(0, 3))), None, None))
        anchors.append(target)
    output = draw(st.sampled_from(anchors + [x]))
    sizes = draw(st.lists(st.sampled_from([None, "hidden"]), min_size=n_states, max_size=n_states))
    state_decl = StateDecl(tuple(StateItem(s, z, None, None) for s, z in zip(states, sizes)), None)
    decls = draw(st.permutations([InputDecl(x, None), state_decl]))
    stmts = tuple(decls) + tuple(assigns) + (OutputDecl(output, None, None),)
    schedule = draw(st.none() | st.lists(valid_directives.map(lambda w: Directive(tuple(w), None)),
                                         max_size=4).map(tuple))
    tree = CellAST(draw(plain_names), stmts, schedule, None, None)
    return tree, render_cell(draw, tree), (x, states, inters, in_mats, rec_mats, vectors)


def _expected_schedule(directives) -> Schedule:
    out = {"fuse_gates": True, "hoist_input": True, "fuse_pointwise": True, "precision": "fp32"}
    for d in directives or ():
        words = " ".join(d.words)
        if words.startswith("precision "):
            out["precision"] = d.words[1]
        else:
            out[SWITCHES[words.removeprefix("no ")]] = not words.startswith("no ")
    return Schedule(**out)


def _walk(e):
    yield e
    for child, _ in child_levels(e):
        yield from _walk(child)


@fuzz_settings(150)
@given(valid_specs())
def test_generated_valid_cells_pass_every_check(case):
    tree, text, (x, states, inters, in_mats, rec_mats, vectors) = case
    try:
        spec = lstmdsl.parse(text)  # text contains '{', so it is read as spec text
    except SpecError as err:
        # constants that fold to inf or NaN (exp(900), 1 / 0) are rejected on purpose
        assume(not all(d.message.startswith("this constant expression evaluates to") for d in err.diagnostics))
        raise
    cell = spec.cell
    verify(cell)
    assert normal(spec.ast) == normal(tree)
    assert cell.input == x
    assert [(s.name, s.size) for s in cell.states] == [(s, "hidden") for s in states]
    # lowering drops values that neither a state update nor the output needs
    exprs_of = {a.target: a.expr for a in tree.stmts if isinstance(a, Assign)}
    live, todo = set(), [s + "'" for s in states] + [tree.stmts[-1].name]
    while todo:
        name = todo.pop()
        if name in exprs_of and name not in live:
            live.add(name)
            todo += [e.name for e in _walk(exprs_of[name]) if isinstance(e, Ref)]
    named = {name for name, _ in cell.names}
    assert live <= named <= set(exprs_of)  # a dead value may share a live node (hash-consing)
    used = [e for name in live for e in _walk(exprs_of[name])]
    want = {e.matrix: ("matrix", ("hidden", "input" if e.matrix in in_mats else "hidden"))
            for e in used if isinstance(e, MatVec)}
    want.update({e.name: ("vector", ("hidden",)) for e in used if isinstance(e, Ref) and e.name in vectors})
    assert {p.name: (p.kind, p.shape) for p in cell.params} == want
    out = tree.stmts[-1].name
    assert cell.output_size == ("input" if out == x else "hidden")
    assert spec.schedule == _expected_schedule(tree.schedule)
    # the printed AST is the same cell
    assert lstmdsl.parse(print_cell(spec.ast)).cell == cell


# ------------------------------------------------------------------------ 2. only SpecError, ever

FORBIDDEN = ("lark", "Token(", "Traceback", "lstmdsl.", "__ANON", "__anon", "$END", "_SEP", "_NL", "LPAR",
             "RPAR", "LBRACE", "RBRACE", "SEMI", "VisitError", "Unexpected")


def check_error(err: SpecError, text: str) -> None:
    assert type(err) is SpecError
    assert err.diagnostics
    for d in err.diagnostics:
        assert d.severity == "error"
        assert d.message
        assert d.span is not None, d
        check_span_bounds(text, d.span)
        rendered = d.render()
        for bad in FORBIDDEN:
            assert bad in text or bad not in rendered, rendered
    rendered = str(err)
    for bad in FORBIDDEN:
        assert bad in text or bad not in rendered, rendered


def parse_text(text: str):
    """lstmdsl.parse on text that must be read as spec text, never as a path."""
    assert "\n" in text or "{" in text
    try:
        return api.parse(text)
    except SpecError as err:
        check_error(err, text)
        return err


_SOUP = ["cell", "input", "state", "output", "schedule", "{", "}", "(", ")", "=", "+", "-", "*", "/", ";", ",",
         ":", "'", "\n", "\r\n", "#", "# note\n", "x", "h", "c", "c'", "h'", "y", "W", "R_h", "W_i", "sigmoid",
         "tanh", "relu", "sigmod", "Tanh", "1", "2.5e3", ".5", "1.", "1e999", "fuse", "gates", "no", "hoist",
         "precision", "fp32", "bf16", "hidden", "proj", "input_", " ", " ", "  ", "\t", "\f", "\r", "@", "\u00e9",
         "\x00", "\\"]
token_soup = st.lists(st.sampled_from(_SOUP), max_size=40).map("".join)


@fuzz_settings(300)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_spec_error(text):
    parse_text("\n" + text)


@fuzz_settings(300)
@given(token_soup)
def test_token_soup_raises_only_spec_error(text):
    parse_text("cell " + text if text.startswith("{") else "\n" + text)
    parse_text("cell c {\n" + text + "\n}")


@fuzz_settings(150)
@given(st.text(max_size=60) | token_soup)
def test_schedule_text_raises_only_spec_error(text):
    try:
        lstmdsl.parse_schedule(text)
    except SpecError as err:
        check_error(err, text)


_TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*'?|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|#[^\n]*|\r?\n|[ \t\f]+|.", re.S)
SHIPPED = sorted(p.read_text() for p in shipped_specs().values())


_RENAMES = ["x", "h", "h'", "c'", "q'", "y", "b_i", "W_i", "R", "Tanh", "sigmoid", "sigmod", "input", "state",
            "hidden", "proj", "size", "no", "precision", "fp64"]


@st.composite
def mutants(draw, texts, chars=st.characters(blacklist_categories=("Cs",)), soup=tuple(_SOUP), ops=None):
    """A text with 1-4 random edits, each on a token or on a single character."""
    text = draw(texts)
    for _ in range(draw(st.integers(1, 4))):
        toks = _TOKEN_RE.findall(text) or [""]
        i = draw(st.integers(0, len(toks) - 1))
        op = draw(st.sampled_from(ops or ["del", "dup", "swap", "tok", "ins_tok", "rename", "rename", "char_del",
                                          "char_ins", "char_rep"]))
        names = [t for t in toks if t[:1].isalpha() or t[:1] == "_"]
        if op == "rename" and names:  # keeps the syntax, mostly: reaches the semantic checks
            old, new = draw(st.sampled_from(names)), draw(st.sampled_from(names + _RENAMES))
            if draw(st.booleans()):
                toks = [new if t == old else t for t in toks]
            else:
                toks[draw(st.sampled_from([k for k, t in enumerate(toks) if t == old]))] = new
        elif op == "del":
            del toks[i]
        elif op == "dup":
            toks.insert(i, toks[i])
        elif op == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif op in ("tok", "ins_tok"):
            new = draw(st.sampled_from(soup) | st.sampled_from(toks))
            if op == "tok":
                toks[i] = new
            else:
                toks.insert(i, new)
        text = "".join(toks)
        if op.startswith("char") and text:
            j = draw(st.integers(0, len(text) - 1))
            c = draw(chars | st.sampled_from("{}()=+-*/;,:'#\n xW1."))
            text = {"char_del": text[:j] + text[j + 1:], "char_ins": text[:j] + c + text[j:],
                    "char_rep": text[:j] + c + text[j + 1:]}[op]
    return text


@fuzz_settings(300)
@given(mutants(st.sampled_from(SHIPPED)))
def test_mutated_shipped_specs_raise_only_spec_error(text):
    parse_text("\n" + text)


@fuzz_settings(150)
@given(mutants(valid_specs().map(lambda case: case[1])))
def test_mutated_valid_specs_raise_only_spec_error(text):
    parse_text("\n" + text)


@fuzz_settings(150)
@given(mutants(valid_specs().map(lambda case: case[1]), ops=["rename", "swap", "dup"]))
def test_renamed_valid_specs_raise_only_spec_error(text):
    parse_text("\n" + text)


@fuzz_settings(150)
@given(rendered_cells())
def test_grammatical_but_meaningless_cells_raise_only_spec_error(case):
    # syntactically valid, semantically anything: exercises every check in lower.py
    parse_text("\n" + case[1])


def test_stages_match_parse():
    """parse() is parse_cell, then lower, then verify: errors from the stages are the same SpecError."""
    text = "cell c {\n input x\n state h\n h' = W x + undefined_fn(h)\n output h'\n}"
    with pytest.raises(SpecError) as via_parse:
        lstmdsl.parse(text)
    with pytest.raises(SpecError) as via_stages:
        lower(syntax.parse_cell(text))
    assert str(via_parse.value) == str(via_stages.value)


# ----------------------------------------------------------------------- diagnostics show the right text


def check_display(err: SpecError, text: str) -> None:
    r"""The message names the character at the location, and the rendering quotes the located line.

    Lines are split at '\n' only, as the parser counts them (str.splitlines() also breaks at '\f',
    '\x85', '\u2028', ... and once put the caret under the wrong line).
    """
    lines = text.split("\n")
    for d in err.diagnostics:
        line = lines[d.span.line - 1]
        if d.message.startswith("unexpected character "):
            assert d.message == f"unexpected character {line[d.span.col - 1:d.span.col]!r}", d.render()
        full = line.removesuffix("\r")
        if not full.strip():
            continue
        shown = d.render().split("\n")[1].removeprefix("    ")
        if len(full) <= SHOWN:
            assert shown == full, d.render()
        else:  # a long line: a window of it around the column, "..." where cut
            inner = shown.removeprefix("...").removesuffix("...")
            starts = [i for i in range(len(full)) if full.startswith(inner, i)]  # (a repeated text: any of them)
            assert len(inner) <= SHOWN and any(
                i <= d.span.col - 1 <= i + len(inner) and shown.startswith("...") == (i > 0)
                and shown.endswith("...") == (i + len(inner) < len(full)) for i in starts), d.render()


def test_a_long_line_is_quoted_as_a_window_around_the_column():
    """A line longer than errors.SHOWN is quoted as a window of it around the column, "..." where cut (found by the
    fuzz test below: a mutant repeating a spec's first comment four times on one line)."""
    line = "cell# " + "a long comment, " * 30
    err = parse_text("\n" + line + "\n# x\ncell c {\n input x\n state h\n h' = tanh(W x + R h)\n output h' }\n")
    assert isinstance(err, SpecError)
    check_display(err, "\n" + line + "\n")


@fuzz_settings(200)
@given(st.text(max_size=120) | token_soup | mutants(st.sampled_from(SHIPPED)))
def test_diagnostic_quotes_the_line_and_character_it_points_at(text):
    text = "\n" + text
    err = parse_text(text)
    if isinstance(err, SpecError):
        check_display(err, text)


@pytest.mark.parametrize("text", ["\ncell c {\r input x }", "\ncell c {\x85 input x }", "\n\u2028",
                                  "cell c {\f input x; y = = }", "cell c {\r\n input x; y = = }"],
                         ids=["cr", "nel", "u2028", "formfeed", "crlf"])
def test_diagnostic_with_other_line_breaks_quotes_the_right_text(text):
    with pytest.raises(SpecError) as err:
        lstmdsl.parse(text)
    check_display(err.value, text)


# ------------------------------------------------------------- regressions: bugs these properties found

_CHAINS = {"sum": "h+", "product": "h*", "neg": "-", "matvec": "W ", "call": "tanh(", "parens": "("}


@fuzz_settings(30)
@given(st.sampled_from(sorted(_CHAINS)), st.integers(1, 2000))
def test_long_chains_parse_or_raise_spec_error(kind, n):
    # found: ~490 chained operators overflowed the recursion of lark's Transformer (RecursionError /
    # lark.exceptions.VisitError escaped parse_cell)
    closing = ")" * n if _CHAINS[kind].endswith("(") else ""
    text = "cell c { input x; state h; h' = " + _CHAINS[kind] * n + "h" + closing + "; output h' }"
    try:
        lstmdsl.parse(text)
    except SpecError as err:
        assert err.diagnostics


def test_too_deep_error_has_a_location():
    text = "cell c {\n input x; state h\n h' = " + "h+" * 1000 + "h\n output h'\n}"
    with pytest.raises(SpecError) as err:
        lstmdsl.parse(text)
    check_error(err.value, text)


def test_multiline_span_end_is_inside_text():
    # found: Span.of took max(end_column - 1, column) across lines, so this ended at (3, 7)
    text = "cell c {\n  y = W (\n x)\n}"
    matvec = syntax.parse_cell(text).stmts[0].expr
    assert (matvec.span.end_line, matvec.span.end_col) == (3, 3)


def test_multiline_diagnostic_end_is_inside_text():
    text = "cell c {\n input x\n state h\n h' = h\n y = (1 +\n 2)\n output h'\n}"
    with pytest.raises(SpecError) as err:
        lstmdsl.parse(text)
    assert err.value.first.span.end_line == 6
    check_span_bounds(text, err.value.first.span)


def test_unexpected_end_of_line_ends_on_its_line():
    text = "cell c {\nyy\n}"
    with pytest.raises(SpecError) as err:
        lstmdsl.parse(text)
    assert err.value.first.span == Span(2, 3, 2, 3)
    check_span_bounds(text, err.value.first.span)


def test_lone_cr_at_the_end_is_named():
    text = "cell c {}\r"
    with pytest.raises(SpecError) as err:
        lstmdsl.parse(text)
    check_display(err.value, text)

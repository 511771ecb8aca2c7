"""Stage 1: spec text -> AST. Shipped specs parse; spans point at the source; syntax errors are located."""

from __future__ import annotations

import pytest

import lstmdsl
from lstmdsl import SpecError
from lstmdsl.errors import Span
from lstmdsl.resources import shipped_specs
from lstmdsl.syntax import Assign, BinOp, Call, MatVec, Number, Ref, parse_cell, parse_directives

from conftest import SPECS


@pytest.mark.parametrize("name", SPECS)
def test_shipped_specs_parse(name):
    path = shipped_specs()[name]
    tree = parse_cell(path.read_text(), str(path))
    assert tree.name == name
    assert tree.source.filename == str(path)


def test_ast_shape_and_spans():
    tree = parse_cell("cell c {\n  input x\n  state h\n  h' = tanh(W x + 2 * h)\n  output h'\n}")
    assign = tree.stmts[2]
    assert isinstance(assign, Assign) and assign.target == "h'"
    assert assign.target_span == Span(4, 3, 4, 4)
    call = assign.expr
    assert isinstance(call, Call) and call.func == "tanh" and call.func_span == Span(4, 8, 4, 11)
    (add,) = call.args
    assert isinstance(add, BinOp) and add.op == "+"
    assert isinstance(add.left, MatVec) and add.left.matrix == "W" and add.left.span == Span(4, 13, 4, 15)
    mul = add.right
    assert isinstance(mul, BinOp) and mul.op == "*"
    assert mul.left == Number(2.0, Span(4, 19, 4, 19))
    assert isinstance(mul.right, Ref) and mul.right.name == "h"


def test_precedence():
    tree = parse_cell("cell c { y = -a * W x + b / c - d }")
    e = tree.stmts[0].expr
    # ((-a * (W x)) + (b / c)) - d
    assert e.op == "-" and e.right.name == "d"
    assert e.left.op == "+"
    assert e.left.left.op == "*" and type(e.left.left.left).__name__ == "Neg"
    assert isinstance(e.left.left.right, MatVec)
    assert e.left.right.op == "/"


def test_matvec_chain_and_parenthesised_operand():
    e = parse_cell("cell c { y = A B (r * h) }").stmts[0].expr
    assert isinstance(e, MatVec) and e.matrix == "A"
    assert isinstance(e.operand, MatVec) and e.operand.matrix == "B"
    assert e.operand.operand.op == "*"


def test_separators_comments_and_continuation():
    text = """# header comment
cell c {   # trailing comment

    input x; state h   # two statements on one line
    h' = tanh(W x +
              R h)     # continues inside parentheses
    ;;
    output h'
}
schedule { fuse gates; no hoist input
  precision tf32 }
"""
    tree = parse_cell(text)
    assert [type(s).__name__ for s in tree.stmts] == ["InputDecl", "StateDecl", "Assign", "OutputDecl"]
    assert [d.words for d in tree.schedule] == [("fuse", "gates"), ("no", "hoist", "input"), ("precision", "tf32")]


def test_numbers():
    e = parse_cell("cell c { y = 1 + 2.5 * .5 / 1e-3 - 3.E2 }").stmts[0].expr
    values = []

    def walk(n):
        if isinstance(n, Number):
            values.append(n.value)
        for k in ("left", "right"):
            if hasattr(n, k):
                walk(getattr(n, k))
    walk(e)
    assert values == [1.0, 2.5, 0.5, 1e-3, 300.0]


def test_parse_directives_text():
    assert [d.words for d in parse_directives("precision bf16;no fuse gates")] == [
        ("precision", "bf16"), ("no", "fuse", "gates")]


# Syntax errors: (text, line, column, message fragment, hint fragment)
SYNTAX_ERRORS = [
    ("cell c {\n input x\n y = W + x\n}", 3, 8, "a matrix must be applied to a vector", "'W_i x'"),
    ("cell c {\n y = a b\n}", 2, 8, "two values with no operator between them", "capital"),
    ("cell c {\n y = 2 x\n}", 2, 8, "two values with no operator between them", None),
    ("cell c {\n y = \n}", 2, 6, "an equation needs an expression after '='", None),
    ("cell c {\n y = a % b\n}", 2, 8, "unexpected character '%'", None),
    ("cell c {\n y = sigmoid(a\n z = b\n}", 3, 2, "two values with no operator between them",
     "the '(' at line 2, column 13 is not closed"),
    ("cell c {\n input x\n", 2, 9, "unexpected end of text", "'}'"),
    ("cell c { input x state h }", 1, 18, "unexpected 'state'", "a new line or ';'"),
    ("cell c { input = 3 }", 1, 16, "unexpected '='", "a name"),
    ("cell c { W' = 1 }", 1, 10, "unexpected 'W'", None),
    ("model c { }", 1, 1, "unexpected", "'cell'"),
    ("cell c { }\nschedule { fuse gates, }", 2, 22, "unexpected ','", "a directive"),
    # the friendly messages apply anywhere, not only in the first statement or outside parentheses
    ("cell c {\n input x\n state h\n h' = W + R h\n}", 4, 9, "a matrix must be applied to a vector", None),
    ("cell c {\n input x\n h' = tanh(R h + W)\n}", 3, 19, "a matrix must be applied to a vector", None),
    ("cell c {\n input x\n h' = tanh(W x + 2 h)\n}", 3, 20, "two values with no operator between them", None),
    ("cell c {\n input x\n y = 1\n z = \n}", 4, 6, "an equation needs an expression after '='", None),
    ("cell c {\n y = tanh(W x @ R h)\n}", 2, 15, "unexpected character '@'", "operators are + - * /"),
    ("cell c {\r input x\r}\r", 1, 9, "unexpected character '\\r'", "lines end in CR alone"),  # (classic Mac)
    ("# a cell\rcell c {\r input x\r}\r", 1, 1, "unexpected end of text", "lines end in CR alone"),  # (all comment)
    ("cell c {\r\n input x \r y\r\n}", 2, 10, "unexpected character '\\r'", "operators are"),  # (a stray CR)
]


@pytest.mark.parametrize("text,line,col,message,hint", SYNTAX_ERRORS)
def test_syntax_error_locations(text, line, col, message, hint):
    with pytest.raises(SpecError) as info:
        parse_cell(text, "t.cell")
    d = info.value.first
    assert (d.span.line, d.span.col) == (line, col), d.render()
    assert message in d.message
    if hint:
        assert hint in (d.hint or ""), d.render()
    rendered = d.render()
    assert rendered.startswith(f"t.cell:{line}:{col}: error: ")
    for internal in ("lark", "Token(", "Traceback", "lstmdsl.", "_SEP", "RPAR", "$END"):
        assert internal not in rendered


def test_no_unclosed_paren_hint_when_the_paren_closes_later():
    with pytest.raises(SpecError) as info:
        parse_cell("cell c {\n y = tanh(W x + 2 h)\n}")
    assert "not closed" not in (info.value.first.hint or "")


def test_error_render_has_line_and_caret():
    with pytest.raises(SpecError) as info:
        parse_cell("cell c {\n    y = a b\n}", "t.cell")
    lines = str(info.value).splitlines()
    assert lines[0] == "t.cell:2:11: error: two values with no operator between them"
    assert lines[1] == "        y = a b"
    assert lines[2] == "              ^"
    assert lines[3].startswith("hint: ")


def test_a_long_line_is_shown_as_a_window_around_the_error():
    """A line of thousands of characters: about SHOWN of them, "..." where cut, the caret still under the error (the
    whole line and a caret per character of a long span once made one error message tens of KB; fuzzing)."""
    text = "cell d { input x; state h; a = " + " + ".join(["h"] * 400) + " + sigmod(h); h' = tanh(W x + R h); output h' }"
    with pytest.raises(SpecError) as info:
        lstmdsl.parse(text)  # (an unknown function: lowering's error)
    _, shown, caret = str(info.value).splitlines()[:3]
    assert shown.startswith("    ...") and shown.endswith("output h' }") and len(shown) < 180
    assert shown[caret.index("^"):].startswith("sigmod(") and caret.count("^") == len("sigmod")
    text = "cell d { input x; state h; h' = tanh(W x + R h" + " + h" * 3000 + "); output h' }"
    with pytest.raises(SpecError) as info:
        parse_cell(text)
    assert len(str(info.value)) < 600, len(str(info.value))


@pytest.mark.parametrize("text,line,col,message,hint", [
    ("cell c {\n  inpt x\n}", 2, 3, "unknown keyword 'inpt'", "did you mean 'input'?"),
    ("cell c {\n  input x\n  stat h\n}", 3, 3, "unknown keyword 'stat'", "did you mean 'state'?"),
    ("cell c {\n  input x\n  ouput h'\n}", 3, 3, "unknown keyword 'ouput'", "did you mean 'output'?"),
])
def test_misspelled_keywords_get_did_you_mean(text, line, col, message, hint):
    with pytest.raises(SpecError) as info:
        parse_cell(text)
    d = info.value.first
    assert (d.span.line, d.span.col, d.message, d.hint) == (line, col, message, hint)


def test_a_byte_order_mark_is_accepted_and_tabs_keep_the_caret_in_place(tmp_path):
    import lstmdsl

    f = tmp_path / "bom.cell"
    f.write_bytes("\ufeffcell c {\n\tinput x\n\tstate h\n\th' = tanh(W x + sigmod(h))\n\toutput h'\n}\n".encode())
    with pytest.raises(SpecError) as info:
        lstmdsl.parse(f)
    line, caret = str(info.value).splitlines()[1:3]
    assert line == "    \th' = tanh(W x + sigmod(h))"
    assert caret == "    \t" + " " * 16 + "^^^^^^"  # under 'sigmod' at any tab width


def test_a_file_that_is_not_utf8_is_located(tmp_path):
    import lstmdsl

    f = tmp_path / "latin1.cell"
    f.write_bytes(b"cell c {\n  input x # caf\xe9\n}\n")
    with pytest.raises(lstmdsl.InputFileError, match=r"latin1.cell:2:16: not UTF-8 text: byte 0xe9"):
        lstmdsl.parse(f)

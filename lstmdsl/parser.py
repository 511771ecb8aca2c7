"""Stage 1, its parser: spec text -> AST through lark (syntax.py calls it when its cache has no AST for the text).

The grammar is grammars/cell.lark (LALR, positions propagated). A small post-lexer turns newlines and
`;` into statement separators and drops newlines inside parentheses, so long equations can be wrapped.
A lark Transformer builds syntax_tree.py's frozen AST dataclasses; every node carries its source Span. Syntax
errors become a SpecError with the location, the line, a caret and a hint; lark's own exceptions never
reach the user. Importing lark and loading its tables is most of a warm compile's time in Python (about 0.1
s of 0.2 on a slow CPU), which is why syntax.py keeps each text's AST in the cache and imports this module
only for a text it has not parsed before.
"""

from __future__ import annotations

import difflib
import functools
import re

import lark
from lark import Token, Transformer, v_args

from .cache import cache_dir
from .errors import Diagnostic, Source, Span, SpecError
from .resources import resource_dir
from .syntax_tree import (Assign, BinOp, Call, CellAST, Directive, HeadsDecl, HeadsItem, InputDecl, MatVec, Neg,
                          Number, OutputDecl, Ref, StateDecl, StateItem, depth, too_deep)

_SEPARATORS = ("_NL", "SEMI")


class _StatementSeparators:
    """Post-lexer: newlines and ';' -> one _SEP token between statements.

    Separators inside parentheses are dropped (the statement continues), runs of separators collapse
    into one, and separators right after '{' or at the start of the text are dropped; the grammar
    allows one before '}' and at the end. Tokens are passed on at once, never held back: the contextual
    lexer chooses the next token by the parser state, which must already have seen the separator.
    """

    always_accept = _SEPARATORS

    def __init__(self) -> None:
        self.recent: tuple[Token | None, Token | None] = (None, None)  # the last two tokens passed on

    def _emit(self, tok: Token) -> Token:
        self.recent = (self.recent[1], tok)
        return tok

    def process(self, stream):
        self.recent = (None, None)
        depth = 0
        previous = None
        for tok in stream:
            if tok.type in _SEPARATORS:
                if tok.type == "SEMI" and depth > 0:
                    yield self._emit(tok)  # a ';' inside parentheses is an error the parser reports
                elif depth == 0 and previous not in (None, "LBRACE", "_SEP"):
                    previous = "_SEP"
                    yield self._emit(Token.new_borrow_pos("_SEP", tok.value, tok))
                continue
            if tok.type == "LPAR":
                depth += 1
            elif tok.type == "RPAR" and depth > 0:
                depth -= 1
            previous = tok.type
            yield self._emit(tok)


def _span(meta) -> Span:
    return Span.of(meta)


@v_args(meta=True)
class _ToAST(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    # expressions
    def number(self, meta, children):
        return Number(float(children[0]), _span(meta))

    def ref(self, meta, children):
        return Ref(str(children[0]), _span(meta))

    def call(self, meta, children):
        name, *args = children
        return Call(str(name), tuple(args), _span(meta), Span.of(name))

    def matvec(self, meta, children):
        name, operand = children
        return MatVec(str(name), operand, _span(meta), Span.of(name))

    def neg(self, meta, children):
        return Neg(children[0], _span(meta))

    def _binop(op):  # noqa: N805 - a method factory used in the class body
        def build(self, meta, children):
            return BinOp(op, children[0], children[1], _span(meta))
        return build

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")

    # statements
    def input_decl(self, meta, children):
        return InputDecl(str(children[0]), Span.of(children[0]))

    def state_item(self, meta, children):
        name = children[0]
        size = children[1] if len(children) > 1 else None
        return StateItem(str(name), str(size) if size is not None else None, Span.of(name),
                         Span.of(size) if size is not None else None)

    def state_decl(self, meta, children):
        return StateDecl(tuple(children), _span(meta))

    def heads_decl(self, meta, children):
        return HeadsDecl(tuple(HeadsItem(str(m), Span.of(m)) for m in children), _span(meta))

    def assign(self, meta, children):
        target, expr = children
        return Assign(str(target), expr, _span(meta), Span.of(target))

    def output_decl(self, meta, children):
        return OutputDecl(str(children[0]), _span(meta), Span.of(children[0]))

    def directive(self, meta, children):
        return Directive(tuple(str(w) for w in children), _span(meta))

    def schedule(self, meta, children):
        return tuple(children)

    def schedule_text(self, meta, children):
        return tuple(children)

    def cell(self, meta, children):
        name, *stmts = children
        return (str(name), Span.of(name), tuple(stmts))

    def start(self, meta, children):
        (name, name_span, stmts), *rest = children
        return CellAST(name, stmts, rest[0] if rest else None, self.source, name_span)


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    """The LALR parser. Building its tables takes longer than a whole compile from the cache, so lark
    keeps them in $LSTMDSL_CACHE (checked against the grammar and lark's version when loaded; lark
    rebuilds them when the file is missing, stale or damaged)."""
    grammar = (resource_dir("grammars") / "cell.lark").read_text()
    options = dict(parser="lalr", lexer="contextual", postlex=_StatementSeparators(), propagate_positions=True,
                   start=["start", "schedule_text"], maybe_placeholders=False)
    path = cache_dir() / f"grammar-lark-{lark.__version__}.cache"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return lark.Lark(grammar, cache=str(path), **options)
    except OSError:  # the cache cannot be written: build the tables each time
        return lark.Lark(grammar, **options)


# Readable names for the grammar's terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "NAME": "a name", "MATRIX": "a matrix name", "NUMBER": "a number", "WORD": "a directive",
    "_SEP": "a new line or ';'", "$END": "the end of the text",
}

# Friendlier messages for the common mistakes, chosen by the token before the unexpected one and the
# unexpected one itself (so they apply anywhere in a spec, not only where an example was written).
_VALUE_END = {"NAME", "NUMBER", "RPAR"}
_STATEMENT_END = {"_SEP", "RBRACE", "RPAR", "$END"}
_COMMON_MISTAKES = [
    (lambda prev, tok: prev == "MATRIX" and tok in _STATEMENT_END | {"PLUS", "MINUS", "STAR", "SLASH"},
     "a matrix must be applied to a vector",
     "write the operand right after the matrix name, e.g. 'W_i x', 'W_h (r * h)' or 'W (-x)'"),
    # (outside the schedule block a name the parser did not expect is lexed as a WORD)
    (lambda prev, tok: prev in _VALUE_END and tok in {"NAME", "WORD", "NUMBER", "MATRIX", "LPAR"},
     "two values with no operator between them",
     "only a matrix (a name with a capital first letter) may stand right before its operand"),
    (lambda prev, tok: prev == "EQUAL" and tok in _STATEMENT_END, "an equation needs an expression after '='",
     None),
]


def _describe_token(tok: Token) -> str:
    if tok.type == "_SEP":
        return "end of line" if tok.value != ";" else "';'"
    if tok.type == "$END":
        return "end of text"
    return repr(str(tok.value))


def _expected_list(names) -> str:
    parser = _parser()
    words = set()
    for name in names:
        if name in _SEPARATORS:
            continue  # the post-lexer accepts these everywhere; _SEP says where a statement may end
        if name in _TERMINAL_NAMES:
            words.add(_TERMINAL_NAMES[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.add(name.lower())
            continue
        words.add(repr(pattern.value) if pattern.type == "str" else name.lower())
    return ", ".join(sorted(words))


_KEYWORDS = ("input", "state", "heads", "output", "cell", "schedule")


def _misspelled_keyword(source: Source, tok) -> tuple[str, str] | None:
    """(word, keyword) when the token the parser stumbled after is a statement's first word and looks like a
    misspelled keyword (inpt x, stat h, ouput h')."""
    if tok is None or tok.type not in ("NAME", "WORD") or str(tok.value) in _KEYWORDS:
        return None
    line = source.line(tok.line)
    if line[:tok.column - 1].strip() not in ("", "{"):
        return None  # not the first word of a statement
    close = difflib.get_close_matches(str(tok.value), _KEYWORDS, n=1, cutoff=0.6)
    return (str(tok.value), close[0]) if close else None


def _unclosed_paren(source: Source, line: int, col: int) -> Span | None:
    """The last '(' before (line, col) that no ')' in the whole text closes; comments are skipped."""
    stack: list[Span] = []
    for lineno, content in enumerate(source.lines(), start=1):
        for c_index, ch in enumerate(content, start=1):
            if ch == "#":
                break
            if ch == "(":
                stack.append(Span(lineno, c_index, lineno, c_index))
            elif ch == ")" and stack:
                stack.pop()
    never_closed = [p for p in stack if (p.line, p.col) < (line, col)]
    return never_closed[-1] if never_closed else None


_LONE_CR = re.compile(r"\r(?!\n)")  # (more of them than newlines: a file saved with classic Mac OS line ends)


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: Source) -> SpecError:
    line, col = getattr(err, "line", -1), getattr(err, "column", -1)
    if line is None or line < 1:  # unexpected end of text: point after the last character
        lines = source.lines()
        while len(lines) > 1 and not lines[-1].strip():
            lines.pop()
        line, col = len(lines), len(lines[-1]) + 1
    span = Span(line, col, line, col)
    hint = None
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        pos = getattr(err, "pos_in_stream", None)
        char = source.text[pos] if pos is not None and 0 <= pos < len(source.text) else "?"
        message = f"unexpected character {char!r}"
        hint = ("only names of states take a prime (c' is the state c after the step)" if char == "'" else
                "operators are + - * /; names are letters, digits and _; '#' starts a comment")
    else:
        tok = getattr(err, "token", None)
        interactive = getattr(err, "interactive_parser", None)
        # what the parser accepts here; the lexer's own list would always include the separators
        expected = interactive.accepts() if interactive is not None else getattr(err, "expected", set())
        if tok is not None and tok.type != "$END":
            one_line = (tok.end_line or tok.line) == tok.line  # a newline token ends on the next line
            span = Span(tok.line, tok.column, tok.line,
                        max((tok.end_column or tok.column + 1) - 1, tok.column) if one_line else tok.column)
        message = f"unexpected {_describe_token(tok)}" if tok is not None else "unexpected end of text"
        hint = f"expected {_expected_list(expected)}" if expected else None
        before, last = _parser().options.postlex.recent
        previous = before if last is not None and tok is not None and last.start_pos == tok.start_pos else last
        kind = tok.type if tok is not None else "$END"
        for applies, friendly, friendly_hint in _COMMON_MISTAKES:
            if previous is not None and applies(previous.type, kind):
                message, hint = friendly, friendly_hint or hint
                break
        keyword = _misspelled_keyword(source, previous)
        if keyword is not None:
            word, meant = keyword
            message = f"unknown keyword '{word}'"
            hint = f"did you mean '{meant}'?"
            span = Span(previous.line, previous.column, previous.line, previous.column + len(word) - 1)
    open_paren = _unclosed_paren(source, span.line, span.col)
    if open_paren is not None:
        hint = f"the '(' at line {open_paren.line}, column {open_paren.col} is not closed"
    if len(_LONE_CR.findall(source.text)) > source.text.count("\n"):  # (whatever the error: there, a first comment
        hint = ("lines end in CR alone here (classic Mac OS line ends): save the file with LF or CRLF line "
                "ends")                                                     # runs to the end of the file)
    return SpecError([Diagnostic("error", message, source, span, hint)])


def parse_cell(source: Source) -> CellAST:
    """The AST of a spec's text. Raises SpecError on a syntax error."""
    try:
        tree = _parser().parse(source.text, start="start")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    try:
        return _ToAST(source).transform(tree)
    except (RecursionError, lark.exceptions.VisitError) as err:
        if isinstance(err, lark.exceptions.VisitError) and not isinstance(err.orig_exc, RecursionError):
            raise
        statements = [t for t in tree.iter_subtrees_topdown() if t.data in ("assign", "directive")]
        deepest = max(statements, key=depth)
        raise too_deep(source, Span.of(deepest.meta)) from None


def parse_directives(source: Source) -> tuple[Directive, ...]:
    """The directives of schedule text ("fuse gates; precision fp32"). Raises SpecError."""
    try:
        tree = _parser().parse(source.text, start="schedule_text")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    return _ToAST(source).transform(tree)

"""Stage 1: spec text -> AST (syntax_tree.py's frozen dataclasses, re-exported here).

parser.py makes the AST with lark (grammars/cell.lark; syntax errors become a SpecError with the location, the
line, a caret and a hint). A text parsed before is not parsed again: its AST is kept in this process and in the
cache ($LSTMDSL_CACHE/ast, keyed by the text, its file name and the code that parses it), so a warm start
imports no lark (about 0.1 s of a warm compile's 0.2 in Python on a slow CPU: importing lark and loading its
tables).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from .cache import cached_object, files_digest
from .errors import Source
from .resources import resource_dir
from .syntax_tree import (Assign, BinOp, Call, CellAST, Directive, Expr, HeadsDecl, HeadsItem, InputDecl, MatVec,
                          Neg, Number, OutputDecl, Ref, StateDecl, StateItem, Stmt, deepest_statement, depth,
                          too_deep)
from .version import __version__

__all__ = ["Number", "Ref", "Call", "MatVec", "Neg", "BinOp", "Expr", "InputDecl", "StateItem", "StateDecl",
           "Assign", "OutputDecl", "HeadsItem", "HeadsDecl", "Stmt", "Directive", "CellAST", "deepest_statement",
           "depth", "too_deep", "parse_cell", "parse_directives"]

# ------------------------------------------------------------------------------------------- parsing


def parse_cell(text: str, filename: str = "<string>") -> CellAST:
    """Parse spec text into a CellAST. Raises SpecError on a syntax error. A UTF-8 byte-order mark at the
    start is skipped."""
    return _parsed("cell", text.removeprefix("\ufeff"), str(filename))


def parse_directives(text: str, filename: str = "<schedule>") -> tuple[Directive, ...]:
    """Parse schedule text ("fuse gates; precision fp32") into directives. Raises SpecError."""
    return _parsed("schedule", text, str(filename))


@functools.lru_cache(maxsize=256)
def _parsed(start: str, text: str, filename: str):
    """parser.py's AST of the text (start: "cell" or "schedule"), kept on disk under the text, its file name
    and _code() (a damaged entry is parsed again; a text with a syntax error is never kept)."""
    def parse():
        from . import parser  # (imports lark: only for a text not parsed before)

        source = Source(text, filename)
        return parser.parse_cell(source) if start == "cell" else parser.parse_directives(source)
    code = _code()
    if code is None:
        return parse()
    return cached_object("ast", repr((start, filename, text, code)), parse, CellAST if start == "cell" else tuple)


@functools.lru_cache(maxsize=None)
def _code() -> str | None:
    """A digest of what makes the AST: the grammar, syntax_tree.py, this module, parser.py, errors.py (Source and
    Span), lark's __init__.py (its version; found, not imported), lstmdsl's version and Python's (its pickles);
    None where a file cannot be read (no disk cache then)."""
    here, lark = Path(__file__).parent, importlib.util.find_spec("lark")
    if lark is None or lark.origin is None:
        return None
    files = (resource_dir("grammars") / "cell.lark", here / "syntax_tree.py", here / "syntax.py", here / "parser.py",
             here / "errors.py", lark.origin)
    return files_digest(files, f"{__version__} {sys.version_info[:2]}")

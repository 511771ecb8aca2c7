"""The front end as one call: read a spec (a path, spec text or a shipped spec's name), parse it, check
and lower it, and read its schedule block. `parse` returns a Spec, the checked value every later stage
starts from."""

from __future__ import annotations

import difflib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import Diagnostic, InputFileError, Source, SpecWarning, UsageError, warn_caller
from .files import exists, is_dir, is_file
from .grad import StepGrad, differentiate
from .ir import HEADS, Cell, verify
from .lower import lower
from .resources import shipped_specs
from .schedule import Schedule, apply_directives
from .syntax import CellAST, deepest_statement, parse_cell, too_deep


@dataclass(frozen=True)
class Spec:
    """A checked spec: its AST, Cell IR, schedule (from the spec's block) and warnings."""

    ast: CellAST
    cell: Cell
    schedule: Schedule
    warnings: tuple[Diagnostic, ...]

    @property
    def name(self) -> str:
        return self.cell.name

    def __repr__(self) -> str:  # (the dataclass's would print the whole AST and IR)
        c = self.cell
        return (f"<Spec {c.name} from {self.source.filename}: states {', '.join(s.name for s in c.states)}; "
                f"{len(c.params)} parameters; {len(self.warnings)} warnings>")

    @property
    def source(self) -> Source:
        return self.ast.source

    @functools.cached_property
    def grad(self) -> StepGrad:
        return differentiate(self.cell)

    def uses_size(self, size: str) -> bool:
        """Whether the cell has a value, parameter or state of this size ("heads": a block-diagonal matrix)."""
        c = self.cell
        if size == HEADS:
            return any(p.heads for p in c.params)
        return (any(n.size == size for n in c.nodes) or any(size in (p.shape[0], p.cols if p.kind == "matrix" else None) for p in c.params)
                or any(s.size == size for s in c.states))


MAX_SPEC_BYTES = 16 * 2**20  # a spec file's largest size (the shipped ones are a few KiB)


def read_spec_text(f, name: str) -> str:
    """A spec's text from a binary file object (a file, the standard input): at most MAX_SPEC_BYTES (/dev/zero or a
    huge file by mistake never ends), UTF-8; InputFileError naming `name` otherwise."""
    data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise InputFileError(f"'{name}' is larger than {MAX_SPEC_BYTES // 2**20} MiB: not a spec file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputFileError(f"{name}:{line}:{col}: not UTF-8 text: byte 0x{data[err.start]:02x} cannot start "
                             "or continue a character (save the file as UTF-8)") from None


def _read_spec(path_or_text: str | Path) -> tuple[str, str]:
    """(text, filename) for a path, spec text, or the name of a shipped spec."""
    if not isinstance(path_or_text, (str, Path)):
        raise UsageError(f"a spec is a path, spec text or a shipped spec's name (a str), got "
                         f"{type(path_or_text).__name__}")
    if isinstance(path_or_text, str) and not path_or_text.strip() and "\n" not in path_or_text:
        raise UsageError("the spec is empty: give a path, spec text or a shipped spec's name "
                         f"({', '.join(shipped_specs())})")
    # (one line with a brace: spec text, unless it names a file, as 'my{1}.cell' may)
    if isinstance(path_or_text, Path) or "\n" not in path_or_text and ("{" not in path_or_text
                                                                       or is_file(path_or_text)):
        if "\0" in str(path_or_text):
            raise InputFileError(f"{str(path_or_text)!r} is not a file name (it holds a NUL character)")
        path = Path(path_or_text)
        shipped = shipped_specs()
        if (not exists(path) or is_dir(path)) and str(path_or_text) in shipped:  # (a folder of that name beside)
            path = shipped[str(path_or_text)]
        try:
            with path.open("rb") as f:
                return read_spec_text(f, str(path)), str(path)
        except FileNotFoundError:
            near = difflib.get_close_matches(str(path_or_text), list(shipped), n=1)
            raise InputFileError(f"no spec file '{path}'" + (f": did you mean '{near[0]}'?" if near else "") +
                                 f" (shipped specs: {', '.join(shipped)})") from None
        except IsADirectoryError:
            raise InputFileError(f"'{path}' is a folder, not a spec file") from None
        except OSError as err:
            raise InputFileError(f"cannot read spec file '{path}': {err.strerror or err}") from None
    return path_or_text, "<string>"


def parse_quietly(path_or_text: str | Path) -> Spec:
    """parse, its SpecWarnings not issued: lstmdsl's own second reads of a spec (a saved layer's, a training
    run's), whose warnings the user has had (or gets) from the first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)
        return parse(path_or_text)


def parse(path_or_text: str | Path) -> Spec:
    """Parse and check a spec. Raises SpecError (with every error found) or InputFileError; its warnings (also
    in Spec.warnings) are issued as SpecWarning."""
    text, filename = _read_spec(path_or_text)
    tree = parse_cell(text, filename)
    try:
        lowered = lower(tree)
    except RecursionError:
        raise too_deep(tree.source, deepest_statement(tree)) from None
    verify(lowered.cell)
    schedule = apply_directives(Schedule(), tree.schedule or (), tree.source)
    for w in lowered.warnings:  # (a typo that makes a new parameter trains without a word otherwise)
        warn_caller(w.render(), SpecWarning)
    return Spec(tree, lowered.cell, schedule, lowered.warnings)

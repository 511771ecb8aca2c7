"""Errors and diagnostics written for users.

Every problem a user can cause is an ``LstmdslError`` subclass with a message that says what is wrong and
where.  Problems in a spec are ``Diagnostic`` values rendered like a compiler's:

    specs/bad.cell:4:24: error: unknown function 'sigmod'
        i = sigmoid(W_i x) + sigmod(b_i)
                             ^^^^^^
    hint: did you mean 'sigmoid'?

The CLI maps each error class to an exit code (sysexits.h conventions) and never shows a traceback.
"""

from __future__ import annotations

import collections
import difflib
import functools
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# Exit codes (sysexits.h), one per error class; the CLI and docs/cli.md use these.
EXIT_USAGE = 64        # bad command-line arguments
EXIT_SPEC = 65         # the spec (or schedule text) has errors
EXIT_NOINPUT = 66      # a file that was named does not exist or cannot be read
EXIT_UNAVAILABLE = 69  # a backend or device that is not available here
EXIT_SOFTWARE = 70     # an internal error: a bug in lstmdsl
EXIT_CANTCREAT = 73    # an output file or folder cannot be written
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (training leaves a checkpoint to resume from)
EXIT_CHECK_FAILED = 1  # a numerical check (gradient check, GPU vs reference) failed


@dataclass(frozen=True, slots=True)
class Source:
    """The text of a spec and the name to show for it (a path, or '<string>')."""

    text: str
    filename: str = "<string>"

    def lines(self) -> list[str]:
        """The lines as the parser counts them: split at '\n' only (not at '\f', '\x85', '\u2028', ...)."""
        return list(_lines(self.text))

    def line(self, lineno: int) -> str:
        lines = self.lines()
        return lines[lineno - 1] if 1 <= lineno <= len(lines) else ""


@functools.lru_cache(maxsize=8)
def _lines(text: str) -> tuple[str, ...]:  # (once a text: a diagnostic renders its line, thousands in a big spec)
    return tuple(ln.removesuffix("\r") for ln in text.split("\n"))


@dataclass(frozen=True, slots=True)
class Span:
    """A 1-based, end-inclusive line/column range in a Source."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def of(meta_or_token) -> "Span":
        """Span of a lark Token or a tree's meta (propagated positions)."""
        m = meta_or_token
        last = m.end_column - 1  # lark's end column is one past the last character
        end_col = max(last, m.column) if m.end_line == m.line else max(last, 1)
        return Span(m.line, m.column, m.end_line, end_col)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    message: str
    source: Source
    span: Span | None = None
    hint: str | None = None

    def render(self) -> str:
        where = self.source.filename
        if self.span is not None:
            where += f":{self.span.line}:{self.span.col}"
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.span is not None:
            text = self.source.line(self.span.line)
            if text:
                last = self.span.end_col if self.span.end_line == self.span.line else len(text)
                # a long line: a window of SHOWN characters from a little before the column, "..." where cut (a
                # whole line of thousands of characters, and as many carets, once made one error tens of KB)
                start = max(0, self.span.col - 1 - SHOWN // 4) if len(text) > SHOWN else 0
                end = min(len(text), start + SHOWN)
                width = max(1, min(last, end) - self.span.col + 1)
                # the caret under the column: tabs before it stay tabs, so it lines up however wide they are
                lead = "".join("\t" if ch == "\t" else " " for ch in text[start:self.span.col - 1])
                cut = "..." if start else ""
                out.append("    " + cut + text[start:end] + ("..." if end < len(text) else ""))
                out.append("    " + " " * len(cut) + lead + "^" * width)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


SHOWN = 160  # characters of a spec's line a diagnostic shows at most


class LstmdslError(Exception):
    """Base class of every error lstmdsl raises on purpose."""

    exit_code = EXIT_SOFTWARE

    def as_json(self) -> dict:
        """The error as the JSON object the CLI's --json prints: the message, its kind, the exit code (and for a
        spec error every diagnostic with its file, line and column: SpecError)."""
        return {"error": str(self), "kind": type(self).__name__, "exit_code": self.exit_code}


class SpecError(LstmdslError):
    """A spec (or schedule text) is invalid. Holds one or more error diagnostics."""

    exit_code = EXIT_SPEC

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]):
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    def as_json(self) -> dict:
        return {**super().as_json(), "diagnostics": [
            {"severity": d.severity, "message": d.message, "file": d.source.filename,
             "line": d.span.line if d.span else None, "column": d.span.col if d.span else None, "hint": d.hint}
            for d in self.diagnostics]}

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]


class UsageError(LstmdslError):
    """Arguments that do not fit: wrong sizes, shapes, dtypes, options."""

    exit_code = EXIT_USAGE


class InputFileError(LstmdslError):
    """A file that was named cannot be found or read."""

    exit_code = EXIT_NOINPUT


class OutputFileError(LstmdslError):
    """A file or folder lstmdsl was asked to write cannot be written."""

    exit_code = EXIT_CANTCREAT


class BackendUnavailable(LstmdslError):
    """The backend or device asked for is not available on this machine."""

    exit_code = EXIT_UNAVAILABLE


class SpecWarning(UserWarning):
    """A spec's warning (Spec.warnings: a name that becomes a new parameter, an unused value), which
    lstmdsl.parse also issues as a Python warning, so API users see it; the CLI prints them itself."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn, attributed to the first caller outside lstmdsl (however deep in the package it is issued:
    compile() called by load(), parse() by compile())."""
    level, frame = 3, sys._getframe(2)  # (level 1: this line; 2: the function that called this one)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def check_free_memory(need: int, what: str, lower: str) -> None:
    """Refuse sizes whose arrays cannot fit this machine's memory now, before they are made (past it, the system's
    out-of-memory killer stops the process without a word): a UsageError naming `what` and the sizes to `lower`."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return  # (not Linux: MemoryError, if it comes, is reported by the CLI and compile())
    try:  # a container's own limit (cgroup v2), where it is lower than what the machine has free; its usage counts
        # the file cache, of which the inactive part is reclaimed before anything is refused
        cgroup = Path("/sys/fs/cgroup")
        limit, used = (cgroup.joinpath(n).read_text().strip() for n in ("memory.max", "memory.current"))
        stat = dict(ln.split() for ln in cgroup.joinpath("memory.stat").read_text().splitlines() if ln.count(" ") == 1)
        if limit != "max":
            free = min(free, max(0, int(limit) - int(used) + int(stat.get("inactive_file", 0))))
    except (OSError, ValueError):
        pass
    if need > free:
        raise UsageError(f"{what} would keep about {_amount(need)} at these sizes, more than the {_amount(free)} of "
                         f"memory free here: lower {lower}")


def _amount(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def did_you_mean(name: str, candidates) -> str | None:
    """'did you mean ...?' for the candidate closest to name (difflib's ratio at least 0.6), or None. Among more
    than 200 candidates (a generated spec's thousands of names) only the 30 that share the most pairs of adjacent
    characters with name are compared: each comparison costs microseconds, and a search for each of a spec's
    undefined names made checking it quadratic (3000 of them: 41 s here, now 3 s)."""
    pool = candidates if isinstance(candidates, (set, frozenset, dict)) else set(candidates)
    if len(pool) <= 200:
        pool = sorted(pool)
    else:
        index = _pairs_index(frozenset(pool))
        shared = collections.Counter(n for p in _pairs(name) for n in index.get(p, ()))
        pool = sorted(n for n, _ in shared.most_common(30))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _pairs(name: str) -> list[str]:  # (in order, once each: the search and its ties are the same every run)
    return list(dict.fromkeys(name[i:i + 2] for i in range(max(len(name) - 1, 1))))


@functools.lru_cache(maxsize=4)
def _pairs_index(names: frozenset[str]) -> dict[str, list[str]]:
    """Each pair of adjacent characters -> the names holding it (a one-letter name: its letter)."""
    index: dict[str, list[str]] = {}
    for n in sorted(names):
        for p in _pairs(n):
            index.setdefault(p, []).append(n)
    return index

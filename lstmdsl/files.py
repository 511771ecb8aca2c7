"""Writing files so that no reader ever trusts half of one: every file lstmdsl writes (saved layers,
training outputs and checkpoints, cache entries, benchmark results) goes to a temporary file in the same
folder first and is renamed over the target when complete, so a crash, a full disk or a kill leaves the
old file or none, never a truncated one (devices and pipes, such as -o /dev/stdout, are written in place).
And checking, before long work starts, that an output folder can be written at all."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import OutputFileError


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_atomically(path: Path | str, write: Callable[[io.BufferedWriter], None], sync: bool = True) -> None:
    """Call write(file) on a temporary file beside path, then rename it to path. Raises OutputFileError
    saying what could not be written and why; the target is then unchanged. A symbolic link is kept: its target
    is what is written. A device, a pipe or a process's file descriptor (-o /dev/stdout) is written in place, as
    it is: nothing can be renamed over it (a closed pipe there raises BrokenPipeError, as print would)."""
    given = path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        path = path.resolve() if path.is_symlink() else path
        if str(path).startswith(("/dev/", "/proc/")) or (path.exists() and not path.is_file()):
            with open(given, "wb") as f:
                write(f)
            return
        above = next((p for p in path.parents if p.exists()), None)  # (mkdir would say "File exists")
        if above is not None and not above.is_dir():
            raise NotADirectoryError(20, f"{above} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except BrokenPipeError:
        raise
    except OSError as err:
        raise OutputFileError(f"cannot write {given}: {_reason(err)}") from None
    try:
        # mkstemp makes the file 0600: give it the mode a plain open() would (the file's own, or the umask's);
        # where the file system refuses modes, 0600 it stays
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:  # (off for cache entries that carry their own checksum: a torn one is made again)
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OutputFileError(f"cannot write {given}: {_reason(err)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path | str, data: bytes, sync: bool = True) -> None:
    write_atomically(path, lambda f: f.write(data), sync)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def finite_json(data):
    """data with every NaN or infinite float as None: JSON has no NaN (json.dumps writes a bare NaN that strict
    readers refuse)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def dumps(data) -> str:
    """JSON text as lstmdsl prints and writes it: indented, NaN and infinities as null."""
    return json.dumps(finite_json(data), indent=2)


def write_json(path: Path | str, data) -> None:
    write_text(path, dumps(data) + "\n")


def write_npz(path: Path | str, arrays: dict, compressed: bool = False) -> None:
    """A .npz archive at exactly `path` (numpy would add '.npz' to a name without it)."""
    save = np.savez_compressed if compressed else np.savez
    write_atomically(path, lambda f: save(f, **arrays))


def exists(path) -> bool:
    """Path(path).exists(), False where the name cannot name a file at all (too long: Python 3.11's raises)."""
    return _probe(path, Path.exists)


def is_dir(path) -> bool:
    return _probe(path, Path.is_dir)


def is_file(path) -> bool:
    return _probe(path, Path.is_file)


def _probe(path, test) -> bool:
    try:
        return test(Path(path))
    except ValueError:  # (a NUL in the name: opening it then says what is wrong)
        return False
    except OSError as err:  # (a name too long: the same; another error, no access say, is the caller's to report)
        if err.errno == errno.ENAMETOOLONG:
            return False
        raise


def output_dir(path: Path | str, what: str = "the output folder") -> Path:
    """Make sure a folder exists and files can be created in it, before any long work; OutputFileError
    (naming `what`) otherwise."""
    path = Path(path)
    if exists(path) and not is_dir(path):
        raise OutputFileError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".lstmdsl-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputFileError(f"cannot write into {what} {path}: {_reason(err)}") from None
    return path


class StdoutFailed(OutputFileError):
    """Standard output cannot be written (a full disk, /dev/full)."""


class _Stream:
    """A standard stream while a command runs, its writes and flushes through _do (the subclasses' failure rule)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str):
        return self._do("write", text)

    def flush(self):
        return self._do("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class QuietStderr(_Stream):
    """sys.stderr while a command runs: its notes, warnings and error messages are diagnostics, so one that cannot be
    written (stderr on a full disk, /dev/full, closed) is dropped, with fd 2 pointed at /dev/null so that Python's
    flush at exit does not fail again; the result on stdout and the exit code stand (they failed the run before)."""

    def __init__(self, stream):
        super().__init__(stream if stream is not None else _null())  # (None: fd 2 closed at start)

    def _do(self, what: str, *args):
        try:
            return getattr(self._stream, what)(*args)
        except (OSError, ValueError) as err:  # (ValueError: a closed file)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EPIPE, errno.EBADF, errno.EIO):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    if self._stream.fileno() == 2:  # (fd 2 only: Python's flush at exit fails no more)
                        null = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(null, 2)
                        os.close(null)
            self._stream = _null()
            return getattr(self._stream, what)(*args)


def _null():
    """One writable /dev/null a process (QuietStderr's place for what stderr cannot take)."""
    if not _NULL:
        _NULL.append(open(os.devnull, "w"))
    return _NULL[0]


_NULL: list = []


class CheckedStdout(_Stream):
    """sys.stdout while a command runs: a write that fails (a full disk, /dev/full) is an OutputFileError that
    says so, not an internal error; a closed pipe stays a BrokenPipeError (`lstmdsl ... | head`)."""

    def _do(self, what: str, *args):
        try:
            return getattr(self._stream, what)(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise StdoutFailed(f"cannot write to standard output: {err.strerror or err}") from None


def _stop(signum, frame):
    raise KeyboardInterrupt


def stop_on_sigterm():
    """SIGTERM stops a command as Ctrl-C does (exit 130; `train` saves its checkpoint first, with a handler of its
    own): a function that puts the handler before back (SIG_DFL where it was not set from Python), or None where
    none can be set (main() called off the main thread). A process blocked in a long C call (a device sync) stops
    once Python runs again."""
    if threading.current_thread() is not threading.main_thread():
        return None
    before = signal.signal(signal.SIGTERM, _stop)
    return lambda: signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)

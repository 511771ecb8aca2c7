"""The on-disk cache, in $LSTMDSL_CACHE (default ~/.cache/lstmdsl).

It keeps what is slow to make and cheap to keep: the chorale data (data.py), each spec text's AST (syntax.py)
and the grammar's parse tables (parser.py, through lark's own cache), each program's rendered CUDA source
and its cubin (runtime.py), so a spec compiled before loads without importing lark or jinja2 or starting
NVRTC. A cache that cannot be
written (a read-only home) is skipped, and a damaged file is made again: the cache never fails a run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable

from .errors import OutputFileError
from .files import write_bytes


def cache_dir() -> Path:
    """$LSTMDSL_CACHE, else ~/.cache/lstmdsl, else (no home directory, as for a container run under an
    unknown uid) a folder in the temporary directory."""
    if os.environ.get("LSTMDSL_CACHE"):
        return Path(os.environ["LSTMDSL_CACHE"])
    try:
        return Path.home() / ".cache" / "lstmdsl"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / f"lstmdsl-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _sha(text: str) -> str:
    """(surrogatepass: a file name that is not UTF-8 reaches Python with lone surrogates, which hash too)"""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def files_digest(paths, salt: str = "") -> str | None:
    """The sha256 of salt and the files' bytes, in order: part of the keys of entries made by the code in those
    files (syntax.py's ASTs, codegen.py's sources); None where one cannot be read."""
    digest = hashlib.sha256(salt.encode())
    try:
        for path in paths:
            digest.update(Path(path).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def write_bytes_atomically(path: Path, data: bytes, sync: bool = True) -> bool:
    """Write a cache entry through a temporary file (files.write_bytes), so a reader never sees half of
    it; False if the cache cannot be written (the entry is then simply not kept). sync=False: no fsync, for an
    entry whose checksum catches what a crash leaves."""
    try:
        write_bytes(path, data, sync)
        return True
    except OutputFileError:
        return False


def write_atomically(path: Path, text: str) -> bool:
    return write_bytes_atomically(path, text.encode())


def cached_text(kind: str, key: str, make: Callable[[], str]) -> str:
    """make(), kept in cache_dir()/kind under the sha256 of key. The file's first line is the sha256 of
    the rest, so a damaged or truncated file is made again instead of used."""
    path = cache_dir() / kind / f"{_sha(key)[:32]}.txt"
    body = _checked(path, "")
    try:
        if body is not None:
            return body.decode()
    except UnicodeDecodeError:
        pass
    text = make()
    _write_checked(path, text.encode(), "")
    return text


def cached_object(kind: str, key: str, make: Callable[[], object], expect: type) -> object:
    """make(), kept pickled in cache_dir()/kind under the sha256 of key, as cached_text keeps text (the file's
    first line the sha256 of the pickle and of key: a damaged entry, or one not of type expect, is made again).
    For lstmdsl's own frozen values (the AST). Read only from a folder that this user owns and not everyone may
    write (unpickling runs what the file says): else made each time and not kept."""
    digest = _sha(key)
    path = cache_dir() / kind / f"{digest[:32]}.pickle"
    if not _private(path.parent):
        return make()
    body = _checked(path, digest[:16])
    try:
        value = pickle.loads(body) if body is not None else None
        if isinstance(value, expect):
            return value
    except Exception:  # noqa: BLE001 - from a code that no longer unpickles: make it again
        pass
    value = make()
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, RecursionError, TypeError):
        return value
    _write_checked(path, body, digest[:16], sync=False)
    return value


def _checked(path: Path, tag: str) -> bytes | None:
    """An entry's body, where its first line is the sha256 of the body followed by `tag`; None where the file is
    missing, unreadable, damaged or truncated."""
    try:
        head, body = path.read_bytes().split(b"\n", 1)
    except (OSError, ValueError):
        return None
    return body if head == (hashlib.sha256(body).hexdigest() + tag).encode() else None


def _write_checked(path: Path, body: bytes, tag: str, sync: bool = True) -> None:
    """Write an entry that _checked(path, tag) reads back (not at all where the cache cannot be written)."""
    write_bytes_atomically(path, (hashlib.sha256(body).hexdigest() + tag).encode() + b"\n" + body, sync)


def _private(folder: Path) -> bool:
    """folder (or, before it exists, the first of its parents that does) is this user's and not writable by
    all (a group may write it: with a umask of 002 a user's own folders are group-writable, as Python's
    __pycache__ folders, whose files it runs, are then too); True where the system has no such notion."""
    if not hasattr(os, "getuid"):
        return True
    for p in (folder, *folder.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        return st.st_uid == os.getuid() and not st.st_mode & 0o002
    return False

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
    try:
        head, body = path.read_text().split("\n", 1)
        if head == _sha(body):
            return body
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    body = make()
    write_atomically(path, _sha(body) + "\n" + body)
    return body


def cached_object(kind: str, key: str, make: Callable[[], object], expect: type) -> object:
    """make(), kept pickled in cache_dir()/kind under the sha256 of key, as cached_text keeps text (the file's
    first line the sha256 of the pickle and of key: a damaged entry, or one not of type expect, is made again).
    For lstmdsl's own frozen values (the AST). Read only from a folder that this user owns and not everyone may
    write (unpickling runs what the file says): else made each time and not kept."""
    path = cache_dir() / kind / f"{_sha(key)[:32]}.pickle"
    if not _private(path.parent):
        return make()
    try:
        head, body = path.read_bytes().split(b"\n", 1)
        if head.decode() == hashlib.sha256(body).hexdigest() + _sha(key)[:16]:
            value = pickle.loads(body)
            if isinstance(value, expect):
                return value
    except Exception:  # noqa: BLE001 - missing, damaged or from a code that no longer unpickles: make it again
        pass
    value = make()
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, RecursionError, TypeError):
        return value
    write_bytes_atomically(path, (hashlib.sha256(body).hexdigest() + _sha(key)[:16]).encode() + b"\n" + body, False)
    return value


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

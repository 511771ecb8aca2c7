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
    return hashlib.sha256(text.encode()).hexdigest()


def write_bytes_atomically(path: Path, data: bytes) -> bool:
    """Write a cache entry through a temporary file (files.write_bytes), so a reader never sees half of
    it; False if the cache cannot be written (the entry is then simply not kept)."""
    try:
        write_bytes(path, data)
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


def cached_object(kind: str, key: str, make: Callable[[], object]) -> object:
    """make(), kept pickled in cache_dir()/kind under the sha256 of key, as cached_text keeps text (the file's
    first line the sha256 of the pickle: a damaged file is made again). For lstmdsl's own frozen values (the
    AST): an entry that cannot be read back or pickled is made again or not kept."""
    path = cache_dir() / kind / f"{_sha(key)[:32]}.pickle"
    try:
        head, body = path.read_bytes().split(b"\n", 1)
        if head.decode() == hashlib.sha256(body).hexdigest():
            return pickle.loads(body)
    except Exception:  # noqa: BLE001 - missing, damaged or from a code that no longer unpickles: make it again
        pass
    value = make()
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, RecursionError, TypeError):
        return value
    write_bytes_atomically(path, hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    return value

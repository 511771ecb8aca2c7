"""What a custom op's `handle` names: the process's Runners (torch/ops.py), registered as they are made.

The k-th Runner of a description (lstmdsl's version, the cell, the schedule, the sizes, the direction and the
parameters' layout) gets one handle in every process (a direction of a bidirectional layer a second, its
serial_handle, from its description and "serial"), a digest of the description and k: a program torch.export
saved holds its module's handles, and in another process finds the layers of its kinds there, made in the same
order (they compute what the saved ones did: the weights are the ops' inputs), or none (a UsageError), never an
unrelated layer, as a count from 1 would (that process's first); torch.compile's caches see the same constant in
every process. Copies of a module (copy.deepcopy, unpickling) are layers made too. The registry holds the Runners
weakly (a module's own and an autograd context's references keep them).
"""

from __future__ import annotations

import hashlib
import threading
import weakref

from ..errors import UsageError

_RUNNERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # handle -> Runner
_MADE: dict[str, int] = {}  # a description -> the index of the last Runner of it made in this process
_LOCK = threading.Lock()


def register(described: str, runner) -> tuple[int, int]:
    """runner's handle, registered, and its index among the layers of its description made in this process (the
    next, under a lock: modules made on two threads at once each get their own)."""
    with _LOCK:
        k = _MADE[described] = _MADE.get(described, -1) + 1
        handle = int(hashlib.sha256(f"{described}#{k}".encode()).hexdigest()[:15], 16) + 1
        while handle in _RUNNERS:  # (two descriptions' 60-bit digests alike: another number, in this process only)
            handle += 1
        _RUNNERS[handle] = runner
    return handle, k


def runner(handle: int):
    """The Runner a handle names, or a UsageError that says what a loaded program needs."""
    try:
        return _RUNNERS[handle]
    except KeyError:
        raise UsageError(f"no lstmdsl layer with handle {handle} in this process: a program that calls lstmdsl's "
                         "operators (torch.export's, saved and loaded) runs where a module of the same spec, sizes "
                         "and schedule lives, made in the same order as the one it was exported from (copies "
                         "count; its weights are the program's own); build that module first") from None

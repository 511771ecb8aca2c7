"""cuBLAS's one-time start, begun on a thread of its own as soon as a CUDA layer is asked for.

The first GEMM a process runs through cuBLAS takes 56-81 ms on the H200 (the library sets itself up and
loads its first kernel), most of a warm first result (compile() and one forward). Run as a small GEMM on a
thread when compile() begins, it passes while the main thread parses the spec, plans it and loads the
kernels: ctypes lets go of the interpreter's lock during cuBLAS's calls. compile() waits for it before it
returns (or raises), so none of it runs during a capture the caller begins afterwards or at the process's
exit; inside compile, cublas._handle (every GEMM and its timing) and device.Graph (every capture) wait too.
LSTMDSL_WARM_UP=0 in the environment turns it off. A failure here is dropped: the first real GEMM reports it.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

_THREAD: threading.Thread | None = None
_LOCK = threading.Lock()


def start(device: int, warm: Callable[[int], None]) -> None:
    """Runs warm(device) on a thread of its own, once per process (cublas.warm, given by the caller, which
    imports it there: the imports pass on the thread too)."""
    global _THREAD
    with _LOCK:
        if _THREAD is not None or os.environ.get("LSTMDSL_WARM_UP", "1") == "0":
            return
        _THREAD = threading.Thread(target=_run, args=(warm, device), name="lstmdsl-cublas-warm-up", daemon=True)
        _THREAD.start()


def settle() -> None:
    """Waits for the warm-up to finish (at once when it has, or never began)."""
    thread = _THREAD
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def _run(warm: Callable[[int], None], device: int) -> None:
    try:
        warm(device)
    except Exception:  # noqa: BLE001 - the first real GEMM meets the same failure and reports it
        pass

"""Compilation of generated CUDA, and its disk cache; and a thread that compiles into that cache while the GPU runs
(prepare_later: runtime/specialise.py's kernels compiled for a shape).

NVRTC compiles a program's source to a cubin for the GPU at hand; the cubin is kept in
$LSTMDSL_CACHE/cubin (keyed by the source, the options, the architecture and the CuPy and CUDA runtime
versions), so a spec compiled before loads without starting NVRTC at all. A damaged cubin is compiled
and written again; where NVRTC cannot make a cubin (an architecture it does not know), CuPy compiles
(it can fall back to PTX) and keeps the result in its own cache.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import re
import threading
import time
from pathlib import Path

from ..cache import cache_dir, write_bytes_atomically
from ..errors import LstmdslError
from .device import cupy


class CompileError(LstmdslError):
    """NVRTC rejected generated code: a bug in lstmdsl's templates or code generator."""


_MODULES: dict[str, object] = {}
_OPTIONS = ("--std=c++17",)
_NVRTC_ERROR_COMPILATION = 6  # nvrtcResult: the source does not compile
_FIRST_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)')


def _compile_error(source: str, log: str) -> CompileError:
    lines = source.splitlines()
    shown = "\n".join(f"{k + 1:5d}  {ln}" for k, ln in enumerate(lines[:60]))
    return CompileError(f"NVRTC could not compile the generated kernels (options {' '.join(_OPTIONS)}):\n"
                        f"{log}\nthe source begins:\n{shown}")


def nvrtc_cubin(source: str, arch: str) -> bytes | None:
    """The source compiled by NVRTC for sm_<arch>, or None where this NVRTC cannot."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        prog = nvrtc.createProgram(source, "lstmdsl.cu", [], [])
    except Exception:  # noqa: BLE001 (an older or different CuPy: use its compile path)
        return None
    try:
        nvrtc.compileProgram(prog, [*_OPTIONS, f"--gpu-architecture=sm_{arch}"])
        return nvrtc.getCUBIN(prog)
    except nvrtc.NVRTCError as err:
        if err.status == _NVRTC_ERROR_COMPILATION:
            raise _compile_error(source, nvrtc.getProgramLog(prog)) from None
        return None  # e.g. an architecture this NVRTC does not know
    except Exception:  # noqa: BLE001 (no getCUBIN in this CuPy)
        return None
    finally:
        nvrtc.destroyProgram(prog)


def _cubin_path(source: str, arch: str) -> Path:
    key = repr((cupy.__version__, cupy.cuda.runtime.runtimeGetVersion(), arch, _OPTIONS, source))
    return cache_dir() / "cubin" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.cubin"


def architecture() -> str:
    """The current device's compute capability ("90"), as the cache and NVRTC name it."""
    return cupy.cuda.Device().compute_capability


def prepare(source: str, arch: str) -> None:
    """Compiles a source into the disk cache unless it is there, so that load_module then only loads it. NVRTC
    and the file alone, no CUDA context: safe on a thread of its own while the GPU runs (runtime/specialise.py).
    Raises CompileError where NVRTC rejects the source; where it cannot make a cubin, load_module compiles; a
    damaged file (not an ELF file) is compiled and written again."""
    path = _cubin_path(source, arch)
    if not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":  # (missing, or damaged: not an ELF file)
        cubin = nvrtc_cubin(source, arch)
        if cubin is not None:
            write_bytes_atomically(path, cubin)


def load_module(source: str):
    """The loaded module of a rendered source (once per process and source)."""
    if source in _MODULES:
        return _MODULES[source]
    arch = architecture()
    path = _cubin_path(source, arch)
    module = None
    if path.is_file():
        try:
            module = cupy.RawModule(path=str(path))
            module.get_function(_FIRST_KERNEL.search(source).group(1))  # loads it: a damaged file fails here
        except Exception:  # noqa: BLE001 (a damaged or foreign file: compile again)
            module = None
    if module is None:
        cubin = nvrtc_cubin(source, arch)
        if cubin is not None and write_bytes_atomically(path, cubin):
            module = cupy.RawModule(path=str(path))
            try:
                module.get_function(_FIRST_KERNEL.search(source).group(1))
            except Exception:  # noqa: BLE001 (written but not loadable: let CuPy compile it instead)
                module = None
        if module is None:
            module = cupy.RawModule(code=source, options=_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as err:
                raise _compile_error(source, str(err)) from None
    _MODULES[source] = module
    return module


def function(module, name: str) -> int:
    """The CUfunction handle of a kernel in a loaded module."""
    return module.get_function(name).kernel.ptr


class Job:
    """One source's compile into the disk cache (prepare_later): `done` is set once it has finished, `error`
    what it raised."""

    def __init__(self, source: str, arch: str):
        self.source, self.arch = source, arch
        self.done = threading.Event()
        self.error: BaseException | None = None


_JOBS: dict[tuple[str, str], Job] = {}
_QUEUE: "queue.Queue[Job | None]" = queue.Queue()
_THREAD: threading.Thread | None = None
_LOCK = threading.Lock()
EXIT_WAIT = 30.0  # seconds the process's exit waits for the compiles asked for (none cut off inside NVRTC; a
# compile takes 0.03-0.05 s a kernel on the H200 host, and the thread keeps up with the calls that ask for them)


def prepare_later(source: str, arch: str) -> Job:
    """prepare(source, arch) on the compile thread (once per source and process): runtime/specialise.py's
    kernels compile there while the GPU runs (NVRTC lets go of the interpreter's lock)."""
    with _LOCK:
        job = _JOBS.get((source, arch))
        if job is None:
            job = _JOBS[(source, arch)] = Job(source, arch)
            _QUEUE.put(job)
            _start()
        return job


def _start() -> None:
    """The compile thread, started once (under _LOCK)."""
    global _THREAD
    if _THREAD is None:
        _THREAD = threading.Thread(target=_work, name="lstmdsl-specialise", daemon=True)
        _THREAD.start()


def prepare_now(source: str, arch: str) -> Job:
    """prepare(source, arch) on this thread (or the compile thread's job for the source, once it has finished),
    as a finished Job: its error, if any, is the caller's to report."""
    with _LOCK:
        job = _JOBS.get((source, arch))
        if job is None:
            job = _JOBS[(source, arch)] = Job(source, arch)
            try:
                prepare(source, arch)
            except Exception as err:  # noqa: BLE001 - handed to the caller with the job
                job.error = err
            job.done.set()
    job.done.wait()
    return job


def settle(timeout: float | None = None) -> bool:
    """Waits for every compile asked for so far; False where `timeout` seconds (in all) passed first."""
    with _LOCK:
        jobs = list(_JOBS.values())
    end = None if timeout is None else time.monotonic() + timeout
    return all(job.done.wait(None if end is None else max(0.0, end - time.monotonic())) for job in jobs)


def _work() -> None:
    while True:
        job = _QUEUE.get()
        if job is None:  # (the exit's)
            return
        try:
            prepare(job.source, job.arch)
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits for the job
            job.error = err
        job.done.set()


def _finish() -> None:
    """At exit: the compiles asked for finish first (a thread cut off inside NVRTC while the process unloads
    it could crash the exit; a cubin cut off half-written is not: nvrtc.prepare writes it atomically)."""
    if _THREAD is not None:
        _QUEUE.put(None)
        _THREAD.join(EXIT_WAIT)


def _after_fork() -> None:
    """In a child process forked while compiles were queued or running: the parent's compile thread is not
    there, so the compiles it had not finished run on a thread of the child's own (settle() would otherwise
    wait for ever, and a kernel asked for would never be used)."""
    global _THREAD, _LOCK, _QUEUE
    _THREAD, _LOCK, _QUEUE = None, threading.Lock(), queue.Queue()
    unfinished = [job for job in _JOBS.values() if not job.done.is_set()]
    for job in unfinished:
        _QUEUE.put(job)
    if unfinished:
        _start()


atexit.register(_finish)
os.register_at_fork(after_in_child=_after_fork)

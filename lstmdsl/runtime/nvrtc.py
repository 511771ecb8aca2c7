"""Compilation of generated CUDA, and its disk cache.

NVRTC compiles a program's source to a cubin for the GPU at hand; the cubin is kept in
$LSTMDSL_CACHE/cubin (keyed by the source, the options, the architecture and the CuPy and CUDA runtime
versions), so a spec compiled before loads without starting NVRTC at all. A damaged cubin is compiled
and written again; where NVRTC cannot make a cubin (an architecture it does not know), CuPy compiles
(it can fall back to PTX) and keeps the result in its own cache.
"""

from __future__ import annotations

import hashlib
import re

from ..cache import cache_dir, write_bytes_atomically
from ..errors import LstmdslError
from .device import cupy


class CompileError(LstmdslError):
    """NVRTC rejected generated code: a bug in lstmdsl's templates or code generator."""


_MODULES: dict[str, object] = {}
_OPTIONS = ("--std=c++17",)
_NVRTC_ERROR_COMPILATION = 6  # nvrtcResult: the source does not compile
_FIRST_KERNEL = re.compile(r'extern "C" __global__ void (\w+)')


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


def load_module(source: str):
    """The loaded module of a rendered source (once per process and source)."""
    if source in _MODULES:
        return _MODULES[source]
    arch = cupy.cuda.Device().compute_capability
    key = repr((cupy.__version__, cupy.cuda.runtime.runtimeGetVersion(), arch, _OPTIONS, source))
    path = cache_dir() / "cubin" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.cubin"
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

"""lstmdsl.runtime.nvrtc.load_module's cubin cache without a GPU: a cubin is written once and loaded after, a damaged
file is compiled and written again, an NVRTC that cannot make a cubin falls back to CuPy's own compile,
and an unwritable cache still gives a module. Exits 1 on the first failure."""

import os
import sys
import tempfile
from pathlib import Path

import simrt  # noqa: F401 (sets up the fake CuPy)

import cupy
from lstmdsl.runtime import nvrtc as runtime

GOOD = b"\x7fELF a cubin"
LOADED, COMPILED = [], []


class Module:
    def __init__(self, code=None, options=(), path=None):
        self.code, self.path = code, path

    def compile(self):
        COMPILED.append(self.code)

    def get_function(self, name):
        if self.path is not None:
            if Path(self.path).read_bytes() != GOOD:
                raise RuntimeError("CUDA_ERROR_INVALID_IMAGE")
            LOADED.append(self.path)
        return name


cupy.RawModule = Module
made = []
runtime.nvrtc_cubin = lambda source, arch: made.append(source) or GOOD
source = 'extern "C" __global__ void k(int n) {}\n'


def fresh():
    runtime._MODULES.clear()
    return runtime.load_module(source)


def expect(what, ok):
    if not ok:
        print(f"FAIL: {what}")
        sys.exit(1)


with tempfile.TemporaryDirectory() as tmp:
    os.environ["LSTMDSL_CACHE"] = tmp
    fresh()
    (cubin,) = Path(tmp, "cubin").glob("*.cubin")
    expect("the first load compiles and writes the cubin", len(made) == 1 and cubin.read_bytes() == GOOD)
    fresh()
    expect("the second load reads the file without NVRTC", len(made) == 1 and LOADED[-1] == str(cubin))
    cubin.write_bytes(b"garbage")
    fresh()
    expect("a damaged cubin is compiled and written again", len(made) == 2 and cubin.read_bytes() == GOOD)
    runtime.nvrtc_cubin = lambda source, arch: None
    cubin.unlink()
    fresh()
    expect("without a cubin from NVRTC, CuPy compiles", COMPILED == [source] and not cubin.exists())
    blocker = Path(tmp, "blocker")
    blocker.write_text("a file where the cache folder should be")
    os.environ["LSTMDSL_CACHE"] = str(blocker)
    runtime.nvrtc_cubin = lambda source, arch: GOOD
    fresh()
    expect("an unwritable cache falls back to CuPy's compile", COMPILED == [source] * 2)
print("cubin cache: OK")

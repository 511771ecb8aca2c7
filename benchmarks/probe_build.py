"""The probes' kernels (benchmarks/probe_cluster.py, probe_small_step.py): one CUDA source compiled for each
set of sizes, given as -D macros, by nvcc for sm_90 (failing on register spills), ahead of time where the GPU
machine has no nvcc, or else by NVRTC through CuPy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def cubin_name(prefix: str, defines: dict[str, int]) -> str:
    return prefix + "".join(f"_{k.lower()}{v}" for k, v in defines.items()) + ".cubin"


def build_cubin(source: str, prefix: str, defines: dict[str, int], out: Path) -> Path:
    """nvcc -arch=sm_90 of source with the defines into out/cubin_name; exits on an error or a spill."""
    flags = [f"-D{k}={v}" for k, v in defines.items()]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{prefix}.cu"
        src.write_text(source)
        path = out / cubin_name(prefix, defines)
        r = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", *flags, "-cubin", "-o", str(path),
                            "--resource-usage", str(src)], capture_output=True, text=True)
        if r.returncode or "0 bytes spill stores" not in r.stderr:
            sys.exit(f"nvcc {' '.join(flags)} failed or spilled:\n{r.stderr}")
    return path


def build_all(source: str, prefix: str, defines: list[dict[str, int]], out: str) -> None:
    """--build-cubins: every distinct set of defines' cubin into the folder out (created), each path printed."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for d in sorted({tuple(d.items()) for d in defines}):
        print(build_cubin(source, prefix, dict(d), Path(out)))


def load(source: str, prefix: str, defines: dict[str, int], cubins: str | None):
    """The CuPy module: a cubin built beforehand (in cubins), else nvcc here, else NVRTC."""
    import cupy

    if cubins and (Path(cubins) / cubin_name(prefix, defines)).exists():
        return cupy.RawModule(path=str(Path(cubins) / cubin_name(prefix, defines)))
    if shutil.which("nvcc"):
        return cupy.RawModule(path=str(build_cubin(source, prefix, defines, Path(tempfile.mkdtemp()))))
    return cupy.RawModule(code=source, options=("-std=c++17", *(f"-D{k}={v}" for k, v in defines.items())))

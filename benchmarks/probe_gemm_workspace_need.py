"""Probe (issue 13, training memory at most cuDNN's): how much cuBLAS workspace a stack's GEMMs need. A wavefront
gives each layer a cuBLAS lane, each with the plan's 32 MiB workspace in fp32 and tf32 from B = 2 on, and 4-layer
stacks at B = 16-256, T = 100 are over cuDNN's memory by about that (16 x 256: 190 against 106 MiB); 4 and 8 MiB
a lane took 1.09-1.44x the training time (probes/gemm_workspace_h200.txt, gemm_workspace_h100_batch.txt). Here,
for each GEMM shape such a layer runs (a step's products forward and backward, a wavefront chunk's input products
and input gradient, the weight gradient over all T * B rows), at B 16 and 64, H 256 and 512, T = 100 (chunks of 7
steps): cublasGemmEx's time with a 32, 8 and 1 MiB workspace, and cuBLASLt's heuristic's first kernels for a 32
MiB limit, each with the workspace it asks for and its time. If the fastest kernels ask for little, a lane's
workspace could be the most its chosen kernels ask for (run through cuBLASLt). GPU only.

    python3 benchmarks/probe_gemm_workspace_need.py [--precisions fp32 tf32] [--batches 16 64] [--hiddens 256 512]
"""
import argparse
import sys

sys.path.insert(0, ".")
import cupy  # noqa: E402
import numpy as np  # noqa: E402

from lstmdsl.runtime import cublas, cublaslt  # noqa: E402
from lstmdsl.runtime.device import current_device  # noqa: E402

MIB = 1 << 20


def shapes(B: int, H: int, T: int = 100, chunk: int = 7) -> list[tuple]:
    """(name, M, N, K, trans_a, trans_b) of one layer's GEMMs (I = H, row-major, as lstmdsl issues them)."""
    return [("fwd step", B, 4 * H, H, False, True), ("bwd step", B, H, 4 * H, False, False),
            ("fwd chunk", chunk * B, 4 * H, H, False, True), ("bwd chunk dx", chunk * B, H, 4 * H, False, False),
            ("weight grad", 4 * H, H, T * B, True, False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "tf32"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--hiddens", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 8, 1], help="GemmEx's workspaces, MiB")
    args = ap.parse_args()
    cublaslt.load(cublas._load_libcublas()._name)
    side = cupy.cuda.Stream(non_blocking=True)  # (a stream of its own: the captures' side streams wait for it)
    stream, device = side.ptr, current_device()
    print(f"{cupy.cuda.runtime.getDeviceProperties(device)['name'].decode()}; us per call (20 calls in a CUDA graph, "
          f"median of 3); GemmEx with {' / '.join(map(str, args.sizes))} MiB; then cuBLASLt's kernels for a 32 MiB limit: need MiB:us")
    for precision in args.precisions:
        types = ("f32", "f32", "f32", precision)
        for B in args.batches:
            for H in args.hiddens:
                for name, M, N, K, trans_a, trans_b in shapes(B, H):
                    lda, ldb, ldc = (M if trans_a else K), (K if trans_b else N), N
                    a = cupy.asarray(np.random.default_rng(0).standard_normal(M * K), np.float32)
                    b = cupy.asarray(np.random.default_rng(1).standard_normal(N * K), np.float32)
                    c = cupy.zeros(M * N, np.float32)
                    ex = []
                    for ws in (n * MIB for n in args.sizes):
                        h = cublas._handle(0, False, types, ws)
                        ex.append(1e3 * cublas._time(
                            lambda side, h=h: cublas._gemm(h, M, N, K, a.data.ptr, lda, trans_a, b.data.ptr, ldb,
                                                           trans_b, c.data.ptr, ldc, False, types, side), stream))
                    h = cublas._handle(0, False, types, 32 * MIB)
                    lt = []
                    for k in cublaslt.candidates(device, M, N, K, lda, trans_a, ldb, trans_b, ldc, types, 32 * MIB):
                        if not k.fits(a.data.ptr, b.data.ptr, c.data.ptr):
                            continue
                        try:
                            us = 1e3 * cublas._time(
                                lambda side, k=k: cublaslt.run(device, k, a.data.ptr, b.data.ptr, c.data.ptr, False,
                                                               cublas._SCALARS[precision], h.workspace.data.ptr,
                                                               h.workspace.nbytes, side), stream)
                        except Exception as e:  # noqa: BLE001 - a kernel that refuses the shape: listed as such
                            lt.append(f"{k.workspace / MIB:.2f}:refused({type(e).__name__})")
                            continue
                        lt.append(f"{k.workspace / MIB:.2f}:{us:.1f}")
                    print(f"{precision} B={B:3d} H={H:4d} {name:12s} {M:5d}x{N:5d}x{K:6d} | "
                          + " ".join(f"{t:7.1f}" for t in ex) + " | " + " ".join(lt), flush=True)


if __name__ == "__main__":
    main()

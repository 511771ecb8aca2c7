"""Would cuBLASLt's other kernels run lstmdsl's narrow GEMMs faster? (issue 14, deliverable 3: choose the GEMM algorithm
per shape where cuBLAS's default is slow). The runtime calls cublasGemmEx, whose algorithm argument sm_90 ignores, and
tunes only with and without a workspace (runtime/cublas.py tune). cublasLtMatmulAlgoGetHeuristic lists up to 32
kernels (tile shapes, split-K) for a shape; this times each of the first 32 (runtime/cublaslt.py, which the runtime
uses where LSTMDSL_GEMM_LT=1, first 8) against the runtime's two ways, each call 20 times in a CUDA graph
(cublas._time, the tuning's own timing), for the per-step and after-loop GEMMs of the cells that miss
their targets: the vanilla LSTM's step at B 16 and 64, FGR's four (and its three on the gates side by side, k = 1536),
GRU's, LSTMP's folded and unfolded step at 16 x 512, and a backward step's product, in fp32 and tf32. Prints us a call:
default, bare (no workspace), the best cuBLASLt kernel (its index in the heuristic's list and its split-K), and the
heuristic's first. Written on 2026-12-05, not yet run (no device time was left):

    python3 benchmarks/probe_cublaslt.py
"""
import ctypes
import os
import sys

sys.path.insert(0, os.getcwd())
import cupy  # noqa: E402
import numpy as np  # noqa: E402

from lstmdsl.runtime import cublas, cublaslt  # noqa: E402

# (label, M, N, K, trans_b): row-major C[M, N] = A[M, K] @ op(B), B [N, K] when trans_b (a forward product W h),
# [K, N] when not (a backward one, g @ W)
SHAPES = [("vanilla step 16x512", 16, 2048, 512, True), ("vanilla step 64x512", 64, 2048, 512, True),
          ("vanilla step 16x1024", 16, 4096, 1024, True), ("vanilla dh 64x512", 64, 512, 2048, False),
          ("fgr h 64x512", 64, 2048, 512, True), ("fgr gate 64x512", 64, 1536, 512, True),
          ("fgr gates side by side", 64, 1536, 1536, True), ("fgr dh-gates 64x512", 64, 512, 1536, False),
          ("gru step 64x512", 64, 1536, 512, True), ("lstmp folded 16x512", 16, 2048, 512, True),
          ("lstmp unfolded 16x512", 16, 2048, 256, True), ("lstmp projection 16x512", 16, 256, 512, True),
          ("lstmp states chunk 112x256", 112, 256, 512, True)]
SPLITK = 2  # CUBLASLT_ALGO_CONFIG_SPLITK_NUM (cublasLt.h, 13.x)
cublaslt.CANDIDATES = 32
cublaslt.load(cublas._load_libcublas()._name)


cublaslt._lib().cublasLtMatmulAlgoConfigGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]


def split_k(kernel):
    value, written = ctypes.c_int(0), ctypes.c_size_t()
    cublaslt._lib().cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(kernel.algo), SPLITK, ctypes.byref(value), 4,
                                                         ctypes.byref(written))
    return value.value


stream = cupy.cuda.Stream(non_blocking=True)
print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cupy", cupy.__version__, "cuBLAS",
      cublas._identity(0)[1], flush=True)
print("case                        | prec | default us | bare us | best Lt us (index, split-K) | Lt first us | kernels")
for compute in ("fp32", "tf32"):
    types = ("f32", "f32", "f32", compute)
    for label, M, N, K, trans_b in SHAPES:
        A = cupy.asarray(np.random.default_rng(0).standard_normal((M, K)), np.float32)
        B = cupy.asarray(np.random.default_rng(1).standard_normal((N, K) if trans_b else (K, N)), np.float32)
        C = cupy.empty((M, N), np.float32)
        ldb = K if trans_b else N
        handles = [cublas._handle(0, False, types), cublas._handle(0, True)]
        ways = [cublas._time(lambda side, h=h: cublas._gemm(h, M, N, K, A.data.ptr, K, False, B.data.ptr, ldb, trans_b,
                                                            C.data.ptr, N, False, types, side), stream.ptr) * 1e3
                for h in handles]
        for h in handles:
            h.stream = None
        want = (A @ (B.T if trans_b else B)).get()
        ws = handles[0].workspace
        kernels = cublaslt.candidates(0, M, N, K, K, False, ldb, trans_b, N, types, ws.nbytes)
        timed = []
        for k, kernel in enumerate(kernels):
            def call(side, kernel=kernel):
                cublaslt.run(0, kernel, A.data.ptr, B.data.ptr, C.data.ptr, False, cublas._SCALARS[compute],
                             ws.data.ptr, ws.nbytes, side)
            with stream:
                C.fill(np.nan)
            call(stream.ptr)
            stream.synchronize()
            err = float(np.abs(C.get() - want).max() / np.abs(want).max())
            if not err < (1e-5 if compute == "fp32" else 1e-2):
                print(f"   {label} {compute} kernel {k}: wrong result ({err:.1e}), left out")
                continue
            timed.append((cublas._time(call, stream.ptr) * 1e3, k, split_k(kernel)))
        best = min(timed) if timed else (float("nan"), -1, 0)
        first = next((t for t in timed if t[1] == 0), (float("nan"), 0, 0))
        print(f"{label:27s} | {compute} | {ways[0]:10.2f} | {ways[1]:7.2f} | {best[0]:7.2f} ({best[1]:2d}, "
              f"{best[2]:2d}){'':12s} | {first[0]:11.2f} | {len(timed)}", flush=True)

"""Would cuBLASLt's other kernels run lstmdsl's narrow GEMMs faster? (issue 14, deliverable 3: choose the GEMM algorithm
per shape where cuBLAS's default is slow). The runtime calls cublasGemmEx, whose algorithm argument sm_90 ignores, and
tunes only with and without a workspace (runtime/cublas.py tune). cublasLtMatmulAlgoGetHeuristic lists up to 32
kernels (tile shapes, split-K) for a shape; this times each of them against the runtime's two ways, each call 20 times
in a CUDA graph (cublas._time, the tuning's own timing), for the per-step and after-loop GEMMs of the cells that miss
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

from lstmdsl.runtime import cublas  # noqa: E402

# (label, M, N, K, trans_b): row-major C[M, N] = A[M, K] @ op(B), B [N, K] when trans_b (a forward product W h),
# [K, N] when not (a backward one, g @ W)
SHAPES = [("vanilla step 16x512", 16, 2048, 512, True), ("vanilla step 64x512", 64, 2048, 512, True),
          ("vanilla step 16x1024", 16, 4096, 1024, True), ("vanilla dh 64x512", 64, 512, 2048, False),
          ("fgr h 64x512", 64, 2048, 512, True), ("fgr gate 64x512", 64, 1536, 512, True),
          ("fgr gates side by side", 64, 1536, 1536, True), ("fgr dh-gates 64x512", 64, 512, 1536, False),
          ("gru step 64x512", 64, 1536, 512, True), ("lstmp folded 16x512", 16, 2048, 512, True),
          ("lstmp unfolded 16x512", 16, 2048, 256, True), ("lstmp projection 16x512", 16, 256, 512, True),
          ("lstmp states chunk 112x256", 112, 256, 512, True)]
COMPUTE = {"fp32": 68, "tf32": 77}  # CUBLAS_COMPUTE_32F, _32F_FAST_TF32
R_32F, DESC_TRANSA, DESC_TRANSB, PREF_MAX_WORKSPACE, SPLITK = 0, 3, 4, 1, 2  # cublasLt.h enums (13.x)
WORKSPACE = 32 << 20


class Heuristic(ctypes.Structure):  # cublasLtMatmulHeuristicResult_t
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def load_lt():
    """libcublasLt from the folder of the libcublas CuPy loaded (runtime/cublas.py finds that one)."""
    path = cublas._load_libcublas()._name
    folder = os.path.dirname(path) if os.path.isabs(path) else ""
    for name in ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"):
        try:
            return ctypes.CDLL(os.path.join(folder, name))
        except OSError:
            pass
    sys.exit(f"cannot find libcublasLt beside {path}")


lt = load_lt()
vp, u64, i64 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64
lt.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
lt.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, u64, u64, i64]
lt.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int]
lt.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
lt.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
lt.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
lt.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int, ctypes.POINTER(Heuristic),
                                              ctypes.POINTER(ctypes.c_int)]
lt.cublasLtMatmulAlgoConfigGetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t,
                                                   ctypes.POINTER(ctypes.c_size_t)]
lt.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, ctypes.c_size_t, vp]


def ok(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: cuBLAS status {status}")


handle = vp()
ok(lt.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
workspace = cupy.empty(WORKSPACE, np.uint8)
one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)


def layout(rows, cols, ld):
    d = vp()
    ok(lt.cublasLtMatrixLayoutCreate(ctypes.byref(d), R_32F, rows, cols, ld), "layout")
    return d


def lt_algos(M, N, K, trans_b, compute):
    """The operation and the heuristic's kernels for row-major C[M, N] = A[M, K] @ op(B), as the runtime swaps the
    operands (column-major C^T = op(B)^T A^T: cuBLAS's A is our B)."""
    desc = vp()
    ok(lt.cublasLtMatmulDescCreate(ctypes.byref(desc), COMPUTE[compute], R_32F), "desc")
    ta, tb = ctypes.c_int(int(trans_b)), ctypes.c_int(0)
    ok(lt.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSA, ctypes.byref(ta), 4), "transa")
    ok(lt.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSB, ctypes.byref(tb), 4), "transb")
    ldb = K if trans_b else N
    a_desc = layout(K, N, ldb) if trans_b else layout(N, K, ldb)  # cuBLAS's A (our B) as stored
    b_desc = layout(K, M, K)  # our A [M, K] row-major: column-major [K x M]
    c_desc = layout(N, M, N)
    pref = vp()
    ok(lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
    size = ctypes.c_size_t(WORKSPACE)
    ok(lt.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE, ctypes.byref(size), 8), "workspace")
    results, count = (Heuristic * 32)(), ctypes.c_int()
    ok(lt.cublasLtMatmulAlgoGetHeuristic(handle, desc, a_desc, b_desc, c_desc, c_desc, pref, 32, results,
                                         ctypes.byref(count)), "heuristic")
    return desc, a_desc, b_desc, c_desc, [results[k] for k in range(count.value) if results[k].state == 0], ldb


def split_k(h):
    value, written = ctypes.c_int(0), ctypes.c_size_t()
    lt.cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(h.algo), SPLITK, ctypes.byref(value), 4,
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
        desc, a_desc, b_desc, c_desc, algos, _ = lt_algos(M, N, K, trans_b, compute)
        timed = []
        for k, h in enumerate(algos):
            if h.workspaceSize > WORKSPACE:
                continue

            def call(side, h=h):
                ok(lt.cublasLtMatmul(handle, desc, one.ctypes.data, B.data.ptr, a_desc, A.data.ptr, b_desc,
                                     zero.ctypes.data, C.data.ptr, c_desc, C.data.ptr, c_desc, ctypes.byref(h.algo),
                                     workspace.data.ptr, WORKSPACE, side), "matmul")
            C.fill(np.nan)
            call(stream.ptr)
            stream.synchronize()
            err = float(np.abs(C.get() - want).max() / np.abs(want).max())
            if not err < (1e-5 if compute == "fp32" else 1e-2):
                print(f"   {label} {compute} kernel {k}: wrong result ({err:.1e}), left out")
                continue
            timed.append((cublas._time(call, stream.ptr) * 1e3, k, split_k(h)))
        best = min(timed) if timed else (float("nan"), -1, 0)
        first = next((t for t in timed if t[1] == 0), (float("nan"), 0, 0))
        print(f"{label:27s} | {compute} | {ways[0]:10.2f} | {ways[1]:7.2f} | {best[0]:7.2f} ({best[1]:2d}, "
              f"{best[2]:2d}){'':12s} | {first[0]:11.2f} | {len(timed)}", flush=True)

"""Probe (2026-12-01): what makes cuBLAS pick a fast kernel for the slow per-step shapes (strict fp32)? us
per call in a CUDA graph of 100 calls; row-major C[M,N] = A[M,K] @ W[N,K]^T (fwd) or G[M,K] @ W[K,N] (bwd), as
lstmdsl issues them, with and without a workspace and other variants. Run from the repository root on a GPU:
python3 benchmarks/gemm_workspace.py (output: benchmarks/results/probes/gemm_workspace_h200.txt). What it found
is runtime/cublas.py's tune."""
import ctypes, sys
import numpy as np, cupy
sys.path.insert(0, '.')
from lstmdsl.runtime import cublas
vp, i_, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
def handle(workspace=True, math=None):
    h = cublas._Handle()
    h.lib.cublasSetMathMode.argtypes = [vp, i_]
    h.set_stream(s.ptr)
    if not workspace:
        h.lib.cublasSetWorkspace_v2(h.handle, None, 0)
    if math is not None:
        assert h.lib.cublasSetMathMode(h.handle, math) == 0
    return h
s = cupy.cuda.Stream(non_blocking=True)
one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
def timed(fn, n=100):
    fn(); s.synchronize()
    s.begin_capture()
    for _ in range(n): fn()
    g = s.end_capture()
    g.launch(s); s.synchronize()
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    e0.record(s)
    for _ in range(5): g.launch(s)
    e1.record(s); e1.synchronize()
    return cupy.cuda.get_elapsed_time(e0, e1) / (5 * n) * 1000
H = {"default": handle(), "noworkspace": handle(False), "pedanticmath": handle(True, 2)}
lib = H["default"].lib
lib.cublasSgemm_v2.argtypes = [vp, i_, i_, i_, i_, i_, vp, vp, i_, vp, i_, vp, vp, i_]
lib.cublasGemmStridedBatchedEx.argtypes = [vp, i_, i_, i_, i_, i_, vp, vp, i_, i_, ctypes.c_longlong, vp, i_, i_, ctypes.c_longlong, vp, vp, i_, i_, ctypes.c_longlong, i_, i_, i_]
# (M, N, K, transposed-weights?)  fwd: C = A W^T (W [N,K]);  bwd: C = G W (W [K,N] row-major: the stack [4H, H])
shapes = [("fwd", 16, 512, 128, "B16 H128"), ("bwd", 16, 128, 512, "B16 H128"), ("fwd", 64, 128, 32, "B64 H32"),
          ("bwd", 64, 32, 128, "B64 H32"), ("fwd", 64, 256, 64, "B64 H64"), ("fwd", 16, 256, 64, "B16 H64"),
          ("bwd", 16, 64, 256, "B16 H64"), ("fwd", 16, 1024, 256, "B16 H256"), ("bwd", 16, 256, 1024, "B16 H256"),
          ("fwd", 64, 2048, 512, "B64 H512"), ("bwd", 64, 512, 2048, "B64 H512"), ("fwd", 1, 2048, 512, "B1 H512"),
          ("bwd", 1, 512, 2048, "B1 H512"), ("fwd", 256, 4096, 1024, "B256 H1024")]
for kind, M, N, K, what in shapes:
    A = cupy.random.standard_normal((M, K), np.float32)
    W = cupy.random.standard_normal((N, K) if kind == "fwd" else (K, N), np.float32)
    C = cupy.zeros((M, N), np.float32)
    tb = 1 if kind == "fwd" else 0
    ldw = K if kind == "fwd" else N
    ref = A.get().astype(np.float64) @ (W.get().T if kind == "fwd" else W.get()).astype(np.float64)
    def ex(h, compute=68):
        def f():
            st = h.lib.cublasGemmEx(h.handle, tb, 0, N, M, K, one.ctypes.data, W.data.ptr, 0, ldw, A.data.ptr, 0, K,
                                    zero.ctypes.data, C.data.ptr, 0, N, compute, -1)
            assert st == 0, st
        return f
    def sgemm():
        st = lib.cublasSgemm_v2(H["default"].handle, tb, 0, N, M, K, one.ctypes.data, W.data.ptr, ldw, A.data.ptr, K,
                                zero.ctypes.data, C.data.ptr, N)
        assert st == 0, st
    def split(chunk):  # fwd: N in chunks as one strided batch; bwd: K in chunks, accumulated
        h = H["default"]
        if kind == "fwd":
            def f():
                st = h.lib.cublasGemmStridedBatchedEx(h.handle, 1, 0, chunk, M, K, one.ctypes.data, W.data.ptr, 0, K,
                                                      chunk * K, A.data.ptr, 0, K, 0, zero.ctypes.data, C.data.ptr, 0,
                                                      N, chunk, N // chunk, 68, -1)
                assert st == 0, st
        else:
            def f():
                for j in range(K // chunk):
                    st = h.lib.cublasGemmEx(h.handle, 0, 0, N, M, chunk, one.ctypes.data, W.data.ptr + 4 * j * chunk * N,
                                            0, N, A.data.ptr + 4 * j * chunk, 0, K,
                                            (one if j else zero).ctypes.data, C.data.ptr, 0, N, 68, -1)
                    assert st == 0, st
        return f
    cands = {"default": ex(H["default"]), "pedantic32F": ex(H["default"], 69), "noworkspace": ex(H["noworkspace"]),
             "pedanticmath": ex(H["pedanticmath"]), "sgemm": sgemm}
    for chunk in (128, 256):
        if (N if kind == "fwd" else K) % chunk == 0 and (N if kind == "fwd" else K) > chunk:
            cands[f"split{chunk}"] = split(chunk)
    out = []
    for name, f in cands.items():
        try:
            C.fill(np.nan); t = timed(f)
            err = float(np.abs(C.get() - ref).max() / (np.abs(ref).max() + 1e-30))
            out.append(f"{name} {t:6.2f}" + ("" if err < 1e-5 else f"(err {err:.1e})"))
        except Exception as e:
            out.append(f"{name} failed {e}")
    print(f"{kind} {what:10s} M={M:3d} N={N:4d} K={K:4d}: " + " | ".join(out))

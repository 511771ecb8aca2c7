"""Probe (2026-12-01): per-step GEMM shapes where cuBLAS's default was slow (strict fp32), timed with
CUBLAS_GEMM_DEFAULT and ALGO0-23, torch.mm (cublasLt) and the transposed result, each as a CUDA graph of 100
calls. Run from the repository root on a GPU: python3 benchmarks/gemm_algos.py (output:
benchmarks/results/probes/gemm_algos_h200.txt). The algos made no difference on sm_90."""
import ctypes, sys
import numpy as np, cupy, torch
sys.path.insert(0, '.')
from lstmdsl.runtime import cublas
torch.backends.cuda.matmul.allow_tf32 = False
h = cublas._Handle(); lib = h.lib
s = cupy.cuda.Stream(non_blocking=True)
h.set_stream(s.ptr)
one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
def timed(fn, n=100):
    """us per call: n calls captured in a CUDA graph, the graph launched 5 times"""
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
shapes = [(16, 512, 128, "fwd B16 H128"), (16, 128, 512, "bwd B16 H128"), (64, 128, 32, "fwd B64 H32"),
          (64, 32, 128, "bwd B64 H32"), (16, 1024, 256, "fwd B16 H256"), (64, 256, 64, "fwd B64 H64"),
          (1, 128, 32, "fwd B1 H32"), (16, 256, 64, "fwd B16 H64"), (64, 512, 128, "fwd B64 H128")]
for M, N, K, what in shapes:
    A = cupy.random.standard_normal((M, K), np.float32); W = cupy.random.standard_normal((N, K), np.float32)
    C = cupy.zeros((M, N), np.float32)
    res = {}
    for algo in [-1] + list(range(24)):
        def f(algo=algo):
            st = lib.cublasGemmEx(h.handle, 1, 0, N, M, K, one.ctypes.data, W.data.ptr, 0, K, A.data.ptr, 0, K,
                                  zero.ctypes.data, C.data.ptr, 0, N, 68, algo)
            if st: raise RuntimeError(st)
        try:
            res[algo] = timed(f)
        except RuntimeError as e:
            res[algo] = None
    ref = (A.get().astype(np.float64) @ W.get().T.astype(np.float64))
    ta, tw = torch.as_tensor(A, device='cuda'), torch.as_tensor(W, device='cuda')
    out = torch.empty((M, N), device='cuda')
    torch.mm(ta, tw.t(), out=out); torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(100): torch.mm(ta, tw.t(), out=out)
    gr.replay(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(5): gr.replay()
    e1.record(); e1.synchronize()
    tt = e0.elapsed_time(e1) / 500 * 1000
    # as C = W A^T (col-major N x M the other way round: D^T)
    C2 = cupy.zeros((N, M), np.float32)
    def g():
        lib.cublasGemmEx(h.handle, 1, 0, M, N, K, one.ctypes.data, A.data.ptr, 0, K, W.data.ptr, 0, K,
                         zero.ctypes.data, C2.data.ptr, 0, M, 68, -1)
    tswap = timed(g)
    ok = {k: v for k, v in res.items() if v is not None}
    best = min(ok, key=ok.get)
    print(f"{what:14s} M={M:3d} N={N:4d} K={K:4d}: default {res[-1]:7.2f} us  best algo {best} {ok[best]:7.2f} us  "
          f"torch.mm {tt:7.2f} us  transposed-result {tswap:7.2f} us  algos≠default: "
          f"{sum(1 for v in ok.values() if abs(v - res[-1]) > 0.2 * res[-1])}")

"""Probe: a half-precision LSTM forward as one thread-block cluster per 16 batch rows, the recurrent weights
in the cluster's shared memory for all steps, h handed to every block through distributed shared memory and a
cluster barrier per step (no grid barrier, no global memory on the step's path). A question for the
scheduler, not a schedule: how many microseconds a step such a kernel takes at B = 16 (where cuDNN's own
persistent fp16 kernel is 1.5-2.9x faster than lstmdsl: docs/performance.md), against cuDNN in the same run.

    python3 benchmarks/probe_cluster.py [--steps 1000] [--cubins DIR] [--json out.json]
    python3 benchmarks/probe_cluster.py --build-cubins DIR     # nvcc, no GPU: the cubins for --cubins
    ... --areg     # each warp's tiles of R kept in registers (WMMA fragments loaded once), as cuDNN's fp16
                   # kernel keeps its weights (benchmarks/results/probes/cudnn_fp16_b16_h200.txt: 16 blocks of
                   # 16 hidden units at H = 256, 96 registers a thread)
    ... --xchg     # no cluster: h through global memory in tagged words (two halves and the step's number in a
                   # 64-bit word), CL co-resident blocks a group of 16 rows, CL up to 64 (16x1024x64: cuDNN's shape)

The kernel is compiled by nvcc (here, or beforehand with --build-cubins where the GPU machine has none),
or else by NVRTC through CuPy.

The kernel: CL blocks of 8 warps; block r owns hidden units [r U, (r + 1) U) (U = H / CL) and their four
gate rows of R (4 U rows x H, fp16, rows padded by 8 halves against bank conflicts), each warp one 16-row
tile of the products on the tensor cores (WMMA 16 x 16 x 16, fp32 accumulation, two accumulators over
alternate k). The input products and bias (G = x W^T + b, fp32, computed beforehand as lstmdsl hoists
them) are loaded a step ahead; c stays in registers (each thread owns fixed elements). The new h (fp16) is
staged, copied as 16-byte words into every block's next h buffer (map_shared_rank), and the cluster meets
at barrier.cluster (arrive.release / wait.acquire) before the next step reads it. Checked against a numpy
reference that rounds the weights and h to fp16 as the kernel does. H <= 512 (the weights of H = 512 fill
16 blocks' shared memory: 16 is the largest cluster, non-portable).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import probe_build  # noqa: E402

from lstmdsl.timing import time_gpu  # noqa: E402

SOURCE = r'''
#include <cuda_fp16.h>
#include <mma.h>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
using namespace nvcuda;

#ifndef H
#error "H"
#endif
#define BR 16            // batch rows a cluster runs
#define U (H / CL)       // hidden units a block owns
#define ROWS (4 * U)     // its gate rows of R
#define LD (H + 8)       // row pitch of the weights and h in halves (16 bytes more: no bank conflicts)
#ifndef THREADS
#define THREADS 256
#endif
#define TILES (ROWS / 16)                       // 16-row tiles of the products
#define KSPLIT (THREADS / 32 / TILES)           // warps a tile (each a share of k), summed in the pointwise step
#define ITEMS (U * BR / THREADS)  // elements (unit, row) a thread owns, c in registers
#ifndef AREG
#define AREG 0           // 1: each warp's tiles of R loaded into registers once (fragments), not from shared memory a step
#endif
#define KS (H / KSPLIT / 16)                    // a warp's 16-wide k slices
#ifndef XCHG
#define XCHG 0           // 1: no cluster; h handed on through global memory in tagged words (two halves and the step's
#endif                   // number in one 64-bit word), each group of CL blocks polling for its 16 rows' words
#if XCHG
#define CLUSTER_DIMS
#else
#define CLUSTER_DIMS __cluster_dims__(CL, 1, 1)
#endif

__device__ __forceinline__ unsigned long long ld_word(const unsigned long long* p)
{
    unsigned long long w;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
    return w;
}
__device__ __forceinline__ void st_word(unsigned long long* p, const unsigned long long w)
{
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" : : "l"(p), "l"(w) : "memory");
}
static_assert(KSPLIT >= 1 && TILES * KSPLIT * 32 == THREADS && (H / KSPLIT) % 32 == 0, "warps, tiles and k");
static_assert(ITEMS >= 1 && ITEMS * THREADS == U * BR, "items");

__device__ __forceinline__ float sigm(float v) { return 1.f / (1.f + __expf(-v)); }
__device__ __forceinline__ float tanh_(float v) { return 1.f - 2.f / (__expf(2.f * v) + 1.f); }

extern "C" __global__ void CLUSTER_DIMS __launch_bounds__(THREADS, 1)
lstm_cluster_fwd(const __half* __restrict__ R, const float* __restrict__ G, __half* __restrict__ y,
                 float* __restrict__ c_out, const int T, const int B, unsigned long long* __restrict__ xw)
{
    extern __shared__ __align__(128) unsigned char smem[];
    __half* Ws = reinterpret_cast<__half*>(smem);                    // [ROWS][LD]
    __half* hb = Ws + ROWS * LD;                                      // [2][BR][LD]
    float* gates = reinterpret_cast<float*>(hb + 2 * BR * LD);        // [KSPLIT][ROWS][BR]
    __half* hs = reinterpret_cast<__half*>(gates + KSPLIT * ROWS * BR);  // [BR][U]: this block's new h
#if XCHG
    const int r = blockIdx.x % CL;                                    // (xw: [2][B rounded up to 16][H / 2] words,
    const int Bp = (B + BR - 1) / BR * BR;                            // zeroed: tag 0 is never a step's)
#else
    cg::cluster_group cluster = cg::this_cluster();
    const int r = cluster.block_rank();
#endif
    const int b0 = (blockIdx.x / CL) * BR;                            // the cluster's batch rows
    const int warp = threadIdx.x / 32;

    for (int i = threadIdx.x; i < ROWS * (H / 8); i += THREADS) {     // the weights, once: 16-byte words
        const int lr = i / (H / 8), k8 = i % (H / 8), g = lr / U, u = lr % U;
        reinterpret_cast<int4*>(Ws + lr * LD)[k8] = reinterpret_cast<const int4*>(R + (size_t)(g * H + r * U + u) * H)[k8];
    }
    for (int i = threadIdx.x; i < 2 * BR * LD; i += THREADS)
        hb[i] = __float2half(0.f);                                     // h0 = 0
    float c[ITEMS];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k)
        c[k] = 0.f;
    float gin[ITEMS][4];                                               // the next step's input products
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int item = threadIdx.x + k * THREADS, u = item % U, b = item / U;
#pragma unroll
        for (int g = 0; g < 4; ++g)
            gin[k][g] = b0 + b < B ? G[((size_t)(b0 + b)) * 4 * H + g * H + r * U + u] : 0.f;
    }
#if XCHG
    __syncthreads();
#else
    cluster.sync();                                                    // every block's h buffers zeroed
#endif
#if AREG
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> af[KS];  // the warp's R tiles, for all steps
    {
        const int tile = warp % TILES, part = warp / TILES;
#pragma unroll
        for (int s = 0; s < KS; ++s)
            wmma::load_matrix_sync(af[s], Ws + tile * 16 * LD + part * (H / KSPLIT) + s * 16, LD);
    }
#endif

    for (int t = 0; t < T; ++t) {
        const __half* hcur = hb + (t & 1) * BR * LD;
        __half* hnext = hb + ((t + 1) & 1) * BR * LD;
#if XCHG
        if (t > 0) {  // h_t: every word of the group's rows once it carries t (all loads first, then the late ones again)
            constexpr int WPT = BR * (H / 2) / THREADS;
            static_assert(WPT >= 1 && WPT * THREADS == BR * (H / 2), "words a thread");
            const unsigned long long* src = xw + ((size_t)(t & 1) * Bp + b0) * (H / 2);
            unsigned long long w[WPT];
#pragma unroll
            for (int q = 0; q < WPT; ++q)
                w[q] = ld_word(src + threadIdx.x + q * THREADS);
            for (;;) {
                bool ready = true;
#pragma unroll
                for (int q = 0; q < WPT; ++q)
                    ready = ready && (unsigned)(w[q] >> 32) == (unsigned)t;
                if (ready)
                    break;
#pragma unroll
                for (int q = 0; q < WPT; ++q)
                    if ((unsigned)(w[q] >> 32) != (unsigned)t)
                        w[q] = ld_word(src + threadIdx.x + q * THREADS);
            }
            __half* hw = const_cast<__half*>(hcur);
#pragma unroll
            for (int q = 0; q < WPT; ++q) {
                const int i = threadIdx.x + q * THREADS, b = i / (H / 2), k2 = i % (H / 2);
                reinterpret_cast<unsigned*>(hw + b * LD)[k2] = (unsigned)w[q];
            }
            __syncthreads();
        }
        (void)hnext;
#endif
        {                                                              // the products: a tile and k share a warp
            const int tile = warp % TILES, part = warp / TILES;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
            wmma::fill_fragment(acc0, 0.f);
            wmma::fill_fragment(acc1, 0.f);
#if AREG
            static_assert(KS % 2 == 0, "k slices in pairs");
#pragma unroll
            for (int s = 0; s < KS; s += 2) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> x0, x1;
                wmma::load_matrix_sync(x0, hcur + part * (H / KSPLIT) + s * 16, LD);
                wmma::load_matrix_sync(x1, hcur + part * (H / KSPLIT) + s * 16 + 16, LD);
                wmma::mma_sync(acc0, af[s], x0, acc0);
                wmma::mma_sync(acc1, af[s + 1], x1, acc1);
            }
#else
            const __half* Aw = Ws + tile * 16 * LD;
#pragma unroll 4
            for (int k0 = part * (H / KSPLIT); k0 < (part + 1) * (H / KSPLIT); k0 += 32) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a0, a1;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> x0, x1;
                wmma::load_matrix_sync(a0, Aw + k0, LD);
                wmma::load_matrix_sync(x0, hcur + k0, LD);
                wmma::load_matrix_sync(a1, Aw + k0 + 16, LD);
                wmma::load_matrix_sync(x1, hcur + k0 + 16, LD);
                wmma::mma_sync(acc0, a0, x0, acc0);
                wmma::mma_sync(acc1, a1, x1, acc1);
            }
#endif
#pragma unroll
            for (int i = 0; i < acc0.num_elements; ++i)
                acc0.x[i] += acc1.x[i];
            wmma::store_matrix_sync(gates + (part * ROWS + tile * 16) * BR, acc0, BR, wmma::mem_row_major);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {                              // the pointwise step
            const int item = threadIdx.x + k * THREADS, u = item % U, b = item / U;
            float a[4];
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                a[g] = gin[k][g];
#pragma unroll
                for (int p = 0; p < KSPLIT; ++p)
                    a[g] += gates[(p * ROWS + g * U + u) * BR + b];
            }
            const float i_ = sigm(a[0]), f_ = sigm(a[1]), z_ = tanh_(a[2]), o_ = sigm(a[3]);
            c[k] = f_ * c[k] + i_ * z_;
            const __half h = __float2half(o_ * tanh_(c[k]));
#if XCHG
            {  // two neighbouring units' h in one word with the number of the step that reads it
                const unsigned mine = __half_as_ushort(h), other = __shfl_xor_sync(0xffffffffu, mine, 1);
                if (u % 2 == 0)
                    st_word(xw + ((size_t)((t + 1) & 1) * Bp + b0 + b) * (H / 2) + (r * U + u) / 2,
                            ((unsigned long long)(unsigned)(t + 1) << 32) | (other << 16) | mine);
            }
#else
            hs[b * U + u] = h;
#endif
            if (b0 + b < B)
                y[((size_t)t * B + b0 + b) * H + r * U + u] = h;
        }
        if (t + 1 < T) {                                               // the next step's input products, early
#pragma unroll
            for (int k = 0; k < ITEMS; ++k) {
                const int item = threadIdx.x + k * THREADS, u = item % U, b = item / U;
#pragma unroll
                for (int g = 0; g < 4; ++g)
                    gin[k][g] = b0 + b < B ? G[((size_t)(t + 1) * B + b0 + b) * 4 * H + g * H + r * U + u] : 0.f;
            }
        }
#if !XCHG
        __syncthreads();                                               // hs complete
        // this block's h slice (BR rows x U halves) into every block's next buffer, 16 bytes at a time
        constexpr int WORDS = U * 2 / 16;                              // 16-byte words of a row's slice
        for (int i = threadIdx.x; i < CL * BR * WORDS; i += THREADS) {
            const int q = i / (BR * WORDS), b = (i / WORDS) % BR, w = i % WORDS;
            __half* dst = cluster.map_shared_rank(hnext + b * LD + r * U, q);
            reinterpret_cast<int4*>(dst)[w] = reinterpret_cast<const int4*>(hs + b * U)[w];
        }
        cluster.sync();                                                // every block's next h is complete
#endif
    }
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const int item = threadIdx.x + k * THREADS, u = item % U, b = item / U;
        if (b0 + b < B)
            c_out[(size_t)(b0 + b) * H + r * U + u] = c[k];
    }
}
'''

NON_PORTABLE_CLUSTER = 14  # CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED
MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


def shared_bytes(H: int, CL: int, threads: int = 256) -> int:
    U = H // CL
    ksplit = threads // 32 // (4 * U // 16)
    return 4 * U * (H + 8) * 2 + 2 * 16 * (H + 8) * 2 + ksplit * 4 * U * 16 * 4 + 16 * U * 2


def defines(H: int, CL: int, threads: int, areg: int = 0, xchg: int = 0) -> dict[str, int]:
    return {"H": H, "CL": CL, "THREADS": threads, **({"AREG": 1} if areg else {}), **({"XCHG": 1} if xchg else {})}


def shapes(args) -> list[tuple[int, int, int, int]]:
    """BxHxCL[xTHREADS] -> (B, H, CL, threads)."""
    out = []
    for shape in args.shapes:
        v = [int(p) for p in shape.split("x")]
        out.append((*v, 256) if len(v) == 3 else tuple(v))
    return out


def reference(R16: np.ndarray, G: np.ndarray, T: int, B: int, H: int):
    """float32 math on fp16-rounded weights, h rounded to fp16 each step as the kernel keeps it."""
    Rf = R16.astype(np.float32)
    h = np.zeros((B, H), np.float32)
    c = np.zeros((B, H), np.float32)
    ys = np.empty((T, B, H), np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(T):
        a = h @ Rf.T + G[t]
        i, f, z, o = (a[:, g * H:(g + 1) * H] for g in range(4))
        c = sig(f) * c + sig(i) * np.tanh(z)
        h = (sig(o) * np.tanh(c)).astype(np.float16).astype(np.float32)
        ys[t] = h
    return ys, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--shapes", nargs="+", default=["16x256x8", "16x256x16", "16x256x8x512", "16x512x16",
                                                    "16x512x16x512", "64x512x16", "1x512x16"],
                    help="BxHxCL[xTHREADS]: batch, hidden size, blocks in a cluster, threads a block (256; "
                         "more warps than 16-row tiles split k)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--cubins", help="a directory of cubins from --build-cubins")
    ap.add_argument("--build-cubins", metavar="DIR", help="only compile the kernels with nvcc (no GPU needed)")
    ap.add_argument("--areg", action="store_true", help="each warp's tiles of R in registers for all steps (loaded "
                    "once as WMMA fragments), not read from shared memory at every step")
    ap.add_argument("--xchg", action="store_true", help="no cluster: h through global memory in tagged words (as "
                    "lstmdsl's grids hand it on), each group of CL blocks a plain launch of co-resident blocks")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.build_cubins:
        probe_build.build_all(SOURCE, "cluster", [defines(H, CL, t, args.areg, args.xchg) for _, H, CL, t in shapes(args)],
                              args.build_cubins)
        return 0
    import cupy
    import torch

    lib = ctypes.CDLL("libcuda.so.1")
    rows = []
    import lstmdsl.torch as lt

    for B, H, CL, threads in shapes(args):
        T = args.steps
        smem = shared_bytes(H, CL, threads)
        module = probe_build.load(SOURCE, "cluster", defines(H, CL, threads, args.areg, args.xchg), args.cubins)
        fn = module.get_function("lstm_cluster_fwd")
        for attr, value in ((MAX_DYNAMIC_SHARED, smem),) + (() if args.xchg else ((NON_PORTABLE_CLUSTER, 1),)):
            status = lib.cuFuncSetAttribute(ctypes.c_void_p(fn.kernel.ptr), attr, ctypes.c_int(value))
            assert status == 0, f"cuFuncSetAttribute({attr}, {value}): CUDA error {status}"
        rng = np.random.default_rng(0)
        bound = 1 / np.sqrt(H)
        R16 = rng.uniform(-bound, bound, (4 * H, H)).astype(np.float16)
        G = rng.uniform(-1, 1, (T, B, 4 * H)).astype(np.float32)
        dR, dG = cupy.asarray(R16), cupy.asarray(G)
        dy = cupy.full((T, B, H), np.nan, np.float16)  # poisoned: every element must be written
        dc = cupy.full((B, H), np.nan, np.float32)
        grid = CL * ((B + 15) // 16)
        dxw = cupy.zeros((2, grid // CL * 16, H // 2), np.uint64)  # (tagged words: tag 0 is never a step's)

        def run():
            dxw.fill(0)
            fn((grid,), (threads,), (dR, dG, dy, dc, np.int32(T), np.int32(B), dxw), shared_mem=smem)
        try:
            run()
            cupy.cuda.Device().synchronize()
        except Exception as e:  # e.g. a cluster of 16 blocks of this much shared memory not schedulable
            print(f"B={B} H={H} CL={CL} threads={threads}: the launch failed: {e}", flush=True)
            rows.append({"batch": B, "hidden": H, "cluster": CL, "threads": threads, "error": str(e)})
            continue
        Tc = min(T, 200)  # the reference over the first steps (numpy; the kernel's c_out is after all T)
        ys, _ = reference(R16, G[:Tc], Tc, B, H)
        got = cupy.asnumpy(dy[:Tc]).astype(np.float32)
        err = float(np.max(np.abs(got - ys)))
        finite = bool(np.isfinite(cupy.asnumpy(dy)).all() and np.isfinite(cupy.asnumpy(dc)).all())
        ms = time_gpu(run, args.repeat, 0)["ms"]
        # cuDNN's fp16 LSTM at the same shape, same process (its input GEMM included; ours is not: G given)
        lstm = torch.nn.LSTM(H, H).cuda().half()
        x = torch.randn(T, B, H, device="cuda", dtype=torch.float16)
        ours = lt.from_torch(torch.nn.LSTM(H, H).cuda())  # float32 parameters, an fp16 x: lstmdsl in fp16
        w = torch.randn(4 * H, H, device="cuda", dtype=torch.float16)
        xs = x.view(T * B, H)
        with torch.no_grad():
            cudnn = time_gpu(lambda: lstm(x), args.repeat, 3)["ms"]
            today = time_gpu(lambda: ours(x), args.repeat, 3)["ms"]
            gemm = time_gpu(lambda: torch.mm(xs, w.t()), args.repeat, 1)["ms"]
        row = {"batch": B, "hidden": H, "cluster": CL, "threads": threads, "areg": bool(args.areg),
               "xchg": bool(args.xchg), "steps": T, "shared_bytes": smem,
               "max_abs_err": err, "finite": finite, "cluster_ms": ms, "input_gemm_ms": gemm, "cudnn_ms": cudnn,
               "lstmdsl_ms": today,
               "us_per_step": 1e3 * ms / T, "cudnn_us_per_step": 1e3 * cudnn / T,
               "ratio_with_gemm": (ms + gemm) / cudnn}
        rows.append(row)
        print(f"B={B} H={H} CL={CL} threads={threads}: {row['us_per_step']:.2f} us a step ({ms:.3f} ms + input "
              f"GEMM {gemm:.3f}), "
              f"cuDNN fp16 {row['cudnn_us_per_step']:.2f} us a step ({cudnn:.3f} ms): "
              f"{row['ratio_with_gemm']:.2f}x; lstmdsl today {today:.3f} ms; max |err| {err:.2e} over {Tc} steps, "
              f"all finite {finite}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "cudnn": torch.backends.cudnn.version(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Probe: the floor of a small fp32 LSTM step in one block. Issue 14's small shapes (H <= 64, strict fp32) are
where cuDNN's forward is still 2.6-3.6x faster than lstmdsl's on GPU time (0.5-0.7 us a step against
1.4-2.5). This kernel is the leanest one-block step I can write, to tell how much of lstmdsl's step is the
generated kernel's structure and how much the hardware's floor:

    python3 benchmarks/probe_small_step.py [--steps 1000] [--cubins DIR] [--json out.json]
    python3 benchmarks/probe_small_step.py --build-cubins DIR      # nvcc, no GPU

A block runs BL batch rows alone (a grid of B / BL blocks, no communication between blocks: lstmdsl's split
grid). Thread t owns gate row t / KS of R (4 H rows, gate-major) and a 1 / KS share of its columns, in
registers for all steps; a step is: each thread's dot products with h (h in shared memory, read as float4
broadcasts), KS lanes summed by shuffles, the gate sums to shared memory; one block barrier; the pointwise
items (a thread per (row, unit), c in a register); h to the other shared buffer; one block barrier. The input
products and bias (G = x W^T + b, computed beforehand) are loaded a step ahead. Checked against numpy in
float64; timed against cuDNN (strict fp32) and lstmdsl's current forward, in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import probe_build  # noqa: E402

from lstmdsl.timing import time_gpu  # noqa: E402

SOURCE = r'''
#define ROWS (4 * H)
#define THREADS (ROWS * KS)
#define KW (H / KS)                    // columns of a row a thread holds
static_assert(THREADS <= 1024 && KW % 4 == 0 && BL * H <= THREADS, "sizes");

__device__ __forceinline__ float sigm(float v) { return 1.f / (1.f + __expf(-v)); }
__device__ __forceinline__ float tanh_(float v) { return 1.f - 2.f / (__expf(2.f * v) + 1.f); }

extern "C" __global__ void __launch_bounds__(THREADS, 1)
lstm_small_fwd(const float* __restrict__ R, const float* __restrict__ G, float* __restrict__ y,
               float* __restrict__ c_out, const int T, const int B)
{
    __shared__ __align__(16) float hb[2][BL][H];
    __shared__ float gates[BL][ROWS];
    const int row = threadIdx.x / KS, part = threadIdx.x % KS;
    const int b0 = blockIdx.x * BL;
    float w[KW];
#pragma unroll
    for (int k = 0; k < KW; ++k)
        w[k] = R[(size_t)row * H + part * KW + k];
    for (int i = threadIdx.x; i < 2 * BL * H; i += THREADS)
        (&hb[0][0][0])[i] = 0.f;
    const bool item = threadIdx.x < BL * H;               // the pointwise items: (batch row, unit)
    const int ib = threadIdx.x / H, ij = threadIdx.x % H;
    float c = 0.f;
    float gin[BL];
#pragma unroll
    for (int bl = 0; bl < BL; ++bl)
        gin[bl] = part == 0 && b0 + bl < B ? G[(size_t)(b0 + bl) * ROWS + row] : 0.f;
    __syncthreads();
    for (int t = 0; t < T; ++t) {
        const int cur = t & 1;
#pragma unroll
        for (int bl = 0; bl < BL; ++bl) {
            const float4* hv = reinterpret_cast<const float4*>(&hb[cur][bl][part * KW]);
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll
            for (int k = 0; k < KW / 4; ++k) {
                const float4 v = hv[k];
                a0 = fmaf(w[4 * k], v.x, a0);
                a1 = fmaf(w[4 * k + 1], v.y, a1);
                a2 = fmaf(w[4 * k + 2], v.z, a2);
                a3 = fmaf(w[4 * k + 3], v.w, a3);
            }
            float a = (a0 + a1) + (a2 + a3);
#pragma unroll
            for (int o = KS / 2; o > 0; o /= 2)
                a += __shfl_xor_sync(0xffffffffu, a, o);
            if (part == 0)
                gates[bl][row] = a + gin[bl];
        }
        if (t + 1 < T) {                                   // the next step's input products, early
#pragma unroll
            for (int bl = 0; bl < BL; ++bl)
                gin[bl] = part == 0 && b0 + bl < B ? G[((size_t)(t + 1) * B + b0 + bl) * ROWS + row] : 0.f;
        }
        __syncthreads();
        if (item) {
            const float i_ = sigm(gates[ib][ij]), f_ = sigm(gates[ib][H + ij]);
            const float z_ = tanh_(gates[ib][2 * H + ij]), o_ = sigm(gates[ib][3 * H + ij]);
            c = f_ * c + i_ * z_;
            const float h = o_ * tanh_(c);
            hb[cur ^ 1][ib][ij] = h;
            if (b0 + ib < B)
                y[((size_t)t * B + b0 + ib) * H + ij] = h;
        }
        __syncthreads();
    }
    if (item && b0 + ib < B)
        c_out[(size_t)(b0 + ib) * H + ij] = c;
}
'''


def defines(H: int, BL: int, KS: int) -> dict[str, int]:
    return {"H": H, "BL": BL, "KS": KS}


def configs(args) -> list[tuple[int, int, int, int]]:
    """BxHxBLxKS -> (B, H, BL, KS)."""
    return [tuple(int(v) for v in c.split("x")) for c in args.configs]


def reference(R: np.ndarray, G: np.ndarray, T: int, B: int, H: int):
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    ys = np.empty((T, B, H))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(T):
        a = h @ R.T + G[t]
        i, f, z, o = (a[:, g * H:(g + 1) * H] for g in range(4))
        c = sig(f) * c + sig(i) * np.tanh(z)
        h = sig(o) * np.tanh(c)
        ys[t] = h
    return ys, c


DEFAULT = ["1x16x1x1", "1x32x1x1", "1x32x1x2", "1x64x1x1", "1x64x1x2", "16x32x1x2", "16x32x4x2", "16x64x1x2",
           "16x64x4x1", "64x32x1x2", "64x32x4x2", "64x64x1x2", "64x64x4x1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--configs", nargs="+", default=DEFAULT,
                    help="BxHxBLxKS: batch, hidden size, batch rows a block, threads a gate row")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--cubins")
    ap.add_argument("--build-cubins", metavar="DIR")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.build_cubins:
        probe_build.build_all(SOURCE, "small", [defines(H, BL, KS) for _, H, BL, KS in configs(args)],
                              args.build_cubins)
        return 0
    import cupy
    import torch

    import lstmdsl.torch as lt

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    for B, H, BL, KS in configs(args):
        T = args.steps
        module = probe_build.load(SOURCE, "small", defines(H, BL, KS), args.cubins)
        fn = module.get_function("lstm_small_fwd")
        rng = np.random.default_rng(0)
        bound = 1 / np.sqrt(H)
        R = rng.uniform(-bound, bound, (4 * H, H)).astype(np.float32)
        G = rng.uniform(-1, 1, (T, B, 4 * H)).astype(np.float32)
        dR, dG = cupy.asarray(R), cupy.asarray(G)
        dy = cupy.full((T, B, H), np.nan, np.float32)
        dc = cupy.full((B, H), np.nan, np.float32)
        grid = (B + BL - 1) // BL

        def run():
            fn((grid,), (4 * H * KS,), (dR, dG, dy, dc, np.int32(T), np.int32(B)))
        run()
        cupy.cuda.Device().synchronize()
        ys, c = reference(R.astype(np.float64), G.astype(np.float64), T, B, H)
        err = max(float(np.max(np.abs(cupy.asnumpy(dy) - ys))), float(np.max(np.abs(cupy.asnumpy(dc) - c))))
        ms = time_gpu(run, args.repeat, 0)["ms"]

        def timed(f) -> float:
            return time_gpu(f, args.repeat, 3)["ms"]
        lstm = torch.nn.LSTM(H, H).cuda()
        ours = lt.from_torch(lstm)
        x = torch.randn(T, B, H, device="cuda")
        w = torch.randn(4 * H, H, device="cuda")
        with torch.no_grad():
            cudnn, today = timed(lambda: lstm(x)), timed(lambda: ours(x))
            gemm = timed(lambda: torch.mm(x.view(T * B, H), w.t()))
        row = {"batch": B, "hidden": H, "rows_a_block": BL, "threads_a_row": KS, "steps": T, "max_abs_err": err,
               "probe_ms": ms, "input_gemm_ms": gemm, "cudnn_ms": cudnn, "lstmdsl_ms": today,
               "us_per_step": 1e3 * ms / T, "cudnn_us_per_step": 1e3 * cudnn / T,
               "lstmdsl_us_per_step": 1e3 * today / T}
        rows.append(row)
        print(f"B={B} H={H} BL={BL} KS={KS}: {row['us_per_step']:.3f} us a step (+ input GEMM {gemm:.3f} ms), "
              f"cuDNN {row['cudnn_us_per_step']:.3f}, lstmdsl today {row['lstmdsl_us_per_step']:.3f} (event "
              f"times, T = {T}); max |err| {err:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

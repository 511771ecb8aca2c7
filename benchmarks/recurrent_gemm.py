"""The recurrent product per step: cuBLAS GEMM plus a pointwise kernel, or fused into one kernel.

    python3 benchmarks/recurrent_gemm.py [--steps 100] [--repeat 20]

Forward (inference) of the vanilla and peephole specs, one layer, I = H, strict fp32, over
B in {1, 16, 64, 256} and H in {512, 1024}: the default schedule (a cuBLAS GEMM, then one kernel per
step) against `fuse recurrent` (one kernel per step, one warp per output element), with cuDNN's
vanilla LSTM in the same process; both without the persistent kernel (`no persistent`), which the default
schedule runs at small batches (docs/performance.md, the persistent schedule). Results are checked against each other before timing. Writes
benchmarks/results/recurrent_gemm.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cupy
import numpy as np
import torch

import lstmdsl
from lstmdsl.timing import time_gpu

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T = args.steps
    rows = []
    for H in (512, 1024):
        for B in (1, 16, 64, 256):
            x = torch.randn(T, B, H, device="cuda")
            xc = cupy.from_dlpack(x)
            lstm = torch.nn.LSTM(H, H).cuda()

            def cudnn():
                with torch.no_grad():
                    lstm(x)
            row = {"H": H, "B": B, "cudnn_vanilla_ms": time_gpu(cudnn, args.repeat, warmup=3)["ms"]}
            for name in ("vanilla", "peephole"):
                # (both step by step: under `persistent auto` the default schedule would run the persistent
                # kernel at small batches, which is neither of the two products compared here)
                gemm = lstmdsl.compile(name, input_size=H, hidden_size=H, backend="cuda", seed=1,
                                       schedule="no persistent")
                fused = lstmdsl.compile(name, input_size=H, hidden_size=H, backend="cuda", seed=1,
                                        schedule="fuse recurrent; no persistent")
                y1 = cupy.asnumpy(gemm.forward(xc, train=False)[0])
                y2 = cupy.asnumpy(fused.forward(xc, train=False)[0])
                err = float(np.linalg.norm(y1 - y2) / np.linalg.norm(y1))
                assert err < 1e-5, f"{name} H={H} B={B}: the schedules disagree ({err:.1e})"
                row[f"{name}_gemm_ms"] = time_gpu(lambda: gemm.forward(xc, train=False), args.repeat, 3)["ms"]
                row[f"{name}_fused_ms"] = time_gpu(lambda: fused.forward(xc, train=False), args.repeat, 3)["ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__, "steps": T, "precision": "fp32",
            "mode": "forward (inference)", "statistic": f"median of {args.repeat} CUDA-event timings"}
    (RESULTS / "recurrent_gemm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Recurrent product: cuBLAS GEMM + kernel vs fused into the step kernel (forward, T = {T}, fp32)",
             "", f"`python3 benchmarks/recurrent_gemm.py` on {meta['gpu']}, torch {meta['torch']}, "
             f"cuDNN {meta['cudnn']}; {meta['statistic']}, milliseconds.", "",
             "| H | B | cuDNN vanilla | vanilla, cuBLAS | vanilla, fused | peephole, cuBLAS | peephole, fused |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['H']} | {r['B']} | {r['cudnn_vanilla_ms']:.2f} | {r['vanilla_gemm_ms']:.2f} | "
                     f"{r['vanilla_fused_ms']:.2f} | {r['peephole_gemm_ms']:.2f} | {r['peephole_fused_ms']:.2f} |")
    (RESULTS / "recurrent_gemm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

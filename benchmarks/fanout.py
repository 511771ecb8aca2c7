"""A step's independent GEMMs at once (passes/fanout.py, runtime/fanout.py) against one after another
(use_fanout off): FGR (four GEMMs each way per step) and GRU (none fan out: the same time either way, the
control), one layer, fp32, forward (train=False) and training (forward and backward), in one process.
Outputs of the two are compared first; then warm-up and medians of CUDA-event timings.

    python3 benchmarks/fanout.py [--repeat 20] [--json benchmarks/results/fanout_fp32_h200.json]
    python3 benchmarks/fanout.py --render benchmarks/results/fanout_fp32_h200.json   # its table again, no GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.timing import time_gpu  # noqa: E402
from tables import finish, output_options, render  # noqa: E402

SPECS, BATCHES, HIDDEN, T = ("fgr", "gru"), (16, 64), (256, 512), 100


def case(cupy, name: str, B: int, H: int, repeat: int) -> dict:
    """ms per forward and training step, fanned and sequential, and the largest difference of their y."""
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((T, B, H)) * 0.5, np.float32)
    ones = cupy.ones((T, B, H), np.float32)
    layer = lstmdsl.compile(name, H, H, backend="cuda", seed=0, schedule="no persistent")  # (the stepwise loop)
    row, ys = {}, {}
    for fanout in (True, False):
        layer.use_fanout = fanout  # (graphs are kept per fan: switching captures anew)
        ys[fanout] = cupy.asnumpy(layer.forward(x, train=False)[0])
        key = "fanned" if fanout else "sequential"
        row[f"forward_{key}_ms"] = time_gpu(lambda: layer.forward(x, train=False), repeat, 3)["ms"]
        row[f"train_{key}_ms"] = time_gpu(lambda: (layer.forward(x), layer.backward(ones)), repeat, 3)["ms"]
    row["max_abs_diff"] = float(np.abs(ys[True] - ys[False]).max())
    groups = [len(g) for p in (layer.program.plan.forward, layer.program.plan.backward) for g in p.loop.fanout]
    row["groups"] = groups
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    output_options(ap)
    args = ap.parse_args()
    if args.render:
        render(args.render, markdown)
        return
    import cupy

    from lstmdsl.runtime import cublas

    rows = []
    for name in SPECS:
        for B in BATCHES:
            for H in HIDDEN:
                row = dict(spec=name, B=B, H=H, **case(cupy, name, B, H, args.repeat))
                if row["max_abs_diff"] > 1e-4:
                    sys.exit(f"{name} B={B} H={H}: fanned and sequential differ by {row['max_abs_diff']:.2e}")
                rows.append(row)
                print(row, flush=True)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    result = {"gpu": gpu, "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
              "cublas": cublas._identity(0)[1], "lstmdsl": lstmdsl.__version__, "python": platform.python_version(),
              "precision": "strict fp32", "steps": T, "layers": 1, "repeat": args.repeat, "rows": rows}
    finish(result, args, markdown)


def markdown(result: dict) -> str:
    """The table of a result (the JSON this script writes)."""
    lines = [f"A step's independent GEMMs at once (fanned) against one after another (sequential), one layer, "
             f"I = H, T = {result['steps']}, {result['precision']}, on {result['gpu']} (CuPy {result['cupy']}, "
             f"CUDA runtime {result['cuda_runtime']}, cuBLAS {result['cublas']}, lstmdsl {result['lstmdsl']}); ms, "
             f"medians of {result['repeat']} CUDA-event timings; groups: GEMMs per group (forward, backward).", "",
             "| spec | B | H | groups | forward fanned | forward sequential | fanned / seq | train fanned | "
             "train sequential | fanned / seq |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['spec']} | {r['B']} | {r['H']} | {r['groups'] or '-'} | {r['forward_fanned_ms']:.3f} | "
                     f"{r['forward_sequential_ms']:.3f} | {r['forward_fanned_ms'] / r['forward_sequential_ms']:.2f}x | "
                     f"{r['train_fanned_ms']:.3f} | {r['train_sequential_ms']:.3f} | "
                     f"{r['train_fanned_ms'] / r['train_sequential_ms']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

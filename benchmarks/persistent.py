"""The persistent schedule against the stepwise loop and cuDNN, on the H200 grid of small and medium
sizes (issue 14): B {1, 16, 64} x H {32, 64, 128, 192, 256, 512, 1024}, T = 100, one layer, the vanilla
LSTM, forward (inference) and training, in one process.

    python3 benchmarks/persistent.py [--precision fp32] [--batches 1 16 64] [--hiddens ...] [--name NAME]

Columns: cuDNN, lstmdsl as the cost model chooses (`persistent auto`), lstmdsl forced stepwise (`no
persistent`) and forced persistent (`persistent`: in training the backward's persistent kernel too, for
the vanilla LSTM),
in ms and in microseconds per step; the ratio is lstmdsl (auto) over cuDNN. Times are a call as its
caller sees it (host issue included); --gpu-time adds the GPU time alone of cuDNN and of each lstmdsl column
(timing.time_gpu_only: each call issued while a spin kernel holds the GPU), the ratio auto / cuDNN and the
ratio persistent / stepwise (the steadier measure for the cost model's rules: the calls' event times move by
several percent between identical plans at these sizes). Writes
benchmarks/out/NAME.json and .md (and benchmarks/results/ with --update-results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16", "fp16"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[32, 64, 128, 192, 256, 512, 1024])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--spec", default="vanilla")
    ap.add_argument("--modes", nargs="+", default=["forward", "train"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--name")
    ap.add_argument("--update-results", action="store_true")
    ap.add_argument("--gpu-time", action="store_true", help="also the GPU time alone of cuDNN and lstmdsl (auto)")
    args = ap.parse_args()
    import cupy
    import torch

    import lstmdsl
    from lstmdsl.bench import bench_case

    spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()[args.spec].read_text())
    rows = []
    print(f"{'mode':8} {'B':>4} {'H':>5} | {'cuDNN':>8} {'auto':>8} {'stepwise':>8} {'persist.':>8} ms | "
          f"{'auto us/step':>12} | auto/cuDNN" + (" | GPU ms cuDNN / auto / stepwise / persistent" if args.gpu_time
                                                  else ""), flush=True)
    for mode in args.modes:
        for B in args.batches:
            for H in args.hiddens:
                kw = dict(precision=args.precision, repeat=args.repeat)
                auto = bench_case(spec, B, H, args.steps, 1, mode, competitors=("lstmdsl", "cudnn"),
                                  gpu_time=args.gpu_time, **kw)
                stepwise = bench_case(spec, B, H, args.steps, 1, mode, competitors=("lstmdsl",),
                                      schedule="no persistent", gpu_time=args.gpu_time, **kw)
                forced = bench_case(spec, B, H, args.steps, 1, mode, competitors=("lstmdsl",), schedule="persistent",
                                    gpu_time=args.gpu_time, **kw)
                ms = lambda r, c: r["results"].get(c, {}).get("ms") if r else None  # noqa: E731
                row = {"mode": mode, "batch": B, "hidden": H, "steps": args.steps, "cudnn": ms(auto, "cudnn"),
                       "auto": ms(auto, "lstmdsl"), "stepwise": ms(stepwise, "lstmdsl"),
                       "persistent": ms(forced, "lstmdsl")}
                if args.gpu_time:
                    gpu = lambda r, c: r["results"].get(c, {}).get("gpu_ms") if r else None  # noqa: E731
                    row |= {"cudnn_gpu": gpu(auto, "cudnn"), "auto_gpu": gpu(auto, "lstmdsl"),
                            "stepwise_gpu": gpu(stepwise, "lstmdsl"), "persistent_gpu": gpu(forced, "lstmdsl")}
                rows.append(row)
                fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
                ratio = row["auto"] / row["cudnn"] if row["auto"] and row["cudnn"] else float("nan")
                print(f"{mode:8} {B:4d} {H:5d} | {fmt(row['cudnn'])} {fmt(row['auto'])} {fmt(row['stepwise'])} "
                      f"{fmt(row['persistent'])} ms | {1e3 * row['auto'] / args.steps:12.2f} | {ratio:.2f}x"
                      + (f" | {fmt(row['cudnn_gpu'])} {fmt(row['auto_gpu'])} {fmt(row['stepwise_gpu'])} "
                         f"{fmt(row['persistent_gpu'])}" if args.gpu_time else ""), flush=True)
    name = args.name or f"persistent_{args.precision}"
    meta = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__, "lstmdsl": lstmdsl.__version__,
            "python": platform.python_version(), "precision": args.precision, "spec": args.spec,
            "command": "python3 benchmarks/persistent.py " + " ".join(sys.argv[1:])}
    md = [f"# The persistent schedule: {args.spec}, {args.precision}, T = {args.steps}, one layer ({meta['gpu']})", "",
          f"`{meta['command']}` (torch {meta['torch']}, cuDNN {meta['cudnn']}, CuPy {meta['cupy']})", "",
          "| mode | B | H | cuDNN ms | lstmdsl ms (auto) | stepwise ms | persistent ms | auto us/step | auto / cuDNN |"
          + (" cuDNN GPU ms | auto GPU ms | GPU auto / cuDNN | stepwise GPU ms | persistent GPU ms | GPU persistent /"
             " stepwise |" if args.gpu_time else ""),
          "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|---|---|" if args.gpu_time else "")]
    for r in rows:
        cell = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        ratio = f"{r['auto'] / r['cudnn']:.2f}x" if r["auto"] and r["cudnn"] else "-"
        line = (f"| {r['mode']} | {r['batch']} | {r['hidden']} | {cell(r['cudnn'])} | {cell(r['auto'])} | "
                f"{cell(r['stepwise'])} | {cell(r['persistent'])} | {1e3 * r['auto'] / r['steps']:.2f} | {ratio} |")
        if args.gpu_time:
            gpu_ratio = f"{r['auto_gpu'] / r['cudnn_gpu']:.2f}x" if r["auto_gpu"] and r["cudnn_gpu"] else "-"
            rule = (f"{r['persistent_gpu'] / r['stepwise_gpu']:.2f}x" if r.get("persistent_gpu") and r.get("stepwise_gpu")
                    else "-")
            line += (f" {cell(r['cudnn_gpu'])} | {cell(r['auto_gpu'])} | {gpu_ratio} | {cell(r.get('stepwise_gpu'))} | "
                     f"{cell(r.get('persistent_gpu'))} | {rule} |")
        md.append(line)
    for folder in ["out"] + (["results"] if args.update_results else []):
        out = Path(__file__).resolve().parent / folder
        out.mkdir(exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (out / f"{name}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

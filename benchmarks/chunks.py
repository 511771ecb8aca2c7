"""Forward-only workspaces in chunks (plan.Chunks: one chunk's steps of the input products kept, the forward run
chunk by chunk) against all steps at once, and cuDNN's inference, in one process: time and peak memory of a
forward (no gradients) of the vanilla LSTM, I = H, at shapes where the input products would take 64 MiB or more.

    python3 benchmarks/chunks.py [--precisions fp32 bf16] [--shapes 256x1024x1000x1 ...] [--json out.json]
    python3 benchmarks/chunks.py --render out.json      # its markdown table again, no GPU

Each row is lstmdsl/bench.py's bench_case in "forward" mode (its timings: medians of CUDA-event timings of a call;
its memory: each competitor's peak in use): lstmdsl as it runs by default ("chunks"), lstmdsl with
Engine.use_chunks off for the layers it builds ("all steps"), and cuDNN (eval mode: its inference kernels).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from tables import finish, output_options, render

SHAPES = ["256x1024x1000x1", "256x256x1000x4", "256x1024x100x1", "64x1024x1000x1", "256x512x1000x4"]  # B x H x T x L


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "tf32", "bf16", "fp16"))
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="B x H x T x layers (input size H)")
    ap.add_argument("--repeat", type=int, default=10)
    output_options(ap)
    args = ap.parse_args()
    if args.render:
        render(args.render, markdown)
        return
    import cupy
    import torch

    import lstmdsl
    from lstmdsl.bench import bench_case
    from lstmdsl.runtime.executor import Engine

    spec = lstmdsl.parse("vanilla")
    rows = []
    for precision in args.precisions:
        for shape in args.shapes:
            B, H, T, L = (int(v) for v in shape.split("x"))
            row = {"precision": precision, "batch": B, "hidden": H, "steps": T, "layers": L, "results": {}}
            for name, chunks, competitors in (("chunks", True, ("lstmdsl", "cudnn")), ("all steps", False, ("lstmdsl",))):
                Engine.use_chunks = chunks  # (read when a layer's engine is made: bench_case builds the layer)
                try:
                    case = bench_case(spec, B, H, T, L, "forward", precision, args.repeat, competitors)
                finally:
                    Engine.use_chunks = True
                row["results"][name] = case["results"]["lstmdsl"]
                if "cudnn" in case["results"]:
                    row["results"]["cuDNN"] = case["results"]["cudnn"]
            rows.append(row)
            print(markdown_row(row), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "cupy": cupy.__version__, "lstmdsl": lstmdsl.__version__, "python": platform.python_version(),
              "repeat": args.repeat, "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python3", "benchmarks/chunks.py", *sys.argv[1:]]), "rows": rows}
    finish(result, args, markdown)


NAMES = ("chunks", "all steps", "cuDNN")


def _cell(res: dict | None, key: str) -> str:
    if not res or "error" in res:
        return "OOM" if res and "out of memory" in res["error"] else "-"
    return f"{res['ms']:.2f}" if key == "ms" else f"{res['memory'] / 2**20:.0f}"


def markdown_row(r: dict) -> str:
    res = r["results"]
    ratio = lambda a, b, k: (f"{res[a][k] / res[b][k]:.2f}" if all(n in res and k in res[n] for n in (a, b))  # noqa: E731
                             else "-")
    return (f"| {r['precision']} | {r['batch']} | {r['hidden']} | {r['steps']} | {r['layers']} | "
            + " | ".join(f"{_cell(res.get(n), 'ms')} | {_cell(res.get(n), 'mem')}" for n in NAMES)
            + f" | {ratio('chunks', 'all steps', 'ms')} | {ratio('chunks', 'all steps', 'memory')} | "
            f"{ratio('chunks', 'cuDNN', 'ms')} | {ratio('chunks', 'cuDNN', 'memory')} |")


def markdown(result: dict) -> str:
    head = (f"Forward-only, vanilla LSTM, I = H, on {result['gpu']} (torch {result['torch']}, cuDNN {result['cudnn']}, "
            f"CuPy {result['cupy']}, lstmdsl {result['lstmdsl']}, {result['date']}, `{result['command']}`): ms (median "
            "of a call) and peak MiB in use; chunks: lstmdsl as it runs by default (plan.Chunks), all steps: with "
            "Engine.use_chunks off; cuDNN in eval mode.")
    lines = [head, "", "| precision | B | H | T | L | " + " | ".join(f"{n} ms | MiB" for n in NAMES)
             + " | chunks / all steps ms | MiB | chunks / cuDNN ms | MiB |", "|---" * (5 + 2 * len(NAMES) + 4) + "|"]
    return "\n".join(lines + [markdown_row(r) for r in result["rows"]]) + "\n"


if __name__ == "__main__":
    main()

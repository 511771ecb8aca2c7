"""LSTMP with its projection folded into the next step's GEMM (`fold projection`, passes/projection.py) against
the unfolded plan (`no fold projection`), beside cuDNN's vanilla LSTM of the
same hidden size (issue 14's bar for every shipped variant) and cuDNN's own LSTMP (torch.nn.LSTM with proj_size)
in the same process: --layers layers (1), I = H, proj = H / 2, forward (train=False; cuDNN in eval mode under
no_grad) and training (forward and backward of sum(y)); lstmdsl and cuDNN's vanilla through
lstmdsl.bench.bench_case; the folded and the unfolded layer's outputs (and, in training, input gradients) on the
same weights and input are compared at each shape (relative error, in the table).

    python3 benchmarks/projection.py [--precision fp32] [--batches 1 16 64 256] [--hiddens 256 512 1024] [--layers 1]
        [--json benchmarks/results/projection_fp32_h200.json]
    python3 benchmarks/projection.py --render benchmarks/results/projection_fp32_h200.json   # the table, no GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import lstmdsl  # noqa: E402
from tables import finish, output_options, render  # noqa: E402

MODES = ("forward", "train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    output_options(ap)
    args = ap.parse_args()
    if args.render:
        render(args.render, markdown)
        return
    import cupy
    import torch

    from lstmdsl.bench import bench_case

    spec, vanilla = lstmdsl.parse("lstmp"), lstmdsl.parse("vanilla")
    rows = []
    for B in args.batches:
        for H in args.hiddens:
            for mode in MODES:
                row = {"B": B, "H": H, "mode": mode}
                for key, schedule in (("unfolded", "no fold projection"), ("folded", "fold projection")):
                    r = bench_case(spec, B, H, args.steps, args.layers, mode, args.precision, args.repeat, ("lstmdsl",),
                                   schedule=schedule)["results"]["lstmdsl"]
                    row[f"{key}_ms"], row[f"{key}_memory"] = r.get("ms"), r.get("memory")
                r = bench_case(vanilla, B, H, args.steps, args.layers, mode, args.precision, args.repeat, ("cudnn",))
                row["cudnn_vanilla_ms"] = r["results"]["cudnn"].get("ms")
                row["folded_vs_unfolded"] = agreement(cupy, spec, B, H, args.steps, args.layers, mode, args.precision)
                row["cudnn_lstmp_ms"] = cudnn_lstmp(torch, B, H, args.steps, args.layers, mode, args.precision,
                                                    args.repeat)
                rows.append(row)
                print(row, flush=True)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuDNN": torch.backends.cudnn.version(),
           "CuPy": cupy.__version__, "lstmdsl": lstmdsl.__version__, "Python": platform.python_version()}
    result = {"environment": env, "precision": args.precision, "steps": args.steps, "layers": args.layers,
              "repeat": args.repeat, "command": "python3 benchmarks/projection.py " + " ".join(sys.argv[1:]),
              "rows": rows}
    finish(result, args, markdown)


def agreement(cupy, spec, B: int, H: int, T: int, L: int, mode: str, precision: str) -> float:
    """The relative difference of the folded layer's output (in training also its input gradient) from the
    unfolded layer's, same weights, input and output gradient; raises where it exceeds the precision's tolerance."""
    layers = [lstmdsl.compile(spec, H, H, L, proj_size=H // 2, backend="cuda", seed=0,
                              schedule=f"{fold}fold projection; precision {precision}") for fold in ("no ", "")]
    rng = np.random.default_rng(1)
    x = cupy.asarray(rng.standard_normal((T, B, H), dtype=np.float32))
    dy = cupy.asarray(rng.standard_normal((T, B, H // 2), dtype=np.float32))
    got = []
    for layer in layers:
        y, _ = layer.forward(x, train=mode == "train")
        got.append([cupy.asnumpy(y)] + ([cupy.asnumpy(layer.backward(dy))] if mode == "train" else []))
    err = max(float(np.linalg.norm(f - d) / np.linalg.norm(d)) for d, f in zip(*got))
    if not err <= (1e-4 if precision == "fp32" else 2e-2):
        raise AssertionError(f"the folded LSTMP disagrees with the unfolded one at B={B}, H={H}, {mode} "
                             f"(relative error {err:.1e})")
    return err


def cudnn_lstmp(torch, B: int, H: int, T: int, L: int, mode: str, precision: str, repeat: int) -> float:
    """ms per call of cuDNN's LSTMP (torch.nn.LSTM(H, H, L, proj_size=H // 2)), medians of CUDA-event timings."""
    from lstmdsl.timing import time_gpu

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    lstm = torch.nn.LSTM(H, H, L, proj_size=H // 2).cuda().train(mode == "train")
    x = torch.randn(T, B, H, device="cuda", requires_grad=mode == "train")

    def forward():
        with torch.no_grad():
            lstm(x)

    def train():
        x.grad = None
        for p in lstm.parameters():
            p.grad = None
        lstm(x)[0].sum().backward()

    return time_gpu(forward if mode == "forward" else train, repeat)["ms"]


def markdown(result: dict) -> str:
    """The table of a result (the JSON this script writes)."""
    env = result["environment"]

    def ms(v):
        return f"{v:.3f}" if v is not None else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    lines = [f"LSTMP (proj = H / 2), {result.get('layers', 1)} layer(s), I = H, T = {result['steps']}, "
             f"{result['precision']}, on "
             f"{env.get('gpu', '?')} ({', '.join(f'{k} {v}' for k, v in env.items() if k != 'gpu')}); ms, "
             f"medians of {result['repeat']} CUDA-event timings; cuDNN vanilla: its LSTM of hidden size H; cuDNN "
             f"LSTMP: torch.nn.LSTM with proj_size = H / 2. "
             f"Command: `{result['command']}`." + (f" ({result['note']})" if result.get("note") else ""),
             "",
             "| B | H | mode | lstmdsl unfolded | folded | folded / unfolded | cuDNN vanilla | "
             "folded / cuDNN vanilla | cuDNN LSTMP | folded / cuDNN LSTMP | memory folded / unfolded | "
             "folded vs unfolded |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['B']} | {r['H']} | {r['mode']} | {ms(r['unfolded_ms'])} | {ms(r['folded_ms'])} | "
                     f"{ratio(r['folded_ms'], r['unfolded_ms'])} | {ms(r.get('cudnn_vanilla_ms'))} | "
                     f"{ratio(r['folded_ms'], r.get('cudnn_vanilla_ms'))} | {ms(r.get('cudnn_lstmp_ms'))} | "
                     f"{ratio(r['folded_ms'], r.get('cudnn_lstmp_ms'))} | "
                     f"{ratio(r['folded_memory'], r['unfolded_memory'])} | {r.get('folded_vs_unfolded', 0):.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

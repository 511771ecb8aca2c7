"""What the regularisers cost: a training step (forward and backward) of lstmdsl.torch modules with and
without them, in one process, strict fp32 (or --tf32):

  - the spec's own: zoneout_lstm (zoneout on c and h) and recurrent_dropout (dropout on z) against vanilla,
    one layer; DropConnect (p = 0.5) on vanilla's recurrent matrices;
  - dropout between layers (nn.LSTM's dropout=0.3): a 2-layer vanilla stack against the same without,
    and cuDNN's with and without.

    python3 benchmarks/regularisers.py [--batch 64] [--hidden 512] [--steps 100] [--tf32] [--json out.json]
    python3 benchmarks/regularisers.py --render out.json      # its markdown table again, no GPU

Medians of CUDA-event timings (lstmdsl.timing.time_gpu); the masks are drawn in every timed call.
"""

from __future__ import annotations

import argparse
import platform

import torch

import lstmdsl
import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu
from tables import finish, output_options, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tf32", action="store_true")
    output_options(ap)
    args = ap.parse_args()
    if args.render:
        render(args.render, markdown)
        return
    B, H, T = args.batch, args.hidden, args.steps
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    schedule = "precision tf32" if args.tf32 else None
    x = torch.randn(T, B, H, device="cuda", requires_grad=True)
    cases = {
        "vanilla, 1 layer": lt.RNN("vanilla", H, H, schedule=schedule),
        "zoneout_lstm, 1 layer": lt.RNN("zoneout_lstm", H, H, schedule=schedule),
        "recurrent_dropout, 1 layer": lt.RNN("recurrent_dropout", H, H, schedule=schedule),
        "vanilla, 1 layer, dropconnect 0.5": lt.RNN("vanilla", H, H, schedule=schedule, dropconnect=0.5),
        "vanilla, 2 layers": lt.LSTM(H, H, 2, schedule=schedule),
        "vanilla, 2 layers, dropout 0.3": lt.LSTM(H, H, 2, dropout=0.3, schedule=schedule),
        "cuDNN, 2 layers": torch.nn.LSTM(H, H, 2),
        "cuDNN, 2 layers, dropout 0.3": torch.nn.LSTM(H, H, 2, dropout=0.3),
    }
    rows = {}
    for name, m in cases.items():
        m = m.cuda().train()

        def step(m=m):
            y, _ = m(x)
            y.sum().backward()
        rows[name] = time_gpu(step, args.repeat, 3)["ms"]
    base = {"zoneout_lstm, 1 layer": "vanilla, 1 layer", "recurrent_dropout, 1 layer": "vanilla, 1 layer",
            "vanilla, 1 layer, dropconnect 0.5": "vanilla, 1 layer",
            "vanilla, 2 layers, dropout 0.3": "vanilla, 2 layers", "cuDNN, 2 layers, dropout 0.3": "cuDNN, 2 layers"}
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "lstmdsl": lstmdsl.__version__,
              "python": platform.python_version(), "precision": "tf32" if args.tf32 else "strict fp32",
              "repeat": args.repeat, "shape": {"batch": B, "hidden": H, "steps": T}, "train_ms": rows,
              "cost": {n: rows[n] / rows[b] for n, b in base.items()}}
    finish(result, args, markdown)


def markdown(result: dict) -> str:
    """The table of a result (the JSON this script writes)."""
    shape = result["shape"]
    lines = [f"Training step (forward and backward), B = {shape['batch']}, I = H = {shape['hidden']}, T = {shape['steps']}, "
             f"{result['precision']}, on {result['gpu']} (torch {result['torch']}, lstmdsl {result['lstmdsl']}); ms, "
             f"medians of {result.get('repeat', 20)} CUDA-event timings; cost = time / the same without the "
             "regulariser.", "", "| model | ms | cost |", "|---|---|---|"]
    for name, ms in result["train_ms"].items():
        cost = f"{result['cost'][name]:.3f}" if name in result["cost"] else ""
        lines.append(f"| {name} | {ms:.3f} | {cost} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

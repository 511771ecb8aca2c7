"""Bidirectional, variable-length LSTMs: lstmdsl.torch.LSTM against cuDNN (torch.nn.LSTM) in one process,
forward and training step, on a padded batch (every sequence full) and on a packed one (lengths drawn
uniformly from [T/2, T], unsorted), strict fp32.

    python3 benchmarks/bidirectional.py [--layers 2] [--json out.json]

Medians of CUDA-event timings after warm-up (lstmdsl.timing.time_gpu); the packed timings include packing
and unpacking, as a user's call does.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

import lstmdsl
import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu

SHAPES = [(16, 256, 100), (64, 512, 100)]  # (batch, hidden, steps), input size = hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    for B, H, T in SHAPES:
        torch.manual_seed(0)
        cudnn = torch.nn.LSTM(H, H, args.layers, bidirectional=True).cuda()
        ours = lt.from_torch(cudnn)
        x = torch.randn(T, B, H, device="cuda", requires_grad=True)
        lengths = torch.randint(T // 2, T + 1, (B,))
        lengths[0] = T
        for batch in ("padded", "packed"):
            def inputs():
                if batch == "padded":
                    return x
                return torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)

            def out(y):
                return y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
            for name, m in (("lstmdsl", ours), ("cuDNN", cudnn)):
                def fwd():
                    with torch.no_grad():
                        m(inputs())

                def train():
                    y, _ = m(inputs())
                    out(y).sum().backward()
                f, t = time_gpu(fwd, args.repeat, 3), time_gpu(train, args.repeat, 3)
                rows.append({"batch": B, "hidden": H, "steps": T, "layers": args.layers, "input": batch,
                             "impl": name, "forward_ms": f["ms"], "train_ms": t["ms"]})
    print(f"bidirectional LSTM, {args.layers} layers, strict fp32, ms (median of {args.repeat}); ratio = lstmdsl / cuDNN")
    print(f"  {'B':>3} {'H':>4} {'T':>4} {'input':<7} {'lstmdsl fwd':>11} {'cuDNN fwd':>9} {'ratio':>5} "
          f"{'lstmdsl train':>13} {'cuDNN train':>11} {'ratio':>5}")
    for a, b in zip(rows[::2], rows[1::2]):
        print(f"  {a['batch']:>3} {a['hidden']:>4} {a['steps']:>4} {a['input']:<7} {a['forward_ms']:>11.3f} "
              f"{b['forward_ms']:>9.3f} {a['forward_ms'] / b['forward_ms']:>5.2f} {a['train_ms']:>13.3f} "
              f"{b['train_ms']:>11.3f} {a['train_ms'] / b['train_ms']:>5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cudnn": torch.backends.cudnn.version(), "lstmdsl": lstmdsl.__version__,
                       "python": platform.python_version(), "precision": "strict fp32", "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

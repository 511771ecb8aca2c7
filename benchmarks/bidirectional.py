"""Bidirectional, variable-length LSTMs: lstmdsl.torch.LSTM against cuDNN (torch.nn.LSTM) in one process,
with the two directions at once (a side stream) and one after the other,
forward and training step, on a padded batch (every sequence full) and on a packed one (lengths drawn
uniformly from [T/2, T], unsorted), strict fp32.

    python3 benchmarks/bidirectional.py [--layers 2] [--tf32] [--json out.json]
    python3 benchmarks/bidirectional.py --render out.json      # its markdown table again, no GPU

Medians of CUDA-event timings after warm-up (lstmdsl.timing.time_gpu); the packed timings include packing
and unpacking, as a user's call does.
"""

from __future__ import annotations

import argparse
import platform

import torch

import lstmdsl
import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu
from tables import finish, output_options, render

SHAPES = [(16, 256, 100), (64, 512, 100)]  # (batch, hidden, steps), input size = hidden


def packed_case(B: int, H: int, T: int, layers: int, tf32: bool, device: str = "cuda"):
    """cuDNN's bidirectional LSTM (seed 0), lstmdsl's copy of it, a padded input x [T, B, H], lengths uniform in
    [T/2, T] (the first T) and the batch pre-packed: packed once, outside the timings (its data a leaf of its own
    for the backward), the RNN's own cost of a packed batch without torch's packing, which cuDNN's packed call
    pays as well. Also benchmarks/probe_packed_host.py's."""
    torch.manual_seed(0)
    cudnn = torch.nn.LSTM(H, H, layers, bidirectional=True).to(device)
    ours = lt.from_torch(cudnn, schedule="precision tf32" if tf32 else None)
    x = torch.randn(T, B, H, device=device, requires_grad=True)
    lengths = torch.randint(T // 2, T + 1, (B,))
    lengths[0] = T
    once = torch.nn.utils.rnn.pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    pre = torch.nn.utils.rnn.PackedSequence(once.data.clone().requires_grad_(True), once.batch_sizes,
                                            once.sorted_indices, once.unsorted_indices)
    return cudnn, ours, x, lengths, pre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tf32", action="store_true", help="TF32 tensor cores for both (default: strict fp32)")
    output_options(ap)
    args = ap.parse_args()
    if args.render:
        render(args.render, markdown)
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    precision = "tf32" if args.tf32 else "strict fp32"
    rows, packing = [], []
    for B, H, T in SHAPES:
        cudnn, ours, x, lengths, pre = packed_case(B, H, T, args.layers, args.tf32)
        for batch in ("padded", "lengths", "packed", "pre-packed"):
            def inputs():
                if batch == "padded":
                    return x
                if batch == "pre-packed":
                    return pre
                return torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)

            def out(y):
                return y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y

            def call(m):  # lengths: lstmdsl's lengths= on the padded batch, cuDNN's only way (packed) for cuDNN
                if batch != "lengths":
                    return m(inputs())
                return m(x, lengths=lengths) if m is ours else \
                    m(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
            if batch == "packed":  # torch's packing alone: what any module's packed call pays besides its RNN
                def pack_fwd():
                    with torch.no_grad():
                        inputs()

                def pack_train():
                    x.grad = None
                    inputs().data.sum().backward()
                packing.append({"batch": B, "hidden": H, "steps": T, "forward_ms": time_gpu(pack_fwd, args.repeat, 3)["ms"],
                                "train_ms": time_gpu(pack_train, args.repeat, 3)["ms"]})
            for name, m in (("lstmdsl", ours), ("lstmdsl serial", ours), ("cuDNN", cudnn)):
                if m is ours:  # serial: the two directions one after the other, on one stream
                    ours.overlap_directions = name == "lstmdsl"

                def fwd():
                    with torch.no_grad():
                        call(m)

                def train():  # (each call's gradients anew, as after zero_grad())
                    m.zero_grad(set_to_none=True)
                    x.grad = pre.data.grad = None
                    y, _ = call(m)
                    out(y).sum().backward()
                # (cuDNN's forward in eval mode: in training mode it runs its training kernels, under no_grad too;
                # until 2026-12-04 this script timed that)
                m.eval()
                f = time_gpu(fwd, args.repeat, 3)
                m.train()
                t = time_gpu(train, args.repeat, 3)
                rows.append({"batch": B, "hidden": H, "steps": T, "layers": args.layers, "input": batch,
                             "impl": name, "forward_ms": f["ms"], "train_ms": t["ms"]})
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "lstmdsl": lstmdsl.__version__, "python": platform.python_version(), "precision": precision,
              "layers": args.layers, "repeat": args.repeat, "rows": rows, "packing": packing}
    finish(result, args, markdown)


def markdown(result: dict) -> str:
    """The table of a result (the JSON this script writes)."""
    lines = [f"Bidirectional LSTM, {result['layers']} layers, I = H, {result['precision']}, on {result['gpu']} "
             f"(torch {result['torch']}, cuDNN {result['cudnn']}, lstmdsl {result['lstmdsl']}); ms, medians of "
             f"{result.get('repeat', 20)} CUDA-event timings; x cuDNN = time / cuDNN's time. serial: lstmdsl with "
             "the two directions one after the other. packed: lengths uniform in [T/2, T], packing included; "
             "pre-packed: the same batch packed once beforehand (the RNN's own cost of a packed batch); lengths: "
             "the padded batch with lstmdsl's lengths= (for cuDNN, its only way: packed).", "",
             "| B | H | T | input | lstmdsl fwd | serial | cuDNN fwd | x cuDNN | serial x | lstmdsl train | serial | "
             "cuDNN train | x cuDNN | serial x |", "|" + "---|" * 14]
    rows = result["rows"]
    for a, s, b in zip(rows[::3], rows[1::3], rows[2::3]):
        lines.append(f"| {a['batch']} | {a['hidden']} | {a['steps']} | {a['input']} | {a['forward_ms']:.3f} | "
                     f"{s['forward_ms']:.3f} | {b['forward_ms']:.3f} | {a['forward_ms'] / b['forward_ms']:.2f} | "
                     f"{s['forward_ms'] / b['forward_ms']:.2f} | {a['train_ms']:.3f} | {s['train_ms']:.3f} | "
                     f"{b['train_ms']:.3f} | {a['train_ms'] / b['train_ms']:.2f} | {s['train_ms'] / b['train_ms']:.2f} |")
    if result.get("packing"):
        lines += ["", "torch's packing alone (pack_padded_sequence(enforce_sorted=False); train: and the backward of "
                  "its data's sum), which every packed call pays on the host besides the RNN, and lstmdsl's packed "
                  "time against its padded time:", "",
                  "| B | H | T | packing fwd | packing train | lstmdsl packed / padded fwd | train | "
                  "pre-packed / padded fwd | train | cuDNN pre-packed / padded fwd | train | lstmdsl lengths= / "
                  "padded fwd | train |", "|" + "---|" * 13]

        def row(impl, batch, p):
            return next((r for r in rows if r["impl"] == impl and r["input"] == batch and r["batch"] == p["batch"]
                         and r["hidden"] == p["hidden"]), None)

        def ratio(a, b, mode):
            return f"{a[mode] / b[mode]:.2f}" if a and b else "-"
        for p in result["packing"]:
            pad, packed, pre, lengths = (row("lstmdsl", i, p) for i in ("padded", "packed", "pre-packed", "lengths"))
            cpad, cpre = row("cuDNN", "padded", p), row("cuDNN", "pre-packed", p)
            pairs = ((packed, pad), (pre, pad), (cpre, cpad), (lengths, pad))
            lines.append(f"| {p['batch']} | {p['hidden']} | {p['steps']} | {p['forward_ms']:.3f} | {p['train_ms']:.3f} | "
                         + " | ".join(ratio(a, b, m) for a, b in pairs for m in ("forward_ms", "train_ms")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

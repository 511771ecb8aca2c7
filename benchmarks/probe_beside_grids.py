"""Whether a bidirectional layer's two persistent grids run at once when each takes half the multiprocessors
(passes/persistent.py BESIDE_GRIDS = 2, plan.Persistent.beside_grids) instead of all of them (1: the two grids take turns, as
probes/packed_h200.txt's timeline showed): the torch module's 2-layer bidirectional vanilla LSTM (from_torch of
cuDNN's, I = H, T = 100, strict fp32), forward under no_grad and training step, GPU time alone
(timing.time_gpu_only) and by the call (timing.time_gpu), padded and pre-packed (lengths uniform in [T/2, T]),
each setting in a module of its own; its outputs against the other setting's. GPU only.

    python3 benchmarks/probe_beside_grids.py [--shapes 16x256 4x512 ...] [--timeline]
    python3 benchmarks/probe_beside_grids.py --serial             # the directions one after the other (the module's
                                                                  # way under torch.compile; since 76c9dd6 full
                                                                  # grids in both rows: serial's time)
    python3 benchmarks/probe_beside_grids.py --alone-rule --shapes 32x256 32x512 64x256 64x512
        # the rule of a layer of one direction (ALONE_LIMITS: the grid to B = 64) in the directions too: with the
        # grids side by side, does it win there now? (rows "grids 1" are then as shipped: since the fifty-fifth
        # session fp32's half grids to 2^25, BESIDE_LIMITS, else the stepwise loop)
    python3 benchmarks/probe_beside_grids.py --precision bf16 --shapes 1x512 4x512 16x256 16x512
        # the half-precision grids on half the multiprocessors against all of them, the module's parameters
        # float32 and its input in the half type (mixed precision)
"""
import argparse

import torch

import lstmdsl.loops as loops
import lstmdsl.passes.persistent as persistent
from bidirectional import packed_case
from lstmdsl.program import build_program
from lstmdsl.timing import time_gpu, time_gpu_only
from probe_packed_kernels import timeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1x256", "1x512", "4x256", "4x512", "16x128", "16x256",
                                                    "16x512", "16x1024"])
    ap.add_argument("--timeline", action="store_true", help="one forward's kernels at the first shape, both ways")
    ap.add_argument("--serial", action="store_true", help="the two directions one after the other, on one stream")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--alone-rule", action="store_true",
                    help="grids 2 with the rules of a layer of one direction (grids 1: as shipped)")
    args = ap.parse_args()
    applies = loops.Persistent.applies
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    measured = persistent.BESIDE_MEASURED
    persistent.BESIDE_MEASURED = measured + ((args.precision,) if half is not None else ())
    print("shape   input      grids | fwd gpu  fwd call | train gpu train call | max |y - y(grids 1)|")
    for shape in args.shapes:
        B, H = map(int, shape.split("x"))
        ref = {}
        for grids in (1, 2):
            persistent.BESIDE_GRIDS = grids if not args.alone_rule else 2
            loops.Persistent.applies = applies if grids == 1 or not args.alone_rule else (
                lambda self, batch, work, fits, split=False, alone=False, beside=False:
                applies(self, batch, work, fits, split, True, beside))
            build_program.cache_clear()  # (plans are cached by cell and schedule)
            _, ours, x, _, pre = packed_case(B, H, 100, 2, tf32)
            if half is not None:  # (mixed precision: float32 parameters, the input in the half type)
                x = x.detach().to(half).requires_grad_(True)
                pre = torch.nn.utils.rnn.PackedSequence(pre.data.detach().to(half).requires_grad_(True),
                                                        pre.batch_sizes, pre.sorted_indices, pre.unsorted_indices)
            ours.overlap_directions = not args.serial
            for name, inp in (("padded", x), ("pre-packed", pre)):
                def fwd():
                    with torch.no_grad():
                        return ours(inp)

                def train():
                    ours.zero_grad(set_to_none=True)
                    y, _ = ours(inp)
                    (y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y).sum().backward()
                ours.eval()
                y = fwd()[0]
                y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
                diff = (y - ref[name]).abs().max().item() if name in ref else 0.0
                ref.setdefault(name, y)
                f = (time_gpu_only(fwd, 20, 3)["gpu_ms"], time_gpu(fwd, 20, 3)["ms"])
                ours.train()
                t = (time_gpu_only(train, 10, 3)["gpu_ms"], time_gpu(train, 10, 3)["ms"])
                print(f"{shape:7s} {name:10s} {grids:5d} | {f[0]:7.3f} {f[1]:9.3f} | {t[0]:9.3f} {t[1]:10.3f} | "
                      f"{diff:.2e}", flush=True)
                if args.timeline and shape == args.shapes[0] and name == "padded":
                    ours.eval()
                    print(f"one padded forward's GPU work, grids {grids} (us):")
                    timeline(ours, inp)
    persistent.BESIDE_GRIDS, persistent.BESIDE_MEASURED = 2, measured
    loops.Persistent.applies = applies
    build_program.cache_clear()


if __name__ == "__main__":
    main()

"""Probe: how many words a step a persistent grid may hand on in tagged words instead of meeting at a grid barrier
(loops.Persistent.exchange_words, 4096: one round of 16 words a thread at 256 threads, measured in fp32), at the
batches where the half-precision kernels lose to cuDNN's persistent one (issue 13: fp16, B = 16, H = 512 and 1024,
where B x H is past 4096). Vanilla LSTM, one layer, `persistent auto`; each limit in turn in one process, cuDNN at
the same precision in the same case (bench_case checks the two outputs agree).

    python3 benchmarks/probe_exchange_words.py --precisions fp16 bf16 fp32 --shapes 16x512 16x1024 --limits 4096 16384
"""
import argparse
import sys

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402
from lstmdsl import loops  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16", "fp32"])
ap.add_argument("--shapes", nargs="+", default=["16x512", "16x1024", "8x1024", "32x256"], help="BxH")
ap.add_argument("--limits", nargs="+", type=int, default=[4096, 8192, 16384, 32768])
ap.add_argument("--steps", nargs="+", type=int, default=[1000])
ap.add_argument("--modes", nargs="+", default=["forward", "train"])
ap.add_argument("--repeat", type=int, default=7)
args = ap.parse_args()
vanilla = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
limit = [4096]
loops.Persistent.exchanges = lambda self, words: self.exchange is not None and words <= limit[0]
print("vanilla, one layer, persistent auto; us a step by the call (GPU alone); cuDNN at the same precision",
      flush=True)
print("prec mode       B    H    T | cuDNN          | " + " | ".join(f"<= {n:5d}       " for n in args.limits),
      flush=True)
for precision in args.precisions:
    for mode in args.modes:
        for T in args.steps:
            for B, H in (tuple(map(int, s.split("x"))) for s in args.shapes):
                cells = []
                for n in args.limits:
                    limit[0] = n
                    row = bench_case(vanilla, B, H, T, 1, mode, precision=precision, repeat=args.repeat,
                                     competitors=("lstmdsl", "cudnn"), gpu_time=True)["results"]
                    c, r = row["cudnn"], row["lstmdsl"]
                    cells.append(f"{r['ms'] / T * 1e3:6.2f} ({r['gpu_ms'] / T * 1e3:5.2f})")
                cudnn = f"{c['ms'] / T * 1e3:6.2f} ({c['gpu_ms'] / T * 1e3:5.2f})"
                print(f"{precision:4s} {mode:7s} {B:4d} {H:4d} {T:4d} | {cudnn} | " + " | ".join(cells), flush=True)

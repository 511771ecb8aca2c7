"""The persistent grid that splits the batch (plan.Persistent.split_rows: each block holds all the weights and
runs its own batch rows) against the grid that splits the elements, both forced `persistent`, with the
stepwise loop, `persistent auto` and cuDNN beside them; vanilla, fp32, T = 100, one layer, forward and
training, one process (GPU; about 2 minutes). The table it prints is in docs/performance.md.

    python3 benchmarks/persistent_split.py [--shapes 4x32 64x16 ...] [--modes forward train]

"elements": split_rows off, so the grid splits the elements, or is one block at most 2^16 multiply-adds a
step.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lstmdsl  # noqa: E402
from lstmdsl import plan as plan_mod  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402

SHAPES = ((4, 32), (16, 32), (16, 64), (16, 100), (64, 32), (64, 64), (64, 100), (256, 32), (256, 64))


def ms(row, competitor="lstmdsl"):
    return row["results"][competitor]["ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=[f"{b}x{h}" for b, h in SHAPES], help="BxH")
    ap.add_argument("--modes", nargs="+", default=["forward", "train"])
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    spec = lstmdsl.parse("vanilla")
    split_rows = plan_mod.Persistent.split_rows
    print("| mode | B | H | cuDNN ms | auto ms | stepwise ms | split ms | elements ms | split / elements | auto / cuDNN |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for B, H in shapes:
            auto = bench_case(spec, B, H, 100, 1, mode, competitors=("lstmdsl", "cudnn"), repeat=7)
            split = bench_case(spec, B, H, 100, 1, mode, competitors=("lstmdsl",), schedule="persistent", repeat=7)
            step = bench_case(spec, B, H, 100, 1, mode, competitors=("lstmdsl",), schedule="no persistent", repeat=7)
            plan_mod.Persistent.split_rows = lambda self, *args: 0  # the grid splits the elements
            try:
                elements = bench_case(spec, B, H, 100, 1, mode, competitors=("lstmdsl",), schedule="persistent",
                                      repeat=7)
            finally:
                plan_mod.Persistent.split_rows = split_rows
            print(f"| {mode} | {B} | {H} | {ms(auto, 'cudnn'):.3f} | {ms(auto):.3f} | {ms(step):.3f} | "
                  f"{ms(split):.3f} | {ms(elements):.3f} | {ms(split) / ms(elements):.2f}x | "
                  f"{ms(auto) / ms(auto, 'cudnn'):.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

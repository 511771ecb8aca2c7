"""Probe: the sLSTM (block-diagonal matrices, heads) under a forced `persistent` (each block's rows kept expanded in
shared memory, zero off the diagonal blocks: the kernel does `heads` times the multiply-adds of the blocks) against
`persistent auto` (no rule for it: the stepwise loop, its stacks stored head by head, one strided batch of GEMMs a
step), GPU time, one layer, one process, cuDNN's vanilla LSTM beside (issue 14's yardstick for every variant).

    python3 benchmarks/probe_heads.py --heads 1 4 --shapes 1x256 16x256 1x512 16x512 64x512 --modes forward train
"""
import argparse
import sys

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--heads", type=int, nargs="+", default=[1, 4])
ap.add_argument("--shapes", nargs="+", default=["1x256", "16x256", "1x512", "16x512", "64x512"], help="BxH")
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--precision", default="fp32")
ap.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
args = ap.parse_args()
spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()["slstm"].read_text())
vanilla = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
loops = {"auto": None, "persistent": "persistent"}
print(f"sLSTM {args.precision} T={args.steps}, GPU ms (timing.time_gpu_only), one layer\n"
      "mode     heads    B    H | cuDNN vanilla | " + " | ".join(loops) + " | persistent/auto | persistent/cuDNN",
      flush=True)
for mode in args.modes:
    for B, H in (tuple(map(int, s.split("x"))) for s in args.shapes):
        kw = dict(precision=args.precision, repeat=5, gpu_time=True)
        cudnn = bench_case(vanilla, B, H, args.steps, 1, mode, competitors=("cudnn",), **kw)["results"]["cudnn"]
        for heads in args.heads:
            out = {}
            for name, words in loops.items():
                schedule = "; ".join(w for w in (f"precision {args.precision}", words) if w)
                r = bench_case(spec, B, H, args.steps, 1, mode, competitors=("lstmdsl",), schedule=schedule,
                               num_heads=heads, **kw)["results"]["lstmdsl"]
                out[name] = r.get("gpu_ms", float("nan"))
            c = cudnn.get("gpu_ms", float("nan"))
            print(f"{mode:8s} {heads:5d} {B:4d} {H:4d} | {c:13.3f} | "
                  + " | ".join(f"{out[n]:{len(n)}.3f}" for n in loops)
                  + f" | {out['persistent'] / out['auto']:15.2f}x | {out['persistent'] / c:15.2f}x", flush=True)

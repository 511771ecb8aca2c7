"""Probe: the half-precision cuBLAS workspace (plan.GemmWorkspace.half, 1 MiB a lane; a stack's
wavefront takes a lane per layer) against none (bare handles), vanilla LSTM, lstmdsl's call time, its GPU time
alone and its peak memory beside cuDNN's at the same precision (issue 13: training memory at most cuDNN's). The two
settings alternate in one process, `--rounds` times; each figure is the smaller of its rounds. `--full` sets the
fp32 and tf32 GEMMs' workspace instead, at every batch (GemmWorkspace.full and .small: 32 and 1 MiB a lane).

    python3 benchmarks/probe_half_workspace.py --precisions bf16 fp16 --cases train:1x1024x100x4 train:16x1024x1000x4
    python3 benchmarks/probe_half_workspace.py --full --precisions fp32 tf32 --settings 33554432 1048576 0 \
        --cases train:1x256x100x1 forward:1x512x1000x4
    python3 benchmarks/probe_half_workspace.py --wave --precisions fp32 tf32 --settings 33554432 -2 -1 \
        --cases train:16x256x100x4 train:64x512x100x4
"""
import argparse
import sys

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402
from lstmdsl.plan import GemmWorkspace  # noqa: E402
from lstmdsl.runtime import cublas  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
ap.add_argument("--cases", nargs="+", help="mode:BxHxTxL",
                default=["train:1x1024x100x4", "train:16x1024x100x4", "train:1x1024x1000x4", "train:16x1024x1000x4",
                         "train:64x512x100x4", "forward:64x512x100x4", "train:256x512x100x4", "train:256x1024x100x1",
                         "train:16x256x100x4", "forward:1x512x100x1"])
ap.add_argument("--settings", nargs="+", type=int, default=[1 << 20, 0],
                help="workspace bytes (-1: the plan's rule; with --wave, -2: the rule, GemmWorkspace.fallback `full`)")
ap.add_argument("--full", action="store_true",
                help="the fp32/tf32 workspace (GemmWorkspace.full and .small), not the half one")
ap.add_argument("--wave", action="store_true",
                help="the workspace of a stack's wavefront lanes instead (GemmWorkspace.wave, with cuBLASLt's first "
                     "kernels there; another size there, e.g. 33554432, runs cublasGemmEx's own choice)")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--repeat", type=int, default=7)
args = ap.parse_args()
vanilla = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
RULE, FALLBACK = GemmWorkspace.nbytes, GemmWorkspace.fallback


def setting(nbytes: int) -> None:
    """The plan's workspace rule with nbytes for the GEMMs probed (half, or with --full fp32 and tf32); -1: the
    plan's own rule; with --wave, -2: the rule with GemmWorkspace.fallback `full` (the rule before 22bdadc)."""
    if args.wave:  # (the rule elsewhere)
        GemmWorkspace.nbytes = RULE if nbytes < 0 else lambda self, B, half, rows=0, wave=False: \
            nbytes if wave and RULE(self, B, half, rows, True) == self.wave else RULE(self, B, half, rows, wave)
        GemmWorkspace.fallback = (lambda self, n: self.full) if nbytes == -2 else FALLBACK
        cublas._BARE.clear()  # (its choices are keyed without the fallback: timed again, or read from the stored ones)
        return
    GemmWorkspace.nbytes = RULE if nbytes < 0 else \
        lambda self, B, half, rows=0, wave=False: nbytes if half != args.full else RULE(self, B, half, rows, wave)


what = 'a wavefront lane' if args.wave else 'fp32 and tf32' if args.full else 'half precision'
print(f"vanilla, cuBLAS workspace ({what}) bytes a lane: "
      + " / ".join(map(str, args.settings))
      + "; ms by the call, GPU ms alone, MiB (min over rounds)", flush=True)
print("prec mode     B    H    T L | cuDNN ms   MiB | "
      + " | ".join(f"ws {s:>8d}: ms    gpu    MiB" for s in args.settings)
      + " | ms ratio | MiB - cuDNN", flush=True)
for precision in args.precisions:
    for case in args.cases:
        mode, shape = case.split(":")
        B, H, T, L = map(int, shape.split("x"))
        kw = dict(precision=precision, repeat=args.repeat, gpu_time=True)
        c = bench_case(vanilla, B, H, T, L, mode, competitors=("cudnn",), **kw)["results"]["cudnn"]
        best = {s: {} for s in args.settings}
        for _ in range(args.rounds):
            for s in args.settings:
                setting(s)
                r = bench_case(vanilla, B, H, T, L, mode, competitors=("lstmdsl",), **kw)["results"]["lstmdsl"]
                for k in ("ms", "gpu_ms", "memory"):
                    best[s][k] = min(best[s].get(k, float("inf")), r.get(k, float("inf")))
        mib = 2 ** 20
        first, last = best[args.settings[0]], best[args.settings[-1]]
        print(f"{precision:4s} {mode:7s} {B:4d} {H:4d} {T:4d} {L} | {c['ms']:8.3f} {c['memory'] / mib:6.1f} | "
              + " | ".join(f"{best[s]['ms']:16.3f} {best[s]['gpu_ms']:6.3f} {best[s]['memory'] / mib:6.1f}"
                           for s in args.settings)
              + f" | {last['ms'] / first['ms']:7.2f}x | "
              + " ".join(f"{(best[s]['memory'] - c['memory']) / mib:+.1f}" for s in args.settings), flush=True)
GemmWorkspace.nbytes, GemmWorkspace.fallback = RULE, FALLBACK

"""Probe: `persistent auto` as shipped against auto with one more rule in one of
passes/persistent.py's tables, in one process, GPU time, one layer, cuDNN's vanilla LSTM beside (the issue's
yardstick for every variant). With kernels compiled for their shape (specialise) the old rules may be too narrow.

    python3 benchmarks/probe_rules.py --spec fgr --table MANY_LIMITS --rule 64:1:67108864 16x512 64x512
    python3 benchmarks/probe_rules.py --spec gru --table STAGED_LIMITS --rule 64:1:8388608 16x256 64x256
    python3 benchmarks/probe_rules.py --spec vanilla --table LIMITS --precision fp16 --rule 16:1:67108864 16x512

A rule already in the table is measured the other way round: "wide" is then the table without it (the shipped rule
against its absence), e.g. --table BACKWARD_LIMITS --precision fp16 --rule 16:16777216:67108864:5 8x1024.
"""
import argparse
import sys

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402
from lstmdsl.bench import bench_case  # noqa: E402
from lstmdsl.passes import persistent as P  # noqa: E402
from lstmdsl.program import build_program  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--spec", default="vanilla")
ap.add_argument("--table", default="LIMITS")
ap.add_argument("--precision", default="fp32")
ap.add_argument("--rule", required=True, help="largest batch:least:most multiply-adds a step")
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"],
                help="give it after the shapes (it takes every word that follows it)")
ap.add_argument("shapes", nargs="+", help="BxH, e.g. 16x512")
args = ap.parse_args()
table = getattr(P, args.table)
rule = tuple(int(v) for v in args.rule.split(":"))
spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()[args.spec].read_text())
vanilla = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
shipped = table[args.precision]
other = tuple(r for r in shipped if r != rule) if rule in shipped else shipped + (rule,)
print(f"{args.spec} {args.precision} T={args.steps}: {args.table} {'-' if rule in shipped else '+'} {rule}\n"
      "mode     B    H | cuDNN vanilla gpu | auto gpu | wide gpu | wide/auto | wide/cuDNN", flush=True)
for mode in args.modes:
    for B, H in (tuple(map(int, s.split("x"))) for s in args.shapes):
        kw = dict(precision=args.precision, repeat=5, gpu_time=True)
        cudnn = bench_case(vanilla, B, H, args.steps, 1, mode, competitors=("cudnn",), **kw)["results"]["cudnn"]
        out = {}
        for name, rules in (("auto", shipped), ("wide", other)):
            table[args.precision] = rules
            build_program.cache_clear()
            out[name] = bench_case(spec, B, H, args.steps, 1, mode, competitors=("lstmdsl",), **kw)["results"]["lstmdsl"]
        table[args.precision] = shipped
        build_program.cache_clear()
        a, w = out["auto"]["gpu_ms"], out["wide"]["gpu_ms"]
        print(f"{mode:8} {B:3d} {H:4d} | {cudnn['gpu_ms']:17.3f} | {a:8.3f} | {w:8.3f} | {w / a:8.2f}x | "
              f"{w / cudnn['gpu_ms']:9.2f}x", flush=True)

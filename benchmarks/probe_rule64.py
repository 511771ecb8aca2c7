"""Probe (sixteenth session): would fp32's persistent grid rule (LIMITS: B <= 16) win at B 32-128 now that
launches run kernels compiled for their shape? A/B in one process: `persistent auto` with the B <= 16 grid rule
(and no ALONE_LIMITS) against auto with LIMITS["fp32"] widened to B <= 128 (forward and training: the backward
keeps its own rules), GPU time, vanilla LSTM, T = 100, one layer, cuDNN beside. Results:
benchmarks/results/probes/persistent_rule64_h200.txt.

    python3 benchmarks/probe_rule64.py [BxH ...]     # from the repository root; default B {32, 64, 128} x H {128-1024}
"""
import sys
sys.path.insert(0, ".")
import lstmdsl
from lstmdsl.bench import bench_case
from lstmdsl.passes import persistent as P
from lstmdsl.program import build_program

spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
shipped = P.LIMITS["fp32"]
alone = getattr(P, "ALONE_LIMITS", {}).get("fp32", ())
shapes = [(B, H) for B in (32, 64, 128) for H in (128, 256, 512, 1024)]
if len(sys.argv) > 1:
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[1:]]
print("mode     B    H | cuDNN gpu | auto gpu | wide gpu | wide/auto | auto ms | wide ms", flush=True)
for mode in ("forward", "train"):
    for B, H in shapes:
        out = {}
        for name, limits in (("auto", shipped), ("wide", ((128, 1, 1 << 26),))):
            P.LIMITS["fp32"] = limits
            if hasattr(P, "ALONE_LIMITS"):  # (main since the probe: B <= 64 in a layer of one direction)
                P.ALONE_LIMITS["fp32"] = alone if name == "wide" else ()
            build_program.cache_clear()
            r = bench_case(spec, B, H, 100, 1, mode, competitors=("lstmdsl", "cudnn") if name == "auto" else ("lstmdsl",),
                           repeat=5, gpu_time=True)
            out[name] = r["results"]["lstmdsl"]
            if name == "auto":
                out["cudnn"] = r["results"]["cudnn"]
        P.LIMITS["fp32"] = shipped
        if hasattr(P, "ALONE_LIMITS"):
            P.ALONE_LIMITS["fp32"] = alone
        a, w, c = out["auto"], out["wide"], out["cudnn"]
        print(f"{mode:8} {B:3d} {H:4d} | {c['gpu_ms']:9.3f} | {a['gpu_ms']:8.3f} | {w['gpu_ms']:8.3f} | "
              f"{w['gpu_ms'] / a['gpu_ms']:8.2f}x | {a['ms']:7.3f} | {w['ms']:7.3f}", flush=True)

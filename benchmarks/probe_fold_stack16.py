"""Why the folded LSTMP stack loses at B = 16, H = 512 in fp32 (1.16x the unfolded forward in 4 layers, 0.90x in one):
LSTMP, I = H = 512, proj 256, T = 100, B = 16, fp32; layers 1 and 4 (wavefront auto, and no wavefront), folded and
unfolded: forward as the benchmarks time it (CUDA events, 20), GPU time alone (timing.time_gpu_only), and one forward
under torch.profiler: kernels by kind (GEMM / ours / other) with their summed GPU time, the union of busy time, the
span, and the top kernels (written on 2026-12-05, not yet run: no device time was left):

    python3 benchmarks/probe_fold_stack16.py
"""
import os
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.getcwd())
import cupy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.timing import time_gpu, time_gpu_only  # noqa: E402

B, H, T = 16, 512, 100
x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)), np.float32)
GEMM = ("gemm", "xmma", "nvjet", "cutlass", "gemv", "sm80_", "sm90_")


def kind(name):
    low = name.lower()
    return "gemm" if any(g in low for g in GEMM) else "ours" if "lstmp" in low else "other"


def profile(fn):
    for _ in range(3):
        fn()
    cupy.cuda.Device().synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        cupy.cuda.Device().synchronize()
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not evs:
        return "no CUDA events"
    spans = sorted((e.time_range.start, e.time_range.end) for e in evs)
    busy, cur = 0.0, None
    for s, e in spans:
        if cur is None or s > cur[1]:
            busy += 0 if cur is None else cur[1] - cur[0]
            cur = [s, e]
        else:
            cur[1] = max(cur[1], e)
    busy += cur[1] - cur[0]
    by_kind, n_kind, by_name = defaultdict(float), Counter(), defaultdict(float)
    for e in evs:
        d = e.time_range.end - e.time_range.start
        by_kind[kind(e.name)] += d
        n_kind[kind(e.name)] += 1
        by_name[e.name[:50]] += d
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    return (f"span {spans[-1][1] - spans[0][0]:.0f} us, busy {busy:.0f} us; "
            + ", ".join(f"{k} {n_kind[k]} x = {by_kind[k]:.0f} us" for k in sorted(by_kind))
            + "\n      top: " + "; ".join(f"{n} {t:.0f}" for n, t in top))


for layers, wave in ((1, ""), (4, "wavefront auto"), (4, "no wavefront")):
    for fold in ("fold projection", "no fold projection"):
        schedule = "; ".join(s for s in (fold, wave, "precision fp32") if s)
        layer = lstmdsl.compile(lstmdsl.parse("lstmp"), H, H, layers, proj_size=H // 2, backend="cuda", seed=0,
                                schedule=schedule)
        fwd = lambda: layer.forward(x, train=False)  # noqa: E731
        fwd()
        ev = time_gpu(fwd, 20)["ms"]
        gpu = time_gpu_only(fwd, 20)["gpu_ms"]
        print(f"L={layers} {schedule:48s}: event {ev:.3f} ms, GPU alone {gpu:.3f} ms\n    {profile(fwd)}", flush=True)

"""Probe: do the two-stage cells' (GRU, MGU) persistent rules at B <= 64 hold in a bidirectional layer? Its two
directions run at once, and for the vanilla LSTM two grids of one block a multiprocessor took turns where the
stepwise loops overlapped (benchmarks/results/probes/bidirectional_rule64_h200.md), so ALONE_LIMITS keeps the
vanilla grid past B = 16 to layers of one direction; STAGED_LIMITS' rule of B <= 64 from 2^23 still applies in
a bidirectional layer's directions, unmeasured. A/B in one process: a bidirectional layer (layer API, one layer,
I = H, T = 100, fp32) under `persistent auto` as shipped against auto with that rule cut to B <= 16, GPU time
(timing.time_gpu_only), forward and a training step; and the same for a layer of one direction.

    python3 benchmarks/probe_staged_bidirectional.py [--spec gru] [BxH ...]   # default 32x512 64x512 64x384
"""
import argparse
import sys

import numpy as np

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402
from lstmdsl.passes import persistent as P  # noqa: E402
from lstmdsl.program import build_program  # noqa: E402
from lstmdsl.timing import time_gpu_only  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--spec", default="gru")
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("shapes", nargs="*", default=["32x512", "64x512", "64x384"])
args = ap.parse_args()

import cupy  # noqa: E402

shipped = P.STAGED_LIMITS["fp32"]
narrow = tuple((min(b, 16), lo, hi) for b, lo, hi in shipped)
print(f"{args.spec} fp32 T={args.steps}: STAGED_LIMITS {shipped} against {narrow}\n"
      "layer          mode     B    H | shipped gpu ms | B <= 16 gpu ms | shipped / narrow | persistent (shipped)",
      flush=True)
for directions in (2, 1):
    for mode in ("forward", "train"):
        for B, H in (tuple(map(int, s.split("x"))) for s in args.shapes):
            x = cupy.asarray(np.random.default_rng(0).standard_normal((args.steps, B, H)).astype(np.float32) * 0.5)
            out, ran = {}, None
            for name, rules in (("shipped", shipped), ("narrow", narrow)):
                P.STAGED_LIMITS["fp32"] = rules
                build_program.cache_clear()
                layer = lstmdsl.compile(args.spec, H, H, backend="cuda", bidirectional=directions == 2, seed=0)
                if mode == "forward":
                    fn = lambda: layer.forward(x, train=False)  # noqa: E731
                else:
                    def fn():
                        y, _ = layer.forward(x)
                        layer.backward(cupy.ones_like(y))
                out[name] = time_gpu_only(fn, 7, 3)["gpu_ms"]
                if name == "shipped":
                    ran = [ws.persistent.get("forward") is not None for engine in layer._engines.values()
                           for wss in engine.workspaces.values() for ws in wss]
                layer.free_workspaces()
            P.STAGED_LIMITS["fp32"] = shipped
            build_program.cache_clear()
            print(f"{'bidirectional' if directions == 2 else 'one direction':14} {mode:8} {B:3d} {H:4d} | "
                  f"{out['shipped']:14.3f} | {out['narrow']:14.3f} | {out['shipped'] / out['narrow']:15.2f}x | {ran}",
                  flush=True)

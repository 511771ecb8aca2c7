"""The persistent grid's size in half precision (and fp32 grids), a probe: the vanilla LSTM's forward (and
training step) under `auto`, with the grid capped at N blocks by patching lstmdsl.loops.Persistent.blocks
(auto: min(multiprocessors, the widest stage's elements), 132 on the H200 from H = 132 up). GPU time alone
(timing.time_gpu_only), T = 100, one layer; each capped run's y is checked against the uncapped one; cuDNN's
GPU time at the same precision beside it.

    python3 benchmarks/probe_blocks.py [--caps 96 64 32 16] [--cases fp16:16x256 ...] [--train]

Needs a GPU, CuPy and torch."""
import argparse

import cupy
import numpy as np
import torch

import lstmdsl
from lstmdsl import api, bench, loops
from lstmdsl.runtime import persistent
from lstmdsl.timing import time_gpu_only

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--caps", nargs="+", type=int, default=[96, 64, 32, 16])
ap.add_argument("--cases", nargs="+", default=["fp16:16x256", "fp16:8x512", "fp16:16x512", "fp16:8x1024",
                                                "bf16:16x256", "fp32:1x512", "fp32:16x256"])
ap.add_argument("--train", action="store_true", help="also the training step")
ap.add_argument("--repeat", type=int, default=15)
args = ap.parse_args()

original = loops.Persistent.blocks
cap = [None]
launches = []


def capped(self, work, elements, one_block_bytes, shared, multiprocessors):
    n = original(self, work, elements, one_block_bytes, shared, multiprocessors)
    return n if cap[0] is None else min(n, cap[0])


loops.Persistent.blocks = capped
shape_of = persistent.launch_shape


def recorded(*a, **k):
    run = shape_of(*a, **k)
    launches.append(run)
    return run


persistent.launch_shape = recorded
for name in ("executor", "layer"):  # the modules that imported launch_shape by name
    mod = __import__(f"lstmdsl.runtime.{name}", fromlist=["x"])
    if hasattr(mod, "launch_shape"):
        mod.launch_shape = recorded

spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
print(f"{'case':14} {'cap':>5} {'blocks':>6} {'fwd ms':>7} {'x auto':>7} {'train ms':>8} {'x auto':>7} {'max |dy|':>9}"
      f" {'cuDNN fwd':>9} {'ours/cuDNN':>10}", flush=True)
for case in args.cases:
    precision, shape = case.split(":")
    B, H = (int(v) for v in shape.split("x"))
    x = cupy.random.standard_normal((100, B, H), dtype=cupy.float32)
    ones = cupy.ones((100, B, H), cupy.float32)
    base = None
    cudnn = None
    for c in [None] + args.caps:
        cap[0] = c
        launches.clear()
        layer = api.compile(spec, H, H, 1, backend="cuda", schedule=f"precision {precision}", seed=0)
        y = cupy.asnumpy(layer.forward(x, train=False)[0]).astype(np.float64)
        runs = [r for r in launches if r is not None]
        blocks = runs[0].blocks if runs else 0
        fwd = time_gpu_only(lambda: layer.forward(x, train=False), args.repeat)["gpu_ms"]
        tr = time_gpu_only(lambda: (layer.forward(x), layer.backward(ones)), args.repeat)["gpu_ms"] if args.train else float("nan")
        if base is None:
            base = (y, fwd, tr)
            lstm = bench._cudnn(layer, H, 1)
            xt = torch.from_dlpack(x)
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            if half is not None:
                lstm, xt = lstm.to(half), xt.to(half)

            def fn():
                with torch.no_grad():
                    lstm(xt)
            cudnn = time_gpu_only(fn, args.repeat)["gpu_ms"]
        diff = float(np.abs(y - base[0]).max())
        print(f"{case:14} {c or 'auto':>5} {blocks:>6} {fwd:7.3f} {fwd / base[1]:6.2f}x {tr:8.3f} {tr / base[2]:6.2f}x"
              f" {diff:9.1e} {cudnn:9.3f} {fwd / cudnn:9.2f}x", flush=True)
        layer.free_workspaces()

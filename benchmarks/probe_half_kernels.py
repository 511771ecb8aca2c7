"""Probe: where fp16 training at B = 16 spends its GPU time, lstmdsl against cuDNN (issue 13's slower rows): the
kernel table (torch.profiler, CUDA activity, us a call over 5 calls, once the kernels compiled for the shape are in)
of lstmdsl's vanilla LSTM forward and training step (`persistent auto`, precision fp16, float32 arrays in and out)
and of cuDNN's fp16 nn.LSTM training step, one layer, T = 1000, B = 16, H = 512, 1024 and 256. Needs a GPU, CuPy
and torch.

    python3 benchmarks/probe_half_kernels.py
"""
import collections
import sys
import time

import cupy
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
import lstmdsl  # noqa: E402


def table(fn, n=5):
    for _ in range(3):  # then a pause: `specialise auto` compiles kernels for the shape on a thread of its own and
        fn()            # switches to them at the first call after they are ready
    time.sleep(3)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    cupy.cuda.Device().synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        cupy.cuda.Device().synchronize()
    tot, cnt = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        if e.device_time_total > 0:
            tot[e.key[:60]] += e.device_time_total / n
            cnt[e.key[:60]] += e.count / n
    print(f"  all kernels {sum(tot.values()):.0f} us a call")
    for k, v in tot.most_common(8):
        print(f"  {k:60s} {v:9.1f} us ({cnt[k]:6.0f})")


for B, H, T in ((16, 512, 1000), (16, 1024, 1000), (16, 256, 1000)):
    spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()["vanilla"].read_text())
    layer = lstmdsl.compile(spec, input_size=H, hidden_size=H, backend="cuda", schedule="precision fp16")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)), np.float32)
    ones = cupy.ones((T, B, H), np.float32)
    print(f"== lstmdsl fp16 {B}x{H} T={T} forward")
    table(lambda: layer.forward(x, train=False))
    print(f"== lstmdsl fp16 {B}x{H} T={T} train")
    table(lambda: (layer.forward(x), layer.backward(ones)))
    layer.free_workspaces()
    m = torch.nn.LSTM(H, H).cuda().half()
    xt = torch.randn(T, B, H, device="cuda", dtype=torch.half, requires_grad=True)

    def tr():
        y, _ = m(xt)
        y.float().sum().backward()

    print(f"== cuDNN fp16 {B}x{H} T={T} train")
    table(tr)

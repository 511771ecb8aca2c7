"""Where a small forward's time goes (the probe behind benchmarks/results/probes/gpu_time_small_h200.txt):
vanilla, fp32, T = 100, one layer, B {1, 16, 64} x H {16, 32, 64, 128, 256}, lstmdsl (`auto`) and cuDNN,
each timed three ways: with CUDA events around the call as the benchmarks time it (ev), as GPU time alone
(queued: the call issued behind a 3 ms spin kernel) and the host's time to issue it; then torch.profiler's
kernel table of lstmdsl's forward at B = 1, H = 32 and B = 16, H = 64. Needs a GPU, CuPy and torch.

    python3 benchmarks/gpu_time_probe.py
"""
import statistics
import sys
import time

import cupy
import torch
sys.path.insert(0, '.')
import lstmdsl
from lstmdsl import api
from lstmdsl.bench import _cudnn
from lstmdsl.timing import spin

def measure(fn, repeat=15):
    for _ in range(3): fn()
    cupy.cuda.Device().synchronize()
    ev, q, host = [], [], []
    for _ in range(repeat):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record(); t0 = time.perf_counter(); fn(); host.append(1e3*(time.perf_counter()-t0)); e.record(); e.synchronize()
        ev.append(cupy.cuda.get_elapsed_time(s, e))
        spin(3.0)
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record(); fn(); e.record(); e.synchronize()
        q.append(cupy.cuda.get_elapsed_time(s, e))  # (s is reached once the spin ends)
    return statistics.median(ev), statistics.median(q), statistics.median(host)

spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()['vanilla'].read_text())
print(f"{'B':>3} {'H':>4} | lstmdsl ev  queued  host | cudnn ev queued host  (ms, T=100 forward)")
for B in (1, 16, 64):
    for H in (16, 32, 64, 128, 256):
        layer = api.compile(spec, H, H, 1, backend='cuda', schedule='precision fp32', seed=0)
        x = torch.randn(100, B, H, device='cuda'); xc = cupy.from_dlpack(x)
        a = measure(lambda: layer.forward(xc, train=False))
        lstm = _cudnn(layer, H, 1)
        with torch.no_grad():
            c = measure(lambda: lstm(x))
        print(f"{B:3d} {H:4d} | {a[0]:.3f} {a[1]:.3f} {a[2]:.3f} | {c[0]:.3f} {c[1]:.3f} {c[2]:.3f}", flush=True)
        layer.free_workspaces()

from torch.profiler import profile, ProfilerActivity
for B, H in ((1, 32), (16, 64)):
    layer = api.compile(spec, H, H, 1, backend='cuda', schedule='precision fp32', seed=0)
    x = torch.randn(100, B, H, device='cuda'); xc = cupy.from_dlpack(x)
    for _ in range(3): layer.forward(xc, train=False)
    cupy.cuda.Device().synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5): layer.forward(xc, train=False)
        cupy.cuda.Device().synchronize()
    print(f"B={B} H={H}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))

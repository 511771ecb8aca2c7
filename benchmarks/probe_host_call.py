"""Probe: where a forward call's time goes beyond its GPU work (issue 14's by-the-call gap). For the vanilla
LSTM (one layer, I = H, T = 100, train=False, the schedule `auto` chooses), in ms a call:
  by call     CUDA events around the call, as the benchmarks time it (time_gpu)
  gpu         the call's GPU work alone, queued behind a spin kernel (time_gpu_only)
  graph       the captured CUDA graph's replay alone, by the call (events around graphLaunch)
  host        the host's time to issue the call (perf_counter)
  to launch   the host's time from the call's start to the graph's launch (the GPU meanwhile runs only the
              copy of x in and the zeroing of the states)
  raw         the same device work issued straight from CuPy (copy x in, zero the states, the graph, copy the
              states and y out), by the call: what the call's structure costs without lstmdsl's Python
  h0 given    by the call, with initial states passed (copied in instead of zeroed)

    python3 benchmarks/probe_host_call.py [--steps 100] [SPEC:PRECISION:BxH ...]
"""
import argparse
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, ".")
import cupy  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.runtime import device  # noqa: E402
from lstmdsl.timing import time_gpu, time_gpu_only  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("cases", nargs="*", default=["vanilla:fp32:1x512", "vanilla:fp32:1x64", "vanilla:fp32:64x512",
                                             "vanilla:fp16:16x256"])
args = ap.parse_args()
launches = []
_launch = device.Graph.launch


def recording_launch(self, stream):
    launches.append((time.perf_counter(), self, stream))
    _launch(self, stream)


device.Graph.launch = recording_launch
print(f"T={args.steps}, ms a call\ncase                   | by call | gpu   | graph | host  | to launch | raw   | h0 given")
for case in args.cases:
    name, precision, shape = case.split(":")
    B, H = map(int, shape.split("x"))
    spec = lstmdsl.parse(lstmdsl.resources.shipped_specs()[name].read_text())
    layer = lstmdsl.compile(spec, input_size=H, hidden_size=H, backend="cuda", schedule=f"precision {precision}")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((args.steps, B, H)), layer.dtype)
    fn = lambda: layer.forward(x, train=False)  # noqa: E731
    call = time_gpu(fn, 50)
    gpu = time_gpu_only(fn, 50)["gpu_ms"]
    starts = []
    for _ in range(50):
        launches.clear()
        t0 = time.perf_counter()
        fn()
        starts.append(1e3 * (launches[0][0] - t0) if launches else float("nan"))
        cupy.cuda.Device().synchronize()
    graph, stream = (launches[0][1], launches[0][2]) if launches else (None, None)
    g = time_gpu(lambda: _launch(graph, stream), 50)["ms"] if graph is not None else float("nan")
    # the same device work straight from CuPy: the workspace's regions are the engine's; copy x into a scratch
    # array of its size instead (same bytes), zero two state-sized regions, replay, copy three outputs
    xs, hs = cupy.empty_like(x), [cupy.empty((B, H), layer.dtype) for _ in range(2)]
    rt = cupy.cuda.runtime

    def raw():
        rt.memcpyAsync(xs.data.ptr, x.data.ptr, x.nbytes, 3, stream)
        for h in hs:
            rt.memsetAsync(h.data.ptr, 0, h.nbytes, stream)
        _launch(graph, stream)
        y = cupy.empty_like(x)
        outs = [cupy.empty_like(h) for h in hs]
        for o, h in zip(outs, hs):
            rt.memcpyAsync(o.data.ptr, h.data.ptr, h.nbytes, 3, stream)
        rt.memcpyAsync(y.data.ptr, xs.data.ptr, x.nbytes, 3, stream)
    r = time_gpu(raw, 50)["ms"] if graph is not None else float("nan")
    state = {n: cupy.zeros(s, layer.dtype) for n, s in layer.state_shapes(B).items()}
    h0 = time_gpu(lambda: layer.forward(x, state, train=False), 50)["ms"]
    print(f"{case:22} | {call['ms']:7.3f} | {gpu:5.3f} | {g:5.3f} | {call['host_ms']:5.3f} | "
          f"{statistics.median(starts):9.3f} | {r:5.3f} | {h0:7.3f}", flush=True)

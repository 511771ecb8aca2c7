"""CudaLayer.profile: where one forward and one training step spend their time (its docstring says how), kept
apart from the layer's calls."""

from __future__ import annotations

import time

from ..arrays import to_io
from .device import cupy


def profile(layer, x, repeat: int = 5) -> dict:
    """CudaLayer.profile(x, repeat) of `layer`."""
    from ..timing import spin, time_gpu

    y, _ = layer.forward(x)
    ones = to_io(cupy.ones(y.shape, cupy.float32), y.dtype)  # (the gradient of sum(y) in y's type: bfloat16 bits too)
    graphs = {"forward": time_gpu(lambda: layer.forward(x, train=False), repeat),
              "train": time_gpu(lambda: (layer.forward(x), layer.backward(ones)), repeat)}
    saved = layer.use_graphs
    # op by op, one stream (the engines of the calls timed above: not overlap_directions, whose engines are others)
    layer.use_graphs, layer._one_stream = False, True
    engines = list(layer._engines.values())
    try:
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        layer.forward(x)
        layer.backward(ones)
        issue_ms = 1e3 * (time.perf_counter() - t0)  # the host's time to issue the un-graphed run
        cupy.cuda.Device().synchronize()
        engines = list(layer._engines.values())  # every unit's engine, both directions included
        for e in engines:
            e.parts = {}
        held_ms = 2 * issue_ms + 5
        for run in (lambda: layer.forward(x), lambda: layer.backward(ones)):  # each held apart: shorter queues
            spin(held_ms)
            run()
            cupy.cuda.Device().synchronize()
        parts, calls = {}, {}
        for engine in engines:
            for kind, events in engine.parts.items():
                parts[kind] = parts.get(kind, 0.0) + sum(cupy.cuda.get_elapsed_time(a, b) for a, b in events)
                calls[kind] = calls.get(kind, 0) + len(events)
    finally:
        for e in engines:
            e.parts = None
        layer.use_graphs, layer._one_stream = saved, False
    layer.zero_grad()
    return {"parts_ms": parts, "parts_calls": calls, "host_issue_ms_without_graphs": issue_ms, "held_ms": held_ms, "graphs": graphs}

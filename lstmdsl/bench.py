"""Benchmarks: lstmdsl against cuDNN and the same cell written in PyTorch, in one process, on one GPU.

Competitors, on the same data and weights:
  lstmdsl   the CUDA backend with the spec's schedule (and the requested precision);
  cudnn     torch.nn.LSTM, for specs whose IR is the vanilla LSTM's (specs/vanilla.cell, specs/np.cell);
  eager     the cell as a PyTorch module, the way a user writes it: the products of the input for all
            steps as one GEMM first, then a Python loop evaluating the step's equations with torch
            operations (built from the spec's IR, so every spec has one);
  compile   the same module with its step function under torch.compile (default mode).
Every competitor's output is checked against lstmdsl's before it is timed. Times are CUDA-event medians
after two warm-up calls, with the spread (min, max) kept. "train" is forward plus the backward of
sum(y) with respect to the input and all weights. Memory: torch's max_memory_allocated over one call
for the torch competitors; for lstmdsl, the bytes CuPy's memory pool holds after the calls beyond what it
held before the layer was built (its parameters, gradients, workspaces and temporaries still cached: an
upper bound of its peak).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from . import api
from .api import Spec

COMPETITORS = ("lstmdsl", "cudnn", "eager", "compile")


def _torch():
    import torch

    return torch


class EagerCell:
    """The spec's step in PyTorch operations, with the input's products hoisted out of the loop."""

    def __init__(self, spec: Spec, layer: api.Layer, device: str = "cuda"):
        torch = _torch()
        self.cell = spec.cell
        self.sizes = layer.sizes
        by_layer = [{} for _ in layer.sizes]
        for name, a in layer.state_dict().items():
            k, pname = name.split(".", 1)
            by_layer[int(k[1:])][pname] = torch.tensor(a, device=device, requires_grad=True)
        self.params = by_layer
        self.input_products = [i for i, n in enumerate(self.cell.nodes)
                               if n.op == "matvec" and self.cell.nodes[n.args[0]].op == "input"]

    def parameters(self):
        return [t for p in self.params for t in p.values()]

    def step(self, p: dict, hoisted: dict, x_t, state: dict):
        """One step: (output, new state) from this step's hoisted input products and the state."""
        torch = _torch()
        v = {}
        for i, n in enumerate(self.cell.nodes):
            op = n.op
            if op == "input":
                v[i] = x_t
            elif op == "state":
                v[i] = state[n.attr]
            elif op == "param":
                v[i] = p[n.attr]
            elif op == "const":
                v[i] = n.attr
            elif op == "matvec":
                v[i] = hoisted[i] if i in hoisted else v[n.args[0]] @ p[n.attr].T
            elif op == "identity":
                v[i] = v[n.args[0]]
            elif op == "hard_sigmoid":
                v[i] = torch.nn.functional.hardsigmoid(v[n.args[0]])
            elif op in ("sigmoid", "tanh", "relu", "exp", "log", "neg"):
                v[i] = getattr(torch, op)(v[n.args[0]])
            else:
                a, b = (v[k] for k in n.args)
                v[i] = a + b if op == "add" else a - b if op == "sub" else a * b if op == "mul" else a / b
        return v[self.cell.output], {s.name: v[u] for s, u in zip(self.cell.states, self.cell.updates)}

    def forward(self, x, step=None):
        torch = _torch()
        step = step or self.step
        T, B, _ = x.shape
        h = x
        for p, sizes in zip(self.params, self.sizes):
            flat = h.reshape(T * B, -1)
            hoisted = {i: (flat @ p[self.cell.nodes[i].attr].T).reshape(T, B, -1) for i in self.input_products}
            state = {s.name: h.new_zeros(B, sizes[s.size]) for s in self.cell.states}
            ys = []
            for t in range(T):
                y, state = step(p, {i: a[t] for i, a in hoisted.items()}, h[t], state)
                ys.append(y)
            h = torch.stack(ys)
        return h


def vanilla_equivalent(spec: Spec) -> bool:
    """True when the spec's IR is the vanilla LSTM's (so cuDNN can run it)."""
    return dataclasses.replace(spec.cell, name="vanilla") == api.parse("vanilla").cell


def _cudnn(layer: api.Layer, H: int, L: int):
    """torch.nn.LSTM with lstmdsl's vanilla weights (gate order i, f, z, o = torch's i, f, g, o)."""
    torch = _torch()
    lstm = torch.nn.LSTM(layer.input_size, H, L).cuda()
    s = layer.state_dict()
    with torch.no_grad():
        for k in range(L):
            cat = lambda m: torch.tensor(np.concatenate([s[f"l{k}.{m}_{g}"] for g in "ifzo"])).cuda()  # noqa: E731
            getattr(lstm, f"weight_ih_l{k}").copy_(cat("W"))
            getattr(lstm, f"weight_hh_l{k}").copy_(cat("R"))
            getattr(lstm, f"bias_ih_l{k}").copy_(cat("b"))
            getattr(lstm, f"bias_hh_l{k}").zero_()
    return lstm


def time_gpu(fn, repeat: int = 20, warmup: int = 2) -> dict:
    """Time fn on the GPU: CUDA events on the current stream around each call, after warm-up calls.
    Returns the median, min and max milliseconds and the median host time to issue the call."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times, host = [], []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append(1e3 * (time.perf_counter() - t0))
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return {"ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "host_ms": statistics.median(host)}


def _torch_peak(fn) -> int:
    torch = _torch()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def bench_case(spec: Spec, batch: int, hidden: int, steps: int, layers: int = 1, mode: str = "forward",
               precision: str = "fp32", repeat: int = 10, competitors=COMPETITORS, schedule: str | None = None,
               log=None) -> dict:
    """Time one shape for every competitor that applies; returns a row (times in ms, memory in bytes)."""
    torch = _torch()
    import cupy

    import gc

    gc.collect()
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    extra = {"proj_size": hidden // 2} if spec.uses_size("proj") else {}
    text = f"{schedule + '; ' if schedule else ''}precision {precision}"
    layer = api.compile(spec, hidden, hidden, layers, backend="cuda", schedule=text, seed=0, **extra)
    x = torch.randn(steps, batch, hidden, device="cuda")
    xc = cupy.from_dlpack(x)
    # the check runs in the mode's own workspace, so the memory counted below is what the mode needs
    y_ref = torch.from_dlpack(layer.forward(xc, train=mode == "train")[0]).clone()
    tol = 1e-4 if precision == "fp32" else 2e-2
    row = {"spec": spec.name, "batch": batch, "hidden": hidden, "steps": steps, "layers": layers, "mode": mode,
           "precision": precision, "results": {}, "checks": {}}

    def check(name, y):
        err = float((y.detach().double() - y_ref.double()).norm() / y_ref.double().norm())
        row["checks"][name] = err
        if not err <= tol:
            raise AssertionError(f"{name} disagrees with lstmdsl on {spec.name} (relative error {err:.1e})")

    ones = cupy.ones(y_ref.shape, np.float32)
    if "lstmdsl" in competitors:
        fn = (lambda: layer.forward(xc, train=False)) if mode == "forward" else \
            (lambda: (layer.forward(xc), layer.backward(ones)))
        row["results"]["lstmdsl"] = time_gpu(fn, repeat) | {"memory": int(pool.total_bytes() - base)}
    xg = x.clone().requires_grad_(True)
    runners = {}
    if "cudnn" in competitors and vanilla_equivalent(spec):
        lstm = _cudnn(layer, hidden, layers)
        runners["cudnn"] = lambda inp: lstm(inp)[0]
    if "eager" in competitors or "compile" in competitors:
        eager = EagerCell(spec, layer)
        if "eager" in competitors:
            runners["eager"] = eager.forward
        if "compile" in competitors:
            compiled_step = torch.compile(eager.step)
            runners["compile"] = lambda inp: eager.forward(inp, compiled_step)
    for name, run in runners.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            check(name, run(x))
        first = time.perf_counter() - t0
        if mode == "forward":
            def fn(run=run):
                with torch.no_grad():
                    run(x)
        else:
            def fn(run=run):
                run(xg).sum().backward()
        slow = name in ("eager", "compile") and steps * layers >= 1000
        row["results"][name] = time_gpu(fn, max(3, repeat // 3) if slow else repeat) | {
            "memory": _torch_peak(fn), "first_call_s": first}
        if log is not None:
            print(f"  {name}: {row['results'][name]['ms']:.2f} ms", file=log, flush=True)
    return row

"""Half parameters' weight gradients written in half (Plan.grad_type, build_program(half_params=True)) through the
emulated CUDA runtime: the same layer twice in bf16 and fp16 (same seed, so the same half weights), once as lstmdsl
runs mixed precision (float32 gradients) and once with its programs built for half parameters and its weight
stacks' gradients in half arrays; each weight gradient must be the float32 one rounded once (the GEMM's sum stored
in half), the vector gradients and dx identical. Prints one line per case; exits 1 if any is wrong."""

import functools
import os
import sys

import numpy as np
import simrt  # sets up the fake CuPy and the emulation
import cupy  # noqa: E402 - the fake one

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lstmdsl  # noqa: E402
from lstmdsl.program import build_program  # noqa: E402
from lstmdsl.runtime import layer as runtime_layer  # noqa: E402
from lstmdsl.runtime.workspace import NUMPY_TYPES  # noqa: E402

failures = 0
for name, L, schedule in [("vanilla", 1, "precision bf16"), ("gru", 2, "precision fp16"),
                          ("lstmp", 1, "precision bf16; persistent"), ("slstm", 1, "precision fp16"),
                          ("peephole", 2, "precision bf16; wavefront"),
                          ("fgr", 1, "precision bf16; no fuse gates; no hoist input")]:  # (a GEMM per gate: offsets)
    spec = lstmdsl.parse(name)
    P = {"proj": 3} if spec.uses_size("proj") else {}
    T, B, I, H = 5, 3, 6, 6
    x = cupy.asarray(np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32))
    dy = None
    runs = []
    for half_params in (False, True):
        built = functools.partial(build_program, half_params=half_params)
        runtime_layer.build_program, saved = built, runtime_layer.build_program
        try:
            layer = lstmdsl.compile(spec, I, H, L, backend="cuda", schedule=schedule, seed=3,
                                    **({"proj_size": 3} if P else {}))
            plan = layer.program.plan
            if half_params:  # the weight stacks' gradients in half arrays, bound in place of the float32 ones
                assert plan.grad_type in ("bf16", "f16"), plan.grad_type
                half = NUMPY_TYPES[plan.grad_type]
                layer._grad_stacks = [{n: cupy.zeros(a.shape, half) for n, a in g.items()} for g in layer._grad_stacks]
                # (stacks stored head by head: the layer API adds their gradients back in order on the host side, in
                # numpy's float16 arithmetic here, hence fp16 for the sLSTM: bf16 arrays are bits to numpy)
                layer._ordered_grad = [{n: cupy.zeros(a.shape, half) for n, a in g.items()}
                                       for g in layer._ordered_grad]
                layer._bindings = [layer._binding(u) for u in range(len(layer.units))]
            y, _ = layer.forward(x)
            if dy is None:
                dy = cupy.asarray(np.random.default_rng(2).standard_normal(y.shape).astype(np.float32))
            dx = layer.backward(dy)
            stacks = [{n: simrt.to_float(a.get(), plan.grad_type or "f32") for n, a in g.items()}
                      for g in layer._grad_stacks]
            vectors = [{n: g[n].get() for n in g if n not in {m for s in plan.storage.stacks for m in s.matrices}}
                       for g in layer._grads]
            runs.append((dx.get(), stacks, vectors, plan.grad_type))
        finally:
            runtime_layer.build_program = saved
    (dx0, st0, ve0, _), (dx1, st1, ve1, gt) = runs
    bad = []
    if not np.array_equal(dx0, dx1):
        bad.append("dx")
    for u, (a, b) in enumerate(zip(st0, st1)):
        for n in a:
            want = simrt.to_float(simrt.from_float(a[n], gt), gt) if gt == "bf16" else a[n].astype(np.float16)
            if not np.array_equal(np.asarray(want, np.float32), np.asarray(b[n], np.float32)):
                bad.append(f"unit {u} d{n}: largest difference {float(np.abs(b[n] - a[n]).max()):.1e}")
    for u, (a, b) in enumerate(zip(ve0, ve1)):
        bad += [f"unit {u} d{n}" for n in a if not np.array_equal(a[n], b[n])]
    failures += bool(bad)
    print(f"{name} L={L} {schedule} | weight gradients in {gt} | {'OK' if not bad else f'BAD {bad}'}", flush=True)
sys.exit(1 if failures else 0)

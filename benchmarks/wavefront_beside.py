"""The backward's parameter gradients beside the layers below (Wavefront.beside): a 4-layer vanilla training
step with them on the side stream and without (beside = ()), twice each, ms (medians of 7 CUDA-event
timings); the gradients of both runs are compared. Prints one line per shape
(benchmarks/results/wavefront_h200.md has the H200 run):

    python3 benchmarks/wavefront_beside.py fp32 256,512,100 256,1024,100   # PRECISION B,H,T ...
"""
import dataclasses, sys
import cupy, numpy as np
import lstmdsl
from lstmdsl.timing import time_gpu

prec = sys.argv[1]
for shape in sys.argv[2:]:
    B, H, T = map(int, shape.split(","))
    x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)), np.float32)
    ones = cupy.ones((T, B, H), np.float32)
    out, ref = [], None
    for label in ("without", "beside", "without", "beside"):
        layer = lstmdsl.compile("vanilla", H, H, 4, backend="cuda", schedule=f"precision {prec}", seed=1)
        e = layer._engine(False)
        if label == "without":
            e.program = dataclasses.replace(e.program, plan=dataclasses.replace(
                e.program.plan, wavefront=dataclasses.replace(e.program.plan.wavefront, beside=())))
        layer.forward(x)
        dx = cupy.asnumpy(layer.backward(ones))
        g = np.concatenate([cupy.asnumpy(v).ravel() for v in layer.grads().values()])
        ref = (dx, g) if ref is None else ref
        err = max(np.abs(dx - ref[0]).max() / (np.abs(ref[0]).max() + 1e-30), np.abs(g - ref[1]).max() / (np.abs(ref[1]).max() + 1e-30))
        t = time_gpu(lambda: (layer.forward(x), layer.backward(ones)), 7)["ms"]
        out.append(f"{label} {t:.2f}" + ("" if err < 1e-3 else f" ERR {err:.1e}"))
        layer.free_workspaces()
    print(f"{prec} train B{B} H{H} T{T} L4: " + " | ".join(out), flush=True)

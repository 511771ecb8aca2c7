"""The layer wavefront's sweep (plan.Wavefront): 4-layer vanilla stacks, lstmdsl with the layers one after the
other ("off": `no wavefront`, where `persistent auto` may choose the persistent kernel per layer) and as a
wavefront of 8, 16 and 32 chunks, and as the default schedule chooses ("auto"); forward (train=False) and a
training step, ms (medians of 7 and 5 CUDA-event timings); w[...]: the steps per chunk each stack ran.
Prints one line per shape (benchmarks/results/wavefront_h200.md has the H200 run):

    python3 benchmarks/wavefront_chunks.py fp32 1,256,100 16,512,100 64,512,1000   # PRECISION B,H,T ...
"""
import dataclasses, sys
import cupy, numpy as np
import lstmdsl
from lstmdsl.plan import Wavefront
from lstmdsl.timing import time_gpu

prec = sys.argv[1]
for shape in sys.argv[2:]:
    B, H, T = map(int, shape.split(","))
    out = []
    x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)), np.float32)
    ref = None
    for label, sched, chunks in [("off", "no wavefront", None), ("c8", "wavefront", 8), ("c16", "wavefront", 16),
                                 ("c32", "wavefront", 32), ("auto", None, None)]:
        layer = lstmdsl.compile("vanilla", H, H, 4, backend="cuda", schedule=f"precision {prec}" + (f"; {sched}" if sched else ""))
        e = layer._engine(False)
        if chunks:
            e.program = dataclasses.replace(e.program, plan=dataclasses.replace(e.program.plan, wavefront=Wavefront(chunks, True)))
        y, _ = layer.forward(x, train=False)
        y = cupy.asnumpy(y)
        if ref is None:
            ref = y
        err = np.abs(y - ref).max()
        ones = cupy.ones((T, B, H), np.float32)
        f = time_gpu(lambda: layer.forward(x, train=False), 7)["ms"]
        t = time_gpu(lambda: (layer.forward(x), layer.backward(ones)), 5)["ms"]
        waves = [w[0].wave for w in e.workspaces.values()]
        out.append(f"{label} {f:.2f}/{t:.2f}" + ("" if err < 1e-3 else f" ERR {err:.1e}") + f" w{waves}")
        layer.free_workspaces()
    print(f"{prec} B{B} H{H} T{T}: " + " | ".join(out), flush=True)

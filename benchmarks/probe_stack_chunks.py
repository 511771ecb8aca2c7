"""Probe: 4-layer stacks that run as a layer wavefront (their GEMMs over each chunk's rows), vanilla LSTM and LSTMP
with its projection folded and unfolded, fp32, I = H (LSTMP: proj = H / 2), T = 100: forward (train=False, medians
of 20 CUDA-event timings) and a training step (forward and backward, 10), ms. Run from two trees to compare them
(each with a kernel cache of its own):

    python3 benchmarks/probe_stack_chunks.py TAG            # e.g. from a `git archive` of the tree before, TAG old
"""
import os
import sys

sys.path.insert(0, os.getcwd())
import cupy  # noqa: E402
import numpy as np  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.timing import time_gpu  # noqa: E402

tag = sys.argv[1] if len(sys.argv) > 1 else "tree"
CASES = [("lstmp", s, B, H) for B, H in ((1, 256), (1, 512), (16, 512), (64, 256))
         for s in ("fold projection", "no fold projection")]
CASES += [("vanilla", "", B, H) for B, H in ((1, 256), (16, 512), (64, 512), (64, 256))]
for name, schedule, B, H in CASES:
    x = cupy.asarray(np.random.default_rng(0).standard_normal((100, B, H)), np.float32)
    layer = lstmdsl.compile(lstmdsl.parse(name), H, H, 4, proj_size=H // 2 if name == "lstmp" else None,
                            backend="cuda", seed=0, schedule=f"{schedule}; precision fp32".lstrip("; "))
    layer.forward(x, train=False)
    fwd = time_gpu(lambda: layer.forward(x, train=False), 20)["ms"]
    train = time_gpu(lambda: layer.backward(layer.forward(x)[0] * 0 + 1), 10)["ms"]
    print(f"{tag} {name} {schedule or 'default':18s} L=4 B={B:2d} H={H}: forward {fwd:.3f} train {train:.3f}",
          flush=True)

"""A/B of source trees through the torch module: the vanilla LSTM's forward and training step as GPU time
alone (timing.time_gpu_only), microseconds a step, T = 1000, one layer, fp32 (tf32 off), the schedule `auto`
chooses. Run once per tree, alternating, and compare the lines:

    PYTHONPATH=TREE python3 benchmarks/ab_torch_module.py LABEL 1x16 1x32 16x256 ...   (BxH)

A tree is a folder holding the lstmdsl package (`git archive REV lstmdsl grammars templates specs | tar -x
-C TREE`). Needs a GPU, CuPy and torch. (benchmarks/ab_small.py runs the trees itself, through the layer API
at T = 100.)
"""
import sys

import torch

import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu_only

torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
T = 1000
for shape in sys.argv[2:]:
    B, H = map(int, shape.split("x"))
    torch.manual_seed(0)
    m = lt.from_torch(torch.nn.LSTM(H, H).cuda())
    x = torch.randn(T, B, H, device="cuda", requires_grad=True)

    def fwd():
        with torch.no_grad():
            m(x)

    def train():
        y, _ = m(x)
        y.sum().backward()
    f = time_gpu_only(fwd, 10, 2)["gpu_ms"]
    t = time_gpu_only(train, 10, 2)["gpu_ms"]
    print(f"{sys.argv[1]:6s} B={B:3d} H={H:4d}: fwd {1e3 * f / T:6.3f} train {1e3 * t / T:6.3f} us/step", flush=True)

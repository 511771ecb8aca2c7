"""What the torch module costs over the layer API: forward and training step of one vanilla LSTM layer
through lstmdsl.compile(..., backend="cuda") (CuPy arrays), through lstmdsl.torch.LSTM (eager), and
through torch.compile of the module, at B=1, H=512, T=100 by default, in one process; also cuDNN.

    python3 benchmarks/torch_overhead.py [--batch 1] [--hidden 512] [--steps 100] [--json out.json]

Medians of CUDA-event timings after warm-up (lstmdsl.timing.time_gpu), with the host's time to issue a call.
"""

from __future__ import annotations

import argparse
import json

import cupy
import numpy as np
import torch

import lstmdsl
import lstmdsl.torch as lt
from lstmdsl.timing import time_gpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()
    B, H, T = args.batch, args.hidden, args.steps
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    layer = lstmdsl.compile("vanilla", H, H, backend="cuda")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32))
    ones = cupy.ones((T, B, H), np.float32)
    rows = {"layer API": (lambda: layer.forward(x, train=False), lambda: (layer.forward(x), layer.backward(ones)))}
    module = lt.LSTM(H, H).cuda()
    xt = torch.randn(T, B, H, device="cuda", requires_grad=True)
    compiled = torch.compile(module)
    cudnn = torch.nn.LSTM(H, H).cuda()

    def runs(m):
        def fwd():
            with torch.no_grad():
                m(xt)

        def train():  # (each call's gradients anew, as after zero_grad())
            m.zero_grad(set_to_none=True)
            xt.grad = None
            y, _ = m(xt)
            y.backward(torch.ones_like(y))
        return fwd, train, m
    rows["torch module"] = runs(module)
    rows["torch.compile(module)"] = runs(compiled)
    rows["cuDNN (torch.nn.LSTM)"] = runs(cudnn)
    out = {}
    for name, (fwd, train, *m) in rows.items():
        for mm in m:  # (forward in eval mode: cuDNN's training mode runs its training kernels, under no_grad too)
            mm.eval()
        f = time_gpu(fwd, args.repeat, 5)
        for mm in m:
            mm.train()
        t = time_gpu(train, args.repeat, 5)
        out[name] = {"forward_ms": f["ms"], "forward_host_ms": f["host_ms"], "train_ms": t["ms"],
                     "train_host_ms": t["host_ms"]}
    base = out["layer API"]
    print(f"B={B} H={H} T={T}, strict fp32; ms (median of {args.repeat}), ratio to the layer API, host ms to issue")
    print(f"  {'':<24} {'forward':>9} {'ratio':>6} {'host':>7} {'train':>9} {'ratio':>6} {'host':>7}")
    for name, r in out.items():
        print(f"  {name:<24} {r['forward_ms']:>9.3f} {r['forward_ms'] / base['forward_ms']:>6.2f} "
              f"{r['forward_host_ms']:>7.3f} {r['train_ms']:>9.3f} {r['train_ms'] / base['train_ms']:>6.2f} "
              f"{r['train_host_ms']:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": {"batch": B, "hidden": H, "steps": T}, "gpu": torch.cuda.get_device_name(),
                       "torch": torch.__version__, "rows": out}, f, indent=2)


if __name__ == "__main__":
    main()

"""lstmdsl against cuDNN and eager PyTorch, one layer, in one process on the same data.

    python3 benchmarks/speed.py [--batch 64] [--hidden 512] [--steps 100] [--repeat 20] [--tf32]

For the vanilla and peephole specs: lstmdsl (CUDA backend, default schedule), cuDNN's torch.nn.LSTM
(vanilla only) and the cell written as a PyTorch module the way a user would (input GEMM hoisted, a
per-step GEMM and pointwise ops). "forward" is inference (no gradients); "train" is forward plus the
backward of sum(y) with respect to the inputs and all weights. Each result is checked before it is
timed: lstmdsl's vanilla against cuDNN with the same weights, its peephole against the eager module.
Timing: CUDA events around the call, 3 warm-up calls, median of --repeat; the host time is the
wall-clock time to issue the call. fp32 means TF32 off everywhere (strict IEEE fp32 GEMMs).
Writes benchmarks/results/speed_b{B}_h{H}_t{T}_{precision}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cupy
import numpy as np
import torch

import lstmdsl
from lstmdsl.timing import time_gpu

RESULTS = Path(__file__).resolve().parent / "results"


class EagerCell(torch.nn.Module):
    """The LSTM a user writes in PyTorch: W x hoisted over all steps, then R h and the gates per step."""

    def __init__(self, I: int, H: int, peephole: bool):
        super().__init__()
        k = 1.0 / H ** 0.5
        self.W = torch.nn.Parameter(torch.empty(4 * H, I).uniform_(-k, k))
        self.R = torch.nn.Parameter(torch.empty(4 * H, H).uniform_(-k, k))
        self.b = torch.nn.Parameter(torch.empty(4 * H).uniform_(-k, k))
        self.p = torch.nn.Parameter(torch.empty(3, H).uniform_(-k, k)) if peephole else None

    def forward(self, x):
        T, B, _ = x.shape
        H = self.R.shape[1]
        gx = (x.reshape(T * B, -1) @ self.W.T + self.b).reshape(T, B, 4 * H)
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        ys = []
        for t in range(T):
            gi, gf, gz, go = (gx[t] + h @ self.R.T).chunk(4, dim=1)
            if self.p is not None:
                gi, gf = gi + self.p[0] * c, gf + self.p[1] * c
            i, f, z = torch.sigmoid(gi), torch.sigmoid(gf), torch.tanh(gz)
            c = f * c + i * z
            o = torch.sigmoid(go + self.p[2] * c if self.p is not None else go)
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def load_ours_into(layer, W, R, b, p=None):
    """Copy PyTorch's stacked [4H, .] weights (gate order i, f, z, o) into an lstmdsl layer."""
    params = layer.parameters()
    H = R.shape[1]
    for k, gate in enumerate("ifzo"):
        params[f"l0.W_{gate}"][...] = cupy.from_dlpack(W[k * H:(k + 1) * H].detach().contiguous())
        params[f"l0.R_{gate}"][...] = cupy.from_dlpack(R[k * H:(k + 1) * H].detach().contiguous())
        params[f"l0.b_{gate}"][...] = cupy.from_dlpack(b[k * H:(k + 1) * H].detach().contiguous())
    if p is not None:
        for k, gate in enumerate("ifo"):
            params[f"l0.p_{gate}"][...] = cupy.from_dlpack(p[k].detach().contiguous())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores (default: strict fp32)")
    args = ap.parse_args()
    B, H, T = args.batch, args.hidden, args.steps
    I = H
    precision = "tf32" if args.tf32 else "fp32"
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(0)
    x = torch.randn(T, B, I, device="cuda")
    x_ours = cupy.from_dlpack(x)
    rows = []

    # cuDNN, vanilla
    lstm = torch.nn.LSTM(I, H).cuda()
    with torch.no_grad():
        lstm.bias_hh_l0.zero_()  # one bias per gate, as in the spec

    def cudnn_fwd():
        with torch.no_grad():
            return lstm(x)[0]

    xg = x.clone().requires_grad_(True)

    def cudnn_train():  # (each call's gradients anew, as after zero_grad())
        lstm.zero_grad(set_to_none=True)
        xg.grad = None
        y, _ = lstm(xg)
        y.sum().backward()

    for name in ("vanilla", "peephole"):
        layer = lstmdsl.compile(name, input_size=I, hidden_size=H, backend="cuda",
                                schedule=f"precision {precision}")
        eager = EagerCell(I, H, peephole=name == "peephole").cuda()
        if name == "vanilla":
            load_ours_into(layer, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0)
            check = rel(cupy.asnumpy(layer.forward(x_ours, train=False)[0]), cudnn_fwd().cpu())
            against = "cuDNN"
        else:
            load_ours_into(layer, eager.W, eager.R, eager.b, eager.p)
            with torch.no_grad():
                check = rel(cupy.asnumpy(layer.forward(x_ours, train=False)[0]), eager(x).cpu())
            against = "eager PyTorch"
        ones = cupy.ones((T, B, H), np.float32)

        def ours_fwd():
            layer.forward(x_ours, train=False)

        def ours_train():
            layer.forward(x_ours)
            layer.backward(ones)

        def eager_fwd():
            with torch.no_grad():
                eager(x)

        def eager_train():  # (each call's gradients anew, as after zero_grad())
            eager.zero_grad(set_to_none=True)
            xg.grad = None
            eager(xg).sum().backward()

        results = {"spec": name, "check": {"against": against, "max_rel_error_y": check}}
        for mode, ours, theirs in (("forward", ours_fwd, eager_fwd), ("train", ours_train, eager_train)):
            t = time_gpu(ours, args.repeat, warmup=3)
            ms, host = t["ms"], t["host_ms"]
            e_ms = time_gpu(theirs, max(3, args.repeat // 4), warmup=3)["ms"]
            results[mode] = {"lstmdsl_ms": ms, "lstmdsl_host_ms": host, "eager_ms": e_ms}
        rows.append(results)
        print(f"{name}: check against {against} {check:.1e}; " + "; ".join(
            f"{m} ours {results[m]['lstmdsl_ms']:.2f} ms (host {results[m]['lstmdsl_host_ms']:.2f} ms), "
            f"eager {results[m]['eager_ms']:.2f} ms" for m in ("forward", "train")), flush=True)
    # (cuDNN's forward in eval mode: in training mode it runs its training kernels, under no_grad too; until
    # 2026-12-04 this script timed that)
    lstm.eval()
    cudnn = {"forward": time_gpu(cudnn_fwd, args.repeat, warmup=3)["ms"]}
    lstm.train()
    cudnn["train"] = time_gpu(cudnn_train, args.repeat, warmup=3)["ms"]
    print(f"cuDNN vanilla: forward {cudnn['forward']:.2f} ms, train {cudnn['train']:.2f} ms")

    props = cupy.cuda.runtime.getDeviceProperties(0)
    meta = {"gpu": props["name"].decode(), "driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__, "lstmdsl": lstmdsl.__version__,
            "python": platform.python_version(), "precision": precision, "batch": B, "hidden": H, "input": I,
            "steps": T, "layers": 1, "repeat": args.repeat, "statistic": "median of CUDA-event timings"}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"speed_b{B}_h{H}_t{T}_{precision}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "cudnn_vanilla": cudnn, "rows": rows},
                                                    indent=2) + "\n")
    lines = [f"# lstmdsl vs cuDNN and eager PyTorch: B = {B}, I = H = {H}, T = {T}, one layer, {precision}", "",
             f"`python3 benchmarks/speed.py --batch {B} --hidden {H} --steps {T}"
             f"{' --tf32' if args.tf32 else ''}` on {meta['gpu']}, torch {meta['torch']}, cuDNN {meta['cudnn']}, "
             f"CuPy {meta['cupy']}; median of {args.repeat} CUDA-event timings, milliseconds.", "",
             "| spec | mode | lstmdsl | host time to issue | cuDNN vanilla | lstmdsl / cuDNN vanilla | "
             "eager PyTorch | eager / lstmdsl |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in ("forward", "train"):
            d = r[m]
            lines.append(f"| {r['spec']} | {m} | {d['lstmdsl_ms']:.2f} | {d['lstmdsl_host_ms']:.2f} | "
                         f"{cudnn[m]:.2f} | {d['lstmdsl_ms'] / cudnn[m]:.2f}x | {d['eager_ms']:.2f} | "
                         f"{d['eager_ms'] / d['lstmdsl_ms']:.1f}x |")
    lines += ["", "Checks before timing (relative error of y): " + "; ".join(
        f"{r['spec']} vs {r['check']['against']} {r['check']['max_rel_error_y']:.1e}" for r in rows)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

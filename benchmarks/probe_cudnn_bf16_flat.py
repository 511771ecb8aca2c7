"""Probe: how much of cuDNN's bf16 LSTM time in PyTorch is the weight copy of every call? torch's
RNNBase.flatten_parameters skips bf16 weights (torch.backends.cudnn.CUDNN_TENSOR_DTYPES has float16, float32 and
float64 only), so an nn.LSTM in bf16 warns "RNN module weights are not part of single contiguous chunk of memory"
and cuDNN copies them into one buffer at every call. This times nn.LSTM in bf16 as PyTorch runs it, the same
module with its weights flattened by hand (torch._cudnn_rnn_flatten_weight, as flatten_parameters calls it), and
fp16 for scale: ms a call by CUDA events around 20 back-to-back calls after 3 warm-up calls (the host's time to
issue them included), --layers layers (default one), I = H. The flattening is lstmdsl.bench.flatten_bf16, which the
benchmarks' cuDNN competitor uses in bf16; the probe checks that the weights then share one buffer.

    python3 benchmarks/probe_cudnn_bf16_flat.py [--steps 100] [--layers 1] [BxH ...]
"""
import argparse
import sys
import warnings

import torch

sys.path.insert(0, ".")
from lstmdsl.bench import flatten_bf16  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--layers", type=int, default=1)
ap.add_argument("shapes", nargs="*", default=["16x256", "64x512", "256x1024"])
args = ap.parse_args()
warnings.simplefilter("ignore")


def time_ms(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / n


print(f"T={args.steps} layers={args.layers}; ms a call\n"
      "mode     B    H | bf16 as torch | bf16 flattened | flat/torch | fp16")
for mode in ("forward", "train"):
    for B, H in (tuple(map(int, s.split("x"))) for s in args.shapes):
        out = {}
        for name, dtype, flat in (("torch", torch.bfloat16, False), ("flat", torch.bfloat16, True),
                                  ("fp16", torch.float16, False)):
            torch.manual_seed(0)
            m = torch.nn.LSTM(H, H, args.layers).cuda().to(dtype)
            if flat:
                assert flatten_bf16(m), "this torch has no torch._cudnn_rnn_flatten_weight"
                assert len({w.untyped_storage().data_ptr() for w in m._flat_weights}) == 1, "not one buffer"
            x = torch.randn(args.steps, B, H, device="cuda", dtype=dtype, requires_grad=mode == "train")
            if mode == "forward":
                with torch.no_grad():
                    out[name] = time_ms(lambda: m(x))
                    y = m(x)[0]
            else:
                out[name] = time_ms(lambda: m(x)[0].sum().backward())
                y = m(x)[0]
            if name == "torch":
                ref = y.float()
            elif name == "flat":
                assert torch.allclose(y.float(), ref, atol=1e-2), "flattened bf16 disagrees with torch's bf16"
        ratio = out["flat"] / out["torch"]
        print(f"{mode:8} {B:3d} {H:4d} | {out['torch']:13.3f} | {out['flat']:14.3f} | {ratio:9.2f}x | "
              f"{out['fp16']:.3f}", flush=True)

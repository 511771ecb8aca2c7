"""Probe (issue 12: a batch of sequences of different lengths no slower than the padded run): the layer API's
`lengths` against the same padded batch without them, a 2-layer bidirectional vanilla LSTM, I = H, T = 100,
lengths uniform in [T/2, T] (one of them T), strict fp32 (or --tf32). The torch module's packed batch pays torch's
packing and the unpacking into the padded layout besides (benchmarks/bidirectional.py); the API takes the padded
batch and the lengths as they are, so this is the mask's own cost. ms by the call (CUDA events, median) and GPU
time alone (lstmdsl.timing.time_gpu_only). GPU only.

    python3 benchmarks/probe_api_lengths.py [--tf32] [--shapes 16x256 64x512]
"""
import argparse
import sys

sys.path.insert(0, ".")
import cupy  # noqa: E402
import numpy as np  # noqa: E402

import lstmdsl  # noqa: E402
from lstmdsl.timing import time_gpu, time_gpu_only  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=["16x256", "64x256", "16x512", "64x512"], help="BxH")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    T, rng = 100, np.random.default_rng(0)
    print(f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, {'tf32' if args.tf32 else 'strict fp32'}, "
          f"2-layer bidirectional vanilla, T = {T}: ms by the call / GPU ms; lengths / padded")
    for shape in args.shapes:
        B, H = map(int, shape.split("x"))
        layer = lstmdsl.compile("vanilla", H, H, 2, backend="cuda", bidirectional=True,
                                schedule="precision tf32" if args.tf32 else None)
        x = cupy.asarray(rng.standard_normal((T, B, H)), np.float32)
        lengths = rng.integers(T // 2, T + 1, B)
        lengths[0] = T
        dy = cupy.asarray(np.ones((T, B, 2 * H), np.float32))
        row = {}
        for name, kw in (("padded", {}), ("lengths", {"lengths": lengths})):
            calls = {"forward": lambda kw=kw: layer.forward(x, train=False, **kw),
                     "train": lambda kw=kw: (layer.forward(x, **kw), layer.backward(dy))}
            for mode, fn in calls.items():
                row[name, mode] = (time_gpu(fn, args.repeat, 3)["ms"], time_gpu_only(fn, args.repeat, 3)["gpu_ms"])
        print(f"B={B:3d} H={H:4d} | " + " | ".join(
            f"{mode} padded {row['padded', mode][0]:.3f}/{row['padded', mode][1]:.3f} lengths "
            f"{row['lengths', mode][0]:.3f}/{row['lengths', mode][1]:.3f} = "
            f"{row['lengths', mode][0] / row['padded', mode][0]:.2f}x/{row['lengths', mode][1] / row['padded', mode][1]:.2f}x"
            for mode in ("forward", "train")), flush=True)


if __name__ == "__main__":
    main()

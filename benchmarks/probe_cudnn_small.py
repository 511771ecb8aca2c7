"""cuDNN's vanilla LSTM (torch.nn.LSTM, one layer, T = 100) at the small shapes of the trials' A/B
(benchmarks/trial_check.sh), fp32 and tf32: a forward without grad and a training step, ms by CUDA events, the
median of 20 after 5 warm-up calls. Needs a GPU and torch.

    python3 benchmarks/probe_cudnn_small.py [--shapes 1x512 16x512 ...]   (BxH)
"""
import argparse
import statistics
import sys

import torch


def median_ms(fn) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1x512", "16x512", "64x256", "64x512"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("probe_cudnn_small.py: needs a GPU with CUDA (torch.cuda.is_available() is false here)")
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for shape in args.shapes:
            B, H = (int(v) for v in shape.split("x"))
            lstm = torch.nn.LSTM(H, H).cuda()
            x = torch.randn(100, B, H, device="cuda", requires_grad=True)

            def forward():
                with torch.no_grad():
                    lstm(x)

            def train():
                y, _ = lstm(x)
                y.backward(torch.ones_like(y))

            print(f"cuDNN {'tf32' if tf32 else 'fp32'} {B}x{H}: forward {median_ms(forward):.3f} ms, "
                  f"training {median_ms(train):.3f} ms")


if __name__ == "__main__":
    main()

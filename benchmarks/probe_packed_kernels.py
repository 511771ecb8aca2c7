"""Which GPU kernels make a pre-packed forward of the torch module slower than the padded one (issue 12: a packed
batch no slower than the padded one; the mask is only 3-5% of a persistent step, probes/mask_step_clock_h100.txt):
torch.profiler's CUDA kernels of 10 no-grad forwards, padded and pre-packed side by side, per forward, the
largest difference first. 2-layer bidirectional vanilla LSTM, I = H, T = 100, strict fp32, lengths uniform in
[T/2, T] (one of them T), lstmdsl.torch.from_torch(cuDNN's). GPU only.

    python3 benchmarks/probe_packed_kernels.py [--tf32] [--timeline] [--lengths]

--lengths: the module's lengths= on the padded batch (no packing) in place of the pre-packed batch in the kernel
table (the first line times all three: by the call and GPU time alone).
--timeline: also one forward's kernels in order of their start at B = 16 (start and end in us from the first
kernel's start, the stream), padded and pre-packed: which kernels overlap which.
"""
import argparse
from collections import defaultdict

import torch

from bidirectional import packed_case
from lstmdsl.timing import time_gpu, time_gpu_only

CALLS = 10


def profiled(ours, inp, calls: int, **kw):
    """torch.profiler's CUDA activity of `calls` no-grad forwards, after three more."""
    with torch.no_grad():
        for _ in range(3):
            ours(inp, **kw)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                ours(inp, **kw)
            torch.cuda.synchronize()
    return prof


def kernels(ours, inp, **kw) -> dict:
    """{kernel name: (microseconds per forward, launches per forward)} of CALLS no-grad forwards."""
    prof = profiled(ours, inp, CALLS, **kw)
    out = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name][0] += e.time_range.elapsed_us() / CALLS
            out[e.name][1] += 1 / CALLS
    return dict(out)


def timeline(ours, inp) -> None:
    """One no-grad forward's GPU work in order of its start: start, end (us from the first start), stream, name."""
    prof = profiled(ours, inp, 1)
    events = sorted((e.start_ns(), e.duration_ns(), e.device_resource_id(), e.name())
                    for e in prof.profiler.kineto_results.events() if e.device_type() == torch.autograd.DeviceType.CUDA)
    t0 = events[0][0]
    for start, dur, stream, name in events:
        print(f"{(start - t0) / 1e3:9.1f} {(start + dur - t0) / 1e3:9.1f}  s{stream:<4} {name[:80]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--lengths", action="store_true",
                    help="lengths= on the padded batch in the kernel table, for the pre-packed batch")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    for B, H, T in ((16, 256, 100), (64, 512, 100)):
        _, ours, x, lengths, pre = packed_case(B, H, T, 2, args.tf32)
        ours.eval()
        gpu, call = {}, {}
        for name, inp, kw in (("padded", x, {}), ("pre-packed", pre, {}), ("lengths=", x, {"lengths": lengths})):
            def fwd(inp=inp, kw=kw):
                with torch.no_grad():
                    ours(inp, **kw)
            gpu[name] = time_gpu_only(fwd, 20, 3)["gpu_ms"]
            call[name] = time_gpu(fwd, 20, 3)["ms"]
        print(f"\n{'tf32' if args.tf32 else 'fp32'} B={B} H={H} T={T}: ms by the call / GPU-only ms: " + ", ".join(
            f"{n} {call[n]:.3f}/{gpu[n]:.3f}" for n in gpu))
        other = "lengths=" if args.lengths else "pre-packed"
        pk = kernels(ours, x, lengths=lengths) if args.lengths else kernels(ours, pre)
        pad = kernels(ours, x)
        print(f"\n{'tf32' if args.tf32 else 'fp32'} B={B} H={H} T={T}: GPU-only ms padded {gpu['padded']:.3f}, "
              f"{other} {gpu[other]:.3f} ({gpu[other] / gpu['padded']:.3f}x); kernel us summed "
              f"padded {sum(v[0] for v in pad.values()):.1f}, {other} {sum(v[0] for v in pk.values()):.1f}")
        print(f"{'us padded':>10} {'n':>4} {'us ' + other.rstrip('='):>10} {'n':>4} {'diff':>8}  kernel")
        names = sorted(set(pad) | set(pk), key=lambda k: -abs(pk.get(k, (0, 0))[0] - pad.get(k, (0, 0))[0]))
        for k in names:
            a, b = pad.get(k, (0.0, 0)), pk.get(k, (0.0, 0))
            print(f"{a[0]:10.1f} {a[1]:4.0f} {b[0]:10.1f} {b[1]:4.0f} {b[0] - a[0]:8.1f}  {k[:90]}")
        if args.timeline and B == 16:
            for name, inp in (("padded", x), ("pre-packed", pre)):
                print(f"\none {name} forward's GPU work (us):")
                timeline(ours, inp)


if __name__ == "__main__":
    main()

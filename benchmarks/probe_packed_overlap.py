"""Why the torch module's packed batch stays about 1.3x its padded one at B = 16, H = 256 with its two directions side
by side (the side stream), and why the two gain less from it by the call than in GPU time (first asked when
bidirectional_fp32_h200.md of 2026-12-04 had the packed forward slower side by side, 2.47 ms, than serial, 2.18):
each of padded, packed (torch's packing included) and pre-packed, with the directions issued together (pair.py, the
module's own), apart (each direction's whole op in turn on two streams, as before pair.py) and one after the other
on one stream (serial), timed three ways (the event time a caller sees, the GPU's time alone, the host's time to
issue the call), then for padded and pre-packed calls the host's Python time by function (cProfile) and, with
--traces, torch.profiler's chrome trace of one call. 2-layer bidirectional vanilla LSTM, I = H, T = 100, strict
fp32, lengths uniform in [T/2, T] (one of them T), lstmdsl.torch.from_torch(cuDNN's). GPU only.

    python3 benchmarks/probe_packed_overlap.py [--shape B H] [--train] [--traces DIR]
"""
import argparse
import cProfile
import os
import pstats

import torch

from bidirectional import packed_case
from lstmdsl.timing import time_gpu, time_gpu_only
from probe_packed_host import host_ms


def _apart(x, units, train):
    """A layer's two directions as the module issued them before pair.py (2026-12-07): the forward direction's
    whole op on the current stream, then the reverse direction's whole op on the side stream."""
    from lstmdsl.torch import ops, pair

    main, side = pair._fork(x)
    (h0, params, steps, handle), (h0_r, params_r, steps_r, handle_r) = units
    first = ops.forward(x, h0, params, handle, train, steps)
    with torch.cuda.stream(side):
        second = ops.forward(x, h0_r, params_r, handle_r, train, steps_r)
    pair._join(main, side, [x, *h0_r, *params_r, *steps_r], second)
    return [first, second]


def _directions(module, how: str) -> None:
    """together (pair.py, the module's own), apart (_apart) or serial (overlap_directions off)."""
    from lstmdsl.torch import modules, pair

    module.overlap_directions = how != "serial"
    modules.run_pair = _apart if how == "apart" else pair.run_pair


def _counted(fn) -> tuple[int, int]:
    """(the runtime's CUDA-graph captures, torch's cudaMalloc calls) over 10 calls of fn."""
    from lstmdsl.runtime import device

    init, n = device.Graph.__init__, [0]

    def counting(self, *a, **k):
        n[0] += 1
        init(self, *a, **k)
    device.Graph.__init__ = counting
    before = torch.cuda.memory_stats().get("num_device_alloc", 0)
    try:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    finally:
        device.Graph.__init__ = init
    return n[0], torch.cuda.memory_stats().get("num_device_alloc", 0) - before


def timeline(fn, trace: str | None) -> None:
    """One call's torch.profiler trace (host and GPU) written to `trace` (a chrome trace, read with
    scratch-side tools or chrome://tracing), and the host's Python time of 10 calls by function (cProfile)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if trace:
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            fn()
            torch.cuda.synchronize()
        prof.export_chrome_trace(trace)
    captures, allocs = _counted(fn)
    print(f"  over 10 calls: {captures} CUDA-graph captures by the runtime, {allocs} cudaMalloc by torch's allocator")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(16, 256), metavar=("B", "H"))
    ap.add_argument("--train", action="store_true", help="the training step's timeline too")
    ap.add_argument("--traces", help="a folder for the chrome traces of one call each")
    args = ap.parse_args()
    B, H = args.shape
    T = 100
    if args.traces:
        os.makedirs(args.traces, exist_ok=True)
    _, ours, x, lengths, pre = packed_case(B, H, T, 2, False)
    calls = {}
    for batch in ("padded", "packed", "pre-packed"):
        def inputs(batch=batch):
            if batch == "padded":
                return x
            if batch == "pre-packed":
                return pre
            return torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)

        for how in ("together", "apart", "serial"):
            def fwd(inputs=inputs, how=how):
                _directions(ours, how)
                with torch.no_grad():
                    ours(inputs())

            def train(inputs=inputs, how=how):
                _directions(ours, how)
                ours.zero_grad(set_to_none=True)
                x.grad = pre.data.grad = None
                y, _ = ours(inputs())
                (y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y).sum().backward()
            ours.eval()
            f = (time_gpu(fwd, 20, 3)["ms"], time_gpu_only(fwd, 20, 3)["gpu_ms"], host_ms(fwd))
            ours.train()
            t = (time_gpu(train, 20, 3)["ms"], time_gpu_only(train, 20, 3)["gpu_ms"], host_ms(train))
            name = f"{batch} {how}"
            calls[name] = (fwd, train)
            print(f"B={B} H={H} {name:22s} fwd event {f[0]:.3f} gpu {f[1]:.3f} host {f[2]:.3f} | "
                  f"train event {t[0]:.3f} gpu {t[1]:.3f} host {t[2]:.3f}", flush=True)
    _directions(ours, "together")
    for name in ("padded together", "pre-packed together", "pre-packed apart"):
        for mode, fn in zip(("forward", "train"), calls[name]):
            if mode == "train" and not args.train:
                continue
            ours.train(mode == "train")
            print(f"\none {name} {mode} call: host Python time of 10 calls", flush=True)
            trace = os.path.join(args.traces, f"{name.replace(' ', '_')}_{mode}.json") if args.traces else None
            timeline(fn, trace)


if __name__ == "__main__":
    main()

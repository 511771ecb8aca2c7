"""The persistent schedule's floor: an empty persistent loop, T steps of nothing but the grid-wide barrier
the persistent kernels use (templates/pointwise.cu.j2, grid_barrier), launched cooperatively as they are,
at several grid sizes. What is left of a persistent step's time above this is arithmetic and memory.

    python3 benchmarks/persistent_floor.py [--steps 1000] [--json out.json]

It also checks that a cooperative launch can be captured in a CUDA graph and replayed (the executor
captures every phase).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOOR = r'''
extern "C" __global__ void lstmdsl_barrier_floor(unsigned int* bar, const int T, float* sink)
{
    float acc = 0.f;
    unsigned int target = 0;
    for (int t = 0; t < T; ++t) {
        acc += bar[1];
        grid_barrier(bar, target += gridDim.x);
    }
    if (acc == -1.f) sink[0] = acc;  // never: keeps the loop
}
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args()
    import cupy

    from lstmdsl.codegen import _template
    from lstmdsl.runtime import device
    from lstmdsl.runtime.nvrtc import function, load_module

    helpers = _template().render(cell="floor", schedule="", real="float", kernels=[], add=None, halves=False)
    fn = function(load_module(helpers + FLOOR), "lstmdsl_barrier_floor")
    sms, _ = device.on_chip()
    per_sm = device.co_resident(fn, args.threads, 0)
    bar = cupy.zeros(2, cupy.uint32)
    sink = cupy.zeros(1, cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    rows = []
    for blocks in sorted({1, 2, 4, 8, 16, 32, 66, sms, min(2 * sms, sms * per_sm)}):
        launch = [("ptr", bar.data.ptr), ("int", args.steps), ("ptr", sink.data.ptr)]

        def issue(s, blocks=blocks, launch=launch):
            device.zero(bar.data.ptr, 4, s)  # the barrier's count starts at zero, as the executor does
            device.launch_cooperative(fn, blocks, args.threads, 0, launch, s)

        issue(stream.ptr)
        graph = device.Graph(issue, stream.ptr)  # the executor captures cooperative launches too
        times = []
        for _ in range(7):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            graph.launch(stream.ptr)
            end.record(stream)
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) * 1e3 / args.steps)
        assert int(bar[0].get()) == (blocks * args.steps if blocks > 1 else 0), "every block arrives at every barrier"
        us = sorted(times)[len(times) // 2]
        rows.append({"blocks": blocks, "threads": args.threads, "us_per_step": round(us, 3)})
        print(f"{blocks:5d} blocks x {args.threads} threads: {us:.3f} us per barrier")
    out = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "steps": args.steps, "rows": rows,
           "multiprocessors": sms}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

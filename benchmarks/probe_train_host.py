"""Where a stack's training step spends the host's time in the torch module (issue 12's bidirectional stacks:
probes/packed_host_h100.txt found 2.4-3.9 ms of host time a step, and 5.2-6.8 ms at tf32, 64 x 512, where the
step is host-bound). For each case, medians of the timed steps, ms:
  - whether a step synchronises the host (torch.cuda.set_sync_debug_mode("warn"): torch's synchronising calls);
  - the host's time to issue the forward, y.sum() and backward(), and to the end of the GPU's work;
  - the runtime's own share: Eager.forward and Eager.backward (one call a (layer, direction) unit), summed a step;
  - torch.profiler's host-side ops of 10 steps, the longest first.
The vanilla LSTM, I = H, T = 100, lstmdsl.torch.from_torch of a seeded torch.nn.LSTM, on a padded batch.

    python3 benchmarks/probe_train_host.py                      # tf32 64 x 512 and fp32 16 x 256, 2 layers, both ways
    python3 benchmarks/probe_train_host.py --cases fp32:1x512 --layers 1 --unidirectional --steps 20

Needs a GPU, CuPy and torch (--device cpu runs the same on the numpy reference: a check of the script only)."""
import argparse
import statistics
import time
import warnings

import torch

import lstmdsl.torch as lt
from lstmdsl.torch import ops


def case(text: str) -> tuple[str, int, int]:
    precision, shape = text.split(":")
    B, H = shape.split("x")
    return precision, int(B), int(H)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", type=case, default=[case("tf32:64x512"), case("fp32:16x256")],
                    help="precision:BxH, precision fp32 or tf32 (default tf32:64x512 fp32:16x256)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--unidirectional", action="store_true", help="one direction (default: bidirectional)")
    ap.add_argument("-T", "--time-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps a case (default 30)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    spent = {"forward": 0.0, "backward": 0.0}
    f0, b0 = ops.Eager.forward, ops.Eager.backward

    def timed(name, fn):
        def wrapper(ctx, *a):
            t = time.perf_counter()
            try:
                return fn(ctx, *a)
            finally:
                spent[name] += time.perf_counter() - t
        return staticmethod(wrapper)

    ops.Eager.forward, ops.Eager.backward = timed("forward", f0), timed("backward", b0)
    for precision, B, H in args.cases:
        tf32 = precision == "tf32"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.manual_seed(0)
        ref = torch.nn.LSTM(H, H, args.layers, bidirectional=not args.unidirectional).to(args.device)
        ours = lt.from_torch(ref, schedule="precision tf32" if tf32 else None)
        x = torch.randn(args.time_steps, B, H, device=args.device, requires_grad=True)
        phases = {k: [] for k in ("forward", "y.sum()", "backward()", "to the GPU's end", "Eager.forward",
                                  "Eager.backward")}
        for i in range(args.steps + 3):
            ours.zero_grad(set_to_none=True)
            x.grad = None
            sync()
            spent.update(forward=0.0, backward=0.0)
            t0 = time.perf_counter()
            y, _ = ours(x)
            t1 = time.perf_counter()
            loss = y.sum()
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            sync()
            t4 = time.perf_counter()
            if i >= 3:  # (the first steps allocate, compile and capture)
                for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t0, spent["forward"], spent["backward"])):
                    phases[k].append(1e3 * v)
        label = f"{precision} {B}x{H} L={args.layers} {'uni' if args.unidirectional else 'bi'}directional"
        print(f"== {label}: host ms, medians of {args.steps} steps: " +
              ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in phases.items()), flush=True)
        if cuda:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    y, _ = ours(x)
                    y.sum().backward()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            sync()
            print(f"   synchronising calls in a step: {len(caught)}", flush=True)
            for w in caught[:8]:
                print(f"     {w.filename}:{w.lineno}: {str(w.message)[:240]}", flush=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(10):
                ours.zero_grad(set_to_none=True)
                y, _ = ours(x)
                y.sum().backward()
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)


if __name__ == "__main__":
    main()

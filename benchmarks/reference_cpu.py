"""Time and peak memory of the numpy reference, forward and forward+backward, for every shipped spec.

    python3 benchmarks/reference_cpu.py [--hidden 128] [--batch 16] [--steps 100] [--repeat 3]

Writes benchmarks/out/reference_cpu.json and .md (benchmarks/results/, the committed ones, with
--update-results). The reference is the semantics, not a fast path:
these figures say how long a check on the CPU takes, and are the baseline the GPU backend is compared to.
Peak memory is the largest amount numpy allocated during the run (tracemalloc), not the process size.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

import lstmdsl
from lstmdsl.files import write_json, write_text
from lstmdsl.resources import shipped_specs

HERE = Path(__file__).resolve().parent


def measure(fn, repeat: int) -> tuple[float, float]:
    """(median seconds over `repeat` runs after one warm-up, peak MiB allocated in one more run).

    Memory is traced in a separate run: tracemalloc slows numpy down severalfold.
    """
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--update-results", action="store_true",
                    help="write into benchmarks/results (the committed results) instead of benchmarks/out")
    args = ap.parse_args()
    H, B, T = args.hidden, args.batch, args.steps
    rows = []
    for name in shipped_specs():
        extra = {"proj_size": H // 2} if lstmdsl.parse(name).uses_size("proj") else {}
        layer = lstmdsl.compile(name, input_size=H, hidden_size=H, **extra)
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        fwd, fwd_mem = measure(lambda: layer.forward(x, train=False), args.repeat)

        def train():
            y, _ = layer.forward(x)
            layer.backward(np.ones_like(y))
        trn, trn_mem = measure(train, args.repeat)
        rows.append({"spec": name, "forward_ms": 1e3 * fwd, "train_ms": 1e3 * trn,
                     "forward_peak_mib": fwd_mem, "train_peak_mib": trn_mem})
        print(f"{name:<9} forward {1e3 * fwd:8.1f} ms  train {1e3 * trn:8.1f} ms  "
              f"peak {fwd_mem:6.1f} / {trn_mem:6.1f} MiB", flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "python": platform.python_version(), "numpy": np.__version__, "lstmdsl": lstmdsl.__version__,
            "dtype": "float32", "input": H, "hidden": H, "batch": B, "steps": T, "layers": 1,
            "repeat": args.repeat, "statistic": "median after one warm-up"}
    results = HERE / ("results" if args.update_results else "out")
    write_json(results / "reference_cpu.json", {"meta": meta, "rows": rows})
    lines = [f"# numpy reference on the CPU: I = H = {H}, B = {B}, T = {T}, one layer, float32",
             "", f"`python3 benchmarks/reference_cpu.py --hidden {H} --batch {B} --steps {T}`; "
             f"numpy {np.__version__}, Python {meta['python']}, {meta['machine']}; median of {args.repeat}.", "",
             "| spec | forward (ms) | forward + backward (ms) | peak memory forward (MiB) | peak memory training (MiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['spec']} | {r['forward_ms']:.1f} | {r['train_ms']:.1f} | {r['forward_peak_mib']:.1f} | "
              f"{r['train_peak_mib']:.1f} |" for r in rows]
    write_text(results / "reference_cpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

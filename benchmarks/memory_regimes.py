"""Training memory and time in half precision, five ways, one vanilla layer (or --layers), in one process (issue 13's
memory target): cuDNN as the grids run it (`nn.LSTM(...).to(bf16)`: half weights and gradients, no float32 master
weights), lstmdsl's torch module the same way (`lstmdsl.torch.LSTM(...).to(bf16)`: half weights and gradients, the
weight stacks' written half by the GEMMs), cuDNN as mixed-precision users run it (a float32 nn.LSTM under
`torch.autocast`: float32 master weights and gradients, the half weights cast per call), lstmdsl's layer API
(float32 master weights; float32 arrays in and out, as this script gives them) and lstmdsl's torch module under
`torch.autocast` (float32 master weights; half x, y, dy and dx).

    python3 benchmarks/memory_regimes.py [--precision bf16] [--shapes 1x1024x100 256x1024x1000 ...] [--json out.json]
    python3 benchmarks/memory_regimes.py --grid --layers 4 --ways half   # the grids' 24 shapes, the two half modules
    python3 benchmarks/memory_regimes.py --render out.json      # its markdown table again, no GPU

Committed: benchmarks/results/regimes_bf16_h200.json (not named memory_*: benchmarks/report.py reads those as
benchmarks/run.py's memory section).

Memory: the peak over one training call (forward and backward of sum(y)) made after two first calls, less what was
held before the competitor was built (its weights, gradients and workspaces counted, lstmdsl's half copy of x in
its workspace among them; the input x not): torch's max_memory_allocated, and for lstmdsl the peak of CuPy's pool
in use (lstmdsl.bench.peak_in_use); for lstmdsl's torch module, whose backward runs on autograd's thread where
CuPy's hooks do not look, its torch peak plus what CuPy's pool holds after the calls beyond what it held before (an
upper bound). The timings include every competitor's gradients made anew; the half module's own half input is
counted for it, as the grids count it.
Times: medians of CUDA-event timings (lstmdsl.timing.time_gpu), gradients made anew each call.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time

from tables import finish, output_options, render

SHAPES = ["1x1024x100", "16x1024x1000", "64x512x1000", "256x512x100", "256x1024x1000"]  # B x H x T, I = H
GRID = [f"{b}x{h}x{t}" for b in (1, 16, 64, 256) for h in (256, 512, 1024) for t in (100, 1000)]  # the grids' shapes
WAYS = {"half": ("cuDNN half module", "lstmdsl torch half module")}  # --ways: a subset of NAMES (below)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="B x H x T (input size H)")
    ap.add_argument("--grid", action="store_true", help="the grids' 24 shapes (B 1-256, H 256-1024, T 100, 1000)")
    ap.add_argument("--layers", type=int, default=1, help="layers of the stack (I = H in each)")
    ap.add_argument("--ways", choices=("all", *WAYS), default="all",
                    help="half: only the two half-precision modules (cuDNN's and lstmdsl's)")
    ap.add_argument("--repeat", type=int, default=5)
    output_options(ap)
    args = ap.parse_args()
    shapes = GRID if args.grid else args.shapes
    ways = WAYS.get(args.ways, NAMES)
    if args.render:
        render(args.render, markdown)
        return
    import cupy
    import torch

    import lstmdsl
    import lstmdsl.torch as lt
    from lstmdsl.bench import _warm_torch_blas, flatten_bf16, peak_in_use
    from lstmdsl.timing import time_gpu

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    _warm_torch_blas(torch, args.precision)
    pool = cupy.get_default_memory_pool()
    rows = []
    L = args.layers
    for shape in shapes:
        B, H, T = (int(v) for v in shape.split("x"))
        x = torch.randn(T, B, H, device="cuda")
        row = {"batch": B, "hidden": H, "steps": T, "results": {}}

        def measure(name, build, call, cupy_too=False, own=0):
            """Measures way `name` (unless --ways leaves it out). cupy_too: "hook" (CuPy's peak in use: work on this
            thread only) or "pool" (what the pool holds after the calls beyond what it held before: an upper bound,
            for work on other threads too); own: bytes of the competitor's own input, made before it (counted)."""
            if name not in ways:
                return
            gc.collect()
            torch.cuda.empty_cache()
            pool.free_all_blocks()
            held, hook, pool_base = torch.cuda.memory_allocated(), peak_in_use(cupy), pool.used_bytes()
            try:
                with hook:
                    run = build()
                    call(run)
                    call(run)
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    hook.peak = hook.in_use
                    call(run)
                    torch.cuda.synchronize()
                memory = (torch.cuda.max_memory_allocated() - held + own
                          + {"hook": hook.peak, "pool": pool.total_bytes() - pool_base}.get(cupy_too, 0))
                row["results"][name] = time_gpu(lambda: call(run), args.repeat) | {"memory": int(memory)}
            except (torch.cuda.OutOfMemoryError, cupy.cuda.memory.OutOfMemoryError):
                row["results"][name] = {"error": "out of memory"}
            print(f"{shape} {name}: {row['results'][name]}", flush=True)

        def torch_train(inp, autocast):
            def call(run):
                for p in run.parameters():
                    p.grad = None
                inp.grad = None
                with torch.autocast("cuda", dtype=half, enabled=autocast):
                    y = run(inp)[0]
                y.sum().backward()
            return call

        def cudnn_half():
            m = torch.nn.LSTM(H, H, L).cuda().to(half)
            if half is torch.bfloat16:
                flatten_bf16(m)
            return m

        xh = x.to(half).requires_grad_(True)  # (the pure-half module's input: its own, counted, as the grids count it)
        measure("cuDNN half module", cudnn_half, torch_train(xh, False), own=xh.nbytes)
        measure("lstmdsl torch half module", lambda: lt.LSTM(H, H, L).cuda().to(half), torch_train(xh, False),
                cupy_too="pool", own=xh.nbytes)
        del xh
        xf = x.clone().requires_grad_(True)
        measure("cuDNN under autocast", lambda: torch.nn.LSTM(H, H, L).cuda(), torch_train(xf, True))
        measure("lstmdsl torch module under autocast", lambda: lt.LSTM(H, H, L).cuda(), torch_train(xf, True),
                cupy_too="pool")  # (its backward runs on autograd's thread, where CuPy's hooks do not look)
        del xf
        xc = cupy.from_dlpack(x)
        ones = None

        def layer():
            nonlocal ones
            ones = cupy.ones((T, B, H), cupy.float32)  # (the output gradient: lstmdsl's layer API takes float32)
            return lstmdsl.compile("vanilla", H, H, L, backend="cuda", schedule=f"precision {args.precision}")

        measure("lstmdsl layer API", layer, lambda lay: (lay.forward(xc), lay.backward(ones)), cupy_too="hook")
        ones = None
        rows.append(row)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "cupy": cupy.__version__, "lstmdsl": lstmdsl.__version__, "python": platform.python_version(),
              "precision": args.precision, "layers": L, "ways": list(ways), "repeat": args.repeat,
              "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python3", "benchmarks/memory_regimes.py", *sys.argv[1:]]), "rows": rows}
    finish(result, args, markdown)


NAMES = ("cuDNN half module", "lstmdsl torch half module", "cuDNN under autocast", "lstmdsl layer API",
         "lstmdsl torch module under autocast")


def markdown(result: dict) -> str:
    names = result.get("ways") or [n for n in NAMES if any(n in r["results"] for r in result["rows"])]
    L = result.get("layers", 1)
    pair = all(n in names for n in WAYS["half"])  # (then each row's memory ratio of the two half modules too)
    head = (f"Training memory and time, {'one vanilla layer' if L == 1 else f'{L} vanilla layers'}, "
            f"{result['precision']}, on {result['gpu']} (torch "
            f"{result['torch']}, cuDNN {result['cudnn']}, CuPy {result['cupy']}, lstmdsl {result['lstmdsl']}"
            + (f", {result['date']}, `{result['command']}`" if "date" in result else "") + "): peak "
            "MiB of one training call and its median ms (benchmarks/memory_regimes.py says how each is counted).")
    lines = [head, "", "| B | H | T | " + " | ".join(f"{n} MiB | ms" for n in names)
             + (" | lstmdsl / cuDNN half module memory |" if pair else " |"),
             "|---|---|---|" + "---|---|" * len(names) + ("---|" if pair else "")]
    ratios = []
    for r in result["rows"]:
        cells = []
        for n in names:
            v = r["results"].get(n, {})
            cells += [f"{v['memory'] / 2**20:.0f}", f"{v['ms']:.2f}"] if "memory" in v else [v.get("error", "-"), "-"]
        if pair:
            a, b = (r["results"].get(n, {}).get("memory") for n in reversed(WAYS["half"]))
            ratios += [a / b] if a and b else []
            cells.append(f"{a / b:.2f}x" if a and b else "-")
        lines.append(f"| {r['batch']} | {r['hidden']} | {r['steps']} | " + " | ".join(cells) + " |")
    if ratios:
        lines += ["", f"lstmdsl's half module at or below cuDNN's memory at {sum(x <= 1 for x in ratios)} of "
                      f"{len(ratios)} shapes ({min(ratios):.2f}-{max(ratios):.2f}x)."]
    return "\n".join(lines)

if __name__ == "__main__":
    main()

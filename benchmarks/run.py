"""The benchmark suite: every variant against cuDNN, eager PyTorch and torch.compile, the pass ablation,
training memory next to the CPU reference, compile times and profiles. Needs a GPU, CuPy and torch.

    python3 benchmarks/run.py --quick          # a few minutes: the quick grid and everything else
    python3 benchmarks/run.py                  # the full grid: B {1,16,64,256} x H {256,512,1024} x
                                               # T {100,1000} x layers {1,4} for vanilla and peephole,
                                               # forward and train, plus every other variant at
                                               # B=64, H=512, T=100; then everything else
    python3 benchmarks/run.py --tf32           # TF32 tensor cores allowed (default: strict fp32)
    python3 benchmarks/run.py --precision bf16 # bf16 GEMM operands and weights (cuDNN in bf16 too); fp16 alike
    python3 benchmarks/run.py --only grid --steps 1000 --name grid_full_fp32_t1000   # one part of a grid

Each section writes benchmarks/out/<name>.json (benchmarks/results/, the committed results, with
--update-results) (raw rows and the run's GPU, driver, library versions,
precision and measured GEMM rate); benchmarks/report.py turns the JSON into markdown tables, PNG plots
and docs/performance.md (run.py calls it for what it wrote). A grid run in parts is joined with
`python3 benchmarks/report.py merge grid_full_fp32 PART.json...`. What is timed and how memory is
counted is in lstmdsl/bench.py.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:  # (--help and argument errors without them; the run itself says what is missing)
    import cupy
    import torch
except ImportError as e:
    cupy = torch = None
    MISSING = e

import lstmdsl
from lstmdsl.resources import shipped_specs
from lstmdsl.bench import COMPETITORS, bench_case
from lstmdsl.files import write_json
from lstmdsl.timing import time_gpu

import report
from reference_cpu import measure as reference_cpu_measure

RESULTS = Path(__file__).resolve().parent / "out"  # --update-results: benchmarks/results (the committed ones)
ALL_SPECS = tuple(shipped_specs())
SECTIONS = ("grid", "ablation", "memory", "compile", "profile")


def gemm_tflops(precision: str) -> float:
    """The GPU's measured matrix-multiply rate at this precision: an 8192^3 torch.mm, median of 10."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    n = 8192
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    ms = time_gpu(lambda: torch.mm(a, b), repeat=10, warmup=3)["ms"]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def meta(precision: str, rate: bool = True) -> dict:
    """The run's machine, versions and command; rate: also the measured GEMM rate (an 8192^3 product, timed)."""
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode(), "driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__, "numpy": np.__version__,
            "lstmdsl": lstmdsl.__version__, "python": platform.python_version(), "precision": precision,
            **({"gemm_tflops": gemm_tflops(precision)} if rate else {}), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python3", "benchmarks/run.py", *sys.argv[1:]])}


def save(name: str, data: dict) -> None:
    write_json(RESULTS / f"{name}.json", data)
    print(f"wrote {RESULTS / name}.json", file=sys.stderr, flush=True)


def grid(args, partial=None) -> list[dict]:
    """The grid's rows; partial(rows), where given, after each row (run.py saves them: a run cut short keeps them)."""
    if args.quick:
        cases = [(s, b, 512, 100, 1) for s in ("vanilla", "peephole", "gru") for b in (1, 64)]
        cases += [(s, 64, 512, 100, 1) for s in ("cifg", "fgr", "lstmp")]
    else:
        cases = [(s, b, h, t, l) for s in args.specs for b, h, t, l in
                 itertools.product(args.batches, args.hiddens, args.steps, args.layers)]
        cases += [(s, 64, 512, 100, 1) for s in args.variants if s not in args.specs]
    rows = []
    for spec, b, h, t, l in cases:
        for mode in ("forward", "train"):
            print(f"{spec} B={b} H={h} T={t} L={l} {mode}", file=sys.stderr, flush=True)
            # torch.compile joins where its per-step calls stay affordable: T * layers < 1000
            competitors = tuple(c for c in args.competitors if not (c == "compile" and t * l >= 1000))
            rows.append(bench_case(lstmdsl.parse(spec), b, h, t, l, mode, args.precision, args.repeat,
                                   competitors, log=sys.stderr))
            if partial is not None:
                partial(rows)
    return rows


ABLATION = [("unfused", "no fuse gates; no hoist input; no fuse pointwise; no batch weights"),
            ("+ gate fusion", "fuse gates; no hoist input; no fuse pointwise; no batch weights"),
            ("+ input hoisting", "fuse gates; hoist input; no fuse pointwise; no batch weights"),
            ("+ pointwise fusion", "fuse gates; hoist input; fuse pointwise; no batch weights"),
            ("+ batched weight gradients", "fuse gates; hoist input; fuse pointwise; batch weights")]


def ablation(args) -> dict:
    spec = lstmdsl.parse("peephole")
    rows = []
    for label, text in ABLATION:
        row = {"stage": label, "schedule": text}
        for mode in ("forward", "train"):
            r = bench_case(spec, 64, 512, 100, 1, mode, args.precision, args.repeat, ("lstmdsl",), schedule=text)
            row[mode] = r["results"]["lstmdsl"]["ms"]
        rows.append(row)
        print(f"ablation {label}: {row['forward']:.2f} / {row['train']:.2f} ms", file=sys.stderr, flush=True)
    return {"shape": {"spec": "peephole", "batch": 64, "hidden": 512, "steps": 100, "layers": 1}, "rows": rows}


MEMORY_MODELS = {"small": (16, 128, 100, 1), "large": (64, 1024, 100, 4)}  # B, I = H, T, layers


def reference_cpu(spec: str, B: int, H: int, T: int, L: int, repeat: int = 3) -> dict:
    """The numpy reference's training step (forward + backward) on this machine's CPU: median time after
    one warm-up, and the peak bytes numpy allocated (tracemalloc, in one more run)."""
    layer = lstmdsl.compile(spec, input_size=H, hidden_size=H, num_layers=L, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)

    def train():
        y, _ = layer.forward(x)
        layer.backward(np.ones_like(y))
    seconds, peak_mib = reference_cpu_measure(train, repeat)
    return {"ms": 1e3 * seconds, "memory": int(peak_mib * 2**20), "repeat": repeat}


def memory(args) -> dict:
    """Training time and peak memory of each competitor (--competitors), for a small and a large model."""
    rows = []
    for model, (B, H, T, L) in MEMORY_MODELS.items():
        for spec in ("vanilla", "peephole"):
            r = bench_case(lstmdsl.parse(spec), B, H, T, L, "train", args.precision, args.repeat, args.competitors,
                           log=sys.stderr)
            for backend, res in r["results"].items():
                rows.append({"model": model, "spec": spec, "backend": backend} | res)
            print(f"memory {model} {spec}: the reference on the CPU", file=sys.stderr, flush=True)
            rows.append({"model": model, "spec": spec, "backend": "reference (CPU)"} |
                        reference_cpu(spec, B, H, T, L))
    cpu = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    return {"models": {k: dict(zip(("batch", "hidden", "steps", "layers"), v)) for k, v in MEMORY_MODELS.items()},
            "cpu": cpu, "rows": rows}


def compile_times() -> dict:
    """Cold (CuPy's kernel cache and lstmdsl's cache emptied, fresh process) and warm (both filled, fresh
    process) start of every spec, timed inside a subprocess after lstmdsl and CuPy are imported: lstmdsl.compile
    alone (parse, schedule, parameter upload), and from there to the first result, a forward call at T = 1,
    B = 1 (the engine's kernels rendered and built by NVRTC, or loaded from the disk cache, the workspace
    allocated and its GEMMs timed)."""
    code = ("import time, sys, cupy, lstmdsl; cupy.cuda.Device().synchronize(); t=time.perf_counter(); "
            "s=lstmdsl.parse(sys.argv[1]); l=lstmdsl.compile(s, input_size=64, hidden_size=64, backend='cuda', "
            "**({'proj_size': 32} if s.uses_size('proj') else {})); c=time.perf_counter()-t; "
            "l.forward(cupy.zeros((1, 1, 64), dtype=cupy.float32), train=False); cupy.cuda.Device().synchronize(); "
            "print(c, time.perf_counter()-t)")
    # lstmdsl's modules as bytecode first, as an installed package has them: a tree whose .pyc files are not
    # written (a read-only or fresh copy) spent 0.07 s of each warm compile compiling Python source
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(lstmdsl.__file__).parent)], check=False)
    rows = []
    cupy_cache, own_cache = Path("/tmp/lstmdsl-bench-cupy-cache"), Path("/tmp/lstmdsl-bench-cache")
    for spec in ALL_SPECS:
        subprocess.run(["rm", "-rf", str(cupy_cache), str(own_cache)], check=True)
        env = dict(os.environ, CUPY_CACHE_DIR=str(cupy_cache), LSTMDSL_CACHE=str(own_cache))
        run = lambda: [float(v) for v in subprocess.run(  # noqa: E731
            [sys.executable, "-c", code, spec], env=env, capture_output=True, text=True, check=True).stdout.split()[-2:]]
        cold = run()
        warm = sorted(run() for _ in range(3))[1]
        rows.append({"spec": spec, "cold_s": cold[0], "warm_s": warm[0], "cold_first_s": cold[1],
                     "warm_first_s": warm[1]})
        print(f"compile {spec}: cold {cold[0]:.2f} s (first result {cold[1]:.2f} s), warm {warm[0]:.2f} s "
              f"(first result {warm[1]:.2f} s)", file=sys.stderr, flush=True)
    return {"rows": rows}


def profile(args) -> dict:
    """`lstmdsl bench SPEC --profile` at B=64, I=H=512, T=100 for vanilla, peephole and GRU."""
    rows = []
    for spec in ("vanilla", "peephole", "gru"):
        layer = lstmdsl.compile(spec, input_size=512, hidden_size=512, backend="cuda",
                                schedule=f"precision {args.precision}")
        x = cupy.asarray(np.random.default_rng(0).standard_normal((100, 64, 512)), dtype=np.float32)
        rows.append({"spec": spec, "batch": 64, "hidden": 512, "steps": 100} | layer.profile(x, 5))
        print(f"profile {spec}: done", file=sys.stderr, flush=True)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick grid (a few minutes)")
    ap.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default=None,
                    help="lstmdsl's precision and cuDNN's (default strict fp32)")
    ap.add_argument("--repeat", type=int, default=10, help="timed calls per competitor (default 10)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    ap.add_argument("--specs", nargs="+", default=["vanilla", "peephole"], choices=ALL_SPECS,
                    help="the full grid's specs")
    ap.add_argument("--variants", nargs="*", default=list(ALL_SPECS), choices=ALL_SPECS,
                    help="specs also run at B=64, H=512, T=100, one layer (default: all)")
    ap.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=COMPETITORS)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256], help="the full grid's B values")
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024], help="the full grid's H values")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000], help="the full grid's T values")
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 4], help="the full grid's layer counts")
    ap.add_argument("--name", help="the grid's results name (default grid_quick_P or grid_full_P)")
    ap.add_argument("--update-results", action="store_true",
                    help="write into benchmarks/results (the committed results, and docs/performance.md) "
                         "instead of benchmarks/out")
    args = ap.parse_args()
    if cupy is None:
        print(f"benchmarks/run.py needs a GPU with CuPy and torch: {MISSING}", file=sys.stderr)
        sys.exit(69)  # (EX_UNAVAILABLE, as lstmdsl's CLI without a GPU)
    if args.name and not args.name.startswith("grid"):
        ap.error(f"--name {args.name}: a grid's name starts with 'grid' (benchmarks/report.py picks the tables "
                 "and the page's section by that prefix)")
    global RESULTS
    if args.update_results:
        RESULTS = report.COMMITTED
    report.use_results(RESULTS)
    args.precision = args.precision or ("tf32" if args.tf32 else "fp32")
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    t0 = time.perf_counter()
    written = []
    if "grid" in args.only:
        m = meta(args.precision)
        name = args.name or f"grid_{'quick' if args.quick else 'full'}_{args.precision}"
        # (saved after every row with "partial": true, then whole: a run cut short keeps what it measured)
        rows = grid(args, lambda rows: write_json(RESULTS / f"{name}.json", {"meta": m | {"partial": True},
                                                                             "rows": rows}))
        save(name, {"meta": m, "rows": rows})
        written.append(name)
    for section, fn in (("ablation", lambda: ablation(args)), ("memory", lambda: memory(args)),
                        ("compile", compile_times), ("profile", lambda: profile(args))):
        if section in args.only:
            name = ("compile_time" if section == "compile" else section) + suffix
            save(name, {"meta": meta(args.precision)} | fn())
            written.append(name)
    try:
        report.write_outputs(written)
    except Exception as e:  # noqa: BLE001 (the JSON is saved; the report can be made again anywhere)
        print(f"report failed ({type(e).__name__}: {e}); the JSON is saved: run benchmarks/report.py",
              file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

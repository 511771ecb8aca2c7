"""The benchmark grid: every variant against cuDNN, eager PyTorch and torch.compile, plus the pass
ablation and compile times. Needs a GPU, CuPy and torch.

    python3 benchmarks/run.py --quick          # a few minutes
    python3 benchmarks/run.py                  # the full grid: B {1,16,64,256} x H {256,512,1024} x
                                               # T {100,1000} x layers {1,4}, forward and train
    python3 benchmarks/run.py --tf32           # TF32 tensor cores allowed (default: strict fp32)

Writes benchmarks/results/grid_{quick,full}_{precision}.json and .md, and PNG plots (time against batch
per hidden size; speed-up over cuDNN per variant), ablation.{json,md,png} and compile_time.{json,md}.
The figures are described in lstmdsl/bench.py (what is timed, how memory is counted).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cupy
import torch

import lstmdsl
from lstmdsl.bench import bench_case

RESULTS = Path(__file__).resolve().parent / "results"
ALL_SPECS = ("vanilla", "peephole", "cifg", "gru", "fgr", "nig", "nfg", "nog", "niaf", "noaf", "np", "lstmp")


def meta(precision: str) -> dict:
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode(), "driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__, "lstmdsl": lstmdsl.__version__,
            "python": platform.python_version(), "precision": precision}


def grid(args) -> list[dict]:
    if args.quick:
        cases = [(s, b, 512, 100, 1) for s in ("vanilla", "peephole", "gru") for b in (1, 64)]
        cases += [(s, 64, 512, 100, 1) for s in ("cifg", "fgr", "lstmp")]
    else:
        cases = [(s, b, h, t, l) for s in ("vanilla", "peephole") for b, h, t, l in
                 itertools.product(args.batches, args.hiddens, args.steps, args.layers)]
        cases += [(s, 64, 512, 100, 1) for s in ALL_SPECS if s not in ("vanilla", "peephole")]
    rows = []
    for spec, b, h, t, l in cases:
        for mode in ("forward", "train"):
            print(f"{spec} B={b} H={h} T={t} L={l} {mode}", file=sys.stderr, flush=True)
            slow = t * l >= 1000
            competitors = ("lstmdsl", "cudnn", "eager") if slow else ("lstmdsl", "cudnn", "eager", "compile")
            rows.append(bench_case(lstmdsl.parse(spec), b, h, t, l, mode, args.precision,
                                   args.repeat if not slow else max(3, args.repeat // 4), competitors, log=sys.stderr))
    return rows


def write_grid(rows: list[dict], name: str, precision: str) -> None:
    m = meta(precision)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": m, "rows": rows}, indent=2) + "\n")
    lines = [f"# Benchmark grid ({name}), {precision}, {m['gpu']}", "",
             f"torch {m['torch']}, cuDNN {m['cudnn']}, CuPy {m['cupy']}; medians of CUDA-event timings in ms "
             "(min..max in the JSON); memory in MiB (see lstmdsl/bench.py for how it is counted).", "",
             "| spec | B | H | T | L | mode | lstmdsl | cuDNN | eager | compile | lstmdsl / cuDNN | eager / lstmdsl "
             "| memory lstmdsl | memory cuDNN | memory eager |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["results"]
        get = lambda k: f"{res[k]['ms']:.2f}" if k in res else "-"  # noqa: E731
        mem = lambda k: f"{res[k]['memory'] / 2**20:.0f}" if k in res else "-"  # noqa: E731
        ratio = f"{res['lstmdsl']['ms'] / res['cudnn']['ms']:.2f}x" if "cudnn" in res else "-"
        eager = f"{res['eager']['ms'] / res['lstmdsl']['ms']:.1f}x" if "eager" in res else "-"
        lines.append(f"| {r['spec']} | {r['batch']} | {r['hidden']} | {r['steps']} | {r['layers']} | {r['mode']} | "
                     f"{get('lstmdsl')} | {get('cudnn')} | {get('eager')} | {get('compile')} | {ratio} | {eager} | "
                     f"{mem('lstmdsl')} | {mem('cudnn')} | {mem('eager')} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plots(rows, name)


def plots(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hiddens = sorted({r["hidden"] for r in rows})
    fig, axes = plt.subplots(1, len(hiddens), figsize=(5 * len(hiddens), 4), squeeze=False)
    for ax, h in zip(axes[0], hiddens):
        for spec, comp, style in (("vanilla", "lstmdsl", "-o"), ("peephole", "lstmdsl", "-s"), ("vanilla", "cudnn", "--o"),
                                  ("peephole", "eager", ":s")):
            pts = sorted((r["batch"], r["results"][comp]["ms"]) for r in rows if r["spec"] == spec and r["hidden"] == h
                         and r["mode"] == "forward" and r["steps"] == 100 and r["layers"] == 1 and comp in r["results"])
            if pts:
                ax.plot(*zip(*pts), style, label=f"{spec} {comp}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("forward ms (T=100, 1 layer)")
        ax.set_title(f"H = {h}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_time_vs_batch.png", dpi=90)
    plt.close(fig)
    speedups = {}
    cudnn = {(r["batch"], r["hidden"], r["steps"], r["layers"], r["mode"]): r["results"]["cudnn"]["ms"]
             for r in rows if "cudnn" in r["results"]}
    for r in rows:
        key = (r["batch"], r["hidden"], r["steps"], r["layers"], r["mode"])
        if key in cudnn and r["mode"] == "forward":
            speedups.setdefault(r["spec"], []).append(cudnn[key] / r["results"]["lstmdsl"]["ms"])
    if speedups:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = sorted(speedups)
        ax.bar(names, [sum(speedups[n]) / len(speedups[n]) for n in names])
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_ylabel("cuDNN vanilla time / lstmdsl time (forward, mean over shapes)")
        ax.set_title("speed-up over cuDNN's vanilla LSTM, per variant")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}_speedup.png", dpi=90)
        plt.close(fig)


ABLATION = [("unfused", "no fuse gates; no hoist input; no fuse pointwise; no batch weights"),
            ("+ gate fusion", "fuse gates; no hoist input; no fuse pointwise; no batch weights"),
            ("+ input hoisting", "fuse gates; hoist input; no fuse pointwise; no batch weights"),
            ("+ pointwise fusion", "fuse gates; hoist input; fuse pointwise; no batch weights"),
            ("+ batched weight gradients", "fuse gates; hoist input; fuse pointwise; batch weights")]


def ablation(precision: str, repeat: int) -> None:
    spec = lstmdsl.parse("peephole")
    rows = []
    for label, text in ABLATION:
        row = {"stage": label, "schedule": text}
        for mode in ("forward", "train"):
            r = bench_case(spec, 64, 512, 100, 1, mode, precision, repeat, ("lstmdsl",), schedule=text)
            row[mode] = r["results"]["lstmdsl"]["ms"]
        rows.append(row)
        print(f"ablation {label}: {row['forward']:.2f} / {row['train']:.2f} ms", file=sys.stderr, flush=True)
    (RESULTS / "ablation.json").write_text(json.dumps({"meta": meta(precision), "rows": rows}, indent=2) + "\n")
    lines = ["# Pass ablation: peephole, B = 64, I = H = 512, T = 100, one layer, " + precision, "",
             "`python3 benchmarks/run.py --skip grid compile`; each stage adds one pass to the one above.", "",
             "| stage | forward ms | train ms | forward speed-up over unfused | train speed-up over unfused |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['forward']:.2f} | {r['train']:.2f} | {rows[0]['forward'] / r['forward']:.1f}x | "
                     f"{rows[0]['train'] / r['train']:.1f}x |")
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [rows[0]["forward"] / r["forward"] for r in rows], 0.4, label="forward")
    ax.bar([x + 0.2 for x in xs], [rows[0]["train"] / r["train"] for r in rows], 0.4, label="train")
    ax.set_xticks(list(xs), [r["stage"] for r in rows], rotation=15, fontsize=8)
    ax.set_ylabel("speed-up over the unfused schedule")
    ax.set_title("peephole, B=64, H=512, T=100")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ablation.png", dpi=90)
    plt.close(fig)


def compile_times() -> None:
    """Cold (empty CuPy kernel cache, fresh process) and warm (cache filled, fresh process) compile of
    every spec: lstmdsl.compile alone (parse, schedule, render, NVRTC or the disk cache, module load,
    parameter upload), timed inside a subprocess after lstmdsl and CuPy are imported."""
    code = ("import time, sys, cupy, lstmdsl; cupy.cuda.Device().synchronize(); t=time.perf_counter(); "
            "l=lstmdsl.compile(sys.argv[1], input_size=64, hidden_size=64, backend='cuda', "
            "**({'proj_size': 32} if lstmdsl.parse(sys.argv[1]).uses_size('proj') else {})); "
            "print(time.perf_counter()-t)")
    rows = []
    cache = Path("/tmp/lstmdsl-bench-cupy-cache")
    for spec in ALL_SPECS:
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        env = dict(os.environ, CUPY_CACHE_DIR=str(cache))
        cold = float(subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
        rows.append({"spec": spec, "cold_s": cold, "warm_s": warm})
        print(f"compile {spec}: cold {cold:.2f} s, warm {warm:.2f} s", file=sys.stderr, flush=True)
    (RESULTS / "compile_time.json").write_text(json.dumps({"meta": meta("fp32"), "rows": rows}, indent=2) + "\n")
    lines = ["# Compile time per spec: lstmdsl.compile(SPEC, input_size=64, hidden_size=64, backend='cuda')", "",
             "`python3 benchmarks/run.py --skip grid ablation`. Each figure is one fresh Python process, timed "
             "after importing lstmdsl and CuPy: cold with CuPy's kernel cache emptied (NVRTC compiles), warm "
             "with it filled by the cold run (the module comes from the disk cache).", "",
             "| spec | cold (s) | warm (s) |", "|---|---|---|"]
    lines += [f"| {r['spec']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} |" for r in rows]
    (RESULTS / "compile_time.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], choices=("grid", "ablation", "compile"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256], help="the full grid's B values")
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 512, 1024], help="the full grid's H values")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000], help="the full grid's T values")
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 4], help="the full grid's layer counts")
    ap.add_argument("--name", help="results file stem (default grid_quick_P or grid_full_P)")
    args = ap.parse_args()
    args.precision = "tf32" if args.tf32 else "fp32"
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    if "grid" not in args.skip:
        rows = grid(args)
        write_grid(rows, args.name or f"grid_{'quick' if args.quick else 'full'}_{args.precision}", args.precision)
    if "ablation" not in args.skip:
        ablation(args.precision, args.repeat)
    if "compile" not in args.skip:
        compile_times()
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

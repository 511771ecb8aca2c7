"""Tables, plots and docs/performance.md from the benchmark results (JSON), with no GPU needed.

    python3 benchmarks/report.py                         # every results/*.json -> .md, .png, and the docs page
    python3 benchmarks/report.py merge NAME PART.json...  # join the parts of a grid run into results/NAME.json

benchmarks/run.py writes the JSON (and calls this for what it wrote). The page's prose is
docs/performance.md.j2; its tables and figures come from the JSON through the context built here (one diagnostic
paragraph, which names its commands, excepted).
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

from lstmdsl.files import write_bytes, write_text

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "benchmarks" / "results"  # the results the docs are made from
RESULTS = COMMITTED  # where this run reads and writes (use_results)
NORMS = "grid_round2_variants_fp32"  # the grid the normalised cells' section reads
DOCS = ROOT / "docs"
COMPETITORS = ("lstmdsl", "cudnn", "eager", "compile")
LABEL = {"lstmdsl": "lstmdsl", "cudnn": "cuDNN", "eager": "eager", "compile": "compile"}


def use_results(folder: Path) -> None:
    """Read and write results in `folder` (benchmarks/out for a run that does not update the committed ones)."""
    global RESULTS
    RESULTS = Path(folder)
    RESULTS.mkdir(parents=True, exist_ok=True)


def _savefig(fig, path: Path, **kw) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kw)
    write_bytes(path, buf.getvalue())


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def key(r: dict) -> tuple:
    return r["spec"], r["batch"], r["hidden"], r["steps"], r["layers"], r["mode"], r["precision"]


def merge(name: str, parts: list[str]) -> None:
    """Join grid parts (rows of one precision on one kind of GPU) into results/NAME.json; a later part's
    row replaces an earlier one's for the same case."""
    datas = [json.loads(Path(p).read_text()) for p in parts]
    for d, p in zip(datas, parts):
        if d["meta"]["gpu"] != datas[0]["meta"]["gpu"] or d["meta"]["precision"] != datas[0]["meta"]["precision"]:
            sys.exit(f"report.py merge: {p} is from {d['meta']['gpu']}, {d['meta']['precision']}; "
                     f"{parts[0]} from {datas[0]['meta']['gpu']}, {datas[0]['meta']['precision']}")
    rows = {}
    for d in datas:
        rows.update({key(r): r for r in d["rows"]})
    meta = dict(datas[0]["meta"]) | {"parts": _runs([d["meta"] for d in datas])}
    meta["gemm_tflops"] = min(d["meta"]["gemm_tflops"] for d in datas)
    write_text(RESULTS / f"{name}.json", json.dumps({"meta": meta, "rows": list(rows.values())}, indent=2) + "\n")
    print(f"wrote benchmarks/results/{name}.json ({len(rows)} rows from {len(parts)} parts)")


def commands(meta: dict) -> str:
    """The command that made a grid, or each run's of a grid joined from parts (markdown)."""
    if "parts" not in meta:
        return f"`{meta.get('command', 'python3 benchmarks/run.py')}`"
    # each command once, where it last ran: a later run's rows replace an earlier one's
    runs = list(dict.fromkeys(reversed([r.get("command", "python3 benchmarks/run.py") for r in _runs([meta])])))[::-1]
    return "; ".join(f"`{c}`" for c in runs) + " (joined with `benchmarks/report.py merge`, a later run's rows " \
        "replacing an earlier one's)"


def _runs(metas: list[dict]) -> list[dict]:
    """The runs behind grid parts' metadata, each once, in order: a part that was itself merged brings its
    own runs (once nested a level deeper at every merge)."""
    out = []
    for m in metas:
        for run in _runs(m["parts"]) if "parts" in m else [m]:
            if run not in out:
                out.append(run)
    return out


# ------------------------------------------------------------------------------------------- helpers

def ms(res: dict, c: str) -> float | None:
    return res.get(c, {}).get("ms")


def fmt_ms(res: dict, c: str) -> str:
    if c not in res:
        return "-"
    return "OOM" if "error" in res[c] else f"{res[c]['ms']:.2f}"


def fmt_mib(res: dict, c: str) -> str:
    if c not in res:
        return "-"
    if "error" in res[c] or "memory_error" in res[c]:  # (memory_rerun.py: out of memory when measured again)
        return "OOM" if "out of memory" in (res[c].get("error"), res[c].get("memory_error")) else "-"
    return f"{res[c]['memory'] / 2**20:.0f}" if "memory" in res[c] else "-"


def fmt_floor(f: float | None) -> str:
    return "-" if f is None else f"{f:.2f}" if f >= 0.1 else f"{f:.1g}"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if a and b else "-"


def floor_ms(row: dict, meta: dict) -> float | None:
    return row["flops"] / (meta["gemm_tflops"] * 1e12) * 1e3 if "flops" in row and meta.get("gemm_tflops") else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def describe_meta(m: dict) -> str:
    drv = m["driver"]
    rt = m["cuda_runtime"]
    cudnn = m["cudnn"]
    text = (f"{m['gpu']}, driver CUDA {drv // 1000}.{drv % 1000 // 10}, runtime {rt // 1000}.{rt % 1000 // 10}, "
            f"torch {m['torch']}, cuDNN {cudnn // 10000}.{cudnn % 10000 // 100}.{cudnn % 100}, CuPy {m['cupy']}, "
            f"Python {m['python']}, lstmdsl {m['lstmdsl']}; precision {m['precision']}")
    if m.get("gemm_tflops"):
        text += f"; measured GEMM rate {m['gemm_tflops']:.1f} TFLOP/s ({m['precision']}, 8192^3 torch.mm)"
    return text


# ------------------------------------------------------------------------------------------- grids

def grid_table(data: dict) -> str:
    meta = data["meta"]
    body = []
    for r in sorted(data["rows"], key=lambda r: (r["spec"] not in ("vanilla", "peephole"), key(r))):
        res = r["results"]
        f = floor_ms(r, meta)
        body.append([r["spec"] + (f" ({r['heads']} heads)" if r.get("heads") else ""), r["batch"], r["hidden"],
                     r["steps"], r["layers"], r["mode"],
                     *(fmt_ms(res, c) for c in COMPETITORS), fmt_floor(f),
                     ratio(ms(res, "lstmdsl"), ms(res, "cudnn")), ratio(ms(res, "eager"), ms(res, "lstmdsl"), 1),
                     ratio(ms(res, "compile"), ms(res, "lstmdsl"), 1),
                     *(fmt_mib(res, c) for c in ("lstmdsl", "cudnn", "eager"))])
    return table(["spec", "B", "H", "T", "L", "mode", "lstmdsl ms", "cuDNN ms", "eager ms", "compile ms",
                  "floor ms", "lstmdsl / cuDNN", "eager / lstmdsl", "compile / lstmdsl", "MiB lstmdsl",
                  "MiB cuDNN", "MiB eager"], body)


def harness_note(data: dict) -> str:
    """What the page must say about how its rows were measured: rows of the harness before 2026-12-04
    (lstmdsl/bench.py's BENCH_VERSION 1) timed cuDNN's forward in training mode and counted into the torch
    competitors' memory what was not theirs; benchmarks/memory_rerun.py measures the memory again."""
    rows, m = data["rows"], data["meta"]
    old_times = sum(r.get("bench_version", 1) < 2 for r in rows)  # (version 2's change: later ones keep it)
    if not old_times:
        return ""
    text = (f"**Measured with the harness before 2026-12-04** ({old_times} of {len(rows)} rows; lstmdsl/bench.py): "
            "cuDNN's forward ran in training mode (its training kernels, keeping their reserve space), and the torch "
            "competitors' memory held the harness's tensors and the previous call's gradients, so the cuDNN "
            "columns favour lstmdsl until these rows are measured again.")
    again = [r for r in rows if r.get("memory_rerun")]
    if again and "memory" in m:
        done = sum(r.get("memory_version", 1) >= 2 for r in again)
        text += (f" The memory of {len(again)} rows was measured again on {m['memory']['date']} (`"
                 f"{m['memory']['command']}`): "
                 + (f"{done} of them as the harness now counts it" if done else
                    "with torch's memory from before the case and the inputs left out of the torch competitors' "
                    "figures, their reference output and previous gradients still in (a lower bound of lstmdsl's "
                    "excess)") + ".")
    return text


def memory_note(data: dict) -> str:
    """What the page must say where lstmdsl's memory was counted as what CuPy's pool held (rows measured before the
    harness took its peak in use, lstmdsl/bench.py's PeakInUse: those rows have no "pool_memory", and no
    "memory_counted" where benchmarks/memory_rerun.py measured their memory again)."""
    held = sum("memory" in r["results"].get("lstmdsl", {}) and "pool_memory" not in r["results"]["lstmdsl"]
               and r.get("memory_counted") != "peak_in_use" for r in data["rows"])
    if not held:
        return ""
    return (f"lstmdsl's memory in {held} of {len(data['rows'])} rows is what CuPy's pool held after its calls (freed "
            "blocks it keeps cached included: an upper bound of its peak; the harness now counts its peak in use, as "
            "torch's max_memory_allocated does for the torch competitors: lstmdsl/bench.py).")


def write_grid(name: str, data: dict) -> None:
    m = data["meta"]
    text = [f"# Benchmark grid `{name}`", "", describe_meta(m) + ".", "",
            f"Command{'s' if 'parts' in m else ''}: {commands(m)}.",
            "Medians of CUDA-event timings in ms (min, max and repeat counts in the JSON); memory: peak MiB in "
            "the mode (lstmdsl/bench.py says how each is counted); OOM: out of GPU memory. The floor is the "
            "matrix products' FLOPs at the measured GEMM rate."]
    text += ["", harness_note(data)] if harness_note(data) else []
    text += ["", memory_note(data)] if memory_note(data) else []
    if m.get("partial"):  # (run.py saves a grid after every row: this run stopped before its end)
        text += ["", f"**Partial**: the run stopped after {len(data['rows'])} rows."]
    text += ["", grid_table(data)]
    write_text(RESULTS / f"{name}.md", "\n".join(text) + "\n")
    plot_time_vs_batch(name, data)
    plot_speedup(name, data)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_time_vs_batch(name: str, data: dict) -> None:
    plt = _plt()
    rows, meta = data["rows"], data["meta"]
    core = [r for r in rows if r["spec"] in ("vanilla", "peephole")]
    hiddens = sorted({r["hidden"] for r in core})
    combos = sorted({(r["steps"], r["layers"]) for r in core})
    if len({r["batch"] for r in core}) < 2:
        return
    lines = (("vanilla", "lstmdsl", "-o", "C0"), ("peephole", "lstmdsl", "-s", "C1"), ("vanilla", "cudnn", "--o", "k"),
             ("peephole", "eager", ":s", "C3"), ("peephole", "compile", ":^", "C4"))
    for mode in ("forward", "train"):
        fig, axes = plt.subplots(len(combos), len(hiddens), figsize=(4.2 * len(hiddens), 3.3 * len(combos)),
                                 squeeze=False)
        for (t, l), axrow in zip(combos, axes):
            for ax, h in zip(axrow, hiddens):
                sel = [r for r in core if (r["hidden"], r["steps"], r["layers"], r["mode"]) == (h, t, l, mode)]
                for spec, comp, style, color in lines:
                    pts = sorted((r["batch"], r["results"][comp]["ms"]) for r in sel
                                 if r["spec"] == spec and "ms" in r["results"].get(comp, {}))
                    if pts:
                        ax.plot(*zip(*pts), style, color=color, label=f"{spec} {LABEL[comp]}", markersize=4)
                floor = sorted((r["batch"], floor_ms(r, meta)) for r in sel if r["spec"] == "vanilla" and floor_ms(r, meta))
                if floor:
                    ax.plot(*zip(*floor), "-", color="0.7", linewidth=3, label="FLOP floor (vanilla)", zorder=0)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"H={h}, T={t}, layers={l}", fontsize=9)
                ax.set_xlabel("batch", fontsize=8)
                ax.set_ylabel(f"{mode} ms", fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{mode}: time against batch ({meta['precision']}, {meta['gpu']})", fontsize=10)
        fig.tight_layout()
        _savefig(fig, RESULTS / f"{name}_time_vs_batch_{mode}.png", dpi=80)
        plt.close(fig)


def speedups(data: dict) -> dict[tuple[str, str], list[float]]:
    """(spec, mode) -> cuDNN vanilla's time / lstmdsl's time, at every shape where both ran."""
    cudnn = {key(r)[1:]: ms(r["results"], "cudnn") for r in data["rows"] if ms(r["results"], "cudnn")}
    out: dict[tuple[str, str], list[float]] = {}
    for r in data["rows"]:
        k, ours = key(r)[1:], ms(r["results"], "lstmdsl")
        if k in cudnn and ours:
            out.setdefault((r["spec"], r["mode"]), []).append(cudnn[k] / ours)
    return out


def plot_speedup(name: str, data: dict) -> None:
    plt = _plt()
    sp = speedups(data)
    specs = sorted({s for s, _ in sp}, key=lambda s: (s not in ("vanilla", "peephole"), s))
    if not specs:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, mode in enumerate(("forward", "train")):
        xs = [i + (j - 0.5) * 0.4 for i in range(len(specs))]
        vals = [sp.get((s, mode), []) for s in specs]
        g = [geomean(v) if v else 0 for v in vals]
        # (clamped at 0: the geometric mean of one value, exp(log(v)), can land a rounding above or below it)
        err = [[max(0.0, gi - min(v)) if v else 0 for gi, v in zip(g, vals)],
               [max(0.0, max(v) - gi) if v else 0 for gi, v in zip(g, vals)]]
        ax.bar(xs, g, 0.4, yerr=err, capsize=3, label=mode)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(specs)), specs, rotation=30, fontsize=8)
    ax.set_ylabel("cuDNN vanilla ms / lstmdsl ms")
    n = {s: len(sp.get((s, "forward"), [])) for s in specs}
    ax.set_title(f"speed-up over cuDNN's vanilla LSTM (geometric mean, bars: min..max over shapes)\n"
                 f"vanilla, peephole: {n[specs[0]]} shapes each; the other variants: B=64, H=512, T=100", fontsize=8)
    ax.legend()
    fig.tight_layout()
    _savefig(fig, RESULTS / f"{name}_speedup.png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- other sections

def write_ablation(name: str, data: dict) -> None:
    rows, s = data["rows"], data.get("shape", {})
    t = table(["stage", "forward ms", "train ms", "forward speed-up over unfused", "train speed-up over unfused"],
              [[r["stage"], f"{r['forward']:.2f}", f"{r['train']:.2f}", ratio(rows[0]["forward"], r["forward"], 1),
                ratio(rows[0]["train"], r["train"], 1)] for r in rows])
    write_text(RESULTS / f"{name}.md", 
        f"# Pass ablation: peephole, B = {s.get('batch', 64)}, I = H = {s.get('hidden', 512)}, "
        f"T = {s.get('steps', 100)}, one layer\n\n{describe_meta(data['meta'])}.\n\nEach stage adds one pass "
        f"to the one above.\n\n{t}\n")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [rows[0]["forward"] / r["forward"] for r in rows], 0.4, label="forward")
    ax.bar([x + 0.2 for x in xs], [rows[0]["train"] / r["train"] for r in rows], 0.4, label="train")
    ax.set_xticks(list(xs), [r["stage"] for r in rows], rotation=15, fontsize=8)
    ax.set_ylabel("speed-up over the unfused schedule")
    ax.set_yscale("log")
    ax.set_title(f"peephole, B={s.get('batch', 64)}, H={s.get('hidden', 512)}, T={s.get('steps', 100)}")
    ax.legend()
    fig.tight_layout()
    _savefig(fig, RESULTS / f"{name}.png", dpi=90)
    plt.close(fig)


def memory_table(data: dict) -> str:
    body = []
    for r in data["rows"]:
        size = data["models"][r["model"]]
        shape = f"B={size['batch']}, H={size['hidden']}, T={size['steps']}, L={size['layers']}"
        t = "OOM" if "error" in r else f"{r['ms']:.1f}"
        mem = "OOM" if "error" in r else f"{r['memory'] / 2**20:.0f}"
        body.append([f"{r['model']} ({shape})", r["spec"], r["backend"], t, mem])
    return table(["model", "spec", "backend", "training step ms", "peak memory MiB"], body)


def write_memory(name: str, data: dict) -> None:
    cpu = data["cpu"]
    write_text(RESULTS / f"{name}.md", 
        f"# Training time and peak memory per backend\n\n{describe_meta(data['meta'])}. The reference ran on the "
        f"same host's CPU ({cpu['processor']}, {cpu['cpus']} CPUs, numpy {data['meta'].get('numpy', '?')}); its "
        f"memory is numpy's peak allocation (tracemalloc). GPU memory: see lstmdsl/bench.py.\n\n"
        f"{memory_table(data)}\n")


def compile_table(data: dict) -> str:
    first = all("cold_first_s" in r for r in data["rows"])  # (older runs timed compile() alone)
    head = ["spec", "cold (s)", "warm (s)"] + (["cold, to the first result (s)", "warm, to the first result (s)"]
                                               if first else [])
    return table(head, [[r["spec"], f"{r['cold_s']:.2f}", f"{r['warm_s']:.3f}"]
                        + ([f"{r['cold_first_s']:.2f}", f"{r['warm_first_s']:.3f}"] if first else [])
                        for r in data["rows"]])


def write_compile(name: str, data: dict) -> None:
    write_text(RESULTS / f"{name}.md", 
        "# Compile time per spec: lstmdsl.compile(SPEC, input_size=64, hidden_size=64, backend='cuda')\n\n"
        f"{describe_meta(data['meta'])}.\n\nEach figure is a fresh Python process, timed after importing "
        "lstmdsl and CuPy: cold with CuPy's kernel cache and lstmdsl's cache emptied, warm with both filled "
        "(median of three); compile() alone, and to the first result (a forward call at T = 1, B = 1: the "
        f"kernels are built, or loaded from the cache, at the first call).\n\n{compile_table(data)}\n")


def profile_table(row: dict) -> str:
    parts = row["parts_ms"]
    busy = sum(parts.values())
    body = [[k, f"{v:.3f}", f"{100 * v / busy:.1f}%"] for k, v in sorted(parts.items())]
    body.append(["GPU busy (sum of the parts)", f"{busy:.3f}", ""])
    g = row["graphs"]
    body.append(["with CUDA graphs: forward / training", f"{g['forward']['ms']:.3f} / {g['train']['ms']:.3f}", ""])
    return table(["part", "ms", "share"], body)


def write_profile(name: str, data: dict) -> None:
    text = [f"# Where the time goes: `lstmdsl bench SPEC --profile`\n\n{describe_meta(data['meta'])}.\n"]
    for r in data["rows"]:
        text += [f"## {r['spec']}, B = {r['batch']}, I = H = {r['hidden']}, T = {r['steps']}\n", profile_table(r), ""]
    write_text(RESULTS / f"{name}.md", "\n".join(text))


WRITERS = {"grid": write_grid, "ablation": write_ablation, "memory": write_memory, "compile_time": write_compile,
           "profile": write_profile}


def writer(name: str):
    return next(w for prefix, w in WRITERS.items() if name.startswith(prefix))


# ------------------------------------------------------------------------------------------- the page

def grid_facts(data: dict | None) -> dict | None:
    """What the page says about a grid, computed from it."""
    if data is None:
        return None
    rows, meta = data["rows"], data["meta"]
    by = {key(r): r for r in rows}
    p = meta["precision"]
    shapes = sorted({(r["batch"], r["hidden"], r["steps"], r["layers"]) for r in rows if r["spec"] == "vanilla"})
    vanilla, slower, ooms = [], [], []
    for b, h, t, l in shapes:
        line = [b, h, t, l]
        for mode in ("forward", "train"):
            r = by.get(("vanilla", b, h, t, l, mode, p))
            res = r["results"] if r else {}
            ours, theirs, f = ms(res, "lstmdsl"), ms(res, "cudnn"), floor_ms(r, meta) if r else None
            line += [fmt_ms(res, "lstmdsl"), fmt_ms(res, "cudnn"), ratio(ours, theirs), fmt_floor(f)]
            if ours and theirs and ours > theirs:
                slower.append({"mode": mode, "shape": f"B={b}, H={h}, T={t}, L={l}", "ratio": ours / theirs})
            if mode == "train":
                line += [fmt_mib(res, "lstmdsl"), fmt_mib(res, "cudnn")]
        vanilla.append(line)
    for r in rows:
        for c, res in r["results"].items():
            if "error" in res:
                ooms.append(f"{r['spec']} {c} {r['mode']} at B={r['batch']}, H={r['hidden']}, T={r['steps']}, "
                            f"L={r['layers']}")
    peephole = []
    for b, h, t, l in sorted({(r["batch"], r["hidden"], r["steps"], r["layers"]) for r in rows if r["spec"] == "peephole"}):
        line = [b, h, t, l]
        for mode in ("forward", "train"):
            r = by.get(("peephole", b, h, t, l, mode, p))
            res = r["results"] if r else {}
            cud = by.get(("vanilla", b, h, t, l, mode, p), {}).get("results", {})
            line += [fmt_ms(res, "lstmdsl"), fmt_ms(cud, "cudnn"), fmt_ms(res, "eager"), fmt_ms(res, "compile"),
                     ratio(ms(res, "eager"), ms(res, "lstmdsl"), 1)]
        peephole.append(line)
    variants, variant_rows = [], []
    for r in sorted((r for r in rows if (r["batch"], r["hidden"], r["steps"], r["layers"]) == (64, 512, 100, 1)),
                    key=lambda r: (r["spec"] not in ("vanilla", "peephole"), r["spec"], r["mode"])):
        res = r["results"]
        cud = by.get(("vanilla", 64, 512, 100, 1, r["mode"], p), {}).get("results", {})
        variants.append([r["spec"], r["mode"], fmt_ms(res, "lstmdsl"), fmt_ms(cud, "cudnn"),
                         ratio(ms(res, "lstmdsl"), ms(cud, "cudnn")), fmt_ms(res, "eager"), fmt_ms(res, "compile"),
                         ratio(ms(res, "eager"), ms(res, "lstmdsl"), 1), ratio(ms(res, "compile"), ms(res, "lstmdsl"), 1)])
        variant_rows.append((variants[-1], r))

    def span(pairs):
        vals = [a / b for a, b in pairs if a and b]
        return (min(vals), max(vals), len(vals)) if vals else None

    def res_of(spec, mode):
        return [(r["results"], r) for r in rows if r["spec"] == spec and r["mode"] == mode]

    fwd_small = span([(ms(res, "cudnn"), ms(res, "lstmdsl")) for res, r in res_of("vanilla", "forward")
                      if r["batch"] <= 16])
    mem_ratio = [(r["batch"], r["hidden"], r["steps"], r["layers"], res["lstmdsl"]["memory"] / res["cudnn"]["memory"])
                 for res, r in res_of("vanilla", "train") if "memory" in res.get("lstmdsl", {})
                 and "memory" in res.get("cudnn", {})]
    variant_ratio = [(v, ms(r["results"], "lstmdsl") / ms(by[("vanilla", 64, 512, 100, 1, r["mode"], p)]["results"], "cudnn"))
                     for v, r in variant_rows if r["spec"] != "vanilla" and ms(r["results"], "lstmdsl")
                     and ("vanilla", 64, 512, 100, 1, r["mode"], p) in by
                     and ms(by[("vanilla", 64, 512, 100, 1, r["mode"], p)]["results"], "cudnn")]
    variant_slower = [v for v, q in variant_ratio if q > 1]
    count = {mode: (sum(1 for s in slower if s["mode"] == mode),
                    sum(1 for res, r in res_of("vanilla", mode) if ms(res, "lstmdsl") and ms(res, "cudnn")))
             for mode in ("forward", "train")}
    floors = [ms(r["results"], "lstmdsl") / floor_ms(r, meta) for r in rows
              if r["spec"] == "vanilla" and ms(r["results"], "lstmdsl") and floor_ms(r, meta)]
    return {
        "meta": describe_meta(meta), "raw": meta, "commands": commands(meta),
        "vanilla_table": table(["B", "H", "T", "L", "fwd lstmdsl", "fwd cuDNN", "fwd ratio", "fwd floor",
                                "train lstmdsl", "train cuDNN", "train ratio", "train floor", "train MiB lstmdsl",
                                "train MiB cuDNN"], vanilla),
        "peephole_table": table(["B", "H", "T", "L", "fwd lstmdsl", "fwd cuDNN vanilla", "fwd eager", "fwd compile",
                                 "fwd eager / lstmdsl", "train lstmdsl", "train cuDNN vanilla", "train eager",
                                 "train compile", "train eager / lstmdsl"], peephole),
        "variants_table": table(["spec", "mode", "lstmdsl", "cuDNN vanilla", "lstmdsl / cuDNN", "eager", "compile",
                                 "eager / lstmdsl", "compile / lstmdsl"], variants),
        "slower": sorted(slower, key=lambda s: -s["ratio"]), "count": count, "ooms": ooms,
        "fwd_small": fwd_small, "variant_slower": variant_slower, "variant_pairs": len(variant_ratio),
        "mem_over": sorted([m for m in mem_ratio if m[4] > 1], key=lambda m: -m[4]), "mem_n": len(mem_ratio),
        "eager_span": span([(ms(res, "eager"), ms(res, "lstmdsl")) for res, r in res_of("peephole", "forward")
                            + res_of("peephole", "train")]),
        "compile_span": span([(ms(res, "compile"), ms(res, "lstmdsl")) for res, r in res_of("peephole", "forward")
                              + res_of("peephole", "train")]),
        "floor_span": (min(floors), max(floors)) if floors else None,
        "mem_l1": (sum(1 for m in mem_ratio if m[3] == 1 and m[4] > 1), sum(1 for m in mem_ratio if m[3] == 1)),
        "eager_max": max((ms(r["results"], "eager") or 0) for r in rows),
        "has_variants": len(variants) > 4,
        "span": span([(ms(res, "lstmdsl"), ms(res, "cudnn")) for res, r in res_of("vanilla", "forward")
                      + res_of("vanilla", "train")]),
    }


def page() -> str:
    """docs/performance.md as the template and the JSON in benchmarks/results/ make it."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(DOCS)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["f"] = lambda v, d=2: f"{v:.{d}f}"
    ctx = {"full": grid_facts(load("grid_full_fp32")), "quick": grid_facts(load("grid_quick_fp32")),
           "grids": {p: grid_facts(load(f"grid_full_{p}")) for p in ("fp32", "tf32", "bf16", "fp16")
                     if load(f"grid_full_{p}") is not None},
           "tf32": grid_facts(load("grid_full_tf32")), "ablation": load("ablation"), "memory": load("memory"),
           "compile": load("compile_time"), "profile": load("profile"), "recurrent": load("recurrent_gemm"),
           "reference": load("reference_cpu"), "speed": load("speed_b64_h512_t100_fp32")}
    ctx["memory_table"] = memory_table(ctx["memory"]) if ctx["memory"] else None
    ctx["compile_table"] = compile_table(ctx["compile"]) if ctx["compile"] else None
    ctx["profile_tables"] = {r["spec"]: profile_table(r) for r in ctx["profile"]["rows"]} if ctx["profile"] else {}
    ctx["ablation_table"] = (RESULTS / "ablation.md").read_text().split("\n\n", 3)[-1] if ctx["ablation"] else None
    chunks = RESULTS / "chunks_h200.md"  # (benchmarks/chunks.py: its table, below its heading line)
    ctx["chunks_table"] = chunks.read_text().split("\n\n", 1)[1].strip() if chunks.exists() else "(not measured)"
    # tables written by benchmarks/bidirectional.py and benchmarks/regularisers.py beside their JSON
    norms = load(NORMS)  # the normalised cells beside cuDNN's vanilla LSTM (the grid's other variants left out)
    if norms:
        norms = norms | {"rows": [r for r in norms["rows"] if r["spec"] in ("vanilla", "layernorm", "rmsnorm", "slstm")]}
    ctx["norms_table"] = grid_table(norms) if norms else None
    ctx["norms_heads"] = next((r["heads"] for r in norms["rows"] if r.get("heads")), 1) if norms else None
    ctx["tables"] = {p.stem: p.read_text() for p in RESULTS.glob("*.md")
                     if p.stem.startswith(("bidirectional_", "regularisers_", "alignment_", "persistent_", "fanout_",
                                               "specialise_"))}
    grids: dict[str, dict] = {}

    def time(grid: str, spec: str, b: int, h: int, t: int, l: int, mode: str, comp: str = "lstmdsl") -> float:
        """One competitor's median ms at one case of a grid (an error if it was not measured)."""
        if grid not in grids:
            grids[grid] = {key(r): r for r in load(grid)["rows"]}
        return grids[grid][(spec, b, h, t, l, mode, grids[grid][next(iter(grids[grid]))]["precision"])][
            "results"][comp]["ms"]

    ctx["time"] = time
    ctx["norms_grid"] = NORMS

    def mem_ms(model: str, spec: str, backend: str) -> float:
        """A training step's ms in the memory section (an error if it was not measured)."""
        return next(r["ms"] for r in load("memory")["rows"]
                    if (r["model"], r["spec"], r["backend"]) == (model, spec, backend))

    ctx["mem_ms"] = mem_ms
    ctx["variants"] = grid_facts(load("grid_variants_fp32"))
    return env.get_template("performance.md.j2").render(**ctx)


def render_page() -> None:
    write_text(DOCS / "performance.md", page())
    print("wrote docs/performance.md")


def write_outputs(names: list[str]) -> None:
    for name in names:
        data = load(name)
        if data is not None:
            writer(name)(name, data)
    if RESULTS == COMMITTED:  # the docs page shows the committed results only
        render_page()


def main(argv: list[str]) -> None:
    if argv[:1] == ["merge"]:
        if len(argv) < 3:
            sys.exit("usage: report.py merge NAME PART.json...")
        merge(argv[1], argv[2:])
        write_outputs([argv[1]])
        return
    if argv:
        sys.exit(__doc__)
    names = sorted(p.stem for p in RESULTS.glob("*.json")
                   if any(p.stem.startswith(prefix) for prefix in WRITERS))
    write_outputs(names)


if __name__ == "__main__":
    main(sys.argv[1:])

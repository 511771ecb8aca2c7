"""The persistent kernel compiled for its launch's shape (`specialise`, runtime/specialise.py) against the general
kernel (`no specialise`) and cuDNN, in one process: the vanilla LSTM through the torch module (from_torch of an
nn.LSTM, one layer, fp32 with tf32 off, T = 1000, `persistent` forced so every shape runs the persistent
kernel), forward and training step as GPU time alone (timing.time_gpu_only), microseconds a step; and NVRTC's
time to compile each shape's kernels (a fresh compile, not the disk cache).

    python3 benchmarks/specialise.py 1x16 1x32 16x256 ... [--json out.json]   # (and out.md beside it)
    python3 benchmarks/specialise.py --markdown out.json                     # out.md again from the JSON
    ... --precision bf16        # tf32, bf16 or fp16: lstmdsl's `precision` (float32 in and out) against cuDNN
                                # in that precision (tf32 allowed; the LSTM and x in bf16 / fp16)
    ... --keep batch,stage_rows # a fourth column: `specialise` with those kerneldesc.SHAPE_KINDS left as
                                # arguments (which constants cost the exchanging grids at B = 8-16?)

The columns: `no specialise` (the general kernel), `specialise` (compiled for the shape, from the first call) and
`specialise auto` (what the cost model chooses: compiled on a thread, in use once it has finished; the timing
waits for it). Needs a GPU, CuPy and torch. (The trial that made the buffers' widths, strides and rings constants
too, kerneldesc.SHAPE_KINDS: benchmarks/results/probes/specialise_trial_h200.json, its `specialise wide`.)
"""
from __future__ import annotations

import json
import sys
import time


T = 1000


def markdown(data: dict) -> str:
    """The JSON's rows as a table: us a step, and the ratios to the general kernel and to cuDNN."""
    m = data["meta"]
    p = m.get("precision", "fp32")
    lines = [f"# The persistent kernel compiled for its shape ({m['gpu']}, torch {m['torch']}, cuDNN {m['cudnn']}, "
             f"CuPy {m['cupy']})" + ("" if p == "fp32" else f", precision {p}"), "", f"`{m['command']}`", "",
             f"Vanilla LSTM, one layer, {'fp32 (tf32 off)' if p == 'fp32' else p}, T = 1000, `persistent` forced; "
             "GPU time alone "
             "(timing.time_gpu_only), us a step. general: `no specialise`; compiled: `specialise`; auto: "
             "`specialise auto` (the default: the cost model's choice, plan.Persistent.specialises). NVRTC: a fresh "
             "compile of the shape's kernels (forward, training forward, backward).", "",
             "| B | H | cuDNN fwd | general fwd | compiled fwd | auto fwd | compiled / general | cuDNN train | "
             "general train | compiled train | auto train | compiled / general | NVRTC s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    extra = sorted({k for r in data["rows"] for k in r if k.startswith("specialise keep")})
    if extra:
        lines[-2] += "".join(f" {k}: fwd, train (/ general) |" for k in extra)
        lines[-1] += "---|" * len(extra)
    for r in data["rows"]:
        c, g, s, a = (r[k] for k in ("cudnn", "no specialise", "specialise", "specialise auto"))
        f, t = "forward_us_per_step", "training_us_per_step"
        lines.append(f"| {r['B']} | {r['H']} | {c[f]:.3f} | {g[f]:.3f} | {s[f]:.3f} | {a[f]:.3f} | {s[f] / g[f]:.2f}x | "
                     f"{c[t]:.2f} | {g[t]:.2f} | {s[t]:.2f} | {a[t]:.2f} | {s[t] / g[t]:.2f}x | "
                     f"{r.get('compile_s', float('nan')):.2f} |"
                     + "".join(f" {r[k][f]:.3f}, {r[k][t]:.2f} ({r[k][f] / g[f]:.2f}x, {r[k][t] / g[t]:.2f}x) |"
                               for k in extra))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--markdown"]:
        with open(argv[1]) as fh:
            text = markdown(json.load(fh))
        with open(argv[1][:-len(".json")] + ".md", "w") as fh:
            fh.write(text)
        return 0
    import torch

    import lstmdsl.torch as lt
    from lstmdsl.runtime import nvrtc, specialise
    from lstmdsl.bench import flatten_bf16
    from lstmdsl.timing import time_gpu_only

    from lstmdsl import kerneldesc

    def option(name: str, default=None):
        return argv[argv.index(name) + 1] if name in argv else default
    out, precision, keep = option("--json"), option("--precision", "fp32"), option("--keep")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    shapes = [a for a in argv if "x" in a and not a.startswith("-") and a not in (out, keep)]
    variants = ["no specialise", "specialise", "specialise auto"] + ([f"specialise keep {keep}"] if keep else [])
    kinds = kerneldesc.SHAPE_KINDS
    sources: list[str] = []
    render = specialise.render_persistent
    specialise.render_persistent = lambda *a: sources.append(render(*a)) or sources[-1]
    rows = []
    print(f"{'shape':>8s} {'variant':>16s} {'fwd us/step':>12s} {'train us/step':>14s}", flush=True)
    for shape in shapes:
        B, H = map(int, shape.split("x"))
        torch.manual_seed(0)
        ref = torch.nn.LSTM(H, H).cuda()
        x = torch.randn(T, B, H, device="cuda", requires_grad=True)
        row = {"B": B, "H": H, "T": T}
        cudnn = ref if half is None else __import__("copy").deepcopy(ref).to(half)
        if half is torch.bfloat16:
            flatten_bf16(cudnn)  # (as bench_case: PyTorch leaves bf16 weights apart, copied at every call)
        for variant, m in [("cudnn", cudnn)] + [(v, None) for v in variants]:
            xs = x.detach().to(half).requires_grad_() if variant == "cudnn" and half is not None else x
            if variant.startswith("specialise keep"):  # (the kernels are rendered at the first call: timed below)
                kerneldesc.SHAPE_KINDS = tuple(k for k in kinds if k not in keep.split(","))
            if m is None:
                m = lt.from_torch(ref, schedule=f"persistent; precision {precision}; " + variant.split(" keep")[0])
                del sources[:]

            def fwd():
                with torch.no_grad():
                    m(xs)

            def train():  # (each call's gradients anew, as after zero_grad())
                m.zero_grad(set_to_none=True)
                xs.grad = None
                y, _ = m(xs)
                y.float().sum().backward()
            m.eval()  # (cuDNN's training mode runs its training kernels, under no_grad too)
            f = time_gpu_only(fwd, 10, 2)["gpu_ms"] * 1e3 / T
            m.train()
            t = time_gpu_only(train, 10, 2)["gpu_ms"] * 1e3 / T
            kerneldesc.SHAPE_KINDS = kinds
            row[variant] = {"forward_us_per_step": round(f, 4), "training_us_per_step": round(t, 4)}
            if variant == "specialise" and sources:  # NVRTC's time for this shape's kernels, uncached
                arch = nvrtc.architecture()
                t0 = time.perf_counter()
                made = [nvrtc.nvrtc_cubin(s, arch) for s in sources]
                assert all(made), "NVRTC made no cubin: the compile time would be CuPy's"
                row["compile_s"] = round(time.perf_counter() - t0, 3)
                row["kernels"] = len(sources)
            print(f"{shape:>8s} {variant:>16s} {f:12.3f} {t:14.3f}", flush=True)
        rows.append(row)
    nvrtc.settle()
    print("\nratios (specialise / no specialise; cuDNN / specialise is the speed-up over cuDNN), compile time:")
    for r in rows:
        s, n, c = r["specialise"], r["no specialise"], r["cudnn"]
        print(f"B={r['B']:3d} H={r['H']:4d}: fwd {s['forward_us_per_step'] / n['forward_us_per_step']:.2f}x "
              f"train {s['training_us_per_step'] / n['training_us_per_step']:.2f}x; against cuDNN fwd "
              f"{s['forward_us_per_step'] / c['forward_us_per_step']:.2f}x train "
              f"{s['training_us_per_step'] / c['training_us_per_step']:.2f}x; NVRTC {r.get('compile_s', 0):.2f} s for "
              f"{r.get('kernels', 0)} kernels", flush=True)
    if out:
        import cupy
        meta = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "torch": torch.__version__,
                "cudnn": torch.backends.cudnn.version(), "cupy": cupy.__version__,
                "precision": precision, "command": "python3 benchmarks/specialise.py " + " ".join(argv)}
        with open(out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
        with open(out[:-len(".json")] + ".md", "w") as fh:
            fh.write(markdown({"meta": meta, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
